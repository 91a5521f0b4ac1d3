"""The offline stand-in LLM agent."""

import itertools
import time
from collections.abc import Sequence

import pytest

from miniagents import EventKind, ListEventSink, Message, MiniAgents
from miniagents.errors import UsageError
from miniagents.ext.llm.stand_in import (
    ScriptedResponses,
    StandInLLMMessage,
    generated_reply,
    stand_in_llm_agent,
    tokenize,
)


def test_tokens_join_back_into_the_text() -> None:
    assert tokenize("Hello  big\nworld ") == ["Hello", "  big", "\nworld", " "]
    assert "".join(tokenize("a b  c\n\nd")) == "a b  c\n\nd"


async def test_a_fixed_reply_is_streamed_word_by_word_with_metadata() -> None:
    async with MiniAgents():
        replies = stand_in_llm_agent.inquire("hi", reply="Hello there, friend", model="m-1")
        (promise,) = [promise async for promise in replies]
        assert promise.preliminary_metadata.model == "m-1"  # type: ignore[attr-defined]
        assert [token async for token in promise] == ["Hello", " there,", " friend"]
        message = await promise
    assert isinstance(message, StandInLLMMessage)
    assert message.text == "Hello there, friend"
    assert message.role == "assistant"
    assert message.agent_alias == "STAND_IN_LLM_AGENT"
    assert message.finish_reason == "stop"  # type: ignore[attr-defined]
    assert message.usage.prompt_tokens == 1  # type: ignore[attr-defined]
    assert message.usage.completion_tokens == 3  # type: ignore[attr-defined]


async def test_the_generated_reply_is_deterministic_and_about_the_input() -> None:
    async with MiniAgents():
        first = await stand_in_llm_agent.inquire("Tell me about the moon").aresolve_messages()
        second = await stand_in_llm_agent.inquire("Tell me about the moon").aresolve_messages()
    assert first == second
    assert first[0].text == generated_reply([Message(text="Tell me about the moon")])
    assert "“Tell me about the moon”" in (first[0].text or "")
    assert generated_reply([]) == "Nothing to answer yet: the conversation is empty."


async def test_a_responder_sees_the_system_prompt_and_the_messages() -> None:
    seen: list[list[str]] = []

    def responder(messages: Sequence[Message]) -> str:
        seen.append([f"{getattr(message, 'role', 'user')}: {message}" for message in messages])
        return "ok"

    agent = stand_in_llm_agent.fork(responder=responder, system="Be brief.")
    async with MiniAgents():
        assert (await agent.inquire(["q1", Message(text="a1", role="assistant")]).aresolve_messages())[0].text == "ok"
    assert seen == [["system: Be brief.", "user: q1", "assistant: a1"]]


async def test_scripted_responses_come_in_order_and_say_when_they_run_out() -> None:
    agent = stand_in_llm_agent.fork(responder=ScriptedResponses(["one", "two"]))
    async with MiniAgents():
        texts = [(await agent.inquire("x").aresolve_messages())[0].text for _ in range(2)]
        assert texts == ["one", "two"]
        with pytest.raises(UsageError, match="ran out after 2 replies"):
            await agent.inquire("x").aresolve_messages()


async def test_non_streaming_gives_one_piece_and_follows_the_context_default() -> None:
    async with MiniAgents(stream_llm_tokens_by_default=False):
        (promise,) = [promise async for promise in stand_in_llm_agent.inquire("x", reply="a b c")]
        assert [token async for token in promise] == ["a b c"]


async def test_token_delay_paces_the_stream_and_is_recorded() -> None:
    sink = ListEventSink()
    async with MiniAgents(store=sink):
        started = time.perf_counter()
        await stand_in_llm_agent.inquire("x", reply="a b c d", token_delay=0.02).aresolve_messages()
        assert time.perf_counter() - started >= 0.08
    (stream,) = sink.of_kind(EventKind.STREAM)
    assert stream.data is not None
    assert stream.data["chunks"] == [1, 2, 2, 2]
    offsets = stream.data["offsets"]
    assert all(later - earlier >= 0.015 for earlier, later in itertools.pairwise(offsets))


def test_it_is_marked_as_talking_to_the_outside_world() -> None:
    assert stand_in_llm_agent.talks_to_outside_world
    assert stand_in_llm_agent.fork(model="x").talks_to_outside_world
