"""`SQLiteStore`: the event store in one SQLite file (aiosqlite, WAL), shared safely by several processes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import os
import random
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional, TypeVar, Union, cast

import aiosqlite
import orjson

from miniagents.events import Event, EventKind
from store.backend import GcGenerationChanged, RunsDeleted, Write
from store.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_EVENTS,
    DEFAULT_MAX_PENDING_SECONDS,
    EventStore,
)
from store.buffer import Batch
from store.chain import LINK_SIZE, StoredEvent, first_link, next_link
from store.checkpointer import WalCheckpointer
from store.encoding import decode_data, decode_run_error
from store.errors import (
    ForeignDatabaseError,
    StoreCorruptedError,
    StoreOpenError,
    StoreReadError,
    StoreUsageError,
    StoreWriteError,
)
from store.format import APPLICATION, check_format, new_format_entries
from store.results import Problem, RunInfo, RunStatus
from store.writer import BatchWriter, ThreadedBatchWriter, weak_method

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
SCHEMA_VERSION = 2
"""Version of the table layout below; a newer store is refused, an older one is migrated."""

_SQLITE_HEADER = b"SQLite format 3\x00"
_COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
"""The files SQLite keeps next to a database: the write-ahead log, its index, and the rollback journal (needed only
while a new store is switched to WAL)."""
_LOCKED = "?mode=ro"
"""The query of a read-only connection that takes SQLite's locks (and needs the `-shm` file, creating it if need
be)."""
_IMMUTABLE = "?mode=ro&immutable=1"
"""The query of a read-only connection that takes no locks, ignores the log and creates no files."""
_INSPECTIONS = 20
"""How often a file that changes while it is read without locks is read again before it is read with locks."""
_WAL_CHECKS = 10
"""How often a log that changes while it is checked is checked again before it is taken as replayed already."""

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

_EVENT_LINKS = ("ALTER TABLE events ADD COLUMN link BLOB",)
"""Version 2: each event's link in its run's chain (see `store.chain`); the events a store of version 1 holds are
linked as the migration finds them (`_link_existing_events`)."""

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1, 2: _EVENT_LINKS}
_READABLE_UNMIGRATED = (1, SCHEMA_VERSION)
"""Schema versions read as they are where a store cannot be migrated (version 1: its events have no links, so
they are read unverified)."""
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
_INSERT_EVENTS = f"""
    INSERT INTO events (run, kind, t, hash, call_id, parent_call_id, data, link)
    SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, substr(:hashes, r.key * :width + 1, r.value ->> 3),
        r.value ->> 4, r.value ->> 5, substr(:data, r.value ->> 6, r.value ->> 7),
        substr(:links, r.key * {LINK_SIZE} + 1, {LINK_SIZE})
    FROM json_each(:rows) AS r ORDER BY r.key
