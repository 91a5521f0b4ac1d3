"""LLM messages, their chat dicts, and default SDK clients kept per event loop."""

import asyncio

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
