"""The WAL checkpointer: copies an SQLite store's write-ahead log into the database on a thread of its own."""

from __future__ import annotations

import sqlite3
import threading
from typing import Optional


class WalCheckpointer:
    """Runs passive checkpoints of one SQLite database on a thread of its own, when asked or after every
    `every_bytes` the writer reports.

    A checkpoint copies the pages of the write-ahead log into the database file and syncs it; done by the
    connection that commits (SQLite's default), it stalls that connection's writes for the whole copy and sync.
    Here the writer only calls `note_written()` (or `request()`), which never waits: requests that come while a
    checkpoint runs are folded into one more checkpoint after it. A passive checkpoint never blocks a reader or a
    writer, and gives way (copies less, or nothing) when another process is checkpointing; it is best effort, so
    the writer keeps SQLite's own automatic checkpoint as a bound on the log for when this one falls behind or
    fails.

    :param path: the database file.
    :param name: the thread's name.
    :param every_bytes: how much the writer writes between two checkpoints (None: only on `request()`).
    """

    def __init__(self, path: str, name: str, every_bytes: Optional[int] = None) -> None:
        self._path = path
        self._every_bytes = every_bytes
        self._bytes_since_request = 0
        self._wanted = threading.Event()
        self._stopping = False
        self._last_error: Optional[sqlite3.Error] = None
        self.completed = 0
        """How many requested checkpoints have been tried (failed ones included)."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def last_error(self) -> Optional[sqlite3.Error]:
        """The error of the latest checkpoint that failed, if the one after it has not succeeded yet."""
        return self._last_error

    def request(self) -> None:
        """Have a checkpoint run soon (one more, if one is running now)."""
        self._bytes_since_request = 0
        self._wanted.set()

    def note_written(self, byte_count: int) -> None:
        """Count what the writer committed (call from the writer's thread); past `every_bytes`, `request()`."""
        self._bytes_since_request += byte_count
        if self._every_bytes is not None and self._bytes_since_request >= self._every_bytes:
            self.request()

    def close(self) -> None:
        """Let a running checkpoint finish, then stop the thread and close its connection (blocks until then)."""
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        connection: Optional[sqlite3.Connection] = None
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                if connection is None:
                    connection = self._connect()
                if connection is not None and not self._checkpoint(connection):
                    connection.close()  # the next request starts afresh
                    connection = None
                self.completed += 1
        finally:
            if connection is not None:
                connection.close()

    def _connect(self) -> Optional[sqlite3.Connection]:
        try:
            return sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as error:
            self._last_error = error
            return None

    def _checkpoint(self, connection: sqlite3.Connection) -> bool:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as error:  # best effort: the writer's automatic checkpoint still bounds the log
            self._last_error = error
            return False
        self._last_error = None
        return True
