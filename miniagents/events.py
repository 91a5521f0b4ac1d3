"""The event vocabulary, and the two protocols other layers plug into: `EventSink` and `CallInterceptor`.

A `MiniAgents` context with a sink is one *run*. The core pushes `Event`s into every sink synchronously, in the
order things happen; a sink must not block (a store buffers and flushes in the background).

| kind            | hash_key            | call_id / parent_call_id      | payload (`Event.payload`)       |
|-----------------|---------------------|-------------------------------|---------------------------------|
| run_started     | -                   | -                             | `RunStartedPayload`             |
| run_finished    | -                   | -                             | `RunFinishedPayload`            |
| message         | the object's hash   | call that made the message /  | - (the object is in `Event.obj`)|
|                 |                     | that call's parent call       | `MessagePayload` (sub-messages) |
| stream          | the message's hash  | call that produced it         | `StreamPayload`                 |
| call_started    | -                   | the call / its parent call    | `CallStartedPayload`            |
| call_finished   | the AgentCallNode   | the call / its parent call    | `CallFinishedPayload`           |
|                 | hash (the call key) |                               |                                 |
| error           | -                   | call that was current         | `ErrorPayload`                  |

Each payload is a frozen dataclass defined once here, with `to_data()` (its stored form) and `from_data()`; the
replies inside `call_finished` are `WholeReply` (`{"hash", "chunks", "offsets"}`) and `PartialReply` (stored as
`{"failed": {...}}`), and every exception is an `ErrorDescription` (`{"type", "module", "text", "attributes"}`).

`Event.data` stays the plain-JSON dict that sinks store and give back, so a store needs to know nothing about
kinds, and an event written by an older or newer version of the library is kept as it is. The typed payload is
the one definition of that dict: the core builds the payload and makes the event from it (`Event.of`), so `data`
is always `payload.to_data()` and the event keeps the payload (an in-process sink reads it without parsing);
an event read back from a store parses its `data` into its payload once, on first use of `Event.payload`.
Fields missing from older recordings take their defaults; a field of the wrong type raises `EventDataError`
(`store.EventStore.averify()` reports such events), never a misread.

A call keeps its record whatever its outcome. When its input failed before it was whole there is no call node,
so no call key (replay matches only whole calls): `CallFinishedPayload.partial_call_node` then names an
`AgentCallNode` of what the call received (its keyword arguments, interaction metadata and the input messages that
resolved, in order), stored as an object like any other (checked, kept by gc), and `input_error` says how the
input failed.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol, Union, runtime_checkable

import orjson

from miniagents.errors import EventDataError
from miniagents.redaction import REDACTION

if TYPE_CHECKING:
    from miniagents.messages import Message
    from miniagents.miniagent_typing import MessageType
    from miniagents.miniagents import AgentCallNode, MiniAgent, MiniAgents
    from miniagents.promising.ext.frozen import Frozen


class EventKind(str, enum.Enum):
    """What an event records."""

    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    MESSAGE = "message"
    STREAM = "stream"
    CALL_STARTED = "call_started"
    CALL_FINISHED = "call_finished"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


# ------------------------------------------------------------------------------------------------ reading data


def _fail(where: str, name: str, value: Any, expected: str) -> EventDataError:
    return EventDataError(
        f"The {where} data has {name}={value!r} ({type(value).__name__}), not {expected}; it was not written by "
        "this library (or the store was edited), so it is not read as anything else."
    )


def _mapping(data: Any, where: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise _fail(where, "data", data, "a JSON object")
    return data


def _text(data: Mapping[str, Any], name: str, where: str, default: Optional[str] = None) -> Optional[str]:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _fail(where, name, value, "a string")
    return value


def _integer(data: Mapping[str, Any], name: str, where: str) -> Optional[int]:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, name, value, "an integer")
    return value


def _number(value: Any, name: str, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(where, name, value, "a number")
    return float(value)


def _flag(data: Mapping[str, Any], name: str, where: str) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _fail(where, name, value, "true or false")
    return value


def _items(data: Mapping[str, Any], name: str, where: str) -> Optional[list[Any]]:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise _fail(where, name, value, "a list")
    return list(value)


def _object(data: Mapping[str, Any], name: str, where: str) -> Optional[Mapping[str, Any]]:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail(where, name, value, "a JSON object")
    return value


def _lengths(data: Mapping[str, Any], name: str, where: str) -> Optional[tuple[int, ...]]:
    items = _items(data, name, where)
    if items is None:
        return None
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise _fail(where, name, items, "a list of integers")
    return tuple(items)


def _offsets(data: Mapping[str, Any], name: str, where: str) -> tuple[float, ...]:
    return tuple(_number(item, name, where) for item in _items(data, name, where) or ())


def _plain(value: Any) -> Any:
    """`value` in its stored JSON form (tuples as lists, `Frozen` values serialized), as `from_data` reads it."""
    try:
        return orjson.loads(orjson.dumps(value, default=_serialized))
    except TypeError:  # not plain JSON: the store encodes it as best it can
        return value


def _serialized(value: Any) -> Any:
    if hasattr(value, "serialize"):
        return value.serialize()
    raise TypeError(f"{type(value).__qualname__} is not plain JSON")


# ------------------------------------------------------------------------------------------------ the payloads


@dataclass(frozen=True, slots=True)
class ErrorDescription:
    """An exception as recorded (stored as `{"type", "module", "text", "attributes"}`): the class's qualname, its
    module, `str(error)`, and the `RECORDED_ERROR_ATTRIBUTES` it has that hold plain JSON (None when it has none,
    as in recordings made before attributes were kept); secrets redacted from the text and the attributes."""

    type_name: str
    module: Optional[str] = None
    text: str = ""
    attributes: Optional[Mapping[str, Any]] = None

    @classmethod
    def of(cls, error: BaseException) -> ErrorDescription:
        """The description of `error` (of an exception that stands in for a recorded one, such as a replayed
        error, its `recorded_description`: the original's)."""
        recorded = getattr(error, "recorded_description", None)
        if isinstance(recorded, dict):
            try:
                return cls.from_data(recorded)
            except EventDataError:
                pass  # not a description after all: describe the exception itself
        error_type = type(error)
        try:
            text = str(error)
        except Exception:  # a broken __str__ must not break the recording
            text = f"<{error_type.__qualname__}: str() failed>"
        attributes: dict[str, Any] = {}
        for name in RECORDED_ERROR_ATTRIBUTES:
            try:
                value = _plain_json(getattr(error, name), 0)
            except Exception:  # absent, a property that failed, or not plain JSON (an object, NaN, a huge integer)
                continue
            if name in _ONLY_WHEN_TELLING and (value is None or value == [text]):
                continue  # the text says it all (most exceptions: one argument, no OSError fields)
            attributes[name] = REDACTION.redact(value, name)
        return cls(
            error_type.__qualname__, error_type.__module__, REDACTION.redact_description(text), attributes or None
        )

    @classmethod
    def from_data(cls, data: Any) -> ErrorDescription:
        where = "error description"
        data = _mapping(data, where)
        attributes = _object(data, "attributes", where)
        return cls(
            type_name=_text(data, "type", where) or "Exception",
            module=_text(data, "module", where),
            text=_text(data, "text", where) or "",
            attributes=dict(attributes) if attributes is not None else None,
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type_name, "module": self.module, "text": self.text}
        if self.attributes is not None:
            data["attributes"] = dict(self.attributes)
        return data

    def __str__(self) -> str:
        return f"{self.type_name}: {self.text}" if self.text else self.type_name


def _error(data: Mapping[str, Any], name: str, where: str) -> Optional[ErrorDescription]:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail(where, name, value, "an error description")
    return ErrorDescription.from_data(value)


@dataclass(frozen=True, slots=True)
class WholeReply:
    """A reply received whole (stored as `{"hash", "chunks", "offsets"}`): the message's hash key, and when it was
    streamed, its chunk lengths and each chunk's arrival (seconds since streaming started), so replay needs no
    other lookup."""

    hash_key: str
    chunks: Optional[tuple[int, ...]] = None
    """The chunk lengths; None for a message that was complete from the start."""
    offsets: tuple[float, ...] = ()

    @classmethod
    def from_data(cls, data: Any) -> WholeReply:
        where = "reply"
        data = _mapping(data, where)
        hash_key = _text(data, "hash", where)
        if hash_key is None:
            raise _fail(where, "hash", None, "a hash key")
        return cls(hash_key, _lengths(data, "chunks", where), _offsets(data, "offsets", where))

    def to_data(self) -> dict[str, Any]:
        if self.chunks is None:
            return {"hash": self.hash_key}
        return {"hash": self.hash_key, "chunks": list(self.chunks), "offsets": list(self.offsets)}


@dataclass(frozen=True, slots=True)
class PartialReply:
    """A reply whose stream broke (stored as `{"failed": {"class_", "metadata", "chunks", "offsets", "error"}}`
    among the replies, and flattened into the `error` event of the broken stream): the message class's name, the
    metadata known when it broke (as stored: plain JSON with `class_`), the text chunks received, each one's
    arrival, and the error."""

    message_class: str
    metadata: Mapping[str, Any]
    chunks: tuple[str, ...]
    offsets: tuple[float, ...]
    error: ErrorDescription

    @property
    def text(self) -> str:
        """The text received before the stream broke."""
        return "".join(self.chunks)

    @classmethod
    def from_data(cls, data: Any) -> PartialReply:
        where = "failed reply"
        data = _mapping(data, where)
        chunks = _items(data, "chunks", where) or []
        if not all(isinstance(chunk, str) for chunk in chunks):
            raise _fail(where, "chunks", chunks, "a list of strings")
        return cls(
            message_class=_text(data, "class_", where) or "Message",
            metadata=dict(_object(data, "metadata", where) or {}),
            chunks=tuple(chunks),
            offsets=_offsets(data, "offsets", where),
            error=_error(data, "error", where) or ErrorDescription("Exception"),
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "class_": self.message_class,
            "metadata": dict(self.metadata),
            "chunks": list(self.chunks),
            "offsets": list(self.offsets),
            "error": self.error.to_data(),
        }

    @classmethod
    def of(
        cls, message_class: str, metadata: Any, chunks: list[str], offsets: list[float], error: BaseException
    ) -> PartialReply:
        """What is recorded of a broken stream; `metadata` is a `Frozen`'s serialized form."""
        return cls(message_class, _plain(metadata), tuple(chunks), tuple(offsets), ErrorDescription.of(error))


ReplyRecord = Union[WholeReply, PartialReply]
"""One reply of a call, in order: received whole, or broken while it streamed."""


def reply_to_data(reply: ReplyRecord) -> dict[str, Any]:
    """A reply as `call_finished` stores it: `{"hash", ...}` or `{"failed": {...}}`."""
    if isinstance(reply, PartialReply):
        return {"failed": reply.to_data()}
    return reply.to_data()


def reply_from_data(data: Any) -> ReplyRecord:
    """A reply stored by `reply_to_data`."""
    data = _mapping(data, "reply")
    if "hash" in data:
        return WholeReply.from_data(data)
    if "failed" in data:
        return PartialReply.from_data(data["failed"])
    raise _fail("reply", "data", dict(data), 'a reply ({"hash": ...} or {"failed": ...})')


@dataclass(frozen=True, slots=True)
class RunStartedPayload:
    """A run started: wall-clock start (seconds since the epoch), library version, user metadata."""

    KIND: ClassVar[EventKind] = EventKind.RUN_STARTED

    started_at: Optional[float] = None
    library_version: Optional[str] = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: Any) -> RunStartedPayload:
        where = "run_started"
        data = _mapping(data, where)
        started_at = data.get("started_at")
        return cls(
            started_at=None if started_at is None else _number(started_at, "started_at", where),
            library_version=_text(data, "library_version", where),
            metadata=dict(_object(data, "metadata", where) or {}),
        )

    def to_data(self) -> dict[str, Any]:
        metadata = dict(self.metadata)
        return {"started_at": self.started_at, "library_version": self.library_version, "metadata": metadata}

    def references(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class RunFinishedPayload:
    """A run finished: `"ok"`, or `"failed"` with the error the `MiniAgents` block raised."""

    KIND: ClassVar[EventKind] = EventKind.RUN_FINISHED

    status: str = "ok"
    error: Optional[ErrorDescription] = None

    @classmethod
    def from_data(cls, data: Any) -> RunFinishedPayload:
        where = "run_finished"
        data = _mapping(data, where)
        return cls(status=_text(data, "status", where) or "ok", error=_error(data, "error", where))

    def to_data(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error.to_data() if self.error is not None else None}

    def references(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CallStartedPayload:
    """An agent call started."""

    KIND: ClassVar[EventKind] = EventKind.CALL_STARTED

    agent_alias: str = ""
    position: Optional[str] = None
    """Where the call is in the run's call tree ("2.0"); None in recordings made before it was kept here."""

    @classmethod
    def from_data(cls, data: Any) -> CallStartedPayload:
        where = "call_started"
        data = _mapping(data, where)
        return cls(agent_alias=_text(data, "agent_alias", where) or "", position=_text(data, "position", where))

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"agent_alias": self.agent_alias}
        if self.position is not None:
            data["position"] = self.position
        return data

    def references(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CallFinishedPayload:
    """An agent call ended, whatever the outcome.

    `call_node` is the hash key of its `AgentCallNode` (the call key replay matches on; also the event's
    `hash_key`), None when the input failed before it was whole. Such a call keeps its record all the same:
    `partial_call_node` is then the hash key of an `AgentCallNode` of what it received (its keyword arguments,
    interaction metadata and the input messages that resolved, in order, before the failure), never a call key,
    and `input_error` the error its input raised. `replies` are its replies in order; `error` an error its reply
    sequence raised after them.
    """

    KIND: ClassVar[EventKind] = EventKind.CALL_FINISHED

    agent_alias: str = ""
    call_node: Optional[str] = None
    reply_node: Optional[str] = None
    """The hash key of the `AgentReplyNode`; None unless every reply was received whole."""
    occurrence: Optional[int] = None
    position: Optional[str] = None
    """Where the call was in the run's call tree ("2.0"); None in recordings made before positions were kept."""
    replies: tuple[ReplyRecord, ...] = ()
    error: Optional[ErrorDescription] = None
    replayed: bool = False
    partial_call_node: Optional[str] = None
    input_error: Optional[ErrorDescription] = None

    @classmethod
    def from_data(cls, data: Any) -> CallFinishedPayload:
        where = "call_finished"
        data = _mapping(data, where)
        return cls(
            agent_alias=_text(data, "agent_alias", where) or "",
            call_node=_text(data, "call_node", where),
            reply_node=_text(data, "reply_node", where),
            occurrence=_integer(data, "occurrence", where),
            position=_text(data, "position", where),
            replies=tuple(reply_from_data(reply) for reply in _items(data, "replies", where) or ()),
            error=_error(data, "error", where),
            replayed=_flag(data, "replayed", where),
            partial_call_node=_text(data, "partial_call_node", where),
            input_error=_error(data, "input_error", where),
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "agent_alias": self.agent_alias,
            "call_node": self.call_node,
            "reply_node": self.reply_node,
            "occurrence": self.occurrence,
            "position": self.position,
            "replies": [reply_to_data(reply) for reply in self.replies],
            "error": self.error.to_data() if self.error is not None else None,
            "replayed": self.replayed,
        }
        if self.partial_call_node is not None:
            data["partial_call_node"] = self.partial_call_node
        if self.input_error is not None:
            data["input_error"] = self.input_error.to_data()
        return data

    def references(self) -> tuple[str, ...]:
        """The hash keys of the objects it names: the call, reply and partial call nodes, the whole replies."""
        nodes = (self.call_node, self.reply_node, self.partial_call_node)
        replies = (reply.hash_key for reply in self.replies if isinstance(reply, WholeReply))
        return (*(node for node in nodes if node is not None), *replies)


@dataclass(frozen=True, slots=True)
class StreamPayload:
    """A streamed message was complete: its chunk lengths and each chunk's arrival (seconds since streaming
    started)."""

    KIND: ClassVar[EventKind] = EventKind.STREAM

    chunks: tuple[int, ...] = ()
    offsets: tuple[float, ...] = ()

    @classmethod
    def from_data(cls, data: Any) -> StreamPayload:
        where = "stream"
        data = _mapping(data, where)
        return cls(chunks=_lengths(data, "chunks", where) or (), offsets=_offsets(data, "offsets", where))

    def to_data(self) -> dict[str, Any]:
        return {"chunks": list(self.chunks), "offsets": list(self.offsets)}

    def references(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class MessagePayload:
    """What a `message` event says besides its object: for a sub-message (a message nested in another one and
    emitted with it), `parent`, the hash key of the message whose fields hold it. Only sub-messages' events have
    data (`{"parent": ...}`); the `message` event of that parent follows theirs."""

    KIND: ClassVar[EventKind] = EventKind.MESSAGE

    parent: Optional[str] = None

    @classmethod
    def from_data(cls, data: Any) -> MessagePayload:
        where = "message"
        data = _mapping(data, where)
        return cls(parent=_text(data, "parent", where))

    def to_data(self) -> dict[str, Any]:
        return {"parent": self.parent} if self.parent is not None else {}

    def references(self) -> tuple[str, ...]:
        return ()  # the parent is an object of the run by its own event (the next one), not through this one


@dataclass(frozen=True, slots=True)
class ErrorPayload:
    """An exception traveled: raised by an agent (`where="agent"`), or breaking a reply's stream
    (`where="message"`, `position` = the chunks received before it, `partial` = the broken reply; stored
    flattened: `{"where", "position", "class_", "metadata", "chunks", "offsets", "error"}`)."""

    KIND: ClassVar[EventKind] = EventKind.ERROR

    where: str = "agent"
    position: Optional[int] = None
    error: Optional[ErrorDescription] = None
    partial: Optional[PartialReply] = None

    @classmethod
    def of_agent(cls, error: BaseException) -> ErrorPayload:
        return cls("agent", None, ErrorDescription.of(error))

    @classmethod
    def of_broken_stream(cls, partial: PartialReply) -> ErrorPayload:
        return cls("message", len(partial.chunks), partial.error, partial)

    @classmethod
    def from_data(cls, data: Any) -> ErrorPayload:
        where = "error"
        data = _mapping(data, where)
        place = _text(data, "where", where) or "agent"
        position = _integer(data, "position", where)
        if place == "message" and "class_" in data:
            partial = PartialReply.from_data(data)
            return cls(place, position, partial.error, partial)
        return cls(place, position, _error(data, "error", where))

    def to_data(self) -> dict[str, Any]:
        if self.partial is not None:
            return {"where": self.where, "position": self.position, **self.partial.to_data()}
        error = self.error.to_data() if self.error is not None else None
        return {"where": self.where, "position": self.position, "error": error}

    def references(self) -> tuple[str, ...]:
        return ()


EventPayload = Union[
    RunStartedPayload,
    RunFinishedPayload,
    CallStartedPayload,
    CallFinishedPayload,
    StreamPayload,
    ErrorPayload,
    MessagePayload,
]
"""The typed data of an event (a message event has data only when it is a sub-message's: `MessagePayload`)."""

PAYLOAD_TYPES: dict[EventKind, type[EventPayload]] = {
    payload_type.KIND: payload_type
    for payload_type in (
        RunStartedPayload,
        RunFinishedPayload,
        CallStartedPayload,
        CallFinishedPayload,
        StreamPayload,
        ErrorPayload,
    )
}
"""The payload type of each kind of event that always has data (a `message` event has a `MessagePayload` only
when it is a sub-message's)."""


def payload_from_data(kind: EventKind, data: Any) -> Optional[EventPayload]:
    """The typed payload of an event of `kind` stored with `data` (None for a message event without data); raises
    `EventDataError` when the data is not such a payload."""
    if kind is EventKind.MESSAGE:
        return None if data is None else MessagePayload.from_data(data)
    payload_type = PAYLOAD_TYPES.get(kind)
    if payload_type is None:
        return None
    return payload_type.from_data(data)


# ------------------------------------------------------------------------------------------------------- events


@dataclass(slots=True)
class Event:
    """One thing that happened in a run. `seq` is assigned by the store; `obj` only travels to the sink."""

    kind: EventKind
    run_id: str
    t: float
    """Seconds since the run started."""
    hash_key: Optional[str] = None
    call_id: Optional[int] = None
    parent_call_id: Optional[int] = None
    data: Optional[dict[str, Any]] = None
    """The payload as stored: plain JSON (read it typed through `payload`)."""
    obj: Optional[Frozen] = field(default=None, repr=False, compare=False)
    seq: Optional[int] = None
    canonical_bytes: Optional[bytes] = field(default=None, repr=False, compare=False)
    """`obj.canonical_bytes` when the emitter had them at hand (a store then does not encode `obj` again); like
    `obj`, it only travels to the sink."""
    sub_messages_emitted: bool = field(default=False, repr=False, compare=False)
    """True when the emitter appended an event for every message nested in `obj` before this one (a store then
    need not look for nested messages to store with `obj`: they come with their own events); like `obj`, it only
    travels to the sink."""
    _payload: Optional[EventPayload] = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(
        cls,
        payload: EventPayload,
        run_id: str,
        t: float,
        hash_key: Optional[str] = None,
        call_id: Optional[int] = None,
        parent_call_id: Optional[int] = None,
    ) -> Event:
        """The event of a payload (its kind's), with `data` = `payload.to_data()`; it keeps the payload."""
        event = cls(payload.KIND, run_id, t, hash_key, call_id, parent_call_id, payload.to_data())
        event._payload = payload
        return event

    @property
    def payload(self) -> Optional[EventPayload]:
        """`data` as its kind's typed payload (parsed once); for a message event, a `MessagePayload` if it is a
        sub-message's and None otherwise. Raises `EventDataError` if the data is not such a payload."""
        payload = self._payload
        if payload is None and (self.kind is not EventKind.MESSAGE or self.data is not None):
            payload = self._payload = payload_from_data(self.kind, self.data)
        return payload


@runtime_checkable
class EventSink(Protocol):
    """Where the events of a run go (a store). `MiniAgents(store=...)` takes one."""

    async def astart_run(self, run_id: str) -> None:
        """Called when the run begins, before any event: open what is needed."""

    def append(self, event: Event) -> None:
        """Take one event; called synchronously, must not block or await."""

    async def afinish_run(self, run_id: str) -> None:
        """Called after the last event: flush everything and close what `astart_run` opened.

        Raise if events were lost; the `MiniAgents` context reports it as an `EventSinkError`.
        """


@dataclass(slots=True)
class InterceptedCall:
    """What a `CallInterceptor` is told about an agent call it may answer."""

    agent: MiniAgent
    call_node: AgentCallNode
    occurrence: int
    """How many identical calls (same `call_node.hash_key`) came before this one in this run."""
    position: str
    """Where the call is in the run's call tree: "2" is the third top-level call, "2.0" the first call made by
    it. Unlike `occurrence`, it does not depend on how fast anything ran."""
    call_id: int
    parent_call_id: Optional[int]
    input_messages: tuple[Message, ...]


@runtime_checkable
class CallInterceptor(Protocol):
    """Something that may answer agent calls instead of the agents (replay). `MiniAgents(replay=...)` takes one."""

    async def astart(self, mini_agents: MiniAgents) -> None:
        """Called when the `MiniAgents` context starts; may add event sinks with `mini_agents.add_event_sink()`."""

    def intercepts(self, agent: MiniAgent) -> bool:
        """Whether calls of this agent are offered to `aanswer` (decided before its inputs are awaited)."""

    async def aanswer(self, call: InterceptedCall) -> Optional[MessageType]:
        """The reply to use instead of running the agent, or None to run the agent for real.

        The reply may be an async iterator of message promises that raises a recorded error at its end.
        """

    async def afinish(self, mini_agents: MiniAgents, error: Optional[BaseException]) -> None:
        """Called when the `MiniAgents` context ends (after its sinks have been flushed). What it raises is raised
        from the `async with` block when the block itself raised nothing (replay: a divergence the agents
        swallowed)."""


class ListEventSink:
    """An `EventSink` that keeps events in a list (for tests and inspection)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.runs_started: list[str] = []
        self.runs_finished: list[str] = []

    async def astart_run(self, run_id: str) -> None:
        self.runs_started.append(run_id)

    def append(self, event: Event) -> None:
        self.events.append(event)

    async def afinish_run(self, run_id: str) -> None:
        self.runs_finished.append(run_id)

    def of_kind(self, kind: EventKind) -> list[Event]:
        """The events of one kind, in order."""
        return [event for event in self.events if event.kind is kind]


RECORDED_ERROR_ATTRIBUTES = (
    "status_code",
    "message",
    "body",
    "code",
    "type",
    "param",
    "request_id",
    "error_code",
    "api_message",
    "args",
    "errno",
    "strerror",
    "filename",
    "filename2",
)
"""The public attributes recorded with an exception when it has them and they hold plain JSON: those of the
OpenAI and Anthropic SDK errors that applications read, and the `args` (and `OSError` fields) a built-in exception
is rebuilt from. Replay sets them on the replayed error."""

_ONLY_WHEN_TELLING = frozenset({"args", "errno", "strerror", "filename", "filename2"})
"""Attributes recorded only when they add to the text."""


def describe_error(error: BaseException) -> dict[str, Any]:
    """The stored description of an exception: `ErrorDescription.of(error).to_data()`."""
    return ErrorDescription.of(error).to_data()


_MAX_JSON_DEPTH = 32


def _plain_json(value: Any, depth: int) -> Any:
    """`value` as plain JSON that a store gives back unchanged (exact `str`/`int`/`float`/`bool`/None, lists and
    dicts with text keys); raises `TypeError` for anything else."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64:
        return int.__index__(value)
    if isinstance(value, float) and math.isfinite(value):
        return float.__float__(value)
    if depth < _MAX_JSON_DEPTH:
        if isinstance(value, (list, tuple)):
            return [_plain_json(item, depth + 1) for item in value]
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            return {str.__str__(key): _plain_json(item, depth + 1) for key, item in value.items()}
    raise TypeError(f"not plain JSON: {type(value).__qualname__}")
