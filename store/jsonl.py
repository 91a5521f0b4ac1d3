"""`JSONLStore`: the event store as one text recording (JSON Lines) meant for git, written whole and atomically."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import miniagents
from miniagents.events import Event, EventKind
from store.backend import Write
from store.base import DEFAULT_BATCH_SIZE, DEFAULT_FLUSH_INTERVAL
from store.chain import LINK_SIZE, first_link, next_link
from store.encoding import decode_data, run_update
from store.errors import (
    ForeignDatabaseError,
    StoreCorruptedError,
    StoreIntegrityError,
    StoreOpenError,
    StoreWriteError,
)
from store.format import APPLICATION, check_format
from store.jsonl_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    EventToWrite,
    ForeignFileError,
    FormatError,
    ParsedFile,
    Renderer,
    RunToWrite,
    parse,
)
from store.memory import EventRow, MemoryData, MemoryStore, RunRecord
from store.results import Problem, VerifyReport

_BROKEN_LINK = b"\x00" * LINK_SIZE
"""The link given to an event whose line (or a line above it) is not as it was written: it never matches."""


_FileIdentity = Optional[tuple[int, int, int, int]]


class JSONLStore(MemoryStore):
    """An event store in one text file (`*.jsonl`) meant to be committed next to the tests that replay it.

    The whole store is kept in memory while it is open, and every write (a batch of events, a deleted run, a gc)
    rewrites the file: a temporary file beside it, then a rename, so the file is always whole (a recording that is
    interrupted leaves the previous file as it was). One store object writes a file at a time: a file changed by
    another writer since this one read it is not overwritten (`StoreWriteError`).

    By default the file is stable: re-recording a deterministic flow writes the same bytes. Runs are numbered
    (`run-1`, ...), wall-clock times and event times are left out, streams keep their chunks but not their timing,
    and a run's events are ordered (and its calls numbered) by their position in the call tree rather than by when
    they happened, so parallel calls that finish in another order write the same file. What this store object
    wrote reads back as it was given until the store is opened again; then it reads as the file has it.

    :param path: the file (created on the first write).
    :param stable: False keeps run ids, times, timing and event order as they are (the file then changes on every
        recording).
    :param timing: keep event times and stream timing, rounded to milliseconds, so `Replay(speed=...)` can replay
        at the recorded pace (with `stable=True`).
    :param batch_size: hand events over for writing as soon as this many are buffered.
    :param flush_interval: write buffered events at least this often (seconds).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        stable: bool = True,
        timing: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ):
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        self.path = Path(path)
        self.stable = stable
        self.timing = timing
        self._renderer = Renderer(stable=stable, timing=timing)
        self._identity: _FileIdentity = None
        self._changed_runs: dict[str, dict[int, str]] = {}
        """Per run, per seq: why the event is not as it was written (see `jsonl_format.parse`)."""
        self._changed_objects: dict[str, str] = {}
        self._file_notes: list[str] = []
        self._damage: Optional[str] = None
        """What is not as written in the file as read (None: nothing); writing it again would hide that."""

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    # ------------------------------------------------------------------------------------------------- storage

    async def _aopen_storage(self) -> None:
        if self.path.is_dir():
            raise StoreOpenError(f"{self.path} is a directory, not a text recording; pass a file.", str(self.path))
        if not self.path.parent.is_dir():
            raise StoreOpenError(
                f"Cannot open {self.path}: its directory {self.path.parent} does not exist; create it first.",
                str(self.path),
            )
        try:
            data = self.path.read_bytes()
            identity = _identity(self.path)
        except FileNotFoundError:
            data, identity = b"", None
        except OSError as error:
            raise StoreOpenError(f"Cannot read {self.path}: {error.strerror or error}.", str(self.path)) from error
        self._load(self._parse(data))
        self._identity = identity

    def _parse(self, data: bytes) -> ParsedFile:
        location = str(self.path)

        def foreign() -> ForeignDatabaseError:
            return ForeignDatabaseError(
                f"{location} is not a miniagents text recording (its first line is not a {FORMAT_NAME!r} header); "
                "it was left untouched. Pass another path, or remove the file.",
                location,
            )

        def check_header(header: dict[str, Any]) -> None:
            entries = {
                "application": APPLICATION,
                "schema_version": str(header["version"]),
                # recordings written before the header named them: canonical form 1, blake3
                "canonical_form_version": str(header.get("canonical_form", 1)),
                "hash_algorithm": str(header.get("hash", "blake3")),
            }
            check_format(
                entries,
                location=location,
                newest_schema=FORMAT_VERSION,
                foreign=foreign,
                schema="text recording format version",
            )

        try:
            return parse(data, location, check_header)
        except ForeignFileError:
            raise foreign() from None
        except FormatError as error:
            raise StoreCorruptedError(
                f"{location}, line {error.line}: {error.message}. The file is not as it was written (edited by hand, "
                "or merged badly: look for conflict markers there); restore it from version control, or delete it "
                "and record it again.",
                location,
            ) from None

    def _load(self, parsed: ParsedFile) -> None:
        state = MemoryData()
        for obj in parsed.objects:
            state.objects.setdefault(obj.hash_key, obj.body)
        changed_runs: dict[str, dict[int, str]] = {}
        for index, read_run in enumerate(parsed.runs):
            run = state.runs[read_run.run_id] = RunRecord(read_run.run_id)
            link = first_link(read_run.run_id)
            for event in read_run.events:
                link = next_link(
                    link, event.kind, event.t, event.hash_key, event.call_id, event.parent_call_id, event.data
                )
                stored_link = link if event.changed_note is None else _BROKEN_LINK
                seq = state.add_event(
                    EventRow(
                        run.run_id,
                        event.kind,
                        event.t,
                        event.hash_key,
                        event.call_id,
                        event.parent_call_id,
                        event.data,
                        stored_link,
                    )
                )
                if event.changed_note is not None:
                    changed_runs.setdefault(run.run_id, {})[seq] = event.changed_note
                if event.kind is EventKind.RUN_STARTED or event.kind is EventKind.RUN_FINISHED:
                    update = run_update(
                        Event(event.kind, run.run_id, event.t, event.hash_key, data=decode_data(event.data)),
                        event.data,
                        read_run.finished_at,
                    )
                    if update is not None:
                        run.apply(update)
            run.event_count = read_run.event_count
            if index in parsed.runs_missing_last_events and run.event_count <= len(run.seqs):
                run.event_count = len(run.seqs) + 1  # its count was changed too: the removed events still show
        self._data = state
        self._renderer = Renderer(stable=self.stable, timing=self.timing)
        self._changed_runs = changed_runs
        self._changed_objects = dict(parsed.changed_objects)
        self._file_notes = list(parsed.file_notes)
        self._damage = None
        if not parsed.is_intact:
            first = [f"line {line}" for line in parsed.changed_lines[:1]] + [
                f"lines removed before line {line}" for line in parsed.removed_before[:1]
            ]
            self._damage = (
                f"{self.path} is not as it was written ({', '.join(first) or 'its header'}; `await store.averify()` "
                "lists what changed)"
            )

    async def _aclose_storage(self) -> None:
        pass

    def _refuse_writing_if_damaged(self, error: type[Exception] = StoreCorruptedError) -> None:
        if self._damage is not None:
            message = (
                f"{self._damage}, so it is not written again (that would hide the change); restore it from version "
                "control, or delete it and record it again."
            )
            raise error(message, str(self.path))

    def _save(self, state: MemoryData, forgotten: Sequence[str] = ()) -> None:
        """Write `state` into the file (a temporary file, then a rename) and keep it; raise `StoreWriteError`."""
        path = self.path
        try:
            current = _identity(path)
        except FileNotFoundError:
            current = None
        except OSError as error:
            raise StoreWriteError(f"Cannot write {path}: {error.strerror or error}.", str(path)) from error
        if current != self._identity:
            raise StoreWriteError(
                f"{path} was changed by another writer (another process, or another store object) since this store "
                "read it, so it is not overwritten: a text recording has one writer at a time. Record into it from "
                "one process, or use a SQLiteStore for concurrent writers.",
                str(path),
            )
        content = self._renderer.render(self._runs_to_write(state), state.objects, miniagents.__version__)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temporary, "xb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            self._identity = _identity(path)
        except OSError as error:
            try:
                temporary.unlink()
            except OSError:
                pass
            raise StoreWriteError(
                f"Cannot write {path}: {error.strerror or error}; nothing was written, the file is as it was.",
                str(path),
            ) from error
        self._renderer.forget(forgotten)
        self._data = state

    @staticmethod
    def _runs_to_write(state: MemoryData) -> list[RunToWrite]:
        runs: list[RunToWrite] = []
        for run in state.runs.values():
            events = [
                EventToWrite(row.kind, row.t, row.hash_key, row.call_id, row.parent_call_id, row.data)
                for row in (state.events[seq] for seq in run.seqs)
            ]
            runs.append(RunToWrite(run.run_id, events, run.finished_at))
        return runs

    # --------------------------------------------------------------------------------------------------- writing

    async def _aregister_run(self, run_id: str) -> None:
        self._refuse_writing_if_damaged()
        await super()._aregister_run(run_id)

    def _commit_write(self, write: Write) -> int:
        self._refuse_writing_if_damaged(StoreWriteError)
        state = self._data.copy()
        generation = state.commit(write)
        self._save(state)
        return generation

    async def _adelete_run_events(self, run_id: str) -> bool:
        if run_id not in self._data.runs:
            return False
        self._refuse_writing_if_damaged()
        state = self._data.copy()
        state.delete_run(run_id)
        self._save(state)
        self._changed_runs.pop(run_id, None)
        return True

    async def _adelete_objects(self, hash_keys: Sequence[str]) -> None:
        self._refuse_writing_if_damaged()
        state = self._data.copy()
        state.delete_objects(hash_keys)
        self._save(state, hash_keys)

    # --------------------------------------------------------------------------------------------------- reading

    async def _aload_objects(self, hash_keys: Sequence[str]) -> dict[str, bytes]:
        for key in hash_keys:
            note = self._changed_objects.get(key)
            if note is not None:
                raise StoreIntegrityError(
                    f"Object {key} in {self.location} is not as it was written: {note}; restore the file from "
                    "version control, or record it again.",
                    key,
                )
        return await super()._aload_objects(hash_keys)

    # ------------------------------------------------------------------------------------------------- integrity

    async def _acheck_storage(self) -> list[Problem]:
        problems = [
            Problem("hash_mismatch", f"Object {key} is not as it was written: {note}.", hash_key=key)
            for key, note in self._changed_objects.items()
            if key in self._data.objects
        ]
        problems.extend(Problem("storage", note) for note in self._file_notes)
        return problems

    async def averify(self) -> VerifyReport:
        return self._name_changed_lines(await super().averify())

    async def averify_run(self, run_id: str, *, payloads: bool = True) -> VerifyReport:
        return self._name_changed_lines(await super().averify_run(run_id, payloads=payloads))

    def _name_changed_lines(self, report: VerifyReport) -> VerifyReport:
        """Say which line of the file is not as written for each changed event found by its (computed) link."""
        for index, problem in enumerate(report.problems):
            if problem.kind != "changed_event" or problem.run_id is None or problem.seq is None:
                continue
            note = self._changed_runs.get(problem.run_id, {}).get(problem.seq)
            row = self._data.events.get(problem.seq)
            if note is None or row is None:
                continue
            report.problems[index] = dataclasses.replace(
                problem,
                message=f"Event {problem.seq} of run {problem.run_id!r} ({row.kind.value}) is not as it was written: "
                f"{note} (by hand, or by a merge).",
            )
        return report


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What tells one version of the file from another (inode, size, modification time, change time)."""
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns
