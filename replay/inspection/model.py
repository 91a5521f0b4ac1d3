"""A recorded run as the viewer, the exports and the command line see it: its calls with timing, streams, usage
and errors, read once from the store's events."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from miniagents.events import (
    CallFinishedPayload,
    CallStartedPayload,
    ErrorDescription,
    ErrorPayload,
    EventKind,
    PartialReply,
    StreamPayload,
    WholeReply,
)
from miniagents.messages import Message
from miniagents.promising.ext.frozen import Frozen
from replay.tree import CallTreeNode, aload_tree
from store.base import EventStore
from store.errors import StoreUsageError, UnknownRunError
from store.results import RunInfo

_PROVIDERS = {"OpenAIMessage": "openai", "AnthropicMessage": "anthropic", "StandInLLMMessage": "miniagents.stand_in"}
"""The GenAI provider name of the reply classes of the shipped LLM agents."""


@dataclass(frozen=True)
class Usage:
    """Tokens an LLM call reported (`prompt_tokens`/`completion_tokens` or `input_tokens`/`output_tokens`)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class StreamTiming:
    """When one reply of a call was streamed: its chunks' arrivals, in seconds since the run started."""

    hash_key: Optional[str]
    """The finished message's hash key (None for a reply whose stream broke)."""
    started_at: float
    chunk_times: tuple[float, ...]
    chunk_lengths: tuple[int, ...]
    error: Optional[ErrorDescription] = None
    """What broke the stream, if it broke."""

    @property
    def first_chunk_at(self) -> Optional[float]:
        return self.chunk_times[0] if self.chunk_times else None


