"""LLM messages, their chat dicts, and default SDK clients kept per event loop."""

import asyncio
from typing import Any

import pytest

from miniagents import Message, MiniAgents
from miniagents.ext.llm.llm_common import (
    AssistantMessage,
    PerLoopClient,
    SystemMessage,
    UserMessage,
    message_to_llm_dict,
)


def test_message_classes_carry_their_role() -> None:
    assert UserMessage("Hi").role == "user"
    assert SystemMessage(text="Be brief.").role == "system"
    assistant = AssistantMessage(text="Hello")
    assert (assistant.role, assistant.model, assistant.agent_alias) == ("assistant", None, None)
    assert AssistantMessage(text="Hello", model="m", agent_alias="BOT").serialize() == {
        "class_": "AssistantMessage",
        "text": "Hello",
        "text_template": None,
        "role": "assistant",
        "model": "m",
        "agent_alias": "BOT",
    }


def test_llm_replies_are_assistant_messages() -> None:
    from miniagents.ext.llm.anthropic import AnthropicMessage
    from miniagents.ext.llm.openai import OpenAIMessage

    assert issubclass(OpenAIMessage, AssistantMessage)
    assert issubclass(AnthropicMessage, AssistantMessage)
    assert OpenAIMessage(text="Hi").role == "assistant"


def test_message_to_llm_dict_takes_the_role_or_user() -> None:
    assert message_to_llm_dict(Message(text="plain")) == {"role": "user", "content": "plain"}
    assert message_to_llm_dict(Message(text="custom", role="tool")) == {"role": "tool", "content": "custom"}
    assert message_to_llm_dict(Message(text="no role", role=None)) == {"role": "user", "content": "no role"}
    assert message_to_llm_dict(SystemMessage("rules")) == {"role": "system", "content": "rules"}
    assert message_to_llm_dict(AssistantMessage(text="answer", model="m")) == {
        "role": "assistant",
        "content": "answer",
    }
    templated = UserMessage(text_template="Hello, {name}!", name="Ann")
    assert message_to_llm_dict(templated) == {"role": "user", "content": "Hello, Ann!"}


async def test_message_to_llm_dict_of_a_message_without_text_is_its_json() -> None:
    async with MiniAgents():
        assert message_to_llm_dict(Message(answer=42)) == {
            "role": "user",
            "content": '{"answer":42,"class_":"Message","text":null,"text_template":null}',
        }


def test_per_loop_client_is_created_once_per_event_loop() -> None:
    created: list[object] = []

    def create() -> object:
        created.append(object())
        return created[-1]

    clients = PerLoopClient(create)

    async def twice() -> tuple[object, object]:
        return clients.get(), clients.get()

    first_a, first_b = asyncio.run(twice())
    second_a, second_b = asyncio.run(twice())

    assert first_a is first_b
    assert second_a is second_b
    assert first_a is not second_a
    assert created == [first_a, second_a]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_default_clients_are_closed_when_their_event_loop_shuts_down(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from miniagents.ext.llm import anthropic as anthropic_module
    from miniagents.ext.llm import openai as openai_module
    from miniagents.testing.fake_llm_server import FakeLLMServer

    module: Any = openai_module if provider == "openai" else anthropic_module
    agent = openai_module.openai_agent if provider == "openai" else anthropic_module.anthropic_agent
    used: list[Any] = []

    async def main() -> str:
        async with FakeLLMServer() as server:
            monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
            monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_base_url)
            monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
            async with MiniAgents():
                [reply] = await agent.inquire("hello", model="m", max_tokens=10).aresolve_messages()
            used.append(module._default_client.get())
            assert not used[0].is_closed()  # kept for the next calls on this loop
        return str(reply)

    assert asyncio.run(main()) == "hello"
    assert used[0].is_closed()  # no connection outlives the loop (filterwarnings=error: no ResourceWarning)


async def test_a_default_client_can_be_closed_sooner() -> None:
    closed: list[str] = []

    class Client:
        async def close(self) -> None:
            closed.append("closed")

    clients = PerLoopClient(Client)
    first = clients.get()
    await clients.aclose()
    assert closed == ["closed"]
    assert clients.get() is not first
    await clients.aclose()
    assert closed == ["closed", "closed"]
