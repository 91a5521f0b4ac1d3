"""Recording a run: its id and clock, the event sinks, call numbering, and every event built from a typed payload."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from miniagents.errors import EventSinkError
from miniagents.events import (
    CallFinishedPayload,
    CallStartedPayload,
    ErrorDescription,
    ErrorPayload,
    Event,
    EventKind,
    EventPayload,
    EventSink,
    MessagePayload,
    PartialReply,
    ReplyRecord,
    RunFinishedPayload,
    RunStartedPayload,
    StreamPayload,
    WholeReply,
)
from miniagents.messages import Message, MessagePromise, may_reference_messages
from miniagents.promising.ext.frozen import Frozen

if TYPE_CHECKING:
    import asyncio

    from miniagents.miniagents import AgentCall, MiniAgents

logger = logging.getLogger(__name__)

_EMITTED_BY = "_miniagents_emitted_by"
"""Key, in a message's `__dict__`, of the serial of the run that emitted it, or a tuple of the serials of the last few
runs that did (contexts can nest). An int for the one run that emits most messages: a tuple would make the Python
collector walk the message's `__dict__` and the tuple."""
_EMITTED_BY_KEPT = 8
_context_serials = itertools.count(1)


class RunRecorder:
    """What a `MiniAgents` context records while it is active: the run's id and clock, the event sinks and their
    failures, how calls are numbered (ids, top-level positions, occurrences of identical calls), which messages
    were emitted already, and the queue of the `on_persist_message` handlers. Every event goes through `emit`."""

    def __init__(self, context: MiniAgents, sinks: list[EventSink]) -> None:
        self._context = context
        self.sinks = sinks
        self.run_id: Optional[str] = None
        self.sink_errors: list[BaseException] = []
        self._started_at = 0.0
        self._serial = 0
        self._call_ids: Iterator[int] = itertools.count(1)
        self._top_level_call_count = 0
        self._occurrences: dict[str, int] = {}
        self._persist_queue: deque[tuple[Any, Message]] = deque()
        self._persist_worker: Optional[asyncio.Task[None]] = None
        self.reset()

    def reset(self) -> None:
        """Forget what an earlier activation of the context saw: every run numbers its calls afresh."""
        self.run_id = None
        self.sink_errors = []
        self._serial = next(_context_serials)
        self._call_ids = itertools.count(1)
        self._top_level_call_count = 0
        self._occurrences = {}

    @property
    def is_recording(self) -> bool:
        """Whether events are being sent to at least one sink."""
        return bool(self.sinks)

    # ------------------------------------------------------------------------------------------------------ the run

    async def astart_run(self, metadata: dict[str, Any]) -> None:
        """Start a run in every sink (if one fails, finish those started) and emit `run_started`."""
        from miniagents import __version__

        run_id = uuid.uuid4().hex
        started: list[EventSink] = []
        try:
            for sink in self.sinks:
                await sink.astart_run(run_id)
                started.append(sink)
        except BaseException:
            for sink in started:
                await sink.afinish_run(run_id)
            raise
        self.run_id = run_id
        self._started_at = time.perf_counter()
        self.emit(RunStartedPayload(started_at=time.time(), library_version=__version__, metadata=metadata))

    async def afinish_run(self, error: Optional[BaseException]) -> None:
        """Emit `run_finished` and finish the run in every sink (their failures are kept in `sink_errors`)."""
        if self.run_id is None:
            return
        self.emit(RunFinishedPayload("ok" if error is None else "failed", _described(error)))
        for sink in self.sinks:
            try:
                await sink.afinish_run(self.run_id)
            except Exception as exc:
                logger.error("An event sink failed to finish run %s", self.run_id, exc_info=True)
                self.sink_errors.append(exc)

    def sink_error(self) -> Optional[EventSinkError]:
        """What the context raises when a sink failed during the run."""
        if not self.sink_errors:
            return None
        first = self.sink_errors[0]
        return EventSinkError(
            f"Recording run {self.run_id} failed: {type(first).__name__}: {first}. Events that could not be "
            "written are listed in the store's error; the run's messages were still delivered to the agents."
        )

    def emit(
        self,
        payload: EventPayload,
        hash_key: Optional[str] = None,
        call_id: Optional[int] = None,
        parent_call_id: Optional[int] = None,
    ) -> None:
        """Send the event of a typed payload to every sink."""
        assert self.run_id is not None
        self._append(Event.of(payload, self.run_id, self._now(), hash_key, call_id, parent_call_id))

    def _now(self) -> float:
        return time.perf_counter() - self._started_at

    def _append(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.append(event)
            except Exception as exc:
                logger.error("An event sink refused an event of run %s", self.run_id, exc_info=True)
                self.sink_errors.append(exc)

    # -------------------------------------------------------------------------------------------------- numbering

    def next_call_id(self) -> int:
        return next(self._call_ids)

    def next_top_level_position(self) -> str:
        """The position of a new call made outside any agent ("2": the third)."""
        position = str(self._top_level_call_count)
        self._top_level_call_count += 1
        return position

    def next_occurrence(self, call_hash_key: str) -> int:
        """How many identical calls (same call node) came before this one in this run."""
        occurrence = self._occurrences.get(call_hash_key, 0)
        self._occurrences[call_hash_key] = occurrence + 1
        return occurrence

    # --------------------------------------------------------------------------------------------------- messages

    def persist(self, promise: Any, message: Message, call: Optional[AgentCall]) -> None:
        """Emit a resolved message and the sub-messages not emitted yet in this run (sub-messages first, each
        naming the message it is nested in), and hand each to the `on_persist_message` handlers. The events name
        `call`, the agent call that made the message, and its parent call."""
        if self._emitted_here(message):
            return  # emitted already, and so were its sub-messages
        call_id = call.call_id if call is not None else None
        parent_call_id = call.parent_call_id if call is not None else None
        canonical_bytes: Optional[bytes] = None
        if self.sinks:
            _, canonical_bytes = message.hash_key_and_canonical_bytes()
        if canonical_bytes is None or may_reference_messages(canonical_bytes):  # most messages nest none
            sub_messages = [
                sub_message for sub_message in message.sub_messages() if not self._emitted_here(sub_message)
            ]
            if sub_messages:
                parents = _containing_messages(message) if self.sinks else {}
                for sub_message in sub_messages:
                    if not self._emitted_here(sub_message):  # a message nested twice is emitted once
                        parent = parents.get(id(sub_message))
                        self._persist_one(promise, sub_message, call_id, parent_call_id, parent=parent)
        self._persist_one(promise, message, call_id, parent_call_id, canonical_bytes)

    def record_object(self, obj: Message, call: AgentCall) -> None:
        """Emit an object that is a record of `call`, not a message of the run (sinks only, no handlers)."""
        if self.sinks and self.run_id is not None:
            hash_key, canonical_bytes = obj.hash_key_and_canonical_bytes()
            event = Event(EventKind.MESSAGE, self.run_id, self._now(), hash_key, call.call_id, call.parent_call_id)
            event.obj, event.canonical_bytes = obj, canonical_bytes
            self._append(event)

    def _emitted_here(self, message: Message) -> bool:
        emitted_by = message.__dict__.get(_EMITTED_BY)
        if type(emitted_by) is int:
            return emitted_by == self._serial
        return emitted_by is not None and self._serial in emitted_by

    def _persist_one(
        self,
        promise: Any,
        message: Message,
        call_id: Optional[int],
        parent_call_id: Optional[int],
        canonical_bytes: Optional[bytes] = None,
        parent: Optional[Message] = None,
    ) -> None:
        """Emit one message (sub-messages first is the caller's job); `canonical_bytes` if the caller encoded them
        to hash the message; `parent`: the message it is nested in (for a sub-message)."""
        emitted_by = message.__dict__.get(_EMITTED_BY)
        if emitted_by is None:
            message.__dict__[_EMITTED_BY] = self._serial
        elif type(emitted_by) is int:
            message.__dict__[_EMITTED_BY] = (emitted_by, self._serial)
        else:
            message.__dict__[_EMITTED_BY] = (*emitted_by[1 - _EMITTED_BY_KEPT :], self._serial)
        if self.sinks and self.run_id is not None:
            hash_key, encoded = message.hash_key_and_canonical_bytes()
            event = Event(
                EventKind.MESSAGE,
                self.run_id,
                self._now(),
                hash_key,
                call_id,
                parent_call_id,
                None,
                message,
                None,
                canonical_bytes or encoded,
                sub_messages_emitted=True,  # `persist` emits every sub-message first
            )
            if parent is not None:
                payload = MessagePayload(parent=parent.hash_key)
                event.data = payload.to_data()
                event._payload = payload
            self._append(event)
        if self._context.on_persist_message_handlers:
            self._persist_queue.append((promise, message))
            if self._persist_worker is None:
                self._persist_worker = self._context._spawn_handler(self._arun_persist_handlers())

    async def _arun_persist_handlers(self) -> None:
        context = self._context
        try:
            while self._persist_queue:
                promise, message = self._persist_queue.popleft()
                for handler in context.on_persist_message_handlers:
                    try:
                        await handler(promise, message)
                    except Exception:
                        logger.log(context.log_level_for_errors, "An on_persist_message handler failed", exc_info=True)
        finally:
            self._persist_worker = None

    def record_stream(self, promise: MessagePromise, message: Message) -> None:
        """A streamed message is complete: its chunk lengths and offsets."""
        chunks, offsets = promise.chunk_record()
        self.emit(
            StreamPayload(tuple(len(chunk) for chunk in chunks), tuple(offsets)),
            hash_key=message.hash_key,
            call_id=_call_id(promise.producer_call),
        )

    def record_broken_stream(self, promise: MessagePromise, error: BaseException) -> None:
        """A message's stream broke: what it had received, and where."""
        payload = ErrorPayload.of_broken_stream(partial_reply(promise, error))
        self.emit(payload, call_id=_call_id(promise.producer_call))

    # ------------------------------------------------------------------------------------------------------- calls

    def record_call_started(self, call: AgentCall) -> None:
        payload = CallStartedPayload(call.agent.alias, call.position)
        self.emit(payload, call_id=call.call_id, parent_call_id=call.parent_call_id)

    def record_agent_error(self, call: AgentCall, error: BaseException) -> None:
        self.emit(ErrorPayload.of_agent(error), call_id=call.call_id, parent_call_id=call.parent_call_id)

    def record_call_finished(
        self,
        call: AgentCall,
        replies: list[Union[ReplyRecord, str]],
        sequence_error: Optional[BaseException],
        reply_node: Optional[Message],
        partial_call_node: Optional[Message],
        input_error: Optional[BaseException],
    ) -> None:
        """How a call ended: its call node (the call key) or, when its input failed, a node of what it received
        (emitted here as an object) and the input's error; its replies and the error its reply sequence raised."""
        call_node = call.call_node
        if partial_call_node is not None:
            self.record_object(partial_call_node, call)
        payload = CallFinishedPayload(
            agent_alias=call.agent.alias,
            call_node=call_node.hash_key if call_node is not None else None,
            reply_node=reply_node.hash_key if reply_node is not None else None,
            occurrence=call.occurrence,
            position=call.position,
            replies=tuple(WholeReply(reply) if isinstance(reply, str) else reply for reply in replies),
            error=_described(sequence_error),
            replayed=call.replayed,
            partial_call_node=partial_call_node.hash_key if partial_call_node is not None else None,
            input_error=_described(input_error),
        )
        self.emit(payload, payload.call_node, call.call_id, call.parent_call_id)


def whole_reply(promise: MessagePromise, message: Message) -> Union[WholeReply, str]:
    """What is recorded of a reply received whole: its chunking too when it was streamed, else only its hash key
    (a `WholeReply` once the call ends, see `record_call_finished`: until then a call with 100,000s of replies
    keeps strings, which Python's collector does not walk, instead of as many objects it would)."""
    if not promise.is_streamed:
        return message.hash_key
    chunks, offsets = promise.chunk_record()
    return WholeReply(message.hash_key, tuple(len(chunk) for chunk in chunks), tuple(offsets))


def partial_reply(promise: MessagePromise, error: BaseException) -> PartialReply:
    """What is recorded of a reply whose stream broke: its class, metadata, chunks received and the error."""
    chunks, offsets = promise.chunk_record()
    message_class = getattr(promise, "_message_class", type(promise.preliminary_metadata))
    metadata = getattr(promise, "_metadata_so_far", None)
    if metadata is None:
        metadata = promise.preliminary_metadata.frozen_fields_and_values()
    return PartialReply.of(message_class.__name__, Frozen(**metadata).serialize(), chunks, offsets, error)


def _described(error: Optional[BaseException]) -> Optional[ErrorDescription]:
    return ErrorDescription.of(error) if error is not None else None


def _containing_messages(message: Message) -> dict[int, Message]:
    """For every message nested in `message` (at any depth): the message whose fields hold it directly, keyed by
    the nested message's `id()` (the first such message found, when it is nested in several)."""
    parents: dict[int, Message] = {}
    pending = [message]
    while pending:
        container = pending.pop()
        stack: list[Any] = list(container.frozen_fields_and_values().values())
        while stack:
            value = stack.pop()
            if isinstance(value, Message):
                if id(value) not in parents:
                    parents[id(value)] = container
                    pending.append(value)
            elif isinstance(value, Frozen):
                stack.extend(value.frozen_fields_and_values().values())
            elif isinstance(value, tuple):
                stack.extend(value)
            elif isinstance(value, Mapping):
                stack.extend(value.values())
    return parents


def _call_id(call: Optional[AgentCall]) -> Optional[int]:
    return call.call_id if call is not None else None
