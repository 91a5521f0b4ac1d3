"""Batch writers: what writes a store's batches in order: right away, on a thread of its own, or on the event loop."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sized
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Generic, Optional, TypeVar, Union

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_BatchT = TypeVar("_BatchT", bound=Sized)


class SkippedAfterFailure(Exception):
    """What a batch's future holds when the batch was not written because an earlier batch of the same generation
    failed (writing it would break the order of the log); the store hands it over again with the failed one."""


class BatchWriter(Generic[_BatchT]):
    """Writes the batches handed to `submit` in order, with one future each.

    Order is kept across failures: once a batch fails, every later batch of the same `generation` is skipped
    (its future fails with `SkippedAfterFailure`), so the store can take all of them back, in order, and hand
    them over again under the next generation.

    """

    writes_elsewhere = False
    """Whether batches are written without the event loop's thread (so a store may block that thread to wait for
    them: backpressure)."""

    def __init__(self) -> None:
        self._failed_generation: Optional[int] = None
        self.batches_done = 0
        """How many submitted batches this writer is done with (written, failed or skipped), counted before their
        futures are settled, by the one thread that writes: a waiter that must not touch the futures' locks polls
        it (see `store.full_collections`, which polls only writers that `writes_elsewhere`). Every writer counts
        them through `_begin`, `_fail` and `_succeed`."""

    def submit(self, batch: _BatchT, generation: int) -> Future[None]:
        """Have `batch` written after every batch submitted before it."""
        raise NotImplementedError

    def call(self, function: Callable[[], _T]) -> Future[_T]:
        """Run `function` where the batches are written, after the batches submitted before it."""
        raise NotImplementedError

    def stop(self) -> Future[None]:
        """Finish what was submitted, then take no more work."""
        raise NotImplementedError

    def hand_over_when_idle(self, hand_over: Callable[[], None], interval: float) -> None:
        """Call `hand_over` where the batches are written whenever nothing was submitted for `interval` seconds:
        a writer with a thread of its own takes over what a busy event loop leaves buffered. Writers that write
        on the loop's thread (inline, or on the event loop) cannot, and ignore it."""

    def _begin(self, futures: list[Future[None]], generation: int) -> bool:
        """Whether batches of this generation are to be written (not after a failure of their generation)."""
        for future in futures:
            future.set_running_or_notify_cancel()
        if self._failed_generation == generation:
            self.batches_done += len(futures)
            for future in futures:
                _settle(future, SkippedAfterFailure())
            return False
        return True

    def _fail(self, futures: list[Future[None]], generation: int, error: BaseException) -> None:
        self._failed_generation = generation
        self.batches_done += len(futures)
        for future in futures:
            _settle(future, error)

    def _succeed(self, futures: list[Future[None]]) -> None:
        self.batches_done += len(futures)
        for future in futures:
            _settle(future, None)


class _BlockingBatchWriter(BatchWriter[_BatchT]):
    """A batch writer that writes with a blocking call.

    :param write_batches: writes the batches it is given atomically (all of them or none), or raises.
    """

    def __init__(self, write_batches: Callable[[list[_BatchT]], None]) -> None:
        super().__init__()
        self._write_batches = write_batches

    def _write(self, batches: list[_BatchT], futures: list[Future[None]], generation: int) -> None:
        """Write batches that were submitted one after another in one go, and settle their futures (a batch whose
        future was cancelled is written all the same: the log's order does not depend on who still waits)."""
        if not self._begin(futures, generation):
            return
        try:
            self._write_batches(batches)
        except BaseException as error:  # every failure reaches the store through the futures
            self._fail(futures, generation, error)
        else:
            self._succeed(futures)


