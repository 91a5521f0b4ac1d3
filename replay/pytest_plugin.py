"""pytest plugin of miniagents' replay: the `--record-mode` option and the `agent_replay` fixture."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from replay.replay import Replay

RECORD_MODES = ("none", "once", "new_episodes", "all")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")


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
    """`recordings/<test module>/<test name>.db` beside the test file."""
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
        pytest.fail(
            f"No recording for {request.node.nodeid}: {path} does not exist, and --record-mode=none only replays. "
            f"Record it once with: pytest --record-mode=once {request.node.nodeid}",
            pytrace=False,
        )
    if mode != "none":
        path.parent.mkdir(parents=True, exist_ok=True)
    return Replay(SQLiteStore(path), mode=mode)
