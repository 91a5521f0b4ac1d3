"""`acopy`: runs copied from one store into another (any two backends), with every hash key kept."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import orjson

from miniagents.events import Event
from miniagents.promising.ext.frozen import Frozen
from store.base import EventStore
from store.decoding import body_references
from store.encoding import event_references
from store.errors import StoreIntegrityError, StoreUsageError, UnknownHashError


async def acopy(source: EventStore, target: EventStore, run_ids: Optional[Iterable[str]] = None) -> list[str]:
    """Copy runs (all, oldest first, or those of `run_ids` in that order) from `source` into `target`, event by
    event with the objects they use, and return their ids.

    Objects keep their canonical bytes, so every hash key, call key and run fingerprint is the same in `target`
    (a text recording then writes runs as it writes every run: see `JSONLStore`). A store that is not open is
    opened for the copy and closed after it. Refused before anything is written: a run id `target` already holds
    (`StoreUsageError`), a run whose events in `source` are not as they were written (`StoreIntegrityError`, from
    `source.averify_run`: a changed run must not become a clean-looking copy), and a run whose event data names a
    stored object that none of its events carries (`UnknownHashError`: a store writes objects only with the events
    that carry them).
    """
    opened = [store for store in dict.fromkeys((source, target)) if not store.is_open]
    for store in opened:
        await store.aopen()
    try:
        runs = await source.alist_runs()
        if run_ids is not None:
            by_id = {run.run_id: run for run in runs}
            runs = [by_id[run_id] if run_id in by_id else await source.aget_run(run_id) for run_id in run_ids]
        present = {run.run_id for run in await target.alist_runs()}
        clashing = [run.run_id for run in runs if run.run_id in present]
        if clashing:
            raise StoreUsageError(
                f"{target.location} already holds the runs {clashing}; copy into another store, or delete them "
                "there first."
            )
        available: set[str] = set()  # carried by the runs read so far
        copies = [(run.run_id, *await _aread_run(source, target, run.run_id, available)) for run in runs]
        for run_id, events, carried in copies:
            await _awrite_run(target, run_id, events, carried)
        return [run.run_id for run in runs]
    finally:
        for store in reversed(opened):
            await store.aclose()


async def _aread_run(
    source: EventStore, target: EventStore, run_id: str, available: set[str]
) -> tuple[list[Event], dict[str, Frozen]]:
    await _acheck_run(source, run_id)
    events = await source.aget_events(run_id)
    return events, await _aobjects_carried(source, target, events, available)


async def _acheck_run(source: EventStore, run_id: str) -> None:
    """Raise `StoreIntegrityError` naming the run and its first problem if its events in `source` are not as they
    were written (see `EventStore.averify_run`)."""
    report = await source.averify_run(run_id)
    if not report.ok:
        first = report.problems[0]
        more = f" ({len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        raise StoreIntegrityError(
            f"Run {run_id!r} of {source.location} was changed after it was written, so it is not copied (nothing "
            f"was written to the target): {first}{more} Restore the source from a backup, or copy the other runs "
            "with run_ids=[...].",
            run_id=run_id,
            seq=first.seq,
        )


async def _awrite_run(target: EventStore, run_id: str, events: list[Event], carried: dict[str, Frozen]) -> None:
    await target.astart_run(run_id)
    try:
        for event in events:
            obj = carried.get(event.hash_key) if event.hash_key is not None else None
            target.append(
                Event(
                    event.kind,
                    run_id,
                    event.t,
                    event.hash_key,
                    event.call_id,
                    event.parent_call_id,
                    event.data,
                    obj=obj,
                    canonical_bytes=obj.canonical_bytes if obj is not None else None,
                )
            )
    finally:
        await target.afinish_run(run_id)


async def _aobjects_carried(
    source: EventStore, target: EventStore, events: list[Event], available: set[str]
) -> dict[str, Frozen]:
    """The objects the events name by their hash keys, rebuilt (a store brings the messages nested in them); an
    object that event data names has to be one of them, nested in one, carried by a run copied before (keys in
    `available`, which this extends) or in `target` already."""
    keys = [event.hash_key for event in events if event.hash_key is not None]
    present = [key for key in dict.fromkeys(keys) if await source.acontains(key)]
    objects = await source.aget_many(present)
    reachable = available
    reachable.update(present)
    stack = list(present)
    while stack:
        body = await source.aget_bytes(stack.pop())
        for ref in body_references(body):
            if ref not in reachable:
                reachable.add(ref)
                stack.append(ref)
    for event in events:
        data = None if event.data is None else orjson.dumps(event.data)
        for ref in event_references(event.kind, data)[0]:
            if ref not in reachable and await source.acontains(ref):
                raise UnknownHashError(
                    f"Run {event.run_id!r} of {source.location} names object {ref} only in the data of event "
                    f"{event.seq} (no event of the run carries it), so it cannot be copied with the run.",
                    ref,
                )
    return dict(objects)
