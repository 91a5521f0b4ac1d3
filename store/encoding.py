"""The mapping between events and what a store keeps of them: event data encoded (secret-looking fields redacted)
and decoded, what a `run_started` / `run_finished` event sets on its run, the hash keys an event's data names, and
the messages nested in an object (stored as objects of their own)."""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter, not_
from typing import Any, Optional, Union

import orjson

from miniagents.errors import EventDataError
from miniagents.events import (
    ErrorDescription,
    Event,
    EventKind,
    RunFinishedPayload,
    RunStartedPayload,
    describe_error,
    payload_from_data,
)
from miniagents.messages import Message
from miniagents.promising.ext.frozen import Frozen
from miniagents.redaction import REDACTION
from store.decoding import find_hash_keys
from store.results import RunStatus

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
_HASH_OF_RECORD = itemgetter("hash")
INT64_MIN, INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def encode_data(data: Optional[dict[str, Any]]) -> Optional[bytes]:
    """Event data as stored: compact JSON, secret-looking fields redacted; None stays None.

    Redaction works on the encoded form, parsed back (plain dicts and lists, whatever the data held: dataclasses,
    `Frozen` values, tuples...), so every item of every list and every nested object is looked at. A value JSON
    cannot hold (an integer beyond 64 bits) is replaced by its text; the rest of the data is kept.
    """
    if data is None:
        return None
    try:
        encoded = orjson.dumps(data, default=_json_default, option=_JSON_OPTIONS)
    except TypeError as error:  # e.g. an integer beyond 64 bits: keep the event, describe what could not be kept
        try:
            data = _encodable(data)
            encoded = orjson.dumps(data, default=_json_default, option=_JSON_OPTIONS)
        except TypeError:
            return orjson.dumps({"unencodable": sorted(map(str, data)), "reason": str(error)})
    if REDACTION.might_hold_secrets(_scanned_text(data, encoded)):
        encoded = orjson.dumps(REDACTION.redact(orjson.loads(encoded)), option=_JSON_OPTIONS)
    return encoded


_MANY_REPLIES = 256
_HEX_DIGITS = b"0123456789abcdef"


def _scanned_text(data: dict[str, Any], encoded: bytes) -> str:
    """What the secret scan of `encode_data` reads: the encoded data, except, when a call's end lists many replies,
    the records of whole replies that were not streamed (`{"hash": <hex>}`) once they are found to hold hex digits
    only, none of them a registered secret value (no secret-looking name or shape is made of hex digits).

    A call with 600,000 replies ends with 45 MB of such records, which the scan would read at about 1.5 GB/s per
    word it looks for; found by C loops, they take a fraction of that. Every other record (streamed, partial, or
    anything else) and the rest of the data are scanned as always."""
    replies = data.get("replies")
    if type(replies) is not list or len(replies) < _MANY_REPLIES:
        return encoded.decode()
    plain = [type(reply) is dict and len(reply) == 1 and type(reply.get("hash")) is str for reply in replies]
    hashes = "".join(map(_HASH_OF_RECORD, compress(replies, plain)))
    if not hashes.isascii() or hashes.encode().translate(None, _HEX_DIGITS):
        return encoded.decode()
    if any(value in hashes for value in REDACTION.values):
        return encoded.decode()
    rest = {key: value for key, value in data.items() if key != "replies"}
    rest["replies"] = list(compress(replies, map(not_, plain)))
    return orjson.dumps(rest, default=_json_default, option=_JSON_OPTIONS).decode()


def decode_data(data: Optional[bytes]) -> Optional[dict[str, Any]]:
    """Stored event data back into a dict."""
    return None if data is None else orjson.loads(data)


def decode_run_error(data: Optional[bytes]) -> Optional[ErrorDescription]:
    """A run's stored error (see `run_update`) back into its description."""
    if data is None:
        return None
    try:
        return ErrorDescription.from_data(orjson.loads(data))
    except (EventDataError, orjson.JSONDecodeError):  # a run row edited by hand: its text, not a misread
        text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
        return ErrorDescription("Exception", None, text)


