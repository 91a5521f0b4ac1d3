"""`SQLiteStore`: the event store in one SQLite file (aiosqlite, WAL), shared safely by several processes."""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import os
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import aiosqlite
import orjson

from miniagents.events import Event, EventKind
from miniagents.promising.ext.frozen import CANONICAL_FORM_VERSION, HASH_ALGORITHM
from store.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    Batch,
    EventStore,
    Problem,
    RunInfo,
    RunStatus,
    decode_data,
    decode_run_error,
    nested_objects_to_restore,
)
from store.checkpointer import WalCheckpointer
from store.errors import (
    ForeignDatabaseError,
    SchemaVersionError,
    StoreCorruptedError,
    StoreOpenError,
    StoreReadError,
    StoreUsageError,
    StoreWriteError,
)
from store.writer import BatchWriter, ThreadedBatchWriter, weak_method

APPLICATION = "miniagents-store"
"""The `application` value in the `meta` table of every store."""
APPLICATION_ID = 0x4D41_5354
"""Written into the SQLite header (`PRAGMA application_id`), so tools like `file` can tell a store apart."""
PAGE_SIZE = 32_768
"""SQLite page size of new stores: ~1 KB objects fill the pages with little slack, and each transaction rewrites
fewer pages of the hash index (its inserts land on random pages) per event it writes."""
CHECKPOINT_EVERY_BYTES = 16 * 2**20
"""After about this much is written, the writer asks the `WalCheckpointer` to copy the write-ahead log into the
database, which it does on a thread of its own while the writer goes on."""
WAL_LIMIT_BYTES = 256 * 2**20
"""How large the write-ahead log may grow before the writer checkpoints it itself (SQLite's `wal_autocheckpoint`),
should the checkpointer fall behind; the log file is cut back to this size once it is empty again."""
SCHEMA_VERSION = 1
"""Version of the table layout below; a newer store is refused, an older one is migrated."""

_SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE kinds (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL DEFAULT 'running',
        started_at REAL,
        finished_at REAL,
        library_version TEXT,
        metadata BLOB,
        error BLOB,
        event_count INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE TABLE objects (id INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, body BLOB NOT NULL)",
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        t REAL NOT NULL,
        hash BLOB,
        call_id INTEGER,
        parent_call_id INTEGER,
        data BLOB
    )""",
    "CREATE INDEX events_by_run ON events (run)",
    "CREATE INDEX events_by_hash ON events (hash) WHERE kind IN (4, 6)",  # stream and call_finished: replay lookups
)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1}
"""Statements that take a store from version `n - 1` to version `n` (version 0 is an empty file)."""

KIND_CODES: dict[EventKind, int] = {
    EventKind.RUN_STARTED: 1,
    EventKind.RUN_FINISHED: 2,
    EventKind.MESSAGE: 3,
    EventKind.STREAM: 4,
    EventKind.CALL_STARTED: 5,
    EventKind.CALL_FINISHED: 6,
    EventKind.ERROR: 7,
}
"""Stored codes of the event kinds (never renumbered; kinds added later get the next free code, kept in `kinds`)."""

_INSERT_OBJECTS = """
    INSERT OR IGNORE INTO objects (hash, body)
    SELECT substr(:hashes, r.key * :width + 1, :width), substr(:bodies, sum(r.value) OVER w - r.value + 1, r.value)
    FROM json_each(:lengths) AS r
    WINDOW w AS (ORDER BY r.key ROWS UNBOUNDED PRECEDING)
"""
_INSERT_EVENTS = """
    INSERT INTO events (run, kind, t, hash, call_id, parent_call_id, data)
    SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, substr(:hashes, r.key * :width + 1, r.value ->> 3),
        r.value ->> 4, r.value ->> 5, substr(:data, r.value ->> 6, r.value ->> 7)
    FROM json_each(:rows) AS r ORDER BY r.key
