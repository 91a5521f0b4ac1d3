"""What a store reports: runs (`RunInfo`, `RunStatus`) and the findings of its checks (`VerifyReport`, `Problem`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from miniagents.events import ErrorDescription


class RunStatus:
    """Values of `RunInfo.status`."""

    RUNNING = "running"
    """Started and not finished: still running, or its process died before the run finished."""
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True)
class RunInfo:
    """What a store knows about one run."""

    run_id: str
    status: str
    """`"running"` until the run finishes (forever, if its process died), then `"ok"` or `"failed"`."""
    started_at: Optional[float]
    """Wall-clock start, seconds since the epoch."""
    finished_at: Optional[float]
    library_version: Optional[str]
    metadata: dict[str, Any]
    error: Optional[ErrorDescription]
    """What the `MiniAgents` block raised, for a run that failed."""
    event_count: int

    @property
    def is_finished(self) -> bool:
        """Whether the run's `run_finished` event was stored."""
        return self.status != RunStatus.RUNNING


@dataclass(frozen=True)
class Problem:
    """One thing `averify()` found wrong; names the object (`hash_key`) and/or the event (`seq`)."""

    kind: str
    """`"hash_mismatch"`, `"unreadable_object"`, `"dangling_reference"`, `"missing_object"`, `"malformed_event"`
    (event data that is not its kind's payload, see `miniagents.events`), `"changed_event"` (an event, or the
    events of a run, not as they were written: see `store.chain`) or `"storage"`."""
    message: str
    hash_key: Optional[str] = None
    seq: Optional[int] = None
    run_id: Optional[str] = None

    def __str__(self) -> str:
        return self.message


@dataclass
class VerifyReport:
    """The outcome of `averify()`."""

    checked_objects: int = 0
    checked_events: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    @property
    def checked(self) -> int:
        """How many objects and events were checked."""
        return self.checked_objects + self.checked_events
