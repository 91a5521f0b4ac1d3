"""The text recording format of `JSONLStore`: one UTF-8 JSON Lines file, rendered from runs and objects and read back.

```
{"format":"miniagents-recording","version":1,"canonical_form":1,"hash":"blake3","library":"0.1.0","root":"<40 hex>"...}
{"run":"run-1","events":14}
{"event":"run_started","data":{"started_at":null,"library_version":"0.1.0","metadata":{}}}
{"@":1,"class_":"Message","text":"in five words","text_template":null}
{"event":"message","hash":"@1"}
{"@":2,"class_":"Message","text":"@+2","text_template":null}
"A long text is split after each line and sentence, "
"so that a changed sentence is a changed line."
{"event":"call_finished","hash":"@5","call":1,"data":{...,"reply_node":"@6","replies":[{"hash":"@2","chunks":"@stream",...}]}}
```

- Objects (`{"@": n, ...}`, `"@64"` for a 64-character hash key) are numbered in file order; each is written once,
  just before the first line that uses it, after the objects it references. Inside objects and event data, a hash
  key of an object written above is `"@n"`; a string that starts with `@` is written with one more `@`; `"@+k"`
  is a text continued on the next `k` lines (JSON strings), and `"chunks":"@stream"` in a reply stands for the
  chunks of the run's `stream` event of that message. Hash keys are recomputed when the file is read: an object's
  bytes are its fields (references back to hash keys) encoded canonically. An object whose canonical bytes do not
  come back that way (nesting beyond what JSON parsers take) is kept whole: `{"@": n, "@raw": "<canonical JSON>"}`.
- Each run starts with its run line; its events follow in order.
- The header names the format and its version, the canonical form and hash algorithm of the objects (the store's
  format entries, checked by `store.format.check_format`; recordings written before the header held the last two
  are of canonical form 1 and blake3), the root hash (blake3 of every line after the header) and a 3-byte check of
  every one of those lines (base64, 4 characters a line), so a changed, added or removed line is found and named.

`Renderer.render()` writes a file; stable rendering (the default of `JSONLStore`) numbers the runs (`run-1`, ...),
leaves out wall-clock times, event times and stream timing (or rounds them to milliseconds with `timing=True`),
numbers the calls of a run and orders its events by their position in the call tree, so re-recording a
deterministic flow gives the same bytes. `parse()` reads a file back, naming the line of anything that is not as
it was written.
"""

from __future__ import annotations

import base64
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson
from blake3 import blake3

from miniagents.events import EventKind
from miniagents.promising.ext.frozen import CANONICAL_FORM_VERSION, HASH_ALGORITHM
from store.decoding import body_references, find_hash_keys, is_hash_key

FORMAT_NAME = "miniagents-recording"
FORMAT_VERSION = 1
CHECK_SIZE = 3
"""Bytes of the check of one line (written as 4 base64 characters)."""
ROOT_LENGTH = 40
_SPLIT_LENGTH = 80
"""Texts longer than this, or with more than one line, are written one line (and one long line's sentence) a line."""
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002]+[\"'\u201d\u2019)\]]*\s+")
_TIME_DIGITS = 3
_LAST = 1 << 62
_RUN_START, _RUN_BODY, _RUN_END = 0, 1, 2


