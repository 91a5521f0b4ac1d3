"""What the `runs`, `show`, `events`, `verify` and `gc` commands do, as Python functions over a store."""

from __future__ import annotations

import datetime
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Optional, Union

import orjson

from miniagents.events import Event
from replay.inspection.model import aresolve_run_id, plain
from store.base import EventStore
from store.errors import StoreUsageError
from store.opening import open_store
from store.results import RunInfo, VerifyReport


def open_existing_store(target: Union[str, os.PathLike[str], EventStore]) -> EventStore:
    """`store.open_store(target)` (not opened yet), refusing a file path where no file is, so that reading a
    mistyped path never creates an empty store."""
    if isinstance(target, EventStore):
        return target
    text = os.fspath(target)
    if "://" not in text and not os.path.exists(text):
        raise StoreUsageError(f"No store at {text!r}: no such file; give the path of a recording or a store URL.")
    if "://" not in text and os.path.isdir(text):
        raise StoreUsageError(f"No store at {text!r}: it is a folder; give the path of a recording or a store URL.")
    return open_store(text)


@dataclass(frozen=True)
class RunSummary:
    """One line of `miniagents runs`: a run's id, status, start, duration, event count and error."""

    run_id: str
    status: str
    started: Optional[str]
    """Wall-clock start, ISO 8601 in UTC."""
    duration: Optional[float]
    """Seconds, for a finished run."""
    event_count: int
    error: Optional[str]

    @classmethod
    def of(cls, info: RunInfo) -> RunSummary:
        started = (
            datetime.datetime.fromtimestamp(info.started_at, datetime.timezone.utc).isoformat(timespec="seconds")
            if info.started_at
            else None
        )
        duration = info.finished_at - info.started_at if info.finished_at and info.started_at else None
        return cls(
            info.run_id,
            info.status,
            started,
            duration,
            info.event_count,
            str(info.error) if info.error is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "started": self.started,
            "duration": self.duration,
            "events": self.event_count,
            "error": self.error,
        }


async def alist_run_summaries(store: EventStore) -> list[RunSummary]:
    """Every run of an open store, oldest first, as `miniagents runs` lists them."""
    return [RunSummary.of(info) for info in await store.alist_runs()]


async def ashow_object(store: EventStore, hash_key: str, text: bool = False) -> str:
    """One stored object, whole, as indented JSON (nested messages spelled out), or with `text=True` its text."""
    obj = await store.aget(hash_key)
    if text:
        return str(obj)
    return orjson.dumps(plain(obj), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def event_json(event: Event) -> dict[str, Any]:
    """An event as one JSON object: seq, run_id, kind, t, hash_key, call_id, parent_call_id, data."""
    return {
        "seq": event.seq,
        "run_id": event.run_id,
        "kind": str(event.kind),
        "t": event.t,
        "hash_key": event.hash_key,
        "call_id": event.call_id,
        "parent_call_id": event.parent_call_id,
        "data": event.data,
    }


async def aiter_event_lines(store: EventStore, run: Optional[str] = None) -> AsyncIterator[str]:
    """The events of one run (the latest when `run` is None) as JSON Lines, one event per line, in order."""
    run_id = await aresolve_run_id(store, run)
    async for event in store.aiter_events(run_id):
        yield orjson.dumps(event_json(event)).decode()


def verify_report_lines(report: VerifyReport) -> list[str]:
    """`averify()`'s report as text: what was checked, then one line per problem."""
    summary = f"checked {report.checked_objects} objects and {report.checked_events} events: "
    if report.ok:
        return [summary + "no problems"]
    lines = [summary + f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}"]
    lines.extend(f"{problem.kind}: {problem.message}" for problem in report.problems)
    return lines


async def averify_store(store: EventStore) -> VerifyReport:
    """The integrity report of an open store (`EventStore.averify()`): every object re-hashed, every reference
    checked, every event's data read as its kind's payload."""
    return await store.averify()


async def agc_store(store: EventStore) -> int:
    """Delete the objects no event needs any more (`EventStore.agc()`); return how many were deleted."""
    return await store.agc()