@dataclass
class RunCall:
    """One agent call of a recorded run, with everything the viewer and the exports show of it."""

    node: CallTreeNode
    """The call in the interaction tree (kwargs, inputs, replies and errors are read from it)."""
    position: str
    """Where the call is in the run's call tree ("2.0": the first call made by the third top-level call)."""
    depth: int
    streams: list[StreamTiming] = field(default_factory=list)
    """Its own replies' streams (not those of replies it passed on from other calls), in order of their start."""
    children: list[RunCall] = field(default_factory=list)
    made: Optional[frozenset[str]] = None
    """The hash keys of the replies this call made itself (the `message` events name the call that made each
    message); None when the recording cannot tell (then every reply counts as its own)."""

    @property
    def call_id(self) -> int:
        return self.node.call_id

    @property
    def parent_call_id(self) -> Optional[int]:
        return self.node.parent_call_id

    @property
    def agent_alias(self) -> str:
        return self.node.agent_alias

    @property
    def started_at(self) -> Optional[float]:
        """Seconds since the run started."""
        return self.node.started_at

    @property
    def finished_at(self) -> Optional[float]:
        return self.node.finished_at

    @property
    def duration(self) -> Optional[float]:
        return self.node.duration

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.node.kwargs

    @property
    def inputs(self) -> tuple[Message, ...]:
        return self.node.input_messages

    @property
    def replies(self) -> tuple[Message, ...]:
        return self.node.replies

    @property
    def own_replies(self) -> tuple[Message, ...]:
        """The replies this call made itself, not those it passed on from the calls it made."""
        if self.made is None:
            return self.replies
        return tuple(reply for reply in self.replies if reply.hash_key in self.made)

    @property
    def partial_replies(self) -> tuple[PartialReply, ...]:
        return self.node.partial_replies

    @property
    def error(self) -> Optional[ErrorDescription]:
        """The error the agent (or its reply sequence) raised, or else the one its input raised, or else the one
        that broke one of its replies' streams."""
        broken = next((partial.error for partial in self.node.partial_replies), None)
        return self.node.error or self.node.input_error or broken

    @property
    def first_token_at(self) -> Optional[float]:
        """When the first chunk of any of its streamed replies arrived (seconds since the run started)."""
        firsts = [moment for stream in self.streams if (moment := stream.first_chunk_at) is not None]
        return min(firsts) if firsts else None

    @property
    def time_to_first_token(self) -> Optional[float]:
        """Seconds from the call's start to its first streamed chunk."""
        first = self.first_token_at
        if first is None or self.started_at is None:
            return None
        return max(0.0, first - self.started_at)

    @property
    def usage(self) -> Optional[Usage]:
        """The tokens its own replies report (None when none reports any)."""
        found = [usage for reply in self.own_replies if (usage := message_usage(reply)) is not None]
        if not found:
            return None
        total = Usage()
        for usage in found:
            total += usage
        return total

    @property
    def response_model(self) -> Optional[str]:
        """The model its own replies name (as the API reported it)."""
        for reply in self.own_replies:
            model = getattr(reply, "model", None)
            if isinstance(model, str):
                return model
        return None

    @property
    def request_model(self) -> Optional[str]:
        """The `model` keyword argument of the call, else the model its replies name."""
        model = self.kwargs.get("model")
        return model if isinstance(model, str) else self.response_model

    @property
    def is_llm_call(self) -> bool:
        """Whether the call asked an LLM: its own replies name a model or report token usage."""
        return self.response_model is not None or self.usage is not None

    @property
    def provider(self) -> Optional[str]:
        """The GenAI provider of an LLM call (`openai`, `anthropic`, ...), from its replies' class."""
        for reply in self.own_replies:
            name = message_class(reply)
            if name in _PROVIDERS:
                return _PROVIDERS[name]
        return "miniagents" if self.is_llm_call else None

    @property
    def finish_reasons(self) -> tuple[str, ...]:
        """Why the LLM stopped, per reply (`finish_reason`, `stop_reason` or `choices[0].finish_reason`)."""
        reasons: list[str] = []
        for reply in self.own_replies:
            fields = plain(reply)
            reason = fields.get("finish_reason") or fields.get("stop_reason")
            choices = fields.get("choices")
            if reason is None and isinstance(choices, list) and choices and isinstance(choices[0], dict):
                reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                reasons.append(reason)
        return tuple(reasons)

    def walk(self) -> Iterator[RunCall]:
        """This call and every call below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class RecordedRun:
    """One run of a store, read once: its `RunInfo` and its calls as a forest (`roots`), depth first in `calls`."""

    info: RunInfo
    roots: list[RunCall]
    calls: list[RunCall]

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def started_at(self) -> float:
        """Wall-clock start, seconds since the epoch (0 when it was not recorded)."""
        return self.info.started_at or 0.0

    @property
    def duration(self) -> float:
        """Seconds from the run's start to its last recorded moment."""
        ends = [moment for call in self.calls for moment in _moments(call)]
        finished, started = self.info.finished_at, self.info.started_at
        recorded = finished - started if finished is not None and started is not None else 0.0
        return max([recorded, *ends])

    @property
    def timed(self) -> bool:
        """Whether the recording holds times (a text recording leaves them out unless made with `timing=True`)."""
        return bool(self.info.started_at) or any(moment for call in self.calls for moment in _moments(call))

    @property
    def usage(self) -> Usage:
        """The tokens of every call, added up."""
        total = Usage()
        for call in self.calls:
            usage = call.usage
            if usage is not None:
                total += usage
        return total

    def call_at(self, position: str) -> RunCall:
        """The call at a position ("2.0"); `KeyError` if there is none."""
        for call in self.calls:
            if call.position == position:
                return call
        raise KeyError(position)


def _moments(call: RunCall) -> Iterator[float]:
    for moment in (call.started_at, call.finished_at):
        if moment is not None:
            yield moment
    for stream in call.streams:
        yield from stream.chunk_times


async def alatest_run_id(store: EventStore) -> str:
    """The id of the run that started last; `StoreUsageError` when the store has none."""
    runs = await store.alist_runs()
    if not runs:
        raise StoreUsageError(f"{store.location} holds no runs yet; record one with `MiniAgents(store=...)`.")
    # the store lists runs oldest first: of runs without a recorded start (a stable text recording), the last one
    return max(enumerate(runs), key=lambda item: (item[1].started_at or 0.0, item[0]))[1].run_id


