"""The batch writers: order, grouping, failures, calls and stopping."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import Future

import pytest

from store.writer import InlineBatchWriter, LoopBatchWriter, SkippedAfterFailure, ThreadedBatchWriter, weak_method

TIMEOUT = 5.0


class Recorder:
    """A `write_batches` that records what it was given, can be held back, and fails on request."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []
        self.threads: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail_on: set[int] = set()

    def __call__(self, batches: list[list[int]]) -> None:
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        self.threads.append(threading.current_thread().name)
        if len(self.calls) in self.fail_on:
            self.calls.append(batches)
            raise OSError(f"write {len(self.calls)} failed")
        self.calls.append(batches)


def outcome(future: Future[None]) -> object:
    error = future.exception(TIMEOUT)
    return "written" if error is None else type(error).__name__


def test_batches_are_written_in_order_and_those_queued_meanwhile_share_one_write() -> None:
    recorder = Recorder()
    writer: ThreadedBatchWriter[list[int]] = ThreadedBatchWriter(recorder, name="test writer", max_events=100)
    try:
        recorder.release.clear()
        first = writer.submit([1], generation=0)
        assert recorder.entered.wait(TIMEOUT)  # the first write is under way and held back
        queued = [writer.submit([value], generation=0) for value in (2, 3, 4)]
        recorder.release.set()
        assert [outcome(future) for future in (first, *queued)] == ["written"] * 4
    finally:
        writer.stop().result(TIMEOUT)
    assert recorder.calls == [[[1]], [[2], [3], [4]]]
    assert set(recorder.threads) == {"test writer"}


def test_a_group_holds_at_most_max_events() -> None:
    recorder = Recorder()
    writer: ThreadedBatchWriter[list[int]] = ThreadedBatchWriter(recorder, name="test writer", max_events=4)
    try:
        recorder.release.clear()
        futures = [writer.submit([0], generation=0)]
        assert recorder.entered.wait(TIMEOUT)
        futures += [writer.submit([index, index], generation=0) for index in range(1, 5)]
        recorder.release.set()
        assert [outcome(future) for future in futures] == ["written"] * 5
    finally:
        writer.stop().result(TIMEOUT)
    assert [sum(len(batch) for batch in call) for call in recorder.calls] == [1, 4, 4]


@pytest.mark.parametrize("threaded", [True, False])
def test_after_a_failure_later_batches_of_its_generation_are_skipped_and_the_next_generation_is_written(
    threaded: bool,
) -> None:
    recorder = Recorder()
    recorder.fail_on = {1}
    writer = (
        ThreadedBatchWriter(recorder, name="test writer", max_events=1) if threaded else InlineBatchWriter(recorder)
    )
    try:
        first, failing, skipped = (writer.submit([value], generation=0) for value in (1, 2, 3))
        assert (outcome(first), outcome(failing), outcome(skipped)) == ("written", "OSError", "SkippedAfterFailure")
        assert isinstance(skipped.exception(), SkippedAfterFailure)
        retried = writer.submit([2], generation=1)
        assert outcome(retried) == "written"
    finally:
        writer.stop().result(TIMEOUT)
    assert recorder.calls == [[[1]], [[2]], [[2]]]


def test_calls_run_on_the_writer_thread_after_the_batches_before_them() -> None:
    recorder = Recorder()
    stopped_on: list[str] = []
    writer: ThreadedBatchWriter[list[int]] = ThreadedBatchWriter(
        recorder,
        name="test writer",
        max_events=100,
        on_stop=lambda: stopped_on.append(threading.current_thread().name),
    )
    writer.submit([1], generation=0)
    seen = writer.call(lambda: (threading.current_thread().name, list(recorder.calls)))
    assert seen.result(TIMEOUT) == ("test writer", [[[1]]])
    failing = writer.call(lambda: 1 / 0)
    assert isinstance(failing.exception(TIMEOUT), ZeroDivisionError)
    writer.stop().result(TIMEOUT)
    assert stopped_on == ["test writer"]


def test_a_weak_method_does_not_keep_its_object_alive() -> None:
    class Owner:
        def name(self) -> str:
            return "owner"

    owner = Owner()
    method = weak_method(owner.name)
    assert method() == "owner"
    del owner
    gc.collect()
    with pytest.raises(ReferenceError):
        method()


class AsyncRecorder:
    """An `awrite_batches` that records what it was given, waits for the database (a pause), and fails on request."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_on: set[int] = set()

    async def __call__(self, batches: list[list[int]]) -> None:
        await self.release.wait()
        self.calls.append(batches)
        if len(self.calls) - 1 in self.fail_on:
            raise OSError(f"write {len(self.calls)} failed")


async def aoutcome(future: Future[None]) -> object:
    waited = asyncio.wrap_future(future)
    await asyncio.wait([waited], timeout=TIMEOUT)
    error = waited.exception()
    return "written" if error is None else type(error).__name__


async def test_a_loop_writer_writes_in_order_on_the_loop_and_groups_what_queued_meanwhile() -> None:
    recorder = AsyncRecorder()
    writer: LoopBatchWriter[list[int]] = LoopBatchWriter(recorder, name="test loop writer", max_events=3)
    recorder.release.clear()
    first = writer.submit([1], generation=0)
    await asyncio.sleep(0.01)  # the first write is under way, waiting for its database
    queued = [writer.submit([value], generation=0) for value in (2, 3, 4, 5)]
    call = writer.call(lambda: len(recorder.calls))
    recorder.release.set()
    assert [await aoutcome(future) for future in (first, *queued)] == ["written"] * 5
    assert await asyncio.wrap_future(call) == 3  # after the batches submitted before it
    await asyncio.wrap_future(writer.stop())
    assert recorder.calls == [[[1]], [[2], [3], [4]], [[5]]]  # at most `max_events` per write


async def test_a_loop_writer_skips_the_rest_of_a_failed_generation_and_writes_the_next() -> None:
    recorder = AsyncRecorder()
    recorder.fail_on = {0}
    writer: LoopBatchWriter[list[int]] = LoopBatchWriter(recorder, name="test loop writer", max_events=1)
    failed, skipped = writer.submit([1], generation=0), writer.submit([2], generation=0)
    retried = writer.submit([1, 2], generation=1)
    assert [await aoutcome(future) for future in (failed, skipped, retried)] == [
        "OSError",
        "SkippedAfterFailure",
        "written",
    ]
    await asyncio.wrap_future(writer.stop())
    assert recorder.calls == [[[1]], [[1, 2]]]


async def test_a_loop_writer_cancelled_with_its_loop_leaves_no_future_waiting() -> None:
    recorder = AsyncRecorder()
    recorder.release.clear()
    writer: LoopBatchWriter[list[int]] = LoopBatchWriter(recorder, name="test loop writer", max_events=1)
    writing, queued = writer.submit([1], generation=0), writer.submit([2], generation=0)
    await asyncio.sleep(0.01)
    writer._task.cancel()  # what ending the event loop does to it
    assert [await aoutcome(future) for future in (writing, queued)] == ["CancelledError"] * 2
    assert writer.stop().done()
