"""pytest plugin of miniagents' replay: the `agent_replay` fixture, its options, and the unused recordings report.

Options (and ini settings): `--record-mode` (none, once, new_episodes, all), `--record-format` / ini
`miniagents_record_format` (jsonl, the default, or sqlite), `--record-timing` / ini `miniagents_record_timing`,
`--drop-unused-calls` / ini `miniagents_drop_unused_calls`, `--remove-unused-recordings`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import shlex
import threading
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import orjson
import pytest

if TYPE_CHECKING:
    from miniagents.events import Event, InterceptedCall
    from miniagents.miniagents import MiniAgents
    from replay.replay import Replay
    from store.base import EventStore

RECORD_MODES = ("none", "once", "new_episodes", "all")
RECORD_FORMATS = {"jsonl": ".jsonl", "sqlite": ".db"}
"""Recording formats and their file suffixes: a text recording (`store.JSONLStore`), or a `store.SQLiteStore`."""
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_NAME_LENGTH = 120
"""Longer test names are cut (a hash of the whole name follows): file systems refuse names over 255 bytes."""
_PASSED = pytest.StashKey[bool]()
_USES_RECORDINGS = pytest.StashKey[list[pytest.Item]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("miniagents", "miniagents replay")
    group.addoption(
        "--record-mode",
        action="store",
        default="none",
        choices=RECORD_MODES,
        help="how agent_replay records agent calls: none (replay only, the default), once, new_episodes, all",
    )
    group.addoption(
        "--record-format",
        action="store",
        default=None,
        choices=sorted(RECORD_FORMATS),
        help="the format of new recordings: jsonl (text files for git, the default) or sqlite; "
        "ini: miniagents_record_format",
    )
    group.addoption(
        "--record-timing",
        action="store_true",
        default=None,
        help="keep event times and stream timing (rounded to milliseconds) in text recordings, for replays at the "
        "recorded pace; ini: miniagents_record_timing",
    )
    group.addoption(
        "--drop-unused-calls",
        action="store_true",
        default=None,
        help="after a test passes replaying its recording, rewrite the recording with only the calls it used; "
        "ini: miniagents_drop_unused_calls",
    )
    group.addoption(
        "--remove-unused-recordings",
        action="store_true",
        default=False,
        help="remove the recordings that no collected test uses (they are listed at the end of every session)",
    )
    parser.addini("miniagents_record_format", "format of new recordings: jsonl (default) or sqlite", default="jsonl")
    parser.addini(
        "miniagents_record_timing",
        "keep event times and stream timing in text recordings",
        type="bool",
        default=False,
    )
    parser.addini(
        "miniagents_drop_unused_calls",
        "rewrite a replayed recording with only the calls the test used",
        type="bool",
        default=False,
    )


def record_format(config: pytest.Config) -> str:
    """The format of new recordings: the `--record-format` option, else the ini setting (jsonl by default)."""
    chosen = config.getoption("--record-format") or config.getini("miniagents_record_format") or "jsonl"
    chosen = str(chosen).strip().lower()
    if chosen not in RECORD_FORMATS:
        raise pytest.UsageError(
            f"miniagents_record_format = {chosen!r} is not a recording format; use one of {sorted(RECORD_FORMATS)}."
        )
    return chosen


def record_timing(config: pytest.Config) -> bool:
    """Whether text recordings keep times and stream timing: `--record-timing`, else the ini setting (False)."""
    chosen = config.getoption("--record-timing")
    if chosen is None:
        chosen = config.getini("miniagents_record_timing")
    return bool(chosen)


def recording_path(request: pytest.FixtureRequest, chosen_format: Optional[str] = None) -> Path:
    """`recordings/<test module>/<test name>.jsonl` (`.db` in the sqlite format) beside the test file.

    The test name is the test's name within its module: `test_greeting`, `TestFrench.test_greeting` for a test in
    a class, `test_llm[What is 2+2?]` for a parametrized one. Characters other than letters, digits, `_`, `.` and
    `-` become `_`, and a name is cut after 120 characters; when that changed the name, a short hash of the whole
    name follows (`test_llm_What_is_2_2-d3ed725a`), so two tests never share a recording.
    """
    return _recording_path(request.node, chosen_format or record_format(request.config))


def _recording_path(node: pytest.Item, chosen_format: str) -> Path:
    test_file = Path(str(node.path))
    return test_file.parent / "recordings" / test_file.stem / f"{recording_name(node)}{RECORD_FORMATS[chosen_format]}"


def _existing_recording(node: pytest.Item, chosen_format: str) -> Optional[Path]:
    """The recording a test replays: the one in the chosen format, else one in another format, else None."""
    for candidate in (chosen_format, *(other for other in RECORD_FORMATS if other != chosen_format)):
        path = _recording_path(node, candidate)
        if path.is_file():
            return path
    return None


def recording_name(node: pytest.Item) -> str:
    """The file name (without its suffix) of a test's recording (see `recording_path`)."""
    name = ".".join([*_class_names(node), node.name])
    readable = _UNSAFE_CHARACTERS.sub("_", name).strip("_")
    if readable == name and len(name) <= _MAX_NAME_LENGTH:
        return name
    return f"{readable[:_MAX_NAME_LENGTH]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _class_names(node: pytest.Item) -> list[str]:
    names: list[str] = []
    parent = node.parent
    while parent is not None and isinstance(parent, pytest.Class):
        names.insert(0, parent.name)
        parent = parent.parent
    return names


