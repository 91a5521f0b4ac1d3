"""Writing what waits before Python's collector makes a full collection.

No thread of the process runs while the collector makes a full (generation 2) collection, and its pause grows with
everything the application keeps (0.3 to 0.5 s in the benchmark flows that keep a few hundred thousand messages):
every event waiting to be written when one starts gets that much older, on top of the backlog backpressure allows.
So while a store whose writer has a thread of its own is open, a callback in `gc.callbacks` runs as a full
collection starts on the thread of that store's event loop: it hands what each such store of that thread buffered
over to its writer, then waits until the writers are done with everything handed over (written, or failed: a failed
batch goes back into the buffer as usual). The wait costs the producer about what the writers needed anyway (up to
about 0.15 s in the benchmark flows): the loop's thread leaves the interpreter to them.

The callback runs at whatever point of the loop's thread allocated last (from Python 3.12: wherever the interpreter
next checks for pending work), so it keeps to what is safe there:
- nothing for a store whose buffer is in the middle of a hand-over or stock-taking (on either thread: its lock is
  held), or whose writer's futures the loop's thread is reading or waiting on: it may hold a lock of one that the
  writer needs to go on (`WriteBuffer.hand_over_before_collection`; a waiter of `_acall_where_written`
  cancelled at that moment is left uncovered, so that wait runs out);
- nothing at all while a store of that thread holds a transaction only the loop can finish (a writer waits for it);
- it waits by polling the writers' count of batches done (`BatchWriter.batches_done`), never on a lock, at most
  `MAX_WAIT` seconds in all, and not again for a writer that did nothing during the last wait until it does more;
- an exception raised meanwhile (a Ctrl-C, a signal handler's `SystemExit`) is raised again by the event loop's
  next callback: raised in the collector's callback, it would only be printed (a producer that never awaits runs
  on until it does).
Collections that start on another thread (any thread's allocations may start one, the writer's too), in a forked
child, or with no event loop running are left alone, and so are the steps of an incremental collector (Python 3.14)
that are not full collections.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from store.buffer import Batch, WriteBuffer
    from store.writer import BatchWriter

MAX_WAIT = 1.0
"""The longest the writers are waited for before one full collection (seconds): a writer held up (another
connection's lock, a failing write being retried) must not freeze the loop."""
POLL_INTERVAL = 0.001
"""How often the wait looks whether the writers are done (seconds)."""

_buffers: tuple[weakref.ref[WriteBuffer], ...] = ()
"""The open buffers whose writer has a thread of its own; replaced, never changed in place (the callback reads it
on any thread, without a lock)."""
_registration_lock = threading.Lock()


def write_before(buffer: WriteBuffer) -> None:
    """Write what `buffer` holds before every full collection on the thread it was opened on, until
    `stop_writing_before(buffer)`."""
    global _buffers
    with _registration_lock:
        _buffers = (*(ref for ref in _buffers if ref() not in (None, buffer)), weakref.ref(buffer))
        # installed once and left installed: the collector calls its callbacks by their place in the list, and
        # removing this one while it waits (on another thread) would make it skip the next one for that collection
        if _before_full_collection not in gc.callbacks:
            gc.callbacks.append(_before_full_collection)


def stop_writing_before(buffer: WriteBuffer) -> None:
    """The buffer closed: leave it alone."""
    global _buffers
    with _registration_lock:
        _buffers = tuple(ref for ref in _buffers if ref() not in (None, buffer))


def _before_full_collection(phase: str, info: dict[str, Any]) -> None:
    if phase != "start" or info["generation"] != 2 or not _buffers:
        return
    thread = threading.get_ident()
    here = [buffer for buffer in (ref() for ref in _buffers) if buffer is not None and buffer.opened_on(thread)]
    if not here:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no event loop runs here (a store left open after its loop ended, or a forked child,
        return  # where asyncio runs no loop of its parent's): nothing to hand over to or wait for
    try:
        _write_before_collection(here)
    except BaseException as error:  # raised in the callback, the collector would only print it
        loop.call_soon_threadsafe(_raise, error)


def _write_before_collection(buffers: list[WriteBuffer]) -> None:
    if any(buffer.holds_loop_transaction() for buffer in buffers):
        return
    waits: list[tuple[WriteBuffer, BatchWriter[Batch], int, int]] = []
    for buffer in buffers:
        handed_over: Optional[tuple[BatchWriter[Batch], int]] = buffer.hand_over_before_collection()
        if handed_over is not None:
            writer, target = handed_over
            waits.append((buffer, writer, target, writer.batches_done))
    deadline = time.monotonic() + MAX_WAIT
    for buffer, writer, target, done_before in waits:
        if time.monotonic() >= deadline:  # the writers before it took all the time: it was not waited for
            continue
        while writer.batches_done < target and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        buffer.note_wait_before_collection(writer, target, done_before)


def _raise(error: BaseException) -> None:
    raise error
