"""The pytest plugin: --record-mode and the agent_replay fixture, driven through pytester."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TEST_FILE = """
from pathlib import Path

from miniagents import MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent

CALLS = Path(__file__).parent / "llm_calls.txt"


def counting_responder(messages):
    with CALLS.open("a") as calls:
        calls.write("called\\n")
    return "the recorded answer"


async def test_llm_flow(agent_replay):
    llm = stand_in_llm_agent.fork(responder=counting_responder)
    async with MiniAgents(replay=agent_replay):
        replies = await llm.inquire("question").aresolve_messages()
    assert [str(reply) for reply in replies] == ["the recorded answer"]
"""


INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def llm_calls(pytester: pytest.Pytester) -> int:
    calls = pytester.path / "llm_calls.txt"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_record_once_then_replay_without_calling_the_llm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flow=TEST_FILE)
    pytester.makeini(INI)
    recorded = pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider")
    recorded.assert_outcomes(passed=1)
    assert (pytester.path / "recordings" / "test_flow" / "test_llm_flow.jsonl").exists()
    assert not (pytester.path / "recordings" / "test_flow" / "test_llm_flow.db").exists()
    assert llm_calls(pytester) == 1

    replayed = pytester.runpytest("-p", "no:cacheprovider")
    replayed.assert_outcomes(passed=1)
    assert llm_calls(pytester) == 1


def test_a_missing_recording_fails_with_how_to_record_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flow=TEST_FILE)
    pytester.makeini(INI)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*No recording for test_flow.py::test_llm_flow*pytest --record-mode=once*"])
    assert not (pytester.path / "recordings").exists()
    assert llm_calls(pytester) == 0


def test_the_option_is_listed_in_help(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*--record-mode*",
            "*--record-format*",
            "*--record-timing*",
            "*--drop-unused-calls*",
            "*--remove-unused-recordings*",
        ]
    )


COLLIDING_TESTS = """
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from miniagents import MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent


@pytest.mark.parametrize("question", ["What is 2+2?", "What is 2*2?"])
async def test_llm(agent_replay, question):
    async with MiniAgents(replay=agent_replay):
        await stand_in_llm_agent.inquire(question).aresolve_messages()


class TestFrench:
    async def test_greeting(self, agent_replay):
        async with MiniAgents(replay=agent_replay):
            await stand_in_llm_agent.inquire("Dis bonjour").aresolve_messages()


class TestGerman:
    async def test_greeting(self, agent_replay):
        async with MiniAgents(replay=agent_replay):
            await stand_in_llm_agent.inquire("Sag hallo").aresolve_messages()
"""


def test_tests_in_other_classes_or_with_other_parameters_have_their_own_recordings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_prompts=COLLIDING_TESTS)
    pytester.makeini(INI)
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider").assert_outcomes(passed=4)
    names = sorted(path.name for path in (pytester.path / "recordings" / "test_prompts").glob("*.jsonl"))
    assert len(names) == 4
    assert names[:2] == ["TestFrench.test_greeting.jsonl", "TestGerman.test_greeting.jsonl"]
    assert all(re.fullmatch(r"test_llm_What_is_2_2-[0-9a-f]{8}\.jsonl", name) for name in names[2:])
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)  # each replays its own recording


PARAMETRIZED_TEST = """
import pytest

from miniagents import MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent


@pytest.mark.parametrize("question", ["Why paper?", "It's [odd] & $HOME"])
async def test_ask(agent_replay, question):
    async with MiniAgents(replay=agent_replay):
        await stand_in_llm_agent.inquire(question).aresolve_messages()
"""


def record_commands(output: str) -> list[str]:
    return re.findall(r"Record it once with: (pytest --record-mode=once .*?)(?: \(|$)", output, re.MULTILINE)


@pytest.mark.parametrize("started_in", [".", "tests"])
def test_the_record_command_of_a_missing_recording_runs_when_pasted_into_a_shell(
    pytester: pytest.Pytester, started_in: str
) -> None:
    pytester.makeini(INI)
    (pytester.path / "tests" / "flows").mkdir(parents=True)
    (pytester.path / "tests" / "flows" / "test_questions.py").write_text(PARAMETRIZED_TEST)
    invocation_dir = pytester.path / started_in
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rN"],
        cwd=invocation_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    commands = record_commands(result.stdout)
    assert len(commands) == 2, result.stdout
    test_path = os.path.relpath(pytester.path / "tests" / "flows" / "test_questions.py", invocation_dir)
    assert [shlex.split(command) for command in commands] == [
        ["pytest", "--record-mode=once", f"{test_path}::test_ask[Why paper?]"],
        ["pytest", "--record-mode=once", f"{test_path}::test_ask[It's [odd] & $HOME]"],
    ]

    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:  # pasted as printed, each records its one test
        pasted = subprocess.run(
            ["bash", "-c", f"{command} -p no:cacheprovider"],
            cwd=invocation_dir,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert pasted.returncode == 0, pasted.stdout + pasted.stderr
        assert "1 passed" in pasted.stdout
    assert len(list((pytester.path / "tests" / "flows" / "recordings" / "test_questions").glob("*.jsonl"))) == 2


LONG_ID_TEST = """
import pytest