def record_command(request: pytest.FixtureRequest) -> str:
    """The shell command that records this test, to paste where pytest was started: the test's node id made
    relative to that folder, quoted for a POSIX shell (parametrized ids hold spaces, brackets, `?`, quotes)."""
    test_file = Path(str(request.node.path))
    invocation_dir = Path(request.config.invocation_params.dir)
    _, separator, rest = request.node.nodeid.partition("::")
    test_id = f"{os.path.relpath(test_file, invocation_dir)}{separator}{rest}"
    return f"pytest --record-mode=once {shlex.quote(test_id)}"


def _legacy_recording_paths(request: pytest.FixtureRequest) -> list[Path]:
    """Where versions before class names and hashes kept this test's recording."""
    test_file = Path(str(request.node.path))
    test_name = _UNSAFE_CHARACTERS.sub("_", request.node.name).strip("_")
    folder = test_file.parent / "recordings" / test_file.stem
    return [folder / f"{test_name}{suffix}" for suffix in RECORD_FORMATS.values()]


def _open_recording(path: Path, timing: bool = False) -> EventStore:
    from store.jsonl import JSONLStore
    from store.sqlite import SQLiteStore

    return JSONLStore(path, timing=timing) if path.suffix == RECORD_FORMATS["jsonl"] else SQLiteStore(path)


@pytest.fixture
def agent_replay(request: pytest.FixtureRequest) -> Iterator[Replay]:
    """A `Replay` bound to this test's recording; pass it as `MiniAgents(replay=agent_replay)`."""
    config = request.config
    mode = str(config.getoption("--record-mode"))
    chosen_format = record_format(config)
    path = _recording_path(request.node, chosen_format)
    if mode != "all":  # a recording in the other format is replayed (and extended) as it is
        path = _existing_recording(request.node, chosen_format) or path
    if mode == "none" and not path.exists():
        legacy = [item for item in _legacy_recording_paths(request) if item.exists()]
        hint = (
            f" ({legacy[0].name}, beside it, may be its recording named as earlier versions did, which could be "
            "shared with another test: rename it if it is this test's.)"
            if legacy
            else ""
        )
        pytest.fail(
            f"No recording for {request.node.nodeid}: {path} does not exist, and --record-mode=none only replays. "
            f"Record it once with: {record_command(request)}{hint}",
            pytrace=False,
        )
    if mode != "none":
        path.parent.mkdir(parents=True, exist_ok=True)
    drop_unused = config.getoption("--drop-unused-calls")
    if drop_unused is None:
        drop_unused = bool(config.getini("miniagents_drop_unused_calls"))
    timing = record_timing(config)
    replay = _plugin_replay_class()(_open_recording(path, timing), mode=mode)
    yield replay
    if drop_unused and request.node.stash.get(_PASSED, False) and getattr(replay, "used_only_the_recording", False):
        _in_a_thread(adrop_unused_calls(_open_recording(path, timing), getattr(replay, "used_calls", ())))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


