"""LLM agents when the API fails: errors land in the reply stream where they happened, and nothing hangs."""

import asyncio
import json
import time
from typing import Any

import anthropic
import openai
import pytest

from miniagents import EventKind, ListEventSink, MessagePromise, MiniAgent, MiniAgents
from miniagents.events import describe_error
from miniagents.ext.llm.anthropic import anthropic_agent
from miniagents.ext.llm.openai import openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply, dropped_connection_errors

PROVIDERS = ["openai", "anthropic"]


def make_agent(provider: str, client: Any) -> MiniAgent:
    if provider == "openai":
        return openai_agent.fork(model="test-model", async_client=client)
    return anthropic_agent.fork(model="test-model", async_client=client, max_tokens=10)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def agent(provider: str, openai_client: openai.AsyncOpenAI, anthropic_client: anthropic.AsyncAnthropic) -> MiniAgent:
    return make_agent(provider, openai_client if provider == "openai" else anthropic_client)


async def run_failing_call(agent: MiniAgent, stream: bool, **context: Any) -> tuple[list[str], BaseException]:
    """Call the agent; the tokens received before the error, and the error (the same from `await`)."""
    # nothing may hang: neither the reply nor leaving the context
    return await asyncio.wait_for(_run_failing_call(agent, stream, **context), timeout=10)


async def _run_failing_call(agent: MiniAgent, stream: bool, **context: Any) -> tuple[list[str], BaseException]:
    tokens: list[str] = []
    async with MiniAgents(**context):
        [message_promise] = [promise async for promise in agent.inquire("Tell me more", stream=stream)]
        with pytest.raises(Exception) as raised:
            async for token in message_promise:
                tokens.append(token)
        with pytest.raises(type(raised.value)) as awaited:
            await message_promise
        assert awaited.value is raised.value
    return tokens, raised.value


def error_types(provider: str, status: int) -> type[Exception]:
    sdk: Any = openai if provider == "openai" else anthropic
    return {429: sdk.RateLimitError, 500: sdk.InternalServerError}[status]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [429, 500])
async def test_http_error_status(
    server: FakeLLMServer, agent: MiniAgent, provider: str, status: int, stream: bool
) -> None:
    server.script(ScriptedReply(tokens=["never", " sent"], status=status, error_message="Try later"))

    tokens, error = await run_failing_call(agent, stream)

    assert tokens == []
    assert type(error) is error_types(provider, status)
    assert error.status_code == status  # type: ignore[attr-defined]
    assert len(server.requests) == 1  # no retries (max_retries=0)


async def test_malformed_sse_after_some_tokens(server: FakeLLMServer, agent: MiniAgent) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], malformed_after=2))

    tokens, error = await run_failing_call(agent, stream=True)

    assert tokens == ["a", "b"]
    assert type(error) is json.JSONDecodeError


async def test_connection_dropped_mid_stream(server: FakeLLMServer, agent: MiniAgent, provider: str) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], drop_after=2))

    tokens, error = await run_failing_call(agent, stream=True)

    assert tokens == ["a", "b"]  # the tokens received before the drop, then the error (also from `await`)
    assert isinstance(error, dropped_connection_errors(openai if provider == "openai" else anthropic))


@pytest.mark.parametrize("failure", ["drop_after", "malformed_after"])
async def test_broken_answer_without_streaming(
    server: FakeLLMServer, agent: MiniAgent, provider: str, failure: str
) -> None:
    server.script(ScriptedReply(tokens=["a", "b"], **{failure: 0}))

    tokens, error = await run_failing_call(agent, stream=False)

    assert tokens == []
    sdk: Any = openai if provider == "openai" else anthropic
    assert type(error) is (sdk.APIConnectionError if failure == "drop_after" else json.JSONDecodeError)


@pytest.mark.parametrize("stream", [False, True])
async def test_server_that_never_answers_times_out(server: FakeLLMServer, provider: str, stream: bool) -> None:
    server.script(ScriptedReply(tokens=["never"], hang=True))
    client: Any
    if provider == "openai":
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0, timeout=0.5)
    else:
        client = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="k", max_retries=0, timeout=0.5)
    started = time.monotonic()

    async with client:
        tokens, error = await run_failing_call(make_agent(provider, client), stream)

    assert time.monotonic() - started < 3
    assert tokens == []
    assert type(error) is (openai.APITimeoutError if provider == "openai" else anthropic.APITimeoutError)


async def test_a_consumer_gets_the_tokens_live_then_the_error(server: FakeLLMServer, agent: MiniAgent) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c"], drop_after=2, token_delay=0.05))
    received: list[Any] = []

    async def consume(message_promise: MessagePromise) -> None:
        try:
            async for token in message_promise:
                received.append(token)
        except Exception as exc:
            received.append(type(exc))

    async with MiniAgents():
        [message_promise] = [promise async for promise in agent.inquire("Go", stream=True)]
        await asyncio.gather(consume(message_promise), consume(message_promise))

    # two consumers, the same stream: tokens, then the error, interleaved as they arrived
    assert received[:4] == ["a", "a", "b", "b"]
    assert len(received) == 6
    assert received[4] is received[5]
    assert issubclass(received[4], Exception)


async def test_a_failed_reply_is_recorded_with_the_chunks_received(
    server: FakeLLMServer, agent: MiniAgent, provider: str
) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], drop_after=2))
    sink = ListEventSink()

    _, error = await run_failing_call(agent, stream=True, store=sink)

    [finished] = sink.of_kind(EventKind.CALL_FINISHED)
    assert finished.data is not None
    [reply] = finished.data["replies"]
    failed = reply["failed"]
    offsets = failed.pop("offsets")
    assert len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]
    expected_metadata: dict[str, Any]
    if provider == "openai":
        expected_metadata = {
            "class_": "Frozen",
            "model": "test-model",
            "agent_alias": "OPENAI_AGENT",
            "role": "assistant",
            "id": "chatcmpl-fake-1",
            "created": 1_700_000_000,
            "object": "chat.completion.chunk",
        }
    else:
        expected_metadata = {
            "class_": "Frozen",
            "model": "test-model",
            "agent_alias": "ANTHROPIC_AGENT",
            "id": "msg_fake_1",
            "role": "assistant",
            "type": "message",
            "usage": {"class_": "Frozen", "input_tokens": 3, "output_tokens": 0},
        }
    assert failed == {
        "class_": "OpenAIMessage" if provider == "openai" else "AnthropicMessage",
        "metadata": expected_metadata,
        "chunks": ["a", "b"],
        "error": describe_error(error),  # its type, module, text and the SDK attributes (redacted)
    }
    assert finished.data["error"] is None
    assert finished.data["reply_node"] is None  # a call whose reply broke has no reply node
    [error_event] = [
        event for event in sink.of_kind(EventKind.ERROR) if event.data and event.data["where"] == "message"
    ]
    assert error_event.data is not None
    assert (error_event.data["position"], error_event.data["chunks"]) == (2, ["a", "b"])
    assert error_event.call_id == finished.call_id


async def test_the_next_call_works_after_a_failure(server: FakeLLMServer, agent: MiniAgent) -> None:
    server.script(ScriptedReply(tokens=["a"], status=500), ScriptedReply(tokens=["fine"]))

    async with MiniAgents():
        with pytest.raises(Exception):  # noqa: B017 - the type is checked in test_http_error_status
            await agent.inquire("1").aresolve_messages()
        [message] = await agent.inquire("2").aresolve_messages()

    assert message.text == "fine"