"""
_CHUNK = 5_000
_MAX_TRANSACTION_EVENTS = 20_000
_IN_LIMIT = 500
_BUSY_ERROR_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_FULL, _READONLY, _CORRUPT, _NOTADB, _CANTOPEN, _IOERR = 13, 8, 11, 26, 14, 10

_T = TypeVar("_T")

_SNAPSHOT: contextvars.ContextVar[Optional[tuple[SQLiteStore, aiosqlite.Connection]]] = contextvars.ContextVar(
    "miniagents_store_snapshot", default=None
)
"""(store, connection) whose reads the current task makes in one read transaction (see `_aread_snapshot`)."""


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("miniagents")
    except Exception:
        return "unknown"


def _error_code(error: sqlite3.Error) -> Optional[int]:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    text = str(error).lower()
    for fragment, value in (
        ("locked", 5),
        ("busy", 5),
        ("disk is full", _FULL),
        ("readonly", _READONLY),
        ("read-only", _READONLY),
        ("malformed", _CORRUPT),
        ("not a database", _NOTADB),
        ("unable to open", _CANTOPEN),
        ("disk i/o", _IOERR),
    ):
        if fragment in text:
            return value
    return None


def _is_busy(error: sqlite3.Error) -> bool:
    return _error_code(error) in _BUSY_ERROR_CODES


@dataclass
class _Inspection:
    """What an existing file holds, read without changing it."""

    exists: bool = False
    tables: set[str] = field(default_factory=set)
    meta: dict[str, str] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)
    application_id: int = 0
    user_version: int = 0
    schema_entries: list[str] = field(default_factory=list)
    """`type name` of every entry of `sqlite_master` (tables, views, indexes, triggers)."""

    @property
    def is_empty(self) -> bool:
        """Whether nothing at all is in the file: no schema entry, and no version or id in its header."""
        return not self.schema_entries and self.user_version == 0 and self.application_id == 0


class SQLiteStore(EventStore):
    """An event store in one SQLite file: WAL journal, one transaction per batch, safe for several processes and
    several `MiniAgents` contexts appending at once.

    :param path: the database file; created (with its schema) if missing. A file that is not a miniagents store,
        or that a newer version wrote, is refused and never modified.
    :param batch_size: flush as soon as this many events are buffered.
    :param flush_interval: flush buffered events at least this often (seconds).
    :param busy_timeout: how long (seconds) to keep retrying while other connections hold the write lock before
        a write fails with `StoreWriteError`.
    :param synchronous: SQLite's `synchronous` setting; `"NORMAL"` (default) survives process crashes, `"FULL"`
        also survives power loss, `"OFF"` is fastest.
    :param inline_lookups: look objects up by hash key (`aget`), and stream and call_finished events by hash key
        (replay's call lookups), right in the event loop's thread, which takes microseconds on a local disk,
        instead of a round trip to the reader thread; turn off for network file systems, where a read may take
        long.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        busy_timeout: float = 60.0,
        synchronous: str = "NORMAL",
        inline_lookups: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise StoreUsageError(
                f"SQLiteStore needs a file path, got {str(path)!r}; use MemoryStore for a store in memory."
            )
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreUsageError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}.")
        self.path = Path(path)
        self._uri = ""
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        self._db: Optional[aiosqlite.Connection] = None
        self._transaction_lock = asyncio.Lock()
        self._reader: Optional[aiosqlite.Connection] = None
        self._inline_lookups = inline_lookups
        self._lookup: Optional[sqlite3.Connection] = None
        self._maintenance_open = False
        self._kind_codes: dict[EventKind, int] = {}
        self._kinds_by_code: dict[int, EventKind] = {}
        self._writer_thread_state = threading.local()
        """Holds `connection`, which batches are written through, and its `checkpointer`: opened, used and closed
        on the thread of the batch writer (each opening of the store has its own thread)."""

    @property
    def location(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------------------------------ opening

    @property
    def exists(self) -> bool:
        """Whether the file exists and is not empty (opening a missing or empty file makes it a new store)."""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    async def _aopen_storage(self) -> None:
        self._uri = self.path.absolute().as_uri()
        inspection = await self._ainspect()
        self._classify(inspection)
        connections: list[aiosqlite.Connection] = []
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
            connections.append(db)
            await db.execute_fetchall(f"PRAGMA busy_timeout = {self._inner_busy_ms}")
            if inspection.is_empty:
                await db.execute_fetchall(f"PRAGMA page_size = {PAGE_SIZE}")
                await self._aretry(lambda: db.execute_fetchall("PRAGMA journal_mode = WAL"))
            if not self._is_current(inspection):
                inspection = await self._aretry(lambda: self._acreate_or_migrate(db))
            rows = await self._aretry(lambda: db.execute_fetchall("PRAGMA journal_mode"))
            if str(next(iter(rows))[0]).lower() != "wal":
                await self._aretry(lambda: db.execute_fetchall("PRAGMA journal_mode = WAL"))
            page_size = next(iter(await db.execute_fetchall("PRAGMA page_size")))[0]
            for pragma in self._writing_pragmas(page_size):
                await db.execute(pragma)
            reader = await aiosqlite.connect(self._uri + "?mode=ro", uri=True, isolation_level=None)
            connections.append(reader)
            await reader.execute_fetchall(f"PRAGMA busy_timeout = {self._inner_busy_ms}")
            await reader.execute("PRAGMA cache_size = -16000")
        except BaseException as error:
            for connection in reversed(connections):
                await connection.close()
            if isinstance(error, sqlite3.Error):
                raise self._open_error(error) from error
            raise
        self._db, self._reader = db, reader
        self._transaction_lock = asyncio.Lock()
        if self._inline_lookups:
            try:
                self._lookup = sqlite3.connect(
                    self._uri + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
                self._lookup.execute("PRAGMA busy_timeout = 0")  # never blocks the loop: busy -> the reader thread
            except sqlite3.Error:
                self._lookup = None
        self._set_kinds(inspection.kinds)

    def _set_kinds(self, kinds: dict[int, str]) -> None:
        self._kinds_by_code = {code: EventKind(name) for code, name in kinds.items() if _known(name)}
        self._kind_codes = {kind: code for code, kind in self._kinds_by_code.items()}

    async def _areload_kinds(self) -> None:
        rows = await self._afetch("SELECT code, name FROM kinds")
        self._set_kinds({int(code): str(name) for code, name in rows})

    async def _aclose_storage(self) -> None:
        db, reader, lookup = self._db, self._reader, self._lookup
        self._db = self._reader = self._lookup = None
        if lookup is not None:
            lookup.close()
        failure: Optional[BaseException] = None
        for connection in (reader, db):
            if connection is None:
                continue
            try:
                await connection.close()
            except BaseException as error:  # e.g. cancelled: the connection's thread must end all the same
                connection.stop()
                failure = failure or error
        if failure is not None:
            raise failure

    @property
    def _inner_busy_ms(self) -> int:
        return int(min(self._busy_timeout, 2.0) * 1000)

    async def _ainspect(self) -> _Inspection:
        """Read what the file holds without changing it (and without creating journal files next to it)."""
        header, wal_file_exists = _read_header(self.path)
        if header is None:
            return _Inspection()
        if not header:
            return _Inspection(exists=True)
        if not header.startswith(_SQLITE_HEADER) or len(header) < 100:
            raise ForeignDatabaseError(
                f"{self.path} is not a SQLite database, so it is not a miniagents store; it was left untouched. "
                "Point SQLiteStore at a new file (or move this one away).",
                str(self.path),
            )
        wal_mode = header[18] == 2
        query = "?mode=ro&immutable=1" if wal_mode and not wal_file_exists else "?mode=ro"
        try:
            async with aiosqlite.connect(self._uri + query, uri=True) as db:
                await db.execute_fetchall(f"PRAGMA busy_timeout = {self._inner_busy_ms}")
                return await self._aread_layout(db, exists=True)
        except sqlite3.Error as error:
            raise self._open_error(error) from error

    async def _aread_layout(self, db: aiosqlite.Connection, exists: bool) -> _Inspection:
        inspection = _Inspection(exists=exists)
        rows = await db.execute_fetchall("SELECT type, name FROM sqlite_master")
        inspection.schema_entries = [f"{kind} {name}" for kind, name in rows]
        inspection.tables = {name for kind, name in rows if kind == "table" and not str(name).startswith("sqlite_")}
        inspection.application_id = next(iter(await db.execute_fetchall("PRAGMA application_id")))[0]
        inspection.user_version = next(iter(await db.execute_fetchall("PRAGMA user_version")))[0]
        if "meta" in inspection.tables:
            try:
                meta_rows = await db.execute_fetchall("SELECT key, value FROM meta")
                inspection.meta = {str(key): str(value) for key, value in meta_rows}
            except sqlite3.OperationalError:
                inspection.meta = {}
        if "kinds" in inspection.tables and inspection.meta.get("application") == APPLICATION:
            kind_rows = await db.execute_fetchall("SELECT code, name FROM kinds")
            inspection.kinds = {int(code): str(name) for code, name in kind_rows}
        return inspection

    def _classify(self, inspection: _Inspection) -> int:
        """The schema version of an inspected file (0: empty); raise if it is not ours or not readable by us."""
        path = str(self.path)
        if inspection.is_empty:
            return 0
        if inspection.meta.get("application") != APPLICATION or inspection.application_id not in (0, APPLICATION_ID):
            entries = ", ".join(sorted(inspection.schema_entries)) or "none"
            header = f"user_version {inspection.user_version}, application_id {inspection.application_id}"
            raise ForeignDatabaseError(
                f"{path} is a SQLite database of another application (schema: {entries}; {header}), not a "
                "miniagents store; "
                "it was left untouched. Point SQLiteStore at a new file.",
                path,
            )
        try:
            version = int(inspection.meta.get("schema_version", ""))
        except ValueError:
            raise StoreCorruptedError(
                f"{path} has an unreadable schema version {inspection.meta.get('schema_version')!r}; it was left "
                "untouched. Restore it from a backup or start a new store.",
                path,
            ) from None
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} was written with store schema version {version}, but this library only reads versions up "
                f"to {SCHEMA_VERSION}; upgrade miniagents to open it (it was left untouched).",
                path,
            )
        canonical = inspection.meta.get("canonical_form_version")
        if canonical != str(CANONICAL_FORM_VERSION):
            raise SchemaVersionError(
                f"{path} holds objects in canonical form version {canonical}, but this library writes version "
                f"{CANONICAL_FORM_VERSION}; open it with the miniagents version that wrote it (it was left "
                "untouched).",
                path,
            )
        algorithm = inspection.meta.get("hash_algorithm")
        if algorithm != HASH_ALGORITHM:
            raise SchemaVersionError(
                f"{path} hashes objects with {algorithm!r}, but this library uses {HASH_ALGORITHM!r}; open it with "
                "the miniagents version that wrote it (it was left untouched).",
                path,
            )
        return version

    def _is_current(self, inspection: _Inspection) -> bool:
        if inspection.is_empty or self._classify(inspection) != SCHEMA_VERSION:
            return False
        return all(kind.value in inspection.kinds.values() for kind in EventKind)

    async def _acreate_or_migrate(self, db: aiosqlite.Connection) -> _Inspection:
        """In one write transaction: check the file again, then create or migrate the schema and register kinds."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            inspection = await self._aread_layout(db, exists=True)
            version = self._classify(inspection)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    await db.execute(statement)
            if version == 0:
                meta = {
                    "application": APPLICATION,
                    "canonical_form_version": str(CANONICAL_FORM_VERSION),
                    "hash_algorithm": HASH_ALGORITHM,
                    "created_by": f"miniagents {_library_version()}",
                    "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                }
                await db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
            if version != SCHEMA_VERSION:
                await db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                await db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            codes = dict(inspection.kinds) if version else {}
            for kind in EventKind:
                if kind.value not in codes.values():
                    code = KIND_CODES.get(kind) or max([*codes, *KIND_CODES.values()]) + 1
                    await db.execute("INSERT INTO kinds (code, name) VALUES (?, ?)", (code, kind.value))
                    codes[code] = kind.value
            await db.execute("COMMIT")
        except BaseException:
            await _arollback(db)
            raise
        inspection.kinds = codes
        return inspection

    def _open_error(self, error: sqlite3.Error) -> StoreOpenError:
        path = str(self.path)
        code = _error_code(error)
        if code in (_CORRUPT, _NOTADB):
            return StoreCorruptedError(
                f"{path} is damaged ({error}); it was left untouched. Restore it from a backup, or move it away and "
                "start a new store.",
                path,
            )
        if code in (_CANTOPEN, _READONLY, _IOERR) or (isinstance(error, sqlite3.OperationalError) and code is None):
            return StoreOpenError(
                f"Cannot open the store {path} for writing ({error}): the file and its directory must be writable "
                "(SQLite creates `-wal` and `-shm` files next to it). Fix the permissions or choose another path.",
                path,
            )
        if code in _BUSY_ERROR_CODES:
            return StoreOpenError(
                f"Cannot open the store {path}: other connections kept it locked for {self._busy_timeout:g} s "
                f"({error}); retry later or raise `busy_timeout`.",
                path,
            )
        return StoreOpenError(f"Cannot open the store {path} ({type(error).__name__}: {error}).", path)

    # ------------------------------------------------------------------------------------------------------ writing

    async def _aretry(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run `operation`, retrying with backoff while the database is busy (up to `busy_timeout` seconds)."""
        for delay in _busy_backoff(self._busy_timeout):
            try:
                return await operation()
            except sqlite3.Error as error:
                if delay is None or not _is_busy(error):
                    raise
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last backoff step is None")

    def _retry(self, operation: Callable[[], _T]) -> _T:
        """`_aretry` for the writer thread, which may block while it waits."""
        for delay in _busy_backoff(self._busy_timeout):
            try:
                return operation()
            except sqlite3.Error as error:
                if delay is None or not _is_busy(error):
                    raise
            time.sleep(delay)
        raise AssertionError("unreachable: the last backoff step is None")

    async def _atransaction(
        self,
        work: Callable[[aiosqlite.Connection], Awaitable[_T]],
        what: str,
        outcome: str = "Nothing of it was written",
    ) -> _T:
        """Run `work` in one `BEGIN IMMEDIATE` transaction, retried while busy; driver errors -> StoreWriteError."""
        db = self._writer_db

        async def attempt() -> _T:
            # one connection holds one transaction at a time: flushes of concurrent runs take turns
            async with self._transaction_lock:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await work(db)
                    await db.execute("COMMIT")
                except BaseException:
                    await _arollback(db)
                    raise
                return result

        try:
            return await self._aretry(attempt)
        except sqlite3.Error as error:
            raise self._write_error(error, what, outcome) from error

    def _write_error(
        self, error: sqlite3.Error, what: str, outcome: str = "Nothing of it was written"
    ) -> StoreWriteError:
        path = str(self.path)
        code = _error_code(error)
        if code == _FULL:
            reason = "the disk (or the database's size limit) is full; free some space"
        elif code == _READONLY:
            reason = "the file or its directory is read-only; make it writable"
        elif code in _BUSY_ERROR_CODES:
            reason = (
                f"other connections kept the database locked for more than {self._busy_timeout:g} s; "
                "raise `busy_timeout` or write less concurrently"
            )
        elif code in (_CORRUPT, _NOTADB):
            reason = "the file is damaged; restore it from a backup"
        else:
            reason = "fix the cause"
        return StoreWriteError(f"Could not {what} in {path} ({error}): {reason}. {outcome}.", path)

    @property
    def _writer_db(self) -> aiosqlite.Connection:
        if self._db is None:
            self._check_open()
            raise StoreUsageError(f"{self!r} has no open connection.")
        return self._db

    async def _aregister_run(self, run_id: str) -> None:
        async def work(db: aiosqlite.Connection) -> None:
            cursor = await db.execute("INSERT OR IGNORE INTO runs (run_id) VALUES (?)", (run_id,))
            if cursor.rowcount == 0:
                raise StoreUsageError(f"{self.path} already holds a run {run_id!r}; run ids must be unique.")

        await self._atransaction(work, f"record the start of run {run_id!r}")

    async def _aopen_batch_writer(self) -> BatchWriter[Batch]:
        # a thread of its own with its own connection: batches are written while the event loop is busy (aiosqlite
        # needs the loop for every statement), and the batches that queue up meanwhile share one transaction
        writer: ThreadedBatchWriter[Batch] = ThreadedBatchWriter(
            weak_method(self._write_handed_over),  # a store left open can still be collected (and warn)
            name=f"miniagents store writer {self.path}",
            max_events=_MAX_TRANSACTION_EVENTS,
            on_stop=weak_method(self._disconnect_writer),
        )
        try:
            await asyncio.wrap_future(writer.call(weak_method(self._connect_writer)))
        except BaseException as error:
            await asyncio.wrap_future(writer.stop())
            if isinstance(error, sqlite3.Error):
                raise self._open_error(error) from error
            raise
        return writer

    def _writing_pragmas(self, page_size: int) -> list[str]:
        """The settings of a connection that writes to this store."""
        return [
            f"PRAGMA busy_timeout = {self._inner_busy_ms}",
            f"PRAGMA synchronous = {self._synchronous}",
            "PRAGMA cache_size = -16000",
            f"PRAGMA wal_autocheckpoint = {WAL_LIMIT_BYTES // page_size}",
            f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}",
        ]

    def _connect_writer(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            for pragma in self._writing_pragmas(connection.execute("PRAGMA page_size").fetchone()[0]):
                connection.execute(pragma)
        except BaseException:
            connection.close()
            raise
        state = self._writer_thread_state
        state.connection = connection
        state.checkpointer = WalCheckpointer(
            str(self.path), name=f"miniagents store checkpointer {self.path}", every_bytes=CHECKPOINT_EVERY_BYTES
        )

    def _disconnect_writer(self) -> None:
        state = self._writer_thread_state
        connection: Optional[sqlite3.Connection] = getattr(state, "connection", None)
        checkpointer: Optional[WalCheckpointer] = getattr(state, "checkpointer", None)
        state.connection = state.checkpointer = None
        if checkpointer is not None:
            checkpointer.close()
        if connection is not None:
            connection.close()

    def _writer_thread_connection(self) -> sqlite3.Connection:
        """The connection of the batch writer's thread (call on that thread)."""
        connection: Optional[sqlite3.Connection] = getattr(self._writer_thread_state, "connection", None)
        if connection is None:
            raise StoreUsageError(f"{self!r} has no writer connection on this thread.")
        return connection

    def _write_batches(self, batches: list[Batch]) -> None:
        # Runs on the batch writer's thread. One INSERT ... SELECT per table: SQLite takes the rows apart (JSON
        # numbers, slices of the concatenated bytes) without the GIL, instead of handing it over for every row
        # as `executemany` does, which would starve this thread while the event loop is busy.
        batch = Batch.merged(batches)
        connection = self._writer_thread_connection()
        object_parameters = _object_parameters(batch.objects)
        kind_codes = self._kind_codes

        def work() -> int:
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = connection.execute("SELECT value FROM meta WHERE key = 'gc_generation'").fetchone()
                restored = nested_objects_to_restore(batches, int(row[0]) if row else 0)
                rowids = _resolve_runs(connection, batch.counts)
                for object_group in object_parameters:
                    connection.execute(_INSERT_OBJECTS, object_group)
                for object_group in _object_parameters(restored) if restored else ():
                    connection.execute(_INSERT_OBJECTS, object_group)
                event_parameters = _event_parameters(batch, rowids, kind_codes)
                connection.execute(_INSERT_EVENTS, event_parameters)
                for run_id, kind, update in batch.run_updates:
                    if kind is EventKind.RUN_STARTED:
                        connection.execute(
                            "UPDATE runs SET started_at = ?, library_version = ?, metadata = ? WHERE id = ?",
                            (update.started_at, update.library_version, update.metadata, rowids[run_id]),
                        )
                    else:
                        connection.execute(
                            "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                            (update.status, update.finished_at, update.error, rowids[run_id]),
                        )
                connection.executemany(
                    "UPDATE runs SET event_count = event_count + ? WHERE id = ?",
                    [(count, rowids[run_id]) for run_id, count in batch.counts.items()],
                )
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    try:
                        connection.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
            return len(event_parameters["data"]) + len(event_parameters["hashes"]) + len(event_parameters["rows"])

        try:
            event_bytes = self._retry(work)
        except sqlite3.Error as error:
            raise self._write_error(
                error,
                f"write {len(batch)} events",
                "Nothing of the batch was written; the events stay buffered and `await store.aflush()` retries",
            ) from error
        self._writer_thread_state.checkpointer.note_written(
            event_bytes + sum(len(group["bodies"]) for group in object_parameters)
        )

    async def _adelete_run_events(self, run_id: str) -> bool:
        async def work(db: aiosqlite.Connection) -> bool:
            rows = list(await db.execute_fetchall("SELECT id FROM runs WHERE run_id = ?", (run_id,)))
            if not rows:
                return False
            await db.execute("DELETE FROM events WHERE run = ?", (rows[0][0],))
            await db.execute("DELETE FROM runs WHERE id = ?", (rows[0][0],))
            return True

        return await self._atransaction(work, f"delete run {run_id!r}")

    async def _adelete_objects(self, hash_keys: Sequence[str]) -> None:
        rows = [(bytes.fromhex(key),) for key in hash_keys]
        try:
            await self._writer_db.executemany("DELETE FROM objects WHERE hash = ?", rows)
        except sqlite3.Error as error:
            raise self._write_error(error, f"delete {len(rows)} unreferenced objects") from error

    async def _abump_gc_generation(self) -> None:
        try:
            await self._writer_db.execute(
                "INSERT INTO meta (key, value) VALUES ('gc_generation', '1') "
                "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
        except sqlite3.Error as error:
            raise self._write_error(error, "record a garbage collection") from error

    @asynccontextmanager
    async def _amaintenance(self) -> AsyncIterator[None]:
        db = self._writer_db
        try:
            await self._aretry(lambda: db.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as error:
            raise self._write_error(error, "start a maintenance transaction") from error
        self._maintenance_open = True
        try:
            yield
            await db.execute("COMMIT")
        except BaseException as error:
            await _arollback(db)
            if isinstance(error, sqlite3.Error):
                raise self._write_error(error, "finish a maintenance transaction") from error
            raise
        finally:
            self._maintenance_open = False

    # ------------------------------------------------------------------------------------------------------ reading

    @asynccontextmanager
    async def _aread_snapshot(self) -> AsyncIterator[None]:
        # a connection of its own in one read transaction (a WAL snapshot), used only by the task that entered:
        # the shared reader keeps seeing what is written meanwhile
        self._check_open()
        try:
            snapshot = await aiosqlite.connect(self._uri + "?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreReadError(f"Could not read from {self.path} ({error}).", str(self.path)) from error
        token = _SNAPSHOT.set((self, snapshot))
        try:
            try:
                await snapshot.execute_fetchall(f"PRAGMA busy_timeout = {self._inner_busy_ms}")
                await snapshot.execute("BEGIN")
                await self._aretry(lambda: snapshot.execute_fetchall("SELECT count(*) FROM sqlite_master"))
            except sqlite3.Error as error:
                raise StoreReadError(f"Could not read from {self.path} ({error}).", str(self.path)) from error
            yield
        finally:
            _SNAPSHOT.reset(token)
            try:
                await snapshot.close()  # ends the read transaction
            except BaseException:
                snapshot.stop()
                raise

    @property
    def _read_db(self) -> aiosqlite.Connection:
        """The reader connection, or the writer inside a maintenance transaction (which must see its own view), or
        the snapshot connection of the current task (see `_aread_snapshot`)."""
        snapshot = _SNAPSHOT.get()
        if snapshot is not None and snapshot[0] is self:
            return snapshot[1]
        db = self._db if self._maintenance_open else self._reader
        if db is None:
            self._check_open()
            raise StoreUsageError(f"{self!r} has no open connection.")
        return db

    async def _afetch(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        db = self._read_db
        try:
            return list(await self._aretry(lambda: db.execute_fetchall(sql, parameters)))
        except sqlite3.Error as error:
            raise StoreReadError(
                f"Could not read from {self.path} ({error}); run `await store.averify()` to check the file.",
                str(self.path),
            ) from error

    async def _acheck_storage(self) -> list[Problem]:
        rows = await self._afetch("PRAGMA quick_check")
        return [
            Problem("storage", f"SQLite reports damage in {self.path}: {row[0]}")
            for row in rows
            if str(row[0]).lower() != "ok"
        ]

    async def _alist_runs(self, run_id: Optional[str] = None) -> list[RunInfo]:
        sql = "SELECT run_id, status, started_at, finished_at, library_version, metadata, error, event_count FROM runs"
        rows = await (
            self._afetch(sql + " WHERE run_id = ?", (run_id,))
            if run_id is not None
            else self._afetch(sql + " ORDER BY id")
        )
        return [
            RunInfo(
                run_id=row[0],
                status=row[1] or RunStatus.RUNNING,
                started_at=row[2],
                finished_at=row[3],
                library_version=row[4],
                metadata=decode_data(row[5]) or {},
                error=decode_run_error(row[6]),
                event_count=row[7],
            )
            for row in rows
        ]

    async def _aiter_event_chunks(
        self,
        run_id: Optional[str],
        after_seq: Optional[int],
        kinds: Optional[frozenset[EventKind]],
        hash_keys: Optional[Sequence[str]] = None,
    ) -> AsyncIterator[list[Event]]:
        conditions = ""
        parameters: list[Any] = []
        indexed = False
        if hash_keys is not None:
            # stream and call_finished events are found through the events_by_hash index, other kinds by a scan
            indexed = kinds is not None and kinds <= {EventKind.STREAM, EventKind.CALL_FINISHED}
            if len(hash_keys) <= _IN_LIMIT:
                conditions += f" AND e.hash IN ({', '.join('?' * len(hash_keys))})"
                parameters.extend(bytes.fromhex(key) for key in hash_keys)
            else:  # more keys than parameters: one query all the same (one `seq` order), the keys in one blob
                blob = bytes.fromhex("".join(hash_keys))
                slices, start = [], 1
                for key in hash_keys:
                    slices.append((start, len(key) // 2))
                    start += len(key) // 2
                conditions += " AND e.hash IN (SELECT substr(?, k.value ->> 0, k.value ->> 1) FROM json_each(?) AS k)"
                parameters.extend((blob, orjson.dumps(slices).decode()))
            if indexed:
                conditions += " AND e.kind IN (4, 6)"
        if run_id is not None:
            run_rows = await self._afetch("SELECT id FROM runs WHERE run_id = ?", (run_id,))
            if not run_rows:
                return
            conditions += " AND e.run = ?"
            parameters.append(run_rows[0][0])
            source = "events AS e"  # the run's name is known
        else:
            source = "events AS e LEFT JOIN runs AS r ON r.id = e.run"  # each event's run name from its row
        run_column = "e.run" if run_id is not None else "coalesce(r.run_id, '')"
        columns = f"SELECT e.seq, {run_column}, e.kind, e.t, e.hash, e.call_id, e.parent_call_id, e.data FROM {source}"
        if kinds is not None:
            codes = [self._kind_codes[kind] for kind in kinds if kind in self._kind_codes]
            conditions += f" AND e.kind IN ({', '.join('?' * len(codes))})"
            parameters.extend(codes)
        sql = f"{columns} WHERE e.seq > ?{conditions} ORDER BY e.seq LIMIT {_CHUNK}"
        kinds_by_code = self._kinds_by_code
        loads = decode_data
        last = after_seq if after_seq is not None else 0
        while True:
            # an indexed lookup (replay's call lookups) runs inline; a scan runs on the reader thread
            rows = self._lookup_inline(sql, [last, *parameters]) if indexed else None
            if rows is None:
                rows = await self._afetch(sql, [last, *parameters])
            if not rows:
                return
            if not {row[2] for row in rows} <= kinds_by_code.keys():
                await self._areload_kinds()
                kinds_by_code = self._kinds_by_code
                unknown = {row[2] for row in rows} - kinds_by_code.keys()
                if unknown:
                    raise StoreReadError(
                        f"{self.path} holds events of kinds this library does not know (codes {sorted(unknown)}); "
                        "they were written by a newer miniagents: upgrade it to read them.",
                        str(self.path),
                    )
            yield [
                Event(
                    kinds_by_code[kind],
                    run if run_id is None else run_id,
                    t,
                    None if hash_blob is None else hash_blob.hex(),
                    call_id,
                    parent_call_id,
                    None if data is None else loads(data),
                    None,
                    seq,
                )
                for seq, run, kind, t, hash_blob, call_id, parent_call_id, data in rows
            ]
            if len(rows) < _CHUNK:
                return
            last = rows[-1][0]

    async def _aload_objects(self, hash_keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(hash_keys), _IN_LIMIT):
            keys = hash_keys[start : start + _IN_LIMIT]
            sql = (
                "SELECT hash, body FROM objects WHERE hash = ?"
                if len(keys) == 1
                else f"SELECT hash, body FROM objects WHERE hash IN ({', '.join('?' * len(keys))})"
            )
            parameters = [bytes.fromhex(key) for key in keys]
            rows = self._lookup_inline(sql, parameters)
            if rows is None:
                rows = await self._afetch(sql, parameters)
            found.update((hash_blob.hex(), bytes(body)) for hash_blob, body in rows)
        return found

    def _lookup_inline(self, sql: str, parameters: Sequence[Any]) -> Optional[list[Any]]:
        """Rows of an indexed point lookup run right here, or None if that cannot be done without waiting."""
        lookup = self._lookup
        if lookup is None or self._maintenance_open:
            return None
        try:
            return lookup.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            if _is_busy(error):
                return None
            raise StoreReadError(
                f"Could not read from {self.path} ({error}); run `await store.averify()` to check the file.",
                str(self.path),
            ) from error

    async def _aiter_object_chunks(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        last = 0
        while True:
            rows = await self._afetch(
                f"SELECT id, hash, body FROM objects WHERE id > ? ORDER BY id LIMIT {_CHUNK}", (last,)
            )
            if not rows:
                return
            yield [(hash_blob.hex(), bytes(body)) for _id, hash_blob, body in rows]
            last = rows[-1][0]

    async def _aiter_reference_chunks(
        self,
    ) -> AsyncIterator[list[tuple[int, Optional[EventKind], Optional[str], Optional[bytes]]]]:
        last = 0
        while True:
            rows = await self._afetch(
                f"SELECT seq, kind, hash, data FROM events WHERE seq > ? ORDER BY seq LIMIT {_CHUNK}", (last,)
            )
            if not rows:
                return
            if not {row[1] for row in rows} <= self._kinds_by_code.keys():
                await self._areload_kinds()
            kinds_by_code = self._kinds_by_code
            yield [
                (seq, kinds_by_code.get(kind), None if hash_blob is None else hash_blob.hex(), data)
                for seq, kind, hash_blob, data in rows
            ]
            last = rows[-1][0]


def _busy_backoff(timeout: float) -> Iterator[Optional[float]]:
    """Delays between attempts while the database is busy: growing, jittered, for `timeout` seconds; then None
    (give up)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while time.monotonic() < deadline:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(delay * 2, 0.25)
    yield None


def _resolve_runs(connection: sqlite3.Connection, run_ids: Iterable[str]) -> dict[str, int]:
    """The row ids of these runs, registering those that are missing (events of a run no `astart_run` announced)."""
    wanted = list(run_ids)
    placeholders = ", ".join("?" * len(wanted))
    rows = connection.execute(f"SELECT run_id, id FROM runs WHERE run_id IN ({placeholders})", wanted).fetchall()
    rowids = {str(run_id): int(rowid) for run_id, rowid in rows}
    for run_id in wanted:
        if run_id not in rowids:
            cursor = connection.execute("INSERT INTO runs (run_id) VALUES (?)", (run_id,))
            rowids[run_id] = int(cursor.lastrowid or 0)
    return rowids


def _object_parameters(objects: dict[str, bytes]) -> list[dict[str, Any]]:
    """`_INSERT_OBJECTS` parameters for these objects: one set per hash key width."""
    by_width: dict[int, tuple[list[str], list[bytes]]] = {}
    for hash_key, body in objects.items():
        keys, bodies = by_width.setdefault(len(hash_key) // 2, ([], []))
        keys.append(hash_key)
        bodies.append(body)
    return [
        {
            "hashes": bytes.fromhex("".join(keys)),
            "width": width,
            "bodies": b"".join(bodies),
            "lengths": orjson.dumps([len(body) for body in bodies]),
        }
        for width, (keys, bodies) in by_width.items()
    ]


def _event_parameters(batch: Batch, rowids: dict[str, int], kind_codes: dict[EventKind, int]) -> dict[str, Any]:
    """`_INSERT_EVENTS` parameters for the batch's events: each hash key in a slot of `width` bytes (an empty slot
    for events without one), rows as JSON, event data concatenated."""
    width = max((len(key) // 2 for key in batch.hash_keys if key is not None), default=20)
    empty_slot = "0" * (2 * width)
    slots: list[str] = []
    rows: list[tuple[Any, ...]] = []
    event_data: list[bytes] = []
    data_start = 1
    for event, hash_key, data in zip(batch.events, batch.hash_keys, batch.data, strict=True):
        if hash_key is None:
            slots.append(empty_slot)
            hash_length = None
        else:
            slots.append(hash_key if len(hash_key) == 2 * width else hash_key.ljust(2 * width, "0"))
            hash_length = len(hash_key) // 2
        run, kind = rowids[event.run_id], kind_codes[event.kind]
        if data is not None:
            event_data.append(data)
            rows.append((run, kind, event.t, hash_length, event.call_id, event.parent_call_id, data_start, len(data)))
            data_start += len(data)
        elif event.parent_call_id is not None:
            rows.append((run, kind, event.t, hash_length, event.call_id, event.parent_call_id))
        else:  # trailing nulls left out: fewer JSON values for SQLite to read
            rows.append((run, kind, event.t, hash_length, event.call_id))
    return {
        "hashes": bytes.fromhex("".join(slots)),
        "width": width,
        "data": b"".join(event_data),
        "rows": orjson.dumps(rows),
    }


def _read_header(path: Path) -> tuple[Optional[bytes], bool]:
    """The first 100 bytes of the file (None if it does not exist yet) and whether a `-wal` file is next to it."""
    if not path.exists():
        if not path.parent.is_dir():
            raise StoreOpenError(
                f"Cannot create the store {path}: the directory {path.parent} does not exist; create it first.",
                str(path),
            )
        return None, False
    if not path.is_file():
        raise StoreOpenError(f"Cannot open the store {path}: it is not a regular file.", str(path))
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except OSError as error:
        raise StoreOpenError(
            f"Cannot read the store {path} ({error.strerror}); check its permissions.", str(path)
        ) from error
    return header, Path(f"{path}-wal").exists()


def _known(kind_name: str) -> bool:
    return kind_name in EventKind._value2member_map_


async def _arollback(db: aiosqlite.Connection) -> None:
    if db.in_transaction:
        try:
            await db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