class InlineBatchWriter(_BlockingBatchWriter[_BatchT]):
    """Writes each batch right away, in the caller's thread (for stores whose writes are cheap, in memory)."""

    def submit(self, batch: _BatchT, generation: int) -> Future[None]:
        future: Future[None] = Future()
        self._write([batch], [future], generation)
        return future

    def call(self, function: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        _run_call(_CallJob(function, future))
        return future

    def stop(self) -> Future[None]:
        future: Future[None] = Future()
        future.set_result(None)
        return future


@dataclass
class _BatchJob(Generic[_BatchT]):
    batch: _BatchT
    generation: int
    future: Future[None]


@dataclass
class _CallJob:
    function: Callable[[], Any]
    future: Future[Any]


class _StopJob:
    pass


_Job = Union[_BatchJob[_BatchT], _CallJob, _StopJob]


class ThreadedBatchWriter(_BlockingBatchWriter[_BatchT]):
    """Writes batches on a thread of its own, so that a store gets written while the event loop is busy.

    `submit` only queues the batch: it never waits for the event loop or for the disk. `on_stop` runs on the
    thread when it stops (to close what the thread opened). The batches that queue up
    while one transaction is written go into the next transaction together (up to `max_events` events), so the
    thread keeps up with a producer that holds the interpreter most of the time: it needs the interpreter a few
    times per transaction, however many batches that transaction holds.
    """

    writes_elsewhere = True

    def __init__(
        self,
        write_batches: Callable[[list[_BatchT]], None],
        name: str,
        max_events: int,
        on_stop: Optional[Callable[[], None]] = None,
    ) -> None:
        super().__init__(write_batches)
        self._max_events = max_events
        self._on_stop = on_stop
        self._on_idle: Optional[Callable[[], None]] = None
        self._idle_interval: Optional[float] = None
        self._jobs: queue.SimpleQueue[_Job[_BatchT]] = queue.SimpleQueue()
        self._stopped: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, batch: _BatchT, generation: int) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put(_BatchJob(batch, generation, future))
        return future

    def call(self, function: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        self._jobs.put(_CallJob(function, future))
        return future

    def stop(self) -> Future[None]:
        self._jobs.put(_StopJob())
        return self._stopped

    def hand_over_when_idle(self, hand_over: Callable[[], None], interval: float) -> None:
        self._on_idle, self._idle_interval = hand_over, interval
        self.call(_nothing)  # the thread may be waiting without a timeout: it waits with one from now on

    def _next_job(self) -> _Job[_BatchT]:
        """The next job; while there is none, call `_on_idle` every `_idle_interval` seconds."""
        while True:
            try:
                return self._jobs.get(timeout=self._idle_interval)
            except queue.Empty:
                on_idle = self._on_idle
                if on_idle is None:
                    continue
                try:
                    on_idle()
                except ReferenceError:  # its object is gone: there is nothing to hand over any more
                    self._on_idle = self._idle_interval = None
                except Exception:  # a bug; the loop's own hand-over still writes everything
                    logger.exception("The store writer's hand-over of a busy event loop's events failed")
                    self._on_idle = self._idle_interval = None

    def _run(self) -> None:
        try:
            job: Optional[_Job[_BatchT]] = None
            while True:
                if job is None:
                    job = self._next_job()
                if isinstance(job, _StopJob):
                    if self._on_stop is not None:
                        try:
                            self._on_stop()
                        except ReferenceError:  # its object is gone, and with it what it would close
                            pass
                    return
                if isinstance(job, _CallJob):
                    _run_call(job)
                    job = None
                    continue
                job = self._write_from(job)
        finally:
            _settle(self._stopped, None)

    def _write_from(self, first: _BatchJob[_BatchT]) -> Optional[_Job[_BatchT]]:
        """Write `first` with the batches of its generation queued right behind it; return the job that ended the
        group (None if the queue ran empty)."""
        batches, futures, count = [first.batch], [first.future], len(first.batch)
        following: Optional[_Job[_BatchT]] = None
        while count < self._max_events:
            try:
                following = self._jobs.get_nowait()
            except queue.Empty:
                following = None
                break
            if not isinstance(following, _BatchJob) or following.generation != first.generation:
                break
            batches.append(following.batch)
            futures.append(following.future)
            count += len(following.batch)
            following = None
        self._write(batches, futures, first.generation)
        return following


class LoopBatchWriter(BatchWriter[_BatchT]):
    """Writes batches on the event loop, for a backend with an async driver: a task of its own awaits
    `awrite_batches` for the batches queued, in order, those that queue up meanwhile together (up to `max_events`
    events). `submit` only queues; the loop's other tasks run while the driver waits for the database. Backpressure
    cannot block `append` for such a writer (the loop it would block is what writes): a producer that never awaits
    outruns it without bound, one that awaits gives it its turns."""

    def __init__(self, awrite_batches: Callable[[list[_BatchT]], Awaitable[None]], name: str, max_events: int) -> None:
        super().__init__()
        self._awrite_batches = awrite_batches
        self._max_events = max_events
        self._jobs: deque[_Job[_BatchT]] = deque()
        self._queued = asyncio.Event()
        self._stopped: Future[None] = Future()
        self._task = asyncio.get_running_loop().create_task(self._arun(), name=name)

    def submit(self, batch: _BatchT, generation: int) -> Future[None]:
        future: Future[None] = Future()
        self._put(_BatchJob(batch, generation, future))
        return future

    def call(self, function: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        self._put(_CallJob(function, future))
        return future

    def stop(self) -> Future[None]:
        if self._task.done():  # its loop is gone (a store collected after its loop closed): nothing runs any more
            _settle(self._stopped, None)
        else:
            self._put(_StopJob())
        return self._stopped

    def _put(self, job: _Job[_BatchT]) -> None:
        if self._task.done():  # stopped (or its loop ended): nothing would ever run the job
            if isinstance(job, _BatchJob):
                self.batches_done += 1
            if isinstance(job, (_BatchJob, _CallJob)):
                _settle(job.future, RuntimeError("the store's loop batch writer has stopped"))
            return
        self._jobs.append(job)
        self._queued.set()

    async def _arun(self) -> None:
        jobs = self._jobs
        try:
            while True:
                if not jobs:
                    self._queued.clear()
                    await self._queued.wait()
                    continue
                job = jobs.popleft()
                if isinstance(job, _StopJob):
                    return
                if isinstance(job, _CallJob):
                    _run_call(job)
                    continue
                batches, futures, count = [job.batch], [job.future], len(job.batch)
                while jobs and count < self._max_events:
                    following = jobs[0]
                    if not isinstance(following, _BatchJob) or following.generation != job.generation:
                        break
                    jobs.popleft()
                    batches.append(following.batch)
                    futures.append(following.future)
                    count += len(following.batch)
                if not self._begin(futures, job.generation):
                    continue
                try:
                    await self._awrite_batches(batches)
                except BaseException as error:  # every failure reaches the store through the futures
                    self._fail(futures, job.generation, error)
                    if isinstance(error, asyncio.CancelledError) and _being_cancelled():
                        raise  # this task is cancelled (its loop ends); a driver's own CancelledError is a failure
                else:
                    self._succeed(futures)
        finally:
            for left in jobs:  # cancelled with the loop: nothing queued is left waiting
                if isinstance(left, _BatchJob):
                    self.batches_done += 1
                if isinstance(left, (_BatchJob, _CallJob)):
                    _settle(left.future, asyncio.CancelledError())
            _settle(self._stopped, None)


def _nothing() -> None:
    pass


def _being_cancelled() -> bool:
    """Whether the current task was asked to cancel (where Python cannot tell, 3.10: taken as yes)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


def _run_call(job: _CallJob) -> None:
    """Run a call unless its future was cancelled before it started (then nothing of it happens)."""
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        result = job.function()
    except BaseException as error:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


def _settle(future: Future[Any], outcome: Any) -> None:
    """Set a future's result, or its exception if `outcome` is one, unless it was cancelled (a waiter that gave up
    must not make the writer thread fail)."""
    if future.cancelled():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:  # cancelled meanwhile
        pass


def weak_method(method: Callable[..., _T]) -> Callable[..., _T]:
    """A bound method that does not keep its object alive, for a thread to hold: the object can still be
    garbage-collected (calling the method after that raises `ReferenceError`)."""
    reference = weakref.WeakMethod(method)

    def call(*args: Any, **kwargs: Any) -> _T:
        bound = reference()
        if bound is None:
            raise ReferenceError("the object of this method was garbage-collected")
        return bound(*args, **kwargs)

    return call
