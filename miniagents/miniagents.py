"""The agent layer: `MiniAgents` (the context), `@miniagent` / `MiniAgent`, agent calls and message sequences."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import CoroutineType, TracebackType
from typing import Any, Optional, TypeVar, Union, overload

from pydantic import BaseModel

from miniagents.errors import AgentDefinitionError, EventSinkError, FrozenValueError
from miniagents.events import CallInterceptor, EventSink, InterceptedCall, ReplyRecord
from miniagents.messages import _CURRENT_CALL, Message, MessagePromise, MessageSequencePromise, _text_message
from miniagents.miniagent_typing import AgentFunction, MessageType, PersistMessageEventHandler
from miniagents.promising.ext.frozen import Frozen, freeze
from miniagents.promising.promise_typing import PromiseResolvedEventHandler, PromiseStreamer
from miniagents.promising.promising import Promise, PromisingContext, StreamAppender, _StreamReplayIterator
from miniagents.promising.sentinels import DEFAULT, Sentinel
from miniagents.promising.sequence import FlatSequence, collect_tuple
from miniagents.redaction import REDACTION
from miniagents.run_recording import RunRecorder, partial_reply, whole_reply

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def current_agent_call() -> Optional[AgentCall]:
    """The agent call whose function is running in the current task (None outside agents)."""
    return _CURRENT_CALL.get()


class MiniAgents(PromisingContext):
    """The context agents run in. With a `store`, everything that happens in it is recorded as one run.

    :param stream_llm_tokens_by_default: LLM agents stream tokens unless told otherwise.
    :param on_promise_resolved: async handlers scheduled after every promise resolves.
    :param on_persist_message: async handlers called once per message object, sub-messages before their parent,
        one after another in a single background task.
    :param store: an `EventSink` (a store from `store/`) that receives every event of this run.
    :param replay: a `CallInterceptor` (a `replay.Replay`) that may answer agent calls from a recording.
    :param run_metadata: JSON-able metadata recorded with the run.
    :param kwargs: the `PromisingContext` settings (`start_everything_asap_by_default`, `longer_hash_keys`, ...).
    """

    def __init__(
        self,
        stream_llm_tokens_by_default: bool = True,
        on_promise_resolved: Union[PromiseResolvedEventHandler, Iterable[PromiseResolvedEventHandler]] = (),
        on_persist_message: Union[PersistMessageEventHandler, Iterable[PersistMessageEventHandler]] = (),
        store: Optional[EventSink] = None,
        replay: Optional[CallInterceptor] = None,
        run_metadata: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(on_promise_resolved=on_promise_resolved, **kwargs)
        self.stream_llm_tokens_by_default = stream_llm_tokens_by_default
        self.on_persist_message_handlers: list[PersistMessageEventHandler] = (
            [on_persist_message] if callable(on_persist_message) else list(on_persist_message)
        )
        if store is not None and not isinstance(store, EventSink):
            raise TypeError(
                f"`store` must be an event sink (astart_run / append / afinish_run), got {type(store).__name__}; "
                "use `store.SQLiteStore(path)` or `store.MemoryStore()`."
            )
        if replay is not None and not isinstance(replay, CallInterceptor):
            raise TypeError(
                f"`replay` must be a call interceptor such as `replay.Replay`, got {type(replay).__name__}."
            )
        self.store = store
        self.replay = replay
        self.run_metadata = dict(run_metadata or {})
        self._recorder = RunRecorder(self, [store] if store is not None else [])
        """The run being recorded (see `miniagents.run_recording`)."""
        self._open_calls: set[AgentCall] = set()
        """Calls whose input is open and that no running agent call will close: closed when the context exits."""

    @classmethod
    def get_current(cls) -> MiniAgents:
        """The active `MiniAgents` context; raises `NoActiveContextError` when there is none."""
        return super().get_current()

    def run(self, awaitable: Awaitable[_T]) -> _T:
        """Run `awaitable` inside this context in a new event loop (blocking)."""
        return asyncio.run(self.arun(awaitable))

    async def arun(self, awaitable: Awaitable[_T]) -> _T:
        """Run `awaitable` inside this context."""
        async with self:
            return await awaitable

    def on_persist_message(self, handler: PersistMessageEventHandler) -> PersistMessageEventHandler:
        """Register a handler called once per message object (usable as a decorator)."""
        self.on_persist_message_handlers.append(handler)
        return handler

    def add_event_sink(self, sink: EventSink) -> None:
        """Send this run's events to one more sink (before the context starts, or from `CallInterceptor.astart`)."""
        if self.run_id is not None:
            raise EventSinkError("Event sinks must be added before the MiniAgents context starts its run.")
        self._recorder.sinks.append(sink)

    @property
    def run_id(self) -> Optional[str]:
        """The id of the run being recorded (or the last one); None before a run with sinks started."""
        return self._recorder.run_id

    @property
    def is_recording(self) -> bool:
        """Whether events are being sent to at least one sink."""
        return self._recorder.is_recording

    @property
    def _is_observed(self) -> bool:
        """Whether anything can see interaction nodes (so they are worth building)."""
        if self._recorder.sinks or self.on_persist_message_handlers or self.replay is not None:
            return True
        context: Optional[PromisingContext] = self
        while context is not None:
            if context.on_promise_resolved_handlers:
                return True
            context = context.parent
        return False

    async def __aenter__(self) -> MiniAgents:
        REDACTION.register_environment()  # the values of OPENAI_API_KEY & co. are masked wherever they turn up
        self.activate()
        self._recorder.reset()
        replay_started = False
        try:
            if self.replay is not None:
                await self.replay.astart(self)
                replay_started = True
            if self._recorder.sinks:
                await self._recorder.astart_run(self.run_metadata)
        except BaseException as error:
            try:
                if replay_started and self.replay is not None:
                    await self.replay.afinish(self, error)  # it closes what its astart opened
            finally:
                self._deactivate()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            for call in list(self._open_calls):
                call.finish()
            if exc_value is None:
                await self.aflush_tasks()
            else:
                await self.acancel_tasks()
        finally:
            try:
                await self._recorder.afinish_run(exc_value)
                if self.replay is not None:
                    await self.replay.afinish(self, exc_value)
            finally:
                self._deactivate()
        sink_error = self._recorder.sink_error()
        if sink_error is not None and exc_value is None:
            raise sink_error from self._recorder.sink_errors[0]

    def _promise_resolved(self, promise: Promise[Any], result: Any) -> None:
        if self.on_promise_resolved_handlers:
            super()._promise_resolved(promise, result)
        recorder = self._recorder
        if isinstance(result, Message):
            if recorder.sinks or self.on_persist_message_handlers:
                # the call that made the message, not the one whose awaiting resolved it
                if isinstance(promise, MessagePromise):
                    call = getattr(promise, "producer_call", None)
                else:
                    call = _CURRENT_CALL.get()
                recorder.persist(promise, result, call)
            if recorder.sinks and isinstance(promise, MessagePromise) and promise.is_streamed:
                recorder.record_stream(promise, result)
        elif recorder.sinks and isinstance(result, BaseException) and isinstance(promise, MessagePromise):
            recorder.record_broken_stream(promise, result)


@overload
def miniagent(
    func: AgentFunction,
    alias: Optional[str] = None,
    description: Optional[str] = None,
    uppercase_func_name: bool = True,
    normalize_spaces_in_docstring: bool = True,
    interaction_metadata: Optional[dict[str, Any]] = None,
    talks_to_outside_world: bool = False,
    **partial_kwargs: Any,
) -> MiniAgent: ...


@overload
def miniagent(
    func: None = None,
    alias: Optional[str] = None,
    description: Optional[str] = None,
    uppercase_func_name: bool = True,
    normalize_spaces_in_docstring: bool = True,
    interaction_metadata: Optional[dict[str, Any]] = None,
    talks_to_outside_world: bool = False,
    **partial_kwargs: Any,
) -> Callable[[AgentFunction], MiniAgent]: ...


def miniagent(
    func: Optional[AgentFunction] = None,
    alias: Optional[str] = None,
    description: Optional[str] = None,
    uppercase_func_name: bool = True,
    normalize_spaces_in_docstring: bool = True,
    interaction_metadata: Optional[dict[str, Any]] = None,
    talks_to_outside_world: bool = False,
    **partial_kwargs: Any,
) -> Union[MiniAgent, Callable[[AgentFunction], MiniAgent]]:
    """Turn an async function `(ctx, **kwargs)` into an agent; usable as `@miniagent` or `@miniagent(...)`.

    :param alias: the agent's name (default: the function name, upper-cased).
    :param description: what the agent does (default: the docstring); `{AGENT_ALIAS}` is replaced by the alias.
    :param uppercase_func_name: upper-case the function name when it becomes the alias.
    :param normalize_spaces_in_docstring: collapse whitespace of the docstring.
    :param interaction_metadata: fields added to the agent's call and reply nodes.
    :param talks_to_outside_world: the agent depends on something outside the program (an LLM, a person);
        replay answers such agents from recordings by default.
    :param partial_kwargs: keyword arguments bound to every call.
    """

    def decorate(function: AgentFunction) -> MiniAgent:
        return MiniAgent(
            function,
            alias=alias,
            description=description,
            uppercase_func_name=uppercase_func_name,
            normalize_spaces_in_docstring=normalize_spaces_in_docstring,
            interaction_metadata=interaction_metadata,
            talks_to_outside_world=talks_to_outside_world,
            **partial_kwargs,
        )

    if func is None:
        return decorate
    return decorate(func)


