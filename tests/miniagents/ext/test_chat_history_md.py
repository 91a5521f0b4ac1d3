"""`ChatHistoryMD`: what the logging agent appends, and how markdown loads back as messages."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from miniagents import Message, MiniAgents
from miniagents.ext.chat_history_md import ChatHistoryMD, parse_chat_markdown
from miniagents.ext.llm.llm_common import AssistantMessage, UserMessage

LINE = "=" * 40


async def test_a_missing_file_is_an_empty_history(tmp_path: Path) -> None:
    assert await ChatHistoryMD(tmp_path / "nothing-yet.md").aload_chat_history() == ()


async def test_logging_appends_each_message_under_a_role_heading(tmp_path: Path) -> None:
    chat_file = tmp_path / "CHAT.md"
    chat_file.write_text("# An existing note\n", encoding="utf-8")
    history = ChatHistoryMD(chat_file)

    async def tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        for token in ["Streamed ", "token ", "by token."]:
            yield token

    async with MiniAgents():
        logged = await history.logging_agent.inquire(
            [
                UserMessage("Hi!\nTwo lines."),
                AssistantMessage.promise(message_token_streamer=tokens, model="gpt-test", agent_alias="GPT"),
                AssistantMessage(text="No model."),  # model None: no ` / model` in the heading
                Message(text="No role: the default role."),
                Message(text="Its own role.", role="system"),
            ]
        ).aresolve_messages()

    assert [message.text for message in logged] == [  # the logging agent passes the messages on
        "Hi!\nTwo lines.",
        "Streamed token by token.",
        "No model.",
        "No role: the default role.",
        "Its own role.",
    ]
    assert chat_file.read_text(encoding="utf-8") == (
        "# An existing note\n"
        f"\nuser\n{LINE}\nHi!\nTwo lines.\n"
        f"\nassistant / gpt-test\n{LINE}\nStreamed token by token.\n"
        f"\nassistant\n{LINE}\nNo model.\n"
        f"\nassistant\n{LINE}\nNo role: the default role.\n"
        f"\nsystem\n{LINE}\nIts own role.\n"
    )


async def test_logged_history_loads_back(tmp_path: Path) -> None:
    history = ChatHistoryMD(tmp_path / "CHAT.md", default_role="user")

    async with MiniAgents():
        await history.logging_agent.inquire(
            ["Hello", AssistantMessage(text="Hi! Code:\n\n```\n# user\n```\n", model="m-1")]
        ).aresolve_messages()
        await history.logging_agent.inquire(UserMessage("\n\n  indented\n\nend  \n\n")).aresolve_messages()
        loaded = await history.aload_chat_history()

    assert loaded == (
        UserMessage(text="Hello"),
        AssistantMessage(text="Hi! Code:\n\n```\n# user\n```", model="m-1"),
        UserMessage(text="  indented\n\nend  "),
    )


async def test_a_broken_stream_still_ends_its_section(tmp_path: Path) -> None:
    history = ChatHistoryMD(tmp_path / "CHAT.md")

    async def broken(_: dict[str, Any]) -> AsyncIterator[str]:
        yield "half"
        raise ConnectionError("gone")

    async with MiniAgents():
        with pytest.raises(ConnectionError):
            await history.logging_agent.inquire(
                AssistantMessage.promise(message_token_streamer=broken, model="m")
            ).aresolve_messages()
        await history.logging_agent.inquire(UserMessage("next")).aresolve_messages()

    assert (tmp_path / "CHAT.md").read_text(encoding="utf-8") == (
        f"\nassistant / m\n{LINE}\nhalf\n\nuser\n{LINE}\nnext\n"
    )


@pytest.mark.parametrize(
    ("cut_off", "closed"),
    [
        ("Sure:\n```python\nfor i in range(10):\n    print(i)", "```"),
        ("Sure:\n~~~~\n# user\n", "~~~~"),
        ("Here it is:\n<!-- a comment that never", "-->"),
        ("Fine, and `code` and\n```\nclosed\n```", None),
    ],
)
async def test_a_message_cut_off_inside_a_code_block_does_not_swallow_the_next_ones(
    tmp_path: Path, cut_off: str, closed: str
) -> None:
    history = ChatHistoryMD(tmp_path / "CHAT.md")
    logged = [
        UserMessage("Write a loop"),
        AssistantMessage(text=cut_off, model="gpt-test"),  # an answer cut by max_tokens, say
        UserMessage("You were cut off, please continue"),
        AssistantMessage(text="Done.", model="gpt-test"),
    ]
    async with MiniAgents():
        await history.logging_agent.inquire(logged).aresolve_messages()
    loaded = await history.aload_chat_history()
    expected = [message.text for message in logged]
    if closed is not None:  # what the message left open is closed in the file
        expected[1] = f"{cut_off}\n{closed}"
    assert [message.text for message in loaded] == expected
    assert [message.role for message in loaded] == ["user", "assistant", "user", "assistant"]


def test_setext_and_atx_headings_with_and_without_model() -> None:
    markdown = (
        "User\n====\n\nFirst question.\n\n"
        "# assistant / gpt-4o\n\nFirst answer,\n\non two paragraphs.\n"
        "#   USER   \nSecond question.\n\n"  # a blank line, or the setext heading would take this line in
        "assistant /  claude-3 \n=\nSecond answer.\n"
    )

    assert parse_chat_markdown(markdown) == (
        UserMessage(text="First question."),
        AssistantMessage(text="First answer,\n\non two paragraphs.", model="gpt-4o"),
        UserMessage(text="Second question."),
        AssistantMessage(text="Second answer.", model="claude-3"),
    )


def test_a_user_heading_may_name_a_model_too() -> None:
    assert parse_chat_markdown("# user / me\nHi") == (UserMessage(text="Hi", model="me"),)


def test_headings_in_code_blocks_quotes_and_lists_are_text() -> None:
    markdown = (
        "# user\n"
        "```markdown\n# assistant\nuser\n====\n```\n"
        "~~~\n# assistant\n~~~\n"
        "    # assistant (indented code)\n"
        "> # assistant\n"
        "- # assistant\n"
    )

    assert parse_chat_markdown(markdown) == (UserMessage(text=markdown.removeprefix("# user\n").rstrip("\n")),)


def test_other_headings_stay_in_the_message_before_them() -> None:
    markdown = (
        "Preamble, before any message: ignored.\n\n"
        "# user\nQuestion.\n\n"
        "# system\nNot a role that starts a message.\n\n"
        "## assistant\nAn h2 is not a message start.\n\n"
        "# assistant / with spaces in the model\nNor a model with spaces.\n\n"
        "# assistant /\nNor an empty model.\n\n"
        "# assistant\nAnswer.\n"
    )

    assert parse_chat_markdown(markdown) == (
        UserMessage(
            text="Question.\n\n"
            "# system\nNot a role that starts a message.\n\n"
            "## assistant\nAn h2 is not a message start.\n\n"
            "# assistant / with spaces in the model\nNor a model with spaces.\n\n"
            "# assistant /\nNor an empty model."
        ),
        AssistantMessage(text="Answer."),
    )


def test_empty_sections_load_as_empty_text() -> None:
    markdown = f"\nuser\n{LINE}\n\n\nassistant / m\n{LINE}\n\n# user\n"

    assert parse_chat_markdown(markdown) == (
        UserMessage(text=""),
        AssistantMessage(text="", model="m"),
        UserMessage(text=""),
    )


def test_no_role_headings_is_an_empty_history() -> None:
    assert parse_chat_markdown("") == ()
    assert parse_chat_markdown("# Notes\n\nJust notes.\n") == ()


async def test_windows_line_endings_load_like_unix_ones(tmp_path: Path) -> None:
    chat_file = tmp_path / "CHAT.md"
    chat_file.write_bytes(b"# user\r\nHi\r\nthere\r\n\r\n# assistant\r\nHello\r\n")

    assert await ChatHistoryMD(chat_file).aload_chat_history() == (
        UserMessage(text="Hi\nthere"),
        AssistantMessage(text="Hello"),
    )