class FormatError(Exception):
    """A line of a text recording that cannot be read; `line` is its 1-based number in the file."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class ForeignFileError(Exception):
    """The file is not a text recording."""


# ------------------------------------------------------------------------------------------------------- writing


@dataclass
class RunToWrite:
    """One run as a store holds it."""

    run_id: str
    events: list[EventToWrite]
    finished_at: Optional[float] = None


@dataclass
class EventToWrite:
    """One event as a store holds it (`data`: stored JSON)."""

    kind: EventKind
    t: float
    hash_key: Optional[str]
    call_id: Optional[int]
    parent_call_id: Optional[int]
    data: Optional[bytes]


@dataclass
class _Forms:
    """What the renderer learned about each object (kept between renderings by the store)."""

    raw: dict[str, bool] = field(default_factory=dict)
    """Per hash key: whether the object is kept whole (its fields do not come back to its canonical bytes)."""
    references: dict[str, list[str]] = field(default_factory=dict)


class Renderer:
    """Renders a store's runs and objects into the bytes of a text recording (remembering what it learned about
    each object for the next rendering)."""

    def __init__(self, *, stable: bool = True, timing: bool = False) -> None:
        self.stable = stable
        self.timing = timing
        self._forms = _Forms()

    def forget(self, hash_keys: Sequence[str]) -> None:
        """Drop what is known of objects that were deleted."""
        for key in hash_keys:
            self._forms.raw.pop(key, None)
            self._forms.references.pop(key, None)

    def render(self, runs: Sequence[RunToWrite], objects: Mapping[str, bytes], library_version: str) -> bytes:
        """The whole file."""
        writer = _FileWriter(objects, self._forms)
        for index, run in enumerate(runs, 1):
            events = run.events
            run_id = run.run_id
            if self.stable:
                run_id = f"run-{index}"
                events = _in_call_tree_order(events)
            run_line: dict[str, Any] = {"run": run_id, "events": len(events)}
            if not self.stable and run.finished_at is not None:
                run_line["finished_at"] = run.finished_at
            writer.lines.append(orjson.dumps(run_line))
            streams = _first_stream_chunks(events)
            for event in events:
                writer.write_event(event, self._event_data(event, streams), self._event_time(event))
        for key in sorted(objects):  # objects no run uses (until `agc()` collects them)
            writer.write_object(key)
        body = b"".join(line + b"\n" for line in writer.lines)
        checks = b"".join(line_check(line) for line in writer.lines)
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "canonical_form": CANONICAL_FORM_VERSION,
            "hash": HASH_ALGORITHM,
            "library": library_version,
            "root": root_hash(body),
            "lines": base64.b64encode(checks).decode(),
        }
        return orjson.dumps(header) + b"\n" + body

    def _event_time(self, event: EventToWrite) -> Optional[float]:
        if not self.stable:
            return event.t
        if self.timing:
            return round(event.t, _TIME_DIGITS)
        return None

    def _event_data(self, event: EventToWrite, streams: Mapping[str, list[Any]]) -> Any:
        """The event's data as written (None: none), with timing taken out and reply chunks shared with the stream."""
        if event.data is None:
            return None
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return _RawData(event.data)
        if not isinstance(data, dict):
            return data
        kind = event.kind
        if self.stable:
            if kind is EventKind.RUN_STARTED and "started_at" in data:
                data["started_at"] = None
            elif kind is EventKind.STREAM or kind is EventKind.ERROR:
                self._retime(data)
        if kind is EventKind.CALL_FINISHED and isinstance(data.get("replies"), list):
            for reply in data["replies"]:
                if not isinstance(reply, dict):
                    continue
                if self.stable:
                    self._retime(reply)
                    if isinstance(reply.get("failed"), dict):
                        self._retime(reply["failed"])
                chunks = reply.get("chunks")
                if isinstance(chunks, list) and chunks and streams.get(str(reply.get("hash"))) == chunks:
                    reply["chunks"] = _STREAM
        return data

    def _retime(self, data: dict[str, Any]) -> None:
        offsets = data.get("offsets")
        if offsets is None:
            return
        if self.timing and isinstance(offsets, list) and all(_is_number(item) for item in offsets):
            data["offsets"] = [round(item, _TIME_DIGITS) for item in offsets]
        else:
            data["offsets"] = []


class _RawData:
    """Event data that is not JSON (kept as its text)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


_STREAM_CHUNKS = "@stream"
"""Written instead of a reply's chunks when they are those of the run's stream event of the message."""


class _StreamChunks:
    """A reply's chunks that are those of the run's stream event of its message (written as `"@stream"`)."""


_STREAM = _StreamChunks()


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_stream_chunks(events: Sequence[EventToWrite]) -> dict[str, list[Any]]:
    """Per message hash key: the chunks of the run's first stream event of it."""
    found: dict[str, list[Any]] = {}
    for event in events:
        if event.kind is EventKind.STREAM and event.hash_key is not None and event.hash_key not in found:
            try:
                data = orjson.loads(event.data) if event.data is not None else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict) and isinstance(data.get("chunks"), list):
                found[event.hash_key] = data["chunks"]
    return found


