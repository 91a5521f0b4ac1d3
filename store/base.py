"""The abstract event store: buffering and handing batches over, the `EventSink` methods, reading and checks."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Container, Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Optional, TypeVar, Union

import orjson

from miniagents.errors import EventDataError
from miniagents.events import (
    ErrorDescription,
    Event,
    EventKind,
    RunFinishedPayload,
    RunStartedPayload,
    describe_error,
    payload_from_data,
)
from miniagents.messages import Message, may_reference_messages
from miniagents.promising.ext.frozen import Frozen
from miniagents.redaction import REDACTION
from store.chain import ChainCheck, ChainProblem, StoredEvent, first_link, next_link
from store.decoding import (
    LazyObjects,
    LoadedObjects,
    ObjectDecoder,
    body_references,
    find_hash_keys,
    hash_matches,
    is_hash_key,
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
from store.writer import BatchWriter, InlineBatchWriter

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1_000
DEFAULT_FLUSH_INTERVAL = 0.1
DEFAULT_MAX_PENDING_EVENTS = 10_000
DEFAULT_MAX_PENDING_BYTES = 32 * 2**20
_MAX_RETRY_DELAY = 5.0
_RUNS_REMEMBERED = 10_000
"""How many runs a store object remembers the last link and the end of (the oldest are forgotten first)."""
_BACKPRESSURE_MAX_WAIT = 1.0
"""The longest one backpressure wait blocks the event loop (seconds)."""
_BACKPRESSURE_SLICE = 0.1
"""Backpressure waits in slices this long (seconds), so that signals such as Ctrl-C get through meanwhile."""
_RECENTLY_STORED_LIMIT = 1_000_000
_MAX_BATCH_SIZE = 20_000
"""The most events one handed-over batch holds (a flush of a larger buffer hands over several batches)."""
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS

_StoreT = TypeVar("_StoreT", bound="EventStore")


class RunStatus:
    """Values of `RunInfo.status`."""

    RUNNING = "running"
    """Started and not finished: still running, or its process died before the run finished."""
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True)
class RunInfo:
    """What a store knows about one run."""

    run_id: str
    status: str
    """`"running"` until the run finishes (forever, if its process died), then `"ok"` or `"failed"`."""
    started_at: Optional[float]
    """Wall-clock start, seconds since the epoch."""
    finished_at: Optional[float]
    library_version: Optional[str]
    metadata: dict[str, Any]
    error: Optional[ErrorDescription]
    """What the `MiniAgents` block raised, for a run that failed."""
    event_count: int

    @property
    def is_finished(self) -> bool:
        """Whether the run's `run_finished` event was stored."""
        return self.status != RunStatus.RUNNING


@dataclass(frozen=True)
class Problem:
    """One thing `averify()` found wrong; names the object (`hash_key`) and/or the event (`seq`)."""

    kind: str
    """`"hash_mismatch"`, `"unreadable_object"`, `"dangling_reference"`, `"missing_object"`, `"malformed_event"`
    (event data that is not its kind's payload, see `miniagents.events`), `"changed_event"` (an event, or the
    events of a run, not as they were written: see `store.chain`) or `"storage"`."""
    message: str
    hash_key: Optional[str] = None
    seq: Optional[int] = None
    run_id: Optional[str] = None

    def __str__(self) -> str:
        return self.message


@dataclass
class VerifyReport:
    """The outcome of `averify()`."""

    checked_objects: int = 0
    checked_events: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    @property
    def checked(self) -> int:
        """How many objects and events were checked."""
        return self.checked_objects + self.checked_events


def encode_data(data: Optional[dict[str, Any]]) -> Optional[bytes]:
    """Event data as stored: compact JSON, secret-looking fields redacted; None stays None.

    Redaction works on the encoded form, parsed back (plain dicts and lists, whatever the data held: dataclasses,
    `Frozen` values, tuples...), so every item of every list and every nested object is looked at. A value JSON
    cannot hold (an integer beyond 64 bits) is replaced by its text; the rest of the data is kept.
    """
    if data is None:
        return None
    try:
        encoded = orjson.dumps(data, default=_json_default, option=_JSON_OPTIONS)
    except TypeError as error:  # e.g. an integer beyond 64 bits: keep the event, describe what could not be kept
        try:
            encoded = orjson.dumps(_encodable(data), default=_json_default, option=_JSON_OPTIONS)
        except TypeError:
            return orjson.dumps({"unencodable": sorted(map(str, data)), "reason": str(error)})
    if REDACTION.might_hold_secrets(encoded.decode()):
        encoded = orjson.dumps(REDACTION.redact(orjson.loads(encoded)), option=_JSON_OPTIONS)
    return encoded


def decode_data(data: Optional[bytes]) -> Optional[dict[str, Any]]:
    """Stored event data back into a dict."""
    return None if data is None else orjson.loads(data)