def _encodable(value: Any) -> Any:
    """`value` with what JSON cannot hold (integers beyond 64 bits) replaced by its text (the slow path of
    `encode_data`, taken only after encoding failed)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, dict):
        return {key: _encodable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [_encodable(item) for item in sorted(value, key=repr)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _encodable(getattr(value, item.name)) for item in dataclasses.fields(value)}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Frozen):
        return value.serialize()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, BaseException):  # described as the events describe errors: secrets redacted
        return describe_error(value)
    text = repr(value)
    if REDACTION.might_hold_secrets(text):  # a repr cannot be redacted field by field: keep only the type
        return f"<{type(value).__qualname__} object; its repr names a secret-looking field, so it is not stored>"
    return text


RUN_FIELDS = ("started_at", "library_version", "metadata", "status", "finished_at", "error")
"""The fields a backend keeps per run besides its id and event count (`RunInfo` reads them back; `metadata` and
`error` as encoded event data)."""


@dataclass(frozen=True)
class RunUpdate:
    """What a written `run_started` / `run_finished` event sets on its run: `fields` maps some of `RUN_FIELDS` to
    their new values (a backend sets exactly those, whatever the event's kind)."""

    run_id: str
    fields: dict[str, Any]

    def __post_init__(self) -> None:
        unknown = set(self.fields).difference(RUN_FIELDS)
        if unknown:  # backends name these fields in their statements
            raise ValueError(f"A run update sets {sorted(unknown)}, which are not run fields {RUN_FIELDS}.")

    @property
    def finishes(self) -> bool:
        """Whether the run is finished from this update on."""
        return "status" in self.fields


def run_update(event: Event, data: Optional[bytes], finished_at: Optional[float] = None) -> Optional[RunUpdate]:
    """The run fields set by a `run_started` or `run_finished` event (`data`: its encoded data); None for others.

    Read from the event's typed payload, the metadata and error encoded (and redacted) as event data is; data that
    is not such a payload sets nothing but the status (`averify()` reports the event).
    """
    kind = event.kind
    if kind is not EventKind.RUN_STARTED and kind is not EventKind.RUN_FINISHED:
        return None
    try:
        payload = event.payload if data is not None else None
    except EventDataError:
        payload = None
    if isinstance(payload, RunStartedPayload):
        fields: dict[str, Any] = {
            "started_at": payload.started_at,
            "library_version": payload.library_version,
            "metadata": encode_data(dict(payload.metadata)),
        }
    elif isinstance(payload, RunFinishedPayload):
        fields = {
            "status": payload.status or RunStatus.OK,
            "finished_at": finished_at,
            "error": encode_data(payload.error.to_data()) if payload.error is not None else None,
        }
    elif kind is EventKind.RUN_STARTED:
        fields = {"started_at": None, "library_version": None, "metadata": b"{}"}
    else:
        fields = {"status": RunStatus.OK, "finished_at": finished_at, "error": None}
    return RunUpdate(event.run_id, fields)


def known_kind(kind: Union[EventKind, str]) -> Optional[EventKind]:
    """A stored event's kind if this library knows it (else None: a kind a newer version added, kept by name)."""
    return kind if isinstance(kind, EventKind) else None


def event_references(kind: Optional[EventKind], data: Optional[bytes]) -> tuple[list[str], Optional[str]]:
    """The hash keys that an event's stored data names besides its `hash_key` (read through its kind's payload),
    and, when the data is not its kind's payload, why (every hash key found in such data is then returned).
    Raises `orjson.JSONDecodeError` for data that is not JSON."""
    if data is None:
        return [], None
    parsed = orjson.loads(data)
    if kind is None:  # a kind this library does not know: keep whatever its data names
        return list(find_hash_keys(parsed)), None
    try:
        payload = payload_from_data(kind, parsed)
    except EventDataError as error:
        return list(find_hash_keys(parsed)), str(error)
    return (list(payload.references()) if payload is not None else []), None


def nested_messages(
    obj: Frozen, known: Container[str], also_known: Container[str] = frozenset()
) -> list[tuple[str, bytes]]:
    """(hash key, canonical bytes) of the messages referenced by hash inside `obj`, at any depth, except those in
    `known` or `also_known` (stored already, with what they reference)."""
    found: dict[str, bytes] = {}
    stack: list[Any] = list(obj.frozen_fields_and_values().values())
    while stack:
        value = stack.pop()
        if isinstance(value, Message):
            key = value.hash_key
            if key not in found and key not in known and key not in also_known:
                found[key] = value.encode_canonical()
                stack.extend(value.frozen_fields_and_values().values())
        elif isinstance(value, Frozen):
            stack.extend(value.frozen_fields_and_values().values())
        elif isinstance(value, tuple):
            stack.extend(value)
        elif isinstance(value, dict):  # a declared mapping field's FrozenDict
            stack.extend(value.values())
    return list(found.items())
