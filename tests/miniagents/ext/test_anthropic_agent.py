"""`anthropic_agent` against the fake LLM server through the real `anthropic.AsyncAnthropic`; its dialogue fix-ups."""

from typing import Any

import anthropic
import pytest

from miniagents import Frozen, Message, MessagePromise, MiniAgents
from miniagents.ext.llm.anthropic import AnthropicMessage, anthropic_agent, prepare_anthropic_dialogue
from miniagents.ext.llm.llm_common import AssistantMessage, SystemMessage, UserMessage
from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply, TokenUsage


async def collect(message_promise: MessagePromise) -> list[str]:
    return [token async for token in message_promise]


@pytest.mark.parametrize("start_asap", [False, True])
@pytest.mark.parametrize("stream", [False, True])
async def test_request_tokens_and_final_message(
    server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic, stream: bool, start_asap: bool
) -> None:
    server.script(
        ScriptedReply(
            tokens=["Why", " did", " the"], model="claude-served", stop_reason="max_tokens", usage=TokenUsage(9, 3)
        )
    )
    agent = anthropic_agent.fork(model="claude-test", async_client=anthropic_client, max_tokens=3)

    async with MiniAgents(start_everything_asap_by_default=start_asap):
        replies = agent.inquire(
            ["Hi", AssistantMessage(text="Hello!"), UserMessage("Tell me a joke")],
            stream=stream,
            system="Be funny.",
            stop_sequences=["END"],
        )
        [message_promise] = [promise async for promise in replies]
        tokens = await collect(message_promise)
        message = await message_promise

    assert tokens == (["Why", " did", " the"] if stream else ["Why did the"])
    [request] = server.requests
    assert request.body == {
        "model": "claude-test",
        "max_tokens": 3,
        "system": "Be funny.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a joke"},
        ],
        "stop_sequences": ["END"],
        "stream": stream,
    }
    assert message_promise.preliminary_metadata == Frozen(model="claude-test", agent_alias="ANTHROPIC_AGENT")
    assert type(message) is AnthropicMessage
    assert message == AnthropicMessage(
        text="Why did the",
        role="assistant",
        model="claude-served",
        agent_alias="ANTHROPIC_AGENT",
        id="msg_fake_1",
        type="message",
        stop_reason="max_tokens",
        usage={"input_tokens": 9, "output_tokens": 3},
    )


async def test_system_messages_join_the_system_prompt_and_a_user_turn_comes_first(
    server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    agent = anthropic_agent.fork(model="claude-test", async_client=anthropic_client, max_tokens=10)

    async with MiniAgents():
        await agent.inquire(
            [
                AssistantMessage(text="I am ready."),
                SystemMessage("Answer in French."),
                AssistantMessage(text="Ask me anything."),
                "Bonjour",
            ],
            system="You are a tutor.",
            stream=False,
        ).aresolve_messages()

    assert server.requests[0].body == {
        "model": "claude-test",
        "max_tokens": 10,
        "system": "You are a tutor.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "/start"},
            {"role": "assistant", "content": "I am ready.\n\nAsk me anything."},
            {"role": "user", "content": "Bonjour"},
        ],
        "stream": False,
    }


@pytest.mark.parametrize("stream_by_default", [False, True])
async def test_stream_none_follows_the_context_default(
    server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic, stream_by_default: bool
) -> None:
    server.script(ScriptedReply(tokens=["One", " two"]))
    agent = anthropic_agent.fork(model="claude-test", async_client=anthropic_client, max_tokens=10)

    async with MiniAgents(stream_llm_tokens_by_default=stream_by_default):
        [message_promise] = [promise async for promise in agent.inquire("Count")]
        tokens = await collect(message_promise)

    assert server.requests[0].body["stream"] is stream_by_default
    assert tokens == (["One", " two"] if stream_by_default else ["One two"])


async def test_reply_metadata(server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic) -> None:
    agent = anthropic_agent.fork(alias="CLAUDE", model="claude-test", async_client=anthropic_client, max_tokens=10)

    async with MiniAgents():
        [message_promise] = [promise async for promise in agent.inquire("Hello", reply_metadata={"topic": "greet"})]
        message = await message_promise

    assert message_promise.preliminary_metadata == Frozen(model="claude-test", agent_alias="CLAUDE", topic="greet")
    assert (message.text, message.agent_alias, message.topic, message.stop_reason) == (
        "Hello",
        "CLAUDE",
        "greet",
        "end_turn",
    )


DIALOGUE_CASES: list[tuple[str, list[Message], dict[str, Any], list[dict[str, str]], Any]] = [
    ("empty: a fake user turn", [], {}, [{"role": "user", "content": "/start"}], None),
    ("only a system prompt", [SystemMessage("Be kind.")], {}, [{"role": "user", "content": "/start"}], "Be kind."),
    (
        "starts with the assistant",
        [AssistantMessage(text="Hi, I am Claude."), UserMessage("Hi")],
        {"fake_first_user_message": "(begin)"},
        [
            {"role": "user", "content": "(begin)"},
            {"role": "assistant", "content": "Hi, I am Claude."},
            {"role": "user", "content": "Hi"},
        ],
        None,
    ),
    (
        "same roles joined, also across a system message",
        [UserMessage("a"), Message(text="b"), SystemMessage("s1"), UserMessage("c"), AssistantMessage(text="d")],
        {"system": "s0", "delimiter": " | "},
        [{"role": "user", "content": "a | b | c"}, {"role": "assistant", "content": "d"}],
        "s0 | s1",
    ),
]


@pytest.mark.parametrize(
    ("messages", "options", "expected_dialogue", "expected_system"),
    [case[1:] for case in DIALOGUE_CASES],
    ids=[case[0] for case in DIALOGUE_CASES],
)
def test_prepare_anthropic_dialogue(
    messages: list[Message], options: dict[str, Any], expected_dialogue: list[dict[str, str]], expected_system: Any
) -> None:
    assert prepare_anthropic_dialogue(tuple(messages), **options) == (expected_dialogue, expected_system)