def _position_path(data: Optional[bytes]) -> Optional[tuple[int, ...]]:
    if data is None or b'"position"' not in data:
        return None
    try:
        position = orjson.loads(data).get("position")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(position, str) or not re.fullmatch(r"\d+(\.\d+)*", position):
        return None
    return tuple(int(part) for part in position.split("."))


def _in_call_tree_order(events: Sequence[EventToWrite]) -> list[EventToWrite]:
    """A run's events ordered by the position of their calls in the call tree, not by when they arrived: the run's
    start, events outside any call, then each call (its start, its calls, its own messages, its end), and the
    run's end. When every call has a position, calls are numbered in that order too."""
    paths: dict[int, tuple[int, ...]] = {}
    call_ids: set[int] = set()
    for event in events:
        for call_id in (event.call_id, event.parent_call_id):
            if call_id is not None:
                call_ids.add(call_id)
        if (
            event.kind in (EventKind.CALL_STARTED, EventKind.CALL_FINISHED)
            and event.call_id is not None
            and event.call_id not in paths
        ):
            path = _position_path(event.data)
            if path is not None:
                paths[event.call_id] = path

    def order(item: tuple[int, EventToWrite]) -> tuple[int, tuple[int, ...], int]:
        index, event = item
        if event.kind is EventKind.RUN_STARTED:
            return _RUN_START, (), index
        if event.kind is EventKind.RUN_FINISHED:
            return _RUN_END, (), index
        path = paths.get(event.call_id) if event.call_id is not None else None
        if path is None:
            return _RUN_BODY, (-1,), index
        if event.kind is EventKind.CALL_STARTED:
            return _RUN_BODY, (*path, -1), index
        if event.kind is EventKind.CALL_FINISHED:
            return _RUN_BODY, (*path, _LAST), index
        return _RUN_BODY, (*path, _LAST - 1), index

    ordered = [event for _, event in sorted(enumerate(events), key=order)]
    if not call_ids or not call_ids <= paths.keys():
        return ordered
    numbers = {call_id: number for number, call_id in enumerate(sorted(paths, key=paths.__getitem__), 1)}
    return [
        EventToWrite(
            event.kind,
            event.t,
            event.hash_key,
            numbers[event.call_id] if event.call_id is not None else None,
            numbers[event.parent_call_id] if event.parent_call_id is not None else None,
            event.data,
        )
        for event in ordered
    ]