class MiniAgent:
    """An agent: an async function `(ctx, **kwargs)` that can be inquired with messages. See `miniagent`."""

    def __init__(
        self,
        func: AgentFunction,
        alias: Optional[str] = None,
        description: Optional[str] = None,
        uppercase_func_name: bool = True,
        normalize_spaces_in_docstring: bool = True,
        interaction_metadata: Optional[dict[str, Any]] = None,
        talks_to_outside_world: bool = False,
        **partial_kwargs: Any,
    ) -> None:
        if isinstance(func, MiniAgent):
            raise AgentDefinitionError(
                f"{func.alias} is already an agent; use `{func.alias.lower()}.fork(...)` to make a variant of it."
            )
        if not callable(func) or not _is_async_function(func):
            name = getattr(func, "__name__", type(func).__name__)
            raise AgentDefinitionError(
                f"The agent function {name!r} must be an `async def` function taking `ctx` (an InteractionContext) "
                "and keyword arguments; it is not a coroutine function."
            )
        self._func = func
        self._partial_kwargs = partial_kwargs
        self.interaction_metadata = Frozen(**(interaction_metadata or {}))
        self._interaction_metadata_dict = self.interaction_metadata.frozen_fields_and_values()
        self.talks_to_outside_world = talks_to_outside_world

        if alias is None:
            alias = getattr(func, "__name__", None) or type(func).__name__
            if uppercase_func_name:
                alias = alias.upper()
        self.alias: str = alias

        if description is None:
            description = getattr(func, "__doc__", None)
            if description and normalize_spaces_in_docstring:
                description = " ".join(description.split())
        if description:
            description = description.replace("{AGENT_ALIAS}", self.alias)
        self.description: Optional[str] = description

        self.__name__ = self.alias
        self.__doc__ = self.description
        self._frozen_partial_kwargs: Optional[dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"<MiniAgent {self.alias}>"

    @property
    def func(self) -> AgentFunction:
        """The agent function (without the bound keyword arguments)."""
        return self._func

    @property
    def partial_kwargs(self) -> dict[str, Any]:
        """The keyword arguments bound to every call (a copy)."""
        return dict(self._partial_kwargs)

    def inquire(
        self,
        messages: Optional[MessageType] = None,
        start_asap: Union[bool, Sentinel] = DEFAULT,
        **function_kwargs: Any,
    ) -> MessageSequencePromise:
        """Call the agent with `messages` and keyword arguments; returns the promise of its replies."""
        agent_call = self.initiate_inquiry(start_asap=start_asap, **function_kwargs)
        if messages is not None:
            agent_call.send_message(messages)
        return agent_call.reply_sequence()

    def initiate_inquiry(self, start_asap: Union[bool, Sentinel] = DEFAULT, **function_kwargs: Any) -> AgentCall:
        """Start a call whose input messages are sent later with `send_message()`; end it with `reply_sequence()`."""
        return AgentCall(self, function_kwargs, start_asap)

    def fork(
        self,
        alias: Optional[str] = None,
        description: Optional[str] = None,
        interaction_metadata: Optional[dict[str, Any]] = None,
        **partial_kwargs: Any,
    ) -> MiniAgent:
        """A variant of this agent with more bound keyword arguments (and maybe another alias and metadata)."""
        return MiniAgent(
            self._func,
            alias=alias or self.alias,
            description=description or self.description,
            uppercase_func_name=False,
            normalize_spaces_in_docstring=False,
            interaction_metadata={**self._interaction_metadata_dict, **(interaction_metadata or {})},
            talks_to_outside_world=self.talks_to_outside_world,
            **{**self._partial_kwargs, **partial_kwargs},
        )

    def _recorded_partial_kwargs(self) -> dict[str, Any]:
        """Bound kwargs as recorded in call nodes: values a Frozen cannot hold become `<TypeName>`."""
        if self._frozen_partial_kwargs is None:
            recorded: dict[str, Any] = {}
            for name, value in self._partial_kwargs.items():
                try:
                    recorded[name] = _recorded_kwarg(name, value)
                except FrozenValueError:
                    recorded[name] = f"<{type(value).__name__}>"
            self._frozen_partial_kwargs = recorded
        return self._frozen_partial_kwargs


def _recorded_kwarg(name: str, value: Any) -> Any:
    """A keyword argument's value as call nodes record it: frozen, or the redaction marker for a secret's name
    (whose value is then masked wherever it turns up, see `REDACTION`)."""
    if REDACTION.is_secret(name):
        REDACTION.register_values(value)
        return REDACTION.marker
    return freeze(value, name)


def _is_async_function(func: Any) -> bool:
    """Whether calling `func` gives a coroutine: an `async def`, maybe behind `functools.partial` or decorators
    that keep `__wrapped__` (as `functools.wraps` does), or an object with an `async def __call__`."""
    while True:
        while isinstance(func, functools.partial):
            func = func.func
        if inspect.iscoroutinefunction(func):
            return True
        wrapped = getattr(func, "__wrapped__", None)
        if wrapped is None:
            break
        func = wrapped
    return not inspect.isfunction(func) and inspect.iscoroutinefunction(type(func).__call__)


class InteractionContext:
    """What an agent function receives: its input `messages`, `reply()` and `finish_early()`."""

    def __init__(
        self,
        this_agent: MiniAgent,
        messages: MessageSequencePromise,
        reply_streamer: StreamAppender[MessageType],
        agent_call: Optional[AgentCall] = None,
    ) -> None:
        self.this_agent = this_agent
        self.messages = messages
        self._reply_streamer = reply_streamer
        self.agent_call = agent_call

    def reply(self, messages: MessageType) -> None:
        """Send replies (anything a `MessageType` allows); iterables are consumed lazily, so wrap generators of
        agent calls in a list to start those calls right away."""
        self._reply_streamer.append(messages)

    def finish_early(self) -> None:
        """End the reply sequence now; the agent function may go on, but cannot reply any more."""
        self._reply_streamer.close()


class AgentCall:
    """One call of an agent: send input messages, then take the reply sequence (which ends the input)."""

    def __init__(self, agent: MiniAgent, function_kwargs: dict[str, Any], start_asap: Union[bool, Sentinel]) -> None:
        context = PromisingContext._current.get()
        if type(context) is not MiniAgents:
            context = MiniAgents.get_current()  # (a subclass, or raises the error saying there is none)
        self._context = context
        self.agent = agent
        if function_kwargs:
            try:
                self._frozen_kwargs = {name: _recorded_kwarg(name, value) for name, value in function_kwargs.items()}
            except FrozenValueError as exc:
                raise FrozenValueError(
                    f"The call of agent {agent.alias} got a keyword argument that cannot be recorded: {exc} Bind "
                    f"such values with `{agent.alias.lower()}.fork(name=value)` instead."
                ) from None
            self._function_kwargs = copy.deepcopy(function_kwargs)
        else:
            self._frozen_kwargs = {}
            self._function_kwargs = function_kwargs
        recorder = context._recorder
        self.call_id: int = recorder.next_call_id()
        parent = _CURRENT_CALL.get()
        self.parent: Optional[AgentCall] = parent
        self.parent_call_id: Optional[int] = parent.call_id if parent is not None else None
        self._open_child_calls: set[AgentCall] = set()
        self._child_count = 0
        if parent is None:
            self.position = recorder.next_top_level_position()
        else:
            self.position = f"{parent.position}.{parent._child_count}"
            parent._child_count += 1
        self._function_done = False
        # a call opened on behalf of a parent whose function has returned (by its reply streams, say) is closed
        # when the context exits, like a top-level call
        self._opened_under: Optional[AgentCall] = parent if parent is not None and not parent._function_done else None
        if self._opened_under is not None:
            self._opened_under._open_child_calls.add(self)
        else:
            context._open_calls.add(self)

        self._input_appender: StreamAppender[MessageType] = StreamAppender(capture_errors=True)
        self._input_appender.open()
        self.input_sequence_promise = MessageSequencePromise(
            streamer=_flattened(self._input_appender, producer=parent), resolver=collect_tuple, start_asap=False
        )
        self._reply_appender: StreamAppender[MessageType] = StreamAppender(capture_errors=True)
        self._started = False
        self.call_node: Optional[AgentCallNode] = None
        self.occurrence: Optional[int] = None
        self.replayed = False
        start_now = context.start_everything_asap_by_default if start_asap is DEFAULT else bool(start_asap)
        self.reply_sequence_promise = MessageSequencePromise(
            streamer=self._reply_stream, resolver=collect_tuple, start_asap=False
        )
        if start_now:
            self._start()

    def __repr__(self) -> str:
        return f"<AgentCall {self.agent.alias} #{self.call_id}>"

    def send_message(self, message: MessageType) -> AgentCall:
        """Send input message(s) to the agent."""
        self._input_appender.append(message)
        return self

    def reply_sequence(self) -> MessageSequencePromise:
        """End the input and return the promise of the agent's replies."""
        self.finish()
        return self.reply_sequence_promise

    def finish(self) -> AgentCall:
        """End the input (no more `send_message()`)."""
        self._input_appender.close()
        if self._opened_under is not None:
            self._opened_under._open_child_calls.discard(self)
        else:
            self._context._open_calls.discard(self)
        return self

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._context.spawn(self._arun())

    def _reply_stream(self, _: Any) -> AsyncIterator[MessagePromise]:
        self._start()  # the first consumer of a call started lazily starts it
        return _Flattener(self._reply_appender, self, producer=self)

    async def _arun(self) -> None:
        context = self._context
        _CURRENT_CALL.set(self)
        recorder = context._recorder
        recording = recorder.is_recording
        if recording:
            recorder.record_call_started(self)
        # a handler task: when the context's body fails, it still records how the call ended (cancelled, say)
        outcome = context._spawn_handler(self._arecord_outcome()) if context._is_observed else None
        error_emitted: Optional[BaseException] = None
        try:
            with self._reply_appender:
                try:
                    # (no coroutine to ask when there is no interceptor: this is on the path of every call)
                    if context.replay is None or not await self._aanswer_from_interceptor():
                        ctx = InteractionContext(self.agent, self.input_sequence_promise, self._reply_appender, self)
                        bound = self.agent._partial_kwargs
                        kwargs = {**bound, **self._function_kwargs} if bound else self._function_kwargs
                        result = self.agent._func(ctx, **kwargs)  # a keyword given to the call wins
                        if type(result) is not CoroutineType and not inspect.isawaitable(result):
                            raise AgentDefinitionError(
                                f"The function of agent {self.agent.alias} returned a {type(result).__name__}, "
                                "not an awaitable: it must be an `async def` function."
                            )
                        await result
                except Exception as exc:
                    if context._first_report_of(exc):  # an error passed on by many agents is logged where it arose
                        logger.log(
                            context.log_level_for_errors,
                            "Agent %s (call %s) failed",
                            self.agent.alias,
                            self.call_id,
                            exc_info=True,
                        )
                    if recording:
                        recorder.record_agent_error(self, exc)
                        error_emitted = exc
                    raise
        except Exception as exc:
            logger.error(  # one line: the traceback was logged above, or by whoever raised it first
                "Agent %s (call %s) failed after its reply sequence was closed: %s: %s",
                self.agent.alias,
                self.call_id,
                type(exc).__name__,
                exc,
            )
            if recording and exc is not error_emitted:
                recorder.record_agent_error(self, exc)
        finally:
            self._function_done = True
            if self._open_child_calls:
                for child in list(self._open_child_calls):
                    child.finish()
        if outcome is not None:
            await asyncio.shield(outcome)  # if this task is cancelled, the outcome is still recorded

    async def _aanswer_from_interceptor(self) -> bool:
        interceptor = self._context.replay
        if interceptor is None or not interceptor.intercepts(self.agent):
            return False
        input_messages = await self.input_sequence_promise.aresolve_messages()
        call_node = self._call_node_of(input_messages)
        answer = await interceptor.aanswer(
            InterceptedCall(
                agent=self.agent,
                call_node=call_node,
                occurrence=self.occurrence or 0,
                position=self.position,
                call_id=self.call_id,
                parent_call_id=self.parent_call_id,
                input_messages=input_messages,
            )
        )
        if answer is None:
            return False
        self.replayed = True
        self._reply_appender.append(answer)
        return True

    def _call_node_of(self, input_messages: tuple[Message, ...]) -> AgentCallNode:
        """The call node, built (and numbered among identical calls) by whoever has the resolved input first."""
        if self.call_node is not None:
            return self.call_node
        call_node = self._new_call_node(input_messages)
        self.call_node = call_node
        self.occurrence = self._context._recorder.next_occurrence(call_node.hash_key)
        return call_node

    def _new_call_node(self, input_messages: tuple[Message, ...]) -> AgentCallNode:
        kwargs = {**self.agent._recorded_partial_kwargs(), **self._frozen_kwargs}  # a call's own kwarg wins
        fields: dict[str, Any] = {**self.agent._interaction_metadata_dict}
        if kwargs:
            fields["kwargs"] = tuple(sorted(kwargs.items()))
        return AgentCallNode(**fields, messages=input_messages, agent_alias=self.agent.alias)

    async def _areceive_input(self) -> tuple[tuple[Message, ...], Optional[BaseException]]:
        """The input messages that resolved, in order, and the error the input raised after them (if any)."""
        received: list[Message] = []
        try:
            async for message_promise in self.input_sequence_promise:
                received.append(await message_promise)
        except (Exception, asyncio.CancelledError) as exc:
            _reraise_own_cancellation(exc)
            logger.debug("The input of agent call %s failed after %d messages", self.call_id, len(received))
            return tuple(received), exc
        return tuple(received), None

    async def _arecord_outcome(self) -> None:
        """Build the call node once the input is resolved (identical calls are numbered in that order, as replay
        numbers them), then wait for every reply, build the reply node and record how the call went; a call whose
        input failed is recorded with what it received."""
        context = self._context
        received, input_error = await self._areceive_input()
        call_node = self._call_node_of(received) if input_error is None else None
        replies: list[Union[ReplyRecord, str]] = []
        messages: list[Message] = []
        sequence_error: Optional[BaseException] = None
        try:
            async for message_promise in self.reply_sequence_promise:
                try:
                    message = await message_promise
                except (Exception, asyncio.CancelledError) as exc:
                    _reraise_own_cancellation(exc)
                    replies.append(partial_reply(message_promise, exc))
                else:
                    messages.append(message)
                    replies.append(whole_reply(message_promise, message))
        except (Exception, asyncio.CancelledError) as exc:
            _reraise_own_cancellation(exc)
            sequence_error = exc

        reply_node: Optional[AgentReplyNode] = None
        if call_node is not None:
            Promise(prefill_result=call_node)  # resolved once the call is over, so it is recorded after the replies
        if call_node is not None and sequence_error is None and len(messages) == len(replies):
            reply_node = AgentReplyNode(
                **{
                    **self.agent._interaction_metadata_dict,
                    "replies": tuple(messages),
                    "agent_alias": self.agent.alias,
                    "agent_call": call_node,
                }
            )
            Promise(prefill_result=reply_node)
        if context.is_recording:
            partial_call_node = self._new_call_node(received) if input_error is not None else None
            context._recorder.record_call_finished(
                self, replies, sequence_error, reply_node, partial_call_node, input_error
            )


def _reraise_own_cancellation(error: BaseException) -> None:
    """Raise `error` again if it is the current task being cancelled (not a cancellation something it awaited
    carries, like the reply sequence of an agent that was cancelled)."""
    if isinstance(error, asyncio.CancelledError):
        cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+; 3.10 cannot tell
        if cancelling is not None and cancelling():
            raise error


class AgentInteractionNode(Message):
    """A record of an interaction with an agent."""

    agent_alias: str


class AgentCallNode(AgentInteractionNode):
    """A call: the agent alias, its interaction metadata (as fields of its own), its keyword arguments and its
    input messages.

    The keyword arguments (bound with `fork()` and given to the call, the latter winning) are kept apart from the
    node's fields, as `(name, value)` pairs sorted by name, so that no argument is confused with a field of the
    node, whatever its name (`text`, `messages`, `class_`, ...); `call_kwargs` gives them as a dict.
    """

    messages: tuple[Message, ...]

    @property
    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the call, by name (secrets as the redaction marker)."""
        return dict(self._kwarg_pairs())

    def _kwarg_pairs(self) -> tuple[tuple[str, Any], ...]:
        # a field `kwargs` only when there are some: a call without any has the key it had before they were kept
        # apart, so recordings made then still answer it
        return tuple(self.frozen_fields_and_values().get("kwargs") or ())

    def __getattr__(self, name: str) -> Any:
        """A keyword argument read as an attribute (`node.model`), as with nodes that held them as fields; the
        node's own fields come first (`node.text` is the node's text, `node.call_kwargs["text"]` the argument)."""
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            for kwarg_name, value in self._kwarg_pairs():
                if kwarg_name == name:
                    return value
            raise


class AgentReplyNode(AgentInteractionNode):
    """A call's outcome: the call node and the reply messages."""

    agent_call: AgentCallNode
    replies: tuple[Message, ...]


