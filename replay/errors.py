"""Errors of replay (see `miniagents.errors` for the whole tree).

```
MiniAgentsError
└── ReplayError
    ├── ReplayDivergenceError    a call that the recording does not have (agent, call key, occurrence, closest calls)
    ├── NoRecordingError         replaying from a store that holds no recording
    └── RecordedError            a replayed recorded exception: also an instance of the original class when that
                                 class can be imported (see `replay.rebuilt_errors`); alone, it stands in for one
                                 whose class cannot
```
"""

from __future__ import annotations

from typing import Any, Optional

from miniagents.errors import MiniAgentsError


class ReplayError(MiniAgentsError):
    """Base class of replay's errors."""


class ReplayDivergenceError(ReplayError):
    """An agent call that the recording does not have, in a mode that does not record."""

    def __init__(
        self, message: str, agent_alias: str, call_key: str, occurrence: int, position: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.agent_alias = agent_alias
        self.call_key = call_key
        self.occurrence = occurrence
        self.position = position
        """Where the call was in the run's call tree ("2.0": the first call made by the third top-level call)."""


class NoRecordingError(ReplayError):
    """The store holds no recording to replay from."""


class RecordedError(ReplayError):
    """A recorded exception replayed at its position.

    When the original class can be imported, the replayed error is an instance of it and of `RecordedError` (with
    the original's name, module and text); a plain `RecordedError` stands in for one whose class cannot.
    """

    type_name: str
    module: Optional[str]
    text: str
    recorded_description: dict[str, Any]
    """How the original exception was recorded; a run that records this error records it the same way, so a
    faithful replay has the recording's fingerprint."""

    def __init__(self, type_name: str, module: Optional[str], text: str) -> None:
        super().__init__(f"{module}.{type_name}: {text}" if module else f"{type_name}: {text}")
        self.type_name = type_name
        self.module = module
        self.text = text
        self.recorded_description = {"type": type_name, "module": module, "text": text}
