"""Interaction trees: who called whom in a recorded run, with inputs, kwargs, replies, errors and timing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, cast

from miniagents.events import (
    CallFinishedPayload,
    CallStartedPayload,
    ErrorDescription,
    ErrorPayload,
    EventKind,
    PartialReply,
    WholeReply,
)
from miniagents.messages import Message, MessageSequencePromise
from miniagents.promising.ext.frozen import Frozen
from miniagents.promising.sequence import collect_tuple
from replay.matching import CallToMatch
from replay.recording import RecordedCall, Recording
from replay.streams import replayed_sequence
from store.base import EventStore


@dataclass
class CallTreeNode:
    """One agent call of a recorded run, whatever its outcome.

    Its call node and replies were read and checked with the whole tree; they are rebuilt into objects (`kwargs`,
    `input_messages`, `replies`) when first used. A call whose input failed has no call node (no `call_key`): its
    `kwargs` and `input_messages` (those that resolved before the failure) come from the record of what it
    received, and `input_error` says how the input failed.
    """

    call_id: int
    parent_call_id: Optional[int]
    agent_alias: str
    started_at: Optional[float] = None
    """Seconds since the run started."""
    finished_at: Optional[float] = None
    call_key: Optional[str] = None
    occurrence: Optional[int] = None
    partial_replies: tuple[PartialReply, ...] = ()
    """The replies whose stream broke, in order: message class, metadata, the chunks received and the error."""
    error: Optional[ErrorDescription] = None
    """The error the agent (or its reply sequence) raised: type, module, text (and the SDK attributes)."""
    input_error: Optional[ErrorDescription] = None
    """The error the call's input raised (after `input_messages`), when it did."""
    replayed: bool = False
    children: list[CallTreeNode] = field(default_factory=list)
    _recorded: Optional[RecordedCall] = field(default=None, repr=False)
    _store: Optional[EventStore] = field(default=None, repr=False)
    _objects: Mapping[str, Frozen] = field(default_factory=dict, repr=False, compare=False)
    """The run's objects by hash key (read and checked; rebuilt on first lookup)."""
    _call: Optional[CallToMatch] = field(default=None, repr=False, compare=False)
    _replies: Optional[tuple[Message, ...]] = field(default=None, repr=False, compare=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the call (bound with `fork()` and given to the call), whatever their names."""
        return cast(dict[str, Any], self._recorded_call().kwargs)  # built as a dict, decoded once

    @property
    def metadata(self) -> dict[str, Any]:
        """The agent's interaction metadata recorded with the call (and, in recordings made before keyword
        arguments were kept apart, those arguments)."""
        return cast(dict[str, Any], self._recorded_call().metadata)

    @property
    def input_messages(self) -> tuple[Message, ...]:
        """The messages the call received, in order (when its input failed, those that resolved before)."""
        return self._recorded_call().messages

    @property
    def replies(self) -> tuple[Message, ...]:
        """The replies that were received whole (see `partial_replies` for the others)."""
        if self._replies is None:
            recorded = self._recorded.replies if self._recorded is not None else ()
            self._replies = tuple(
                message
                for reply in recorded
                if isinstance(reply, WholeReply) and isinstance(message := self._objects.get(reply.hash_key), Message)
            )
        return self._replies

    def _recorded_call(self) -> CallToMatch:
        if self._call is None:
            node_key = self.call_key or (self._recorded.partial_call_node if self._recorded is not None else None)
            call_node = self._objects.get(node_key) if node_key else None
            self._call = (
                CallToMatch.of(call_node)
                if call_node is not None
                else CallToMatch(agent_alias=self.agent_alias, kwargs={}, messages=())
            )
        return self._call

    @property
    def finished(self) -> bool:
        """Whether the call's end was recorded (False when its process died first)."""
        return self._recorded is not None

    @property
    def duration(self) -> Optional[float]:
        """Seconds from start to finish, if both were recorded."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    async def areply_sequence(self, speed: Optional[float] = None) -> MessageSequencePromise:
        """The call's replies streamed again as recorded, without running any agent (needs a MiniAgents context)."""
        if self._recorded is None or self._store is None:
            raise ValueError(f"Call {self.call_id} of {self.agent_alias} never finished; it has no replies to stream.")
        promises, error = await Recording(self._store).areply_promises(self._recorded, speed)
        sequence = replayed_sequence(promises, error)

        async def streamer(_: Any) -> Any:
            if isinstance(sequence, list):
                for promise in sequence:
                    yield promise
            else:
                async for promise in sequence:
                    yield promise

        return MessageSequencePromise(streamer=streamer, resolver=collect_tuple, start_asap=False)

    def walk(self) -> Iterator[CallTreeNode]:
        """This call and every call below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def render(self, indent: int = 0) -> list[str]:
        """Text lines of this call and its children, indented two spaces per level."""
        pad = "  " * indent
        timing = f" {self.duration * 1000:.1f} ms" if self.duration is not None else ""
        flags = (" [replayed]" if self.replayed else "") + ("" if self.finished else " [unfinished]")
        kwargs = ", ".join(f"{name}={value!r}" for name, value in sorted(self.kwargs.items()))
        lines = [f"{pad}{self.agent_alias}#{self.call_id}({kwargs}){timing}{flags}"]
        for message in self.input_messages:
            lines.append(f"{pad}  < {_one_line(str(message))}")
        for message in self.replies:
            lines.append(f"{pad}  > {_one_line(str(message))}")
        for partial in self.partial_replies:
            lines.append(f"{pad}  > {_one_line(partial.text)} !! {_one_line(str(partial.error))}")
        if self.input_error is not None and self.input_error != self.error:
            lines.append(f"{pad}  !! input: {_one_line(str(self.input_error))}")
        if self.error is not None:
            lines.append(f"{pad}  !! {_one_line(str(self.error))}")
        for child in self.children:
            lines.extend(child.render(indent + 1))
        return lines

    def __str__(self) -> str:
        return "\n".join(self.render())


@dataclass
class InteractionTree:
    """The calls of one run, as a forest: `roots` are the calls made outside any agent."""

    run_id: str
    roots: list[CallTreeNode]
    calls: dict[int, CallTreeNode]

    def walk(self) -> Iterator[CallTreeNode]:
        """Every call, depth first."""
        for root in self.roots:
            yield from root.walk()

    def __str__(self) -> str:
        return "\n".join(line for root in self.roots for line in root.render())


async def aload_tree(store: EventStore, run_id: str) -> InteractionTree:
    """Rebuild who called whom in a stored run, with inputs, kwargs, replies, errors and timing.

    The call nodes and replies of every call are read in one bulk read and checked against their hash keys here
    (a corrupted object raises `StoreIntegrityError` naming it); each is rebuilt into an object when first used.
    """
    calls: dict[int, CallTreeNode] = {}
    order: list[int] = []
    wanted: set[str] = set()
    kinds = [EventKind.CALL_STARTED, EventKind.CALL_FINISHED, EventKind.ERROR]
    async for event in store.aiter_events(run_id, kinds=kinds):
        if event.call_id is None:
            continue
        payload = event.payload
        node = calls.get(event.call_id)
        if node is None:
            alias = payload.agent_alias if isinstance(payload, (CallStartedPayload, CallFinishedPayload)) else "?"
            node = CallTreeNode(call_id=event.call_id, parent_call_id=event.parent_call_id, agent_alias=alias)
            calls[event.call_id] = node
            order.append(event.call_id)
        if isinstance(payload, CallStartedPayload):
            node.started_at = event.t
        elif isinstance(payload, CallFinishedPayload):
            recorded = RecordedCall.from_event(event)
            node.finished_at = event.t
            node.call_key = recorded.call_key or None
            node.occurrence = recorded.occurrence
            node.replayed = recorded.replayed
            node.error = recorded.error or node.error
            node.input_error = recorded.input_error
            node.partial_replies = tuple(reply for reply in recorded.replies if isinstance(reply, PartialReply))
            node._recorded = recorded
            node._store = store
            wanted.update(key for key in (recorded.call_key, recorded.partial_call_node) if key)
            wanted.update(reply.hash_key for reply in recorded.replies if isinstance(reply, WholeReply))
        elif isinstance(payload, ErrorPayload) and payload.where == "agent":
            node.error = payload.error

    objects = await store.aget_many_lazily(sorted(wanted))
    roots: list[CallTreeNode] = []
    for call_id in order:
        node = calls[call_id]
        node._objects = objects
        parent = calls.get(node.parent_call_id) if node.parent_call_id is not None else None
        if parent is None:
            roots.append(node)
        else:
            parent.children.append(node)
    return InteractionTree(run_id=run_id, roots=roots, calls=calls)


def _one_line(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
