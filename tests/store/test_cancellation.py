"""Cancelling a store while it opens or closes, at every point: no thread dies, none is left behind, and the store
opens cleanly afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from miniagents import Message
from store import SQLiteStore
from store.testing import message_event


@contextmanager
def thread_failures() -> Iterator[list[str]]:
    """Collect what any thread dies of while the block runs."""
    failures: list[str] = []
    previous = threading.excepthook

    def hook(arguments: threading.ExceptHookArgs) -> None:
        thread = arguments.thread.name if arguments.thread is not None else "?"
        failures.append(f"{thread}: {arguments.exc_type.__name__}: {arguments.exc_value}")

    threading.excepthook = hook
    try:
        yield failures
    finally:
        threading.excepthook = previous


def store_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """The store threads started since `before` was taken (threads other tests left are not this test's)."""
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("miniagents store") and thread not in before
    ]


async def anothing_left(before: set[threading.Thread], deadline: float = 5.0) -> list[str]:
    """The names of the store threads started since `before` that are still alive after `deadline` seconds."""
    end = time.monotonic() + deadline
    for thread in store_threads(before):
        await asyncio.to_thread(thread.join, max(0.0, end - time.monotonic()))
    return [thread.name for thread in store_threads(before)]


async def acancel_at_every_point(step: Callable[[], Awaitable[object]]) -> int:
    """Run `step` again and again, cancelling it after ever more loop iterations and time, until it finishes
    before the cancellation; return how many runs were cancelled."""
    cancelled = 0
    for attempt in range(400):
        task = asyncio.ensure_future(step())
        for _ in range(attempt % 40):
            await asyncio.sleep(0)
        if attempt >= 40:  # then ever longer waits: 0.2 ms growing by 5 % per attempt (0.5 s by attempt 200)
            await asyncio.sleep(0.0002 * 1.05 ** (attempt - 40))
        if task.done():
            await task
            return cancelled
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
    raise AssertionError("the step never finished before its cancellation")


async def test_cancelling_an_opening_store_leaks_no_thread_and_kills_none(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path):
        pass  # created: the openings below only open
    stores: list[SQLiteStore] = []

    async def aopen() -> None:
        store = SQLiteStore(path)
        stores.append(store)
        await store.aopen()

    before = set(threading.enumerate())
    with thread_failures() as failures:
        cancelled = await acancel_at_every_point(aopen)
        for store in stores:
            await store.aclose()
        assert await anothing_left(before) == []
    assert failures == []
    assert cancelled > 0
    async with SQLiteStore(path) as store:
        assert (await store.averify()).ok


async def arecord_and_close_cancelled_at_every_point(path: Path) -> str:
    """Record a run and close the store again and again, cancelled ever later; what went wrong, or "ok"."""
    stores: list[SQLiteStore] = []
    appended: list[str] = []

    async def arecord_and_close() -> None:
        store = SQLiteStore(path, flush_interval=60)
        stores.append(store)
        await store.aopen()
        run_id = f"run {len(stores)}"
        await store.astart_run(run_id)
        message = Message(text=f"message {len(stores)}")
        store.append(message_event(run_id, message))
        appended.append(message.hash_key)
        await store.aclose()  # the close writes the buffered event, whenever it is cancelled

    before = set(threading.enumerate())
    with thread_failures() as failures:
        cancelled = await acancel_at_every_point(arecord_and_close)
        for store in stores:
            await store.aclose()
        left = await anothing_left(before)
    async with SQLiteStore(path) as store:
        verified = (await store.averify()).ok
        stored = {event.hash_key for event in await store.aget_events()}
    problems = [f"threads left: {left}"] if left else []
    problems += [f"threads died: {failures}"] if failures else []
    problems += [] if cancelled > 0 and appended else ["nothing was cancelled"]
    problems += [] if verified else ["the store does not verify"]
    problems += [] if set(appended) <= stored else ["appended events were lost"]
    return "; ".join(problems) or "ok"


def test_cancelling_a_closing_store_leaks_no_thread_and_loses_nothing(tmp_path: Path) -> None:
    # in a fresh interpreter: what this checks is the store's own threads and tasks, not what earlier tests left
    result = subprocess.run(
        [sys.executable, __file__, "closing", str(tmp_path / "store.db")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok", result.stdout[-3000:]


@pytest.mark.parametrize("times", [1, 3])
async def test_a_cancelled_wait_for_a_write_does_not_stop_the_writer(tmp_path: Path, times: int) -> None:
    before = set(threading.enumerate())
    with thread_failures() as failures:
        async with SQLiteStore(tmp_path / "store.db", flush_interval=60) as store:
            await store.astart_run("run")
            for index in range(times):
                store.append(message_event("run", Message(text=f"m{index}")))
                flush = asyncio.ensure_future(store.aflush())
                await asyncio.sleep(0)
                flush.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await flush
            await store.afinish_run("run")
            assert len(await store.aget_events("run")) == times
        assert await anothing_left(before) == []
    assert failures == []


if __name__ == "__main__":  # `python test_cancellation.py closing PATH`: the closing scenario in a fresh interpreter
    print(asyncio.run(arecord_and_close_cancelled_at_every_point(Path(sys.argv[2]))))