def decode_run_error(data: Optional[bytes]) -> Optional[ErrorDescription]:
    """A run's stored error (see `run_update`) back into its description."""
    if data is None:
        return None
    try:
        return ErrorDescription.from_data(orjson.loads(data))
    except (EventDataError, orjson.JSONDecodeError):  # a run row edited by hand: its text, not a misread
        text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
        return ErrorDescription("Exception", None, text)


_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _encodable(value: Any) -> Any:
    """`value` with what JSON cannot hold (integers beyond 64 bits) replaced by its text (the slow path of
    `encode_data`, taken only after encoding failed)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, dict):
        return {key: _encodable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [_encodable(item) for item in sorted(value, key=repr)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _encodable(getattr(value, item.name)) for item in dataclasses.fields(value)}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Frozen):
        return value.serialize()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, BaseException):  # described as the events describe errors: secrets redacted
        return describe_error(value)
    text = repr(value)
    if REDACTION.might_hold_secrets(text):  # a repr cannot be redacted field by field: keep only the type
        return f"<{type(value).__qualname__} object; its repr names a secret-looking field, so it is not stored>"
    return text


@dataclass(frozen=True)
class RunUpdate:
    """What a `run_started` / `run_finished` event says about its run (the fields a backend keeps per run)."""

    started_at: Optional[float] = None
    library_version: Optional[str] = None
    metadata: Optional[bytes] = None
    status: Optional[str] = None
    finished_at: Optional[float] = None
    error: Optional[bytes] = None


def run_update(event: Event, data: Optional[bytes], finished_at: Optional[float] = None) -> Optional[RunUpdate]:
    """The run fields set by a `run_started` or `run_finished` event (`data`: its encoded data); None for others.

    Read from the event's typed payload, the metadata and error encoded (and redacted) as event data is; data that
    is not such a payload sets nothing but the status (`averify()` reports the event).
    """
    kind = event.kind
    if kind is not EventKind.RUN_STARTED and kind is not EventKind.RUN_FINISHED:
        return None
    try:
        payload = event.payload if data is not None else None
    except EventDataError:
        payload = None
    if isinstance(payload, RunStartedPayload):
        return RunUpdate(
            started_at=payload.started_at,
            library_version=payload.library_version,
            metadata=encode_data(dict(payload.metadata)),
        )
    if isinstance(payload, RunFinishedPayload):
        return RunUpdate(
            status=payload.status or RunStatus.OK,
            finished_at=finished_at,
            error=encode_data(payload.error.to_data()) if payload.error is not None else None,
        )
    if kind is EventKind.RUN_STARTED:
        return RunUpdate(metadata=b"{}")
    return RunUpdate(status=RunStatus.OK, finished_at=finished_at)


def event_references(kind: Optional[EventKind], data: Optional[bytes]) -> tuple[list[str], Optional[str]]:
    """The hash keys that an event's stored data names besides its `hash_key` (read through its kind's payload),
    and, when the data is not its kind's payload, why (every hash key found in such data is then returned).
    Raises `orjson.JSONDecodeError` for data that is not JSON."""
    if data is None:
        return [], None
    parsed = orjson.loads(data)
    if kind is None:  # a kind this library does not know: keep whatever its data names
        return list(find_hash_keys(parsed)), None
    try:
        payload = payload_from_data(kind, parsed)
    except EventDataError as error:
        return list(find_hash_keys(parsed)), str(error)
    return (list(payload.references()) if payload is not None else []), None


@dataclass
class Batch:
    """Buffered events prepared for one write: everything a backend stores, encoded once."""

    events: list[Event]
    hash_keys: list[Optional[str]]
    """Per event: its hash key (of `event.obj` if the event named none)."""
    data: list[Optional[bytes]]
    """Per event: its data as JSON, secret-looking fields redacted."""
    objects: dict[str, bytes]
    """Hash key -> canonical bytes of every object the batch brings (each once)."""
    run_updates: list[tuple[str, EventKind, RunUpdate]]
    """(run id, kind, update) of the batch's `run_started` / `run_finished` events, in order."""
    counts: dict[str, int]
    """Events per run."""
    links: list[bytes] = field(default_factory=list)
    """Per event: its link in its run's chain (see `store.chain`)."""
    link_starts: dict[str, bytes] = field(default_factory=dict)
    """Per run: the link its first event in this batch follows (where the chain resumes if the batch fails)."""
    cache_generation: Optional[int] = None
    """The gc generation the store object's memory of stored objects was valid for when this batch was prepared
    (None: it remembered nothing); a writer that finds another generation in the store brings every nested object
    again (see `EventStore.nested_objects_to_restore`)."""
    written_generation: Optional[int] = None
    """The gc generation of the store when the batch was written (set by the backend)."""
    size_bytes: int = 0
    """The bytes the batch brings (objects and event data): what it holds in memory until it is written."""

    def __len__(self) -> int:
        return len(self.events)

    def without_runs(self, run_ids: Container[str]) -> Batch:
        """This batch without the events of these runs (their objects stay: a later gc drops what nothing needs)."""
        kept = [index for index, event in enumerate(self.events) if event.run_id not in run_ids]
        return dataclasses.replace(
            self,
            events=[self.events[index] for index in kept],
            hash_keys=[self.hash_keys[index] for index in kept],
            data=[self.data[index] for index in kept],
            links=[self.links[index] for index in kept],
            run_updates=[update for update in self.run_updates if update[0] not in run_ids],
            counts={run_id: count for run_id, count in self.counts.items() if run_id not in run_ids},
            link_starts={run_id: link for run_id, link in self.link_starts.items() if run_id not in run_ids},
        )

    @classmethod
    def merged(cls, batches: list[Batch]) -> Batch:
        """One batch with the events of `batches`, in order (what one transaction writes)."""
        if len(batches) == 1:
            return batches[0]
        merged = cls([], [], [], {}, [], {}, cache_generation=batches[0].cache_generation)
        for batch in batches:
            if batch.cache_generation != merged.cache_generation:
                merged.cache_generation = -1  # mixed: compared with the store's generation, never equal
            merged.events.extend(batch.events)
            merged.hash_keys.extend(batch.hash_keys)
            merged.data.extend(batch.data)
            merged.links.extend(batch.links)
            for run_id, link in batch.link_starts.items():
                merged.link_starts.setdefault(run_id, link)
            for hash_key, body in batch.objects.items():
                merged.objects.setdefault(hash_key, body)
            merged.run_updates.extend(batch.run_updates)
            merged.size_bytes += batch.size_bytes
            for run_id, count in batch.counts.items():
                merged.counts[run_id] = merged.counts.get(run_id, 0) + count
        return merged


