"""`acopy`: runs copied between any two stores, with their hash keys, events and fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from miniagents import Message, MiniAgents
from miniagents.events import Event, EventKind
from replay.fingerprint import afingerprint
from store import (
    EventStore,
    JSONLStore,
    MemoryStore,
    SQLiteStore,
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


async def test_open_store_opens_text_recordings_by_their_suffix(tmp_path: Path) -> None:
    opened = open_store(tmp_path / "recording.jsonl")
    assert isinstance(opened, JSONLStore) and opened.path == tmp_path / "recording.jsonl"
    assert isinstance(open_store(str(tmp_path / "RECORDING.JSONL"), stable=False), JSONLStore)
    source = MemoryStore()
    await arecorded(source, runs=1)
    await acopy(source, open_store(tmp_path / "recording.jsonl"))
    assert (tmp_path / "recording.jsonl").read_bytes().startswith(b'{"format":"miniagents-recording"')
