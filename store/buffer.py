"""The write buffer of a store: appended events wait here, are encoded into batches at hand-over, go to the store's
batch writer, and are resolved into the `Write` the backend commits. It keeps the order of the log across failures,
slows a producer that outruns the disk (backpressure), and hands over what waits at least every `flush_interval`
(from `add` or a periodic task on the event loop, or, when the loop is too busy for either, from a batch writer's
own thread: `WriteBuffer.hand_over_stale`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from miniagents.events import Event, EventKind
from miniagents.messages import may_reference_messages
from store import full_collections
from store.backend import GcGenerationChanged, RunsDeleted, Write
from store.chain import first_link, next_link
from store.encoding import RunUpdate, encode_data, nested_messages, run_update
from store.errors import StoreClosedError, StoreError, StoreUsageError, StoreWriteError
from store.writer import BatchWriter, weak_method

if TYPE_CHECKING:
    from store.base import EventStore

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_BATCH_SIZE = 1_000
DEFAULT_FLUSH_INTERVAL = 0.1
DEFAULT_MAX_PENDING_EVENTS = 10_000
DEFAULT_MAX_PENDING_BYTES = 32 * 2**20
DEFAULT_MAX_PENDING_SECONDS = 0.25
_MAX_RETRY_DELAY = 5.0
RUNS_REMEMBERED = 10_000
"""How many runs the buffer remembers the last link, the registration and the end of (the oldest are forgotten
first; a forgotten registered run is written as a new one: its row is created if missing)."""
_BACKPRESSURE_MAX_WAIT = 1.0
"""The longest one backpressure wait blocks the event loop (seconds)."""
_BACKPRESSURE_SLICE = 0.1
"""Backpressure waits in slices this long (seconds), so that signals such as Ctrl-C get through meanwhile."""
_RECENTLY_STORED_LIMIT = 1_000_000
_MAX_BATCH_SIZE = 20_000
"""The most events one handed-over batch holds (a flush of a larger buffer hands over several batches)."""


@dataclass
class Batch:
    """Buffered events prepared at hand-over: everything a write needs, encoded once, and the buffer's bookkeeping
    for them."""

    events: list[Event]
    hash_keys: list[Optional[str]]
    """Per event: its hash key (of `event.obj` if the event named none)."""
    data: list[Optional[bytes]]
    """Per event: its data as JSON, secret-looking fields redacted."""
    objects: dict[str, bytes]
    """Hash key -> canonical bytes of every object the batch brings (each once)."""
    run_updates: list[RunUpdate]
    """What the batch's `run_started` / `run_finished` events set on their runs, in order."""
    counts: dict[str, int]
    """Events per run."""
    links: list[bytes] = field(default_factory=list)
    """Per event: its link in its run's chain (see `store.chain`)."""
    link_starts: dict[str, bytes] = field(default_factory=dict)
    """Per run: the link its first event in this batch follows (where the chain resumes if the batch fails)."""
    cache_generation: Optional[int] = None
    """The gc generation the buffer's memory of stored objects was valid for when this batch was prepared (None: it
    remembered nothing, so the batch brings every object it needs)."""
    written_generation: Optional[int] = None
    """The gc generation of the store when the batch was written (None: unknown, or nothing was written)."""
    size_bytes: int = 0
    """The bytes the batch brings (objects and event data): what it holds in memory until it is written."""
    appended_since: float = 0.0
    """When (`time.monotonic()`) the oldest of its events was appended: how long it has waited to be written."""

    def __len__(self) -> int:
        return len(self.events)


