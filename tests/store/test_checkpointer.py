"""The WAL checkpointer: background checkpoints on request, errors kept, a clean stop."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.checkpointer import WalCheckpointer

TIMEOUT = 5.0


def wait_for_checkpoints(checkpointer: WalCheckpointer, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while checkpointer.completed < count:
        assert time.monotonic() < deadline, f"only {checkpointer.completed} of {count} checkpoints ran"
        time.sleep(0.005)


@pytest.fixture
def wal_db(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A WAL database with 200 KB of rows still in its log (the connection never checkpoints by itself)."""
    path = tmp_path / "wal.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    connection.execute("CREATE TABLE rows (body BLOB)")
    connection.executemany("INSERT INTO rows VALUES (?)", [(bytes(1000),)] * 200)
    yield path, connection
    connection.close()


def test_a_requested_checkpoint_copies_the_log_into_the_database(wal_db: tuple[Path, sqlite3.Connection]) -> None:
    path, _ = wal_db
    size_before = path.stat().st_size
    checkpointer = WalCheckpointer(str(path), name="test checkpointer")
    try:
        checkpointer.request()
        wait_for_checkpoints(checkpointer, 1)
    finally:
        checkpointer.close()
    assert checkpointer.last_error is None
    assert path.stat().st_size > size_before + 200 * 1000
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT count(*) FROM rows").fetchone() == (200,)
    finally:
        reader.close()


def test_no_checkpoint_runs_unless_asked(wal_db: tuple[Path, sqlite3.Connection]) -> None:
    path, _ = wal_db
    size_before = path.stat().st_size
    checkpointer = WalCheckpointer(str(path), name="test checkpointer")
    time.sleep(0.05)
    checkpointer.close()
    assert checkpointer.completed == 0
    assert path.stat().st_size == size_before


def test_requests_during_a_checkpoint_are_folded_into_one_more(wal_db: tuple[Path, sqlite3.Connection]) -> None:
    path, connection = wal_db
    checkpointer = WalCheckpointer(str(path), name="test checkpointer")
    try:
        for _ in range(100):
            checkpointer.request()
        wait_for_checkpoints(checkpointer, 1)
        time.sleep(0.05)
        assert 1 <= checkpointer.completed <= 2
        connection.executemany("INSERT INTO rows VALUES (?)", [(bytes(1000),)] * 100)
        ran = checkpointer.completed
        checkpointer.request()
        wait_for_checkpoints(checkpointer, ran + 1)
    finally:
        checkpointer.close()
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT count(*) FROM rows").fetchone() == (300,)
    finally:
        reader.close()


def test_a_failed_checkpoint_is_kept_and_the_next_success_clears_it(tmp_path: Path) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not an SQLite file" * 100)
    checkpointer = WalCheckpointer(str(path), name="test checkpointer")
    try:
        checkpointer.request()
        wait_for_checkpoints(checkpointer, 1)
        assert isinstance(checkpointer.last_error, sqlite3.DatabaseError)
        path.unlink()
        sqlite3.connect(path).close()  # a database in its place: the next checkpoint reconnects and succeeds
        checkpointer.request()
        wait_for_checkpoints(checkpointer, 2)
        assert checkpointer.last_error is None
    finally:
        checkpointer.close()


def test_close_stops_the_thread_and_closes_its_connection(wal_db: tuple[Path, sqlite3.Connection]) -> None:
    path, connection = wal_db
    checkpointer = WalCheckpointer(str(path), name="test checkpointer")
    checkpointer.request()
    wait_for_checkpoints(checkpointer, 1)
    checkpointer.close()
    assert not checkpointer._thread.is_alive()
    connection.close()  # the last connection to close removes the log: the checkpointer's is closed already
    assert not Path(f"{path}-wal").exists()


def test_written_bytes_ask_for_a_checkpoint_once_they_reach_every_bytes(
    wal_db: tuple[Path, sqlite3.Connection],
) -> None:
    path, _ = wal_db
    checkpointer = WalCheckpointer(str(path), name="test checkpointer", every_bytes=1000)
    try:
        checkpointer.note_written(600)
        time.sleep(0.05)
        assert checkpointer.completed == 0
        checkpointer.note_written(600)
        wait_for_checkpoints(checkpointer, 1)
        checkpointer.note_written(600)  # counted afresh after each request
        time.sleep(0.05)
        assert checkpointer.completed == 1
    finally:
        checkpointer.close()
