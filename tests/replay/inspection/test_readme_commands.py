"""Every `miniagents` command the README shows runs on a recorded store, with the exit code it documents."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Recordings

import store
from replay.inspection.cli import cli

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_commands() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Looking at runs", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_shows_every_command() -> None:
    shown = {shlex.split(command)[1] for command in readme_commands()}
    assert shown == {"runs", "tree", "show", "events", "verify", "diff", "view", "export", "gc"}
    assert set(cli.commands) == shown


def test_every_command_of_the_readme_runs(
    recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(recordings.path, tmp_path / "agents.db")
    monkeypatch.chdir(tmp_path)
    [reply] = recordings.first.call_at("0.0.0").replies
    for command in readme_commands():
        words = shlex.split(command.replace("RUN", recordings.first_run_id).replace("HASH", reply.hash_key))
        assert words[0] == "miniagents"
        result = CliRunner().invoke(cli, words[1:], catch_exceptions=False)
        if words[1] == "diff":
            expected = 1  # the first run against the latest: they differ
        elif "jsonl" in words:
            expected = 0 if hasattr(store, "acopy") else 2  # needs the text-recording backend
        else:
            expected = 0
        assert result.exit_code == expected, f"{command}: {result.output}"
        assert result.stdout or result.stderr, command
    assert (tmp_path / "run.html").exists() and (tmp_path / "trace.json").exists()
    assert (tmp_path / "spans.json").exists()