class _FileWriter:
    """The lines of one rendering: objects numbered as they are written, events referring to them."""

    def __init__(self, objects: Mapping[str, bytes], forms: _Forms) -> None:
        self.objects = objects
        self.forms = forms
        self.numbers: dict[str, int] = {}
        self.lines: list[bytes] = []

    def write_event(self, event: EventToWrite, data: Any, t: Optional[float]) -> None:
        wanted: list[str] = []
        if event.hash_key is not None:
            wanted.append(event.hash_key)
        if not isinstance(data, _RawData):  # what the data names (a sub-message's parent too) is written above it
            wanted.extend(find_hash_keys(data))
        for key in wanted:
            self.write_object(key)
        line: dict[str, Any] = {"event": event.kind.value}
        if event.hash_key is not None:
            line["hash"] = self._reference(event.hash_key)
        if event.call_id is not None:
            line["call"] = event.call_id
        if event.parent_call_id is not None:
            line["parent"] = event.parent_call_id
        if isinstance(data, _RawData):
            line["raw"] = data.data.decode("utf-8", "replace")
        elif event.data is not None:
            line["data"] = encode_value(data, self.numbers, None)
        if t is not None:
            line["t"] = t
        self.lines.append(orjson.dumps(line))

    def _reference(self, key: str) -> str:
        number = self.numbers.get(key)
        return key if number is None else f"@{number}"

    def write_object(self, key: str) -> None:
        """Write the object (after the objects it references) unless it is written already or not stored."""
        if key in self.numbers or key not in self.objects:
            return
        stack: list[tuple[str, bool]] = [(key, False)]
        while stack:
            current, expanded = stack.pop()
            if current in self.numbers:
                continue
            body = self.objects[current]
            if expanded:
                number = self.numbers[current] = len(self.numbers) + 1
                self.lines.extend(self._object_lines(number, current, body))
                continue
            stack.append((current, True))
            for ref in reversed(self._references(current, body)):
                if ref not in self.numbers and ref in self.objects:
                    stack.append((ref, False))

    def _references(self, key: str, body: bytes) -> list[str]:
        refs = self.forms.references.get(key)
        if refs is None:
            try:
                refs = body_references(body)
            except orjson.JSONDecodeError:
                refs = []
            self.forms.references[key] = refs
        return refs

    def _object_lines(self, number: int, key: str, body: bytes) -> list[bytes]:
        label = "@" if len(key) == ROOT_LENGTH else "@64"
        if not self.forms.raw.get(key, False):
            try:
                lines = self._field_lines(label, number, key, body)
            except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError, FormatError, TypeError):
                lines = None
            if lines is not None:
                return lines
            self.forms.raw[key] = True
        return [orjson.dumps({label: number, "@raw": body.decode("utf-8", "replace")})]

    def _field_lines(self, label: str, number: int, key: str, body: bytes) -> Optional[list[bytes]]:
        fields = orjson.loads(body)
        if not isinstance(fields, dict) or any(name.startswith("@") for name in fields):
            return None
        parts: list[list[str]] = []
        encoded = encode_value(fields, self.numbers, parts)
        line = orjson.dumps({label: number, **encoded})
        lines = [line] + [orjson.dumps(part) for pieces in parts for part in pieces]
        if key not in self.forms.raw:  # checked once per object: its fields come back to its very bytes
            keys = {value: key for key, value in self.numbers.items()}
            continuation = iter(part for pieces in parts for part in pieces)
            decoded = decode_value(encoded, keys.get, lambda count: [next(continuation) for _ in range(count)], 0)
            if orjson.dumps(decoded, option=orjson.OPT_SORT_KEYS) != body:
                return None
            self.forms.raw[key] = False
        return lines


def encode_value(value: Any, numbers: Mapping[str, int], parts: Optional[list[list[str]]]) -> Any:
    """`value` as written: hash keys of written objects as `"@n"`, strings starting with `@` escaped, and (when
    `parts` is given) long texts replaced by `"@+k"` with their pieces appended to `parts`."""
    if isinstance(value, str):
        if len(value) in (40, 64) and value in numbers:
            return f"@{numbers[value]}"
        if parts is not None and (len(value) > _SPLIT_LENGTH or "\n" in value):
            pieces = split_text(value)
            if len(pieces) > 1:
                parts.append(pieces)
                return f"@+{len(pieces)}"
        return "@" + value if value.startswith("@") else value
    if isinstance(value, dict):
        return {name: encode_value(item, numbers, parts) for name, item in value.items()}
    if isinstance(value, list):
        return [encode_value(item, numbers, parts) for item in value]
    if isinstance(value, _StreamChunks):
        return _STREAM_CHUNKS
    return value


def decode_value(
    value: Any,
    key_of: Callable[[int], Optional[str]],
    take: Optional[Callable[[int], list[str]]],
    line: int,
) -> Any:
    """`value` as stored: the inverse of `encode_value` (`take(k)` gives the next `k` continuation pieces)."""
    if isinstance(value, str):
        if not value.startswith("@"):
            return value
        if value.startswith("@@"):
            return value[1:]
        if value == _STREAM_CHUNKS:
            return _STREAM
        if value.startswith("@+") and value[2:].isdigit() and take is not None:
            return "".join(take(int(value[2:])))
        if value[1:].isdigit():
            key = key_of(int(value[1:]))
            if key is None:
                raise FormatError(line, f"{value!r} refers to an object that is not written above it")
            return key
        raise FormatError(line, f"{value!r} is neither a reference (@n) nor an escaped text (@@...)")
    if isinstance(value, dict):
        return {name: decode_value(item, key_of, take, line) for name, item in value.items()}
    if isinstance(value, list):
        return [decode_value(item, key_of, take, line) for item in value]
    return value


