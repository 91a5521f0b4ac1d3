"""`openai_agent` against the fake LLM server through the real `openai.AsyncOpenAI`: requests, tokens, metadata."""

import time
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from miniagents import Frozen, MessagePromise, MiniAgents, UsageError
from miniagents.ext.llm.llm_common import AssistantMessage, UserMessage
from miniagents.ext.llm.openai import OpenAIMessage, openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply, TokenUsage

DIALOGUE = ["Hi", AssistantMessage(text="Hello! How can I help?"), UserMessage("Tell me a joke")]
EXPECTED_DIALOGUE = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke"},
]


async def collect(message_promise: MessagePromise) -> list[str]:
    return [token async for token in message_promise]


@pytest.mark.parametrize("start_asap", [False, True])
@pytest.mark.parametrize("stream", [False, True])
async def test_request_tokens_and_final_message(
    server: FakeLLMServer, openai_client: openai.AsyncOpenAI, stream: bool, start_asap: bool
) -> None:
    server.script(
        ScriptedReply(
            tokens=["Why", " did", " the"], model="gpt-served", finish_reason="length", usage=TokenUsage(9, 3)
        )
    )
    agent = openai_agent.fork(model="gpt-test", async_client=openai_client, temperature=0.5)

    async with MiniAgents(start_everything_asap_by_default=start_asap):
        replies = agent.inquire(DIALOGUE, stream=stream, system="Be funny.", max_tokens=20)
        [message_promise] = [promise async for promise in replies]
        tokens = await collect(message_promise)
        message = await message_promise

    assert tokens == (["Why", " did", " the"] if stream else ["Why did the"])
    [request] = server.requests
    assert request.body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "Be funny."}, *EXPECTED_DIALOGUE],
        "stream": stream,
        "temperature": 0.5,
        "max_tokens": 20,
    }
    assert message_promise.preliminary_metadata == Frozen(model="gpt-test", agent_alias="OPENAI_AGENT")
    assert type(message) is OpenAIMessage
    expected: dict[str, Any] = {
        "text": "Why did the",
        "role": "assistant",
        "model": "gpt-served",
        "agent_alias": "OPENAI_AGENT",
        "id": "chatcmpl-fake-1",
        "created": 1_700_000_000,
        "object": "chat.completion.chunk" if stream else "chat.completion",
        "choices": [{"finish_reason": "length"}],
    }
    if not stream:  # a streamed answer reports usage only when asked to (see the next test)
        expected["usage"] = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert message == OpenAIMessage(**expected)


async def test_streamed_usage_is_merged_into_the_final_message(
    server: FakeLLMServer, openai_client: openai.AsyncOpenAI
) -> None:
    server.script(ScriptedReply(tokens=["A", " B"], usage=TokenUsage(5, 2)))
    agent = openai_agent.fork(model="gpt-test", async_client=openai_client)

    async with MiniAgents():
        [message] = await agent.inquire(
            "Say A B", stream=True, stream_options={"include_usage": True}
        ).aresolve_messages()

    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert message == OpenAIMessage(
        text="A B",
        role="assistant",
        model="gpt-test",
        agent_alias="OPENAI_AGENT",
        id="chatcmpl-fake-1",
        created=1_700_000_000,
        object="chat.completion.chunk",
        choices=[{"finish_reason": "stop"}],
        usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    )


@pytest.mark.parametrize("stream_by_default", [False, True])
async def test_stream_none_follows_the_context_default(
    server: FakeLLMServer, openai_client: openai.AsyncOpenAI, stream_by_default: bool
) -> None:
    server.script(ScriptedReply(tokens=["One", " two"]))
    agent = openai_agent.fork(model="gpt-test", async_client=openai_client)

    async with MiniAgents(stream_llm_tokens_by_default=stream_by_default):
        [message_promise] = [promise async for promise in agent.inquire("Count")]
        tokens = await collect(message_promise)

    assert server.requests[0].body["stream"] is stream_by_default
    assert tokens == (["One", " two"] if stream_by_default else ["One two"])


