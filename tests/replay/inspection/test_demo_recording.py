"""Every command reads the recording `make demo` makes (examples/demo.py: OpenAI agents streaming from the local
fake LLM server)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
from click.testing import CliRunner

from replay.inspection.cli import cli

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo.py"


def test_every_command_reads_the_demo_recording(tmp_path: Path) -> None:
    db = tmp_path / "agents.db"
    done = subprocess.run(
        [sys.executable, str(DEMO), "--db", str(db), "--token-delay", "0.001"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr

    def invoke(*args: object) -> str:
        result = CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    [run_line] = invoke("runs", db).splitlines()
    run_id = run_line.split("\t")[0]
    tree = invoke("tree", db)
    assert tree.startswith(f"run {run_id} ok ")
    for expert in ("0.0 HISTORIAN(", "0.1 ENGINEER(", "0.2 ECOLOGIST(", "0.3 EDITOR("):
        assert f"\n  {expert}" in tree
    assert tree.count("· first token ") == 4 and tree.count("model fake-llm") == 4  # the four OpenAI calls
    events = [orjson.loads(line) for line in invoke("events", db, run_id).splitlines()]
    assert events[0]["kind"] == "run_started" and events[-1]["kind"] == "run_finished"
    reply = next(event for event in events if event["kind"] == "stream")
    assert orjson.loads(invoke("show", db, reply["hash_key"]))["class_"] == "OpenAIMessage"
    assert invoke("verify", db).endswith("no problems\n")
    assert invoke("diff", db, f"{db}:{run_id}").strip().endswith("5 calls compared, no differences")
    invoke("view", db, "-o", tmp_path / "demo.html")
    assert "HISTORIAN" in (tmp_path / "demo.html").read_text(encoding="utf-8")
    invoke("export", db, "-f", "chrome-trace", "-o", tmp_path / "trace.json")
    invoke("export", db, "-f", "otlp-json", "-o", tmp_path / "spans.json")
    spans = orjson.loads((tmp_path / "spans.json").read_bytes())["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert sorted(span["name"] for span in spans) == ["chat fake-llm"] * 4 + ["invoke_agent PANEL_AGENT"]
    providers = {
        item["value"]["stringValue"]
        for span in spans
        for item in span["attributes"]
        if item["key"] == "gen_ai.provider.name"
    }
    assert providers == {"openai"}
    assert invoke("gc", db) == "deleted 0 objects\n"

    # the same recording as a text recording: every command reads it, and it is the same run
    text = tmp_path / "agents.jsonl"
    invoke("export", db, "-f", "jsonl", "-o", text)
    assert invoke("runs", text).split("\t")[:2] == ["run-1", "ok"]
    text_tree = invoke("tree", text)
    assert text_tree.startswith("run run-1 ok (no times recorded), 5 calls")
    untimed = [re.sub(r"( \d+(\.\d+)? m?s$|first token \d+(\.\d+)? m?s · )", "", line) for line in tree.splitlines()]
    assert text_tree.splitlines()[1:] == untimed[1:]  # the same tree, without the times a text recording leaves out
    text_events = [orjson.loads(line) for line in invoke("events", text).splitlines()]
    assert [event["kind"] for event in text_events].count("call_finished") == 5
    assert orjson.loads(invoke("show", text, reply["hash_key"]))["class_"] == "OpenAIMessage"
    assert invoke("verify", text).endswith("no problems\n")
    assert invoke("diff", db, text).strip().endswith("5 calls compared, no differences")
    invoke("view", text, "-o", tmp_path / "demo-text.html")
    invoke("export", text, "-f", "chrome-trace", "-o", tmp_path / "trace-text.json")
    invoke("export", text, "-f", "otlp-json", "-o", tmp_path / "spans-text.json")
    assert invoke("gc", text) == "deleted 0 objects\n"
