"""A backend that commits on the event loop, as one with an async driver does (`_acommit_write` through a
`LoopBatchWriter`), against the whole conformance suite."""

from __future__ import annotations

import asyncio

import test_memory_store

from store.backend import Write
from store.buffer import Batch
from store.memory import MemoryStore
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
