"""pytest plugin of miniagents' replay: the `--record-mode` option and the `agent_replay` fixture."""

from __future__ import annotations

import pytest

RECORD_MODES = ("none", "once", "new_episodes", "all")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("miniagents", "miniagents replay")
    group.addoption(
        "--record-mode",
        action="store",
        default="none",
        choices=RECORD_MODES,
        help="how agent_replay records agent calls: none (replay only, default), once, new_episodes, all",
    )
