"""`MemoryStore`: the event store kept in process memory (tests, short-lived tools)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

from miniagents.events import Event, EventKind
from store.backend import GcGenerationChanged, RunsDeleted, Write
from store.base import DEFAULT_BATCH_SIZE, DEFAULT_FLUSH_INTERVAL, EventStore
from store.chain import StoredEvent
from store.encoding import RunUpdate, decode_data, decode_run_error
from store.errors import StoreUsageError
from store.results import RunInfo, RunStatus

_CHUNK = 2_000


@dataclass
class RunRecord:
    """A run as a backend that keeps runs in Python objects holds it (memory, text recordings)."""

    run_id: str
    status: str = RunStatus.RUNNING
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    library_version: Optional[str] = None
    metadata: Optional[bytes] = None
    error: Optional[bytes] = None
    seqs: list[int] = field(default_factory=list)
    event_count: int = 0
    """How many events were written for the run (kept apart from `seqs`, as a file keeps it apart from its rows)."""

    def info(self) -> RunInfo:
        return RunInfo(
            run_id=self.run_id,
            status=self.status,
            started_at=self.started_at,
            finished_at=self.finished_at,
            library_version=self.library_version,
            metadata=decode_data(self.metadata) or {},
            error=decode_run_error(self.error),
            event_count=self.event_count,
        )

    def copy(self) -> RunRecord:
        return dataclasses.replace(self, seqs=list(self.seqs))

    def apply(self, update: RunUpdate) -> None:
        """What a written `run_started` / `run_finished` event sets on the run."""
        for name, value in update.fields.items():
            setattr(self, name, value)


@dataclass(slots=True)
class EventRow:
    """An event as such a backend holds it: its fields as stored, and its link."""

    run_id: str
    kind: EventKind
    t: float
    hash_key: Optional[str]
    call_id: Optional[int]
    parent_call_id: Optional[int]
    data: Optional[bytes]
    link: bytes

    def stored(self, seq: int) -> StoredEvent:
        return StoredEvent(
            seq, self.run_id, self.kind, self.t, self.hash_key, self.call_id, self.parent_call_id, self.data, self.link
        )

    def event(self, seq: int) -> Event:
        return Event(
            kind=self.kind,
            run_id=self.run_id,
            t=self.t,
            hash_key=self.hash_key,
            call_id=self.call_id,
            parent_call_id=self.parent_call_id,
            data=decode_data(self.data),
            seq=seq,
        )


class MemoryStore(EventStore):
    """An event store in process memory. Its contents survive `aclose()`, so one instance can be written by one
    `MiniAgents` context and read by the next; they are gone with the process.

    :param batch_size: flush as soon as this many events are buffered.
    :param flush_interval: flush buffered events at least this often (seconds).
    """

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_SIZE, flush_interval: float = DEFAULT_FLUSH_INTERVAL):
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        self._objects: dict[str, bytes] = {}
        self._events: dict[int, EventRow] = {}
        self._seqs_by_hash: dict[str, list[int]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._last_seq = 0
        self._gc_generation = 0

    @property
    def location(self) -> str:
        return f"memory store 0x{id(self):x}"

    async def _aopen_storage(self) -> None:
        pass

    async def _aclose_storage(self) -> None:
        pass

    async def _aregister_run(self, run_id: str) -> None:
        if run_id in self._runs:
            raise StoreUsageError(f"{self.location} already holds a run {run_id!r}; run ids must be unique.")
        self._runs[run_id] = RunRecord(run_id)

    def _commit_write(self, write: Write) -> int:
        if write.gc_generation is not None and write.gc_generation != self._gc_generation:
            raise GcGenerationChanged(self._gc_generation)
        runs = self._runs
        deleted = [run_id for run_id in write.counts if run_id not in runs and run_id not in write.new_runs]
        if deleted:
            raise RunsDeleted(deleted)
        for hash_key, body in write.objects.items():
            self._objects.setdefault(hash_key, body)
        seq = self._last_seq
        for event, event_key, data, link in zip(write.events, write.hash_keys, write.data, write.links, strict=True):
            seq += 1
            self._events[seq] = EventRow(
                event.run_id, event.kind, event.t, event_key, event.call_id, event.parent_call_id, data, link
            )
            run = runs.get(event.run_id)
            if run is None:
                run = runs[event.run_id] = RunRecord(event.run_id)
            run.seqs.append(seq)
            run.event_count += 1
            if event_key is not None:
                self._seqs_by_hash.setdefault(event_key, []).append(seq)
        self._last_seq = seq
        for update in write.run_updates:
            runs[update.run_id].apply(update)
        return self._gc_generation

    async def _alist_runs(self, run_id: Optional[str] = None) -> list[RunInfo]:
        if run_id is None:
            return [run.info() for run in self._runs.values()]
        run = self._runs.get(run_id)
        return [] if run is None else [run.info()]

    async def _aiter_event_chunks(
        self,
        run_id: Optional[str],
        after_seq: Optional[int],
        kinds: Optional[frozenset[EventKind]],
        hash_keys: Optional[Sequence[str]] = None,
    ) -> AsyncIterator[list[Event]]:
        if hash_keys is not None:
            seqs = sorted(seq for key in hash_keys for seq in self._seqs_by_hash.get(key, ()) if seq in self._events)
            if run_id is not None:
                seqs = [seq for seq in seqs if self._events[seq].run_id == run_id]
        elif run_id is None:
            seqs = list(self._events)
        else:
            run = self._runs.get(run_id)
            seqs = list(run.seqs) if run is not None else []
        if after_seq is not None:
            seqs = [seq for seq in seqs if seq > after_seq]
        for start in range(0, len(seqs), _CHUNK):
            chunk: list[Event] = []
            for seq in seqs[start : start + _CHUNK]:
                row = self._events.get(seq)
                if row is not None and (kinds is None or row.kind in kinds):
                    chunk.append(row.event(seq))
            yield chunk

    async def _aload_objects(self, hash_keys: Sequence[str]) -> dict[str, bytes]:
        objects = self._objects
        return {key: objects[key] for key in hash_keys if key in objects}

    async def _aiter_object_chunks(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        items = list(self._objects.items())
        for start in range(0, len(items), _CHUNK):
            yield items[start : start + _CHUNK]

    async def _aiter_stored_chunks(self, run_id: Optional[str] = None) -> AsyncIterator[list[StoredEvent]]:
        if run_id is None:
            seqs = list(self._events)
        else:
            run = self._runs.get(run_id)
            seqs = list(run.seqs) if run is not None else []
        events = self._events
        for start in range(0, len(seqs), _CHUNK):
            yield [events[seq].stored(seq) for seq in seqs[start : start + _CHUNK] if seq in events]

    async def _adelete_run_events(self, run_id: str) -> bool:
        run = self._runs.pop(run_id, None)
        if run is None:
            return False
        touched: set[str] = set()
        for seq in run.seqs:
            row = self._events.pop(seq, None)
            if row is not None and row.hash_key is not None:
                touched.add(row.hash_key)
        for hash_key in touched:
            remaining = [seq for seq in self._seqs_by_hash.get(hash_key, ()) if seq in self._events]
            if remaining:
                self._seqs_by_hash[hash_key] = remaining
            else:
                self._seqs_by_hash.pop(hash_key, None)
        return True

    async def _adelete_objects(self, hash_keys: Sequence[str]) -> None:
        for key in hash_keys:
            self._objects.pop(key, None)
        self._gc_generation += 1