class MessageSequence(FlatSequence[MessageType, MessagePromise]):
    """Flattens anything a `MessageType` allows, appended to `message_appender`, into `MessagePromise`s.

    :param appender_capture_errors: exceptions in the appender's `with` block become part of the sequence.
    :param start_asap: start flattening in the background now.
    :param incoming_streamer: flatten this instead of a new `message_appender` (which is then None).
    """

    message_appender: Optional[StreamAppender[MessageType]]
    sequence_promise: MessageSequencePromise

    def __init__(
        self,
        appender_capture_errors: Union[bool, Sentinel] = DEFAULT,
        start_asap: Union[bool, Sentinel] = DEFAULT,
        incoming_streamer: Optional[PromiseStreamer[MessageType]] = None,
    ) -> None:
        if incoming_streamer is None:
            self.message_appender = StreamAppender(capture_errors=appender_capture_errors)
            incoming_streamer = self.message_appender
        else:
            self.message_appender = None
        super().__init__(
            incoming_streamer=incoming_streamer,
            start_asap=start_asap,
            sequence_promise_class=MessageSequencePromise,
        )

    @classmethod
    def turn_into_sequence_promise(cls, messages: MessageType) -> MessageSequencePromise:
        """Any `MessageType` as a flat `MessageSequencePromise` (errors in it are raised at their position).

        A subclass that overrides `_flattener()` has it applied to every item, nested ones included.
        """
        if cls._flattener is not MessageSequence._flattener:
            sequence = cls(appender_capture_errors=True, start_asap=False)
            assert sequence.message_appender is not None
            with sequence.message_appender:
                sequence.message_appender.append(messages)
            return sequence.sequence_promise
        appender: StreamAppender[MessageType] = StreamAppender(capture_errors=True)
        with appender:
            appender.append(messages)
        return MessageSequencePromise(streamer=_flattened(appender), resolver=collect_tuple, start_asap=False)

    @classmethod
    async def aresolve_messages(cls, messages: MessageType) -> tuple[Message, ...]:
        """Any `MessageType` as a flat tuple of fully received messages."""
        return await cls.turn_into_sequence_promise(messages).aresolve_messages()

    def _flattener(self, zero_or_more_items: MessageType) -> AsyncIterator[MessagePromise]:
        """Every message promise in one item; override it to accept more kinds of items (call `super()` for the
        rest): the override also sees the items nested in lists and iterables."""
        if type(self)._flattener is MessageSequence._flattener:
            return _flatten(zero_or_more_items)
        return _Flattener(iter((zero_or_more_items,)), nested=self._flattener)


