"""Replayed streams: recorded chunk boundaries, and the recorded message as the final value."""

from miniagents import Message, MiniAgents
from replay.streams import replayed_message, split_into_chunks


def test_text_is_cut_at_the_recorded_chunk_boundaries() -> None:
    assert split_into_chunks("one two", [3, 4]) == ["one", " two"]
    assert split_into_chunks("abcd", [0, 2, 0, 2]) == ["", "ab", "", "cd"]
    assert split_into_chunks("", []) == []


def test_chunk_lengths_that_do_not_fit_the_text_give_one_chunk() -> None:
    assert split_into_chunks("abc", [1, 1]) == ["abc"]
    assert split_into_chunks("abc", [4, -1]) == ["abc"]
    assert split_into_chunks("abc", []) == ["abc"]


async def test_a_replayed_message_streams_its_chunks_and_resolves_to_the_recorded_message() -> None:
    recorded = Message(text="one two three", model="m")
    async with MiniAgents():
        promise = replayed_message(recorded, [3, 4, 6], [0.0, 0.01, 0.02], speed=None)
        assert [token async for token in promise] == ["one", " two", " three"]
        assert promise.preliminary_metadata.model == "m"  # type: ignore[attr-defined]
        assert await promise is recorded
        paced = replayed_message(recorded, [3, 4, 6], [0.0, 0.001, 0.002], speed=1.0)
        assert [token async for token in paced] == ["one", " two", " three"]
        assert await paced is recorded