from miniagents import MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent


@pytest.mark.parametrize("question", ["Why? " * 60, "Why? " * 60 + "And how?"])
async def test_ask(agent_replay, question):
    async with MiniAgents(replay=agent_replay):
        await stand_in_llm_agent.inquire(question).aresolve_messages()
"""


def test_a_test_id_too_long_for_a_file_name_gets_a_capped_name_of_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_long=LONG_ID_TEST)
    pytester.makeini(INI)
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    names = sorted(path.name for path in (pytester.path / "recordings" / "test_long").glob("*.jsonl"))
    assert len(names) == 2  # ids that differ only after the cut still get recordings of their own
    assert all(len(name.encode()) <= 140 for name in names)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


@pytest.mark.parametrize("opt_in", ["option", "ini"])
def test_sqlite_recordings_are_an_opt_in(pytester: pytest.Pytester, opt_in: str) -> None:
    pytester.makepyfile(test_flow=TEST_FILE)
    pytester.makeini(INI + ("miniagents_record_format = sqlite\n" if opt_in == "ini" else ""))
    options = ["--record-format=sqlite"] if opt_in == "option" else []
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider", *options).assert_outcomes(passed=1)
    folder = pytester.path / "recordings" / "test_flow"
    assert (folder / "test_llm_flow.db").read_bytes().startswith(b"SQLite format 3")
    assert not (folder / "test_llm_flow.jsonl").exists()
    pytester.runpytest("-p", "no:cacheprovider", *options).assert_outcomes(passed=1)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)  # a .db recording still replays
    assert llm_calls(pytester) == 1


def test_a_wrong_record_format_setting_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flow=TEST_FILE)
    pytester.makeini(INI + "miniagents_record_format = yaml\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*miniagents_record_format = 'yaml' is not a recording format*"])


def test_mode_all_leaves_one_run_and_an_unchanged_flow_writes_the_same_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flow=TEST_FILE)
    pytester.makeini(INI)
    recording = pytester.path / "recordings" / "test_flow" / "test_llm_flow.jsonl"
    pytester.runpytest("--record-mode=all", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    first = recording.read_bytes()
    pytester.runpytest("--record-mode=new_episodes", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.runpytest("--record-mode=all", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert recording.read_bytes() == first
    assert first.count(b'{"run":') == 1
    assert llm_calls(pytester) == 2


TWO_CALLS_TEST = """
import os

from miniagents import MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent


async def test_questions(agent_replay):
    questions = ["first question", "second question"][: int(os.environ.get("QUESTIONS", "2"))]
    async with MiniAgents(replay=agent_replay):
        for question in questions:
            await stand_in_llm_agent.inquire(question).aresolve_messages()