"""
_INSERT_OBJECT = "INSERT OR IGNORE INTO objects (hash, body) VALUES (?, ?)"
_SET_EVENT_DATA = "UPDATE events SET data = ? WHERE seq = ?"
_LARGE_VALUE = 1 << 20
"""Objects and event data this large are written by statements of their own (`_INSERT_OBJECT`, `_SET_EVENT_DATA`),
not sliced out of one concatenation: SQLite copies every value of the batch statements once more (the window of
`_INSERT_OBJECTS`, the ordering of `_INSERT_EVENTS`), so the 31 MB record of a call with 600,000 replies took 0.49 s
of CPU to write, against about 0.2 s for a plain insert."""
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
        or that a newer version wrote, or whose `-wal` file was written for another database, is refused and
        never modified. Where the store cannot be written (a read-only directory, mount or file) it is opened
        for reading only, and only writing raises (`StoreWriteError`).
    :param batch_size: flush as soon as this many events are buffered.
    :param flush_interval: flush buffered events at least this often (seconds).
    :param max_pending_events: at most this many events wait for the writer thread (handed over, not written);
        beyond it `append` blocks until the writer caught up (backpressure), which bounds the memory they hold.
    :param max_pending_bytes: the same bound in bytes of objects and event data.
    :param max_pending_seconds: the same bound in age: `append` also blocks while an event handed over and not
        written was appended longer ago than this, so that a crash loses little more than that much work even
        when a busy event loop slows the writer thread down.
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
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_seconds: float = DEFAULT_MAX_PENDING_SECONDS,
        busy_timeout: float = 60.0,
        synchronous: str = "NORMAL",
        inline_lookups: bool = True,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_pending_events=max_pending_events,
            max_pending_bytes=max_pending_bytes,
            max_pending_seconds=max_pending_seconds,
        )
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise StoreUsageError(
                f"SQLiteStore needs a file path, got {str(path)!r}; use MemoryStore for a store in memory."
            )
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreUsageError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}.")
        self.path = Path(path)
        self._uri = ""
        self._read_query = _LOCKED
        """How the reading connections open the file (`_LOCKED`, or `_IMMUTABLE` for a store that cannot be
        written here and has no `-shm` file)."""
        self._read_only: Optional[str] = None
        """Why the store cannot be written here, if it was opened for reading only."""
        self._run_rowids: dict[str, int] = {}
        """Row ids of the runs this store object registered: the writer needs no statement to find them, and finds
        out when one of them was deleted while it ran."""
        self._linked = True
        """Whether the open file's events have links (a store of schema 1 read where it cannot be migrated has
        none)."""
        self._open_key: Optional[tuple[int, int]] = None
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        self._db: Optional[aiosqlite.Connection] = None
        self._transaction_lock = asyncio.Lock()
        self._reader: Optional[aiosqlite.Connection] = None
        self._inline_lookups = inline_lookups
        self._lookup: Optional[sqlite3.Connection] = None
        self._maintenance_open = False
        self._in_maintenance = False
        """From before a gc asks for the write lock until it let it go (backpressure must not block the loop then)."""
        self._kind_codes: dict[EventKind, int] = {}
        self._kinds_by_code: dict[int, EventKind] = {}
        self._kind_names: dict[int, str] = {}
        """Every kind code of the store by its stored name (a newer version's kinds included)."""
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
        _check_path(self.path)
        self._uri = self.path.absolute().as_uri()
        inspection = await self._ainspect()
        self._classify(inspection)
        not_writable = _write_access(self.path)
        if not_writable is None:
            try:
                inspection = await self._aopen_writable(inspection)
            except _OnlyReadable as only_readable:
                not_writable = f"SQLite could open it for reading only ({only_readable.error})"
        if not_writable is not None:
            await self._aopen_read_only(inspection, not_writable)
        self._set_kinds(inspection.kinds)

    def _register(self, query: str) -> None:
        """Note in `_OPEN_HERE` that this process has the file open (as soon as a connection holds it)."""
        self._unregister()
        self._read_query = query
        self._open_key = _file_key(self.path)
        if self._open_key is not None:
            with _OPEN_HERE_LOCK:
                _OPEN_HERE.setdefault(self._open_key, []).append(query)

    def _unregister(self) -> None:
        key, self._open_key = self._open_key, None
        if key is not None:
            with _OPEN_HERE_LOCK:
                queries = _OPEN_HERE.get(key, [])
                if self._read_query in queries:
                    queries.remove(self._read_query)
                if not queries:
                    _OPEN_HERE.pop(key, None)

    async def _aopen_writable(self, inspection: _Inspection) -> _Inspection:
        """Open the writer and reader connections, creating or migrating the store first if need be."""
        connections: list[aiosqlite.Connection] = []
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
            connections.append(db)
            self._register(_LOCKED)
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
            reader = await aiosqlite.connect(self._uri + _LOCKED, uri=True, isolation_level=None)
            connections.append(reader)
            await reader.execute_fetchall(f"PRAGMA busy_timeout = {self._inner_busy_ms}")
            await reader.execute("PRAGMA cache_size = -16000")
        except BaseException as error:
            for connection in reversed(connections):
                await connection.close()
            self._unregister()
            if isinstance(error, sqlite3.Error):
                if _error_code(error) == _READONLY and self._is_current(inspection):
                    raise _OnlyReadable(error) from error
                raise self._open_error(error) from error
            raise
        self._db, self._reader = db, reader
        self._read_only = None
        self._linked = True  # migrated if it was older
        self._transaction_lock = asyncio.Lock()
        self._open_lookup()
        return inspection

    async def _aopen_read_only(self, inspection: _Inspection, not_writable: str) -> None:
        """Open only a reader: the store cannot be written here (a read-only directory, mount or file); writing
        raises `StoreWriteError`."""
        path = str(self.path)
        if inspection.is_empty:
            raise StoreOpenError(
                f"Cannot create the store {path}: {not_writable}. The file and its directory must be writable to "
                "create a store (SQLite also creates `-wal` and `-shm` files next to it); fix the permissions or "
                "choose another path.",
                path,
            )
        version = self._classify(inspection)
        if version not in _READABLE_UNMIGRATED:
            raise StoreOpenError(
                f"Cannot open the store {path}: it has store schema version {version} and must be migrated to "
                f"version {SCHEMA_VERSION}, which writes to it, but {not_writable}. Open it once where it can be "
                "written.",
                path,
            )
        self._linked = version >= 2
        query = await asyncio.to_thread(_reading_query, self.path)
        try:
            reader = await aiosqlite.connect(self._uri + query, uri=True, isolation_level=None)
        except sqlite3.Error as error:
            raise self._open_error(error) from error
        self._register(query)
        try:
            await reader.execute_fetchall(f"PRAGMA busy_timeout = {self._inner_busy_ms}")
            await reader.execute("PRAGMA cache_size = -16000")
            await self._aretry(lambda: reader.execute_fetchall("SELECT count(*) FROM sqlite_master"))
        except BaseException as error:
            await reader.close()
            self._unregister()
            if isinstance(error, sqlite3.Error):
                raise self._open_error(error) from error
            raise
        self._db, self._reader = None, reader
        self._read_only = not_writable
        self._open_lookup()

    def _open_lookup(self) -> None:
        if not self._inline_lookups:
            return
        try:
            self._lookup = sqlite3.connect(
                self._uri + self._read_query, uri=True, isolation_level=None, check_same_thread=False
            )
            self._lookup.execute("PRAGMA busy_timeout = 0")  # never blocks the loop: busy -> the reader thread
        except sqlite3.Error:
            self._lookup = None

    def _set_kinds(self, kinds: dict[int, str]) -> None:
        self._kind_names = dict(kinds)
        self._kinds_by_code = {code: EventKind(name) for code, name in kinds.items() if _known(name)}
        self._kind_codes = {kind: code for code, kind in self._kinds_by_code.items()}

    async def _areload_kinds(self) -> None:
        rows = await self._afetch("SELECT code, name FROM kinds")
        self._set_kinds({int(code): str(name) for code, name in rows})

    async def _aclose_storage(self) -> None:
        db, reader, lookup = self._db, self._reader, self._lookup
        self._db = self._reader = self._lookup = None
        self._unregister()
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
        """Read what the file holds without changing it (and without creating files next to it, unless its
        `-wal` file is there already).

        A database in WAL mode without its log is read through an `immutable` connection, which takes no locks
        and creates no files (so a foreign database is left untouched), but may see the file while another
        process changes it (creating the store, or checkpointing into it): such a read counts only if the file
        did not change meanwhile, and a verdict against the file only if a second read a moment later agrees.
        Anything else is read with SQLite's locks, which wait for a process that is creating the file and show
        it whole or not at all. A `-wal` file next to it is checked first (see `_acheck_wal`).
        """
        key = _file_key(self.path)
        with _OPEN_HERE_LOCK:
            queries = list(_OPEN_HERE.get(key, ())) if key is not None else []
        if queries:  # this process has it open already: read it as that opening does, through SQLite only
            return await self._aread_file(queries[0])
        verdict: Optional[StoreOpenError] = None
        for _attempt in range(_INSPECTIONS):
            state = _FileState.read(self.path)
            if state.header is None:
                return _Inspection()
            if not state.header:
                return _Inspection(exists=True)
            if not state.is_sqlite or (state.wal_size is None and not state.wal_mode):
                # not (yet?) a database, or one with a rollback journal: a reader with locks waits for a process
                # that is writing it, and needs no files next to it
                return await self._aread_file(_LOCKED, state)
            if state.wal_size is not None:
                await self._acheck_wal()
                query = await asyncio.to_thread(_reading_query, self.path)
                if query == _LOCKED:
                    return await self._aread_file(_LOCKED, state)
            try:
                inspection = await self._aread_file(_IMMUTABLE, state)
                self._classify(inspection)
            except StoreOpenError as error:
                if _FileState.read(self.path) != state:
                    continue
                if verdict is not None and str(verdict) == str(error):
                    raise
                verdict = error
                await asyncio.sleep(0.05)
                continue
            if _FileState.read(self.path) == state:
                return inspection
        return await self._aread_file(_LOCKED)  # the file kept changing under the reads: read it with locks

    async def _aread_file(self, query: str, state: Optional[_FileState] = None) -> _Inspection:
        """The layout of the file as a connection opened with `query` reads it (`state`: how the file looked
        before, to tell a file that is not SQLite from a damaged one)."""
        try:
            async with aiosqlite.connect(self._uri + query, uri=True, isolation_level=None) as db:
                await db.execute_fetchall(f"PRAGMA busy_timeout = {self._inner_busy_ms}")
                return await self._aretry(lambda: self._aread_layout_at_once(db))
        except sqlite3.Error as error:
            if (
                state is not None
                and not state.is_sqlite
                and _error_code(error) in (_NOTADB, _CORRUPT)
                and not _FileState.read(self.path).is_sqlite
            ):
                raise ForeignDatabaseError(
                    f"{self.path} is not a SQLite database, so it is not a miniagents store; it was left untouched. "
                    "Point SQLiteStore at a new file (or move this one away).",
                    str(self.path),
                ) from error
            raise self._open_error(error) from error

    async def _acheck_wal(self) -> None:
        """Refuse the `-wal` file next to the store if it was not written for it, before anything replays it
        (see "whose write-ahead log is this?" below).

        The files are read without locks, so a verdict is drawn only from reads that saw the log unchanged, and
        only when two such reads agree; a log that keeps changing is being written by a live connection, which
        replayed it already.
        """
        verdict: Optional[object] = None
        for _attempt in range(_WAL_CHECKS):
            state = _FileState.read(self.path)
            if state.wal_size is None or not state.is_sqlite:
                return
            try:
                reason, evidence = await asyncio.to_thread(_wal_problem, self.path, self._uri, state)
            except _Unsettled:
                await asyncio.sleep(0.02)
                continue
            if reason is None:
                return
            if verdict is not None and verdict == evidence:
                raise self._foreign_wal_error(reason)
            verdict = evidence
            await asyncio.sleep(0.05)

    def _foreign_wal_error(self, reason: str) -> StoreCorruptedError:
        path, wal, shm = str(self.path), f"{self.path}-wal", f"{self.path}-shm"
        return StoreCorruptedError(
            f"The write-ahead log {wal} does not belong to the store {path}: {reason}. Opening the store would "
            f"have copied its pages into {path} (SQLite replays any log that is consistent in itself) over pages "
            "they were not written for, so both files were left untouched. If "
            f"{wal} was copied or restored here by mistake, move it away (with {shm}, if there is one) and open "
            f"the store again; if {path} was restored from a backup, put the `-wal` file of the same backup next "
            "to it (or none).",
            path,
        )

    async def _aread_layout_at_once(self, db: aiosqlite.Connection) -> _Inspection:
        """`_aread_layout` in one read transaction: each statement on its own could see another moment, e.g. the
        schema from before another process created the store and the header from after."""
        try:
            await db.execute("BEGIN")
            return await self._aread_layout(db, exists=True)
        finally:
            await _arollback(db)

    async def _aread_layout(self, db: aiosqlite.Connection, exists: bool) -> _Inspection:
        """What the file holds, read through `db` (in a transaction, so that all of it is from one moment)."""
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

        def foreign() -> ForeignDatabaseError:
            entries = ", ".join(sorted(inspection.schema_entries)) or "none"
            header = f"user_version {inspection.user_version}, application_id {inspection.application_id}"
            return ForeignDatabaseError(
                f"{path} is a SQLite database of another application (schema: {entries}; {header}), not a "
                "miniagents store; it was left untouched. Point SQLiteStore at a new file.",
                path,
            )

        if inspection.application_id not in (0, APPLICATION_ID):
            raise foreign()
        return check_format(inspection.meta, location=path, newest_schema=SCHEMA_VERSION, foreign=foreign)

    def _is_current(self, inspection: _Inspection) -> bool:
        if inspection.is_empty or self._classify(inspection) != SCHEMA_VERSION:
            return False
        return all(kind.value in inspection.kinds.values() for kind in EventKind)

    async def _acreate_or_migrate(self, db: aiosqlite.Connection) -> _Inspection:
        """In one write transaction: check the file again, then create or migrate the schema and register kinds."""
        try:
            await db.execute("BEGIN IMMEDIATE")
            inspection = await self._aread_layout(db, exists=True)
            version = self._classify(inspection)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    await db.execute(statement)
            if 0 < version < 2:
                await _alink_existing_events(db)
            if version == 0:
                await db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(new_format_entries().items()))
                await db.execute(_START_CHAIN, (_CHAIN_CREATED,))
            else:
                await _aadvance_chain(db)
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
        db = self._writer_db(what)

        async def attempt() -> _T:
            # one connection holds one transaction at a time: flushes of concurrent runs take turns
            async with self._transaction_lock:
                try:
                    await db.execute("BEGIN IMMEDIATE")
                    result = await work(db)
                    await _aadvance_chain(db)
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

    def _writer_db(self, what: str) -> aiosqlite.Connection:
        """The connection that writes (`what`: what is to be written, for the error if nothing can be)."""
        if self._db is None:
            self._check_open()
            self._check_writable(what)
            raise StoreUsageError(f"{self!r} has no open connection.")
        return self._db

    def _check_writable(self, what: str) -> None:
        if self._read_only is not None:
            raise StoreWriteError(
                f"Could not {what} in {self.path}: the store was opened for reading only, because "
                f"{self._read_only}. Nothing was written; open it where it can be written to record.",
                str(self.path),
            )

    async def _aregister_run(self, run_id: str) -> None:
        async def work(db: aiosqlite.Connection) -> None:
            cursor = await db.execute("INSERT OR IGNORE INTO runs (run_id) VALUES (?)", (run_id,))
            if cursor.rowcount == 0:
                raise StoreUsageError(f"{self.path} already holds a run {run_id!r}; run ids must be unique.")
            self._run_rowids[run_id] = int(cursor.lastrowid or 0)
            if len(self._run_rowids) > 10_000:  # the oldest runs are done; the writer looks them up if need be
                del self._run_rowids[next(iter(self._run_rowids))]

        await self._atransaction(work, f"record the start of run {run_id!r}")

    async def _aopen_batch_writer(self) -> BatchWriter[Batch]:
        if self._read_only is not None:
            return await super()._aopen_batch_writer()  # writes nothing: `_commit_write` refuses
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

    @property
    def _events_have_links(self) -> bool:
        return self._linked

    def _holds_loop_transaction(self) -> bool:
        # registering a run, deleting one and gc hold the write lock across awaits of the event loop
        return self._in_maintenance or self._transaction_lock.locked()

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

    def _commit_write(self, write: Write) -> int:
        # Runs on the batch writer's thread. One INSERT ... SELECT per table: SQLite takes the rows apart (JSON
        # numbers, slices of the concatenated bytes) without the GIL, instead of handing it over for every row
        # as `executemany` does, which would starve this thread while the event loop is busy.
        self._check_writable(f"write {len(write)} events")
        connection = self._writer_thread_connection()
        object_parameters, large_objects = _object_parameters(write.objects)
        kind_codes = self._kind_codes

        def work() -> tuple[int, int]:
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = connection.execute("SELECT value FROM meta WHERE key = 'gc_generation'").fetchone()
                generation = int(row[0]) if row else 0
                if write.gc_generation is not None and write.gc_generation != generation:
                    raise GcGenerationChanged(generation)
                rowids = _resolve_runs(connection, write, self._run_rowids)
                for object_group in object_parameters:
                    connection.execute(_INSERT_OBJECTS, object_group)
                if large_objects:
                    connection.executemany(_INSERT_OBJECT, large_objects)
                event_parameters, large_data = _event_parameters(write, rowids, kind_codes)
                last_seq = connection.execute(_INSERT_EVENTS, event_parameters).lastrowid
                if large_data:  # the events' seqs are consecutive: one statement in a write transaction
                    first_seq = cast(int, last_seq) - len(write.events) + 1
                    connection.executemany(_SET_EVENT_DATA, ((data, first_seq + index) for index, data in large_data))
                for update in write.run_updates:
                    columns = ", ".join(f"{name} = ?" for name in update.fields)
                    connection.execute(
                        f"UPDATE runs SET {columns} WHERE id = ?", (*update.fields.values(), rowids[update.run_id])
                    )
                counts = orjson.dumps([(rowids[run_id], count, run_id) for run_id, count in write.counts.items()])
                if connection.execute(_COUNT_EVENTS, (counts,)).rowcount != len(write.counts):
                    raise RunsDeleted(_missing_runs(connection, rowids))
                _advance_chain(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    try:
                        connection.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
            written = len(event_parameters["data"]) + len(event_parameters["hashes"]) + len(event_parameters["rows"])
            return generation, written + sum(len(data) for _, data in large_data)

        try:
            generation, event_bytes = self._retry(work)
        except sqlite3.Error as error:
            raise self._write_error(
                error,
                f"write {len(write)} events",
                "Nothing of the batch was written; the events stay buffered and `await store.aflush()` retries",
            ) from error
        except RunsDeleted as deleted:
            for run_id in deleted.run_ids:
                self._run_rowids.pop(run_id, None)
            raise
        self._writer_thread_state.checkpointer.note_written(
            event_bytes
            + sum(len(group["bodies"]) for group in object_parameters)
            + sum(len(body) for _, body in large_objects)
        )
        return generation

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
            await self._writer_db("delete unreferenced objects").executemany(
                "DELETE FROM objects WHERE hash = ?", rows
            )
            await self._writer_db("record a garbage collection").execute(
                "INSERT INTO meta (key, value) VALUES ('gc_generation', '1') "
                "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
        except sqlite3.Error as error:
            raise self._write_error(error, f"delete {len(rows)} unreferenced objects") from error

    @asynccontextmanager
    async def _amaintenance(self) -> AsyncIterator[None]:
        db = self._writer_db("collect garbage")
        self._in_maintenance = True
        try:
            try:
                await self._aretry(lambda: db.execute("BEGIN IMMEDIATE"))
            except BaseException as error:
                await _arollback(db)  # a cancelled BEGIN may still run: whatever it opened is ended
                if isinstance(error, sqlite3.Error):
                    raise self._write_error(error, "start a maintenance transaction") from error
                raise
            self._maintenance_open = True
            try:
                yield
                await _aadvance_chain(db)
                await db.execute("COMMIT")
            except BaseException as error:
                await _arollback(db)
                if isinstance(error, sqlite3.Error):
                    raise self._write_error(error, "finish a maintenance transaction") from error
                raise
            finally:
                self._maintenance_open = False
        finally:
            self._in_maintenance = False

    # ------------------------------------------------------------------------------------------------------ reading

    @asynccontextmanager
    async def _aread_snapshot(self) -> AsyncIterator[None]:
        # a connection of its own in one read transaction (a WAL snapshot), used only by the task that entered:
        # the shared reader keeps seeing what is written meanwhile
        self._check_open()
        try:
            snapshot = await aiosqlite.connect(self._uri + self._read_query, uri=True, isolation_level=None)
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
        columns = (
            f"SELECT e.seq, {run_column}, e.kind, e.t, CAST(e.hash AS BLOB), e.call_id, e.parent_call_id, e.data "
            f"FROM {source}"
        )
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

    async def _aiter_stored_chunks(self, run_id: Optional[str] = None) -> AsyncIterator[list[StoredEvent]]:
        # read as what they should be, so that a hand edit that stored text (an UPDATE in the sqlite3 shell) is
        # reported as a changed event instead of failing the check
        columns = (
            "e.seq, coalesce(r.run_id, ''), e.kind, CASE WHEN typeof(e.t) IN ('real', 'integer') THEN e.t END, "
            "CAST(e.hash AS BLOB), e.call_id, e.parent_call_id, CAST(e.data AS BLOB), "
            + ("CAST(e.link AS BLOB)" if self._linked else "NULL")
        )
        source = "events AS e LEFT JOIN runs AS r ON r.id = e.run"
        condition, parameters = "", []
        if run_id is not None:
            run_rows = await self._afetch("SELECT id FROM runs WHERE run_id = ?", (run_id,))
            if not run_rows:
                return
            condition, parameters = " AND e.run = ?", [run_rows[0][0]]  # through the events_by_run index
        sql = f"SELECT {columns} FROM {source} WHERE e.seq > ?{condition} ORDER BY e.seq LIMIT {_CHUNK}"
        last = 0
        while True:
            rows = await self._afetch(sql, [last, *parameters])
            if not rows:
                return
            if not {row[2] for row in rows} <= self._kinds_by_code.keys():
                await self._areload_kinds()
            kinds_by_code, names = self._kinds_by_code, self._kind_names
            yield [
                StoredEvent(
                    seq,
                    run,
                    kinds_by_code.get(kind) or names.get(kind, f"kind code {kind}"),
                    t,
                    None if hash_blob is None else hash_blob.hex(),
                    call_id,
                    parent_call_id,
                    None if data is None else bytes(data),
                    None if link is None else bytes(link),
                )
                for seq, run, kind, t, hash_blob, call_id, parent_call_id, data, link in rows
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


def _missing_runs(connection: sqlite3.Connection, rowids: dict[str, int]) -> list[str]:
    """Which of these runs no longer have their row (deleted, or the row id went to another run since)."""
    present = set(
        connection.execute(
            f"SELECT run_id, id FROM runs WHERE id IN ({', '.join('?' * len(rowids))})", list(rowids.values())
        )
    )
    return sorted(run_id for run_id, rowid in rowids.items() if (run_id, rowid) not in present)


_COUNT_EVENTS = """
    UPDATE runs SET event_count = event_count + c.value ->> 1
    FROM json_each(?) AS c WHERE runs.id = c.value ->> 0 AND runs.run_id = c.value ->> 2
"""
"""Adds each run's new events to its count, for every run of a transaction in one statement (one round trip to
the interpreter, however many runs); fewer rows changed than runs given means a run row is gone (or its row id
was taken by another run since: checked by the run id)."""


def _resolve_runs(connection: sqlite3.Connection, write: Write, known: dict[str, int]) -> dict[str, int]:
    """The row ids of the write's runs: those this store object registered from `known` (no statement needed), the
    others looked up; the rows of new runs are created if missing, and a registered run without its row is
    `RunsDeleted`."""
    rowids = {run_id: known[run_id] for run_id in write.counts if run_id in known}
    wanted = [run_id for run_id in write.counts if run_id not in rowids]
    if not wanted:
        return rowids
    placeholders = ", ".join("?" * len(wanted))
    rows = connection.execute(f"SELECT run_id, id FROM runs WHERE run_id IN ({placeholders})", wanted).fetchall()
    rowids.update((str(run_id), int(rowid)) for run_id, rowid in rows)
    deleted = write.deleted_runs(rowids)
    if deleted:
        raise RunsDeleted(deleted)
    for run_id in wanted:
        if run_id not in rowids:
            cursor = connection.execute("INSERT INTO runs (run_id) VALUES (?)", (run_id,))
            rowids[run_id] = int(cursor.lastrowid or 0)
    return rowids


def _object_parameters(objects: dict[str, bytes]) -> tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]:
    """`_INSERT_OBJECTS` parameters for these objects, one set per hash key width, and `_INSERT_OBJECT` parameters
    for those of `_LARGE_VALUE` bytes or more."""
    by_width: dict[int, tuple[list[str], list[bytes]]] = {}
    large: list[tuple[bytes, bytes]] = []
    for hash_key, body in objects.items():
        if len(body) >= _LARGE_VALUE:
            large.append((bytes.fromhex(hash_key), body))
            continue
        keys, bodies = by_width.setdefault(len(hash_key) // 2, ([], []))
        keys.append(hash_key)
        bodies.append(body)
    groups = [
        {
            "hashes": bytes.fromhex("".join(keys)),
            "width": width,
            "bodies": b"".join(bodies),
            "lengths": orjson.dumps([len(body) for body in bodies]),
        }
        for width, (keys, bodies) in by_width.items()
    ]
    return groups, large


def _event_parameters(
    write: Write, rowids: dict[str, int], kind_codes: dict[EventKind, int]
) -> tuple[dict[str, Any], list[tuple[int, bytes]]]:
    """`_INSERT_EVENTS` parameters for the write's events: each hash key in a slot of `width` bytes (an empty slot
    for events without one), rows as JSON, event data concatenated; and (index in the write, data) of the events
    whose data has `_LARGE_VALUE` bytes or more, inserted without it and then given it by `_SET_EVENT_DATA`."""
    width = max((len(key) // 2 for key in write.hash_keys if key is not None), default=20)
    empty_slot = "0" * (2 * width)
    slots: list[str] = []
    rows: list[tuple[Any, ...]] = []
    event_data: list[bytes] = []
    large: list[tuple[int, bytes]] = []
    data_start = 1
    for index, (event, hash_key, data) in enumerate(zip(write.events, write.hash_keys, write.data, strict=True)):
        if hash_key is None:
            slots.append(empty_slot)
            hash_length = None
        else:
            slots.append(hash_key if len(hash_key) == 2 * width else hash_key.ljust(2 * width, "0"))
            hash_length = len(hash_key) // 2
        run, kind = rowids[event.run_id], kind_codes[event.kind]
        if data is not None and len(data) >= _LARGE_VALUE:
            large.append((index, data))
            rows.append((run, kind, event.t, hash_length, event.call_id, event.parent_call_id, None, None))
        elif data is not None:
            event_data.append(data)
            rows.append((run, kind, event.t, hash_length, event.call_id, event.parent_call_id, data_start, len(data)))
            data_start += len(data)
        elif event.parent_call_id is not None:
            rows.append((run, kind, event.t, hash_length, event.call_id, event.parent_call_id))
        else:  # trailing nulls left out: fewer JSON values for SQLite to read
            rows.append((run, kind, event.t, hash_length, event.call_id))
    parameters = {
        "hashes": bytes.fromhex("".join(slots)),
        "width": width,
        "data": b"".join(event_data),
        "rows": orjson.dumps(rows),
        "links": b"".join(write.links),
    }
    return parameters, large


async def _alink_existing_events(db: aiosqlite.Connection) -> None:
    """Link the events of a store written before events had links, run by run, as they are now (in the migration's
    transaction), with the same reading as `_aiter_stored_chunks` (kinds by their stored names)."""
    kinds = {int(code): str(name) for code, name in await db.execute_fetchall("SELECT code, name FROM kinds")}
    links: dict[int, bytes] = {}
    last = 0
    while True:
        rows = list(
            await db.execute_fetchall(
                "SELECT e.seq, e.run, coalesce(r.run_id, ''), e.kind, "
                "CASE WHEN typeof(e.t) IN ('real', 'integer') THEN e.t END, CAST(e.hash AS BLOB), e.call_id, "
                "e.parent_call_id, CAST(e.data AS BLOB) FROM events AS e LEFT JOIN runs AS r ON r.id = e.run "
                f"WHERE e.seq > ? ORDER BY e.seq LIMIT {_CHUNK}",
                (last,),
            )
        )
        if not rows:
            return
        updates: list[tuple[bytes, int]] = []
        for seq, run, run_id, code, t, hash_blob, call_id, parent_call_id, data in rows:
            previous = links[run] if run in links else first_link(run_id)
            name = kinds.get(code, f"kind code {code}")
            link = links[run] = next_link(
                previous,
                EventKind(name) if _known(name) else name,
                t,
                None if hash_blob is None else hash_blob.hex(),
                call_id,
                parent_call_id,
                None if data is None else bytes(data),
            )
            updates.append((link, seq))
        await db.executemany("UPDATE events SET link = ? WHERE seq = ?", updates)
        last = rows[-1][0]


def _known(kind_name: str) -> bool:
    return kind_name in EventKind._value2member_map_


async def _arollback(db: aiosqlite.Connection) -> None:
    """End the transaction that the statements sent to `db` opened, if they did.

    A cancelled `await db.execute(...)` does not take the statement back: aiosqlite's thread runs it later all the
    same (a `BEGIN` then holds the write lock, and every other writer of the file waits, forever). So the ROLLBACK
    is sent whether or not a transaction is open yet, to run after them, and it is waited for to its end even if
    the caller is cancelled meanwhile (that cancellation is raised once it is done).
    """
    rollback = asyncio.ensure_future(_arollback_now(db))
    cancelled = False
    while not rollback.done():
        try:
            await asyncio.wait([rollback])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()


async def _arollback_now(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except (sqlite3.Error, ValueError):  # no transaction was open, or the connection is closed already
        pass


# ------------------------------------------------------------------------------------------ the files of a store


def _check_path(path: Path) -> None:
    """Raise `StoreOpenError` naming the path and the OS's reason if the OS refuses the store's path or the names
    of the files SQLite keeps next to it (`-wal`, `-shm`, `-journal`)."""
    try:
        info: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as error:
        raise _path_error(path, path, error) from error
    mode = None if info is None else info.st_mode
    if mode is None:
        try:
            parent_mode: Optional[int] = os.stat(path.parent).st_mode
        except FileNotFoundError:
            parent_mode = None
        except (OSError, ValueError) as error:
            raise _path_error(path, path.parent, error) from error
        if parent_mode is None:
            raise StoreOpenError(
                f"Cannot create the store {path}: the directory {path.parent} does not exist; create it first.",
                str(path),
            )
    elif not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise StoreOpenError(f"Cannot open the store {path}: it is {kind}; point SQLiteStore at a file.", str(path))
    creating = info is None or info.st_size == 0  # the rollback journal is needed only to switch a new store to WAL
    for suffix in _COMPANION_SUFFIXES if creating else _COMPANION_SUFFIXES[:2]:
        companion = Path(f"{path}{suffix}")
        try:
            os.stat(companion)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise _path_error(path, companion, error, companion_of=path) from error


def _path_error(
    path: Path, refused: Path, error: Union[OSError, ValueError], companion_of: Optional[Path] = None
) -> StoreOpenError:
    """The `StoreOpenError` for a path the OS refuses (`refused`: the store's path, its directory or a companion)."""
    if isinstance(error, ValueError):  # e.g. an embedded NUL byte: no OS call can even be made
        return StoreOpenError(f"Cannot open the store {path}: the OS cannot take this path ({error}).", str(path))
    code = errno.errorcode.get(error.errno or 0, str(error.errno))
    reason = f"{error.strerror or error} [{code}]"
    hints = {
        errno.ENAMETOOLONG: "a file name may be at most 255 bytes on most file systems; choose a shorter name",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EACCES: "a directory on the way cannot be searched by this user; fix its permissions",
        errno.ELOOP: "symbolic links on the way loop",
    }
    hint = hints.get(error.errno or 0, "choose another path")
    if companion_of is not None:
        return StoreOpenError(
            f"Cannot open the store {path}: SQLite keeps the file {refused} next to it, and the OS refuses that path "
            f"({reason}); {hint} (leaving room for the `{str(refused)[len(str(companion_of)) :]}` suffix).",
            str(path),
        )
    where = "" if refused == path else f" (at {refused})"
    return StoreOpenError(
        f"Cannot open the store {path}: the OS refuses this path{where}: {reason}; {hint}.", str(path)
    )


def _write_access(path: Path) -> Optional[str]:
    """None if this process may write the store (its file, if it exists, and its directory, where SQLite creates
    `-wal` and `-shm` files), else why not. `os.access` asks the kernel, so read-only mounts and immutable files
    count even for root."""
    directory = path.absolute().parent
    if path.exists() and not os.access(path, os.W_OK):
        return f"the file {path} is not writable{_why_not_writable(path)}"
    if not os.access(directory, os.W_OK):
        return f"its directory {directory} is not writable{_why_not_writable(directory)}"
    return None


def _reading_query(path: Path) -> str:
    """How to open the store for reading only: with SQLite's locks where its `-shm` file is there or can be made;
    otherwise `immutable` (no locks, the log ignored), which is safe because nobody can be writing a WAL database
    next to which no `-shm` file exists or can be made, unless a log with committed changes is there, which
    SQLite cannot read without a `-shm` file: then `StoreOpenError`."""
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if shm.exists() or os.access(path.absolute().parent, os.W_OK):
        return _LOCKED
    try:
        with wal.open("rb") as file:
            log = _read_wal(file)
    except FileNotFoundError:
        log = None
    except OSError as error:
        raise StoreOpenError(f"Cannot read {wal} ({error.strerror}); check its permissions.", str(path)) from error
    if log is not None and log.frames:
        raise StoreOpenError(
            f"Cannot read the store {path}: its write-ahead log {wal} holds changes that are not in {path} yet (the "
            f"last process that wrote it did not close it), and SQLite reads them only with a {shm} file next to "
            f"it, which cannot be created in the read-only {path.absolute().parent}. Open the store once where its "
            "directory is writable (that merges the log into the file), or copy both files to such a place.",
            str(path),
        )
    return _IMMUTABLE


class _OnlyReadable(Exception):
    """SQLite opened the store for reading only although it looked writable."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _why_not_writable(path: Path) -> str:
    try:
        if hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY:
            return " (a read-only file system)"
    except OSError:
        pass
    return " for this user (its permissions or attributes)"


def _read_header(path: Path) -> Optional[bytes]:
    """The first 100 bytes of the file (None if it does not exist).

    Opening and closing a file drops every POSIX lock this process holds on it, including SQLite's: never call this
    while a connection of this process has the file open (see `_OPEN_HERE`).
    """
    try:
        with path.open("rb") as file:
            return file.read(100)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StoreOpenError(
            f"Cannot read the store {path} ({error.strerror}); check its permissions.", str(path)
        ) from error


@dataclass(frozen=True)
class _FileState:
    """What the files of a store look like from outside (stat and the first bytes), to tell whether they changed
    while they were read without locks."""

    header: Optional[bytes]
    file_stat: Optional[tuple[int, int, int, int]]
    wal_size: Optional[int]
    shm_exists: bool
    journal_exists: bool

    @classmethod
    def read(cls, path: Path) -> _FileState:
        try:
            info = os.stat(path)
            stat_key: Optional[tuple[int, int, int, int]] = (
                info.st_ino,
                info.st_size,
                info.st_mtime_ns,
                info.st_ctime_ns,
            )
        except FileNotFoundError:
            stat_key = None
        header = _read_header(path) if stat_key is not None else None
        try:
            wal_size: Optional[int] = os.stat(f"{path}-wal").st_size
        except FileNotFoundError:
            wal_size = None
        return cls(
            header,
            stat_key,
            wal_size,
            os.path.exists(f"{path}-shm"),
            os.path.exists(f"{path}-journal"),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.header is not None and len(self.header) >= 100 and self.header.startswith(_SQLITE_HEADER)

    @property
    def wal_mode(self) -> bool:
        """Whether the header says the database is in WAL mode (read and write versions 2)."""
        return self.is_sqlite and self.header is not None and self.header[18] == 2

    @property
    def usable_size(self) -> int:
        """The page size less the bytes reserved at the end of each page."""
        assert self.header is not None
        page_size = int.from_bytes(self.header[16:18], "big")
        return (65_536 if page_size == 1 else page_size) - self.header[20]


_OPEN_HERE: dict[tuple[int, int], list[str]] = {}
"""(device, inode) of the store files this process has open, with the query each opening reads them with. The
files are then read through SQLite only, which keeps its file descriptors (and POSIX locks) across connections;
a file opened and closed by Python would silently drop those locks."""
_OPEN_HERE_LOCK = threading.Lock()


def _file_key(path: Path) -> Optional[tuple[int, int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


# ------------------------------------------------------------------------------ whose write-ahead log is this?
#
# SQLite replays the `-wal` file next to a database when it opens it, and copies its pages into the database at
# the next checkpoint. It checks only that the log is consistent in itself (its frames carry the salts of its
# header and a checksum chained from it), never that it was written for this database: a log copied from
# another store, from a copy of this one that went its own way, or left over when the database was restored from
# a backup, is replayed, and its pages replace the database's.
#
# What ties a log to a database is history: the log's frames are changes made on top of the state the database
# file was in when the log was started (or a later one, once a checkpoint copied some of them). An id of the
# store cannot tell that (a copy or a backup has the same id), nor can the log's salts (a transaction cannot
# write into the database the salts of the log it is being written to). So the store marks every write
# transaction it makes: the row `_CHAIN_NAME` of `sqlite_sequence` holds two 64-bit random values as hex,
# `previous || current`, and each transaction sets it to `current || new random`. That row's page is written by
# every batch anyway (the AUTOINCREMENT counter of `events` lives on it), so the mark costs no extra page in the
# log, where a table of its own would add a page (32 KB) to every transaction. The database file holds the
# `current` value of the transaction whose version of that page a checkpoint copied last; each committed frame
# of that page in the log holds the pair its transaction wrote. The log belongs to the database when the
# database's value is one the log's history went through: the `previous` of its first marked transaction (the
# log was started on top of this database) or the `current` of one of them (a checkpoint copied part of the log
# already). Another store's
# values are random, so they never match; neither do a copy's once both were written, nor an old log's once the
# database moved on. A database with no mark is an empty one (its value `_CHAIN_CREATED`, which the
# transaction creating a store starts from; its log must then create it) or one written before the marks
# existed (`_CHAIN_LEGACY`, which the first marked transaction starts from; an unmarked log is replayed for it,
# as before). A log whose page size is not the database's is refused outright.
#
# The check reads the log's frame headers and the frames of that one page from the file, before any SQLite
# connection could replay it; the database file is read through an `immutable` connection, which ignores the
# log. Checksums are not recomputed (too slow in Python for a large log): the frames taken are those with the
# header's salts up to the last commit frame, a superset of what SQLite replays (it also drops a last frame
# whose page a killed writer did not get to write), so a log SQLite would replay is never refused for want of
# a frame. What it cannot tell apart: an empty database (created, never checkpointed) next to the first log of
# another store, which then becomes a copy of that store (the empty database had nothing to lose).

_CHAIN_NAME = "miniagents-wal-chain"
_CHAIN_CREATED = "0" * 16
"""The `previous` value of the transaction that created the store (and the value of an empty database)."""
_CHAIN_LEGACY = "F" * 16
"""The `previous` value of the first marked transaction of a store created before the marks (and the value of
such a database)."""
_ADVANCE_CHAIN = f"UPDATE sqlite_sequence SET seq = substr(seq, 17) || hex(randomblob(8)) WHERE name = '{_CHAIN_NAME}'"
_START_CHAIN = f"INSERT INTO sqlite_sequence (name, seq) VALUES ('{_CHAIN_NAME}', ? || hex(randomblob(8)))"
_WAL_MAGICS = (0x377F0682, 0x377F0683)
_WAL_HEADER_SIZE = 32
_FRAME_HEADER_SIZE = 24


def _advance_chain(connection: sqlite3.Connection) -> None:
    """Mark the write transaction open on `connection` (see above)."""
    if connection.execute(_ADVANCE_CHAIN).rowcount == 0:
        connection.execute(_START_CHAIN, (_CHAIN_LEGACY,))


async def _aadvance_chain(db: aiosqlite.Connection) -> None:
    """`_advance_chain` through aiosqlite."""
    cursor = await db.execute(_ADVANCE_CHAIN)
    if cursor.rowcount == 0:
        await db.execute(_START_CHAIN, (_CHAIN_LEGACY,))


@dataclass
class _WalLog:
    """The committed frames of a write-ahead log, read from its file."""

    page_size: int
    salts: bytes
    frames: list[tuple[int, int]]
    """(page number, offset of the page's bytes) of every frame up to the last commit frame, in order."""


def _read_wal(file: BinaryIO, with_frames: bool = True) -> Optional[_WalLog]:
    """The log in `file` (only its header unless `with_frames`), or None if it has no valid header (SQLite then ignores
    the file and overwrites it)."""
    header = file.read(_WAL_HEADER_SIZE)
    if len(header) < _WAL_HEADER_SIZE:
        return None
    magic, _version, page_size = struct.unpack(">III", header[:12])
    if magic not in _WAL_MAGICS or not 512 <= page_size <= 65_536 or page_size & (page_size - 1):
        return None
    if not with_frames:
        return _WalLog(page_size, header[16:24], [])
    salts = header[16:24]
    size = os.fstat(file.fileno()).st_size
    frames: list[tuple[int, int]] = []
    committed = 0
    offset = _WAL_HEADER_SIZE
    while offset + _FRAME_HEADER_SIZE + page_size <= size:
        file.seek(offset)
        frame_header = file.read(_FRAME_HEADER_SIZE)
        page_number, commit_size = struct.unpack(">II", frame_header[:8])
        if frame_header[8:16] != salts or page_number == 0:
            break  # a frame of an earlier generation of the log (or none): the log ends here
        frames.append((page_number, offset + _FRAME_HEADER_SIZE))
        if commit_size:
            committed = len(frames)
        offset += _FRAME_HEADER_SIZE + page_size
    return _WalLog(page_size, salts, frames[:committed])


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's variable-length integer at `at`, and where it ends."""
    value = 0
    for index in range(8):
        byte = data[at + index]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + index + 1
    return (value << 8) | data[at + 8], at + 9


_INTEGER_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(payload: bytes) -> list[Any]:
    """The values of a record (a row as SQLite stores it)."""
    header_size, at = _varint(payload, 0)
    types = []
    while at < header_size:
        serial_type, at = _varint(payload, at)
        types.append(serial_type)
    values: list[Any] = []
    body = header_size
    for serial_type in types:
        if serial_type in (0, 8, 9):
            values.append(None if serial_type == 0 else serial_type - 8)
        elif serial_type in _INTEGER_SIZES:
            size = _INTEGER_SIZES[serial_type]
            values.append(int.from_bytes(payload[body : body + size], "big", signed=True))
            body += size
        elif serial_type == 7:
            values.append(struct.unpack(">d", payload[body : body + 8])[0])
            body += 8
        elif serial_type >= 12:
            size = (serial_type - 12) // 2
            raw = payload[body : body + size]
            values.append(raw.decode("utf-8", "replace") if serial_type % 2 else raw)
            body += size
        else:
            raise ValueError(f"serial type {serial_type}")
    return values


def _leaf_rows(page: bytes, start: int, usable_size: int) -> list[list[Any]]:
    """The rows of a table b-tree leaf page that are held on the page itself (`start`: where the page's header
    is: 100 on page 1, else 0); raise ValueError if the page is not such a leaf."""
    if page[start] != 0x0D:
        raise ValueError("not a table leaf page")
    rows = []
    for index in range(int.from_bytes(page[start + 3 : start + 5], "big")):
        pointer = int.from_bytes(page[start + 8 + 2 * index : start + 10 + 2 * index], "big")
        length, at = _varint(page, pointer)
        _rowid, at = _varint(page, at)
        if length <= usable_size - 35 and at + length <= len(page):
            rows.append(_record(page[at : at + length]))
    return rows


def _chain_in_page(page: bytes, usable_size: int) -> Optional[tuple[str, str]]:
    """(previous, current) of the chain row on a `sqlite_sequence` page, or None if it is not there (or the page
    cannot be read)."""
    try:
        for row in _leaf_rows(page, 0, usable_size):
            if len(row) == 2 and row[0] == _CHAIN_NAME and isinstance(row[1], str) and len(row[1]) == 32:
                return row[1][:16], row[1][16:]
    except (IndexError, ValueError, struct.error):
        pass
    return None


def _sequence_root_in_page_one(page: bytes, usable_size: int) -> Optional[int]:
    """The root page of `sqlite_sequence` as the schema on page 1 says, or None."""
    try:
        for row in _leaf_rows(page, 100, usable_size):
            if len(row) == 5 and row[0] == "table" and row[1] == "sqlite_sequence" and isinstance(row[3], int):
                return row[3]
    except (IndexError, ValueError, struct.error):
        pass
    return None


@dataclass(frozen=True)
class _DatabaseChain:
    """What the database file alone (not its log) says about the chain of marks."""

    page_size: int
    value: str
    """The `current` value of the last transaction in the file; `_CHAIN_CREATED` for an empty database,
    `_CHAIN_LEGACY` for one that has tables but no mark."""
    sequence_root: Optional[int]


def _read_database_chain(uri: str) -> _DatabaseChain:
    """The chain value of the database file itself, read through an `immutable` connection (which never looks at
    the log, takes no locks and creates no files)."""
    with contextlib.closing(sqlite3.connect(uri + _IMMUTABLE, uri=True)) as db:
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        schema = db.execute("SELECT name, rootpage FROM sqlite_master").fetchall()
        root = next((int(rootpage) for name, rootpage in schema if name == "sqlite_sequence"), None)
        value = _CHAIN_CREATED if not schema else _CHAIN_LEGACY
        if root is not None:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (_CHAIN_NAME,)).fetchone()
            if row is not None and isinstance(row[0], str) and len(row[0]) == 32:
                value = row[0][16:]
    return _DatabaseChain(page_size, value, root)


def _wal_problem(path: Path, uri: str, state: _FileState) -> tuple[Optional[str], object]:
    """Why the log next to `path` does not belong to it (None if it does, or if it holds nothing to replay), and
    what the verdict was drawn from (equal for two reads of unchanged files). Raises `_Unsettled` if the files
    changed while they were read."""
    wal_path = Path(f"{path}-wal")
    try:
        with wal_path.open("rb") as file:
            if _read_wal(file, with_frames=False) is None:
                return None, None
            database = _read_database_chain(uri)  # before the frames: a checkpoint may copy frames meanwhile
            file.seek(0)
            log = _read_wal(file)
            if log is None:
                raise _Unsettled()
            if log.page_size != database.page_size:
                return (
                    f"its pages are {log.page_size} bytes long, the database's {database.page_size}, so it was "
                    "written for another database",
                    (log.salts, log.page_size, database.page_size),
                )
            if not log.frames:
                return None, None
            root = database.sequence_root
            page_one = [offset for page, offset in log.frames if page == 1]
            if root is None and page_one:  # an empty database: the schema is in the log
                file.seek(page_one[-1])
                root = _sequence_root_in_page_one(file.read(log.page_size), state.usable_size)
            marks: list[tuple[str, str]] = []
            for page, offset in log.frames if root is not None else ():
                if page == root:
                    file.seek(offset)
                    mark = _chain_in_page(file.read(log.page_size), state.usable_size)
                    if mark is not None:
                        marks.append(mark)
            file.seek(0)
            if file.read(_WAL_HEADER_SIZE)[16:24] != log.salts:
                raise _Unsettled()  # the log was started afresh meanwhile
    except FileNotFoundError:
        raise _Unsettled() from None
    except sqlite3.Error as error:
        raise _Unsettled() from error
    evidence = (log.salts, len(log.frames), database.value)
    if database.value == _CHAIN_CREATED and not page_one:
        return "the database is empty, and the log does not create it, so it was written for another one", evidence
    if not marks:
        if database.value in (_CHAIN_CREATED, _CHAIN_LEGACY):
            return None, evidence  # a store from before the marks: nothing to compare, replayed as it always was
        return (
            f"its {len(log.frames)} committed frames carry none of the marks this store puts on every transaction, "
            "so another program (or a miniagents older than this one) wrote them, maybe for another database",
            evidence,
        )
    history = {marks[0][0], *(current for _previous, current in marks)}
    if database.value in history:
        return None, evidence
    return (
        "its transactions continue another history than the database's (it was written for another store, or "
        "for a copy of this one that was written to since, or the database was restored from a backup while the "
        "log was not)",
        evidence,
    )


class _Unsettled(Exception):
    """The files changed while they were being read (another process is writing): read them again."""