async def test_reply_metadata_and_alias(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    agent = openai_agent.fork(alias="JOKER", model="gpt-test", async_client=openai_client)

    async with MiniAgents():
        [message_promise] = [
            promise async for promise in agent.inquire("Knock knock", reply_metadata={"topic": "jokes"})
        ]
        message = await message_promise

    assert message_promise.preliminary_metadata == Frozen(model="gpt-test", agent_alias="JOKER", topic="jokes")
    assert (message.text, message.agent_alias, message.topic) == ("Knock knock", "JOKER", "jokes")  # echoed back


@pytest.mark.parametrize("n", [0, 2])
async def test_n_other_than_one_is_refused(server: FakeLLMServer, openai_client: openai.AsyncOpenAI, n: int) -> None:
    agent = openai_agent.fork(alias="MULTI_GPT", model="gpt-test", async_client=openai_client)

    async with MiniAgents():
        replies = agent.inquire("Hi", n=n)
        with pytest.raises(UsageError) as raised:
            await replies.aresolve_messages()

    assert str(raised.value) == (
        f"MULTI_GPT was called with n={n}, but it replies with exactly one message per call: leave n at 1 and call "
        f"the agent {n} times to get {n} answers."
    )
    assert server.requests == []


async def test_tokens_arrive_one_by_one(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(tokens=["slow", " and", " steady"], token_delay=0.3))
    agent = openai_agent.fork(model="gpt-test", async_client=openai_client)
    arrivals: list[tuple[str, float]] = []

    async with MiniAgents():
        [message_promise] = [promise async for promise in agent.inquire("Go", stream=True)]
        async for token in message_promise:
            arrivals.append((token, time.monotonic()))

    assert [token for token, _ in arrivals] == ["slow", " and", " steady"]
    assert arrivals[2][1] - arrivals[0][1] >= 0.3  # the first token was there ~0.6 s before the last one


def _chunk(delta: dict[str, Any], finish_reason: Any = None) -> Any:
    from openai.types.chat import ChatCompletionChunk

    return ChatCompletionChunk.model_validate(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


class _CannedStream:
    """What `client.chat.completions.create(stream=True)` returns, with canned chunks."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = chunks

    async def __aenter__(self) -> "_CannedStream":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        return None

    async def __aiter__(self) -> Any:
        for chunk in self._chunks:
            yield chunk


def _canned_client(chunks: list[Any]) -> Any:
    async def create(**_: Any) -> _CannedStream:
        return _CannedStream(chunks)

    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))


def _without_class(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_class(item) for key, item in value.items() if key != "class_"}
    if isinstance(value, (list, tuple)):
        return [_without_class(item) for item in value]
    return value


REFUSAL_PARTS = ["I'm ", "sorry, ", "I can't ", "help with that."]
ARGUMENT_PARTS = ['{"ci', 'ty": "Pa', 'ris"}']


@pytest.mark.parametrize(
    ("chunks", "expected_message"),
    [
        (
            [_chunk({"role": "assistant", "refusal": ""})]
            + [_chunk({"refusal": part}) for part in REFUSAL_PARTS]
            + [_chunk({}, "stop")],
            {"refusal": "I'm sorry, I can't help with that."},
        ),
        (
            [
                _chunk(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": ""},
                            }
                        ],
                    }
                )
            ]
            + [_chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}) for part in ARGUMENT_PARTS]
            + [
                _chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "call_2",
                                "type": "function",
                                "function": {"name": "time", "arguments": "{}"},
                            }
                        ]
                    }
                ),
                _chunk({}, "tool_calls"),
            ],
            {
                "tool_calls": (
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                )
            },
        ),
    ],
    ids=["refusal", "tool_calls"],
)
async def test_streamed_refusals_and_tool_calls_are_whole_as_without_streaming(
    chunks: list[Any], expected_message: dict[str, Any]
) -> None:
    agent = openai_agent.fork(model="m", async_client=_canned_client(chunks))
    async with MiniAgents():
        [message] = await agent.inquire("hi", stream=True).aresolve_messages()
    [choice] = message.choices
    assert _without_class(choice.message.model_dump()) == _without_class(expected_message)
    assert choice.finish_reason == ("stop" if "refusal" in expected_message else "tool_calls")
