"""`PostgresStore`: the event store in a PostgreSQL database (asyncpg), appended to by many processes and machines."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from blake3 import blake3

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
from store.chain import StoredEvent
from store.encoding import decode_data, decode_run_error
from store.errors import (
    ForeignDatabaseError,
    StoreOpenError,
    StoreReadError,
    StoreUsageError,
    StoreWriteError,
)
from store.format import APPLICATION, check_format, new_format_entries
from store.results import RunInfo, RunStatus
from store.writer import BatchWriter, ThreadedBatchWriter, weak_method

SCHEMA_VERSION = 1
"""Version of the table layout below (PostgreSQL stores count their own versions); a newer one is refused."""
DEFAULT_SCHEMA = "miniagents"
"""The PostgreSQL schema (namespace) a store keeps its tables in unless told otherwise."""

_TABLES_V1 = (
    "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE {s}.kinds (code smallint PRIMARY KEY, name text NOT NULL UNIQUE)",
    """CREATE TABLE {s}.runs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id text NOT NULL UNIQUE,
        status text NOT NULL DEFAULT 'running',
        started_at double precision,
        finished_at double precision,
        library_version text,
        metadata bytea,
        error bytea,
        event_count bigint NOT NULL DEFAULT 0
    )""",
    "CREATE TABLE {s}.objects (hash bytea PRIMARY KEY, body bytea NOT NULL)",
    "CREATE SEQUENCE {s}.events_seq",
    """CREATE TABLE {s}.events (
        seq bigint PRIMARY KEY,
        run bigint NOT NULL,
        kind smallint NOT NULL,
        t double precision NOT NULL,
        hash bytea,
        call_id bigint,
        parent_call_id bigint,
        data bytea,
        link bytea
    )""",
    "CREATE INDEX events_by_run ON {s}.events (run, seq)",
    "CREATE INDEX events_by_hash ON {s}.events (hash) WHERE kind IN (4, 6)",  # stream, call_finished: replay lookups
)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _TABLES_V1}
"""Statements (`{s}`: the quoted schema) that take a store from version `n - 1` to version `n` (0: no tables)."""

KIND_CODES: dict[EventKind, int] = {
    EventKind.RUN_STARTED: 1,
    EventKind.RUN_FINISHED: 2,
    EventKind.MESSAGE: 3,
    EventKind.STREAM: 4,
    EventKind.CALL_STARTED: 5,
    EventKind.CALL_FINISHED: 6,
    EventKind.ERROR: 7,
}
"""Stored codes of the event kinds (those of a SQLite store; kinds added later get the next free code)."""

_CHUNK = 5_000
_MAX_TRANSACTION_EVENTS = 20_000
_WRITE_ATTEMPTS = 5
"""How often a write transaction is tried when another process stored one of its new objects at the same time."""
_EVENT_COLUMNS = ("seq", "run", "kind", "t", "hash", "call_id", "parent_call_id", "data", "link")
_LOCK_POLL = 0.005
"""First wait (seconds) between tries of a lock that a maintenance operation holds; it doubles up to 0.25 s."""

_CONNECTION: contextvars.ContextVar[Optional[tuple[PostgresStore, Any]]] = contextvars.ContextVar(
    "miniagents_postgres_connection", default=None
)
"""(store, connection) the current task reads through: a snapshot (`averify`) or a maintenance transaction (gc)."""


_ASYNCPG: Any = None


def _asyncpg() -> Any:
    """The asyncpg module, imported when a store is first opened (so that `import store` works without it)."""
    global _ASYNCPG
    if _ASYNCPG is None:
        try:
            import asyncpg
        except ImportError as error:
            raise ImportError(
                "PostgresStore needs asyncpg; install it with `pip install 'miniagents[postgres]'`."
            ) from error
        _ASYNCPG = asyncpg
    return _ASYNCPG


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lock_key(*parts: str) -> int:
    """A 64-bit advisory lock key (signed, as PostgreSQL takes it) for these parts."""
    digest = blake3("\x00".join(("miniagents", *parts)).encode()).digest()[:8]
    return int.from_bytes(digest, "big", signed=True)


def _split_dsn(dsn: str) -> tuple[str, Optional[str]]:
    """The DSN without a `schema=` query parameter (which is this store's, not the driver's), and that schema."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    if not schemas:
        return dsn, None
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schemas[-1]


def _redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


@dataclass
class _Inspection:
    """What the schema holds, read without changing it."""

    relations: list[str] = field(default_factory=list)
    """`kind name` of every table, view and sequence in the schema."""
    meta: dict[str, str] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.relations


_WriterWork = Callable[[Any, "_WriterState"], Awaitable[Any]]
"""What runs on the writer's thread: a coroutine function of its connection and state."""


