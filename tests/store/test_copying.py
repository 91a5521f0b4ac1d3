"""`acopy`: runs copied between any two stores, with their hash keys, events and fingerprints."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from miniagents import Message, MiniAgents
from miniagents.events import Event, EventKind
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import Replay
from replay.fingerprint import afingerprint
from store import (
    EventStore,
    JSONLStore,
    MemoryStore,
    SQLiteStore,
    StoreIntegrityError,
    StoreUsageError,
    UnknownHashError,
    UnknownRunError,
    acopy,
    open_store,
)
from store.testing import arecord_events, message_event, replier


async def arecorded(store: EventStore, runs: int = 2) -> list[str]:
    for index in range(runs):
        async with MiniAgents(store=store):
            await replier.inquire(Message(text=f"question {index}"), count=2).aresolve_messages()
    async with store:
        return [run.run_id for run in await store.alist_runs()]


async def acontents(store: EventStore) -> list[tuple[object, ...]]:
    """Per run: its events as stored (but seq), their objects' bytes and its fingerprint."""
    async with store:
        contents = []
        for run in await store.alist_runs():
            events = await store.aget_events(run.run_id)
            keys = [event.hash_key for event in events if event.hash_key is not None]
            bodies = [await store.aget_bytes(key) for key in keys]
            fields = [(e.kind, e.t, e.hash_key, e.call_id, e.parent_call_id, e.data) for e in events]
            contents.append((run.run_id, run.status, fields, bodies, await afingerprint(store, run.run_id)))
            assert (await store.averify()).ok
        return contents


@pytest.mark.parametrize("target_kind", ["memory", "sqlite", "exact-jsonl"])
async def test_every_run_is_copied_as_it_was(tmp_path: Path, target_kind: str) -> None:
    source = SQLiteStore(tmp_path / "source.db")
    await arecorded(source)
    target: EventStore = {
        "memory": MemoryStore(),
        "sqlite": SQLiteStore(tmp_path / "target.db"),
        "exact-jsonl": JSONLStore(tmp_path / "target.jsonl", stable=False),
    }[target_kind]
    copied = await acopy(source, target)
    assert len(copied) == 2
    assert not source.is_open and not target.is_open  # opened for the copy, closed after it
    assert await acontents(target) == await acontents(source)


async def test_chosen_runs_are_copied_in_the_order_given(tmp_path: Path) -> None:
    source = MemoryStore()
    first, second = await arecorded(source)
    target = MemoryStore()
    assert await acopy(source, target, run_ids=[second, first]) == [second, first]
    async with target:
        assert [run.run_id for run in await target.alist_runs()] == [second, first]
    with pytest.raises(UnknownRunError, match="'missing'"):
        await acopy(source, MemoryStore(), run_ids=["missing"])


async def test_a_run_the_target_holds_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = MemoryStore()
    _, second = await arecorded(source)
    target = MemoryStore()
    await acopy(source, target, run_ids=[second])
    with pytest.raises(StoreUsageError, match=f"already holds the runs \\['{second}'\\]"):
        await acopy(source, target)
    async with target:
        assert [run.run_id for run in await target.alist_runs()] == [second]


async def test_an_object_only_event_data_names_is_refused(tmp_path: Path) -> None:
    node = Message(text="named only by data")
    source = MemoryStore()
    async with source:
        await arecord_events(source, "a", [message_event("a", node)])
        await arecord_events(
            source,
            "b",
            [Event(EventKind.CALL_FINISHED, "b", 0.0, call_id=1, data={"reply_node": node.hash_key, "replies": []})],
        )
    with pytest.raises(UnknownHashError, match=f"names object {node.hash_key} only in the data of event"):
        await acopy(source, MemoryStore(), run_ids=["b"])
    target = MemoryStore()
    await acopy(source, target)  # with run a, which carries it
    async with target:
        assert await target.aget(node.hash_key) == node


@pytest.mark.parametrize("target_kind", ["memory", "jsonl"])
async def test_a_changed_run_is_refused_and_not_copied(tmp_path: Path, target_kind: str) -> None:
    path = tmp_path / "source.db"
    async with MiniAgents(replay=Replay(SQLiteStore(path), mode="once")):
        for word in ("Alpha", "Beta"):
            await stand_in_llm_agent.inquire(word).aresolve_messages()
    async with SQLiteStore(path) as store:
        [run] = await store.alist_runs()
        finished = await store.aget_events(run.run_id, kinds=[EventKind.CALL_FINISHED])
    first, second = (event.data["replies"][0]["hash"] for event in finished if event.data)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(  # the first call's recorded reply now names the second call's reply
            "UPDATE events SET data = CAST(replace(CAST(data AS TEXT), ?, ?) AS BLOB) WHERE seq = ?",
            (first, second, finished[0].seq),
        )
    target: EventStore = MemoryStore() if target_kind == "memory" else JSONLStore(tmp_path / "copy.jsonl")

    for run_ids in (None, [run.run_id]):
        with pytest.raises(StoreIntegrityError) as caught:
            await acopy(SQLiteStore(path), target, run_ids=run_ids)
        assert caught.value.run_id == run.run_id and caught.value.seq == finished[0].seq
        message = str(caught.value)
        assert f"Run {run.run_id!r} of {SQLiteStore(path).location}" in message
        assert f"Event {finished[0].seq}" in message and "not copied" in message
        async with target:
            assert await target.alist_runs() == []


async def test_open_store_opens_text_recordings_by_their_suffix(tmp_path: Path) -> None:
    opened = open_store(tmp_path / "recording.jsonl")
    assert isinstance(opened, JSONLStore) and opened.path == tmp_path / "recording.jsonl"
    assert isinstance(open_store(str(tmp_path / "RECORDING.JSONL"), stable=False), JSONLStore)
    source = MemoryStore()
    await arecorded(source, runs=1)
    await acopy(source, open_store(tmp_path / "recording.jsonl"))
    assert (tmp_path / "recording.jsonl").read_bytes().startswith(b'{"format":"miniagents-recording"')
