"""The store facade: `EventStore`, the public API every backend shares (an `EventSink` for `MiniAgents(store=...)`,
reads, checks, deletion and gc), on the backend contract of `store.backend` and the write buffer of `store.buffer`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Optional, TypeVar

import orjson

from miniagents.events import Event, EventKind
from miniagents.promising.ext.frozen import Frozen
from store.backend import Backend
from store.buffer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_EVENTS,
    DEFAULT_MAX_PENDING_SECONDS,
    Batch,
    WriteBuffer,
    remember_run,
)
from store.decoding import LazyObjects, LoadedObjects, ObjectDecoder, body_references, hash_matches, is_hash_key
from store.encoding import (  # the mapper's names, importable from here as before the reshape
    INT64_MAX,
    INT64_MIN,
    RunUpdate,
    decode_data,
    decode_run_error,
    encode_data,
    event_references,
    known_kind,
    run_update,
)
from store.errors import (
    StoreClosedError,
    StoreError,
    StoreIntegrityError,
    StoreReadError,
    StoreUsageError,
    StoreWriteError,
    UnknownHashError,
    UnknownRunError,
)
from store.results import Problem, RunInfo, RunStatus, VerifyReport
from store.verifying import averify_store, averify_store_run
from store.writer import BatchWriter, InlineBatchWriter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_EVENTS",
    "DEFAULT_MAX_PENDING_SECONDS",
    "Batch",
    "EventStore",
    "Problem",
    "RunInfo",
    "RunStatus",
    "RunUpdate",
    "VerifyReport",
    "decode_data",
    "decode_run_error",
    "encode_data",
    "event_references",
    "run_update",
]

logger = logging.getLogger(__name__)

_StoreT = TypeVar("_StoreT", bound="EventStore")
_T = TypeVar("_T")


class EventStore(Backend):
    """A content-addressed, append-only event store; an `EventSink` for `MiniAgents(store=...)`.

    Objects (hash key -> canonical bytes) are stored once each; events form an append-only log with a sequence
    number that only grows. `append()` buffers; as soon as `batch_size` events are waiting it hands them, encoded
    as one batch, to the store's batch writer (`SQLiteStore` writes on a thread of its own, so it never waits for
    the event loop), and a writer task hands over the rest at least every `flush_interval` seconds (a batch
    writer with a thread of its own takes over what a busy loop leaves waiting longer). A batch that
    cannot be written goes back into the buffer, in order (nothing is dropped), and `aflush()` / `afinish_run()`
    raise `StoreWriteError`. More than `max_pending_events` events (or `max_pending_bytes` bytes) handed over and
    not written, or one of them older than `max_pending_seconds`, make `append()` wait for the writer
    (backpressure, see `store.buffer`).
    """

    def __init__(
        self,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_seconds: float = DEFAULT_MAX_PENDING_SECONDS,
    ):
        self._pending = WriteBuffer(
            self,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_pending_events=max_pending_events,
            max_pending_bytes=max_pending_bytes,
            max_pending_seconds=max_pending_seconds,
        )
        self._is_open = False
        self._opened_by_run = False
        self._active_runs: set[str] = set()
        self._finished_runs: dict[str, None] = {}
        """Runs whose end this store object saw (`afinish_run`), oldest first, bounded: they may be deleted even if
        no `run_finished` event marked them finished."""
        self._closing: Optional[asyncio.Task[None]] = None
        """The task closing the store, while a close is in progress (others wait for it)."""
        self._open_lock: Optional[tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = None
        self._decoder = ObjectDecoder()

    # ------------------------------------------------------------------------------------------- backend hooks

    async def _aopen_batch_writer(self) -> BatchWriter[Batch]:
        """What writes this store's batches (called after `_aopen_storage`, stopped after `_aclose_storage`): by
        default each batch is committed right away, in the thread that hands it over. A backend returns a
        `ThreadedBatchWriter(self._write_handed_over, ...)` to commit on a thread of its own, or a
        `LoopBatchWriter(self._awrite_handed_over, ...)` to commit on the event loop."""
        return InlineBatchWriter(self._write_handed_over)

    def _write_handed_over(self, batches: list[Batch]) -> None:
        """Commit batches handed over (a blocking batch writer's callback)."""
        self._pending.commit(batches)

    async def _awrite_handed_over(self, batches: list[Batch]) -> None:
        """Commit batches handed over (a `LoopBatchWriter`'s callback)."""
        await self._pending.acommit(batches)

    async def _acall_where_written(self, function: Callable[[], _T]) -> _T:
        """Run `function` where this store's batches are written (the writer's thread), after the batches handed
        over before it: for a backend's own work on its writer connection."""
        writer = self._pending.batch_writer
        if writer is None:
            self._check_open()
            raise StoreClosedError(f"{self!r} is closing, so nothing more runs on its writer.", self.location)
        return await self._pending.wrap_future(writer.call(function))

    # --------------------------------------------------------------------------------------------------- lifecycle

    @property
    def is_open(self) -> bool:
        """Whether the store is open."""
        return self._is_open

    @property
    def exists(self) -> bool:
        """Whether the storage exists already, so opening it would not create it (a store in memory always does)."""
        return True

    @property
    def pending_count(self) -> int:
        """How many appended events are not written yet (buffered, or handed over and still being written)."""
        return self._pending.count

    async def aopen(self: _StoreT) -> _StoreT:
        """Open the store (idempotent) and start its writer task."""
        await self._aopen()
        return self

    async def _aopen(self) -> bool:
        """Open the store unless it is open already (concurrent callers wait for one opening); True if opened.

        A store that is being closed is not joined: this waits until the close is done, then opens it again.
        """
        closing = self._closing
        if closing is not None and not closing.done():
            # the close's outcome (events it lost) is reported to whoever closes; here it only has to be over
            await asyncio.wait([closing])
        if self._is_open:
            return False
        loop = asyncio.get_running_loop()
        if self._open_lock is None or self._open_lock[0] is not loop:
            self._open_lock = (loop, asyncio.Lock())
        async with self._open_lock[1]:
            closing = self._closing
            if closing is not None and not closing.done():
                await asyncio.wait([closing])
            if self._is_open:
                return False
            await self._aopen_storage()
            try:
                batch_writer = await self._aopen_batch_writer()
            except BaseException:
                await self._aclose_storage()
                raise
            self._pending.start(batch_writer)
            self._is_open = True
        return True

    async def aclose(self) -> None:
        """Write what is buffered, stop the writer and close the store.

        If the buffer cannot be written, the store is closed anyway and `StoreWriteError` says how many events
        were lost. The close runs to its end even if the caller is cancelled meanwhile (the store's threads are
        always stopped); the cancellation is raised once it is done. Concurrent callers wait for one close.
        """
        closing = self._closing
        if closing is None or closing.done():
            if not self._is_open:
                return
            self._pending.stopping = True
            closing = asyncio.get_running_loop().create_task(self._aclose_now(), name=f"closing {self!r}")
            self._closing = closing
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            if closing.done():
                raise
            while not closing.done():  # the caller was cancelled: finish closing first
                try:
                    await asyncio.wait([closing])
                except asyncio.CancelledError:
                    pass
            if not closing.cancelled() and closing.exception() is not None:
                logger.error("Closing %r after a cancellation: %s", self, closing.exception())
            raise

    async def _aclose_now(self) -> None:
        pending = self._pending
        try:
            await pending.astop()
            flush_error: Optional[StoreError] = None
            for _attempt in range(3):  # events appended while the final flush ran are written too
                try:
                    await pending.aflush()
                except StoreError as error:
                    flush_error = error
                    break
                if pending.count == 0:  # nothing buffered, nothing handed over and unwritten
                    break
        finally:
            # whatever happened (a failed write, a cancellation), the store is closed and its threads stop
            self._is_open = False  # from here on `append` refuses: nothing more can slip into the buffer
            batch_writer = pending.close()
            try:
                if batch_writer is not None:  # what it still writes is written before the storage closes
                    await asyncio.wrap_future(batch_writer.stop())
            finally:
                lost = pending.count  # what the writer finished meanwhile is not lost
                pending.discard()
                self._opened_by_run = False
                self._active_runs.clear()
                self._decoder.clear()
                try:
                    await self._aclose_storage()
                finally:
                    self._closing = None
        if lost:
            reason = (
                str(flush_error) if flush_error is not None else "they were appended while the store was being closed"
            )
            raise StoreWriteError(
                f"{self.location} was closed with {lost} events that could not be written, so they are lost: {reason}",
                self.location,
                pending=lost,
            ) from flush_error

    async def __aenter__(self: _StoreT) -> _StoreT:
        return await self.aopen()

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_is_open", False):
            pending = getattr(self, "_pending", None)
            batch_writer = pending.batch_writer if pending is not None else None
            if batch_writer is not None:
                batch_writer.stop()
            warnings.warn(
                f"{self!r} was garbage-collected while open: its buffered events were never written. Close it with "
                "`await store.aclose()` or use `async with`.",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # ------------------------------------------------------------------------------------------------- EventSink

    async def astart_run(self, run_id: str) -> None:
        """Open the store if needed (it is then closed by `afinish_run`) and record the run as running."""
        opened_here = await self._aopen()
        if opened_here:
            self._opened_by_run = True
        try:
            if run_id in self._active_runs:
                raise StoreUsageError(f"Run {run_id!r} is already running in {self.location}; run ids are unique.")
            self._active_runs.add(run_id)
            try:
                async with self._pending.lock:
                    await self._aregister_run(run_id)
            except BaseException:
                self._active_runs.discard(run_id)
                raise
            self._pending.register_run(run_id)
        except BaseException:
            if self._opened_by_run and not self._active_runs:
                await self.aclose()
            raise

    def append(self, event: Event) -> None:
        """Buffer one event (synchronous and cheap); every `batch_size` events go to the batch writer as a batch."""
        try:
            checked = self._checked_event(event)
        except StoreError:
            self._pending.note_refused(event.run_id)  # its sub-messages may be missing: later events bring them
            raise
        self._pending.add(checked)

    def _checked_event(self, event: Event) -> Event:
        """`event` if this open store can take it (with its object's hash key filled in), or the error why not."""
        if not self._is_open:
            raise StoreClosedError(
                f"{self!r} is closed, so the {event.kind.value} event of run {event.run_id!r} cannot be stored; "
                "open the store (`async with store:`) or pass it to `MiniAgents(store=...)`.",
                self.location,
            )
        obj = event.obj
        hash_key = event.hash_key
        if obj is not None:
            known = obj.hash_key
            if hash_key is None:
                event = dataclasses.replace(event, hash_key=known)
            elif hash_key is not known and hash_key != known:
                self._check_event_hash_key(event, hash_key, obj)
        elif hash_key is not None:
            self._check_event_hash_key(event, hash_key)
        t, call_id, parent_call_id = event.t, event.call_id, event.parent_call_id
        try:  # checked here, so that one bad event cannot make a whole shared batch unwritable
            valid = (
                t - t == 0  # False for NaN and infinities
                and (call_id is None or INT64_MIN <= call_id <= INT64_MAX)
                and (parent_call_id is None or INT64_MIN <= parent_call_id <= INT64_MAX)
            )
        except TypeError:
            valid = False
        if not valid:
            raise StoreUsageError(
                f"The {event.kind.value} event of run {event.run_id!r} cannot be stored: its `t` ({t!r}) must be a "
                f"finite number of seconds, its `call_id` ({call_id!r}) and `parent_call_id` ({parent_call_id!r}) "
                "None or 64-bit integers."
            )
        return event

    @staticmethod
    def _check_event_hash_key(event: Event, hash_key: object, obj: Optional[Frozen] = None) -> None:
        if not is_hash_key(hash_key):
            raise StoreUsageError(
                f"The {event.kind.value} event of run {event.run_id!r} has the hash key {hash_key!r}, which is not "
                "40 or 64 lower-case hex characters; pass `message.hash_key`."
            )
        if obj is not None and not hash_matches(str(hash_key), event.canonical_bytes or obj.encode_canonical()):
            raise StoreUsageError(
                f"The {event.kind.value} event of run {event.run_id!r} has the hash key {hash_key}, but its object's "
                f"key is {obj.hash_key}; storing the object under a key it does not hash to would corrupt the store. "
                "Pass `obj.hash_key` (or no hash key)."
            )

    async def afinish_run(self, run_id: str) -> None:
        """Write every buffered event; close the store if `astart_run` opened it and no other run is active.

        On a write failure: if the store stays open, the events stay buffered and `StoreWriteError` is raised; if
        the run opened it, it is closed all the same and `StoreWriteError` says how many events were lost. A
        cancelled flush still closes a store the run opened.
        """
        self._active_runs.discard(run_id)
        remember_run(self._finished_runs, run_id)
        try:
            await self.aflush()
        except BaseException as error:
            if not self._closes_after_run():
                raise
            # the run opened the store, so it is closed all the same (its threads must stop): `aclose` tries the
            # write once more and says how many events were lost
            await self.aclose()
            if not isinstance(error, StoreError):
                raise
            return
        if self._closes_after_run():
            await self.aclose()
        elif self._is_open and run_id not in self._active_runs:
            await self._arun_written(run_id)
        lost = self._pending.pop_lost(run_id)
        if lost is not None:
            raise lost

    def _closes_after_run(self) -> bool:
        """Whether the run that just finished has to close the store (it opened it, and no other run is active)."""
        return self._opened_by_run and not self._active_runs and self._is_open

    async def aflush(self) -> None:
        """Write every buffered event now; raise `StoreWriteError` (events stay buffered) if that fails."""
        self._check_open()
        await self._pending.aflush()

    # ----------------------------------------------------------------------------------------------------- reading

    async def alist_runs(self) -> list[RunInfo]:
        """Every run, oldest first."""
        await self._aprepare_read()
        return await self._alist_runs()

    async def aget_run(self, run_id: str) -> RunInfo:
        """One run; `UnknownRunError` if it is not stored."""
        await self._aprepare_read()
        runs = await self._alist_runs(run_id)
        if not runs:
            raise self._unknown_run(run_id)
        return runs[0]

    async def aiter_events(
        self,
        run_id: Optional[str] = None,
        *,
        kinds: Optional[Iterable[EventKind]] = None,
        after_seq: Optional[int] = None,
        hash_keys: Optional[Iterable[str]] = None,
    ) -> AsyncIterator[Event]:
        """Stored events in `seq` order (`seq` set, `obj` None): of one run or of all, optionally only some kinds,
        and optionally only those whose hash key is one of `hash_keys` (an index lookup, whatever the store's size).
        """
        await self._aprepare_read()
        if run_id is not None and not await self._alist_runs(run_id):
            raise self._unknown_run(run_id)
        kind_set = frozenset(EventKind(kind) for kind in kinds) if kinds is not None else None
        wanted = None
        if hash_keys is not None:
            wanted = sorted(set(hash_keys))
            for key in wanted:
                self._check_hash_key(key)
            if not wanted:
                return
        async for chunk in self._aiter_event_chunks(run_id, after_seq, kind_set, wanted):
            for event in chunk:
                yield event

    async def aget_events(
        self,
        run_id: Optional[str] = None,
        *,
        kinds: Optional[Iterable[EventKind]] = None,
        after_seq: Optional[int] = None,
        hash_keys: Optional[Iterable[str]] = None,
    ) -> list[Event]:
        """`aiter_events()` as a list."""
        return [
            event async for event in self.aiter_events(run_id, kinds=kinds, after_seq=after_seq, hash_keys=hash_keys)
        ]

    async def aget_many(self, hash_keys: Iterable[str]) -> dict[str, Frozen]:
        """Several objects at once, by hash key (one read for all of them instead of one each); errors as `aget`."""
        keys = list(dict.fromkeys(hash_keys))
        return self._decoder.decode_many(keys, await self._aload_closure(keys))

    async def aget_many_lazily(self, hash_keys: Iterable[str]) -> Mapping[str, Frozen]:
        """`aget_many`, except that each object is rebuilt when it is first looked up in the returned mapping.

        The objects' bytes (and those of everything they reference) are read and checked against their hash keys
        now, in one bulk read: a missing or corrupted object raises here, as with `aget_many`. Looking an object up
        raises `StoreIntegrityError` only if its (intact) bytes cannot be rebuilt into an object.
        """
        keys = list(dict.fromkeys(hash_keys))
        return LazyObjects(self._decoder, keys, await self._aload_closure(keys))

    async def acontains(self, hash_key: str) -> bool:
        """Whether an object with this hash key is stored."""
        if not is_hash_key(hash_key):
            return False
        await self._aprepare_read()
        return bool(await self._aload_objects([hash_key]))

    async def aget_bytes(self, hash_key: str) -> bytes:
        """The canonical bytes stored for `hash_key`, checked against it."""
        self._check_hash_key(hash_key)
        await self._aprepare_read()
        found = await self._aload_objects([hash_key])
        body = found.get(hash_key)
        if body is None:
            raise self._unknown_hash(hash_key)
        self._check_body(hash_key, body)
        return body

    async def aget(self, hash_key: str) -> Frozen:
        """The object stored under `hash_key`, rebuilt (nested messages too) with that very hash key.

        Raises `UnknownHashError` if it is not stored, `StoreIntegrityError` if its bytes do not match the key.
        """
        self._check_hash_key(hash_key)
        cached = self._decoder.cached(hash_key)
        if cached is not None:
            return cached
        return self._decoder.decode_many([hash_key], await self._aload_closure([hash_key]))[hash_key]

    async def _aload_closure(self, hash_keys: list[str]) -> LoadedObjects:
        """The checked bytes of these objects and of every object they reference, except those decoded already
        (which are taken as they are), in one read per level of nesting."""
        for hash_key in hash_keys:
            self._check_hash_key(hash_key)
        loaded = LoadedObjects()
        roots = set(hash_keys)
        referrer: dict[str, str] = {}
        wanted = [key for key in hash_keys if not self._take_decoded(key, loaded)]
        if wanted:
            await self._aprepare_read()
        while wanted:
            found = await self._aload_objects(wanted)
            next_wanted: list[str] = []
            for key in wanted:
                body = found.get(key)
                if body is None:
                    if key in roots:
                        raise self._unknown_hash(key)
                    raise StoreIntegrityError(
                        f"Object {referrer[key]} in {self.location} refers to object {key}, which is missing; run "
                        "`await store.averify()` to list every damaged object.",
                        key,
                    )
                self._check_body(key, body)
                loaded.bodies[key] = body
                refs = loaded.references[key] = body_references(body)
                for ref in refs:
                    if ref not in referrer and ref not in roots and not self._take_decoded(ref, loaded):
                        referrer[ref] = key
                        next_wanted.append(ref)
            wanted = next_wanted
        return loaded

    def _take_decoded(self, hash_key: str, loaded: LoadedObjects) -> bool:
        """Put the object into `loaded.decoded` if it is decoded already (and say whether it was)."""
        if hash_key in loaded.decoded:
            return True
        obj = self._decoder.cached(hash_key)
        if obj is None:
            return False
        loaded.decoded[hash_key] = obj
        return True

    # ---------------------------------------------------------------------------------------- integrity, retention

    async def averify(self) -> VerifyReport:
        """Re-hash every object, check that every hash referenced by an event or an object is stored, and that every
        run's events are as they were written (their links, see `store.chain`, and their number)."""
        await self._aprepare_read()
        return await averify_store(self)

    async def averify_run(self, run_id: str, *, payloads: bool = True) -> VerifyReport:
        """Check that the events of one run are as they were written (their links and number, and, with
        `payloads`, that their data is their kinds' payloads); objects are not re-hashed here (every read checks
        the objects it loads). Replay calls this, without `payloads`, before it answers from a run."""
        await self._aprepare_read()
        await self.aget_run(run_id)
        return await averify_store_run(self, run_id, payloads=payloads)

    async def adelete_run(self, run_id: str, *, force: bool = False) -> None:
        """Delete a run and its events (not the objects: `agc()` removes those no run needs any more).

        A run still marked running that this store object did not see finish (its `MiniAgents` context has not
        exited, in another process, or it was killed) is refused: deleting it would leave its writer a half run.
        Pass `force=True` for a run whose process died (a killed run stays running); if its writer is in fact
        alive, the run's later events are not written and its `afinish_run` raises `StoreWriteError`.
        """
        if run_id in self._active_runs:
            raise StoreUsageError(
                f"Run {run_id!r} is still running in {self.location}; delete it after its MiniAgents context exits."
            )
        await self.aflush()
        if (
            not force
            and run_id not in self._finished_runs
            and (await self.aget_run(run_id)).status == RunStatus.RUNNING
            and not await self._ais_abandoned(run_id)
        ):
            raise StoreUsageError(
                f"Run {run_id!r} in {self.location} is still running (in another process, or it was killed): "
                "deleting it now would cut it in half. Delete it once it finished, or with `force=True` if the "
                "process that ran it is gone."
            )
        async with self._pending.lock:
            if not await self._adelete_run_events(run_id):
                raise self._unknown_run(run_id)

    async def agc(self) -> int:
        """Delete the objects that no event references any more, directly or through other objects; return how
        many were deleted."""
        await self.aflush()
        async with self._pending.lock, self._amaintenance():
            # batches handed over from now on must not count on objects this may delete: they bring them again
            # (and those handed over before are completed by the writer: the gc generation changes)
            self._pending.forget_stored()
            reachable: set[str] = set()
            async for stored_chunk in self._aiter_stored_chunks():
                for event in stored_chunk:
                    if event.hash_key is not None:
                        reachable.add(event.hash_key)
                    try:
                        reachable.update(event_references(known_kind(event.kind), event.data)[0])
                    except orjson.JSONDecodeError:
                        raise StoreReadError(
                            f"Event {event.seq} in {self.location} has data that is not valid JSON, so what it refers "
                            "to cannot be told and nothing is collected; `await store.averify()` lists such events.",
                            self.location,
                        ) from None
            children: dict[str, list[str]] = {}
            stored: list[str] = []
            async for chunk in self._aiter_object_chunks():
                for key, body in chunk:
                    stored.append(key)
                    try:
                        refs = body_references(body)
                    except orjson.JSONDecodeError:
                        refs = []
                    if refs:
                        children[key] = refs
            stack = list(reachable)
            while stack:
                for ref in children.get(stack.pop(), ()):
                    if ref not in reachable:
                        reachable.add(ref)
                        stack.append(ref)
            garbage = [key for key in stored if key not in reachable]
            if garbage:
                await self._adelete_objects(garbage)
        self._decoder.clear()
        return len(garbage)

    # ---------------------------------------------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if not self._is_open:
            raise StoreClosedError(
                f"{self!r} is not open; use `async with {type(self).__name__}(...) as store:` or "
                "`await store.aopen()` first.",
                self.location,
            )

    async def _aprepare_read(self) -> None:
        """Make buffered events readable; if they cannot be written now, read what is stored (the write error is
        raised by `aflush()`, `afinish_run()` and `aclose()`, not by reads)."""
        self._check_open()
        if self._pending.has_unwritten:
            try:
                await self._pending.aflush()
            except StoreError:
                pass

    def _check_hash_key(self, hash_key: str) -> None:
        if not is_hash_key(hash_key):
            raise UnknownHashError(
                f"{hash_key!r} is not a hash key (40 or 64 lower-case hex characters), so nothing in {self.location} "
                "has it; pass `message.hash_key` or `event.hash_key`.",
                str(hash_key),
            )

    def _check_body(self, hash_key: str, body: bytes) -> None:
        if not hash_matches(hash_key, body):
            raise StoreIntegrityError(
                f"Object {hash_key} in {self.location} is corrupted: its stored bytes do not hash to its key. Run "
                "`await store.averify()` to list every damaged object; restore the store from a backup.",
                hash_key,
            )

    def _unknown_hash(self, hash_key: str) -> UnknownHashError:
        return UnknownHashError(
            f"No object with hash key {hash_key} in {self.location}; check that the hash comes from a run recorded "
            "into this store (and that `agc()` did not remove it after its run was deleted).",
            hash_key,
        )

    def _unknown_run(self, run_id: str) -> UnknownRunError:
        return UnknownRunError(
            f"No run {run_id!r} in {self.location}; `await store.alist_runs()` lists the stored runs.", run_id
        )
