"""The store reads replay relies on: call lookups by hash key, bulk object loads, integrity on every path."""

import contextlib
import sqlite3
from pathlib import Path

import pytest

from miniagents import Message
from miniagents.events import Event, EventKind
from store import ObjectDecoder, SQLiteStore, StoreIntegrityError, UnknownHashError


def finished_call(run_id: str, call_key: str) -> Event:
    return Event(EventKind.CALL_FINISHED, run_id, 1.0, hash_key=call_key, call_id=1, data={"occurrence": 0})


@pytest.mark.parametrize("inline_lookups", [True, False])
async def test_calls_found_by_hash_key_name_their_runs_after_runs_are_deleted_and_added(
    tmp_path: Path, inline_lookups: bool
) -> None:
    key = Message(text="call").hash_key
    async with SQLiteStore(tmp_path / "runs.db", inline_lookups=inline_lookups) as store:
        for run_id in ("first", "second"):
            await store.astart_run(run_id)
            store.append(finished_call(run_id, key))
            await store.afinish_run(run_id)
        await store.adelete_run("second")
        await store.astart_run("third")  # may take the deleted run's row id
        store.append(finished_call("third", key))
        await store.afinish_run("third")
        found = await store.aget_events(kinds=[EventKind.CALL_FINISHED], hash_keys=[key])
        in_third = await store.aget_events("third", kinds=[EventKind.CALL_FINISHED], hash_keys=[key])
    assert [event.run_id for event in found] == ["first", "third"]
    assert [event.run_id for event in in_third] == ["third"]


async def record_messages(path: Path, *messages: Message) -> None:
    async with SQLiteStore(path) as store:
        await store.astart_run("run")
        for message in messages:
            store.append(Event(EventKind.MESSAGE, "run", 0.0, obj=message))
        await store.afinish_run("run")


def corrupt(path: Path, hash_key: str, body: bytes) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE objects SET body = ? WHERE hash = ?", (body, bytes.fromhex(hash_key)))


async def test_objects_read_in_bulk_equal_those_read_one_by_one_and_share_nested_messages(tmp_path: Path) -> None:
    shared = Message(text="shared prompt")
    first, second = Message(text="first", prompt=shared), Message(text="second", prompt=shared)
    await record_messages(tmp_path / "objects.db", first, second)
    async with SQLiteStore(tmp_path / "objects.db") as store:
        one_by_one = [await store.aget(message.hash_key) for message in (first, second, shared)]
    async with SQLiteStore(tmp_path / "objects.db") as store:
        bulk = await store.aget_many([first.hash_key, second.hash_key, first.hash_key])
        lazy = await store.aget_many_lazily([first.hash_key, second.hash_key])
        assert list(lazy) == [first.hash_key, second.hash_key] and len(lazy) == 2
        assert lazy[second.hash_key] is bulk[second.hash_key]  # rebuilt once, by whichever read came first
        with pytest.raises(KeyError):
            _ = lazy[shared.hash_key]  # not asked for
    assert list(bulk) == [first.hash_key, second.hash_key]
    assert [bulk[first.hash_key], bulk[second.hash_key]] == one_by_one[:2] == [first, second]
    assert bulk[first.hash_key].prompt is bulk[second.hash_key].prompt  # type: ignore[attr-defined]
    assert [obj.hash_key for obj in one_by_one] == [message.hash_key for message in (first, second, shared)]


async def test_a_corrupted_object_raises_naming_it_on_every_bulk_read(tmp_path: Path) -> None:
    nested = Message(text="nested")
    good, bad = Message(text="good"), Message(text="bad", inner=nested)
    path = tmp_path / "corrupted.db"
    await record_messages(path, good, bad)
    corrupt(path, nested.hash_key, nested.canonical_bytes.replace(b"nested", b"NESTED"))
    async with SQLiteStore(path) as store:
        with pytest.raises(StoreIntegrityError, match=nested.hash_key) as caught:
            await store.aget_many([good.hash_key, bad.hash_key])
        assert caught.value.hash_key == nested.hash_key
        with pytest.raises(StoreIntegrityError, match=nested.hash_key):
            await store.aget_many_lazily([good.hash_key, bad.hash_key])  # checked now, not when looked up
        with pytest.raises(UnknownHashError, match="ab" * 20):
            await store.aget_many_lazily([good.hash_key, "ab" * 20])
        assert (await store.aget_many_lazily([good.hash_key]))[good.hash_key] == good


async def test_lazily_read_objects_are_rebuilt_even_after_the_decoder_forgot_what_they_reference(
    tmp_path: Path,
) -> None:
    shared = Message(text="shared")
    parents = [Message(text=f"parent {index}", shared=shared) for index in range(3)]
    await record_messages(tmp_path / "forgetful.db", shared, *parents)
    async with SQLiteStore(tmp_path / "forgetful.db") as store:
        store._decoder = ObjectDecoder(cache_size=1)
        await store.aget(shared.hash_key)  # decoded and cached before the lazy read: not read again
        lazy = await store.aget_many_lazily([parent.hash_key for parent in parents])
        await store.aget(parents[0].hash_key)  # pushes `shared` out of the decoder's cache
        assert [lazy[parent.hash_key] for parent in parents] == parents
