"""The `miniagents` command line: every command on a recorded store, its output, its exit codes and one-line
errors."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from conftest import FIRST_ANSWER, LONG_ANSWER, SECOND_ANSWER, Recordings

from replay.inspection.cli import cli, split_store_and_run
from store import SQLiteStore

BIN = Path(sys.executable).parent


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def one_line_error(result: Result, code: int, *fragments: str) -> None:
    """The command failed with `code` and said why in one line, naming every fragment."""
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("miniagents: error: ")
    for fragment in fragments:
        assert fragment in line


def test_runs_lists_every_run_with_status_start_duration_event_count_and_error(recordings: Recordings) -> None:
    result = invoke("runs", recordings.path)
    assert result.exit_code == 0
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == [recordings.first_run_id, recordings.second_run_id]
    for _, status, started, duration, events in lines:
        assert status == "ok" and started.endswith("+00:00") and duration.endswith(("ms", " s"))
        assert int(events) == recordings.first.info.event_count
    as_json = [orjson.loads(line) for line in invoke("runs", recordings.path, "--json").stdout.splitlines()]
    assert [item["run_id"] for item in as_json] == [recordings.first_run_id, recordings.second_run_id]
    assert set(as_json[0]) == {"run_id", "status", "started", "duration", "events", "error"}
    assert as_json[0]["duration"] > 0 and as_json[0]["error"] is None


def test_tree_shows_calls_with_timing_usage_and_errors_and_full_prints_texts_whole(recordings: Recordings) -> None:
    result = invoke("tree", recordings.path, recordings.first_run_id)
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith(f"run {recordings.first_run_id} ok ")
    for line in ("0 ORCHESTRATOR(", "  0.0 RESEARCHER(", "    0.0.0 STAND_IN_LLM_AGENT(", "  0.2 FACT_CHECKER()"):
        assert any(row.startswith(line) for row in text.splitlines()), line
    assert "    !! ValueError: no sources for this claim" in text
    assert "· first token " in text and "tokens 6 in / 6 out · model stand-in-1" in text
    assert f"> {FIRST_ANSWER}" in text
    assert LONG_ANSWER not in text and "Paper is made from pulp. Paper is made from pulp." in text  # cut short
    full = invoke("tree", recordings.path, recordings.first_run_id, "--full").stdout
    assert f"> {LONG_ANSWER}" in full and f"reply='{LONG_ANSWER}'" in full
    latest = invoke("tree", recordings.path).stdout
    assert latest.startswith(f"run {recordings.second_run_id} ") and SECOND_ANSWER in latest


def test_show_prints_one_object_whole_as_json_or_its_text(recordings: Recordings) -> None:
    llm = recordings.first.call_at("0.0.0")
    [reply] = llm.replies
    shown = orjson.loads(invoke("show", recordings.path, reply.hash_key).stdout)
    assert shown["class_"] == "StandInLLMMessage" and shown["text"] == FIRST_ANSWER
    assert shown["usage"] == {"prompt_tokens": 6, "completion_tokens": 6} and shown["model"] == "stand-in-1"
    assert invoke("show", recordings.path, reply.hash_key, "--text").stdout == FIRST_ANSWER + "\n"
    call_key = llm.node.call_key
    assert call_key is not None
    node = orjson.loads(invoke("show", recordings.path, call_key).stdout)
    assert [message["text"] for message in node["messages"]] == ["Research paper.", "How is paper made?"]
    one_line_error(invoke("show", recordings.path, "0" * 40), 2, "0" * 40)
    one_line_error(invoke("show", recordings.path, "not-a-hash"), 2, "not a hash key")


def test_events_prints_a_run_as_json_lines(recordings: Recordings) -> None:
    lines = invoke("events", recordings.path, recordings.first_run_id).stdout.splitlines()
    events = [orjson.loads(line) for line in lines]
    assert len(events) == recordings.first.info.event_count
    assert [event["seq"] for event in events] == sorted(event["seq"] for event in events)
    assert events[0]["kind"] == "run_started" and events[-1]["kind"] == "run_finished"
    assert {event["run_id"] for event in events} == {recordings.first_run_id}
    assert set(events[0]) == {"seq", "run_id", "kind", "t", "hash_key", "call_id", "parent_call_id", "data"}
    llm = recordings.first.call_at("0.0.0")
    [reply] = llm.replies
    [made] = [event for event in events if event["kind"] == "message" and event["hash_key"] == reply.hash_key][:1]
    assert (made["call_id"], made["parent_call_id"]) == (llm.call_id, llm.parent_call_id)


def test_verify_reports_a_clean_store_and_exits_1_on_a_damaged_one(recordings: Recordings, tmp_path: Path) -> None:
    clean = invoke("verify", recordings.path)
    assert clean.exit_code == 0 and clean.stdout.endswith("no problems\n") and "checked " in clean.stdout
    damaged = tmp_path / "damaged.db"
    shutil.copy(recordings.path, damaged)
    with sqlite3.connect(damaged) as connection:
        connection.execute("UPDATE objects SET body = CAST('{}' AS BLOB) WHERE id = (SELECT MIN(id) FROM objects)")
    connection.close()
    result = invoke("verify", damaged)
    assert result.exit_code == 1
    assert "1 problem" in result.stdout.splitlines()[0]
    assert result.stdout.splitlines()[1].startswith("hash_mismatch: Object ")


def test_diff_compares_two_runs_call_by_call(recordings: Recordings) -> None:
    same = invoke(
        "diff", f"{recordings.path}:{recordings.first_run_id}", f"{recordings.path}:{recordings.first_run_id}"
    )
    assert same.exit_code == 0 and same.stdout.strip().endswith("6 calls compared, no differences")
    result = invoke("diff", f"{recordings.path}:{recordings.first_run_id[:10]}", recordings.path)
    assert result.exit_code == 1
    text = result.stdout
    assert text.splitlines()[0].endswith("6 calls compared, 3 calls differ")
    changed = [line for line in text.splitlines() if line.startswith("~ ")]
    assert changed == [
        "~ 0 ORCHESTRATOR: kwargs, replies differ",
        "~ 0.0 RESEARCHER: kwargs, replies differ",
        "~ 0.0.0 STAND_IN_LLM_AGENT: kwargs, replies differ",
    ]  # the second researcher was asked and answered the same
    assert f"    -{FIRST_ANSWER}" in text and f"    +{SECOND_ANSWER}" in text
    assert f'    -  "answer": "{FIRST_ANSWER}"' in text


def test_diff_across_stores_reports_calls_only_in_one_run(recordings: Recordings, tmp_path: Path) -> None:
    other = tmp_path / "other.db"

    async def arecord_other() -> None:
        from miniagents import MiniAgents
        from miniagents.ext.llm.stand_in import stand_in_llm_agent

        async with MiniAgents(store=SQLiteStore(other)):
            await stand_in_llm_agent.inquire("hi", reply="hello").aresolve_messages()

    asyncio.run(arecord_other())
    result = invoke("diff", f"{recordings.path}:{recordings.first_run_id}", other)
    assert result.exit_code == 1
    assert "+ 0 STAND_IN_LLM_AGENT: only in " in result.stdout
    assert "- 0 ORCHESTRATOR: only in " in result.stdout and "- 0.2 FACT_CHECKER: only in " in result.stdout


def test_store_and_run_are_told_apart_in_diff_arguments() -> None:
    assert split_store_and_run("runs.db:0a1b2c") == ("runs.db", "0a1b2c")
    assert split_store_and_run("runs.db") == ("runs.db", None)
    assert split_store_and_run("sqlite:///runs.db") == ("sqlite:///runs.db", None)
    assert split_store_and_run("sqlite:///runs.db:0a1b") == ("sqlite:///runs.db", "0a1b")
    assert split_store_and_run("dir/runs.jsonl:latest_run") == ("dir/runs.jsonl", "latest_run")


def test_chrome_trace_export_has_a_track_and_a_span_per_call_and_token_marks(
    recordings: Recordings, tmp_path: Path
) -> None:
    output = tmp_path / "trace.json"
    result = invoke("export", recordings.path, recordings.first_run_id, "--format", "chrome-trace", "-o", output)
    assert result.exit_code == 0, result.output
    trace = orjson.loads(output.read_bytes())
    events = trace["traceEvents"]
    spans = [event for event in events if event["ph"] == "X"]
    assert [span["name"] for span in spans] == [call.agent_alias for call in recordings.first.calls]
    names = [event["args"]["name"] for event in events if event["name"] == "thread_name"]
    assert names == [f"{call.position} {call.agent_alias}" for call in recordings.first.calls]
    llm = recordings.first.call_at("0.0.0")
    [llm_span] = [span for span in spans if span["tid"] == llm.call_id]
    assert llm_span["cat"] == "llm" and llm_span["args"]["input_tokens"] == 6
    assert llm_span["ts"] == pytest.approx((llm.started_at or 0) * 1e6, abs=0.01)
    tokens = [event for event in events if event["name"] == "token" and event["tid"] == llm.call_id]
    assert len(tokens) == len(llm.streams[0].chunk_times)
    assert all(llm_span["ts"] <= token["ts"] <= llm_span["ts"] + llm_span["dur"] + 1 for token in tokens)
    assert [event["tid"] for event in events if event["name"] == "first token"] == [
        call.call_id for call in recordings.first.calls if call.streams
    ]
    [error] = [event for event in events if event["name"] == "error"]
    assert error["args"]["error"] == "ValueError: no sources for this claim"


def test_otlp_json_export_is_the_same_file_twice(recordings: Recordings, tmp_path: Path) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    for output in (first, second):
        assert invoke("export", recordings.path, "--format", "otlp-json", "-o", output).exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    spans = orjson.loads(first.read_bytes())["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert len(spans) == 6 and spans[0]["name"] == "invoke_agent ORCHESTRATOR"
    contents = {item["key"] for span in spans for item in span["attributes"]}
    assert "gen_ai.input.messages" not in contents  # only when asked for
    with_content = tmp_path / "content.json"
    invoke("export", recordings.path, "--format", "otlp-json", "-o", with_content, "--content")
    assert b"gen_ai.input.messages" in with_content.read_bytes()


def test_view_writes_one_self_contained_html_file(recordings: Recordings, tmp_path: Path) -> None:
    output = tmp_path / "run.html"
    result = invoke("view", recordings.path, recordings.first_run_id, "-o", output)
    assert result.exit_code == 0 and result.stderr == f"wrote {output}\n"
    page = output.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and recordings.first_run_id in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page
    assert LONG_ANSWER in page  # messages are in the page whole


def test_gc_reports_how_many_objects_it_deleted(recordings: Recordings, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    shutil.copy(recordings.path, copy)
    assert invoke("gc", copy).stdout == "deleted 0 objects\n"

    async def adelete_first() -> None:
        async with SQLiteStore(copy) as opened:
            await opened.adelete_run(recordings.first_run_id)

    asyncio.run(adelete_first())
    result = invoke("gc", copy)
    assert result.exit_code == 0
    deleted = int(result.stdout.split()[1])
    assert deleted > 0 and invoke("verify", copy).exit_code == 0


def test_usage_errors_are_one_line_with_exit_code_2(recordings: Recordings, tmp_path: Path) -> None:
    one_line_error(invoke("runs", tmp_path / "missing.db"), 2, "missing.db", "no such file")
    assert not (tmp_path / "missing.db").exists()
    one_line_error(invoke("tree", recordings.path, "nope"), 2, "No run 'nope'")
    one_line_error(invoke("tree"), 2, "Missing argument 'STORE'")
    one_line_error(invoke("export", recordings.path, "--format", "svg", "-o", tmp_path / "x"), 2, "'svg'")
    one_line_error(invoke("export", recordings.path, "--format", "chrome-trace"), 2, "needs -o FILE")
    one_line_error(invoke("frobnicate"), 2, "No such command 'frobnicate'")
    (tmp_path / "notes.txt").write_text("not a store\n")
    one_line_error(invoke("runs", tmp_path / "notes.txt"), 2, "notes.txt is not a SQLite database")
    (tmp_path / "notes.jsonl").write_text('{"not": "a recording"}\n')
    one_line_error(invoke("tree", tmp_path / "notes.jsonl"), 2, "notes.jsonl is not a miniagents text recording")
    one_line_error(invoke("verify", tmp_path), 2, "it is a folder")
    assert (tmp_path / "notes.txt").read_text() == "not a store\n"
    one_line_error(
        invoke("export", recordings.path, "--format", "chrome-trace", "-o", tmp_path / "no" / "dir.json"),
        1,
        "Could not write",
    )


def test_every_command_is_documented_in_its_help() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("runs", "tree", "show", "events", "verify", "diff", "export", "view", "gc"):
        assert f"  {command} " in result.stdout
        help_text = invoke(command, "--help").stdout
        assert help_text.startswith(f"Usage: miniagents {command} ")


def test_the_console_script_and_python_m_replay_run_the_same_command_line(recordings: Recordings) -> None:
    for command in ([str(BIN / "miniagents")], [sys.executable, "-m", "replay"]):
        done = subprocess.run([*command, "runs", str(recordings.path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert recordings.first_run_id in done.stdout
        failed = subprocess.run([*command, "tree", "missing.db"], capture_output=True, text=True, timeout=60)
        assert failed.returncode == 2 and failed.stdout == ""
        assert (
            failed.stderr == "miniagents: error: No store at 'missing.db': no such file; give the path of a "
            "recording or a store URL.\n"
        )


def test_without_the_cli_extra_the_command_says_how_to_install_it() -> None:
    script = "import sys; sys.modules['click'] = None\nfrom replay.inspection import main\nmain(['runs', 'x.db'])\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (
        "miniagents: error: The miniagents command line needs click and rich: pip install 'miniagents[cli]'\n"
    )


def test_without_the_otel_extra_the_export_says_how_to_install_it(
    recordings: Recordings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    result = invoke("export", recordings.path, "--format", "otlp-json", "-o", tmp_path / "spans.json")
    one_line_error(result, 2, "pip install 'miniagents[otel]'")


async def test_a_terminal_shows_a_progress_bar_once_work_takes_a_while(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from replay.inspection import cli as cli_module

    async with cli_module._progress("Reading runs.db") as progress:  # not a terminal: nothing shown
        await asyncio.sleep(0.02)
        progress.update(5, 10)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich takes stderr for a terminal
    monkeypatch.setattr(cli_module, "PROGRESS_DELAY", 0.01)
    async with cli_module._progress("Reading runs.db") as progress:
        await asyncio.sleep(0.05)
        progress.update(5, 10)
        await asyncio.sleep(0.15)
    shown = capsys.readouterr().err
    assert "Reading runs.db" in shown and "5/10" in shown
