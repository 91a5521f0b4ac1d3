"""`SQLiteStore`: the conformance suite, plus what only a file can do (schema, bad files, processes, crashes)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any, Optional

import pytest

import miniagents
from miniagents import EventSinkError, InteractionContext, Message, MiniAgents, miniagent
from miniagents.events import Event, EventKind
from miniagents.promising.promising import Promise
from store import (
    EventStore,
    ForeignDatabaseError,
    RunStatus,
    SchemaVersionError,
    SQLiteStore,
    StoreCorruptedError,
    StoreOpenError,
    StoreUsageError,
    StoreWriteError,
    is_stand_in_class,
)
from store import buffer as buffer_module
from store import sqlite as sqlite_module
from store.testing import (
    StoreConformance,
    arecord_events,
    arun_flow,
    count_polls,
    message_event,
    patch_commits,
)

WORKER = Path(__file__).with_name("_store_worker.py")


class TestSQLiteStore(StoreConformance):
    separate_instances_share_data = True

    def make_store(self, **options: Any) -> EventStore:
        return SQLiteStore(self.tmp_path / "store.db", **options)

    async def acorrupt_object(self, store: EventStore, hash_key: str, body: Optional[bytes]) -> None:
        assert isinstance(store, SQLiteStore)
        with contextlib.closing(sqlite3.connect(store.path)) as db, db:
            if body is None:
                db.execute("DELETE FROM objects WHERE hash = ?", (bytes.fromhex(hash_key),))
            else:
                db.execute("UPDATE objects SET body = ? WHERE hash = ?", (body, bytes.fromhex(hash_key)))

    async def aset_format_entry(self, store: EventStore, entry: str, value: str) -> None:
        assert isinstance(store, SQLiteStore)
        with contextlib.closing(sqlite3.connect(store.path)) as db, db:
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, entry))

    async def atamper_event(self, store: EventStore, seq: int, field: str, value: Any) -> None:
        assert isinstance(store, SQLiteStore)
        with contextlib.closing(sqlite3.connect(store.path)) as db, db:
            if field == "delete":
                db.execute("DELETE FROM events WHERE seq = ?", (seq,))
            else:
                column = {"hash_key": "hash"}.get(field, field)
                stored = bytes.fromhex(value) if field == "hash_key" else value
                db.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (stored, seq))


def store_files(path: Path) -> dict[str, bytes]:
    """The bytes of the database file and of its `-wal`/`-shm`/`-journal` companions, by name."""
    return {file.name: file.read_bytes() for file in sorted(path.parent.glob(path.name + "*"))}


def query(path: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql, parameters).fetchall()


async def arecord_one_run(path: Path) -> str:
    async with SQLiteStore(path) as store:
        await store.astart_run("first")
        store.append(message_event("first", Message(text="kept")))
        await store.afinish_run("first")
    return "first"


# ------------------------------------------------------------------------------------------------------------ schema


async def test_a_new_store_has_the_documented_schema_and_meta(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    message = Message(text="hello")
    async with SQLiteStore(path) as store:
        await store.astart_run("run")
        store.append(message_event("run", message))
        await store.afinish_run("run")
    tables = {row[0] for row in query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"meta", "kinds", "runs", "objects", "events", "sqlite_sequence"}
    meta = dict(query(path, "SELECT key, value FROM meta"))
    assert meta["application"] == "miniagents-store"
    assert meta["schema_version"] == "2"
    assert meta["canonical_form_version"] == "1"
    assert meta["hash_algorithm"] == "blake3"
    assert meta["created_by"] == f"miniagents {miniagents.__version__}"
    assert query(path, "PRAGMA application_id") == [(sqlite_module.APPLICATION_ID,)]
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "SELECT name FROM kinds ORDER BY code") == [(kind.value,) for kind in EventKind]
    [(hash_blob, run_rowid)] = query(path, "SELECT hash, run FROM events")
    assert hash_blob == bytes.fromhex(message.hash_key) and len(hash_blob) == 20
    assert isinstance(run_rowid, int)
    assert query(path, "SELECT body FROM objects") == [(message.canonical_bytes,)]


async def test_older_schemas_are_migrated_step_by_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agents.db"
    await arecord_one_run(path)
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", 3)
    monkeypatch.setitem(sqlite_module.MIGRATIONS, 3, ("CREATE TABLE labels (run INTEGER, label TEXT)",))
    async with SQLiteStore(path) as store:
        [run] = await store.alist_runs()
    assert run.run_id == "first"
    assert dict(query(path, "SELECT key, value FROM meta"))["schema_version"] == "3"
    assert query(path, "PRAGMA user_version") == [(3,)]
    assert query(path, "SELECT count(*) FROM labels") == [(0,)]
    monkeypatch.undo()
    before = store_files(path)
    with pytest.raises(SchemaVersionError, match=r"schema version 3.*up to 2; upgrade miniagents") as caught:
        await SQLiteStore(path).aopen()
    assert caught.value.path == str(path)
    assert store_files(path) == before


# --------------------------------------------------------------------------------------------------------- bad files


async def test_a_database_of_another_application_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    before = store_files(path)
    assert list(before) == ["app.db"]
    with pytest.raises(
        ForeignDatabaseError, match=r"app\.db is a SQLite database of another application \(schema: table users;"
    ):
        async with SQLiteStore(path):
            pass
    assert store_files(path) == before


@pytest.mark.parametrize(
    ("statements", "named"),
    [
        (["CREATE VIEW answers AS SELECT 42 AS answer"], "view answers"),
        (["PRAGMA user_version = 7", "CREATE VIEW answers AS SELECT 42 AS answer"], "user_version 7"),
        (["PRAGMA user_version = 3"], "user_version 3"),
        (["CREATE TABLE t (x)", "CREATE INDEX t_x ON t (x)", "DROP TABLE t", "PRAGMA user_version = 1"], "none"),
    ],
    ids=["only-a-view", "view-and-user-version", "only-user-version", "user-version-1-no-schema"],
)
async def test_a_foreign_database_without_tables_is_refused_and_left_untouched(
    tmp_path: Path, statements: list[str], named: str
) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in statements:
            db.execute(statement)
    before = store_files(path)
    with pytest.raises(ForeignDatabaseError, match=r"app\.db is a SQLite database of another application") as caught:
        await SQLiteStore(path).aopen()
    assert named in str(caught.value)
    assert caught.value.path == str(path)
    assert store_files(path) == before


async def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some notes, " * 20)
    before = store_files(path)
    with pytest.raises(ForeignDatabaseError, match=r"notes\.txt is not a SQLite database") as caught:
        await SQLiteStore(path).aopen()
    assert caught.value.path == str(path)
    assert store_files(path) == before


async def test_a_store_of_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    await arecord_one_run(path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = store_files(path)
    with pytest.raises(SchemaVersionError, match=f"{path} was written with store schema version 99"):
        await SQLiteStore(path).aopen()
    assert store_files(path) == before


async def test_a_store_of_another_canonical_form_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    await arecord_one_run(path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE meta SET value = '7' WHERE key = 'canonical_form_version'")
    with pytest.raises(SchemaVersionError, match="canonical form version 7"):
        await SQLiteStore(path).aopen()


async def test_a_damaged_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    await arecord_one_run(path)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)
    path.write_bytes(bytes(data))
    before = store_files(path)
    with pytest.raises(StoreCorruptedError, match=f"{path} is damaged.*Restore it from a backup"):
        await SQLiteStore(path).aopen()
    assert store_files(path) == before


async def test_damaged_data_pages_are_reported_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    async with SQLiteStore(path) as store:
        await store.astart_run("run")
        for index in range(300):
            store.append(message_event("run", Message(text=f"{index} " + "x" * 500)))
        await store.afinish_run("run")
    data = bytearray(path.read_bytes())
    data[len(data) - 3 * 4096 :] = b"\x5a" * (3 * 4096)
    path.write_bytes(bytes(data))
    async with SQLiteStore(path) as store:
        report = await store.averify()
    assert not report.ok
    assert {problem.kind for problem in report.problems} <= {"storage", "hash_mismatch"}
    assert "storage" in {problem.kind for problem in report.problems}


async def test_a_missing_directory_is_an_open_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "agents.db"
    with pytest.raises(StoreOpenError, match="does not exist; create it first"):
        await SQLiteStore(path).aopen()


async def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    await arecord_one_run(path)
    async with SQLiteStore(path) as store:
        assert [run.run_id for run in await store.alist_runs()] == ["first"]


async def ain_writer_connection(store: SQLiteStore, sql: str) -> list[Any]:
    """Run `sql` on the connection the store writes its batches through (on that connection's thread)."""
    assert store._pending.batch_writer is not None

    def run() -> list[Any]:
        return store._writer_thread_connection().execute(sql).fetchall()

    return await asyncio.wrap_future(store._pending.batch_writer.call(run))


async def test_full_batches_are_written_while_the_event_loop_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    async with SQLiteStore(path, batch_size=10, flush_interval=60) as store:
        await store.astart_run("run")
        for index in range(30):
            store.append(message_event("run", Message(text=str(index))))
        # the loop is blocked from here on: only the store's writer thread can write the three full batches
        observer = sqlite3.connect(path)
        try:
            deadline = time.monotonic() + 10
            count = 0
            while count < 30 and time.monotonic() < deadline:
                time.sleep(0.01)  # noqa: ASYNC251 - blocking the loop on purpose
                [(count,)] = observer.execute("SELECT count(*) FROM events").fetchall()
        finally:
            observer.close()
        assert count == 30
        await store.afinish_run("run")


async def test_the_log_is_checkpointed_off_the_writer_once_enough_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY_BYTES", 50_000)
    path = tmp_path / "agents.db"
    async with SQLiteStore(path, flush_interval=60) as store:
        [(page_size,)] = await ain_writer_connection(store, "PRAGMA page_size")
        assert page_size == sqlite_module.PAGE_SIZE
        # the writer checkpoints by itself only if the log outgrows this (the checkpointer fell behind)
        assert await ain_writer_connection(store, "PRAGMA wal_autocheckpoint") == [
            (sqlite_module.WAL_LIMIT_BYTES // page_size,)
        ]
        assert store._pending.batch_writer is not None
        checkpointer = await asyncio.wrap_future(
            store._pending.batch_writer.call(lambda: store._writer_thread_state.checkpointer)
        )
        await store.astart_run("run")
        await store.aflush()
        assert checkpointer.completed == 0  # far less than 50 KB written so far
        size_before = path.stat().st_size
        for index in range(100):
            store.append(message_event("run", Message(text=f"{index} " + "z" * 1000)))
        await store.aflush()

        def wait_for_a_checkpoint() -> None:
            deadline = time.monotonic() + 10
            while checkpointer.completed == 0 and time.monotonic() < deadline:
                time.sleep(0.01)

        await asyncio.to_thread(wait_for_a_checkpoint)
        assert checkpointer.completed >= 1 and checkpointer.last_error is None
        assert path.stat().st_size > size_before + 100 * 1000  # the objects were copied into the database file
        await store.afinish_run("run")
    assert not checkpointer._thread.is_alive()  # closing the store stopped it


async def test_a_full_disk_keeps_events_buffered_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    await arecord_one_run(path)
    store = await SQLiteStore(path, flush_interval=60).aopen()
    try:
        [(page_count,)] = await ain_writer_connection(store, "PRAGMA page_count")
        await ain_writer_connection(store, f"PRAGMA max_page_count = {page_count + 2}")

        @miniagent
        async def chatty(ctx: InteractionContext) -> None:
            for index in range(40):
                ctx.reply(Message(text=f"{index} " + "y" * 2000))

        with pytest.raises(EventSinkError, match="the disk \\(or the database's size limit\\) is full"):
            async with MiniAgents(store=store):
                await chatty.inquire().aresolve_messages()
        pending = store.pending_count
        assert pending > 40
        with pytest.raises(StoreWriteError, match=f"{path}.*stay buffered") as caught:
            await store.aflush()
        assert caught.value.pending == pending
        first, failed = await store.alist_runs()
        assert (first.run_id, first.event_count, failed.event_count, failed.status) == ("first", 1, 0, "running")
        await ain_writer_connection(store, "PRAGMA max_page_count = 1000000")
        await store.aflush()
        runs = await store.alist_runs()
        report = await store.averify()
    finally:
        await store.aclose()
    assert runs[0] == first
    assert runs[1].event_count == pending and runs[1].status == RunStatus.OK
    assert report.ok, report.problems


async def test_a_write_lock_held_elsewhere_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    await arecord_one_run(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        async with SQLiteStore(path, busy_timeout=0.3) as store:
            await store.astart_run("run")
            blocker.execute("BEGIN IMMEDIATE")
            store.append(message_event("run", Message(text="waits")))
            with pytest.raises(StoreWriteError, match=r"kept the database locked for more than 0\.3 s"):
                await store.aflush()
            assert store.pending_count == 1
            asyncio.get_running_loop().call_later(0.5, blocker.execute, "COMMIT")
            store._busy_timeout = 10.0
            await store.aflush()
            await store.afinish_run("run")
            assert len(await store.aget_events("run")) == 1
    finally:
        blocker.close()


# --------------------------------------------------------------------------------------------- processes and crashes


def run_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def akill_writer_after(path: Path, run_id: str, flushed_events: int) -> int:
    """Start a process that writes run `run_id` into `path`, SIGKILL it once it has flushed that many events; how
    many it had flushed."""
    worker = run_worker("crash", str(path), "--run-id", run_id)
    assert worker.stdout is not None
    flushed = 0
    try:
        while flushed < flushed_events:
            line = await asyncio.to_thread(worker.stdout.readline)
            assert line, worker.stderr.read() if worker.stderr else ""
            flushed = int(line)
    finally:
        worker.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.communicate)
    assert worker.returncode == -signal.SIGKILL
    return flushed


async def test_several_processes_append_to_one_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    workers = [run_worker("append", str(path), "--run-id", f"proc-{index}", "--count", "2000") for index in range(3)]
    for worker in workers:
        assert worker.stdout is not None
        assert await asyncio.to_thread(worker.stdout.readline) == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [await asyncio.to_thread(worker.communicate, None, 60) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert stdout == "done\n", stderr
        assert "locked" not in stderr
    async with SQLiteStore(path) as store:
        runs = await store.alist_runs()
        per_run = {run.run_id: await store.aget_events(run.run_id) for run in runs}
        every_event = await store.aget_events()
        report = await store.averify()
    assert sorted(per_run) == ["proc-0", "proc-1", "proc-2"]
    assert all(run.event_count == 2000 and run.status == RunStatus.OK for run in runs)
    for events in per_run.values():
        assert len(events) == 2000
        assert [event.t for event in events[1:-1]] == [index / 1000 for index in range(1998)]
    assert len(every_event) == 6000
    assert [event.seq for event in every_event] == sorted({event.seq for event in every_event})
    interleaved = [event.run_id for event in every_event]
    assert interleaved != sorted(interleaved), "the processes did not write concurrently"
    assert report.ok, report.problems
    assert report.checked_objects == 3 * 1798 + 1


async def test_a_process_killed_mid_run_leaves_a_clean_store_with_its_flushed_events(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    flushed = await akill_writer_after(path, "doomed", 3000)
    async with SQLiteStore(path) as store:
        [run] = await store.alist_runs()
        events = await store.aget_events("doomed")
        report = await store.averify()
        last = await store.aget(events[-1].hash_key or "")
    assert run.status == RunStatus.RUNNING and not run.is_finished
    assert run.event_count == len(events) >= flushed
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert events[0].kind is EventKind.RUN_STARTED
    assert report.ok, report.problems
    assert last.text == f"message {len(events) - 1}"  # type: ignore[attr-defined]


async def test_objects_of_classes_this_process_never_imported_are_rebuilt_by_stand_ins(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    worker = run_worker("classes", str(path))
    stdout, stderr = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode == 0, stderr
    plan_key, owner_key = stdout.split()
    assert "_store_worker" not in sys.modules
    async with SQLiteStore(path) as store:
        plan = await store.aget(plan_key)
        again = await SQLiteStore(path).aopen()
        try:
            plan_from_another_store = await again.aget(plan_key)
        finally:
            await again.aclose()
    assert type(plan).__name__ == "Plan" and is_stand_in_class(type(plan))
    assert isinstance(plan, Message)
    assert plan.hash_key == plan_key
    assert plan.owner.hash_key == owner_key  # type: ignore[attr-defined]
    assert type(plan.owner) is Message  # type: ignore[attr-defined]
    steps = plan.steps  # type: ignore[attr-defined]
    assert [type(step).__name__ for step in steps] == ["Step", "Step"]
    assert all(is_stand_in_class(type(step)) and not isinstance(step, Message) for step in steps)
    assert [step.title for step in steps] == ["one", "two"]
    assert steps[1].extra.k == 1
    assert type(plan_from_another_store) is type(plan)
    assert plan_from_another_store == plan


# ------------------------------------------------------------------------------------------------- secrets and size


async def test_secrets_leave_no_trace_in_the_database_files(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    secret = b"sk-live-123"

    @miniagent
    async def llm(ctx: InteractionContext, api_key: str) -> None:
        assert api_key == "sk-live-123"
        ctx.reply(Message(text="answer", api_key=api_key, openai_api_key=api_key))

    store = SQLiteStore(path)
    async with store:
        async with MiniAgents(store=store, run_metadata={"api_key": "sk-live-123"}):
            replies = await llm.inquire(
                Message(text="q", api_key="sk-live-123"), api_key="sk-live-123"
            ).aresolve_messages()
            await store.aflush()
            during = store_files(path)
        assert replies[0].api_key == "[REDACTED]"  # type: ignore[attr-defined]
        with_wal = store_files(path)
        events = await store.aget_events()
    after = store_files(path)
    assert "agents.db-wal" in during
    assert len(events) > 5
    for files in (during, with_wal, after):
        for name, content in files.items():
            assert secret not in content, name


async def test_a_repeated_message_costs_under_100_bytes_per_event(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    message = Message(text="z" * 1000)

    async def arecord(count: int) -> None:
        async with SQLiteStore(path) as store:
            await store.astart_run(f"run-{count}")
            for index in range(count):
                store.append(message_event(f"run-{count}", message, t=index / 10))
            await store.afinish_run(f"run-{count}")

    await arecord(100)
    size_before = path.stat().st_size
    await arecord(5000)
    per_event = (path.stat().st_size - size_before) / 5000
    assert per_event <= 100, per_event


async def test_opening_does_not_write_when_the_store_is_current(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    await arecord_one_run(path)
    before = path.read_bytes()
    async with SQLiteStore(path) as store:
        await store.alist_runs()
    assert path.read_bytes() == before
    assert len(await arun_flow(SQLiteStore(path), count=1)) == 1


async def test_events_appended_without_astart_run_create_their_run(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "agents.db") as store:
        store.append(Event(EventKind.CALL_STARTED, "implicit", 0.0, call_id=1, data={"agent_alias": "A"}))
        [run] = await store.alist_runs()
    assert run.run_id == "implicit" and run.event_count == 1


async def test_verify_checks_one_moment_of_the_store_while_others_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store, SQLiteStore(path) as other:
        await arecord_events(store, "first", [message_event("first", Message(text="a"))])
        scan_objects = store._aiter_object_chunks

        async def objects_then_another_write() -> Any:
            async for chunk in scan_objects():
                yield chunk
            # between the object scan and the event scan, another writer stores an object and an event naming it
            await arecord_events(other, "second", [message_event("second", Message(text="b"))])

        monkeypatch.setattr(store, "_aiter_object_chunks", objects_then_another_write)
        report = await store.averify()
        assert report.ok, report.problems
        assert (report.checked_objects, report.checked_events) == (1, 1)
        monkeypatch.undo()
        report = await store.averify()
        assert report.ok and (report.checked_objects, report.checked_events) == (2, 2)
        assert len(await store.aget_events("second")) == 1  # reads outside verify see every write


async def test_a_store_of_schema_1_gets_its_events_linked_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copyfile(
        Path(__file__).parent.parent / "replay" / "data" / "recorded_before_kwargs_were_kept_apart.db", path
    )
    assert query(path, "PRAGMA user_version") == [(1,)]
    async with SQLiteStore(path) as store:
        assert (await store.averify()).ok
        events = await store.aget_events()
    assert query(path, "PRAGMA user_version") == [(2,)]
    assert query(path, "SELECT count(*) FROM events WHERE link IS NULL") == [(0,)]
    middle = events[len(events) // 2]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE events SET t = t + 1 WHERE seq = ?", (middle.seq,))
    async with SQLiteStore(path) as store:
        report = await store.averify()
    assert [(problem.kind, problem.seq) for problem in report.problems] == [("changed_event", middle.seq)]


async def test_a_run_running_in_another_process_is_not_deleted_nor_left_half_and_ok(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    worker = run_worker("run-until-told", str(path), "--run-id", "busy")
    assert worker.stdout is not None and worker.stdin is not None
    try:
        assert (await asyncio.to_thread(worker.stdout.readline)).strip() == "running"
        async with SQLiteStore(path) as store:
            with pytest.raises(StoreUsageError, match=r"'busy'.*still running.*force=True"):
                await store.adelete_run("busy")
            assert (await store.aget_run("busy")).event_count > 0  # untouched
            await store.adelete_run("busy", force=True)  # as for a run whose process died
            await store.agc()
        worker.stdin.write("finish\n")
        worker.stdin.flush()
        outcome = (await asyncio.to_thread(worker.stdout.readline)).strip()
    finally:
        worker.kill()
        worker.communicate()
    assert outcome.startswith("StoreWriteError") and "Run 'busy' was deleted from" in outcome
    async with SQLiteStore(path) as store:
        assert await store.alist_runs() == []  # not brought back with the events written after the deletion
        assert (await store.averify()).ok


# ------------------------------------------------------------------------------------------------------ backpressure


async def test_a_producer_that_outruns_the_writer_is_slowed_down_not_buffered_without_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "store.db", batch_size=100, max_pending_events=500, flush_interval=60)
    patch_commits(monkeypatch, store, lambda: time.sleep(0.02))  # a disk far slower than the producer
    most_pending = 0
    async with store:
        await store.astart_run("run")
        for index in range(3_000):  # no await: a producer that never yields
            store.append(message_event("run", Message(text=f"message {index}")))
            most_pending = max(most_pending, store.pending_count)
        await store.afinish_run("run")
        assert (await store.aget_run("run")).event_count == 3_000
    assert most_pending <= 500 + 100  # the bound, plus the batch being filled (without it: all 3,000)


async def test_the_pending_bound_in_bytes_holds_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(tmp_path / "store.db", batch_size=10, max_pending_bytes=50_000, flush_interval=60)
    patch_commits(monkeypatch, store, lambda: time.sleep(0.005))
    most_bytes = 0
    async with store:
        await store.astart_run("run")
        for index in range(400):
            store.append(message_event("run", Message(text=f"{index} " + "x" * 1_000)))
            most_bytes = max(most_bytes, store._pending._in_flight_bytes)
        await store.afinish_run("run")
    assert 0 < most_bytes <= 50_000 + 10 * 1_200  # the bound, plus one batch of ~1.1 KB messages


async def test_a_batch_older_than_max_pending_seconds_is_waited_for_whatever_the_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "store.db", batch_size=10, max_pending_seconds=0.05, flush_interval=60)
    patch_commits(monkeypatch, store, lambda: time.sleep(0.2))
    async with store:
        await store.astart_run("run")
        for index in range(10):  # the tenth hands the first batch over, which takes the writer 0.2 s
            store.append(message_event("run", Message(text=f"first {index}")))
        time.sleep(0.1)  # noqa: ASYNC251 - a busy loop: the batch handed over gets older than the bound
        for index in range(10):  # the tenth hands the second batch over, and waits for the first
            store.append(message_event("run", Message(text=f"second {index}")))
        assert store.pending_count <= 10  # the first batch is written (20 is far below the bound in events)
        await store.afinish_run("run")
        assert (await store.aget_run("run")).event_count == 20


async def test_events_buffered_longer_than_flush_interval_are_handed_over_by_the_next_append(
    tmp_path: Path,
) -> None:
    async with SQLiteStore(tmp_path / "store.db", batch_size=1_000, flush_interval=0.05) as store:
        await store.astart_run("run")
        store.append(message_event("run", Message(text="before a long step")))
        time.sleep(0.1)  # noqa: ASYNC251 - a busy loop: the periodic hand-over cannot run
        store.append(message_event("run", Message(text="after it")))
        assert len(store._pending.events) == 1  # the old event went to the writer; the new one waits for its batch
        await store.afinish_run("run")
        assert (await store.aget_run("run")).event_count == 2


async def test_a_writer_held_up_is_waited_for_on_age_once_not_on_every_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another connection holds the write lock: waiting on age cannot help, and must not freeze the loop on every append
    store = SQLiteStore(tmp_path / "store.db", batch_size=1, max_pending_seconds=0.01, flush_interval=60)
    released = threading.Event()
    patch_commits(monkeypatch, store, lambda: released.wait(10))
    monkeypatch.setattr(buffer_module, "_BACKPRESSURE_MAX_WAIT", 0.05)
    waits: list[float] = []
    real_wait = buffer_module.wait_futures

    def counted_wait(futures: Any, timeout: float) -> Any:
        waits.append(timeout)
        return real_wait(futures, timeout=timeout)

    monkeypatch.setattr(buffer_module, "wait_futures", counted_wait)
    async with store:
        await store.astart_run("run")
        for index in range(20):
            time.sleep(0.02)  # noqa: ASYNC251 - every batch handed over is older than the bound by the next append
            store.append(message_event("run", Message(text=f"m{index}")))
        held_up_waits = len(waits)
        released.set()
        await store.afinish_run("run")
        assert (await store.aget_run("run")).event_count == 20
    assert 1 <= held_up_waits <= 2  # one wait ran out on the oldest batch; later appends did not wait again


CTRL_C_DURING_THE_WAIT_BEFORE_A_COLLECTION = """
import asyncio, gc, os, signal, sys, time
from miniagents import Message
from store import SQLiteStore
from store.testing import message_event

store = SQLiteStore(sys.argv[1], flush_interval=60)

async def main():
    await store.aopen()
    await store.astart_run("run")
    real_commit = store._commit_write

    def slow_commit(write):
        time.sleep(0.05)  # the loop's thread is done handing over, and waits
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while it waits for this write
        time.sleep(0.3)
        return real_commit(write)

    store._commit_write = slow_commit
    store.append(message_event("run", Message(text="waits")))
    gc.collect()
    print("collected", flush=True)
    await asyncio.sleep(5)  # the interrupt comes from the loop's next callback
    print("lost")

loop = asyncio.new_event_loop()  # (not asyncio.run: its handler of Ctrl-C cancels the main task instead)
try:
    loop.run_until_complete(main())
except KeyboardInterrupt:
    print("interrupted")
loop.run_until_complete(store.aclose())
print("closed", store.pending_count)
"""


def test_ctrl_c_while_a_collection_waits_for_the_writer_is_raised_after_it(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", CTRL_C_DURING_THE_WAIT_BEFORE_A_COLLECTION, str(tmp_path / "agents.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.stdout.split() == ["collected", "interrupted", "closed", "0"], finished.stderr


async def test_one_collection_writes_what_every_store_of_the_loop_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        SQLiteStore(tmp_path / "a.db", flush_interval=60) as first,
        SQLiteStore(tmp_path / "b.db", flush_interval=60) as second,
    ):
        for store in (first, second):
            await store.astart_run("run")
            patch_commits(monkeypatch, store, lambda: time.sleep(0.2))
        gc.disable()  # only the collection below
        try:
            for store in (first, second):
                store.append(message_event("run", Message(text="waits")))
            gc.collect()
            assert [len(store._pending.events) for store in (first, second)] == [0, 0]
            assert [store.pending_count for store in (first, second)] == [0, 0]
        finally:
            gc.enable()


def test_a_collection_with_no_event_loop_running_does_not_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "agents.db", flush_interval=60)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.aopen())
        loop.run_until_complete(store.astart_run("run"))
        store.append(message_event("run", Message(text="waits")))
        polls = count_polls(monkeypatch)
        gc.collect()  # the loop the store was opened on is not running: nothing here could wait for the writer
        assert polls == [] and len(store._pending.events) == 1
        loop.run_until_complete(store.afinish_run("run"))
        assert len(loop.run_until_complete(store.aget_events("run", kinds=[EventKind.MESSAGE]))) == 1
    finally:
        loop.run_until_complete(store.aclose())
        loop.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
async def test_a_collection_in_a_forked_child_leaves_the_parents_store_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStore(tmp_path / "agents.db", flush_interval=60) as store:
        await store.astart_run("run")
        store.append(message_event("run", Message(text="waits")))
        polls = count_polls(monkeypatch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (forking a process with threads, 3.12+)
            child = os.fork()
        if child == 0:  # the child has the buffer, not the writer's thread: it must neither hand over nor wait
            gc.collect()
            os._exit(0 if polls == [] and len(store._pending.events) == 1 else 1)
        _, status = await asyncio.to_thread(os.waitpid, child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        await store.afinish_run("run")
        assert len(await store.aget_events("run", kinds=[EventKind.MESSAGE])) == 1


async def test_a_collection_during_a_backpressure_wait_does_not_wait_for_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls = count_polls(monkeypatch)
    collected_in_waits: list[int] = []
    real_wait = buffer_module.wait_futures

    def wait_futures(*args: Any, **kwargs: Any) -> Any:
        if not collected_in_waits:  # the loop's thread may hold a lock of the future the writer needs to go on
            before = len(polls)
            gc.collect()
            collected_in_waits.append(len(polls) - before)
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(buffer_module, "wait_futures", wait_futures)
    async with SQLiteStore(tmp_path / "agents.db", batch_size=10, max_pending_events=10) as store:
        patch_commits(monkeypatch, store, lambda: time.sleep(0.05))
        await store.astart_run("run")
        for index in range(100):
            store.append(message_event("run", Message(text=f"m{index}")))
        await store.afinish_run("run")
        assert len(await store.aget_events("run", kinds=[EventKind.MESSAGE])) == 100
    assert collected_in_waits == [0]


async def test_a_collection_while_the_store_holds_a_loop_transaction_does_not_wait_for_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStore(tmp_path / "agents.db", flush_interval=60) as store:
        await arecord_events(store, "old", [message_event("old", Message(text="soon garbage"))])
        await store.adelete_run("old")
        await store.astart_run("run")
        patch_commits(monkeypatch, store, lambda: time.sleep(0.05))
        polls = count_polls(monkeypatch)
        real_delete = store._adelete_objects
        seen: list[tuple[bool, int]] = []

        async def adelete_objects(hash_keys: Any) -> None:
            store.append(message_event("run", Message(text="waits")))
            before = len(polls)
            gc.collect()  # the writer would wait for the gc's transaction, which waits for the loop
            seen.append((store._holds_loop_transaction(), len(polls) - before))
            await real_delete(hash_keys)

        store._adelete_objects = adelete_objects  # type: ignore[method-assign]
        assert await store.agc() == 1
        assert seen == [(True, 0)]
        await store.afinish_run("run")
        assert len(await store.aget_events("run", kinds=[EventKind.MESSAGE])) == 1


def test_pending_bounds_are_checked() -> None:
    with pytest.raises(StoreUsageError, match=r"max_pending_events \(10\) must be at least batch_size \(100\)"):
        SQLiteStore("x.db", batch_size=100, max_pending_events=10)
    with pytest.raises(StoreUsageError, match="max_pending_bytes must be a positive number of bytes, got 0"):
        SQLiteStore("x.db", max_pending_bytes=0)
    with pytest.raises(StoreUsageError, match="max_pending_seconds must be a positive number of seconds, got 0"):
        SQLiteStore("x.db", max_pending_seconds=0)


# ------------------------------------------------------------------------------------------- event links, edge cases


async def arecord_three(path: Path) -> list[Event]:
    async with SQLiteStore(path) as store:
        await arecord_events(store, "run", [message_event("run", Message(text=f"m{i}"), t=i / 10) for i in range(3)])
        return await store.aget_events("run")


async def test_an_event_changed_to_a_kind_this_library_does_not_know_is_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    events = await arecord_three(path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO kinds (code, name) VALUES (99, 'from_the_future')")
        db.execute("UPDATE events SET kind = 99 WHERE seq = ?", (events[1].seq,))
    async with SQLiteStore(path) as store:
        report = await store.averify()
    assert [(problem.kind, problem.seq) for problem in report.problems] == [("changed_event", events[1].seq)]
    assert "(from_the_future)" in str(report.problems[0])


@pytest.mark.parametrize(
    ("column", "value"),
    [("data", "CAST('{\"chunks\":[1]}' AS TEXT)"), ("hash", "hex(hash)"), ("t", "'soon'")],
)
async def test_hand_edits_that_store_text_are_reported_not_raised(tmp_path: Path, column: str, value: str) -> None:
    path = tmp_path / "store.db"
    events = await arecord_three(path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"UPDATE events SET {column} = {value} WHERE seq = ?", (events[2].seq,))
    async with SQLiteStore(path) as store:
        report = await store.averify()
        run_report = await store.averify_run("run")
    assert ("changed_event", events[2].seq) in [(problem.kind, problem.seq) for problem in report.problems]
    assert not run_report.ok


async def test_events_after_a_written_run_finished_and_at_minus_zero_keep_their_links(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "store.db") as store:
        await store.astart_run("run")
        store.append(message_event("run", Message(text="at -0.0"), t=-0.0))
        store.append(Event(EventKind.RUN_FINISHED, "run", 1.0, data={"status": "ok", "error": None}))
        await store.afinish_run("run")  # written: the store object has seen the run end
        store.append(message_event("run", Message(text="late"), t=2.0))
        await store.aflush()
        report = await store.averify()
    assert report.ok, report.problems


async def test_a_run_row_id_taken_by_a_new_run_does_not_receive_a_deleted_runs_events(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path, flush_interval=60) as writer:
        await writer.astart_run("x")
        writer.append(message_event("x", Message(text="first")))
        await writer.aflush()
        async with SQLiteStore(path) as other:
            await other.adelete_run("x", force=True)
            await other.astart_run("y")  # may take x's row id
            await other.afinish_run("y")
        writer.append(message_event("x", Message(text="after the deletion")))
        with pytest.raises(StoreWriteError, match=r"Run 'x' was deleted from .* while it was running"):
            await writer.afinish_run("x")
    async with SQLiteStore(path) as store:
        assert [run.run_id for run in await store.alist_runs()] == ["y"]
        assert await store.aget_events("y") == []
        assert (await store.averify()).ok


# ---------------------------------------------------------------------------------------------------- cancellation


async def test_a_cancelled_run_registration_leaves_the_file_unlocked(tmp_path: Path) -> None:
    # a cancelled `await` of a statement does not take the statement back: a BEGIN sent just before the
    # cancellation used to run afterwards and hold the write lock, and every other writer of the file waited
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as first, SQLiteStore(path, busy_timeout=2) as second:
        for steps in range(12):
            registering = asyncio.ensure_future(first.astart_run(f"cancelled {steps}"))
            for _ in range(steps):
                await asyncio.sleep(0)
            registering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registering
            await second.astart_run(f"other {steps}")  # raised StoreWriteError (busy) while the lock was held
            await second.afinish_run(f"other {steps}")
        assert (await second.averify()).ok


class _LockTakenAfter:
    """A lock whose first `acquire` first runs `meanwhile()`: what the other thread did between a check and the
    lock."""

    def __init__(self, lock: Any, meanwhile: Any) -> None:
        self._lock, self._meanwhile = lock, meanwhile

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        meanwhile, self._meanwhile = self._meanwhile, lambda: None
        meanwhile()
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


async def test_the_writer_thread_leaves_a_failure_the_loop_just_found_to_the_periodic_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStore(tmp_path / "s.db", flush_interval=60) as store:
        pending = store._pending
        failures = [OSError("disk hiccup")]

        def fail_once() -> None:
            if failures:
                raise failures.pop()

        patch_commits(monkeypatch, store, fail_once)
        await store.astart_run("run")
        first, second = Message(text="first"), Message(text="second")
        store.append(message_event("run", first))
        pending._hand_over()
        wait_futures([pending._in_flight[-1][1]])  # its write failed; the loop has not taken stock of it yet
        store.append(message_event("run", second))
        pending._buffered_since -= 100  # `second` waited long: the writer's thread takes it over
        # the writer's thread finds no failure, then the loop takes stock of the failed write, then the writer's
        # thread gets the lock: it must not retry at once (no back-off, and a success would leave `_failing` set)
        lock = pending._hand_over_lock
        pending._hand_over_lock = _LockTakenAfter(lock, pending._settle)  # type: ignore[assignment]
        try:
            writer_thread = threading.Thread(target=pending.hand_over_stale)
            writer_thread.start()
            writer_thread.join()
        finally:
            pending._hand_over_lock = lock
        assert not pending._in_flight
        assert [event.hash_key for event in pending.events] == [first.hash_key, second.hash_key]
        await store.afinish_run("run")
        assert len(await store.aget_events("run", kinds=[EventKind.MESSAGE])) == 2


async def test_a_sub_message_the_store_refused_is_stored_with_its_parent_once_it_is_open_again(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.aopen()
    inner = Message(text="inner")
    outer = Message(text="outer", quote=inner)
    try:
        with pytest.raises(EventSinkError):
            async with MiniAgents(store=store):
                await store.aclose()  # closed inside the run (a nested `async with store:` that ended)
                Promise(prefill_result=inner)  # its event is refused, yet the recorder counts it as emitted
                await store.aopen()
                Promise(prefill_result=outer)  # says its sub-messages came before it: not in this store
        assert (await store.averify()).ok
        assert await store.aget(outer.hash_key) == outer
    finally:
        await store.aclose()


async def test_a_sub_message_a_close_could_not_write_is_stored_with_its_parent_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.aopen()
    inner = Message(text="inner")
    outer = Message(text="outer", quote=inner)
    failing = [False]

    def fail() -> None:
        if failing[0]:
            raise OSError("disk full")

    patch_commits(monkeypatch, store, fail)
    try:
        async with MiniAgents(store=store):
            await store.aflush()
            failing[0] = True
            Promise(prefill_result=inner)  # buffered ...
            with pytest.raises(StoreWriteError):
                await store.aclose()  # ... and reported lost by the close
            failing[0] = False
            await store.aopen()
            Promise(prefill_result=outer)
        assert (await store.averify()).ok
        assert await store.aget(outer.hash_key) == outer
    finally:
        await store.aclose()
