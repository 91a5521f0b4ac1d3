"""The `miniagents` command line on text recordings (`*.jsonl`): exported from a SQLite store, recorded directly,
compared with SQLite runs of the same flow, and damaged by hand."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
from click.testing import CliRunner, Result
from conftest import FIRST_ANSWER, SECOND_ANSWER, Recordings, orchestrator

from miniagents import MiniAgents
from replay import Replay, afingerprint
from replay.inspection.cli import cli
from store import JSONLStore, SQLiteStore


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


async def arecord_jsonl(path: Path, answer: str) -> None:
    """Record the flow of `conftest` into a text recording, as the pytest plugin does (`JSONLStore(path)`)."""
    async with MiniAgents(store=JSONLStore(path)):
        await orchestrator.inquire("How is paper made?", answer=answer).aresolve_messages()


async def areplay_fingerprint(path: Path, answer: str) -> str:
    """Replay the flow offline from a recording (mode none) and return the replayed run's fingerprint."""
    replay = Replay(JSONLStore(path), mode="none")
    async with MiniAgents(replay=replay):
        await orchestrator.inquire("How is paper made?", answer=answer).aresolve_messages()
    assert replay.replayed_calls == 2 and not replay.divergences  # the two LLM calls
    return replay.fingerprint


def test_jsonl_export_writes_a_text_recording_that_verifies_and_replays_with_the_same_fingerprint(
    recordings: Recordings, tmp_path: Path
) -> None:
    output = tmp_path / "first.jsonl"
    result = invoke("export", recordings.path, recordings.first_run_id, "--format", "jsonl", "-o", output)
    assert result.exit_code == 0 and result.stderr == f"wrote {output}\n"

    async def asource_fingerprint() -> str:
        async with SQLiteStore(recordings.path) as source:
            return await afingerprint(source, recordings.first_run_id)

    async def aexported() -> tuple[list[str], bool, str]:
        async with JSONLStore(output) as exported:
            runs = [run.run_id for run in await exported.alist_runs()]
            return runs, (await exported.averify()).ok, await afingerprint(exported, runs[0])

    source_fingerprint = asyncio.run(asource_fingerprint())
    assert output.read_bytes().startswith(b'{"format":"miniagents-recording"')
    assert asyncio.run(aexported()) == (["run-1"], True, source_fingerprint)
    assert asyncio.run(areplay_fingerprint(output, FIRST_ANSWER)) == source_fingerprint
    assert invoke("verify", output).exit_code == 0


def test_jsonl_export_replaces_the_file_and_writes_text_whatever_its_name(
    recordings: Recordings, tmp_path: Path
) -> None:
    output = tmp_path / "run.jsonl"
    for run_id in (recordings.first_run_id, recordings.second_run_id):
        assert invoke("export", recordings.path, run_id, "-f", "jsonl", "-o", output).exit_code == 0
    content = output.read_bytes()
    assert content.count(b'{"run":') == 1  # the file holds the run exported last, not both
    assert SECOND_ANSWER.encode() in content and FIRST_ANSWER.encode() not in content
    named_db = tmp_path / "run.db"
    assert invoke("export", recordings.path, "-f", "jsonl", "-o", named_db).exit_code == 0
    assert named_db.read_bytes() == content  # a text recording, whatever the suffix
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.db", "run.jsonl"]  # no temporary files left

    onto_itself = invoke("export", output, "-f", "jsonl", "-o", output)
    assert onto_itself.exit_code == 2 and onto_itself.stdout == ""
    assert onto_itself.stderr.startswith("miniagents: error: -o ") and len(onto_itself.stderr.splitlines()) == 1
    assert output.read_bytes() == content


