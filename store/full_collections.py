"""Writing what waits before Python's collector makes a full collection.

No thread of the process runs while the collector makes a full (generation 2) collection, and its pause grows with
everything the application keeps (0.3 to 0.5 s in the benchmark flows that keep a few hundred thousand messages):
every event waiting to be written when one starts gets that much older, on top of the backlog backpressure allows.
So while a store whose writer has a thread of its own is open, a callback in `gc.callbacks` runs as a full
collection starts on the thread of that store's event loop: it hands what each such store of that thread buffered
over to its writer, then waits until the writers are done with everything handed over (written, or failed: a failed
batch goes back into the buffer as usual). The wait costs the producer about what the writers needed anyway: the
loop's thread leaves the interpreter to them.

The callback runs at whatever point of the loop's thread allocated last (from Python 3.12: wherever the interpreter
next checks for pending work), so it keeps to what is safe there:
- nothing for a store whose buffer is in the middle of a hand-over or stock-taking there, or whose futures the
  loop's thread is reading or waiting on (it may hold a lock of one that the writer needs to go on:
  `WriteBuffer.writes_before_collections_here`);
- nothing at all while a store of that thread holds a transaction only the loop can finish (a writer waits for it);
- it waits by polling the writers' count of batches done (`BatchWriter.batches_done`), never on a lock, at most
  `MAX_WAIT` seconds in all, and not again for a writer that ran out the last wait and has done nothing since;
- an exception raised meanwhile (a Ctrl-C, a signal handler's `SystemExit`) is raised again from the event loop
  right after the collection: raised in the callback, the collector would only print it.
Collections that start on another thread (the writer's own, which Python 3.12 and later may pick), in a forked
child, or with no event loop running are left alone, and so are the steps of an incremental collector (Python 3.14)
that are not full collections.
"""

from __future__ import annotations

import asyncio
import gc
import os
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
        if _before_full_collection not in gc.callbacks:
            gc.callbacks.append(_before_full_collection)


def stop_writing_before(buffer: WriteBuffer) -> None:
    """The buffer closed: leave it alone (and leave the collector alone once no buffer is left)."""
    global _buffers
    with _registration_lock:
        _buffers = tuple(ref for ref in _buffers if ref() not in (None, buffer))
        if not _buffers and _before_full_collection in gc.callbacks:
            gc.callbacks.remove(_before_full_collection)


def _before_full_collection(phase: str, info: dict[str, Any]) -> None:
    if phase != "start" or info["generation"] != 2:
        return
    thread, pid = threading.get_ident(), os.getpid()
    buffers = [
        buffer
        for buffer in (ref() for ref in _buffers)
        if buffer is not None and buffer.writes_before_collections_here(thread, pid)
    ]
    if not buffers:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no event loop runs here (a store left open after its loop ended): nothing to wait for
        return
    try:
        _write_before_collection(buffers)
    except BaseException as error:  # raised in the callback, the collector would only print it
        loop.call_soon_threadsafe(_raise, error)


def _write_before_collection(buffers: list[WriteBuffer]) -> None:
    if any(buffer.holds_loop_transaction() for buffer in buffers):
        return
    waits: list[tuple[WriteBuffer, BatchWriter[Batch], int]] = []
    for buffer in buffers:
        handed_over: Optional[tuple[BatchWriter[Batch], int]] = buffer.hand_over_before_collection()
        if handed_over is not None:
            waits.append((buffer, *handed_over))
    deadline = time.monotonic() + MAX_WAIT
    for buffer, writer, target in waits:
        while writer.batches_done < target and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        buffer.note_wait_before_collection(writer, target)


def _raise(error: BaseException) -> None:
    raise error
