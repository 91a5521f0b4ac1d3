"""`SQLiteStore` and the files around it: a `-wal` file written for another database, stores in read-only places,
paths the OS refuses, and processes creating one new store at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sqlite_store import WORKER, akill_writer_after, query, store_files

from miniagents import Message, MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import Replay
from store import SQLiteStore, StoreCorruptedError, StoreOpenError, StoreWriteError
from store import sqlite as sqlite_module
from store.testing import message_event

RECORDED_LLM = stand_in_llm_agent.fork(reply="a recorded answer")
"""The same fork as `_store_worker.RECORDED_LLM` (not imported: no test imports the worker)."""


def wal_size(path: Path) -> int:
    return os.stat(f"{path}-wal").st_size


def remove(path: str) -> None:
    os.remove(path)


async def arecord(path: Path, run_id: str, count: int) -> None:
    async with SQLiteStore(path) as store:
        await store.astart_run(run_id)
        for index in range(count):
            store.append(message_event(run_id, Message(text=f"{run_id} {index}")))
        await store.afinish_run(run_id)


@contextlib.asynccontextmanager
async def a_store_with_its_log(path: Path, run_id: str, count: int) -> Any:
    """A store open (so that its `-wal` file is there) with `count` events of a run written into the log only."""
    async with SQLiteStore(path) as store:
        await store.astart_run(run_id)
        for index in range(count):
            store.append(message_event(run_id, Message(text=f"{run_id} {index} in the log")))
        await store.aflush()
        assert wal_size(path) > 0
        yield store
        await store.afinish_run(run_id)


async def aopen_and_close(store: SQLiteStore) -> None:
    """Open the store (which the test expects to raise) and close it again if it opens."""
    async with store:
        pass


async def arun_ids(path: Path) -> list[tuple[str, int]]:
    async with SQLiteStore(path) as store:
        return [(run.run_id, len(await store.aget_events(run.run_id))) for run in await store.alist_runs()]


# ------------------------------------------------------------------------------------- whose write-ahead log is this


async def test_a_log_written_for_another_store_is_refused_and_both_files_are_left_untouched(tmp_path: Path) -> None:
    mine, other = tmp_path / "a.db", tmp_path / "b.db"
    await arecord(mine, "mine", 140)
    async with a_store_with_its_log(other, "theirs", 50):
        shutil.copyfile(f"{other}-wal", f"{mine}-wal")
    before = store_files(mine)
    assert sorted(before) == ["a.db", "a.db-wal"]
    with pytest.raises(StoreCorruptedError) as caught:
        await aopen_and_close(SQLiteStore(mine))
    message = str(caught.value)
    assert f"The write-ahead log {mine}-wal does not belong to the store {mine}" in message
    assert "another history" in message and "so both files were left untouched" in message
    assert f"move it away (with {mine}-shm, if there is one)" in message
    assert caught.value.path == str(mine)
    assert store_files(mine) == before  # byte for byte, and no `-shm` made either
    remove(f"{mine}-wal")
    assert await arun_ids(mine) == [("mine", 140)]


async def test_a_log_of_a_copy_of_the_store_that_was_written_since_is_refused(tmp_path: Path) -> None:
    original, copy = tmp_path / "a.db", tmp_path / "copy.db"
    await arecord(original, "first", 10)
    shutil.copyfile(original, copy)
    await arecord(original, "only in the original", 10)
    async with a_store_with_its_log(copy, "only in the copy", 10):
        shutil.copyfile(f"{copy}-wal", f"{original}-wal")
    before = store_files(original)
    with pytest.raises(StoreCorruptedError, match="does not belong to the store"):
        await aopen_and_close(SQLiteStore(original))
    assert store_files(original) == before


async def test_a_newer_log_next_to_a_database_restored_from_a_backup_is_refused(tmp_path: Path) -> None:
    path, backup = tmp_path / "a.db", tmp_path / "backup.db"
    await arecord(path, "backed up", 10)
    shutil.copyfile(path, backup)
    await arecord(path, "after the backup", 10)
    async with a_store_with_its_log(path, "in the log", 10):
        shutil.copyfile(f"{path}-wal", tmp_path / "newer-wal")
    shutil.copyfile(backup, path)
    shutil.copyfile(tmp_path / "newer-wal", f"{path}-wal")
    with pytest.raises(StoreCorruptedError, match="the database was restored from a backup"):
        await aopen_and_close(SQLiteStore(path))


async def test_a_log_with_another_page_size_is_refused(tmp_path: Path) -> None:
    path, app = tmp_path / "a.db", tmp_path / "app.db"
    await arecord(path, "mine", 10)
    with contextlib.closing(sqlite3.connect(app, isolation_level=None)) as db:
        db.execute("PRAGMA page_size = 4096")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        shutil.copyfile(f"{app}-wal", f"{path}-wal")
    before = store_files(path)
    with pytest.raises(StoreCorruptedError, match="its pages are 4096 bytes long, the database's 32768"):
        await aopen_and_close(SQLiteStore(path))
    assert store_files(path) == before


def events_in_file_alone(path: Path) -> int:
    """How many events the database file holds without its log (read immutably: the log is ignored)."""
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)) as db:
        if not db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'").fetchone()[0]:
            return 0  # not even created in the file yet
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def wal_salts(path: Path) -> bytes:
    with open(f"{path}-wal", "rb") as file:
        return file.read(32)[16:24]


async def test_its_own_log_is_replayed_whatever_part_of_it_a_checkpoint_copied(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    left: dict[str, tuple[int, bytes]] = {}

    def leave(name: str) -> None:
        """Copy what a writer killed right now would leave: the file and its log."""
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{path}{suffix}", tmp_path / f"{name}.db{suffix}")
        left[name] = (events_in_file_alone(tmp_path / f"{name}.db"), wal_salts(path))

    async with SQLiteStore(path) as store:
        await store.astart_run("run")

        async def awrite() -> None:
            for index in range(5):
                store.append(message_event("run", Message(text=f"{len(left)} {index}")))
            await store.aflush()

        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            await awrite()
            leave("none copied")
            other.execute("PRAGMA wal_checkpoint(PASSIVE)")
            leave("all copied")
            await awrite()
            leave("started afresh")  # on top of the database, once all of it was copied
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as reader:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM events").fetchall()
                await awrite()
                # the pages whose last frame the reader's snapshot has are copied, the others not
                [(_busy, frames, copied)] = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            leave("part copied")
        await store.afinish_run("run")
    assert 0 < copied < frames
    assert [count for count, _salts in left.values()][:3] == [0, 5, 5]
    assert left["started afresh"][1] != left["all copied"][1] == left["none copied"][1]
    for name, written in (("none copied", 5), ("all copied", 5), ("started afresh", 10), ("part copied", 15)):
        assert await arun_ids(tmp_path / f"{name}.db") == [("run", written)], name


async def test_a_log_that_does_not_create_an_empty_database_is_refused(tmp_path: Path) -> None:
    path, other = tmp_path / "a.db", tmp_path / "b.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:  # switched to WAL, nothing in it
        db.execute(f"PRAGMA page_size = {sqlite_module.PAGE_SIZE}")
        db.execute("PRAGMA journal_mode = WAL")
    await arecord(other, "earlier", 1)
    async with SQLiteStore(other) as store:
        await store.astart_run("later")  # a small transaction: no new page, so the schema page is not in the log
        shutil.copyfile(f"{other}-wal", f"{path}-wal")
        await store.afinish_run("later")
    before = store_files(path)
    with pytest.raises(StoreCorruptedError, match="the database is empty, and the log does not create it"):
        await aopen_and_close(SQLiteStore(path))
    assert store_files(path) == before


async def test_the_log_a_killed_writer_left_is_replayed(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    flushed = await akill_writer_after(path, "killed", 2000)
    # the events are in the log only: the database file alone (read immutably, the log ignored) has none of them
    assert wal_size(path) > 0
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)) as db:
        in_file_alone = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    assert in_file_alone == 0
    async with SQLiteStore(path) as store:
        events = await store.aget_events("killed")
        report = await store.averify()
    assert len(events) >= flushed
    assert report.ok, report.problems


async def test_a_log_without_marks_is_replayed_only_for_a_store_from_before_the_marks(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    await arecord(path, "first", 5)
    marked = tmp_path / "marked.db"
    shutil.copyfile(path, marked)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:  # as an older miniagents left it
        db.execute("DELETE FROM sqlite_sequence WHERE name = ?", (sqlite_module._CHAIN_NAME,))
    for target in (path, marked):  # another program (or an older miniagents) writes a run, and dies
        shutil.copyfile(target, tmp_path / "writer.db")
        with contextlib.closing(sqlite3.connect(tmp_path / "writer.db", isolation_level=None)) as db:
            db.execute("PRAGMA wal_autocheckpoint = 0")
            db.execute("INSERT INTO runs (run_id) VALUES ('unmarked')")
            shutil.copyfile(f"{tmp_path / 'writer.db'}-wal", f"{target}-wal")
    with pytest.raises(StoreCorruptedError, match="carry none of the marks this store puts on every transaction"):
        await aopen_and_close(SQLiteStore(marked))
    assert [run_id for run_id, _count in await arun_ids(path)] == ["first", "unmarked"]


async def test_every_transaction_marks_the_log_on_a_page_it_writes_anyway(tmp_path: Path) -> None:
    path = tmp_path / "a.db"

    def chain() -> str:
        [(value,)] = query(path, "SELECT seq FROM sqlite_sequence WHERE name = ?", (sqlite_module._CHAIN_NAME,))
        assert isinstance(value, str) and len(value) == 32
        return value

    async with SQLiteStore(path) as store:
        created = chain()
        assert created.startswith(sqlite_module._CHAIN_CREATED)
        values = [created]
        await store.astart_run("run")  # a transaction of its own
        values.append(chain())
        store.append(message_event("run", Message(text="one")))
        await store.aflush()  # a batch
        values.append(chain())
        await store.afinish_run("run")
        await store.adelete_run("run")
        values.append(chain())
        await store.agc()
        values.append(chain())
    for previous, value in itertools.pairwise(values):
        assert value[:16] == previous[16:] and value[16:] != previous[16:]
    [(page,)] = query(path, "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_sequence'")
    [(events_counter,)] = query(path, "SELECT count(*) FROM sqlite_sequence WHERE name = 'events'")
    assert page > 1 and events_counter == 1  # the row shares its page with the events' AUTOINCREMENT counter


# ------------------------------------------------------------------------------------------------ read-only places


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[str]:
    """Make `paths` (files or directories) unwritable for this process, and say how: with permission bits for a
    user; for root, whom permission bits do not stop, with the immutable attribute, or where the file system has
    none, with read-only bind mounts; where neither can be had, by having `os.access` say so (the store then
    never tries to write, but nothing stops SQLite from doing so)."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in paths}
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield "permissions"
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    if _run(["chattr", "+i", *map(str, paths)]).returncode == 0:
        try:
            yield "immutable attribute"
        finally:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
        return
    mounted: list[Path] = []
    try:
        for path in paths:
            if _run(["mount", "--bind", "-o", "ro", str(path), str(path)]).returncode != 0:
                break
            mounted.append(path)
        else:
            yield "read-only bind mount"
            return
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", str(path)], check=True)
    targets = {path.absolute() for path in paths}
    real_access = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if mode & os.W_OK and Path(path).absolute() in targets:
            return False
        return real_access(path, mode, *args, **kwargs)

    os.access = access
    try:
        yield "simulated"
    finally:
        os.access = real_access


