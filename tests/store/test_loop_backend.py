"""A backend that commits on the event loop, as one with an async driver does (`_acommit_write` through a
`LoopBatchWriter`), against the whole conformance suite."""

from __future__ import annotations

import asyncio

import pytest
import test_memory_store

from miniagents import Message
from store import StoreWriteError
from store.backend import Write
from store.buffer import Batch
from store.memory import MemoryStore
from store.testing import message_event
from store.writer import BatchWriter, LoopBatchWriter


class LoopMemoryStore(MemoryStore):
    """`MemoryStore`, its writes committed on the event loop, each after a pause in which other tasks run (as while
    an async driver waits for its database)."""

    async def _aopen_batch_writer(self) -> BatchWriter[Batch]:
        return LoopBatchWriter(self._awrite_handed_over, name=f"loop writer {self.location}", max_events=20_000)

    def _commit_write(self, write: Write) -> int:
        raise AssertionError("a store that commits on the event loop never commits from a thread")

    async def _acommit_write(self, write: Write) -> int:
        await asyncio.sleep(0)
        return MemoryStore._commit_write(self, write)


class TestLoopMemoryStore(test_memory_store.TestMemoryStore):
    def make_store(self, **options: object) -> LoopMemoryStore:
        return LoopMemoryStore(**options)  # type: ignore[arg-type]


class SlowLoopMemoryStore(LoopMemoryStore):
    """Commits that take a while, and a record of commits that came after the storage closed."""

    storage_closed = False
    committed_after_close = 0

    async def _aclose_storage(self) -> None:
        self.storage_closed = True

    async def _acommit_write(self, write: Write) -> int:
        await asyncio.sleep(0.05)
        if self.storage_closed:
            self.committed_after_close += len(write)
        return MemoryStore._commit_write(self, write)


async def test_events_handed_over_while_a_close_flushes_are_written_before_the_storage_closes() -> None:
    store = SlowLoopMemoryStore(batch_size=1, flush_interval=60)
    await store.aopen()
    store.append(message_event("run", Message(text="first")))

    async def alate_producer() -> None:
        await asyncio.sleep(0.02)  # while the closing flush waits for the first commit
        store.append(message_event("run", Message(text="late")))

    producer = asyncio.ensure_future(alate_producer())
    await store.aclose()  # neither event is reported lost
    await producer
    assert store.committed_after_close == 0
    assert len(store._data.events) == 2


class DriverCancelledStore(LoopMemoryStore):
    """The first commit fails with the `CancelledError` an async driver raises when something else cancelled a
    future it awaited (a pool closing the connection): the writer's own task is not being cancelled."""

    failed = False

    async def _acommit_write(self, write: Write) -> int:
        await asyncio.sleep(0)
        if not self.failed:
            self.failed = True
            raise asyncio.CancelledError()
        return MemoryStore._commit_write(self, write)


async def test_a_drivers_cancelled_error_is_a_failed_write_and_the_writer_goes_on() -> None:
    store = await DriverCancelledStore(flush_interval=60).aopen()
    store.append(message_event("run", Message(text="x")))
    with pytest.raises(StoreWriteError, match="CancelledError"):
        await store.aflush()
    await asyncio.wait_for(store.aflush(), 5)  # retried and written, not waiting for a writer that is gone
    await asyncio.wait_for(store.aclose(), 5)
    assert len(store._data.events) == 1