async def aresolve_run_id(store: EventStore, run: Optional[str]) -> str:
    """The run id that `run` names: the latest run when None, else a run id or a unique start of one."""
    if run is None:
        return await alatest_run_id(store)
    runs = await store.alist_runs()
    if any(info.run_id == run for info in runs):
        return run
    matches = [info.run_id for info in runs if info.run_id.startswith(run)] if run else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise StoreUsageError(f"Run {run!r} is ambiguous in {store.location}: {', '.join(matches)}; give more of it.")
    raise UnknownRunError(
        f"No run {run!r} in {store.location}; `miniagents runs {store.location}` lists the stored runs.", run
    )


ProgressCallback = Callable[[int, int], None]
"""Told (events read, events in the run) as a run is read."""

_PROGRESS_EVERY = 500


async def aload_run(
    store: EventStore, run: Optional[str] = None, progress: Optional[ProgressCallback] = None
) -> RecordedRun:
    """Read one run of an open store (the latest when `run` is None; a unique start of a run id will do): its
    calls as a tree, each with its timing, streamed replies (chunk arrivals), token usage and errors.

    :param progress: called with (events read, events in the run) every few hundred events and at the end.
    """
    run_id = await aresolve_run_id(store, run)
    info = await store.aget_run(run_id)
    tree = await aload_tree(store, run_id)
    read = 0
    positions: dict[int, str] = {}
    whole: dict[int, tuple[WholeReply, ...]] = {}
    streamed_at: dict[str, list[tuple[Optional[int], float, StreamPayload]]] = {}
    broken: dict[int, list[tuple[float, PartialReply]]] = {}
    made_by: dict[str, set[Optional[int]]] = {}
    streamed_by: dict[str, set[Optional[int]]] = {}
    kinds = [EventKind.MESSAGE, EventKind.CALL_STARTED, EventKind.CALL_FINISHED, EventKind.STREAM, EventKind.ERROR]
    async for event in store.aiter_events(run_id, kinds=kinds):
        read += 1
        if progress is not None and read % _PROGRESS_EVERY == 0:
            progress(read, info.event_count)
        if event.kind is EventKind.MESSAGE:
            if event.hash_key is not None:
                made_by.setdefault(event.hash_key, set()).add(event.call_id)
            continue
        payload = event.payload
        if isinstance(payload, CallStartedPayload) and event.call_id is not None and payload.position:
            positions[event.call_id] = payload.position
        elif isinstance(payload, CallFinishedPayload) and event.call_id is not None:
            if payload.position:
                positions.setdefault(event.call_id, payload.position)
            whole[event.call_id] = tuple(reply for reply in payload.replies if isinstance(reply, WholeReply))
        elif isinstance(payload, StreamPayload) and event.hash_key is not None:
            streamed_at.setdefault(event.hash_key, []).append((event.call_id, event.t, payload))
            streamed_by.setdefault(event.hash_key, set()).add(event.call_id)
        elif isinstance(payload, ErrorPayload) and payload.partial is not None and event.call_id is not None:
            broken.setdefault(event.call_id, []).append((event.t, payload.partial))

    def build(node: CallTreeNode, depth: int, fallback: str) -> RunCall:
        call = RunCall(node=node, position=positions.get(node.call_id, fallback), depth=depth)
        replies = whole.get(node.call_id, ())
        if made_by:
            # a stream event has always named the call that streamed it; a message event names the call that made
            # the message (in older recordings: the call that first awaited it)
            call.made = frozenset(
                reply.hash_key
                for reply in replies
                if node.call_id in (streamed_by.get(reply.hash_key) or made_by.get(reply.hash_key) or {node.call_id})
            )
            replies = tuple(reply for reply in replies if reply.hash_key in call.made)
        call.streams = _streams(node, replies, streamed_at, broken.get(node.call_id, []))
        call.children = [
            build(child, depth + 1, f"{call.position}.{index}") for index, child in enumerate(node.children)
        ]
        return call

    roots = [build(node, 0, str(index)) for index, node in enumerate(tree.roots)]
    calls = [call for root in roots for call in root.walk()]
    if progress is not None:
        progress(info.event_count, info.event_count)
    return RecordedRun(info=info, roots=roots, calls=calls)


