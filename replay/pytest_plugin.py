"""pytest plugin of miniagents' replay: the `--record-mode` option and the `agent_replay` fixture."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from replay.replay import Replay

RECORD_MODES = ("none", "once", "new_episodes", "all")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_NAME_LENGTH = 120
"""Longer test names are cut (a hash of the whole name follows): file systems refuse names over 255 bytes."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("miniagents", "miniagents replay")
    group.addoption(
        "--record-mode",
        action="store",
        default="none",
        choices=RECORD_MODES,
        help="how agent_replay records agent calls: none (replay only, the default), once, new_episodes, all",
    )


def recording_path(request: pytest.FixtureRequest) -> Path:
    """`recordings/<test module>/<test name>.db` beside the test file.

    The test name is the test's name within its module: `test_greeting`, `TestFrench.test_greeting` for a test in
    a class, `test_llm[What is 2+2?]` for a parametrized one. Characters other than letters, digits, `_`, `.` and
    `-` become `_`, and a name is cut after 120 characters; when that changed the name, a short hash of the whole
    name follows (`test_llm_What_is_2_2-d3ed725a`), so two tests never share a recording.
    """
    test_file = Path(str(request.node.path))
    return test_file.parent / "recordings" / test_file.stem / f"{recording_name(request.node)}.db"


def recording_name(node: pytest.Item) -> str:
    """The file name (without `.db`) of a test's recording (see `recording_path`)."""
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


def _legacy_recording_path(request: pytest.FixtureRequest) -> Path:
    """Where versions before class names and hashes kept this test's recording."""
    test_file = Path(str(request.node.path))
    test_name = _UNSAFE_CHARACTERS.sub("_", request.node.name).strip("_")
    return test_file.parent / "recordings" / test_file.stem / f"{test_name}.db"


@pytest.fixture
def agent_replay(request: pytest.FixtureRequest) -> Replay:
    """A `Replay` bound to this test's recording; pass it as `MiniAgents(replay=agent_replay)`."""
    from replay.replay import Replay
    from store.sqlite import SQLiteStore

    mode = str(request.config.getoption("--record-mode"))
    path = recording_path(request)
    if mode == "none" and not path.exists():
        legacy = _legacy_recording_path(request)
        hint = (
            f" ({legacy.name}, beside it, may be its recording named as earlier versions did, which could be "
            "shared with another test: rename it if it is this test's.)"
            if legacy.exists()
            else ""
        )
        pytest.fail(
            f"No recording for {request.node.nodeid}: {path} does not exist, and --record-mode=none only replays. "
            f"Record it once with: {record_command(request)}{hint}",
            pytrace=False,
        )
    if mode != "none":
        path.parent.mkdir(parents=True, exist_ok=True)
    return Replay(SQLiteStore(path), mode=mode)