@functools.cache
def _plugin_replay_class() -> type[Replay]:
    """The `Replay` the fixture gives (made on first use: the plugin is imported before the library is)."""
    from replay.replay import RecordMode, Replay
    from store.results import RunStatus

    class PluginReplay(Replay):
        """A `Replay` that also notes which recorded calls answered the run (for `--drop-unused-calls`), and keeps
        a recording one run in mode `new_episodes`."""

        used_calls: set[tuple[str, Optional[str], int]]
        """(call key, position, occurrence) of every call answered from the recording."""
        new_calls = 0
        """Calls of the run that the recording did not have, run live and recorded (mode `new_episodes`)."""

        async def astart(self, mini_agents: MiniAgents) -> None:
            self.used_calls = set()
            self.new_calls = 0
            await super().astart(mini_agents)
            mini_agents.add_event_sink(_ReplayedCalls(self.used_calls))

        async def aanswer(self, call: InterceptedCall) -> Any:
            answer = await super().aanswer(call)
            if answer is None and self.replaying and self.recording:
                self.new_calls += 1
            return answer

        async def afinish(self, mini_agents: MiniAgents, error: Optional[BaseException]) -> None:
            run_id = mini_agents.run_id
            if self.mode is RecordMode.NEW_EPISODES and self.recording and run_id is not None and self.store.is_open:
                try:
                    await self._akeep_one_run(run_id, error)
                except BaseException:
                    await super().afinish(mini_agents, error)  # closes the store
                    raise
            await super().afinish(mini_agents, error)

        async def _akeep_one_run(self, run_id: str, error: Optional[BaseException]) -> None:
            """Mode `new_episodes`: a run that finished ok and recorded new calls holds every call of the test
            (those answered from the recording too), so it replaces the earlier runs (it is kept when there are
            none); a run that recorded nothing new, or failed, is deleted, and the recording stays as it was."""
            runs = await self.store.alist_runs()
            new_run_ok = error is None and any(run.run_id == run_id and run.status == RunStatus.OK for run in runs)
            earlier = [run.run_id for run in runs if run.run_id != run_id]
            doomed = earlier if new_run_ok and (self.new_calls or not earlier) else [run_id]
            for doomed_run_id in doomed:
                await self.store.adelete_run(doomed_run_id, force=True)  # its own recording: even a killed run goes
            await self.store.agc()

        @property
        def used_only_the_recording(self) -> bool:
            """Whether the last run was answered from the recording without recording anything or diverging."""
            return self.replaying and not self.recording and not self.divergences and self.run_id is not None

    return PluginReplay


class _ReplayedCalls:
    """An event sink noting the calls of a run that were answered from the recording."""

    def __init__(self, found: set[tuple[str, Optional[str], int]]) -> None:
        self.found = found

    async def astart_run(self, run_id: str) -> None:
        return None

    def append(self, event: Event) -> None:
        from miniagents.events import CallFinishedPayload, EventKind

        if event.kind is EventKind.CALL_FINISHED and event.hash_key is not None:
            payload = event.payload
            if isinstance(payload, CallFinishedPayload) and payload.replayed:
                self.found.add((event.hash_key, payload.position, payload.occurrence or 0))

    async def afinish_run(self, run_id: str) -> None:
        return None


