"""Event links: a hash chain per run over every stored event field, so that a changed event is found and named.

Each event of a run stores a link: the hash of the run's previous link and of the event's kind, time, hash key,
call ids and data, exactly as stored. The first link starts from the run id. Changing, removing, inserting or
reordering any event of a run breaks the links from that event on; `averify()` names the first broken one (run
and sequence number), replay refuses a run whose links do not hold, and a run whose stored event count differs
from its events lost some at the end. The links protect against accidents and hand edits, not against someone who
rewrites the chain on purpose (that needs a signature kept elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

import orjson
from blake3 import blake3

from miniagents.events import EventKind

LINK_SIZE = 16
"""Bytes of one link (128 bits: enough to tell any change; the links are no signature)."""


class StoredEvent(NamedTuple):
    """One event as a backend stores it (`kind`: the name as stored for a kind this library does not know)."""

    seq: int
    run_id: str
    kind: Union[EventKind, str]
    t: float
    hash_key: Optional[str]
    call_id: Optional[int]
    parent_call_id: Optional[int]
    data: Optional[bytes]
    link: Optional[bytes]


def first_link(run_id: str) -> bytes:
    """The link a run's first event follows."""
    return blake3(b"miniagents run\x00" + run_id.encode()).digest()[:LINK_SIZE]


def next_link(
    previous: bytes,
    kind: Union[EventKind, str],
    t: Optional[float],
    hash_key: Optional[str],
    call_id: Optional[int],
    parent_call_id: Optional[int],
    data: Optional[bytes],
) -> bytes:
    """The link of an event that follows `previous` in its run: its kind by name (so kinds a later version adds
    are linked too), `t` to the nanosecond (a backend may keep it as a decimal number; -0.0 as 0.0; None for a
    time that is not a number), and `data` as stored, after a header that cannot contain a newline."""
    name = kind.value if isinstance(kind, EventKind) else kind
    time = None if t is None else f"{t + 0.0:.9f}"
    header = orjson.dumps((name, time, hash_key, call_id, parent_call_id, data is not None))
    return blake3(previous + header + b"\n" + (data or b"")).digest()[:LINK_SIZE]


@dataclass
class _RunState:
    link: bytes
    count: int = 0
    broken_at: Optional[int] = None
    """Seq of the first event whose link did not hold (later events are not reported again)."""


@dataclass
class ChainProblem:
    """A run whose events are not as they were written."""

    run_id: str
    seq: Optional[int]
    message: str


@dataclass
class ChainCheck:
    """Checks the links of stored events fed in `seq` order (any mix of runs), then their counts."""

    links: bool = True
    """Whether the events carry links (False: only the counts are checked)."""
    runs: dict[str, _RunState] = field(default_factory=dict)
    problems: list[ChainProblem] = field(default_factory=list)

    def feed(self, events: Iterable[StoredEvent]) -> None:
        runs = self.runs
        for event in events:
            state = runs.get(event.run_id)
            if state is None:
                state = runs[event.run_id] = _RunState(first_link(event.run_id))
            state.count += 1
            if state.broken_at is not None or not self.links:
                continue
            expected = next_link(
                state.link, event.kind, event.t, event.hash_key, event.call_id, event.parent_call_id, event.data
            )
            if event.link != expected:
                state.broken_at = event.seq
                what = "has no link" if event.link is None else "does not match its link"
                kind = event.kind.value if isinstance(event.kind, EventKind) else event.kind
                self.problems.append(
                    ChainProblem(
                        event.run_id,
                        event.seq,
                        f"Event {event.seq} of run {event.run_id!r} ({kind}) {what}: it, or an event "
                        "of the run before it, was changed, removed or inserted after it was written.",
                    )
                )
            state.link = expected

    def finish(self, event_counts: Mapping[str, int]) -> list[ChainProblem]:
        """The problems found, with the runs whose stored event count differs from the events there are (of the
        runs in `event_counts`: those the check was about)."""
        for run_id, recorded in event_counts.items():
            state = self.runs.get(run_id)
            found = state.count if state is not None else 0
            if found != recorded and (state is None or state.broken_at is None):
                self.problems.append(
                    ChainProblem(
                        run_id,
                        None,
                        f"Run {run_id!r} has {found} events, but {recorded} were written: events were removed "
                        "(or added) after they were written.",
                    )
                )
        return self.problems
