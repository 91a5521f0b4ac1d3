"""The integrity checks of a store: every object re-hashed and its references found, every event's data read as its
kind's payload and its references found, every run's events checked against their hash chain (`store.chain`) and
count. Read through the backend contract only, in one snapshot where the backend has them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import orjson

from miniagents.events import EventKind
from store.chain import ChainCheck, ChainProblem, StoredEvent
from store.decoding import body_references, hash_matches
from store.encoding import event_references, known_kind
from store.errors import StoreReadError
from store.results import Problem, VerifyReport

if TYPE_CHECKING:
    from store.base import EventStore


async def averify_store(store: EventStore) -> VerifyReport:
    """`EventStore.averify()`: everything stored."""
    report = VerifyReport()
    try:
        async with store._aread_snapshot():  # events written meanwhile must not name objects the scan missed
            await _averify_snapshot(store, report)
    except StoreReadError as error:
        report.problems.append(Problem("storage", f"Reading the store failed, so checking stopped: {error}"))
    return report


async def _averify_snapshot(store: EventStore, report: VerifyReport) -> None:
    known: set[str] = set()
    references: list[tuple[str, str]] = []
    report.problems.extend(await store._acheck_storage())
    async for chunk in store._aiter_object_chunks():
        for key, body in chunk:
            report.checked_objects += 1
            known.add(key)
            report.problems.extend(_object_problems(key, body, references))
    for owner, ref in references:
        if ref not in known:
            report.problems.append(
                Problem(
                    "dangling_reference",
                    f"Object {owner} refers to object {ref}, which is not stored.",
                    hash_key=ref,
                )
            )
    chain = ChainCheck(links=store._events_have_links)
    async for stored_chunk in store._aiter_stored_chunks():
        chain.feed(stored_chunk)
        for event in stored_chunk:
            report.checked_events += 1
            refs = _event_problems(event, report.problems)
            keys = [event.hash_key, *refs] if event.hash_key is not None else refs
            report.problems.extend(
                Problem(
                    "missing_object",
                    f"Event {event.seq} refers to object {ref}, which is not stored.",
                    hash_key=ref,
                    seq=event.seq,
                    run_id=event.run_id,
                )
                for ref in dict.fromkeys(keys)
                if ref not in known
            )
    counts = {run.run_id: run.event_count for run in await store._alist_runs()}
    report.problems.extend(_chain_problems(chain.finish(counts)))


async def averify_store_run(store: EventStore, run_id: str, *, payloads: bool) -> VerifyReport:
    """`EventStore.averify_run()`: the events of one stored run."""
    report = VerifyReport()
    chain = ChainCheck(links=store._events_have_links)
    try:
        async with store._aread_snapshot():
            async for chunk in store._aiter_stored_chunks(run_id):
                chain.feed(chunk)
                report.checked_events += len(chunk)
                if payloads:
                    for event in chunk:
                        _event_problems(event, report.problems)
            runs = await store._alist_runs(run_id)  # its count as of the snapshot
    except StoreReadError as error:
        report.problems.append(Problem("storage", f"Reading the store failed, so checking stopped: {error}"))
        return report
    count = runs[0].event_count if runs else 0
    report.problems.extend(_chain_problems(chain.finish({run_id: count})))
    return report


def _event_problems(event: StoredEvent, problems: list[Problem]) -> list[str]:
    """The hash keys the event's data names; a problem added if its data is not its kind's payload."""
    try:
        refs, malformed = event_references(known_kind(event.kind), event.data)
    except orjson.JSONDecodeError as error:
        refs, malformed = [], f"it is not valid JSON ({error})"
    if malformed is not None:
        kind = (
            event.kind.value
            if isinstance(event.kind, EventKind)
            else f"{event.kind}, a kind this library does not know"
        )
        problems.append(
            Problem(
                "malformed_event",
                f"Event {event.seq} ({kind}) has data that is not its kind's payload: {malformed}",
                seq=event.seq,
                run_id=event.run_id,
            )
        )
    return refs


def _object_problems(key: str, body: bytes, references: list[tuple[str, str]]) -> list[Problem]:
    if not hash_matches(key, body):
        return [
            Problem(
                "hash_mismatch",
                f"Object {key} has bytes that do not hash to its key (the stored data was changed).",
                hash_key=key,
            )
        ]
    try:
        references.extend((key, ref) for ref in body_references(body))
    except orjson.JSONDecodeError:
        return [Problem("unreadable_object", f"Object {key} is not valid JSON.", hash_key=key)]
    return []


def _chain_problems(found: Iterable[ChainProblem]) -> list[Problem]:
    return [Problem("changed_event", problem.message, seq=problem.seq, run_id=problem.run_id) for problem in found]
