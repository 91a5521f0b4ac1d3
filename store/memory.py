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


@dataclass
class MemoryData:
    """What a store kept in Python objects holds, and how a write or a deletion changes it (memory; text recordings,
    which copy it, change the copy and save it)."""

    objects: dict[str, bytes] = field(default_factory=dict)
    events: dict[int, EventRow] = field(default_factory=dict)
    seqs_by_hash: dict[str, list[int]] = field(default_factory=dict)
    runs: dict[str, RunRecord] = field(default_factory=dict)
    last_seq: int = 0
    gc_generation: int = 0

    def copy(self) -> MemoryData:
        return MemoryData(
            dict(self.objects),
            dict(self.events),
            {key: list(seqs) for key, seqs in self.seqs_by_hash.items()},
            {run_id: run.copy() for run_id, run in self.runs.items()},
            self.last_seq,
            self.gc_generation,
        )

    def add_event(self, row: EventRow) -> int:
        """Append an event (its run created if missing); its seq."""
        self.last_seq += 1
        seq = self.last_seq
        self.events[seq] = row
        run = self.runs.get(row.run_id)
        if run is None:
            run = self.runs[row.run_id] = RunRecord(row.run_id)
        run.seqs.append(seq)
        run.event_count += 1
        if row.hash_key is not None:
            self.seqs_by_hash.setdefault(row.hash_key, []).append(seq)
        return seq

    def commit(self, write: Write) -> int:
        """Apply a write as the backend contract says (`store.backend.Write`); the gc generation it was applied
        under. Raises before changing anything."""
        if write.gc_generation is not None and write.gc_generation != self.gc_generation:
            raise GcGenerationChanged(self.gc_generation)
        deleted = write.deleted_runs(self.runs)
        if deleted:
            raise RunsDeleted(deleted)
        for hash_key, body in write.objects.items():
            self.objects.setdefault(hash_key, body)
        for event, event_key, data, link in zip(write.events, write.hash_keys, write.data, write.links, strict=True):
            self.add_event(
                EventRow(event.run_id, event.kind, event.t, event_key, event.call_id, event.parent_call_id, data, link)
            )
        for update in write.run_updates:
            self.runs[update.run_id].apply(update)
        return self.gc_generation

    def delete_run(self, run_id: str) -> bool:
        """Delete a run and its events; False if there is no such run."""
        run = self.runs.pop(run_id, None)
        if run is None:
            return False
        touched: set[str] = set()
        for seq in run.seqs:
            row = self.events.pop(seq, None)
            if row is not None and row.hash_key is not None:
                touched.add(row.hash_key)
        for hash_key in touched:
            remaining = [seq for seq in self.seqs_by_hash.get(hash_key, ()) if seq in self.events]
            if remaining:
                self.seqs_by_hash[hash_key] = remaining
            else:
                self.seqs_by_hash.pop(hash_key, None)
        return True

    def delete_objects(self, hash_keys: Sequence[str]) -> None:
        """Delete these objects (a gc): the gc generation moves on."""
        for key in hash_keys:
            self.objects.pop(key, None)
        self.gc_generation += 1


class MemoryStore(EventStore):
    """An event store in process memory. Its contents survive `aclose()`, so one instance can be written by one
    `MiniAgents` context and read by the next; they are gone with the process.

    :param batch_size: flush as soon as this many events are buffered.
    :param flush_interval: flush buffered events at least this often (seconds).
    """

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_SIZE, flush_interval: float = DEFAULT_FLUSH_INTERVAL):
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        self._data = MemoryData()

    @property
    def location(self) -> str:
        return f"memory store 0x{id(self):x}"

    async def _aopen_storage(self) -> None:
        pass

    async def _aclose_storage(self) -> None:
        pass

    async def _aregister_run(self, run_id: str) -> None:
        if run_id in self._data.runs:
            raise StoreUsageError(f"{self.location} already holds a run {run_id!r}; run ids must be unique.")
        self._data.runs[run_id] = RunRecord(run_id)

    def _commit_write(self, write: Write) -> int:
        return self._data.commit(write)

    async def _adelete_run_events(self, run_id: str) -> bool:
        return self._data.delete_run(run_id)

    async def _adelete_objects(self, hash_keys: Sequence[str]) -> None:
        self._data.delete_objects(hash_keys)

    async def _alist_runs(self, run_id: Optional[str] = None) -> list[RunInfo]:
        runs = self._data.runs
        if run_id is None:
            return [run.info() for run in runs.values()]
        run = runs.get(run_id)
        return [] if run is None else [run.info()]

    async def _aiter_event_chunks(
        self,
        run_id: Optional[str],
        after_seq: Optional[int],
        kinds: Optional[frozenset[EventKind]],
        hash_keys: Optional[Sequence[str]] = None,
    ) -> AsyncIterator[list[Event]]:
        data = self._data
        if hash_keys is not None:
            seqs = sorted(seq for key in hash_keys for seq in data.seqs_by_hash.get(key, ()) if seq in data.events)
            if run_id is not None:
                seqs = [seq for seq in seqs if data.events[seq].run_id == run_id]
        elif run_id is None:
            seqs = list(data.events)
        else:
            run = data.runs.get(run_id)
            seqs = list(run.seqs) if run is not None else []
        if after_seq is not None:
            seqs = [seq for seq in seqs if seq > after_seq]
        for start in range(0, len(seqs), _CHUNK):
            chunk: list[Event] = []
            for seq in seqs[start : start + _CHUNK]:
                row = data.events.get(seq)
                if row is not None and (kinds is None or row.kind in kinds):
                    chunk.append(row.event(seq))
            yield chunk

    async def _aload_objects(self, hash_keys: Sequence[str]) -> dict[str, bytes]:
        objects = self._data.objects
        return {key: objects[key] for key in hash_keys if key in objects}

    async def _aiter_object_chunks(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        items = list(self._data.objects.items())
        for start in range(0, len(items), _CHUNK):
            yield items[start : start + _CHUNK]

    async def _aiter_stored_chunks(self, run_id: Optional[str] = None) -> AsyncIterator[list[StoredEvent]]:
        data = self._data
        if run_id is None:
            seqs = list(data.events)
        else:
            run = data.runs.get(run_id)
            seqs = list(run.seqs) if run is not None else []
        events = data.events
        for start in range(0, len(seqs), _CHUNK):
            yield [events[seq].stored(seq) for seq in seqs[start : start + _CHUNK] if seq in events]