def test_every_command_reads_a_recorded_text_recording(recordings: Recordings, tmp_path: Path) -> None:
    recording = tmp_path / "test_flow.jsonl"
    asyncio.run(arecord_jsonl(recording, FIRST_ANSWER))

    def ok(*args: object) -> str:
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        return result.stdout

    assert ok("runs", recording).split("\t")[:2] == ["run-1", "ok"]
    tree = ok("tree", recording)
    assert tree.startswith("run run-1 ok (no times recorded), 6 calls, tokens ")
    assert " ms" not in tree and "first token" not in tree  # a stable text recording holds no times
    assert "0.0.0 STAND_IN_LLM_AGENT(" in tree and "tokens " in tree
    events = [orjson.loads(line) for line in ok("events", recording).splitlines()]
    assert [event["run_id"] for event in events] == ["run-1"] * len(events)
    reply = next(event for event in events if event["kind"] == "stream")
    assert ok("show", recording, reply["hash_key"], "--text").strip() == FIRST_ANSWER
    assert ok("verify", recording).endswith(": no problems\n")
    ok("view", recording, "-o", tmp_path / "run.html")
    assert FIRST_ANSWER in (tmp_path / "run.html").read_text(encoding="utf-8")
    ok("export", recording, "-f", "chrome-trace", "-o", tmp_path / "trace.json")
    ok("export", recording, "-f", "otlp-json", "-o", tmp_path / "spans.json")
    assert ok("gc", recording) == "deleted 0 objects\n"

    # the same flow recorded into SQLite and into the text recording: no differences, either way round
    same = invoke("diff", f"{recordings.path}:{recordings.first_run_id}", recording)
    assert same.exit_code == 0, same.output
    assert same.stdout.strip().endswith("6 calls compared, no differences")
    assert invoke("diff", recording, f"{recordings.path}:{recordings.first_run_id}").exit_code == 0
    changed = invoke("diff", recording, f"{recordings.path}:{recordings.second_run_id}")
    assert changed.exit_code == 1 and SECOND_ANSWER in changed.stdout


def test_the_latest_run_of_a_text_recording_is_its_last(recordings: Recordings, tmp_path: Path) -> None:
    recording = tmp_path / "both.jsonl"
    asyncio.run(arecord_jsonl(recording, FIRST_ANSWER))
    asyncio.run(arecord_jsonl(recording, SECOND_ANSWER))  # a text recording keeps no start times
    tree = invoke("tree", recording).stdout
    assert tree.startswith("run run-2 ") and SECOND_ANSWER in tree
    assert invoke("diff", f"{recording}:run-1", recording).exit_code == 1


def test_verify_names_the_changed_line_of_a_text_recording(recordings: Recordings, tmp_path: Path) -> None:
    recording = tmp_path / "flow.jsonl"
    asyncio.run(arecord_jsonl(recording, FIRST_ANSWER))
    lines = recording.read_text(encoding="utf-8").splitlines(keepends=True)
    number = next(index + 1 for index, line in enumerate(lines) if FIRST_ANSWER in line and '"@"' in line)
    lines[number - 1] = lines[number - 1].replace("wood pulp", "bamboo")
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(lines), encoding="utf-8")

    verified = invoke("verify", tampered)
    assert verified.exit_code == 1
    assert f"was changed at line {number}" in verified.stdout
    assert "bamboo" not in invoke("tree", recording).stdout
    tree = invoke("tree", tampered)  # reading the changed object is refused, in one line
    assert tree.exit_code == 1 and tree.stdout == "" and len(tree.stderr.splitlines()) == 1
    assert f"line {number}" in tree.stderr

    conflicted = tmp_path / "conflicted.jsonl"
    shutil.copy(recording, conflicted)
    lines[number - 1] = "<<<<<<< HEAD\n"
    conflicted.write_text("".join(lines), encoding="utf-8")
    merged = invoke("verify", conflicted)
    assert merged.exit_code == 1 and merged.stdout == ""
    assert merged.stderr.startswith(f"miniagents: error: {conflicted}, line {number}: ")
    assert len(merged.stderr.splitlines()) == 1