def split_text(text: str) -> list[str]:
    """A text in pieces that join back into it: one a line, and a long line one a sentence."""
    pieces: list[str] = []
    for line in re.split(r"(?<=\n)", text):
        if not line:
            continue
        if len(line) <= _SPLIT_LENGTH:
            pieces.append(line)
            continue
        start = 0
        for match in _SENTENCE_END.finditer(line):
            if match.end() < len(line):
                pieces.append(line[start : match.end()])
                start = match.end()
        pieces.append(line[start:])
    return pieces


def line_check(line: bytes) -> bytes:
    """The check of one line (without its newline)."""
    return blake3(line).digest()[:CHECK_SIZE]


def root_hash(body: bytes) -> str:
    """The root hash of the lines after the header."""
    return blake3(body).hexdigest()[:ROOT_LENGTH]


# ------------------------------------------------------------------------------------------------------- reading


@dataclass
class ReadEvent:
    """One event as the file has it."""

    kind: EventKind
    t: float
    hash_key: Optional[str]
    call_id: Optional[int]
    parent_call_id: Optional[int]
    data: Optional[bytes]
    line: int
    changed_note: Optional[str] = None
    """Why this event is not as it was written (its line, or lines before it in its run), if it is not."""


@dataclass
class ReadRun:
    run_id: str
    event_count: int
    finished_at: Optional[float]
    line: int
    events: list[ReadEvent] = field(default_factory=list)


@dataclass
class ReadObject:
    hash_key: str
    body: bytes
    number: int
    first_line: int
    last_line: int


@dataclass
class ParsedFile:
    """A text recording read back; `changed_lines` are those not as written (with `removed_before`: lines in front
    of which written lines are missing), `file_notes` what cannot be told of any run."""

    library_version: Optional[str] = None
    runs: list[ReadRun] = field(default_factory=list)
    objects: list[ReadObject] = field(default_factory=list)
    changed_lines: list[int] = field(default_factory=list)
    removed_before: list[int] = field(default_factory=list)
    changed_objects: dict[str, str] = field(default_factory=dict)
    """Hash key (as read) -> why the object is not as it was written."""
    file_notes: list[str] = field(default_factory=list)
    runs_missing_last_events: set[int] = field(default_factory=set)
    """Indexes of runs whose last lines were removed."""

    @property
    def is_intact(self) -> bool:
        return not (self.changed_lines or self.removed_before or self.file_notes)