class WriteBuffer:
    """The buffer of one `EventStore` object (see the module docstring); the store opens (`start`) and closes
    (`close`) it with itself. Its write side (`commit`, `acommit`) runs wherever the store's batch writer writes.

    :param batch_size: hand the buffered events over as soon as this many wait.
    :param flush_interval: hand buffered events over at least this often (seconds).
    :param max_pending_events: backpressure: the most events handed over and not written before `add` waits.
    :param max_pending_bytes: backpressure: the same bound in bytes (objects and event data).
    :param max_pending_seconds: backpressure: the same bound in age (of the oldest event handed over).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_seconds: float = DEFAULT_MAX_PENDING_SECONDS,
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
        if not max_pending_seconds > 0:
            raise StoreUsageError(
                f"max_pending_seconds must be a positive number of seconds, got {max_pending_seconds}."
            )
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending_events = max_pending_events
        self._max_pending_bytes = max_pending_bytes
        self._max_pending_seconds = max_pending_seconds
        self._max_batch_size = max(batch_size, _MAX_BATCH_SIZE)
        self.events: list[Event] = []
        """Appended events not handed over yet, in order."""
        self._buffered_since = 0.0
        """When (`time.monotonic()`) the oldest buffered event was appended."""
        self._hand_over_lock = threading.Lock()
        """Held while events leave the buffer for the batch writer (`_hand_over`), while written batches are taken
        stock of (`_settle`), and to change what those two share (the batches in flight and their counts, the
        chains, the memory of stored objects, the registered runs, the batch writer): the event loop's thread and
        the writer's thread both hand over (see `hand_over_stale`). The loop's thread alone changes the rest
        without it: `add` appends (one atomic `list.append`) and notes when the buffer began to fill; a hand-over
        on the other thread sets that to when it began, no later than any event it leaves was appended."""
        self._in_flight: deque[tuple[Batch, Future[None]]] = deque()
        """Batches handed to the batch writer, in order, that were not yet found written."""
        self._in_flight_events = 0
        self._in_flight_bytes = 0
        self._stalled_batch: Optional[Batch] = None
        """The oldest batch in flight when a whole backpressure wait went by without it being written: the age
        bound is not waited on again until it is."""
        self._generation = 0
        """Incremented whenever failed batches come back to the buffer (see `BatchWriter`)."""
        self._failing = False
        self._is_open = False
        self.stopping = False
        """Set when the store begins to close: the periodic hand-over ends."""
        self.lock = asyncio.Lock()
        """Held by a flush, and by the store's operations that must not interleave with one (replaced on every
        open: a lock belongs to one event loop)."""
        self.batch_writer: Optional[BatchWriter[Batch]] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._wakeup: Optional[asyncio.Future[None]] = None
        self._finished_at: dict[str, float] = {}
        self._run_links: dict[str, bytes] = {}
        """Per run this store object writes: the link of its last event handed over (see `store.chain`)."""
        self._registered: dict[str, None] = {}
        """Runs this store object registered, newest last: their rows must exist when their events are written."""
        self._deleted_runs: dict[str, None] = {}
        """Registered runs the backend found deleted: their events are dropped from then on (until the run is
        registered again)."""
        self._lost_runs: dict[str, StoreError] = {}
        """Runs whose events were dropped (see `_deleted_runs`), with the error `pop_lost` gives for them."""
        self._runs_missing_events: dict[str, None] = {}
        """Runs some of whose events this store object refused or dropped unwritten (newest last, bounded): an
        event of theirs that says its sub-messages came with events of their own (`Event.sub_messages_emitted`)
        may be wrong about that here, so its nested messages are looked for as for any other event."""
        self._recently_stored: set[str] = set()
        """Hash keys this store object wrote (bounded): messages nested in later objects need no second look."""
        self._cache_generation: Optional[int] = None
        """The gc generation of the store `_recently_stored` holds keys of (None while it is empty)."""
        self._loop_thread: Optional[int] = None
        """The thread of the event loop the store was opened on (where `add` is called)."""
        self._batches_handed_over = 0
        """Batches handed to the current batch writer (compared with its `batches_done`)."""
        self._using_futures = False
        """Set while the loop's thread reads or waits on the writer's futures: it may hold a lock of one that the
        writer needs to go on, so a collection starting meanwhile must not wait for the writer."""
        self._collection_wait_stalled_at: Optional[int] = None
        """The writer's `batches_done` when a wait before a full collection ran out: the next collections do not
        wait again until the writer has done more."""

    # ---------------------------------------------------------------------------------------------- the store side

    @property
    def count(self) -> int:
        """How many appended events are not written yet (buffered, or handed over and still being written)."""
        self._settle()
        with self._hand_over_lock:
            return len(self.events) + self._in_flight_events

    @property
    def has_unwritten(self) -> bool:
        """Whether events wait to be written and the last write did not fail (a read may flush them first)."""
        return bool(self.events or self._in_flight) and not self._failing

    def start(self, batch_writer: BatchWriter[Batch]) -> None:
        """The store opened: write through `batch_writer`, hand over periodically (call on the event loop)."""
        with self._hand_over_lock:
            self.batch_writer = batch_writer
            self._forget_in_flight()
            self._batches_handed_over = 0
            self._collection_wait_stalled_at = None
            self.lock = asyncio.Lock()
            self.stopping = self._failing = False
            self._is_open = True
        self._loop_thread = threading.get_ident()
        if batch_writer.writes_elsewhere:
            full_collections.write_before(self)
        # a writer of its own thread hands over what a busy event loop leaves buffered
        batch_writer.hand_over_when_idle(weak_method(self.hand_over_stale), self._flush_interval / 2)
        # the store's own task, not one of a MiniAgents context (whose task flush would wait for it forever)
        self._task = asyncio.get_running_loop().create_task(self._arun(), name=f"store writer {self._store!r}")

    async def astop(self) -> None:
        """End the periodic hand-over (what is buffered stays, for a last `aflush`)."""
        self.stopping = True
        self._wake()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    def close(self) -> Optional[BatchWriter[Batch]]:
        """The store closes: nothing more is handed over; return the batch writer for the store to stop (what was
        handed over is still written), then to `discard` what is left."""
        with self._hand_over_lock:
            self._is_open = False
            batch_writer, self.batch_writer = self.batch_writer, None
        full_collections.stop_writing_before(self)
        return batch_writer

    def discard(self) -> None:
        """Drop what is left unwritten (the store reported it as lost)."""
        with self._hand_over_lock:
            lost = {event.run_id for event in self.events}
            lost.update(event.run_id for batch, _ in self._in_flight for event in batch.events)
            for run_id in lost:
                remember_run(self._runs_missing_events, run_id)
            self.events = []
            self._forget_in_flight()
        self.forget_stored()

    def note_refused(self, run_id: str) -> None:
        """The store refused an event of this run (see `_runs_missing_events`)."""
        with self._hand_over_lock:
            remember_run(self._runs_missing_events, run_id)

    def register_run(self, run_id: str) -> None:
        """This store object registered the run: its chain starts, and its row must exist from now on."""
        with self._hand_over_lock:
            self._run_links[run_id] = first_link(run_id)
            remember_run(self._registered, run_id)
            self._deleted_runs.pop(run_id, None)

    def forget_stored(self) -> None:
        """Forget which objects were written (a gc may delete them): later batches bring every object they need."""
        with self._hand_over_lock:
            self._recently_stored.clear()
            self._cache_generation = None

    def pop_lost(self, run_id: str) -> Optional[StoreError]:
        """Why events of this run were dropped, if they were (once)."""
        return self._lost_runs.pop(run_id, None)

    def add(self, event: Event) -> None:
        """Buffer a checked event; every `batch_size` events, hand them over (and wait if too many are unwritten, or
        too old), and so the events buffered longer than `flush_interval` (the periodic hand-over's job, when the
        event loop was too busy to run it)."""
        if event.kind is EventKind.RUN_FINISHED:
            self._finished_at[event.run_id] = time.time()
        events = self.events
        now = time.monotonic()
        if events and now - self._buffered_since > self._flush_interval:
            # they go now, before this event (which may be slow to encode: a call's end with all its replies) can
            # keep them waiting any longer
            self._hand_over_from_add()
        if not events:
            self._buffered_since = now
        events.append(event)
        if len(events) >= self._batch_size:
            self._hand_over_from_add()

    def _hand_over_from_add(self) -> None:
        """Hand what is buffered over, then wait for room (backpressure); a failure to hand over leaves the events
        buffered, and the periodic flush reports it."""
        if self._failing:
            return
        self._settle()  # forget written batches early: their bytes go back to the allocator
        if self._failing:
            return
        try:
            self._hand_over()
        except Exception:  # the events stay buffered; the periodic flush reports why
            self._failing = True
            self._wake()
        else:
            self._wait_for_room()

    async def aflush(self) -> None:
        """Hand over everything buffered and wait until it, and everything handed over before, is written. On
        failure the unwritten events are back in the buffer, in order, and a `StoreError` rises."""
        lock = self.lock
        async with lock:
            if not self._is_open or lock is not self.lock:  # closed (maybe reopened) while this waited
                raise StoreClosedError(
                    f"{self._store!r} was closed while a flush waited; the close reported the events it could not "
                    "write.",
                    self._store.location,
                )
            self._settle()
            self._failing = False  # a flush always tries again
            try:
                self._hand_over()
            except Exception as error:
                self._failing = True
                raise self._flush_error(error) from error
            last = self._last_in_flight()  # the writer finishes batches in order: when it is done, all are
            while last is not None:
                await self._await_done(last)
                failure = self._settle()
                if failure is not None:
                    raise self._flush_error(failure) from failure
                with self._hand_over_lock:
                    if all(future is not last for _, future in self._in_flight):
                        return
                # a failed batch comes back once the batches after it are done, or the writer's thread handed over
                # more (`hand_over_stale`)
                last = self._last_in_flight()

    async def _await_done(self, future: Future[Any]) -> None:
        """Wait until a future of the writer's thread is done, whatever its outcome (which the caller reads from
        it)."""
        self._using_futures = True
        try:
            waited = None if future.done() else asyncio.wrap_future(future)
        finally:
            self._using_futures = False
        if waited is not None:
            waited.add_done_callback(_mark_retrieved)
            await asyncio.wait([waited])

    def wrap_future(self, future: Future[_T]) -> asyncio.Future[_T]:
        """`asyncio.wrap_future(future)`, saying meanwhile that the loop's thread uses the writer's futures (see
        `_using_futures`)."""
        self._using_futures = True
        try:
            return asyncio.wrap_future(future)
        finally:
            self._using_futures = False

    def _last_in_flight(self) -> Optional[Future[None]]:
        with self._hand_over_lock:
            return self._in_flight[-1][1] if self._in_flight else None

    def hand_over_stale(self) -> None:
        """Hand over events buffered for more than 1.5 `flush_interval` (called on the batch writer's own thread
        whenever it has had nothing to write for a while).

        The event loop's thread hands over from `add` and from the periodic hand-over, but a busy loop may do
        neither for seconds: an agent replying in a tight loop whose replies nobody reads yet (so none is
        appended), the end of a call with a hundred thousand replies. The writer's thread gets its share of the
        interpreter meanwhile (Python switches threads every few milliseconds), so it takes those events itself;
        what a crash loses stays bounded by the age of the oldest event, not by how long the loop is busy.
        Like a hand-over from `add`, it does not wait for `lock`: a flush may hold it for as long as the loop is busy
        (waiting for its write, behind the busy task), and what the lock's other holders do (a gc, deleting a run)
        is checked by the backend in the write's own transaction. Skipped while another hand-over is under way,
        after a failure (the periodic flush retries and reports it) and once the store closes."""
        if self.events and time.monotonic() - self._buffered_since > 1.5 * self._flush_interval:
            self._hand_over_unless_busy()

    def _hand_over_unless_busy(self) -> bool:
        """Hand over what is buffered, unless another hand-over or stock-taking holds the lock, the last write
        failed or the store is closing; whether it did. A failure to hand over leaves the events buffered, and the
        periodic flush retries and reports why (for the hand-overs that do not wait for `lock`: `hand_over_stale`,
        `hand_over_before_collection`)."""
        if not self._hand_over_lock.acquire(blocking=False):
            return False
        try:
            # under the lock, which stock-taking (where failed writes are found) and `close` take too
            if self._failing or self.stopping or not self._is_open:
                return False
            self._hand_over_locked()
            return True
        except Exception:
            self._failing = True
            return False
        finally:
            self._hand_over_lock.release()

    def opened_on(self, thread: int) -> bool:
        """Whether this buffer is open with a writer, on the event loop of this thread."""
        return self._loop_thread == thread and self.batch_writer is not None

    def holds_loop_transaction(self) -> bool:
        """Whether the store holds a write transaction only the event loop can finish (its writer waits for it)."""
        return self._store._holds_loop_transaction()

    def hand_over_before_collection(self) -> Optional[tuple[BatchWriter[Batch], int]]:
        """Hand over what is buffered and return the writer with the count of batches it must have done for
        everything handed over to be written. None: not now (the loop's thread reads or waits on the writer's
        futures, see `_using_futures`; or `_hand_over_unless_busy` could not), nothing to wait for, or a writer
        that did nothing during the last wait and nothing since."""
        writer = self.batch_writer
        if writer is None or self._using_futures or not self._hand_over_unless_busy():
            return None
        target, done = self._batches_handed_over, writer.batches_done
        if done >= target or done == self._collection_wait_stalled_at:
            return None
        return writer, target

    def note_wait_before_collection(self, writer: BatchWriter[Batch], target: int, done_before: int) -> None:
        """The wait for `writer` to reach `target` (from `done_before`) ended: a writer that did nothing in it is not
        waited for again until it does more."""
        done = writer.batches_done
        self._collection_wait_stalled_at = done if done == done_before < target else None

    # ---------------------------------------------------------------------------------------------- the write side

    def commit(self, batches: list[Batch]) -> None:
        """Write batches handed over one after another, atomically, with the backend's `_commit_write` (a blocking
        batch writer's callback)."""
        write: Optional[Write] = self._resolve(batches)
        while write is not None:
            try:
                generation = self._store._commit_write(write)
            except (GcGenerationChanged, RunsDeleted) as changed:
                write = self._resolve_again(batches, write, changed)
            else:
                self._written(batches, generation)
                return
        self._written(batches, None)

    async def acommit(self, batches: list[Batch]) -> None:
        """`commit`, with the backend's `_acommit_write` (the callback of a `LoopBatchWriter`)."""
        write: Optional[Write] = self._resolve(batches)
        while write is not None:
            try:
                generation = await self._store._acommit_write(write)
            except (GcGenerationChanged, RunsDeleted) as changed:
                write = self._resolve_again(batches, write, changed)
            else:
                self._written(batches, generation)
                return
        self._written(batches, None)

    def _resolve(self, batches: list[Batch]) -> Optional[Write]:
        """The write of these batches (None if nothing of them is left to write)."""
        merged = batches[0] if len(batches) == 1 else _merged(batches)  # the usual case: the batch's own lists
        write = Write(
            events=merged.events,
            hash_keys=merged.hash_keys,
            data=merged.data,
            links=merged.links,
            objects=merged.objects,
            counts=merged.counts,
            new_runs=frozenset(run_id for run_id in merged.counts if run_id not in self._registered),
            run_updates=merged.run_updates,
            gc_generation=merged.cache_generation,
        )
        return self._without_deleted_runs(write)

    def _resolve_again(self, batches: list[Batch], write: Write, changed: Exception) -> Optional[Write]:
        """The write to try after the backend refused `write`: with every object it needs after a gc, or without
        the events of runs deleted meanwhile (those runs are reported lost: `pop_lost`)."""
        location = self._store.location
        if isinstance(changed, GcGenerationChanged):
            if changed.generation == write.gc_generation:
                raise StoreWriteError(
                    f"{location} refused a write counting on gc generation {changed.generation} as if that were not "
                    "its generation (a backend bug); nothing was written, the events stay buffered.",
                    location,
                )
            objects = dict(write.objects)
            _add_nested(objects, batches)
            return dataclasses.replace(write, objects=objects, gc_generation=changed.generation)
        assert isinstance(changed, RunsDeleted)
        unknown = [run_id for run_id in changed.run_ids if run_id not in write.counts or run_id in write.new_runs]
        if unknown or not changed.run_ids:
            raise StoreWriteError(
                f"{location} reported runs {unknown} deleted that are not registered runs of the write (a backend "
                "bug); nothing was written, the events stay buffered.",
                location,
            )
        for run_id in changed.run_ids:
            remember_run(self._deleted_runs, run_id)
            if len(self._lost_runs) >= RUNS_REMEMBERED:
                del self._lost_runs[next(iter(self._lost_runs))]
            self._lost_runs.setdefault(
                run_id,
                StoreWriteError(
                    f"Run {run_id!r} was deleted from {location} while it was running (`adelete_run(..., "
                    "force=True)`, maybe in another process), so its events from then on were not written (the "
                    "other runs' were). Record the run again if it is needed.",
                    location,
                ),
            )
        return self._without_deleted_runs(write)

    def _without_deleted_runs(self, write: Write) -> Optional[Write]:
        deleted = self._deleted_runs
        if not any(run_id in deleted for run_id in write.counts):
            return write
        kept = [index for index, event in enumerate(write.events) if event.run_id not in deleted]
        if not kept:
            return None
        return dataclasses.replace(
            write,
            events=[write.events[index] for index in kept],
            hash_keys=[write.hash_keys[index] for index in kept],
            data=[write.data[index] for index in kept],
            links=[write.links[index] for index in kept],
            counts={run_id: count for run_id, count in write.counts.items() if run_id not in deleted},
            new_runs=write.new_runs.difference(deleted),
            run_updates=[update for update in write.run_updates if update.run_id not in deleted],
        )

    @staticmethod
    def _written(batches: list[Batch], generation: Optional[int]) -> None:
        for batch in batches:
            batch.written_generation = generation

    # ------------------------------------------------------------------------------------------------- internals

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _hand_over(self) -> None:
        """Encode what is buffered into batches and hand them to the batch writer (the events leave the buffer
        only once their batch is handed over)."""
        with self._hand_over_lock:
            self._hand_over_locked()

    def _hand_over_locked(self) -> None:
        events = self.events
        if not events:
            return
        writer = self.batch_writer
        if writer is None:
            raise StoreClosedError(f"{self._store!r} is not open, so nothing can be written.", self._store.location)
        started = time.monotonic()
        # `add` may append meanwhile (on the loop's thread, while the writer's thread hands over): the events
        # counted here leave, from the front; those appended since stay, and were appended after `started`
        left = len(events)
        while left:
            batch = self._prepare_batch(events[: min(self._max_batch_size, left)])
            batch.appended_since = self._buffered_since
            self._in_flight.append((batch, writer.submit(batch, self._generation)))
            self._batches_handed_over += 1
            self._in_flight_events += len(batch)
            self._in_flight_bytes += batch.size_bytes
            del events[: len(batch)]
            left -= len(batch)
        self._buffered_since = started

    def _wait_for_room(self) -> None:
        """Backpressure: while more than `max_pending_events` events (or `max_pending_bytes` bytes) are handed over
        and not written, or the oldest batch handed over holds an event appended more than `max_pending_seconds`
        ago, block until the writer has written the oldest batch.

        A producer that outruns the disk is slowed down to the disk's pace here instead of filling memory. The wait
        blocks the event loop's thread (every agent of the process waits), which is what lets a writer thread run:
        it no longer competes for the interpreter. The counts bound the memory unwritten events hold; the age bounds
        what a crash loses, whatever the writer's pace: a writer that shares the interpreter with a busy loop writes
        several times slower than one that has it to itself, so a bound in events alone lets the oldest event wait
        seconds. Waiting on age costs the producer the pauses in which the writer catches up (each about as long as
        what it writes then takes alone); the backlog, and with it each transaction, stays what the producer makes
        in `max_pending_seconds`. Only writers that do not need the event loop are waited for
        (`BatchWriter.writes_elsewhere`), never while the store holds a transaction that needs the loop to end
        (`Backend._holds_loop_transaction`: the writer would wait for it), and at most `_BACKPRESSURE_MAX_WAIT`
        seconds at a time (a writer held up by another connection's lock must not freeze the loop); a failed write
        ends the wait (the events stay buffered, and flushing raises as usual).
        """
        writer = self.batch_writer
        if writer is None or not writer.writes_elsewhere or self.holds_loop_transaction():
            return
        self._using_futures = True
        try:
            self._wait_for_writer()
        finally:
            self._using_futures = False

    def _wait_for_writer(self) -> None:
        in_flight = self._in_flight
        now = time.monotonic()
        deadline = now + _BACKPRESSURE_MAX_WAIT
        oldest = in_flight[0][0] if in_flight else None
        while in_flight:
            too_many = (
                self._in_flight_events > self._max_pending_events or self._in_flight_bytes > self._max_pending_bytes
            )
            first = in_flight[0][0]
            too_old = now - first.appended_since > self._max_pending_seconds and first is not self._stalled_batch
            if not (too_many or too_old):
                return
            left = deadline - now
            if left <= 0:
                if not too_many and first is oldest:
                    # a whole wait and not even the oldest batch was written: the writer is held up (another
                    # connection's lock, a failing write being retried), and waiting on age would only freeze the
                    # loop; the age is waited on again once this batch is written
                    self._stalled_batch = first
                return
            future = in_flight[0][1]
            if not future.done():
                wait_futures([future], timeout=min(left, _BACKPRESSURE_SLICE))
            self._settle()
            if self._failing:
                return
            now = time.monotonic()

    def _settle(self) -> Optional[BaseException]:
        """Take stock of what the batch writer finished, in order: forget the written batches. After a failure,
        once every batch handed over has come back, put their events in front of the buffer (in order) and return
        the error."""
        with self._hand_over_lock:
            return self._settle_locked()

    def _settle_locked(self) -> Optional[BaseException]:
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
            self.events[:0] = [event for failed, _ in in_flight for event in failed.events]
            self._buffered_since = in_flight[0][0].appended_since
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
        if generation is not None and generation == self._cache_generation:  # None: nothing of it was written
            self._recently_stored.update(batch.objects)
        for event in batch.events:
            if event.kind is EventKind.RUN_FINISHED:
                self._finished_at.pop(event.run_id, None)

    def _flush_error(self, error: BaseException) -> StoreError:
        """What a failed flush raises: the store's own error with the number of events still unwritten."""
        pending = self.count
        if isinstance(error, StoreWriteError):
            error.pending = pending
            return error
        if isinstance(error, StoreError):
            return error
        location = self._store.location
        return StoreWriteError(
            f"Could not write {pending} events to {location} ({type(error).__name__}: {error}); they stay "
            "buffered, `await store.aflush()` retries.",
            location,
            pending=pending,
        )

    def _prepare_batch(self, events: list[Event]) -> Batch:
        """Encode what the backend writes for these events (at hand-over, not in `add`)."""
        generation = self._cache_generation if self._recently_stored else None
        batch = Batch(list(events), [], [], {}, [], {}, cache_generation=generation)
        objects, counts, links, run_links = batch.objects, batch.counts, batch.links, self._run_links
        ends: dict[str, bytes] = {}  # per run: the link of its last event in this batch so far
        size = 0
        for event in events:
            hash_key, run_id, kind = event.hash_key, event.run_id, event.kind
            batch.hash_keys.append(hash_key)
            data = None if event.data is None else encode_data(event.data)
            batch.data.append(data)
            if data is not None:
                size += len(data)
            counts[run_id] = counts.get(run_id, 0) + 1
            previous = ends.get(run_id)
            if previous is None:  # the run's first event in this batch
                previous = run_links.get(run_id)
                if previous is None:  # a run no `astart_run` of this store object announced
                    previous = first_link(run_id)
                batch.link_starts[run_id] = previous
            link = next_link(previous, kind, event.t, hash_key, event.call_id, event.parent_call_id, data)
            ends[run_id] = link
            links.append(link)
            obj = event.obj
            if obj is not None and hash_key is not None and hash_key not in objects:
                body = event.canonical_bytes or obj.encode_canonical()
                objects[hash_key] = body
                size += len(body)
                # nested messages come with the object unless they came with events of their own before it (in
                # this batch or an earlier one: batches are written in order, and come back together on failure)
                emitted = event.sub_messages_emitted and run_id not in self._runs_missing_events
                if not emitted and may_reference_messages(body):
                    for nested_key, nested_body in nested_messages(obj, objects, self._recently_stored):
                        if nested_key not in objects:
                            objects[nested_key] = nested_body
                            size += len(nested_body)
            if kind is EventKind.RUN_STARTED or kind is EventKind.RUN_FINISHED:
                update = run_update(event, data, self._finished_at.get(run_id))
                if update is not None:
                    batch.run_updates.append(update)
        batch.size_bytes = size
        # the chains move on only once the whole batch is prepared (if encoding fails, the events stay buffered
        # and are linked again from where they were)
        for run_id, link in ends.items():
            run_links.pop(run_id, None)  # the newest run last: the oldest is forgotten first
            run_links[run_id] = link
            if len(run_links) > RUNS_REMEMBERED:
                del run_links[next(iter(run_links))]
        return batch

    async def _arun(self) -> None:
        """Hand over what is buffered at least every `flush_interval` seconds; after a failure, retry with
        growing delays."""
        loop = asyncio.get_running_loop()
        delay = self._flush_interval
        while not self.stopping:
            wakeup: asyncio.Future[None] = loop.create_future()
            self._wakeup = wakeup
            timer = loop.call_later(delay, _resolve, wakeup)
            try:
                await wakeup
            finally:
                timer.cancel()
                self._wakeup = None
            if self.stopping:
                continue
            self._settle()
            if not self.events:
                continue
            try:
                await self.aflush()
                delay = self._flush_interval
            except StoreError as error:
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                logger.warning("%s; retrying in %.1f s", error, delay)


