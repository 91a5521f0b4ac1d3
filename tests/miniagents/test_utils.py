"""Utilities: split_messages, join_messages, the chain and dialog loops, singletons, in-memory chat history."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from miniagents import (
    AWAIT,
    CLEAR,
    InMemoryChatHistory,
    InteractionContext,
    Message,
    MiniAgents,
    Singleton,
    UsageError,
    achain_loop,
    adialog_loop,
    join_messages,
    miniagent,
    split_messages,
)
from miniagents.messages import MessagePromise
from miniagents.utils import ModelSingleton, ModelSingletonMeta, SingletonMeta


def streamed(text: str, chunk_size: int) -> MessagePromise:
    async def tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        for start in range(0, len(text), chunk_size):
            await asyncio.sleep(0)
            yield text[start : start + chunk_size]

    return Message.promise(message_token_streamer=tokens)


async def split_texts(messages: Any, **kwargs: Any) -> list[str]:
    result = await asyncio.wait_for(split_messages(messages, **kwargs).aresolve_messages(), timeout=2)
    return [message.text or "" for message in result]


DOCUMENT = (
    "First paragraph.\n\nSecond paragraph\nwith two lines.\n\n\n\nThird.\n\n"
    "Code follows:\n```python\ndef f():\n\n    return 1\n```\nAfter the code.\n\nLast."
)
EXPECTED = [
    "First paragraph.",
    "Second paragraph\nwith two lines.",
    "Third.",
    "Code follows:",
    "```python\ndef f():\n\n    return 1\n```",
    "After the code.",
    "Last.",
]


async def test_split_messages_returns_every_paragraph_of_a_complete_text_and_ends() -> None:
    async with MiniAgents():
        assert await split_texts("a\n\nb\n\nc") == ["a", "b", "c"]
        assert await split_texts(DOCUMENT) == EXPECTED


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 64])
async def test_split_messages_gives_the_same_paragraphs_however_the_text_is_streamed(chunk_size: int) -> None:
    async with MiniAgents():
        assert await split_texts(streamed(DOCUMENT, chunk_size)) == EXPECTED


async def test_split_messages_streams_a_paragraph_before_it_is_complete() -> None:
    release = asyncio.Event()

    async def tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        yield "Hello "
        yield "world"
        await release.wait()
        yield "\n\nNext"

    async with MiniAgents():
        sequence = split_messages(Message.promise(message_token_streamer=tokens))
        first = await asyncio.wait_for(sequence.__aiter__().__anext__(), timeout=1)
        first_tokens = first.__aiter__()
        # the last characters wait until it is clear they do not start a delimiter or a code fence
        assert await asyncio.wait_for(first_tokens.__anext__(), timeout=1) == "Hell"
        assert await asyncio.wait_for(first_tokens.__anext__(), timeout=1) == "o wor"
        release.set()
        assert await first == Message(text="Hello world")
        assert [message.text for message in await sequence.aresolve_messages()] == ["Hello world", "Next"]


async def test_split_messages_joins_several_messages_and_skips_blank_paragraphs() -> None:
    async with MiniAgents():
        assert await split_texts(["one", "", "two\n\n\n", "\n\nthree"]) == ["one", "two", "three"]
        assert await split_texts("") == []
        assert await split_texts("x ```not closed\n\nstill code") == ["x", "```not closed\n\nstill code"]
        assert await split_texts("a\n\n```\nb\n```", code_block_delimiter=None) == ["a", "```\nb\n```"]
        assert await split_texts("a|b||c", delimiter="|") == ["a", "b", "c"]


async def test_split_messages_puts_metadata_on_every_paragraph() -> None:
    async with MiniAgents():
        result = await split_messages("a\n\nb", role="assistant").aresolve_messages()
        assert result == (Message(text="a", role="assistant"), Message(text="b", role="assistant"))


async def test_split_messages_raises_an_input_error_in_the_paragraph_it_happened_in() -> None:
    async def tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        yield "done\n\nhalf"
        raise ConnectionError("lost")

    async with MiniAgents():
        promises = [promise async for promise in split_messages(Message.promise(message_token_streamer=tokens))]
        assert await promises[0] == Message(text="done")
        with pytest.raises(ConnectionError, match="lost"):
            await promises[1]


async def test_split_messages_refuses_an_empty_delimiter() -> None:
    with pytest.raises(UsageError, match="non-empty `delimiter`"):
        split_messages("a", delimiter="")
    with pytest.raises(UsageError, match="code_block_delimiter"):
        split_messages("a", code_block_delimiter="")


async def test_join_messages_with_options() -> None:
    async with MiniAgents():
        joined = await join_messages(["a", "\n\nb"], delimiter=" | ", strip_leading_newlines=True, topic="t")
        assert joined.text == "a | b"
        assert joined.topic == "t"  # type: ignore[attr-defined]
        assert joined.original_messages == (Message(text="a"), Message(text="\n\nb"))  # type: ignore[attr-defined]
        plain = await join_messages(["a", "b"], delimiter=None, reference_original_messages=False)
        assert plain == Message(text="ab")


async def test_achain_loop_requires_await_and_valid_steps() -> None:
    with pytest.raises(UsageError, match="needs at least one AWAIT"):
        await achain_loop([lambda messages: messages])
    with pytest.raises(UsageError, match="each step must be an agent, a callable, AWAIT or CLEAR"):
        await achain_loop([AWAIT, 42])  # type: ignore[list-item]


class StopLoop(Exception):
    pass


async def test_adialog_loop_alternates_user_and_assistant() -> None:
    transcript: list[str] = []

    @miniagent
    async def user(ctx: InteractionContext) -> None:
        incoming = [message.text for message in await ctx.messages.aresolve_messages()]
        transcript.append(f"user saw {incoming}")
        if len(transcript) >= 5:
            raise StopLoop
        ctx.reply(f"question {len(transcript)}")

    @miniagent
    async def assistant(ctx: InteractionContext) -> None:
        incoming = [message.text for message in await ctx.messages.aresolve_messages()]
        transcript.append(f"assistant saw {incoming}")
        ctx.reply(f"answer to {incoming[0]}")

    async with MiniAgents():
        with pytest.raises(StopLoop):
            await adialog_loop(user, assistant)
    assert transcript == [
        "user saw []",
        "assistant saw ['question 1']",
        "user saw ['answer to question 1']",
        "assistant saw ['question 3']",
        "user saw ['answer to question 3']",
    ]


async def test_achain_loop_with_clear_and_callables() -> None:
    seen: list[Any] = []

    def step(messages: Any) -> Any:
        seen.append(messages)
        if len(seen) >= 4:
            raise StopLoop
        return "from step"

    async with MiniAgents():
        with pytest.raises(StopLoop):
            await achain_loop([step, AWAIT, CLEAR], initial_input="start")
    assert seen == ["start", None, None, None]


def test_singleton_has_one_instance_per_class() -> None:
    class Config(Singleton):
        def __init__(self) -> None:
            self.value = len(created)
            created.append(self)

    class Other(Singleton):
        pass

    created: list[Any] = []
    assert Config() is Config()
    assert len(created) == 1
    assert Other() is not Config()  # type: ignore[comparison-overlap]


async def test_in_memory_chat_history_logs_and_replies_with_the_same_messages() -> None:
    history = InMemoryChatHistory()
    async with MiniAgents():
        echoed = await history.logging_agent.inquire(
            ["hello", Message(text="hi", role="assistant")]
        ).aresolve_messages()
        assert echoed == (Message(text="hello"), Message(text="hi", role="assistant"))
        await history.logging_agent.inquire("again").aresolve_messages()
        assert await history.aload_chat_history() == (
            Message(text="hello"),
            Message(text="hi", role="assistant"),
            Message(text="again"),
        )


def test_model_singleton_gives_pydantic_models_one_instance_per_class() -> None:
    class Settings(ModelSingleton, BaseModel):
        level: int = 1

    class OtherSettings(Settings):
        pass

    first = Settings(level=2)
    assert Settings() is first and first.level == 2  # later arguments are ignored: the instance exists
    assert OtherSettings() is not first and OtherSettings() is OtherSettings()
    assert isinstance(Settings, ModelSingletonMeta) and issubclass(ModelSingletonMeta, SingletonMeta)


def test_model_singleton_works_with_messages() -> None:
    class RepoSnapshot(ModelSingleton, Message):
        files: tuple[str, ...] = ()

    snapshot = RepoSnapshot(text="the repo", files=["a.py"])
    assert RepoSnapshot() is snapshot
    assert snapshot.files == ("a.py",) and snapshot.hash_key == RepoSnapshot().hash_key
