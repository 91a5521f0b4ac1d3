"""`make demo` (examples/demo.py): records a panel of OpenAI agents from the local fake LLM server, replays it
offline without a single HTTP request, and picks the OpenAI API only when OPENAI_API_KEY is set."""

import asyncio
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from miniagents import MiniAgents
from replay import Replay, ReplayDivergenceError
from store import SQLiteStore

DEMO_PATH = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
_spec = importlib.util.spec_from_file_location("demo", DEMO_PATH)
assert _spec is not None and _spec.loader is not None
demo = importlib.util.module_from_spec(_spec)
sys.modules["demo"] = demo  # dataclasses look their module up while the class is being made
_spec.loader.exec_module(demo)

EXPERTS = demo.EXPERTS
FAKE_MODEL = demo.FAKE_MODEL
HTTPRequestCounter = demo.HTTPRequestCounter
LLMSettings = demo.LLMSettings
arecord_and_replay = demo.arecord_and_replay
arun_panel = demo.arun_panel
choose_llm = demo.choose_llm
closed_port_url = demo.closed_port_url
editor_summary = demo.editor_summary
main = demo.main
openai_client = demo.openai_client

QUESTION = "How is paper made, and can it be recycled?"
FAKE_SERVER = LLMSettings(real_api=False, model=FAKE_MODEL)
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def plain(output: str) -> str:
    """The console output without its colours and styles."""
    return ANSI_STYLE.sub("", output)


async def test_the_demo_records_one_run_and_replays_it_without_any_http_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "agents.db"

    outcome = await arecord_and_replay(QUESTION, 0.0, db, FAKE_SERVER)

    async with SQLiteStore(db) as store:
        [run] = await store.alist_runs()
    assert run.run_id == outcome.run_id
    assert outcome.recorded_fingerprint == outcome.replayed_fingerprint
    assert (outcome.live_http_requests, outcome.replay_http_requests) == (len(EXPERTS) + 1, 0)
    assert outcome.replayed_calls == len(EXPERTS) + 1
    output = plain(capsys.readouterr().out)
    tree = output.split("3. The recorded interaction tree", 1)[1]
    for alias in [*EXPERTS, "EDITOR", "PANEL_AGENT"]:
        assert f"{alias}#" in tree
    assert "- HISTORIAN: Paper was first made in China around 105 AD." in output  # the editor's summary
    assert f"recorded {outcome.recorded_fingerprint}, replayed {outcome.recorded_fingerprint} (the same)" in output


async def test_the_replay_phase_needs_no_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "agents.db"
    await arecord_and_replay(QUESTION, 0.0, db, FAKE_SERVER)  # the fake server is stopped when it returns
    capsys.readouterr()

    requests = HTTPRequestCounter()
    replay = Replay(SQLiteStore(db), mode="none")
    async with openai_client(requests, closed_port_url()) as client, MiniAgents(replay=replay):
        await arun_panel(QUESTION, FAKE_SERVER, client)

    assert requests.count == 0
    assert replay.replayed_calls == len(EXPERTS) + 1
    assert "- ECOLOGIST: Recycled fibres can be reused" in plain(capsys.readouterr().out)


async def test_a_question_that_was_not_recorded_is_not_sent_anywhere(tmp_path: Path) -> None:
    db = tmp_path / "agents.db"
    await arecord_and_replay(QUESTION, 0.0, db, FAKE_SERVER)

    requests = HTTPRequestCounter()
    replay = Replay(SQLiteStore(db), mode="none")
    with pytest.raises(ReplayDivergenceError):
        async with openai_client(requests, closed_port_url()) as client, MiniAgents(replay=replay):
            await arun_panel("What is papyrus?", FAKE_SERVER, client)
    assert requests.count == 0


def test_main_records_into_the_db_flag_and_rerecording_replaces_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "panel.db"
    for _ in range(2):
        main(["--db", str(db), "--token-delay", "0"], environ={})

    output = plain(capsys.readouterr().out)
    assert "the local fake LLM server at http://127.0.0.1:" in output
    assert f"recorded into {db.resolve()}" in output
    assert "4 live, 0 during the replay" in output

    async def runs() -> int:
        async with SQLiteStore(db) as store:
            return len(await store.alist_runs())

    assert asyncio.run(runs()) == 1


def test_an_openai_api_key_selects_the_openai_api_with_the_model_flag() -> None:
    assert choose_llm({"OPENAI_API_KEY": "sk-real"}, "gpt-4.1-nano") == LLMSettings(
        real_api=True, model="gpt-4.1-nano"
    )
    assert choose_llm({"OPENAI_API_KEY": "sk-real"}).model == "gpt-4o-mini"
    assert choose_llm({}, "gpt-4.1-nano") == FAKE_SERVER
    assert choose_llm({"OPENAI_API_KEY": ""}) == FAKE_SERVER
    assert "because OPENAI_API_KEY is set" in choose_llm({"OPENAI_API_KEY": "sk-real"}).describe(None)


async def test_the_openai_api_client_reads_the_key_from_the_environment_without_calling_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    requests = HTTPRequestCounter()

    async with openai_client(requests) as client:
        assert client.api_key == "sk-from-the-environment"
        assert client.base_url.host == "api.openai.com"

    assert requests.count == 0


def test_the_fake_editor_sums_up_the_notes_it_gets() -> None:
    notes = "The panel's answers:\nHISTORIAN: Paper came from China, long ago.\nENGINEER: Machines dry pulp."
    assert editor_summary(notes) == (
        "Summary of the panel:\n- HISTORIAN: Paper came from China.\n- ENGINEER: Machines dry pulp."
    )


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colours_only_on_a_terminal_and_never_with_no_color() -> None:
    assert demo.terminal_style(FakeTerminal(), {}) == demo.COLOURS
    assert demo.terminal_style(FakeTerminal(), {"NO_COLOR": ""}) == demo.COLOURS  # empty means unset
    assert demo.terminal_style(FakeTerminal(), {"NO_COLOR": "1"}) == demo.Style()
    assert demo.terminal_style(io.StringIO(), {}) == demo.Style()


def test_the_demo_script_writes_plain_text_into_a_pipe(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.endswith("_API_KEY")}
    environment.pop("NO_COLOR", None)
    result = subprocess.run(
        [sys.executable, str(DEMO_PATH), "--db", str(tmp_path / "agents.db"), "--token-delay", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "4. Fingerprints" in result.stdout and "(the same)" in result.stdout
    assert "\x1b" not in result.stdout