"""


@pytest.mark.parametrize("opt_in", ["option", "ini"])
def test_drop_unused_calls_rewrites_a_recording_with_the_calls_used(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, opt_in: str
) -> None:
    pytester.makepyfile(test_questions=TWO_CALLS_TEST)
    pytester.makeini(INI + ("miniagents_drop_unused_calls = true\n" if opt_in == "ini" else ""))
    options = ["--drop-unused-calls"] if opt_in == "option" else []
    recording = pytester.path / "recordings" / "test_questions" / "test_questions.jsonl"
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert b"second question" in recording.read_bytes()
    pytester.runpytest("-p", "no:cacheprovider", *options).assert_outcomes(passed=1)
    assert b"second question" in recording.read_bytes()  # every call was used: nothing changes

    monkeypatch.setenv("QUESTIONS", "1")
    pytester.runpytest("-p", "no:cacheprovider", *options).assert_outcomes(passed=1)
    content = recording.read_bytes()
    assert b"first question" in content and b"second question" not in content
    assert content.count(b'"event":"call_finished"') == 1
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)  # and it still replays
    monkeypatch.setenv("QUESTIONS", "2")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)  # the dropped call is gone


def test_recordings_no_test_uses_are_listed_and_removed_on_request(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flow=TEST_FILE)
    pytester.makeini(INI)
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    folder = pytester.path / "recordings" / "test_flow"
    (folder / "test_renamed_away.jsonl").write_bytes((folder / "test_llm_flow.jsonl").read_bytes())
    (pytester.path / "recordings" / "test_deleted_module").mkdir()
    (pytester.path / "recordings" / "test_deleted_module" / "test_old.db").write_bytes(b"")

    partial = pytester.runpytest("-p", "no:cacheprovider", "test_flow.py::test_llm_flow")
    partial.assert_outcomes(passed=1)
    assert "test_renamed_away" not in partial.stdout.str()  # not every test of the module ran: not told

    listed = pytester.runpytest("-p", "no:cacheprovider")
    listed.assert_outcomes(passed=1)
    listed.stdout.fnmatch_lines(
        [
            "*miniagents: recordings no test uses*",
            "recordings/test_deleted_module/test_old.db",
            "recordings/test_flow/test_renamed_away.jsonl",
            "(remove them with --remove-unused-recordings)",
        ]
    )
    assert "test_llm_flow.jsonl" not in listed.stdout.str()
    assert (folder / "test_renamed_away.jsonl").exists()

    removed = pytester.runpytest("-p", "no:cacheprovider", "--remove-unused-recordings")
    removed.stdout.fnmatch_lines(["removed recordings/test_flow/test_renamed_away.jsonl"])
    assert sorted(path.name for path in folder.iterdir()) == ["test_llm_flow.jsonl"]
    assert not (pytester.path / "recordings" / "test_deleted_module" / "test_old.db").exists()
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_new_episodes_keeps_a_recording_one_run_with_the_new_calls(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_questions=TWO_CALLS_TEST)
    pytester.makeini(INI)
    recording = pytester.path / "recordings" / "test_questions" / "test_questions.jsonl"
    monkeypatch.setenv("QUESTIONS", "1")
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert b"second question" not in recording.read_bytes()

    monkeypatch.setenv("QUESTIONS", "2")
    pytester.runpytest("--record-mode=new_episodes", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    extended = recording.read_bytes()
    assert extended.count(b'{"run":') == 1 and b'{"run":"run-1"' in extended
    assert extended.count(b'"event":"call_finished"') == 2 and b"second question" in extended
    pytester.runpytest("--record-mode=new_episodes", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert recording.read_bytes() == extended  # nothing new: the recording stays as it was
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)  # both calls replay offline


def test_new_episodes_keeps_a_sqlite_recording_one_run_too(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_questions=TWO_CALLS_TEST)
    pytester.makeini(INI + "miniagents_record_format = sqlite\n")
    monkeypatch.setenv("QUESTIONS", "1")
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    monkeypatch.setenv("QUESTIONS", "2")
    pytester.runpytest("--record-mode=new_episodes", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.runpytest("--record-mode=new_episodes", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = subprocess.run(
        [sys.executable, "-m", "replay", "runs", "recordings/test_questions/test_questions.db"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.parametrize("opt_in", ["option", "ini", "neither"])
def test_record_timing_keeps_times_in_text_recordings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, opt_in: str
) -> None:
    pytester.makepyfile(
        test_flow="""
import os
import time

from miniagents import MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent


async def test_slow(agent_replay):
    agent_replay.speed = 1.0 if os.environ.get("AT_PACE") else None
    llm = stand_in_llm_agent.fork(token_delay=0.01)
    start = time.monotonic()
    async with MiniAgents(replay=agent_replay):
        await llm.inquire("question", reply="one two three four").aresolve_messages()
    assert time.monotonic() - start >= float(os.environ.get("AT_PACE", "0"))
"""
    )
    pytester.makeini(INI + ("miniagents_record_timing = true\n" if opt_in == "ini" else ""))
    options = ["--record-timing"] if opt_in == "option" else []
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider", *options).assert_outcomes(passed=1)
    content = (pytester.path / "recordings" / "test_flow" / "test_slow.jsonl").read_text()
    streams = [line for line in content.splitlines() if line.startswith('{"event":"stream"')]
    assert len(streams) == 1
    if opt_in == "neither":
        assert '"offsets":[]' in streams[0] and '"t":' not in content
    else:
        offsets = re.search(r'"offsets":\[([^\]]*)\]', streams[0])
        assert offsets is not None and len(offsets[1].split(",")) >= 4
        assert all(len(item.split(".")[-1]) <= 3 for item in offsets[1].split(","))  # rounded to milliseconds
        assert '"t":' in content
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    if opt_in != "neither":
        monkeypatch.setenv("AT_PACE", "0.025")  # the replay follows the recorded pace (4 tokens, 10 ms apart)
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_new_episodes_records_a_test_without_llm_calls_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
from miniagents import InteractionContext, MiniAgents, miniagent


@miniagent
async def echo(ctx: InteractionContext) -> None:
    ctx.reply(ctx.messages)


async def test_echo(agent_replay):
    async with MiniAgents(replay=agent_replay):
        assert [str(reply) for reply in await echo.inquire("hi").aresolve_messages()] == ["hi"]
"""
    )
    pytester.makeini(INI)
    pytester.runpytest("--record-mode=new_episodes", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    recording = pytester.path / "recordings" / "test_plain" / "test_echo.jsonl"
    assert recording.read_bytes().count(b'{"run":') == 1
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