@dataclass
class _WriterState:
    """What the batch writer's thread owns: its event loop, its connection, and the runs it holds locks for."""

    loop: asyncio.AbstractEventLoop
    connection: Any = None
    locked_runs: set[str] = field(default_factory=set)
    """Runs registered by this store object and not finished: a session lock on each tells other processes so."""


class PostgresStore(EventStore):
    """An event store in a PostgreSQL database: objects once per hash, an append-only log of events numbered by one
    sequence, shared by any number of processes and machines appending at once.

    Batches are written by a thread of the store's own, on a connection of its own (so writing never waits for the
    application's event loop); reads go through a small connection pool on the application's event loop.

    Ordering: every write transaction takes one transaction-level advisory lock just before it numbers and inserts
    its events, and holds it until it commits; so events are numbered in the order their transactions become
    visible, and a reader that saw event `seq` never later finds a smaller `seq` appear (`after_seq` readers miss
    nothing). Objects (those not stored yet, by COPY) and run rows are written before that lock, outside the
    serialized part; the events are then COPYed under it.

    Deleting and collecting: `agc()` and `adelete_run()` take an exclusive advisory lock that every write takes in
    shared mode, so they never interleave with a half-written batch of any process; a batch prepared before a gc
    brings back the objects it relied on (the gc generation in `meta`, as in a SQLite store). A run started by a
    live store object holds a session-level advisory lock on the writer's connection until the run finished and
    its events are written. So `adelete_run` tells a run that is still being recorded (refused, as by every
    store, unless `force=True`) from an abandoned one, still `running` because its process died (the lock ended
    with its connection): that one is deleted without `force`. A writer whose run was deleted meanwhile (by
    `force=True`, or after its connection, and lock, were lost) fails loudly instead of re-creating the run.

    :param dsn: `postgresql://user:password@host:port/database` (or `postgres://`); a `schema=` query parameter
        sets `schema`. Anything else asyncpg reads from a DSN works (`?host=/socket/dir`, `sslmode=...`).
    :param schema: the PostgreSQL schema the store's tables live in (created if missing), so one database can hold
        a store next to other applications' tables, or several stores. A schema holding tables that are not a
        miniagents store, or a store a newer miniagents wrote, is refused and left untouched.
    :param batch_size: flush as soon as this many events are buffered.
    :param flush_interval: flush buffered events at least this often (seconds).
    :param max_pending_events: at most this many events wait for the writer thread (handed over, not written);
        beyond it `append` blocks until the writer caught up (backpressure).
    :param max_pending_bytes: the same bound in bytes of objects and event data.
    :param max_pending_seconds: the same bound in age: `append` also blocks while an event handed over and not
        written was appended longer ago than this, so that a crash loses little more than that much work even
        when a busy event loop slows the writer thread down.
    :param pool_size: connections of the reading pool.
    :param lock_timeout: how long (seconds) a write waits for a gc or a run deletion of another process before it
        fails with `StoreWriteError` (the events stay buffered).
    :param statement_cache_size: asyncpg's prepared statement cache per connection; pass 0 behind pgbouncer in
        transaction pooling mode (prepared statements do not survive a change of server connection there). The
        guard of running runs against deletion by other processes needs session-level locks, which hold only on a
        direct connection or with session pooling: in transaction pooling, do not delete runs that may be running.
    :param connect_options: more keyword arguments for `asyncpg.connect` (`ssl`, `server_settings`, `timeout`...).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: Optional[str] = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_seconds: float = DEFAULT_MAX_PENDING_SECONDS,
        pool_size: int = 4,
        lock_timeout: float = 60.0,
        statement_cache_size: int = 100,
        connect_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_pending_events=max_pending_events,
            max_pending_bytes=max_pending_bytes,
            max_pending_seconds=max_pending_seconds,
        )
        if not isinstance(dsn, str) or urlsplit(dsn).scheme.lower() not in ("postgresql", "postgres"):
            raise StoreUsageError(
                f"PostgresStore needs a DSN such as postgresql://user@host:5432/database, got {dsn!r}."
            )
        dsn, schema_in_dsn = _split_dsn(dsn)
        schema = schema if schema is not None else (schema_in_dsn or DEFAULT_SCHEMA)
        if not schema or "\x00" in schema:
            raise StoreUsageError(f"schema must be a PostgreSQL schema name, got {schema!r}.")
        if pool_size < 1:
            raise StoreUsageError(f"pool_size must be at least 1, got {pool_size}.")
        self.dsn = dsn
        self.schema = schema
        self._pool_size = pool_size
        self._lock_timeout = lock_timeout
        self._connect_options: dict[str, Any] = {"statement_cache_size": statement_cache_size}
        self._connect_options.update(connect_options or {})
        self._pool: Any = None
        self._in_maintenance = False
        """From before a gc asks for the exclusive write lock until it let it go (backpressure must not block the loop
        then: the writer waits for the gc's transaction, which the loop drives)."""
        self._kind_codes: dict[EventKind, int] = {}
        self._kinds_by_code: dict[int, EventKind] = {}
        self._kind_names: dict[int, str] = {}
        self._writer_state: Optional[_WriterState] = None
        self._writer_lock = threading.Lock()
        quoted = _quote_identifier(schema)
        self._sql = _Statements(quoted)
        self._write_key = _lock_key(schema, "write")
        """Taken shared by every write transaction, exclusively by gc and run deletion."""
        self._seq_key = _lock_key(schema, "seq")
        """Taken by a write transaction from numbering its events to its commit (see the class docstring)."""
        self._schema_key = _lock_key(schema, "schema")
        """Taken while the schema is created or migrated."""

    @property
    def location(self) -> str:
        return f"{_redacted(self.dsn)} (schema {self.schema})"

    def _run_key(self, run_id: str) -> int:
        return _lock_key(self.schema, "run", run_id)

    # ------------------------------------------------------------------------------------------------------ opening

    async def _aconnect(self) -> Any:
        return await _asyncpg().connect(self.dsn, **self._connect_options)

    async def _aopen_storage(self) -> None:
        asyncpg = _asyncpg()
        try:
            connection = await self._aconnect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self._open_error(error) from error
        pool = None
        try:
            inspection = await self._ainspect(connection)
            self._classify(inspection)
            if not self._is_current(inspection):
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", self._schema_key)
                    inspection = await self._acreate_or_migrate(connection)
            self._set_kinds(inspection.kinds)
            pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self._pool_size, **self._connect_options)
            await connection.close()
        except BaseException as error:  # a refusal, a driver error or a cancellation: nothing is left open
            connection.terminate()
            if pool is not None:
                pool.terminate()
            if isinstance(error, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                raise self._open_error(error) from error
            raise
        self._pool = pool

    def _open_error(self, error: BaseException) -> StoreOpenError:
        return StoreOpenError(
            f"Cannot open the store {self.location} ({type(error).__name__}: {error}); check that the server runs "
            "and the DSN (host, port, database, user, password) is right, and that the user may create tables in "
            f"schema {self.schema!r} (or that they exist).",
            self.location,
        )

    async def _ainspect(self, connection: Any, nested: bool = False) -> _Inspection:
        """What the schema holds, in one read-only transaction (so all of it is from one moment; `nested`: in the
        caller's transaction)."""
        inspection = _Inspection()
        transaction = connection.transaction() if nested else connection.transaction(isolation="repeatable_read")
        async with transaction:
            rows = await connection.fetch(
                "SELECT c.relkind::text, c.relname::text FROM pg_class AS c "
                "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY c.relname",
                self.schema,
            )
            kinds = {"r": "table", "p": "table", "v": "view", "m": "view", "f": "table", "S": "sequence"}
            inspection.relations = [f"{kinds[row[0]]} {row[1]}" for row in rows]
            names = {str(row[1]) for row in rows}
            if "meta" in names:
                try:
                    async with connection.transaction():  # a savepoint: a meta table of another shape is foreign
                        meta_rows = await connection.fetch(f"SELECT key, value FROM {self._sql.schema}.meta")
                    inspection.meta = {str(key): str(value) for key, value in meta_rows}
                except _asyncpg().PostgresError:
                    inspection.meta = {}
            if "kinds" in names and inspection.meta.get("application") == APPLICATION:
                kind_rows = await connection.fetch(f"SELECT code, name FROM {self._sql.schema}.kinds")
                inspection.kinds = {int(code): str(name) for code, name in kind_rows}
        return inspection

    def _classify(self, inspection: _Inspection) -> int:
        """The schema version of an inspected schema (0: empty); raise if it is not ours or not readable by us."""
        if inspection.is_empty:
            return 0

        def foreign() -> ForeignDatabaseError:
            shown = ", ".join(inspection.relations[:20]) + (", ..." if len(inspection.relations) > 20 else "")
            return ForeignDatabaseError(
                f"Schema {self.schema!r} of {_redacted(self.dsn)} holds tables of another application ({shown}), "
                "not a miniagents store; it was left untouched. Pass another `schema=` (a new one is created).",
                self.location,
            )

        return check_format(
            inspection.meta,
            location=self.location,
            newest_schema=SCHEMA_VERSION,
            foreign=foreign,
            elsewhere="start a new store (another `schema=`)",
        )

    def _is_current(self, inspection: _Inspection) -> bool:
        if inspection.is_empty or self._classify(inspection) != SCHEMA_VERSION:
            return False
        return all(kind.value in inspection.kinds.values() for kind in EventKind)

    async def _acreate_or_migrate(self, connection: Any) -> _Inspection:
        """In the caller's transaction, under the schema lock: inspect again (another process may have created the
        store meanwhile), then create or migrate the tables and register the kinds."""
        if not await connection.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", self.schema):
            await connection.execute(f"CREATE SCHEMA {self._sql.schema}")
        inspection = await self._ainspect(connection, nested=True)
        version = self._classify(inspection)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                await connection.execute(statement.format(s=self._sql.schema))
        if version == 0:
            meta = {**new_format_entries(), "gc_generation": "0"}
            await connection.executemany(
                f"INSERT INTO {self._sql.schema}.meta (key, value) VALUES ($1, $2)", list(meta.items())
            )
        if version != SCHEMA_VERSION:
            await connection.execute(
                f"INSERT INTO {self._sql.schema}.meta (key, value) VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(SCHEMA_VERSION),
            )
        codes = dict(inspection.kinds) if version else {}
        for kind in EventKind:
            if kind.value not in codes.values():
                code = KIND_CODES.get(kind) or max([*codes, *KIND_CODES.values()]) + 1
                await connection.execute(
                    f"INSERT INTO {self._sql.schema}.kinds (code, name) VALUES ($1, $2)", code, kind.value
                )
                codes[code] = kind.value
        inspection.kinds = codes
        return inspection

    def _set_kinds(self, kinds: dict[int, str]) -> None:
        self._kind_names = dict(kinds)
        self._kinds_by_code = {
            code: EventKind(name) for code, name in kinds.items() if name in EventKind._value2member_map_
        }
        self._kind_codes = {kind: code for code, kind in self._kinds_by_code.items()}

    async def _areload_kinds(self) -> None:
        rows = await self._afetch(f"SELECT code, name FROM {self._sql.schema}.kinds")
        self._set_kinds({int(code): str(name) for code, name in rows})

    async def _aclose_storage(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except BaseException:  # e.g. cancelled: the connections must end all the same
                pool.terminate()
                raise

    # -------------------------------------------------------------------------------------------- the writer thread

    async def _aopen_batch_writer(self) -> BatchWriter[Batch]:
        # a thread of its own, with an event loop and a connection of its own: batches are written while the
        # application's event loop is busy, and the batches that queue up meanwhile share one transaction
        writer: ThreadedBatchWriter[Batch] = ThreadedBatchWriter(
            weak_method(self._write_handed_over),  # a store left open can still be collected (and warn)
            name=f"miniagents store writer {self.location}",
            max_events=_MAX_TRANSACTION_EVENTS,
            on_stop=weak_method(self._disconnect_writer),
        )
        try:
            await asyncio.wrap_future(writer.call(weak_method(self._connect_writer)))
        except BaseException as error:
            await asyncio.wrap_future(writer.stop())
            asyncpg = _asyncpg()
            if isinstance(error, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                raise self._open_error(error) from error
            raise
        return writer

    def _connect_writer(self) -> None:
        """Runs on the writer's thread: its event loop and connection."""
        loop = asyncio.new_event_loop()
        try:
            connection = loop.run_until_complete(self._aconnect())
        except BaseException:
            loop.close()
            raise
        with self._writer_lock:
            self._writer_state = _WriterState(loop, connection)

    def _disconnect_writer(self) -> None:
        """Runs on the writer's thread when it stops: closing the connection also ends its session locks."""
        with self._writer_lock:
            state, self._writer_state = self._writer_state, None
        if state is None:
            return
        try:
            if state.connection is not None and not state.connection.is_closed():
                try:
                    state.loop.run_until_complete(asyncio.wait_for(state.connection.close(), 10))
                except Exception:
                    state.connection.terminate()
        finally:
            state.loop.run_until_complete(state.loop.shutdown_asyncgens())
            state.loop.close()

    def _on_writer(self, work: _WriterWork, what: str, outcome: str = "Nothing of it was written") -> Any:
        """Run `work(connection, state)` on the writer's thread (call on that thread), reconnecting first if the
        connection was lost (and taking the locks of its running runs again); driver errors -> `StoreWriteError`
        saying what could not be done (`what`) and what became of it (`outcome`)."""
        state = self._writer_state
        if state is None:
            raise StoreUsageError(f"{self!r} has no writer connection on this thread.")
        return state.loop.run_until_complete(self._aon_writer(state, work, what, outcome))

    async def _aon_writer(self, state: _WriterState, work: _WriterWork, what: str, outcome: str) -> Any:
        asyncpg = _asyncpg()
        try:
            if state.connection is None or state.connection.is_closed():
                state.connection = await self._aconnect()
                for run_id in state.locked_runs:
                    await state.connection.fetchval("SELECT pg_try_advisory_lock($1)", self._run_key(run_id))
            return await work(state.connection, state)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise StoreWriteError(
                f"Could not {what} in {self.location} ({type(error).__name__}: {error}). {outcome}.", self.location
            ) from error

    async def _on_writer_thread(self, work: _WriterWork, what: str) -> Any:
        """Run `work` (see `_on_writer`) on the writer's thread, after the batches handed over before it."""
        return await self._acall_where_written(lambda: self._on_writer(work, what))

    def _commit_write(self, write: Write) -> int:
        # runs on the batch writer's thread
        generation: int = self._on_writer(
            lambda connection, state: self._awrite(connection, state, write),
            f"write {len(write)} events",
            "Nothing of the batch was written; the events stay buffered and `await store.aflush()` retries",
        )
        return generation

    async def _awrite(self, connection: Any, state: _WriterState, write: Write) -> int:
        """Write `write` in one transaction (see the class docstring for the locks); then let other processes
        delete the runs it finished."""
        asyncpg = _asyncpg()
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                generation = await self._awrite_transaction(connection, write)
                break
            except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                # another process stored one of the write's new objects meanwhile: the next attempt finds it
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        finished = {update.run_id for update in write.run_updates if update.finishes}
        for run_id in finished & state.locked_runs:
            state.locked_runs.discard(run_id)
            try:  # the write is committed: whatever happens now must not make it look unwritten (and written twice)
                await connection.fetchval("SELECT pg_advisory_unlock($1)", self._run_key(run_id))
            except Exception:  # a lost connection took the lock with it
                pass
        return generation

    async def _awrite_transaction(self, connection: Any, write: Write) -> int:
        sql = self._sql
        async with connection.transaction():
            await self._alock_shared(connection, f"write {len(write)} events")
            generation = int(await connection.fetchval(sql.gc_generation) or 0)
            if write.gc_generation is not None and write.gc_generation != generation:
                raise GcGenerationChanged(generation)
            await self._acopy_new_objects(connection, write.objects)
            run_rows = await self._aresolve_runs(connection, write)
            for update in write.run_updates:
                columns = ", ".join(f"{name} = ${index}" for index, name in enumerate(update.fields, start=1))
                await connection.execute(
                    f"UPDATE {sql.schema}.runs SET {columns} WHERE id = ${len(update.fields) + 1}",
                    *update.fields.values(),
                    run_rows[update.run_id],
                )
            await connection.executemany(
                sql.count_events, [(write.counts[run_id], run_rows[run_id]) for run_id in sorted(write.counts)]
            )
            # from here to the commit, one write transaction at a time: events are numbered in commit order
            await connection.execute("SELECT pg_advisory_xact_lock($1)", self._seq_key)
            first = await connection.fetchval(sql.next_seqs, len(write), sql.sequence)
            await connection.copy_records_to_table(
                "events",
                schema_name=self.schema,
                columns=_EVENT_COLUMNS,
                records=_event_rows(write, run_rows, self._kind_codes, first),
            )
        return generation

    async def _acopy_new_objects(self, connection: Any, objects: dict[str, bytes]) -> None:
        """COPY the objects that are not stored yet (COPY writes rows about twice as fast as an INSERT can).

        Two processes may bring the same new object at once: the later COPY then fails on the primary key (after
        waiting for the other transaction), and `_awrite` tries again. The objects go in hash order, so such
        waits never form a cycle."""
        if not objects:
            return
        keys = sorted(objects)
        hashes = [bytes.fromhex(key) for key in keys]
        stored = {bytes(row[0]) for row in await connection.fetch(self._sql.stored_objects, hashes)}
        records = [
            (hash_value, objects[key])
            for hash_value, key in zip(hashes, keys, strict=True)
            if hash_value not in stored
        ]
        if records:
            await connection.copy_records_to_table(
                "objects", schema_name=self.schema, columns=("hash", "body"), records=records
            )

    async def _alock_shared(self, connection: Any, what: str) -> None:
        """Take the write lock in shared mode, waiting up to `lock_timeout` for a gc or a run deletion."""
        deadline = time.monotonic() + self._lock_timeout
        delay = _LOCK_POLL
        while not await connection.fetchval("SELECT pg_try_advisory_xact_lock_shared($1)", self._write_key):
            if time.monotonic() > deadline:
                raise StoreWriteError(
                    f"Could not {what} in {self.location}: a garbage collection or a run deletion kept the store "
                    f"locked for more than {self._lock_timeout:g} s. Nothing was written; the events stay buffered "
                    "and `await store.aflush()` retries (or raise `lock_timeout`).",
                    self.location,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _aresolve_runs(self, connection: Any, write: Write) -> dict[str, int]:
        """The row ids of the write's runs, creating those of new runs that are missing; a run this store object
        registered and another process deleted meanwhile is `RunsDeleted`, not re-created."""
        run_ids = sorted(write.counts)
        rows = await connection.fetch(self._sql.find_runs, run_ids)
        found = {str(row[0]): int(row[1]) for row in rows}
        missing = [run_id for run_id in run_ids if run_id not in found]
        deleted = write.deleted_runs(found)
        if deleted:
            raise RunsDeleted(deleted)
        if missing:
            await connection.execute(self._sql.create_runs, missing)
            found.update((str(row[0]), int(row[1])) for row in await connection.fetch(self._sql.find_runs, missing))
        return found

    async def _aregister_run(self, run_id: str) -> None:
        async def work(connection: Any, state: _WriterState) -> None:
            key = self._run_key(run_id)
            locked = await connection.fetchval("SELECT pg_try_advisory_lock($1)", key)
            created = await connection.fetchval(self._sql.register_run, run_id)
            if created is None:
                if locked:
                    await connection.fetchval("SELECT pg_advisory_unlock($1)", key)
                raise StoreUsageError(f"{self.location} already holds a run {run_id!r}; run ids must be unique.")
            if locked:
                state.locked_runs.add(run_id)

        await self._on_writer_thread(work, f"record the start of run {run_id!r}")

    async def _arun_written(self, run_id: str) -> None:
        # other processes may delete it from now on (a run whose events could not be written keeps its lock until
        # they are, or until the store closes)
        async def work(connection: Any, state: _WriterState) -> None:
            if run_id in state.locked_runs:
                state.locked_runs.discard(run_id)
                try:
                    await connection.fetchval("SELECT pg_advisory_unlock($1)", self._run_key(run_id))
                except Exception:  # a lost connection took the lock with it
                    pass

        await self._on_writer_thread(work, f"release the lock of run {run_id!r}")

    async def _ais_abandoned(self, run_id: str) -> bool:
        # a run still marked running whose lock no session holds was abandoned (its process died, or closed its
        # store without finishing it): nobody will write it again, so it goes without `force`
        asyncpg = _asyncpg()
        try:
            async with self._require_pool().acquire() as connection, connection.transaction():
                status = await connection.fetchval(self._sql.run_status, run_id)
                if status != RunStatus.RUNNING:
                    return False
                return bool(await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._run_key(run_id)))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self._read_error(error) from error

    async def _adelete_run_events(self, run_id: str) -> bool:
        async def work(connection: Any, state: _WriterState) -> bool:
            sql = self._sql
            async with connection.transaction():
                # no write of any process is half way while this runs
                await connection.execute("SELECT pg_advisory_xact_lock($1)", self._write_key)
                row = await connection.fetchrow(sql.lock_run, run_id)
                if row is None:
                    return False
                run_row = int(row[0])
                await connection.execute(sql.delete_events, run_row)
                await connection.execute(sql.delete_run, run_row)
                return True

        result: bool = await self._on_writer_thread(work, f"delete run {run_id!r}")
        return result

    # ---------------------------------------------------------------------------------------------------- gc

    @asynccontextmanager
    async def _amaintenance(self) -> AsyncIterator[None]:
        # one transaction on a connection of its own, holding the write lock exclusively: no batch of any process is
        # half written while the gc looks for and deletes unreferenced objects
        pool = self._require_pool()
        asyncpg = _asyncpg()
        try:
            connection = await pool.acquire()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self._write_error(error, "start a maintenance transaction") from error
        token = _CONNECTION.set((self, connection))
        self._in_maintenance = True  # from before the lock is asked for: the writer thread waits for it from then
        try:
            transaction = connection.transaction()
            try:
                await transaction.start()
                await connection.execute("SELECT pg_advisory_xact_lock($1)", self._write_key)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                raise self._write_error(error, "start a maintenance transaction") from error
            try:
                yield
            except BaseException:
                await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                raise self._write_error(error, "finish a maintenance transaction") from error
        finally:
            self._in_maintenance = False
            _CONNECTION.reset(token)
            await pool.release(connection)

    def _holds_loop_transaction(self) -> bool:
        # a gc holds the write lock in a transaction the event loop drives: the writer thread waits for it
        return self._in_maintenance

    def _maintenance_connection(self, what: str) -> Any:
        current = _CONNECTION.get()
        if current is None or current[0] is not self:
            raise StoreUsageError(f"{self!r} can only {what} inside a maintenance transaction.")
        return current[1]

    async def _adelete_objects(self, hash_keys: Sequence[str]) -> None:
        connection = self._maintenance_connection("delete objects")
        try:
            await connection.execute(self._sql.delete_objects, [bytes.fromhex(key) for key in hash_keys])
            await connection.execute(self._sql.bump_gc_generation)
        except (OSError, _asyncpg().PostgresError, _asyncpg().InterfaceError) as error:
            raise self._write_error(error, f"delete {len(hash_keys)} unreferenced objects") from error

    def _write_error(self, error: BaseException, what: str) -> StoreWriteError:
        return StoreWriteError(
            f"Could not {what} in {self.location} ({type(error).__name__}: {error}). Nothing of it was written.",
            self.location,
        )

    # ------------------------------------------------------------------------------------------------------ reading

    def _require_pool(self) -> Any:
        if self._pool is None:
            self._check_open()
            raise StoreUsageError(f"{self!r} has no open connection pool.")
        return self._pool

    @asynccontextmanager
    async def _aread_snapshot(self) -> AsyncIterator[None]:
        # a connection of its own in one repeatable-read transaction, used only by the task that entered
        pool = self._require_pool()
        asyncpg = _asyncpg()
        try:
            connection = await pool.acquire()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self._read_error(error) from error
        token = _CONNECTION.set((self, connection))
        try:
            transaction = connection.transaction(isolation="repeatable_read", readonly=True)
            try:
                await transaction.start()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                raise self._read_error(error) from error
            try:
                yield
            finally:
                await transaction.rollback()
        finally:
            _CONNECTION.reset(token)
            await pool.release(connection)

    def _read_error(self, error: BaseException) -> StoreReadError:
        return StoreReadError(f"Could not read from {self.location} ({type(error).__name__}: {error}).", self.location)

    async def _afetch(self, sql: str, *parameters: Any) -> list[Any]:
        asyncpg = _asyncpg()
        current = _CONNECTION.get()
        try:
            if current is not None and current[0] is self:
                return list(await current[1].fetch(sql, *parameters))
            return list(await self._require_pool().fetch(sql, *parameters))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self._read_error(error) from error

    async def _alist_runs(self, run_id: Optional[str] = None) -> list[RunInfo]:
        sql = self._sql
        rows = await (self._afetch(sql.one_run, run_id) if run_id is not None else self._afetch(sql.all_runs))
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

    async def _arun_row(self, run_id: str) -> Optional[int]:
        rows = await self._afetch(self._sql.run_row, run_id)
        return int(rows[0][0]) if rows else None

    async def _akinds_of(self, codes: Iterable[int]) -> dict[int, EventKind]:
        """The kinds by code, reloaded once if some code is new to this store object (a newer process added it)."""
        if not set(codes) <= self._kinds_by_code.keys():
            await self._areload_kinds()
        return self._kinds_by_code

    async def _aiter_event_chunks(
        self,
        run_id: Optional[str],
        after_seq: Optional[int],
        kinds: Optional[frozenset[EventKind]],
        hash_keys: Optional[Sequence[str]] = None,
    ) -> AsyncIterator[list[Event]]:
        conditions: list[str] = []
        parameters: list[Any] = []
        if run_id is not None:
            run_row = await self._arun_row(run_id)
            if run_row is None:
                return
            parameters.append(run_row)
            conditions.append(f"e.run = ${len(parameters) + 1}")
        if hash_keys is not None:
            parameters.append([bytes.fromhex(key) for key in hash_keys])
            conditions.append(f"e.hash = ANY(${len(parameters) + 1}::bytea[])")
            if kinds is not None and kinds <= {EventKind.STREAM, EventKind.CALL_FINISHED}:
                conditions.append("e.kind IN (4, 6)")  # through the events_by_hash index
        if kinds is not None:
            parameters.append([self._kind_codes[kind] for kind in kinds if kind in self._kind_codes])
            conditions.append(f"e.kind = ANY(${len(parameters) + 1}::smallint[])")
        where = "".join(f" AND {condition}" for condition in conditions)
        sql = (
            "SELECT e.seq, r.run_id, e.kind, e.t, e.hash, e.call_id, e.parent_call_id, e.data "
            f"FROM {self._sql.schema}.events AS e LEFT JOIN {self._sql.schema}.runs AS r ON r.id = e.run "
            f"WHERE e.seq > $1{where} ORDER BY e.seq LIMIT {_CHUNK}"
        )
        last = after_seq if after_seq is not None else 0
        while True:
            rows = await self._afetch(sql, last, *parameters)
            if not rows:
                return
            kinds_by_code = await self._akinds_of(row[2] for row in rows)
            unknown = {row[2] for row in rows} - kinds_by_code.keys()
            if unknown:
                raise StoreReadError(
                    f"{self.location} holds events of kinds this library does not know (codes {sorted(unknown)}); "
                    "they were written by a newer miniagents: upgrade it to read them.",
                    self.location,
                )
            yield [
                Event(
                    kinds_by_code[kind],
                    run_id if run_id is not None else (run or ""),
                    t,
                    None if hash_value is None else bytes(hash_value).hex(),
                    call_id,
                    parent_call_id,
                    None if data is None else decode_data(bytes(data)),
                    None,
                    seq,
                )
                for seq, run, kind, t, hash_value, call_id, parent_call_id, data in rows
            ]
            if len(rows) < _CHUNK:
                return
            last = rows[-1][0]

    async def _aload_objects(self, hash_keys: Sequence[str]) -> dict[str, bytes]:
        if not hash_keys:
            return {}
        rows = await self._afetch(self._sql.load_objects, [bytes.fromhex(key) for key in hash_keys])
        return {bytes(hash_value).hex(): bytes(body) for hash_value, body in rows}

    async def _aiter_object_chunks(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        last = b""
        while True:
            rows = await self._afetch(self._sql.object_chunk, last)
            if not rows:
                return
            yield [(bytes(hash_value).hex(), bytes(body)) for hash_value, body in rows]
            last = bytes(rows[-1][0])

    async def _aiter_stored_chunks(self, run_id: Optional[str] = None) -> AsyncIterator[list[StoredEvent]]:
        condition, parameters = "", []
        if run_id is not None:
            run_row = await self._arun_row(run_id)
            if run_row is None:
                return
            condition, parameters = " AND e.run = $2", [run_row]
        sql = (
            "SELECT e.seq, coalesce(r.run_id, ''), e.kind, e.t, e.hash, e.call_id, e.parent_call_id, e.data, e.link "
            f"FROM {self._sql.schema}.events AS e LEFT JOIN {self._sql.schema}.runs AS r ON r.id = e.run "
            f"WHERE e.seq > $1{condition} ORDER BY e.seq LIMIT {_CHUNK}"
        )
        last = 0
        while True:
            rows = await self._afetch(sql, last, *parameters)
            if not rows:
                return
            kinds_by_code = await self._akinds_of(row[2] for row in rows)
            names = self._kind_names
            yield [
                StoredEvent(
                    seq,
                    run,
                    kinds_by_code.get(kind) or names.get(kind, f"kind code {kind}"),
                    t,
                    None if hash_value is None else bytes(hash_value).hex(),
                    call_id,
                    parent_call_id,
                    None if data is None else bytes(data),
                    None if link is None else bytes(link),
                )
                for seq, run, kind, t, hash_value, call_id, parent_call_id, data, link in rows
            ]
            last = rows[-1][0]


class _Statements:
    """The SQL of a store, its tables qualified by its (quoted) schema."""

    def __init__(self, schema: str) -> None:
        s = self.schema = schema
        self.gc_generation = f"SELECT value FROM {s}.meta WHERE key = 'gc_generation'"
        self.bump_gc_generation = (
            f"INSERT INTO {s}.meta (key, value) VALUES ('gc_generation', '1') "
            "ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + 1)::text"
        )
        self.stored_objects = f"SELECT hash FROM {s}.objects WHERE hash = ANY($1::bytea[])"
        self.find_runs = f"SELECT run_id, id FROM {s}.runs WHERE run_id = ANY($1::text[])"
        self.create_runs = (
            f"INSERT INTO {s}.runs (run_id) SELECT * FROM unnest($1::text[]) ON CONFLICT (run_id) DO NOTHING"
        )
        self.register_run = f"INSERT INTO {s}.runs (run_id) VALUES ($1) ON CONFLICT (run_id) DO NOTHING RETURNING id"
        self.count_events = f"UPDATE {s}.runs SET event_count = event_count + $1 WHERE id = $2"
        # numbers for `n` events at once (the caller holds the sequence lock, so nobody takes numbers in between)
        self.next_seqs = "SELECT setval($2::regclass, nextval($2::regclass) + $1 - 1) - $1 + 1"
        self.sequence = f"{s}.events_seq"
        self.lock_run = f"SELECT id FROM {s}.runs WHERE run_id = $1 FOR UPDATE"
        self.delete_events = f"DELETE FROM {s}.events WHERE run = $1"
        self.delete_run = f"DELETE FROM {s}.runs WHERE id = $1"
        self.delete_objects = f"DELETE FROM {s}.objects WHERE hash = ANY($1::bytea[])"
        columns = "run_id, status, started_at, finished_at, library_version, metadata, error, event_count"
        self.all_runs = f"SELECT {columns} FROM {s}.runs ORDER BY id"
        self.one_run = f"SELECT {columns} FROM {s}.runs WHERE run_id = $1"
        self.run_row = f"SELECT id FROM {s}.runs WHERE run_id = $1"
        self.run_status = f"SELECT status FROM {s}.runs WHERE run_id = $1"
        self.load_objects = f"SELECT hash, body FROM {s}.objects WHERE hash = ANY($1::bytea[])"
        self.object_chunk = f"SELECT hash, body FROM {s}.objects WHERE hash > $1 ORDER BY hash LIMIT {_CHUNK}"


def _event_rows(
    write: Write, run_rows: dict[str, int], kind_codes: dict[EventKind, int], first: int
) -> list[tuple[Any, ...]]:
    """The write's events as rows of `_EVENT_COLUMNS`, numbered from `first` on."""
    return [
        (
            first + index,
            run_rows[event.run_id],
            kind_codes[event.kind],
            float(event.t),
            None if hash_key is None else bytes.fromhex(hash_key),
            event.call_id,
            event.parent_call_id,
            data,
            link,
        )
        for index, (event, hash_key, data, link) in enumerate(
            zip(write.events, write.hash_keys, write.data, write.links, strict=True)
        )
    ]