def parse(data: bytes, location: str, check_header: Callable[[dict[str, Any]], None]) -> ParsedFile:
    """Read a text recording, its header first accepted by `check_header` (which raises for a file it cannot
    read); raises `ForeignFileError` or `FormatError` (naming the line)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed = ParsedFile()
    if not lines:
        return parsed
    header = _header(lines[0])
    check_header(header)
    parsed.library_version = header.get("library") if isinstance(header.get("library"), str) else None
    body_lines = lines[1:]
    changed: set[int] = set()
    removed: set[int] = set()
    body = b"".join(line + b"\n" for line in body_lines)
    if header.get("root") != root_hash(body):
        changed, removed, intact_lines = _changes(header.get("lines"), body_lines)
        if intact_lines:
            parsed.file_notes.append(
                f"The header (line 1) of {location} is not as it was written: its root hash does not match the "
                "lines after it, which are all as written."
            )
    parsed.changed_lines = sorted(changed)
    parsed.removed_before = sorted(removed)
    _Reader(parsed, body_lines, changed, removed, location).read()
    return parsed


def _header(line: bytes) -> dict[str, Any]:
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ForeignFileError()
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(1, f"the header's version {version!r} is not a format version")
    return header


def _changes(stored: object, body_lines: Sequence[bytes]) -> tuple[set[int], set[int], bool]:
    """Line numbers (in the file) of changed or added lines, those in front of which lines were removed, and
    whether every line is as written; from the checks in the header."""
    current = [line_check(line) for line in body_lines]
    try:
        raw = base64.b64decode(stored, validate=True) if isinstance(stored, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) % CHECK_SIZE:
        return {index + 2 for index in range(len(body_lines))}, set(), False
    written = [raw[index : index + CHECK_SIZE] for index in range(0, len(raw), CHECK_SIZE)]
    changed: set[int] = set()
    removed: set[int] = set()
    for tag, _, _, first, last in difflib.SequenceMatcher(None, written, current, autojunk=False).get_opcodes():
        if tag in ("replace", "insert"):
            changed.update(range(first + 2, last + 2))
        elif tag == "delete":
            removed.add(first + 2)
    return changed, removed, not changed and not removed


class _Reader:
    def __init__(
        self, parsed: ParsedFile, body_lines: Sequence[bytes], changed: set[int], removed: set[int], location: str
    ) -> None:
        self.parsed = parsed
        self.lines = body_lines
        self.changed = changed
        self.removed = removed
        self.location = location
        self.keys: list[str] = []
        self.index = 0
        self.pending_note: Optional[str] = None
        """Why the next event of the current run is not as written (changed or removed lines above it)."""
        self.pending_removal = False
        """Whether the pending note is about removed lines (else: changed object lines)."""
        self.decoded: dict[int, Any] = {}
        """Per event line: its data as read, until the run's streams are known."""

    def line_number(self) -> int:
        return self.index + 2

    def read(self) -> None:
        parsed = self.parsed
        run: Optional[ReadRun] = None
        while self.index < len(self.lines):
            number = self.line_number()
            if number in self.removed:
                self._note(run, f"lines before line {number} of {self.location} were removed", removal=True)
            raw = self.lines[self.index]
            self.index += 1
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as error:
                raise FormatError(number, f"it is not JSON ({error})") from None
            if not isinstance(line, dict):
                raise FormatError(number, "it is neither an object, an event nor a run line")
            if "event" in line:
                if run is None:
                    raise FormatError(number, "an event before the first run line")
                event = self._event(line, number)
                if number in self.changed:
                    event.changed_note = f"line {number} of {self.location} was changed"
                else:
                    event.changed_note = self.pending_note
                self.pending_note, self.pending_removal = None, False
                run.events.append(event)
            elif "run" in line:
                if run is not None:
                    self._close_run(run)
                run = self._run(line, number)
                parsed.runs.append(run)
                if number in self.changed:
                    self._note(run, f"its run line {number} of {self.location} was changed")
            elif "@" in line or "@64" in line:
                obj = self._object(line, number)
                parsed.objects.append(obj)
                changed = [item for item in range(obj.first_line, obj.last_line + 1) if item in self.changed]
                changed += [item for item in range(obj.first_line + 1, obj.last_line + 1) if item in self.removed]
                if changed:
                    what = (
                        f"object @{obj.number} (lines {obj.first_line}-{obj.last_line} of {self.location}) was changed"
                        f" at line {min(changed)}"
                    )
                    parsed.changed_objects[obj.hash_key] = what
                    self._note(run, what)
            else:
                raise FormatError(number, "it is neither an object, an event nor a run line")
        if len(self.lines) + 2 in self.removed:
            self._note(run, f"lines at the end of {self.location} were removed", removal=True)
        if run is not None:
            self._close_run(run)

    def _note(self, run: Optional[ReadRun], note: str, removal: bool = False) -> None:
        if run is None:
            self.parsed.file_notes.append(f"Lines before the first run are not as written: {note}.")
        elif self.pending_note is None:
            self.pending_note, self.pending_removal = note, removal

    def _close_run(self, run: ReadRun) -> None:
        if self.pending_note is not None:  # after the run's last event
            if self.pending_removal:  # its last events, most likely
                self.parsed.runs_missing_last_events.add(len(self.parsed.runs) - 1)
            else:  # objects that no event after them uses
                self.parsed.file_notes.append(f"Lines that no event uses are not as written: {self.pending_note}.")
            self.pending_note, self.pending_removal = None, False
        streams: dict[str, Any] = {}
        for event in run.events:
            data = self.decoded.get(event.line)
            if event.kind is EventKind.STREAM and event.hash_key is not None and event.hash_key not in streams:
                if isinstance(data, dict) and isinstance(data.get("chunks"), list):
                    streams[event.hash_key] = data["chunks"]
        for event in run.events:
            if event.line not in self.decoded:
                continue
            data = self.decoded.pop(event.line)
            if event.kind is EventKind.CALL_FINISHED and isinstance(data, dict):
                for reply in data.get("replies") or ():
                    if isinstance(reply, dict) and reply.get("chunks") is _STREAM:
                        chunks = streams.get(str(reply.get("hash")))
                        if chunks is None:
                            if not (self.changed or self.removed):
                                raise FormatError(event.line, "a reply's chunks are those of a stream the run lacks")
                            chunks = []  # the stream's line was changed or removed: this event is not as written
                            event.changed_note = event.changed_note or (
                                f"line {event.line} of {self.location} names the chunks of a stream that is not "
                                "there any more"
                            )
                        reply["chunks"] = chunks
            try:
                event.data = orjson.dumps(data)
            except TypeError:
                raise FormatError(event.line, '"@stream" stands only for the chunks of a reply') from None

    def _run(self, line: dict[str, Any], number: int) -> ReadRun:
        run_id, count, finished_at = line.get("run"), line.get("events"), line.get("finished_at")
        if not isinstance(run_id, str) or not run_id:
            raise FormatError(number, "a run line without a run id")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise FormatError(number, "a run line without its number of events")
        if finished_at is not None and not _is_number(finished_at):
            raise FormatError(number, "a run line whose finished_at is not a number")
        if any(run.run_id == run_id for run in self.parsed.runs):
            raise FormatError(number, f"a second run {run_id!r}")
        return ReadRun(run_id, count, None if finished_at is None else float(finished_at), number)

    def _key_of(self, number: int) -> Optional[str]:
        return self.keys[number - 1] if 0 < number <= len(self.keys) else None

    def _event(self, line: dict[str, Any], number: int) -> ReadEvent:
        try:
            kind = EventKind(line["event"])
        except ValueError:
            raise FormatError(number, f"an event of a kind this version does not know: {line['event']!r}") from None
        hash_key = line.get("hash")
        if hash_key is not None:
            hash_key = decode_value(hash_key, self._key_of, None, number)
            if not is_hash_key(hash_key):
                raise FormatError(number, f"the event's hash {hash_key!r} is not a hash key")
        call_id, parent_call_id, t = line.get("call"), line.get("parent"), line.get("t", 0.0)
        for name, value in (("call", call_id), ("parent", parent_call_id)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise FormatError(number, f"the event's {name} is not a call number")
        if not _is_number(t):
            raise FormatError(number, "the event's time is not a number")
        event = ReadEvent(kind, float(t), hash_key, call_id, parent_call_id, None, number)
        if "raw" in line:
            if not isinstance(line["raw"], str):
                raise FormatError(number, "the event's raw data is not a text")
            event.data = line["raw"].encode()
        elif "data" in line:
            self.decoded[number] = decode_value(line["data"], self._key_of, None, number)
        return event

    def _object(self, line: dict[str, Any], number: int) -> ReadObject:
        label = "@" if "@" in line else "@64"
        object_number = line.pop(label)
        if object_number != len(self.keys) + 1:
            raise FormatError(number, f"object @{object_number} where object @{len(self.keys) + 1} comes next")
        if "@raw" in line:
            if not isinstance(line["@raw"], str) or len(line) != 1:
                raise FormatError(number, "a whole object (@raw) that is not just its text")
            body = line["@raw"].encode()
        else:
            decoded = decode_value(line, self._key_of, self._take, number)
            body = orjson.dumps(decoded, option=orjson.OPT_SORT_KEYS)
        key = blake3(body).hexdigest()[: 64 if label == "@64" else ROOT_LENGTH]
        self.keys.append(key)
        return ReadObject(key, body, object_number, number, self.line_number() - 1)

    def _take(self, count: int) -> list[str]:
        pieces: list[str] = []
        for _ in range(count):
            if self.index >= len(self.lines):
                raise FormatError(self.line_number(), "the file ends inside a text")
            number = self.line_number()
            try:
                piece = orjson.loads(self.lines[self.index])
            except orjson.JSONDecodeError as error:
                raise FormatError(number, f"a line of a text that is not a JSON string ({error})") from None
            if not isinstance(piece, str):
                raise FormatError(number, "a line of a text that is not a JSON string")
            pieces.append(piece)
            self.index += 1
        return pieces
