"""The event vocabulary, and the two protocols other layers plug into: `EventSink` and `CallInterceptor`.

A `MiniAgents` context with a sink is one *run*. The core pushes `Event`s into every sink synchronously, in the
order things happen; a sink must not block (a store buffers and flushes in the background).

| kind            | hash_key            | call_id / parent_call_id      | data                                       |
|-----------------|---------------------|-------------------------------|--------------------------------------------|
| run_started     | -                   | -                             | started_at (epoch s), library_version,     |
|                 |                     |                               | metadata                                   |
| run_finished    | -                   | -                             | status ("ok" / "failed"), error            |
| message         | the object's hash   | call that was current         | - (the object is in `Event.obj`)           |
| stream          | the message's hash  | call that produced it         | chunks (lengths), offsets (s since start)  |
| call_started    | -                   | the call / its parent call    | agent_alias                                |
| call_finished   | the AgentCallNode   | the call / its parent call    | agent_alias, call_node, reply_node,        |
|                 | hash (the call key) |                               | occurrence, position, replies, error,      |
|                 |                     |                               | replayed                                   |
| error           | -                   | call that was current         | where, position, error, partial            |

`call_finished.data["replies"]` lists the call's replies in order: `{"hash": h}` for a resolved message (plus
`"chunks"` (lengths) and `"offsets"` when it was streamed, so replay needs no other lookup), or
`{"failed": PARTIAL}` for a reply whose stream broke, where PARTIAL is `{"class_", "metadata", "chunks" (the texts
received), "offsets", "error"}`; `data["error"]` is an error the reply sequence itself raised after those replies.
An error is described as `{"type", "module", "text"}` (the class's `__qualname__`, its `__module__`, `str(error)`),
plus `"attributes"` when the exception has some of `RECORDED_ERROR_ATTRIBUTES` holding plain JSON (`status_code`,
`message`, `body`... of the OpenAI and Anthropic SDK errors; never `request` / `response`); secrets are redacted
from the text and the attributes. Descriptions without `"attributes"` (older recordings) are as valid.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

from miniagents.promising.ext.frozen import REDACTION

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
    obj: Optional[Frozen] = field(default=None, repr=False, compare=False)
    seq: Optional[int] = None
    canonical_bytes: Optional[bytes] = field(default=None, repr=False, compare=False)
    """`obj.canonical_bytes` when the emitter had them at hand (a store then does not encode `obj` again); like
    `obj`, it only travels to the sink."""


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
)
"""The public attributes recorded with an exception when it has them and they hold plain JSON: those of the
OpenAI and Anthropic SDK errors that applications read. Replay sets them on the replayed error."""


def describe_error(error: BaseException) -> dict[str, Any]:
    """The stored description of an exception: its type, module and text, plus its `RECORDED_ERROR_ATTRIBUTES`
    (if any), with secrets redacted (for an exception that stands in for a recorded one, such as a replayed error,
    its `recorded_description`: the original's description)."""
    recorded = getattr(error, "recorded_description", None)
    if isinstance(recorded, dict):
        return dict(recorded)
    error_type = type(error)
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not break the recording
        text = f"<{error_type.__qualname__}: str() failed>"
    description: dict[str, Any] = {
        "type": error_type.__qualname__,
        "module": error_type.__module__,
        "text": _redacted_text(text),
    }
    attributes: dict[str, Any] = {}
    for name in RECORDED_ERROR_ATTRIBUTES:
        try:
            value = _plain_json(getattr(error, name), 0)
        except Exception:  # absent, a property that failed, or not plain JSON (an object, NaN, a huge integer)
            continue
        secret = value is not None and REDACTION.is_secret(name)
        attributes[name] = REDACTION.marker if secret else _redacted_value(value)
    if attributes:
        description["attributes"] = attributes
    return description


_API_KEY_LOOKING = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
"""An API key recognised by its look (OpenAI's `sk-...`, `sk-proj-...`, Anthropic's `sk-ant-...`), anywhere."""

_NAMED_VALUE = re.compile(r"""([A-Za-z_][\w-]*)(['"]?\s*[:=]\s*)('[^']*'|"[^"]*"|[^\s,;'"}\])]+)""")
"""`name: value`, `'name': 'value'`, `"name": "value"` or `name=value` in a text (a dict's repr, JSON, a query)."""


def _redacted_text(text: str) -> str:
    """`text` with API-key-looking values, and the values named by secret-looking names (see `REDACTION`),
    replaced by the redaction marker."""
    text = _API_KEY_LOOKING.sub(REDACTION.marker, text)
    normalized = text.lower().replace("-", "_")
    if any(name in normalized for name in REDACTION.names):
        text = _NAMED_VALUE.sub(_redacted_named_value, text)
    return text


def _redacted_named_value(match: re.Match[str]) -> str:
    name, separator, value = match.groups()
    if not REDACTION.is_secret(name) or value in ("None", "null"):
        return match.group(0)
    quote = value[0] if value[0] in "'\"" else ""
    return f"{name}{separator}{quote}{REDACTION.marker}{quote}"


def _redacted_value(value: Any) -> Any:
    """Plain JSON with the values of secret-looking keys replaced (as the store does) and texts redacted."""
    if isinstance(value, dict):
        return {
            key: REDACTION.marker if item is not None and REDACTION.is_secret(key) else _redacted_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted_value(item) for item in value]
    if isinstance(value, str):
        return _redacted_text(value)
    return value


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