def _flattened(
    appender: StreamAppender[MessageType], producer: Union[AgentCall, Sentinel, None] = DEFAULT
) -> PromiseStreamer[MessagePromise]:
    def stream(_: Any) -> AsyncIterator[MessagePromise]:
        return _Flattener(appender, producer=producer)

    return stream


def _flatten(item: Any) -> AsyncIterator[MessagePromise]:
    """Every message promise in `item`, a `MessageType` nested to any depth, in order."""
    return _Flattener(iter((item,)))


async def _each_flattened(
    items: Any, flattener: Callable[[Any], AsyncIterator[MessagePromise]]
) -> AsyncIterator[MessagePromise]:
    if hasattr(items, "__anext__"):
        async for item in items:
            async for message_promise in flattener(item):
                yield message_promise
    else:
        for item in items:
            async for message_promise in flattener(item):
                yield message_promise


class _Flattener(AsyncIterator[MessagePromise]):
    """Every message promise in what `source` yields (`MessageType`s nested to any depth), in order.

    Not a generator, on purpose: a consumer cancelled while waiting for the next piece (a timeout, say) leaves
    it able to go on, so the sequence it feeds stays intact for every other consumer. Only an async generator
    of the user's that it was waiting on dies of the cancellation; the flattener then raises that cancellation
    again, as the stream would have ended there. After any other exception it is exhausted.

    :param call: the agent call that iterables and async iterables are pulled on behalf of (calls they make
        are its children), whichever task pulls.
    :param producer: the agent call (None: the code outside agents) that made the messages turned into promises
        here (strings, dicts, messages), whichever task pulls; by default the call current where they are pulled.
    """

    __slots__ = ("_broken", "_call", "_nested", "_producer", "_stack")

    def __init__(
        self,
        source: Any,
        call: Optional[AgentCall] = None,
        nested: Optional[Callable[[Any], AsyncIterator[MessagePromise]]] = None,
        producer: Union[AgentCall, Sentinel, None] = DEFAULT,
    ) -> None:
        self._stack: list[Any] = [source]
        self._call = call
        self._producer = producer
        self._nested = nested
        """What flattens each item nested in an iterable instead of this flattener (a `MessageSequence`
        subclass's `_flattener`)."""
        self._broken: Optional[BaseException] = None

    def __aiter__(self) -> _Flattener:
        return self

    def _is_exhausted(self) -> bool:
        """Whether `__anext__` would raise StopAsyncIteration right away, without running or awaiting anything:
        every source on the stack has ended (ended appenders, sequences replayed to their end). The promise this
        flattens into then ends its stream as soon as it has its last piece (see `StreamedPromise._stream_exhausted`):
        an agent call's replies end without one more pull through the reply and input sequences."""
        if self._broken is not None:
            return False
        for source in self._stack:
            if type(source) is StreamAppender:
                if source._pieces or not source._append_closed:
                    return False
            elif type(source) is not _StreamReplayIterator or not source._is_exhausted():
                return False
        return True

    async def __anext__(self) -> MessagePromise:
        if self._broken is not None:
            raise self._broken
        stack = self._stack
        while stack:
            top = stack[-1]
            if type(top) is StreamAppender and (top._pieces or top._append_closed):
                # what an appender holds already, or its end, is taken as its `__anext__` would give it, but without
                # a coroutine (nor a StopAsyncIteration raised through one): an agent call's input and replies come
                # from appenders, and mostly like this
                if not top._pieces:
                    stack.pop()
                    continue
                item = top._pieces.popleft()
            else:
                # the source (an appender) needs no current call; what was appended to it might make calls
                token = _CURRENT_CALL.set(self._call) if self._call is not None and len(stack) > 1 else None
                try:
                    item = await top.__anext__() if hasattr(top, "__anext__") else next(top)
                except (StopAsyncIteration, StopIteration):
                    stack.pop()
                    continue
                except asyncio.CancelledError as exc:
                    if inspect.isasyncgen(top):
                        self._broken = exc
                    raise
                except BaseException:
                    stack.clear()
                    raise
                finally:
                    if token is not None:
                        _CURRENT_CALL.reset(token)
            try:
                message_promise = self._message_promise_of(item)
            except BaseException:
                stack.clear()
                raise
            if message_promise is not None:
                return message_promise
        raise StopAsyncIteration

    def _message_promise_of(self, item: Any) -> Optional[MessagePromise]:
        """`item` as a message promise, or None after pushing what iterates it onto the stack."""
        if isinstance(item, MessagePromise):
            return item
        if isinstance(item, Message):
            return self._produced(item)
        if isinstance(item, str):
            return self._produced(_text_message(item))
        if isinstance(item, MessageSequencePromise):
            self._stack.append(item.__aiter__())
        elif isinstance(item, dict):
            return self._produced(Message(**item))
        elif isinstance(item, BaseModel):
            return self._produced(Message(**item.model_dump()))
        elif isinstance(item, BaseException):
            if not isinstance(item, Exception):  # a cancellation (say) ends the sequence: every later pull says so
                self._broken = item
            raise item
        elif isinstance(item, (list, tuple)) or hasattr(item, "__aiter__") or hasattr(item, "__iter__"):
            items = item.__aiter__() if hasattr(item, "__aiter__") else iter(item)
            self._stack.append(items if self._nested is None else _each_flattened(items, self._nested))
        else:
            raise TypeError(
                f"A {type(item).__name__} cannot be sent as a message: send a str, dict, Message, MessagePromise, "
                "pydantic model, exception, or a (async) iterable of those."
            )
        return None

    def _produced(self, message: Message) -> MessagePromise:
        """A resolved promise of `message`, made by this flattener's producer (when it has one)."""
        if isinstance(self._producer, Sentinel):
            return message.as_promise
        token = _CURRENT_CALL.set(self._producer)  # a resolved promise is recorded as it is made
        try:
            return message.as_promise
        finally:
            _CURRENT_CALL.reset(token)