def _nested_messages(obj: Frozen, known: Container[str]) -> list[tuple[str, bytes]]:
    """(hash key, canonical bytes) of the messages referenced by hash inside `obj`, at any depth, except those in
    `known` (stored already, with what they reference)."""
    found: dict[str, bytes] = {}
    stack: list[Any] = list(obj.frozen_fields_and_values().values())
    while stack:
        value = stack.pop()
        if isinstance(value, Message):
            key = value.hash_key
            if key not in found and key not in known:
                found[key] = value.encode_canonical()
                stack.extend(value.frozen_fields_and_values().values())
        elif isinstance(value, Frozen):
            stack.extend(value.frozen_fields_and_values().values())
        elif isinstance(value, tuple):
            stack.extend(value)
        elif isinstance(value, dict):  # a declared mapping field's FrozenDict
            stack.extend(value.values())
    return list(found.items())


def nested_objects_to_restore(batches: Sequence[Batch], generation: int) -> dict[str, bytes]:
    """Every message nested in the objects of those `batches` that were prepared under another gc generation than
    the store's `generation` (the backend calls this in its write transaction, and marks each batch written under
    `generation`): `agc()` may have deleted objects the store object remembered as stored, so a batch prepared
    before it must bring them all again (written with "insert if missing")."""
    restored: dict[str, bytes] = {}
    for batch in batches:
        stale = batch.cache_generation is not None and batch.cache_generation != generation
        batch.written_generation = generation
        if stale:
            for event in batch.events:
                if event.obj is not None:
                    restored.update(_nested_messages(event.obj, restored))
    return restored