def _in_a_thread(coroutine: Any) -> None:
    """Run a coroutine to its end on an event loop of its own (pytest-asyncio's loop is not running here)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as error:  # raised again in the test's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="miniagents drop-unused-calls")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def adrop_unused_calls(store: EventStore, used: Iterable[tuple[str, Optional[str], int]]) -> int:
    """Rewrite the runs of a recording with only the calls that were `used` (call key, position, occurrence),
    the calls they were made in and the calls made inside them; return how many calls were dropped.

    A recorded call was used when its call key and position match a used call's (or, when none of the calls with
    that key has the position, its occurrence). Events outside any call are kept; objects no run needs any more
    are collected.
    """
    from miniagents.events import CallFinishedPayload, Event, EventKind

    used = set(used)
    used_keys = {key for key, _, _ in used}
    used_positions = {(key, position) for key, position, _ in used}
    used_occurrences = {(key, occurrence) for key, _, occurrence in used}
    dropped = 0
    async with store:
        for run in await store.alist_runs():
            events = await store.aget_events(run.run_id)
            parents: dict[int, Optional[int]] = {}
            answered: set[int] = set()
            calls_by_key: dict[str, list[tuple[int, CallFinishedPayload]]] = {}
            for event in events:
                if event.call_id is not None and event.kind is EventKind.CALL_STARTED:
                    parents[event.call_id] = event.parent_call_id
                payload = event.payload if event.kind is EventKind.CALL_FINISHED else None
                if isinstance(payload, CallFinishedPayload) and event.call_id is not None and event.hash_key:
                    parents.setdefault(event.call_id, event.parent_call_id)
                    calls_by_key.setdefault(event.hash_key, []).append((event.call_id, payload))
            for key, calls in calls_by_key.items():
                if key not in used_keys:
                    continue
                by_position = [call_id for call_id, payload in calls if (key, payload.position) in used_positions]
                if by_position:
                    answered.update(by_position)
                else:
                    answered.update(
                        call_id for call_id, payload in calls if (key, payload.occurrence or 0) in used_occurrences
                    )
            kept = _with_relatives(answered, parents)
            in_calls = [event for event in events if event.call_id is not None]
            if all(event.call_id in kept for event in in_calls):
                continue
            needed = await _aobjects_used(store, [event for event in in_calls if event.call_id in kept])
            only_dropped = await _aobjects_used(store, [event for event in in_calls if event.call_id not in kept])
            only_dropped -= needed
            keep = [  # outside calls: all but the messages only dropped calls received
                event
                for event in events
                if (event.call_id in kept if event.call_id is not None else event.hash_key not in only_dropped)
            ]
            dropped += len({call_id for call_id in parents if call_id not in kept})
            await store.adelete_run(run.run_id, force=True)
            await store.astart_run(run.run_id)
            for event in keep:
                store.append(
                    Event(
                        event.kind,
                        run.run_id,
                        event.t,
                        event.hash_key,
                        event.call_id,
                        event.parent_call_id,
                        event.data,
                    )
                )
            await store.afinish_run(run.run_id)
        if dropped:
            await store.agc()
    return dropped


async def _aobjects_used(store: EventStore, events: list[Event]) -> set[str]:
    """The hash keys of the objects the events name, and of everything those reference."""
    from store.decoding import body_references
    from store.encoding import event_references

    found: set[str] = set()
    stack = [event.hash_key for event in events if event.hash_key is not None]
    for event in events:
        if event.data is not None:
            stack.extend(event_references(event.kind, orjson.dumps(event.data))[0])
    while stack:
        key = stack.pop()
        if key in found or not await store.acontains(key):
            continue
        found.add(key)
        stack.extend(body_references(await store.aget_bytes(key)))
    return found


def _with_relatives(answered: set[int], parents: dict[int, Optional[int]]) -> set[int]:
    """The calls, the calls they were made in, and the calls made inside them (at any depth)."""
    kept = set(answered)
    for call_id in parents:
        chain: list[int] = []
        current: Optional[int] = call_id
        while current is not None and current not in chain:
            chain.append(current)
            current = parents.get(current)
        if any(item in answered for item in chain):  # answered, or made inside an answered call
            kept.add(call_id)
        if call_id in answered:
            kept.update(chain)  # and the calls it was made in
    return kept


# ------------------------------------------------------------------------------------------- unused recordings


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_USES_RECORDINGS] = list(items)  # before -k / -m deselect any: a deselected test still owns one


def unused_recordings(config: pytest.Config) -> list[Path]:
    """The recordings no collected test uses: in the recordings folder of every test module collected whole, the
    files no test of it replays, and the folders of test modules that no longer exist."""
    items = config.stash.get(_USES_RECORDINGS, [])
    chosen_format = record_format(config)
    partial = _partly_collected_files(config)
    owned: set[Path] = set()
    modules: set[Path] = set()
    for item in items:
        module = Path(str(item.path))
        modules.add(module)
        if "agent_replay" in getattr(item, "fixturenames", ()):
            recording = _existing_recording(item, chosen_format)
            if recording is not None:
                owned.add(recording.resolve())
    unused: list[Path] = []
    for folder in sorted({module.parent / "recordings" for module in modules}):
        if not folder.is_dir():
            continue
        for module_folder in sorted(path for path in folder.iterdir() if path.is_dir()):
            module = folder.parent / f"{module_folder.name}.py"
            if module.exists() and (module not in modules or module in partial):
                continue  # not collected (or only some of its tests): what it uses is not known here
            for recording in sorted(module_folder.iterdir()):
                if recording.suffix in RECORD_FORMATS.values() and recording.resolve() not in owned:
                    unused.append(recording)
    return unused


def _partly_collected_files(config: pytest.Config) -> set[Path]:
    """Test files named with a test inside them on the command line (`test_x.py::test_y`)."""
    invocation_dir = Path(config.invocation_params.dir)
    return {
        (invocation_dir / str(argument).split("::", 1)[0]).resolve()
        for argument in config.args
        if "::" in str(argument)
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or config.pluginmanager.has_plugin("dsession"):
        return  # with pytest-xdist, no process collects every test
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or _USES_RECORDINGS not in config.stash:
        return
    unused = unused_recordings(config)
    if not unused:
        return
    invocation_dir = Path(config.invocation_params.dir)
    remove = bool(config.getoption("--remove-unused-recordings"))
    terminalreporter.write_sep("-", "miniagents: recordings no test uses")
    for recording in unused:
        shown = os.path.relpath(recording, invocation_dir)
        if remove:
            for companion in (recording, *(Path(f"{recording}{suffix}") for suffix in ("-wal", "-shm"))):
                companion.unlink(missing_ok=True)
            terminalreporter.write_line(f"removed {shown}")
        else:
            terminalreporter.write_line(shown)
    if not remove:
        terminalreporter.write_line("(remove them with --remove-unused-recordings)")