def _streams(
    node: CallTreeNode,
    replies: tuple[WholeReply, ...],
    streamed_at: Mapping[str, list[tuple[Optional[int], float, StreamPayload]]],
    broken: list[tuple[float, PartialReply]],
) -> list[StreamTiming]:
    """The streamed replies of a call, placed on the run's clock: a stream event is written when its message is
    complete, so the stream started at the event's time less the last chunk's offset."""
    streams: list[StreamTiming] = []
    for reply in replies:
        if reply.chunks is None:
            continue
        candidates = streamed_at.get(reply.hash_key, [])
        own = [item for item in candidates if item[0] == node.call_id] or candidates
        offsets = reply.offsets
        if own:
            _, completed_at, payload = own[0]
            offsets = payload.offsets or offsets
        else:
            completed_at = node.finished_at if node.finished_at is not None else (node.started_at or 0.0)
        started = completed_at - (offsets[-1] if offsets else 0.0)
        streams.append(StreamTiming(reply.hash_key, started, tuple(started + o for o in offsets), reply.chunks))
    for broken_at, partial in broken:
        offsets = partial.offsets
        started = broken_at - (offsets[-1] if offsets else 0.0)
        lengths = tuple(len(chunk) for chunk in partial.chunks)
        streams.append(StreamTiming(None, started, tuple(started + o for o in offsets), lengths, partial.error))
    streams.sort(key=lambda stream: stream.started_at)
    return streams


def message_class(message: Frozen) -> str:
    """The class name a message was recorded with."""
    name = getattr(message, "class_", None)
    return name if isinstance(name, str) else type(message).__name__


def message_text(message: Frozen) -> str:
    """What a message says: its text (for a message without one, its fields as JSON)."""
    return str(message)


def plain(value: Any) -> Any:
    """`value` as plain JSON values: a `Frozen` (a message too) as a dict of its fields (`class_` included, except
    for plain dicts) with nested messages spelled out whole, tuples as lists."""
    stack_result: list[Any] = []
    _to_plain(value, stack_result)
    return stack_result[0]


def _to_plain(value: Any, out: list[Any]) -> None:
    # iterative, so that messages nested deeply are spelled out without recursion
    pending: list[tuple[Any, Any, Any]] = [(value, out, None)]
    while pending:
        item, container, key = pending.pop()
        if isinstance(item, Frozen):
            result: Any = {}
            plain_dict = type(item) is Frozen  # a dict held in a message: no class to name
            for name, nested in item.field_items():
                if not (plain_dict and name == "class_"):
                    result[name] = None  # keeps the fields' order
                    pending.append((nested, result, name))
        elif isinstance(item, Mapping):
            result = {}
            for name, nested in item.items():
                result[str(name)] = None
                pending.append((nested, result, str(name)))
        elif isinstance(item, (tuple, list)):
            result = [None] * len(item)
            for index, nested in enumerate(item):
                pending.append((nested, result, index))
        else:
            result = item
        if key is None:
            container.append(result)
        else:
            container[key] = result


def message_usage(message: Frozen) -> Optional[Usage]:
    """The token usage a message reports in its `usage` field, if any."""
    usage = getattr(message, "usage", None)
    if usage is None:
        return None
    fields = plain(usage)
    if not isinstance(fields, dict):
        return None
    input_tokens = fields.get("input_tokens", fields.get("prompt_tokens"))
    output_tokens = fields.get("output_tokens", fields.get("completion_tokens"))
    if not isinstance(input_tokens, int) and not isinstance(output_tokens, int):
        return None
    return Usage(
        input_tokens if isinstance(input_tokens, int) else 0, output_tokens if isinstance(output_tokens, int) else 0
    )