def _merged(batches: list[Batch]) -> Batch:
    """One batch with the events, objects and run updates of `batches`, in order (what one write holds). Batches
    prepared across a gc (under other generations) each bring every object they need: the merged batch counts on
    no generation."""
    generations = {batch.cache_generation for batch in batches}
    merged = Batch([], [], [], {}, [], {}, cache_generation=generations.pop() if len(generations) == 1 else None)
    for batch in batches:
        merged.events.extend(batch.events)
        merged.hash_keys.extend(batch.hash_keys)
        merged.data.extend(batch.data)
        merged.links.extend(batch.links)
        merged.objects.update(batch.objects)
        merged.run_updates.extend(batch.run_updates)
        for run_id, count in batch.counts.items():
            merged.counts[run_id] = merged.counts.get(run_id, 0) + count
    if generations:
        _add_nested(merged.objects, batches)
    return merged


def _add_nested(objects: dict[str, bytes], batches: list[Batch]) -> None:
    """Add every message nested in the batches' objects (after a gc, none of them can be counted on as stored)."""
    for batch in batches:
        for event in batch.events:
            if event.obj is not None:
                objects.update(nested_messages(event.obj, objects))


def remember_run(remembered: dict[str, None], run_id: str) -> None:
    """Add a run to a bounded memory of runs, newest last (beyond `RUNS_REMEMBERED`, the oldest is forgotten)."""
    remembered.pop(run_id, None)
    remembered[run_id] = None
    if len(remembered) > RUNS_REMEMBERED:
        del remembered[next(iter(remembered))]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # the outcome is read from the original future; asyncio must not log it as lost
