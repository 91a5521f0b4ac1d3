"""The examples run offline, against the fake LLM server, in a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
LINE = "=" * 40


def run_example(
    script: str, *args: str, cwd: Path, stdin: str = "", env: Optional[dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.endswith("_API_KEY")}
    environment.pop("MINIAGENTS_OFFLINE", None)
    # should a key come from somewhere (a .env file), the real APIs are still out of reach: port 9 is "discard"
    environment.update(OPENAI_BASE_URL="http://127.0.0.1:9/v1", ANTHROPIC_BASE_URL="http://127.0.0.1:9")
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("provider", "message_class", "args", "env"),
    [
        ("openai", "OpenAIMessage", ["--offline"], {}),
        ("anthropic", "AnthropicMessage", ["--provider", "anthropic"], {"MINIAGENTS_OFFLINE": "1"}),
    ],
)
def test_llm_example_offline(
    tmp_path: Path, provider: str, message_class: str, args: list[str], env: dict[str, str]
) -> None:
    result = run_example("llm_example.py", *args, cwd=tmp_path, env=env)

    assert (result.returncode, result.stderr) == (0, "")
    out = result.stdout
    assert "\nWell, I am. Thank you for asking, you did. Hmm.\n\n" in out
    classes = re.findall(r"^HASH KEY: [0-9a-f]{40}\n(\w+)$", out, re.MULTILINE)
    assert classes == ["Message", message_class, "AgentCallNode", "AgentReplyNode"]
    # the call node keeps its keyword arguments apart from its fields, as (name, value) pairs
    assert f"('async_client', '<Async{'OpenAI' if provider == 'openai' else 'Anthropic'}>')" in out
    assert "('system', 'Respond only in Yoda-speak.')" in out
    assert "('model', 'fake-llm')" in out


def test_llm_example_without_a_key_asks_for_one(tmp_path: Path) -> None:
    result = run_example("llm_example.py", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "Set OPENAI_API_KEY to ask the real API, or run with --offline.\n"


def test_conversation_offline_with_piped_input(tmp_path: Path) -> None:
    # Enter is "\r" for prompt_toolkit, Ctrl+Space ("\x00") a newline; the end of the input ends the conversation
    result = run_example("conversation.py", "--offline", cwd=tmp_path, stdin="Hello there\rTwo\x00lines\r")

    assert result.returncode == 0, result.stderr
    first_answer = "(offline) Message 1 of our chat. You said: Hello there"
    second_answer = "(offline) Message 3 of our chat. You said: Two\nlines"  # the LLM got the whole chat
    assert f"\nOPENAI_AGENT: {first_answer}\n\n" in result.stdout
    assert f"\nOPENAI_AGENT: {second_answer}\n\n" in result.stdout
    assert (tmp_path / "CHAT.md").read_text(encoding="utf-8") == (
        f"\nuser\n{LINE}\nHello there\n"
        f"\nassistant / fake-llm\n{LINE}\n{first_answer}\n"
        f"\nuser\n{LINE}\nTwo\nlines\n"
        f"\nassistant / fake-llm\n{LINE}\n{second_answer}\n"
    )


def test_conversation_goes_on_from_the_chat_file(tmp_path: Path) -> None:
    chat_file = tmp_path / "chat.md"
    chat_file.write_text("# user\nMy name is Ann.\n\n# assistant / fake-llm\nHi Ann!\n", encoding="utf-8")

    result = run_example(
        "conversation.py",
        "--offline",
        "--provider",
        "anthropic",
        "--chat-file",
        str(chat_file),
        cwd=tmp_path,
        stdin="What is my name?\r",
    )

    assert result.returncode == 0, result.stderr
    answer = "(offline) Message 3 of our chat. You said: What is my name?"  # the two loaded from the file, too
    assert f"\nANTHROPIC_AGENT: {answer}\n\n" in result.stdout
    assert chat_file.read_text(encoding="utf-8") == (
        "# user\nMy name is Ann.\n\n# assistant / fake-llm\nHi Ann!\n"
        f"\nuser\n{LINE}\nWhat is my name?\n\nassistant / fake-llm\n{LINE}\n{answer}\n"
    )
