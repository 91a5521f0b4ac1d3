"""Every `miniagents` command the README shows runs on a recorded store, with the exit code it documents."""

from __future__ import annotations

import asyncio
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Recordings

import store
from replay.inspection.cli import cli
from store import JSONLStore, SQLiteStore

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_commands() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Looking at runs", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_shows_every_command() -> None:
    shown = {shlex.split(command)[1] for command in readme_commands()}
    assert shown == {"runs", "tree", "show", "events", "verify", "diff", "view", "export", "gc"}
    assert set(cli.commands) == shown


@pytest.mark.parametrize("form", ["sqlite", "jsonl"])
def test_every_command_of_the_readme_runs(
    recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """On the SQLite store, and on the same runs as a text recording (whose runs are numbered `run-1`, ...)."""
    if form == "sqlite":
        shutil.copy(recordings.path, tmp_path / "agents.db")
        run_id = recordings.first_run_id
    else:
        asyncio.run(store.acopy(SQLiteStore(recordings.path), JSONLStore(tmp_path / "agents.jsonl")))
        run_id = "run-1"
    monkeypatch.chdir(tmp_path)
    [reply] = recordings.first.call_at("0.0.0").replies
    for command in readme_commands():
        if form == "jsonl":
            command = command.replace("agents.db", "agents.jsonl")
        words = shlex.split(command.replace("RUN", run_id).replace("HASH", reply.hash_key))
        assert words[0] == "miniagents"
        result = CliRunner().invoke(cli, words[1:], catch_exceptions=False)
        expected = 1 if words[1] == "diff" else 0  # diff: the first run against the latest, they differ
        assert result.exit_code == expected, f"{command}: {result.output}"
        assert result.stdout or result.stderr, command
    assert (tmp_path / "run.html").exists() and (tmp_path / "trace.json").exists()
    assert (tmp_path / "spans.json").exists()

    async def aexported() -> tuple[list[str], bool]:
        async with JSONLStore(tmp_path / "run.jsonl") as exported:
            return [run.run_id for run in await exported.alist_runs()], (await exported.averify()).ok

    assert asyncio.run(aexported()) == (["run-1"], True)  # the latest run, as a text recording