class EventStore(abc.ABC):
    """A content-addressed, append-only event store; an `EventSink` for `MiniAgents(store=...)`.

    Objects (hash key -> canonical bytes) are stored once each; events form an append-only log with a sequence
    number that only grows. `append()` buffers; as soon as `batch_size` events are waiting it hands them, encoded
    as one batch, to the store's batch writer (`SQLiteStore` writes on a thread of its own, so it never waits for
    the event loop), and a writer task hands over the rest at least every `flush_interval` seconds. A batch that
    cannot be written goes back into the buffer, in order (nothing is dropped), and `aflush()` / `afinish_run()`
    raise `StoreWriteError`.
    """

    def __init__(
        self,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ):
        if batch_size < 1:
            raise StoreUsageError(f"batch_size must be at least 1, got {batch_size}.")
        if not flush_interval > 0:
            raise StoreUsageError(f"flush_interval must be a positive number of seconds, got {flush_interval}.")
        if max_pending_events < batch_size:
            raise StoreUsageError(
                f"max_pending_events ({max_pending_events}) must be at least batch_size ({batch_size})."
            )
        if max_pending_bytes < 1:
            raise StoreUsageError(f"max_pending_bytes must be a positive number of bytes, got {max_pending_bytes}.")
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending_events = max_pending_events
        self._max_pending_bytes = max_pending_bytes
        self._in_flight_events = 0
        self._in_flight_bytes = 0
        self._buffer: list[Event] = []
        self._finished_at: dict[str, float] = {}
        self._run_links: dict[str, bytes] = {}
        """Per run this store object writes: the link of its last event handed over (see `store.chain`); the oldest
        runs are forgotten beyond `_RUNS_REMEMBERED`."""
        self._finished_runs: dict[str, None] = {}
        self._lost_runs: dict[str, StoreError] = {}
        """Runs whose events the backend could not write and dropped (see `_note_run_lost`), with the error
        `afinish_run` raises for them."""
        """Runs whose end this store object saw (`afinish_run`), oldest first, bounded: they may be deleted even if
        no `run_finished` event marked them finished."""
        self._recently_stored: set[str] = set()
        """Hash keys this store object wrote (bounded): messages nested in later objects need no second look."""
        self._cache_generation: Optional[int] = None
        """The gc generation of the store `_recently_stored` holds keys of (None while it is empty)."""
        self._max_batch_size = max(batch_size, _MAX_BATCH_SIZE)
        self._is_open = False
        self._opened_by_run = False
        self._active_runs: set[str] = set()
        self._writer: Optional[asyncio.Task[None]] = None
        self._wakeup: Optional[asyncio.Future[None]] = None
        self._batch_writer: Optional[BatchWriter[Batch]] = None
        self._in_flight: deque[tuple[Batch, Future[None]]] = deque()
        """Batches handed to the batch writer, in order, that were not yet found written."""
        self._generation = 0
        """Incremented whenever failed batches come back to the buffer (see `BatchWriter`)."""
        self._stopping = False
        self._closing: Optional[asyncio.Task[None]] = None
        """The task closing the store, while a close is in progress (others wait for it)."""
        self._failing = False
        self._flush_lock = asyncio.Lock()  # replaced on every open: a lock belongs to one event loop
        self._open_lock: Optional[tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = None
        self._decoder = ObjectDecoder()

    # ----------------------------------------------------------------------------------------------- backend API

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the store keeps its data (a path, or a description), for messages."""

    @abc.abstractmethod
    async def _aopen_storage(self) -> None:
        """Open (and if needed create or migrate) the storage; raise a `StoreOpenError` naming the location."""

    @abc.abstractmethod
    async def _aclose_storage(self) -> None:
        """Release what `_aopen_storage` acquired."""

    @abc.abstractmethod
    async def _aregister_run(self, run_id: str) -> None:
        """Record a new run as running; raise `StoreUsageError` if a run with this id is already stored."""

    @abc.abstractmethod
    def _write_batches(self, batches: list[Batch]) -> None:
        """Write these batches atomically (all or nothing), numbering their events in order; raise
        `StoreWriteError`. Runs wherever the store's batch writer writes (see `_aopen_batch_writer`)."""

    async def _aopen_batch_writer(self) -> BatchWriter[Batch]:
        """What writes this store's batches (called after `_aopen_storage`, stopped after `_aclose_storage`); by
        default each batch is written right away, in the thread that hands it over."""
        return InlineBatchWriter(self._write_handed_over)

    def _write_handed_over(self, batches: list[Batch]) -> None:
        self._write_batches(batches)  # looked up on every write, so a replaced method (a test's) takes effect

    @abc.abstractmethod
    async def _alist_runs(self, run_id: Optional[str] = None) -> list[RunInfo]:
        """All runs in the order they were registered, or just the one with `run_id` (or none)."""

    @abc.abstractmethod
    def _aiter_event_chunks(
        self,
        run_id: Optional[str],
        after_seq: Optional[int],
        kinds: Optional[frozenset[EventKind]],
        hash_keys: Optional[Sequence[str]] = None,
    ) -> AsyncIterator[list[Event]]:
        """Stored events in `seq` order, in chunks; with `hash_keys`, only events with one of them (indexed)."""

    @abc.abstractmethod
    async def _aload_objects(self, hash_keys: Sequence[str]) -> dict[str, bytes]:
        """The stored bytes of those of `hash_keys` that are stored."""

    @abc.abstractmethod
    def _aiter_object_chunks(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every stored (hash key, bytes), in chunks."""

    @abc.abstractmethod
    def _aiter_stored_chunks(self, run_id: Optional[str] = None) -> AsyncIterator[list[StoredEvent]]:
        """Every stored event (of one run, or of all) as stored, data and link included, in `seq` order, in
        chunks."""

    @abc.abstractmethod
    async def _adelete_run_events(self, run_id: str) -> bool:
        """Delete a run and its events; False if there is no such run."""

    @abc.abstractmethod
    async def _adelete_objects(self, hash_keys: Sequence[str]) -> None:
        """Delete these objects."""

    @abc.abstractmethod
    async def _abump_gc_generation(self) -> None:
        """Increment the store's gc generation (in `agc`'s maintenance transaction, after deleting objects)."""

    def _amaintenance(self) -> AbstractAsyncContextManager[None]:
        """Wrap a maintenance operation (gc) so that it sees and changes the store atomically."""
        return nullcontext()

    async def _acheck_storage(self) -> list[Problem]:
        """Problems of the storage itself (e.g. a damaged file), found by the backend."""
        return []

    def _aread_snapshot(self) -> AbstractAsyncContextManager[None]:
        """Wrap reads (of the task that enters it) that must all see the store at one moment (`averify`), while
        others go on writing."""
        return nullcontext()

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
        self._settle()
        return len(self._buffer) + self._in_flight_events

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
                self._batch_writer = await self._aopen_batch_writer()
            except BaseException:
                await self._aclose_storage()
                raise
            self._forget_in_flight()
            self._flush_lock = asyncio.Lock()
            self._stopping = False
            self._failing = False
            self._is_open = True
            # the store's own task, not one of a MiniAgents context (whose task flush would wait for it forever)
            self._writer = loop.create_task(self._arun_writer(), name=f"store writer {self!r}")
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
            self._stopping = True
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
        try:
            self._wake_writer()
            writer, self._writer = self._writer, None
            if writer is not None:
                await asyncio.gather(writer, return_exceptions=True)
            flush_error: Optional[StoreError] = None
            for _attempt in range(3):  # events appended while the final flush ran are written too
                try:
                    await self._aflush_buffer()
                except StoreError as error:
                    flush_error = error
                    break
                if not self._buffer:
                    break
        finally:
            # whatever happened (a failed write, a cancellation), the store is closed and its threads stop
            lost = self.pending_count
            self._is_open = False  # from here on `append` refuses: nothing more can slip into the buffer
            self._buffer = []
            self._forget_in_flight()
            batch_writer, self._batch_writer = self._batch_writer, None
            self._opened_by_run = False
            self._active_runs.clear()
            self._decoder.clear()
            self._recently_stored.clear()
            self._cache_generation = None
            try:
                await self._aclose_storage()
            finally:
                self._closing = None
                if batch_writer is not None:
                    await asyncio.wrap_future(batch_writer.stop())
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
            batch_writer = getattr(self, "_batch_writer", None)
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
                async with self._flush_lock:
                    await self._aregister_run(run_id)
            except BaseException:
                self._active_runs.discard(run_id)
                raise
            self._run_links[run_id] = first_link(run_id)
        except BaseException:
            if self._opened_by_run and not self._active_runs:
                await self.aclose()
            raise

    def append(self, event: Event) -> None:
        """Buffer one event (synchronous and cheap); every `batch_size` events go to the batch writer as a batch."""
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
                and (call_id is None or _INT64_MIN <= call_id <= _INT64_MAX)
                and (parent_call_id is None or _INT64_MIN <= parent_call_id <= _INT64_MAX)
            )
        except TypeError:
            valid = False
        if not valid:
            raise StoreUsageError(
                f"The {event.kind.value} event of run {event.run_id!r} cannot be stored: its `t` ({t!r}) must be a "
                f"finite number of seconds, its `call_id` ({call_id!r}) and `parent_call_id` ({parent_call_id!r}) "
                "None or 64-bit integers."
            )
        if event.kind is EventKind.RUN_FINISHED:
            self._finished_at[event.run_id] = time.time()
        self._buffer.append(event)
        if len(self._buffer) >= self._batch_size and not self._failing:
            self._settle()  # forget written batches early: their bytes go back to the allocator
            if not self._failing:
                try:
                    self._hand_over_buffer()
                except Exception:  # the events stay buffered; the writer task's flush reports why
                    self._failing = True
                    self._wake_writer()
                else:
                    self._wait_for_room()

    def _wait_for_room(self) -> None:
        """Backpressure: while more than `max_pending_events` events (or `max_pending_bytes` bytes) are handed over
        and not written, block until the writer has written the oldest batch.

        A producer that outruns the disk is slowed down to the disk's pace here instead of filling memory, and the
        age of the oldest unwritten event stays bounded (a crash loses at most that much). The wait blocks the
        event loop's thread (every agent of the process waits), which is what lets a writer thread run: it no
        longer competes for the interpreter. Only writers that do not need the event loop are waited for
        (`BatchWriter.writes_elsewhere`), never while this store holds a transaction that needs the loop to end
        (`_holds_loop_transaction`: the writer would wait for it), and at most `_BACKPRESSURE_MAX_WAIT` seconds at a
        time (a writer held up by another connection's lock must not freeze the loop); a failed write ends the wait
        (the events stay buffered, and flushing raises as usual).
        """
        writer = self._batch_writer
        if writer is None or not writer.writes_elsewhere or self._holds_loop_transaction():
            return
        in_flight = self._in_flight
        deadline = time.monotonic() + _BACKPRESSURE_MAX_WAIT
        while in_flight and (
            self._in_flight_events > self._max_pending_events or self._in_flight_bytes > self._max_pending_bytes
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            future = in_flight[0][1]
            if not future.done():
                wait_futures([future], timeout=min(left, _BACKPRESSURE_SLICE))
            self._settle()
            if self._failing:
                return

    @property
    def _events_have_links(self) -> bool:
        """Whether the stored events carry links to check (a store written before links existed, read where it
        cannot be migrated, has none: its events are read unverified)."""
        return True

    def _holds_loop_transaction(self) -> bool:
        """Whether this store has a write transaction open that only the event loop can finish (a backend that
        writes some transactions from the loop says so: backpressure must not block the loop then)."""
        return False

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
        self._finished_runs[run_id] = None
        if len(self._finished_runs) > _RUNS_REMEMBERED:
            del self._finished_runs[next(iter(self._finished_runs))]
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
        lost = self._lost_runs.pop(run_id, None)
        if lost is not None:
            raise lost

    def _note_run_lost(self, run_id: str, error: StoreError) -> None:
        """A backend dropped events of this run that can never be written (its run was deleted from the store
        while it ran), so that the other runs' events are written: `afinish_run` raises `error` for it. Any
        thread may call this."""
        self._lost_runs.setdefault(run_id, error)

    def _closes_after_run(self) -> bool:
        """Whether the run that just finished has to close the store (it opened it, and no other run is active)."""
        return self._opened_by_run and not self._active_runs and self._is_open

    async def aflush(self) -> None:
        """Write every buffered event now; raise `StoreWriteError` (events stay buffered) if that fails."""
        self._check_open()
        await self._aflush_buffer()

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
        report = VerifyReport()
        known: set[str] = set()
        references: list[tuple[str, str]] = []
        try:
            async with self._aread_snapshot():  # events written meanwhile must not name objects the scan missed
                await self._averify_snapshot(report, known, references)
        except StoreReadError as error:
            report.problems.append(Problem("storage", f"Reading the store failed, so checking stopped: {error}"))
        return report

    async def _averify_snapshot(
        self, report: VerifyReport, known: set[str], references: list[tuple[str, str]]
    ) -> None:
        report.problems.extend(await self._acheck_storage())
        async for chunk in self._aiter_object_chunks():
            for key, body in chunk:
                report.checked_objects += 1
                known.add(key)
                report.problems.extend(self._object_problems(key, body, references))
        for owner, ref in references:
            if ref not in known:
                report.problems.append(
                    Problem(
                        "dangling_reference",
                        f"Object {owner} refers to object {ref}, which is not stored.",
                        hash_key=ref,
                    )
                )
        chain = ChainCheck(links=self._events_have_links)
        async for stored_chunk in self._aiter_stored_chunks():
            chain.feed(stored_chunk)
            for event in stored_chunk:
                report.checked_events += 1
                refs = self._event_problems(event, report.problems)
                keys = [event.hash_key, *refs] if event.hash_key is not None else refs
                report.problems.extend(
                    Problem(
                        "missing_object",
                        f"Event {event.seq} refers to object {ref}, which is not stored.",
                        hash_key=ref,
                        seq=event.seq,
                        run_id=event.run_id,
                    )
                    for ref in dict.fromkeys(keys)
                    if ref not in known
                )
        counts = {run.run_id: run.event_count for run in await self._alist_runs()}
        report.problems.extend(_chain_problems(chain.finish(counts)))

    async def averify_run(self, run_id: str, *, payloads: bool = True) -> VerifyReport:
        """Check that the events of one run are as they were written (their links and number, and, with
        `payloads`, that their data is their kinds' payloads); objects are not re-hashed here (every read checks
        the objects it loads). Replay calls this, without `payloads`, before it answers from a run."""
        await self._aprepare_read()
        run = await self.aget_run(run_id)
        report = VerifyReport()
        chain = ChainCheck(links=self._events_have_links)
        try:
            async with self._aread_snapshot():
                async for chunk in self._aiter_stored_chunks(run_id):
                    chain.feed(chunk)
                    report.checked_events += len(chunk)
                    if payloads:
                        for event in chunk:
                            self._event_problems(event, report.problems)
                run = await self.aget_run(run_id)  # its count as of the snapshot
        except StoreReadError as error:
            report.problems.append(Problem("storage", f"Reading the store failed, so checking stopped: {error}"))
            return report
        report.problems.extend(_chain_problems(chain.finish({run_id: run.event_count})))
        return report

    @staticmethod
    def _event_problems(event: StoredEvent, problems: list[Problem]) -> list[str]:
        """The hash keys the event's data names; a problem added if its data is not its kind's payload."""
        try:
            refs, malformed = event_references(_known_kind(event.kind), event.data)
        except orjson.JSONDecodeError as error:
            refs, malformed = [], f"it is not valid JSON ({error})"
        if malformed is not None:
            kind = (
                event.kind.value
                if isinstance(event.kind, EventKind)
                else f"{event.kind}, a kind this library does not know"
            )
            problems.append(
                Problem(
                    "malformed_event",
                    f"Event {event.seq} ({kind}) has data that is not its kind's payload: {malformed}",
                    seq=event.seq,
                    run_id=event.run_id,
                )
            )
        return refs

    @staticmethod
    def _object_problems(key: str, body: bytes, references: list[tuple[str, str]]) -> list[Problem]:
        if not hash_matches(key, body):
            return [
                Problem(
                    "hash_mismatch",
                    f"Object {key} has bytes that do not hash to its key (the stored data was changed).",
                    hash_key=key,
                )
            ]
        try:
            references.extend((key, ref) for ref in body_references(body))
        except orjson.JSONDecodeError:
            return [Problem("unreadable_object", f"Object {key} is not valid JSON.", hash_key=key)]
        return []

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
        ):
            raise StoreUsageError(
                f"Run {run_id!r} in {self.location} is still running (in another process, or it was killed): "
                "deleting it now would cut it in half. Delete it once it finished, or with `force=True` if the "
                "process that ran it is gone."
            )
        async with self._flush_lock:
            if not await self._adelete_run_events(run_id):
                raise self._unknown_run(run_id)

    async def agc(self) -> int:
        """Delete the objects that no event references any more, directly or through other objects; return how
        many were deleted."""
        await self.aflush()
        async with self._flush_lock, self._amaintenance():
            # batches handed over from now on must not count on objects this may delete: they bring them again
            # (and those handed over before are completed by the writer: the gc generation changes)
            self._recently_stored.clear()
            self._cache_generation = None
            reachable: set[str] = set()
            async for stored_chunk in self._aiter_stored_chunks():
                for event in stored_chunk:
                    if event.hash_key is not None:
                        reachable.add(event.hash_key)
                    try:
                        reachable.update(event_references(_known_kind(event.kind), event.data)[0])
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
                await self._abump_gc_generation()
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
        if (self._buffer or self._in_flight) and not self._failing:
            try:
                await self._aflush_buffer()
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

    def _wake_writer(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _aflush_buffer(self) -> None:
        """Hand over everything buffered and wait until it, and everything handed over before, is written. On
        failure the unwritten events are back in the buffer, in order, and a `StoreError` rises."""
        lock = self._flush_lock
        async with lock:
            if not self._is_open or lock is not self._flush_lock:  # closed (maybe reopened) while this waited
                raise StoreClosedError(
                    f"{self!r} was closed while a flush waited; the close reported the events it could not write.",
                    self.location,
                )
            self._settle()
            self._failing = False  # a flush always tries again
            try:
                self._hand_over_buffer()
            except Exception as error:
                self._failing = True
                raise self._flush_error(error) from error
            if not self._in_flight:
                return
            last = self._in_flight[-1][1]  # the writer finishes batches in order: when it is done, all are
            while True:
                await _await_done(last)
                failure = self._settle()
                if failure is not None:
                    raise self._flush_error(failure) from failure
                if all(future is not last for _, future in self._in_flight):
                    return
                last = self._in_flight[-1][1]  # a failed batch comes back once the batches after it are done

    def _hand_over_buffer(self) -> None:
        """Encode what is buffered into batches and hand them to the batch writer (the events leave the buffer
        only once their batch is handed over)."""
        buffer = self._buffer
        if not buffer:
            return
        writer = self._batch_writer
        if writer is None:
            self._check_open()
            raise StoreUsageError(f"{self!r} has no batch writer.")
        while buffer:
            batch = self._prepare_batch(buffer[: self._max_batch_size])
            self._in_flight.append((batch, writer.submit(batch, self._generation)))
            self._in_flight_events += len(batch)
            self._in_flight_bytes += batch.size_bytes
            del buffer[: len(batch)]

    def _settle(self) -> Optional[BaseException]:
        """Take stock of what the batch writer finished, in order: forget the written batches. After a failure,
        once every batch handed over has come back, put their events in front of the buffer (in order) and return
        the error."""
        in_flight = self._in_flight
        while in_flight:
            batch, future = in_flight[0]
            if not future.done():
                return None
            error = future.exception()
            if error is None:
                in_flight.popleft()
                self._in_flight_events -= len(batch)
                self._in_flight_bytes -= batch.size_bytes
                self._note_written(batch)
                continue
            self._failing = True  # nothing more is handed over until a flush tries again
            if not all(later.done() for _, later in in_flight):
                return None
            self._buffer[:0] = [event for failed, _ in in_flight for event in failed.events]
            for failed, _ in reversed(in_flight):  # the chains resume where the first failed batch started them
                self._run_links.update(failed.link_starts)
            self._forget_in_flight()
            self._generation += 1
            return error
        return None

    def _forget_in_flight(self) -> None:
        """No batch is in flight any more (they came back to the buffer, or the store closed): so say the counts."""
        self._in_flight.clear()
        self._in_flight_events = self._in_flight_bytes = 0

    def _note_written(self, batch: Batch) -> None:
        generation = batch.written_generation
        if generation != self._cache_generation:
            if self._cache_generation is not None and (generation is None or generation < self._cache_generation):
                generation = -1  # written before a gc this store object knows of: remember nothing of it
            else:
                self._recently_stored.clear()  # a gc ran since: what was remembered may be deleted
                self._cache_generation = generation
        if len(self._recently_stored) > _RECENTLY_STORED_LIMIT:
            self._recently_stored.clear()
        if generation == self._cache_generation:
            self._recently_stored.update(batch.objects)
        for event in batch.events:
            if event.kind is EventKind.RUN_FINISHED:
                self._finished_at.pop(event.run_id, None)

    def _flush_error(self, error: BaseException) -> StoreError:
        """What a failed flush raises: the store's own error with the number of events still unwritten."""
        pending = self.pending_count
        if isinstance(error, StoreWriteError):
            error.pending = pending
            return error
        if isinstance(error, StoreError):
            return error
        return StoreWriteError(
            f"Could not write {pending} events to {self.location} ({type(error).__name__}: {error}); they stay "
            "buffered, `await store.aflush()` retries.",
            self.location,
            pending=pending,
        )

    def _prepare_batch(self, events: list[Event]) -> Batch:
        """Encode what the backend writes for these events (at hand-over, not in `append`)."""
        generation = self._cache_generation if self._recently_stored else None
        batch = Batch(list(events), [], [], {}, [], {}, cache_generation=generation)
        objects, counts, links, run_links = batch.objects, batch.counts, batch.links, self._run_links
        size = 0
        for event in events:
            hash_key, run_id, kind = event.hash_key, event.run_id, event.kind
            batch.hash_keys.append(hash_key)
            data = None if event.data is None else encode_data(event.data)
            batch.data.append(data)
            if data is not None:
                size += len(data)
            counts[run_id] = counts.get(run_id, 0) + 1
            previous = run_links.get(run_id)
            if previous is None:  # a run no `astart_run` of this store object announced
                previous = first_link(run_id)
            if run_id not in batch.link_starts:
                batch.link_starts[run_id] = previous
            link = next_link(previous, kind, event.t, hash_key, event.call_id, event.parent_call_id, data)
            run_links.pop(run_id, None)  # the newest run last: the oldest is forgotten first
            run_links[run_id] = link
            if len(run_links) > _RUNS_REMEMBERED:
                del run_links[next(iter(run_links))]
            links.append(link)
            obj = event.obj
            if obj is not None and hash_key is not None and hash_key not in objects:
                body = event.canonical_bytes or obj.encode_canonical()
                objects[hash_key] = body
                size += len(body)
                if may_reference_messages(body):
                    known = _EitherContainer(objects, self._recently_stored)
                    for nested_key, nested_body in _nested_messages(obj, known):
                        if nested_key not in objects:
                            objects[nested_key] = nested_body
                            size += len(nested_body)
            if kind is EventKind.RUN_STARTED or kind is EventKind.RUN_FINISHED:
                update = run_update(event, data, self._finished_at.get(run_id))
                if update is not None:
                    batch.run_updates.append((run_id, kind, update))
        batch.size_bytes = size
        return batch

    async def _arun_writer(self) -> None:
        """Hand over what is buffered at least every `flush_interval` seconds; after a failure, retry with
        growing delays."""
        loop = asyncio.get_running_loop()
        delay = self._flush_interval
        while not self._stopping:
            wakeup: asyncio.Future[None] = loop.create_future()
            self._wakeup = wakeup
            timer = loop.call_later(delay, _resolve, wakeup)
            try:
                await wakeup
            finally:
                timer.cancel()
                self._wakeup = None
            if self._stopping:
                continue
            self._settle()
            if not self._buffer:
                continue
            try:
                await self._aflush_buffer()
                delay = self._flush_interval
            except StoreError as error:
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                logger.warning("%s; retrying in %.1f s", error, delay)


def _known_kind(kind: Union[EventKind, str]) -> Optional[EventKind]:
    return kind if isinstance(kind, EventKind) else None


def _chain_problems(found: Iterable[ChainProblem]) -> list[Problem]:
    return [Problem("changed_event", problem.message, seq=problem.seq, run_id=problem.run_id) for problem in found]


class _EitherContainer:
    """`in` either of two containers."""

    def __init__(self, first: Container[str], second: Container[str]) -> None:
        self._first, self._second = first, second

    def __contains__(self, item: object) -> bool:
        return item in self._first or item in self._second


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _await_done(future: Future[Any]) -> None:
    """Wait until a future of another thread is done, whatever its outcome (which the caller reads from it)."""
    if not future.done():
        waited = asyncio.wrap_future(future)
        waited.add_done_callback(_mark_retrieved)
        await asyncio.wait([waited])


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # the outcome is read from the original future; asyncio must not log it as lost
