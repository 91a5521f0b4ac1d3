"""`console_user_agent` driven for real through prompt_toolkit's pipe input."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

import miniagents.ext.console_user_agent as console_module
from miniagents import InMemoryChatHistory, Message, MiniAgents
from miniagents.ext.chat_history_md import ChatHistoryMD
from miniagents.ext.console_user_agent import console_user_agent, default_prompt_session
from miniagents.ext.llm.llm_common import AssistantMessage, UserMessage

ENTER = "\r"
CTRL_SPACE = "\x00"
CTRL_D = "\x04"


@pytest.fixture
def pipe_input() -> Iterator[PipeInput]:
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        yield pipe


async def streamed(_: dict[str, Any]) -> AsyncIterator[str]:
    for token in ["Hi", " there", "!"]:
        yield token


async def test_prints_the_messages_reads_a_multiline_answer_and_replies_with_the_history(
    pipe_input: PipeInput, capsys: pytest.CaptureFixture[str]
) -> None:
    history = InMemoryChatHistory()
    user = console_user_agent.fork(chat_history=history, prompt_session=PromptSession(input=pipe_input))
    pipe_input.send_text(f"first line{CTRL_SPACE}second line{ENTER}")

    async with MiniAgents():
        replies = await user.inquire(
            [
                AssistantMessage.promise(message_token_streamer=streamed, agent_alias="BOT", model="m"),
                Message(text="A message from nobody in particular."),
                Message(text="A system note.", role="system"),
            ]
        ).aresolve_messages()
        logged = await history.aload_chat_history()

    expected = (
        AssistantMessage(text="Hi there!", agent_alias="BOT", model="m"),
        Message(text="A message from nobody in particular."),
        Message(text="A system note.", role="system"),
        UserMessage(text="first line\nsecond line"),
    )
    assert replies == expected
    assert logged == expected
    assert capsys.readouterr().out == (
        "\nBOT: Hi there!\n\n"
        "\nA message from nobody in particular.\n\n"  # neither an alias nor a role: no label
        "\nSYSTEM: A system note.\n\n"
    )


async def test_a_dialogue_in_a_markdown_history_with_the_default_prompt_session(
    pipe_input: PipeInput, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = ChatHistoryMD(tmp_path / "CHAT.md")
    user = console_user_agent.fork(chat_history=history)
    pipe_input.send_text(f"Hello{ENTER}Fine, thanks{ENTER}")  # typed ahead: each prompt takes one line

    async with MiniAgents():
        first = await user.inquire().aresolve_messages()
        second = await user.inquire(
            AssistantMessage(text="How are you?", agent_alias="BOT", model="gpt-test")
        ).aresolve_messages()

    assert first == (UserMessage(text="Hello"),)
    assert second == (
        UserMessage(text="Hello"),
        AssistantMessage(text="How are you?", model="gpt-test"),  # loaded back from the markdown file
        UserMessage(text="Fine, thanks"),
    )
    line = "=" * 40
    assert (tmp_path / "CHAT.md").read_text(encoding="utf-8") == (
        f"\nuser\n{line}\nHello\n\nassistant / gpt-test\n{line}\nHow are you?\n\nuser\n{line}\nFine, thanks\n"
    )
    assert capsys.readouterr().out == "\nBOT: How are you?\n\n"


def test_the_default_prompt_session_is_made_on_first_use_per_app_session() -> None:
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        session = default_prompt_session()
        assert default_prompt_session() is session
        assert session.app.input is pipe
        with create_pipe_input() as other_pipe, create_app_session(input=other_pipe, output=DummyOutput()):
            assert default_prompt_session() is not session
            assert default_prompt_session().app.input is other_pipe


async def test_ctrl_d_ends_the_conversation_with_eof_error(pipe_input: PipeInput) -> None:
    history = InMemoryChatHistory()
    pipe_input.send_text(CTRL_D)

    async with MiniAgents():
        with pytest.raises(EOFError):
            await console_user_agent.fork(chat_history=history).inquire("Anything else?").aresolve_messages()
        logged = await history.aload_chat_history()

    assert logged == (Message(text="Anything else?"),)  # what was shown is logged; no user message


async def test_without_a_chat_history_the_global_one_is_used(
    pipe_input: PipeInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    global_history = InMemoryChatHistory()
    monkeypatch.setattr(console_module, "GLOBAL_CHAT_HISTORY", global_history)
    pipe_input.send_text(f"Hi{ENTER}")

    async with MiniAgents():
        await console_user_agent.inquire().aresolve_messages()
        logged = await global_history.aload_chat_history()

    assert logged == (UserMessage(text="Hi"),)