async def arecord_a_replay(path: Path) -> list[str]:
    """Record a run of `RECORDED_LLM` into `path` (mode once); the recorded replies."""
    async with MiniAgents(replay=Replay(SQLiteStore(path), mode="once")):
        return [str(reply) for reply in await RECORDED_LLM.inquire("question").aresolve_messages()]


async def test_a_new_store_in_a_read_only_directory_is_an_open_error_naming_the_path(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir()
    path = directory / "agents.db"
    with read_only(directory):
        with pytest.raises(
            StoreOpenError, match=f"Cannot create the store {path}: its directory .* must be writable"
        ) as caught:
            async with MiniAgents(store=SQLiteStore(path)):
                pass
        assert caught.value.path == str(path)
        assert list(directory.iterdir()) == []


async def test_an_existing_store_in_a_read_only_directory_is_read_and_only_writing_fails(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir()
    path = directory / "agents.db"
    await arecord(path, "first", 3)
    before = store_files(path)
    with read_only(directory, path):
        async with SQLiteStore(path) as store:
            [run] = await store.alist_runs()
            events = await store.aget_events("first")
            assert (await store.aget(events[1].hash_key or "")).text == "first 1"  # type: ignore[attr-defined]
            report = await store.averify()
            assert report.ok and report.checked == 6
            with pytest.raises(
                StoreWriteError, match=f"Could not record the start of run 'new' in {path}: the store "
            ):
                await store.astart_run("new")
            with pytest.raises(StoreWriteError, match=f"{path}: the store was opened for reading only"):
                await store.adelete_run("first", force=True)  # (no run_finished event marked it finished)
            with pytest.raises(StoreWriteError, match="collect garbage"):
                await store.agc()
            store.append(message_event("first", Message(text="cannot be written")))
            with pytest.raises(StoreWriteError, match=f"Could not write 1 events in {path}.*reading only") as caught:
                await store.aflush()
            assert caught.value.pending == 1 and caught.value.path == str(path)
            store._pending.events.clear()  # nothing to lose at close
        with pytest.raises(StoreWriteError, match=f"{path}.*reading only") as recording:
            async with MiniAgents(store=SQLiteStore(path)):
                pass
        assert recording.value.path == str(path)
    assert (run.run_id, len(events)) == ("first", 3)
    assert store_files(path) == before and sorted(os.listdir(directory)) == ["agents.db"]


async def test_a_read_only_store_file_in_a_writable_directory_is_read_with_locks(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    await arecord(path, "first", 3)
    before = path.read_bytes()
    with read_only(path):
        async with SQLiteStore(path) as store:
            assert store._read_query == sqlite_module._LOCKED  # someone else may be writing it: locks, not immutable
            assert [run.run_id for run in await store.alist_runs()] == ["first"]
            with pytest.raises(StoreWriteError, match=f"the file {path} is not writable"):
                await store.astart_run("new")
    assert path.read_bytes() == before


async def test_a_replay_from_a_read_only_directory_answers_from_the_recording(tmp_path: Path) -> None:
    directory = tmp_path / "checkout"
    directory.mkdir()
    path = directory / "recording.db"
    recorded = await arecord_a_replay(path)
    with read_only(directory, path):
        replay = Replay(SQLiteStore(path), mode="none")
        async with MiniAgents(replay=replay):
            replies = [str(reply) for reply in await RECORDED_LLM.inquire("question").aresolve_messages()]
    assert replies == recorded == ["a recorded answer"]
    assert replay.replayed_calls == 1


def _read_only_mount_command(directory: Path) -> list[str]:
    script = f'mount --bind -o ro {shlex.quote(str(directory))} {shlex.quote(str(directory))} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


@pytest.mark.parametrize("technique", ["read-only mount", "immutable attribute"])
async def test_a_store_in_a_read_only_place_is_read_verified_and_replayed_by_another_process(
    tmp_path: Path, technique: str
) -> None:
    directory = tmp_path / "checkout"
    directory.mkdir()
    path = directory / "recording.db"
    await arecord_a_replay(path)
    before = store_files(path)
    worker = [sys.executable, str(WORKER), "read-only", str(path)]
    if technique == "read-only mount":
        if os.geteuid() != 0 or _run(_read_only_mount_command(directory) + ["true"]).returncode != 0:
            pytest.skip("no read-only bind mount in a private mount namespace here (needs root and unshare)")
        result = await asyncio.to_thread(_run, _read_only_mount_command(directory) + worker)
    else:
        if os.geteuid() != 0 or _run(["chattr", "+i", str(directory), str(path)]).returncode != 0:
            pytest.skip("no immutable attribute here (needs root and a file system that has it)")
        try:
            result = await asyncio.to_thread(_run, worker)
        finally:
            _run(["chattr", "-i", str(directory), str(path)])
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["runs"] == [outcome["runs"][0]] and outcome["events"] > 5
    assert outcome["verified"][0] is True
    assert outcome["replayed"] == [["a recorded answer"], 1]
    for write in ("start_run", "delete_run", "gc", "record"):
        assert outcome[write].startswith("StoreWriteError: Could not "), write
        assert (
            f"in {path}: the store was opened for reading only, because the file {path} is not writable"
            in outcome[write]
        )
    if technique == "read-only mount":
        assert "(a read-only file system)" in outcome["record"]
    assert store_files(path) == before and sorted(os.listdir(directory)) == ["recording.db"]


async def test_a_log_with_changes_in_a_read_only_directory_is_read_with_its_index_or_explained(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "locked"
    directory.mkdir()
    path = directory / "agents.db"
    await arecord(path, "checkpointed", 2)
    async with a_store_with_its_log(path, "only in the log", 3):
        # what a writer that died leaves: the file, its log, and the log's index
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{path}{suffix}", tmp_path / f"left{suffix}")
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(tmp_path / f"left{suffix}", f"{path}{suffix}")
    with read_only(directory):
        assert await arun_ids(path) == [("checkpointed", 2), ("only in the log", 3)]
    remove(f"{path}-shm")
    before = store_files(path)
    with read_only(directory):
        with pytest.raises(StoreOpenError) as caught:
            await aopen_and_close(SQLiteStore(path))
    assert f"its write-ahead log {path}-wal holds changes that are not in {path} yet" in str(caught.value)
    assert f"with a {path}-shm file next to it, which cannot be created in the read-only {directory}" in str(
        caught.value
    )
    assert store_files(path) == before
    assert await arun_ids(path) == [("checkpointed", 2), ("only in the log", 3)]  # where it can be written


# ------------------------------------------------------------------------------------------ paths the OS refuses


@pytest.mark.parametrize(
    ("make_path", "expected"),
    [
        (lambda tmp: tmp / ("x" * 256 + ".db"), r"the OS refuses this path: File name too long \[ENAMETOOLONG\]"),
        (lambda tmp: tmp / "notes.txt" / "agents.db", r"Not a directory \[ENOTDIR\]; a part of the path is a file"),
        (lambda tmp: tmp / "missing" / "agents.db", r"the directory .*missing does not exist; create it first"),
        (lambda tmp: tmp / "a-directory", r"it is a directory; point SQLiteStore at a file"),
        (
            lambda tmp: tmp / ("y" * 253),
            r"SQLite keeps the file .*-wal next to it, and the OS refuses that path \(File name too long "
            r"\[ENAMETOOLONG\]\).*leaving room for the `-wal` suffix",
        ),
        (
            lambda tmp: tmp / ("w" * 250),  # -wal and -shm fit, but creating a store needs the rollback journal
            r"SQLite keeps the file .*-journal next to it.*leaving room for the `-journal` suffix",
        ),
        (lambda tmp: tmp / "nul\0.db", r"the OS cannot take this path \(.*null byte"),
    ],
    ids=[
        "name-too-long",
        "through-a-file",
        "missing-directory",
        "a-directory",
        "no-room-for-wal",
        "no-room-for-journal",
        "nul-byte",
    ],
)
async def test_a_path_the_os_refuses_is_an_open_error_naming_it_and_the_reason(
    tmp_path: Path, make_path: Any, expected: str
) -> None:
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "a-directory").mkdir()
    path = make_path(tmp_path)
    with pytest.raises(StoreOpenError, match=expected) as caught:
        await aopen_and_close(SQLiteStore(path))
    assert str(caught.value).startswith("Cannot ") and str(path) in str(caught.value)
    assert caught.value.path == str(path)
    assert sorted(os.listdir(tmp_path)) == ["a-directory", "notes.txt"]


async def test_an_existing_store_whose_name_leaves_no_room_for_a_journal_opens(tmp_path: Path) -> None:
    short, long = tmp_path / "agents.db", tmp_path / ("w" * 250)
    await arecord(short, "first", 2)
    os.rename(short, long)  # a WAL store needs only `-wal` and `-shm` next to it
    assert await arun_ids(long) == [("first", 2)]


# --------------------------------------------------------------------------------- processes creating a new store


def create_in_another_process(path: Path) -> str:
    """Have another process create the store `path` and record a run `other-0` in it; what it printed."""
    result = subprocess.run(
        [sys.executable, str(WORKER), "create", "x", "--run-id", "other"],
        input=f"{path}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip() or result.stderr


def start_creator(run_id: str) -> subprocess.Popen[str]:
    """A process that creates (opens, records a run `<run_id>-0` into, closes) each store whose path it reads."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), "create", "x", "--run-id", run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_store_created_by_another_process_while_it_is_inspected_is_opened_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None)  # an empty database in WAL mode, its log open
    try:
        holder.execute(f"PRAGMA page_size = {sqlite_module.PAGE_SIZE}")
        holder.execute("PRAGMA journal_mode = WAL")
        holder.execute("SELECT count(*) FROM sqlite_master").fetchall()
        original = sqlite_module.aiosqlite.Connection.execute_fetchall
        created: list[str] = []

        async def another_process_creates_it_meanwhile(self: Any, sql: str, *args: Any) -> Any:
            if sql == "PRAGMA application_id" and not created:  # the schema was read, the rest is not yet
                created.append(create_in_another_process(path))
            return await original(self, sql, *args)

        monkeypatch.setattr(
            sqlite_module.aiosqlite.Connection, "execute_fetchall", another_process_creates_it_meanwhile
        )
        async with SQLiteStore(path) as store:
            await store.astart_run("mine")
            await store.afinish_run("mine")
            runs = [run.run_id for run in await store.alist_runs()]
    finally:
        holder.close()
    assert created == ["ok"]
    assert runs == ["other-0", "mine"]


async def test_processes_creating_the_same_new_stores_at_once_all_open_them(tmp_path: Path) -> None:
    processes, rounds = 8, 20
    workers = [start_creator(f"p{index}") for index in range(processes)]
    failures: list[str] = []
    try:
        for round_index in range(rounds):
            path = tmp_path / f"round-{round_index}.db"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(f"{path}\n")
                worker.stdin.flush()
            for index, worker in enumerate(workers):
                assert worker.stdout is not None
                line = (await asyncio.to_thread(worker.stdout.readline)).strip()
                if line != "ok":
                    failures.append(f"round {round_index}, process {index}: {line}")
    finally:
        for worker in workers:
            await asyncio.to_thread(worker.communicate, "", 30)  # an empty line ends it
    assert failures == []
    for round_index in (0, rounds - 1):
        async with SQLiteStore(tmp_path / f"round-{round_index}.db") as store:
            runs = sorted(run.run_id for run in await store.alist_runs())
            report = await store.averify()
        assert runs == sorted(f"p{index}-0" for index in range(processes))
        assert report.ok, report.problems


async def test_a_store_of_schema_1_in_a_read_only_place_is_read_and_replayed_unmigrated(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir()
    path = directory / "old.db"
    fixture = Path(__file__).parent.parent / "replay" / "data" / "recorded_before_kwargs_were_kept_apart.db"
    shutil.copyfile(fixture, path)
    before = store_files(path)
    with read_only(directory, path):
        async with SQLiteStore(path) as store:
            runs = await store.alist_runs()
            events = await store.aget_events(runs[0].run_id)
            report = await store.averify()
            run_report = await store.averify_run(runs[0].run_id)
    assert runs and events
    assert report.ok and run_report.ok, (report.problems, run_report.problems)  # no links to check: read as is
    assert store_files(path) == before  # not migrated, not touched
