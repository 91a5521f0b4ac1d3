"""The backend contract: what a storage (memory, SQLite, a text file, PostgreSQL) implements under `EventStore`.

A backend is a subclass of `EventStore` that implements the abstract members below and nothing else of the
store's behaviour: buffering, encoding, redaction, the hash chain, gc bookkeeping, backpressure, verification and
the public API live in the base. Writing, a backend receives a `Write` that is complete: every object to store, the
runs whose rows it may have to create, what to set on runs, and the gc generation the write counts on. It either
commits all of it in one transaction or raises, and it never calls back into the base.

Where writes run is the backend's choice (`EventStore._aopen_batch_writer`): right away in the caller's thread (in
memory), on a thread of its own with a blocking driver (`_commit_write`), or on the event loop with an async driver
(`_acommit_write`, with `store.writer.LoopBatchWriter`). Every backend checks the stored format with the one policy
of `store.format.check_format` as it opens, before it reads or changes anything; the shipped behaviour suite
(`store.testing.StoreConformance`) checks that it does, and everything else above.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Container, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Optional

from miniagents.events import Event, EventKind
from store.chain import StoredEvent
from store.encoding import RunUpdate
from store.results import Problem, RunInfo


@dataclass
class Write:
    """One atomic write, resolved by the base: a backend stores exactly this, in one transaction.

    The per-event lists are parallel to `events` (whose `run_id`, `kind`, `t`, `call_id` and `parent_call_id` are
    stored as they are); the events get the next sequence numbers, in order.
    """

    events: Sequence[Event]
    hash_keys: Sequence[Optional[str]]
    """Per event: its hash key (None for an event without one)."""
    data: Sequence[Optional[bytes]]
    """Per event: its data as stored (JSON, redacted), or None."""
    links: Sequence[bytes]
    """Per event: its link in its run's hash chain (`store.chain`)."""
    objects: dict[str, bytes]
    """Hash key -> canonical bytes: store each one that is not stored yet (insert if missing)."""
    counts: dict[str, int]
    """Events per run in this write: add each to its run's event count."""
    new_runs: frozenset[str]
    """Runs of these events that this store object did not register (`_aregister_run`): create their rows if
    missing. Any other run of the write must have its row; if one is gone (deleted while running), raise
    `RunsDeleted` naming every such run, writing nothing."""
    run_updates: Sequence[RunUpdate]
    """Fields to set on runs, in order, after their rows exist."""
    gc_generation: Optional[int]
    """The store's gc generation that `objects` counts on (it leaves out objects this store object wrote under that
    generation). In the transaction, compare it with the stored generation: if it is not None and differs, raise
    `GcGenerationChanged` with the stored one, writing nothing (the base brings every object again)."""

    def __len__(self) -> int:
        return len(self.events)

    def deleted_runs(self, stored_runs: Container[str]) -> list[str]:
        """The registered runs of this write that are not among `stored_runs` (the runs with a row): what
        `RunsDeleted` names."""
        return [run_id for run_id in self.counts if run_id not in stored_runs and run_id not in self.new_runs]


class GcGenerationChanged(Exception):
    """Raised by a backend's commit: a gc ran since the write was resolved; nothing was written."""

    def __init__(self, generation: int) -> None:
        super().__init__(f"the store's gc generation is now {generation}")
        self.generation = generation


class RunsDeleted(Exception):
    """Raised by a backend's commit: these registered runs have no row any more; nothing was written."""

    def __init__(self, run_ids: Sequence[str]) -> None:
        super().__init__(", ".join(map(repr, run_ids)))
        self.run_ids = list(run_ids)


class Backend(abc.ABC):
    """The members a storage implements (see the module docstring)."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the store keeps its data (a path, or a description), for messages."""

    @abc.abstractmethod
    async def _aopen_storage(self) -> None:
        """Open (and if needed create or migrate) the storage, its format checked with `check_format`; raise a
        `StoreOpenError` naming the location."""

    @abc.abstractmethod
    async def _aclose_storage(self) -> None:
        """Release what `_aopen_storage` acquired."""

    @abc.abstractmethod
    async def _aregister_run(self, run_id: str) -> None:
        """Record a new run as running; raise `StoreUsageError` if a run with this id is already stored."""

    def _commit_write(self, write: Write) -> int:
        """Commit `write` atomically on the batch writer's thread and return the gc generation it was committed
        under; raise `StoreWriteError` (or `GcGenerationChanged` / `RunsDeleted`, see `Write`). A backend that
        writes from the event loop implements `_acommit_write` instead."""
        raise NotImplementedError(f"{type(self).__name__} commits writes with `_acommit_write`.")

    async def _acommit_write(self, write: Write) -> int:
        """`_commit_write`, for a backend whose driver is async (used by `LoopBatchWriter`)."""
        raise NotImplementedError(f"{type(self).__name__} commits writes with `_commit_write`.")

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
    def _aiter_stored_chunks(self, run_id: Optional[str] = None) -> AsyncIterator[list[StoredEvent]]:
        """Every stored event (of one run, or of all) as stored, data and link included, in `seq` order, in
        chunks."""

    @abc.abstractmethod
    async def _aload_objects(self, hash_keys: Sequence[str]) -> dict[str, bytes]:
        """The stored bytes of those of `hash_keys` that are stored."""

    @abc.abstractmethod
    def _aiter_object_chunks(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every stored (hash key, bytes), in chunks."""

    @abc.abstractmethod
    async def _adelete_run_events(self, run_id: str) -> bool:
        """Delete a run and its events; False if there is no such run."""

    @abc.abstractmethod
    async def _adelete_objects(self, hash_keys: Sequence[str]) -> None:
        """Delete these objects and increment the store's gc generation (called by `agc`, inside `_amaintenance`)."""

    # optional

    def _amaintenance(self) -> AbstractAsyncContextManager[None]:
        """Wrap a maintenance operation (gc) so that it sees and changes the store atomically."""
        return nullcontext()

    def _aread_snapshot(self) -> AbstractAsyncContextManager[None]:
        """Wrap reads (of the task that enters it) that must all see the store at one moment (`averify`), while
        others go on writing."""
        return nullcontext()

    async def _acheck_storage(self) -> list[Problem]:
        """Problems of the storage itself (e.g. a damaged file), found by the backend."""
        return []

    async def _arun_written(self, run_id: str) -> None:
        """Every event of a finished run is written (called by `afinish_run` while the store stays open): a backend
        that holds something for a running run (a lock other processes see) lets it go."""
        return None

    async def _ais_abandoned(self, run_id: str) -> bool:
        """Whether a run marked running was abandoned (its process died, so nothing will write it again) and may be
        deleted without `force`: a backend that can tell (a lock its writer holds) says so."""
        return False

    @property
    def _events_have_links(self) -> bool:
        """Whether the stored events carry links to check (a store written before links existed, read where it
        cannot be migrated, has none: its events are read unverified)."""
        return True

    def _holds_loop_transaction(self) -> bool:
        """Whether this store has a write transaction open that only the event loop can finish (a backend that
        writes some transactions from the loop says so: backpressure must not block the loop then)."""
        return False
