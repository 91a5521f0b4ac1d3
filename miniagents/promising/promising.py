"""Promises: `PromisingContext`, `Promise`, `StreamedPromise` (replayable streams) and `StreamAppender`."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, ClassVar, Generic, Optional, TypeVar, Union

from miniagents.promising.errors import (
    AppenderClosedError,
    AppenderNotOpenError,
    FunctionNotProvidedError,
    NoActiveContextError,
    PromisingError,
)
from miniagents.promising.promise_typing import (
    PIECE,
    WHOLE,
    PromiseResolvedEventHandler,
    PromiseResolver,
    PromiseStreamer,
    T,
)
from miniagents.promising.sentinels import DEFAULT, FAILED, NO_VALUE, Sentinel

logger = logging.getLogger(__name__)

_ContextT = TypeVar("_ContextT", bound="PromisingContext")

_STUCK_HANDLERS_AFTER = 1.0
"""Seconds without any task finishing after which `acancel_tasks` cancels the handler tasks too."""


class PromisingContext:
    """The context every promise lives in: defaults, resolution handlers and the background tasks to wait for.

    :param start_everything_asap_by_default: promises start resolving right away unless told otherwise.
    :param appenders_capture_errors_by_default: `StreamAppender`s turn exceptions into stream pieces by default.
    :param longer_hash_keys: hash keys are 64 hex characters instead of 40.
    :param log_level_for_errors: level at which errors of background tasks are logged.
    :param on_promise_resolved: async handlers scheduled after every promise resolves.
    """

    _current: ClassVar[ContextVar[Optional[PromisingContext]]] = ContextVar("PromisingContext._current", default=None)

    def __init__(
        self,
        start_everything_asap_by_default: bool = True,
        appenders_capture_errors_by_default: bool = False,
        longer_hash_keys: bool = False,
        log_level_for_errors: int = logging.ERROR,
        on_promise_resolved: Union[PromiseResolvedEventHandler, Iterable[PromiseResolvedEventHandler]] = (),
    ) -> None:
        self.parent: Optional[PromisingContext] = self._current.get()
        self.on_promise_resolved_handlers: list[PromiseResolvedEventHandler] = (
            [on_promise_resolved] if callable(on_promise_resolved) else [*on_promise_resolved]
        )
        self.child_tasks: set[asyncio.Task[Any]] = set()
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        """Child tasks that run handlers: they finish even when the context's body failed."""
        self.start_everything_asap_by_default = start_everything_asap_by_default
        self.appenders_capture_errors_by_default = appenders_capture_errors_by_default
        self.longer_hash_keys = longer_hash_keys
        self.log_level_for_errors = log_level_for_errors
        self._previous_ctx_token: Optional[Token[Optional[PromisingContext]]] = None
        self._activation = 0
        """Counts the activations of this context (a context object can be entered again)."""

    @classmethod
    def get_current(cls: type[_ContextT]) -> _ContextT:
        """The active context; raises `NoActiveContextError` when there is none."""
        current = cls._current.get()
        if current is None:
            raise NoActiveContextError(
                f"No {cls.__name__} is active. Promises, messages and agent calls need one: wrap the code in "
                f"`async with {cls.__name__}():` (or call `{cls.__name__}().run(coroutine)`)."
            )
        if not isinstance(current, cls):
            raise TypeError(
                f"The active context is a {type(current).__name__}, but a {cls.__name__} is needed here: use "
                f"`async with {cls.__name__}():` instead."
            )
        return current

    @classmethod
    def get_current_or_none(cls) -> Optional[PromisingContext]:
        """The active context, or None."""
        return cls._current.get()

    def on_promise_resolved(self, handler: PromiseResolvedEventHandler) -> PromiseResolvedEventHandler:
        """Register an async handler scheduled after every promise resolves (usable as a decorator)."""
        self.on_promise_resolved_handlers.append(handler)
        return handler

    def start_asap(
        self,
        awaitable: Awaitable[Any],
        suppress_errors: bool = False,
        log_level_for_errors: int = logging.DEBUG,
    ) -> asyncio.Task[Any]:
        """Run `awaitable` as a task that this context waits for before it exits."""

        async def run_and_log() -> Any:
            try:
                return await awaitable
            except Exception as error:
                if self._first_report_of(error):
                    logger.log(log_level_for_errors, "An error occurred in a background task", exc_info=True)
                if not suppress_errors:
                    raise
                return None

        return self.spawn(run_and_log())

    def _first_report_of(self, error: BaseException) -> bool:
        """Whether `error` is reported (logged with its traceback) for the first time while this context is active:
        an exception that travels through many promises and agents is logged once, where it arose. The mark is
        kept on the exception itself, so the context holds on to no exception (nor to its frames)."""
        mark = (id(self), self._activation)
        try:
            if getattr(error, "_miniagents_reported", None) == mark:
                return False
            error._miniagents_reported = mark  # type: ignore[attr-defined]
        except AttributeError:  # an exception that takes no attributes: logged each time
            pass
        return True

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Create a task from `coroutine` and track it (no wrapping, no logging)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.child_tasks.add(task)
        task.add_done_callback(self.child_tasks.discard)
        return task

    def activate(self) -> PromisingContext:
        """Make this the current context (what `async with` does on entry)."""
        if self._previous_ctx_token is not None:
            raise PromisingError(f"This {type(self).__name__} is already active; create a new one instead.")
        self.parent = self._current.get()
        self._previous_ctx_token = self._current.set(self)
        return self

    async def aflush_tasks(self) -> None:
        """Wait until every task started in this context (and the tasks they started) has finished."""
        # a finished task leaves `child_tasks` by a done callback that runs on a later turn of the event loop, and
        # awaiting finished tasks does not yield to the loop: wait for the unfinished ones only, or this would spin
        while pending := [task for task in self.child_tasks if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def acancel_tasks(self) -> None:
        """Cancel every task started in this context that is still running, and wait until they have ended.

        Tasks running resolution handlers are not cancelled: what already resolved still reaches them.
        """
        while pending := [task for task in self.child_tasks if not task.done()]:  # (see `aflush_tasks`)
            for task in pending:
                if task not in self._handler_tasks:
                    task.cancel()
            done, _ = await asyncio.wait(pending, timeout=_STUCK_HANDLERS_AFTER)
            if not done:
                # only handlers are left, and they wait for what the cancelled tasks would have made: cancel them
                logger.warning(
                    "%d resolution handler(s) still waited %g s after the other tasks were cancelled; cancelling them",
                    len(pending),
                    _STUCK_HANDLERS_AFTER,
                )
                for task in pending:
                    task.cancel()

    def _spawn_handler(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """`spawn` a task that runs handlers (see `acancel_tasks`)."""
        task = self.spawn(coroutine)
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)
        return task

    async def afinalize(self, error: Optional[BaseException] = None) -> None:
        """Wait for all tasks, then deactivate (what `async with` does on exit).

        When the body of the `async with` block failed (`error`), the tasks still running are cancelled instead:
        they may be waiting for something the failed body would have done.
        """
        try:
            if error is None:
                await self.aflush_tasks()
            else:
                await self.acancel_tasks()
        finally:
            self._deactivate()

    def _deactivate(self) -> None:
        self._activation += 1
        if self._previous_ctx_token is not None:
            self._current.reset(self._previous_ctx_token)
            self._previous_ctx_token = None

    async def __aenter__(self: _ContextT) -> _ContextT:
        self.activate()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.afinalize(exc_value)

    def _promise_resolved(self, promise: Promise[Any], result: Any) -> None:
        """Called synchronously once per resolved promise, for this context and each parent context."""
        for handler in self.on_promise_resolved_handlers:
            self._spawn_handler(self._arun_handler(handler, promise, result))

    async def _arun_handler(self, handler: PromiseResolvedEventHandler, promise: Promise[Any], result: Any) -> None:
        try:
            await handler(promise, result)
        except Exception:
            logger.log(self.log_level_for_errors, "An on_promise_resolved handler failed", exc_info=True)


class Promise(Generic[T]):
    """A value that is computed once, by a resolver, and can be awaited any number of times.

    :param start_asap: start resolving in the background now (default: the context's setting).
    :param resolver: an async function taking the promise and returning its value.
    :param prefill_result: the value, known already (then there is no resolver).
    """

    def __init__(
        self,
        start_asap: Union[bool, Sentinel] = DEFAULT,
        resolver: Optional[PromiseResolver[T]] = None,
        prefill_result: Union[Optional[T], Sentinel] = NO_VALUE,
    ) -> None:
        context = PromisingContext._current.get()
        if context is None:
            context = PromisingContext.get_current()  # (raises the error saying there is none)
        if resolver is not None and prefill_result is not NO_VALUE:
            raise PromisingError(f"{type(self).__name__} takes either `resolver` or `prefill_result`, not both.")
        self._context = context
        self._resolver_fn = resolver
        self._resolver_lock: Optional[asyncio.Lock] = None
        self._result: Any = prefill_result
        if prefill_result is not NO_VALUE:
            self._notify_resolved()
        elif start_asap is not False and self._should_start(start_asap):  # (no call for the core's own promises)
            context.spawn(self._aresolve_in_background())

    def _should_start(self, start_asap: Union[bool, Sentinel]) -> bool:
        if start_asap is DEFAULT:
            return self._context.start_everything_asap_by_default
        return bool(start_asap)

    async def _resolver(self) -> T:
        if self._resolver_fn is None:
            raise FunctionNotProvidedError(
                f"{type(self).__name__} has nothing to resolve it with: pass `resolver=` or `prefill_result=`, or "
                "override `_resolver()` in a subclass."
            )
        return await self._resolver_fn(self)

    async def aresolve(self) -> T:
        """The promised value (computed on first call); a failure is raised, the same exception every time."""
        if self._result is NO_VALUE:
            if self._resolver_lock is None:
                self._resolver_lock = asyncio.Lock()
            async with self._resolver_lock:
                if self._result is NO_VALUE:
                    try:
                        self._result = await self._resolver()
                    except BaseException as exc:
                        logger.debug("A promise failed to resolve", exc_info=True)
                        self._result = exc
                    self._resolver_fn = None  # let go of what the resolver holds (often a cycle back to us)
                    self._notify_resolved()
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result

    def __await__(self) -> Generator[Any, None, T]:
        return self.aresolve().__await__()

    async def _aresolve_in_background(self) -> None:
        try:
            await self.aresolve()
        except Exception as error:  # kept in the promise for whoever awaits it, and logged in case nobody does
            if self._context._first_report_of(error):
                logger.log(
                    self._context.log_level_for_errors,
                    "A %s started in the background failed",
                    type(self).__name__,
                    exc_info=True,
                )

    def _notify_resolved(self) -> None:
        context: Optional[PromisingContext] = self._context
        while context is not None:
            context._promise_resolved(self, self._result)
            context = context.parent


class StreamedPromise(Promise[WHOLE], Generic[PIECE, WHOLE]):
    """A promise of a whole value that can also be consumed piece by piece, by any number of consumers.

    Every iteration replays the stream from its first piece; the streamer runs once. An exception raised by the
    streamer becomes a piece of its own: every consumer sees it raised at the same position.

    :param streamer: a function taking the promise and returning an async iterator of pieces.
    :param prefill_pieces: the pieces, known already (then there is no streamer).
    :param resolver: an async function taking the promise and returning the whole value.
    :param prefill_result: the whole value, known already.
    :param start_asap: start producing pieces and the whole value in the background now.
    """

    def __init__(
        self,
        streamer: Optional[PromiseStreamer[PIECE]] = None,
        prefill_pieces: Union[Optional[Iterable[PIECE]], Sentinel] = NO_VALUE,
        resolver: Optional[PromiseResolver[WHOLE]] = None,
        prefill_result: Union[Optional[WHOLE], Sentinel] = NO_VALUE,
        start_asap: Union[bool, Sentinel] = DEFAULT,
    ) -> None:
        if streamer is not None and prefill_pieces is not NO_VALUE:
            raise PromisingError(f"{type(self).__name__} takes either `streamer` or `prefill_pieces`, not both.")
        self._streamer_fn = streamer
        self._stream_iterator: Any = None
        self._pulling = False  # a consumer is pulling the next piece from the streamer right now
        self._piece_waiters: Optional[list[asyncio.Future[None]]] = None  # consumers waiting for that piece
        if prefill_pieces is NO_VALUE:
            self._pieces: list[Any] = []
            self._stream_done = False
        else:
            # a tuple: nothing is appended to a stream that is done, and the collector stops walking a tuple of
            # strings (a message known from the start keeps one such promise for as long as its sequence is kept)
            self._pieces = tuple(prefill_pieces or ())  # type: ignore[assignment,arg-type]
            self._stream_done = True
        super().__init__(start_asap=False, resolver=resolver, prefill_result=prefill_result)
        if (
            start_asap is not False
            and (not self._stream_done or self._result is NO_VALUE)
            and self._should_start(start_asap)
        ):
            self._context.spawn(self._aproduce_in_background())

    _stream_exhausted: Optional[Callable[[], bool]] = None
    """The `_is_exhausted()` of the streamer's iterator, if it has one: whether its next `__anext__` would raise
    StopAsyncIteration right away, without running or awaiting anything (such a stream ends as soon as it can)."""

    def _streamer(self) -> AsyncIterator[PIECE]:
        if self._streamer_fn is None:
            raise FunctionNotProvidedError(
                f"{type(self).__name__} has nothing to stream from: pass `streamer=` or `prefill_pieces=`, or "
                "override `_streamer()` in a subclass."
            )
        return self._streamer_fn(self)

    def __aiter__(self) -> AsyncIterator[PIECE]:
        """A new iterator that replays the stream from the beginning."""
        return _StreamReplayIterator(self)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[PIECE]:
        """Lets this promise serve as the streamer of another `StreamedPromise`."""
        return self.__aiter__()

    async def _aproduce_in_background(self) -> None:
        while not self._stream_done:
            await self._aproduce_piece(len(self._pieces))
        await self._aresolve_in_background()

    async def _aproduce_piece(self, index: int) -> None:
        """Make sure the piece at `index` exists, unless the stream ends before it.

        One consumer at a time pulls from the streamer; the others wait for that piece rather than for a lock,
        so the consumer that is pulling carries on to the next piece without handing over to each waiting one
        (with a lock, two consumers of the same stream would take turns through the event loop on every piece).
        The pull is written out here rather than in a coroutine of its own: every piece of every stream (an agent
        call's replies and input among them) passes through this loop, and a coroutine more per piece is a
        measurable share of an agent call.
        """
        while index >= len(self._pieces) and not self._stream_done:
            if self._pulling:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                if self._piece_waiters is None:
                    self._piece_waiters = []
                self._piece_waiters.append(waiter)
                await waiter
                continue
            iterator = self._stream_iterator
            if iterator is None:
                iterator = self._start_streamer()
                if iterator is None:  # it could not be started: its error is the last piece now
                    return
            self._pulling = True
            try:
                piece = await iterator.__anext__()
            except StopAsyncIteration:
                self._end_stream()
            except asyncio.CancelledError as exc:
                if inspect.isasyncgen(iterator):
                    # the generator is dead now: every consumer sees the cancellation at this position
                    self._append_piece(exc)
                    self._end_stream()
                raise
            except BaseException as exc:
                # one line: the traceback is logged once, by whoever reports the failure (see `_first_report_of`)
                logger.debug("The streamer of a StreamedPromise raised %s", type(exc).__name__)
                self._append_piece(exc)
                if not isinstance(exc, Exception):
                    self._end_stream()
                    raise
            else:
                self._append_piece(piece)
                if self._stream_exhausted is not None and self._stream_exhausted():
                    # the streamer knows it has nothing more: the stream ends now, not on one more pull through it
                    self._end_stream()
            finally:
                self._pulling = False
                waiters = self._piece_waiters
                if waiters:
                    self._piece_waiters = None
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)

    def _start_streamer(self) -> Any:
        """Start the streamer and keep its iterator; if it cannot be started, end the stream with the error as its
        last piece and return None."""
        try:
            iterator = self._streamer()
            if not callable(getattr(iterator, "__anext__", None)):
                if inspect.iscoroutine(iterator):
                    iterator.close()  # never awaited: close it so it does not warn later
                raise TypeError(
                    f"The streamer of {type(self).__name__} returned a {type(iterator).__name__}, but it "
                    "must return an async iterator (write it as an `async def` with `yield`)."
                )
        except BaseException as exc:
            logger.debug("The streamer of a StreamedPromise could not be started", exc_info=True)
            self._stream_iterator = FAILED
            self._append_piece(exc)
            self._end_stream()
            return None
        self._stream_iterator = iterator
        self._stream_exhausted = getattr(iterator, "_is_exhausted", None)
        return iterator

    def _append_piece(self, piece: Any) -> None:
        self._pieces.append(piece)

    def _end_stream(self) -> None:
        self._stream_done = True
        # let go of the streamer and its iterator: they often refer back to this promise
        self._streamer_fn = None
        self._stream_iterator = FAILED
        self._stream_exhausted = None


class _StreamReplayIterator(AsyncIterator[PIECE]):
    """Iterates a `StreamedPromise` from its first piece, producing new pieces on demand."""

    __slots__ = ("_index", "_promise")

    def __init__(self, promise: StreamedPromise[PIECE, Any]) -> None:
        self._promise = promise
        self._index = 0

    def __aiter__(self) -> _StreamReplayIterator[PIECE]:
        return self

    def _is_exhausted(self) -> bool:
        """Whether `__anext__` would raise StopAsyncIteration right away (see `StreamedPromise._stream_exhausted`)."""
        return self._promise._stream_done and self._index >= len(self._promise._pieces)

    async def __anext__(self) -> PIECE:
        promise = self._promise
        index = self._index
        if index >= len(promise._pieces):
            if promise._stream_done:
                raise StopAsyncIteration
            await promise._aproduce_piece(index)
            if index >= len(promise._pieces):
                raise StopAsyncIteration
        piece = promise._pieces[index]
        self._index = index + 1
        if isinstance(piece, BaseException):
            raise piece
        return piece


class StreamAppender(AsyncIterator[PIECE], Generic[PIECE]):
    """A streamer fed from outside: open it (`with appender:`), `append()` pieces, and closing ends the stream.

    :param capture_errors: an exception raised inside the `with` block becomes the last piece of the stream
        instead of propagating (default: the context's `appenders_capture_errors_by_default`). Exceptions that
        are not `Exception`s (KeyboardInterrupt, cancellation) always become a piece AND propagate, so no
        consumer is left waiting. An exception raised after the appender was closed (its stream has ended, so
        no consumer would see it) always propagates.
    """

    def __init__(self, capture_errors: Union[bool, Sentinel] = DEFAULT) -> None:
        if capture_errors is DEFAULT:
            self._capture_errors = PromisingContext.get_current().appenders_capture_errors_by_default
        else:
            self._capture_errors = bool(capture_errors)
        self._pieces: deque[Any] = deque()
        self._waiter: Optional[asyncio.Future[None]] = None
        self._append_open = False
        self._append_closed = False

    def __enter__(self) -> StreamAppender[PIECE]:
        return self.open()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool:
        if exc_value is None or isinstance(exc_value, AppenderClosedError):
            self.close()
            return False
        if self._append_closed:  # closed early: nobody would see the error in the stream, so it propagates
            return False
        if not isinstance(exc_value, Exception) or self._capture_errors:
            logger.debug("A StreamAppender captured %s", type(exc_value).__name__)  # logged once elsewhere
            self._put(exc_value)
            self.close()
            return isinstance(exc_value, Exception)
        self.close()
        return False

    def append(self, piece: PIECE) -> StreamAppender[PIECE]:
        """Add a piece to the stream (only between `open()` and `close()`)."""
        if not self._append_open:
            raise AppenderNotOpenError(
                "This StreamAppender is not open: append inside a `with appender:` block (or call `open()` first)."
            )
        if self._append_closed:
            raise AppenderClosedError(
                "This StreamAppender is closed and takes no more pieces: its stream has ended. Append before the "
                "`with` block ends (for agents: before the agent function returns or calls `finish_early()`)."
            )
        self._put(piece)
        return self

    def _put(self, piece: Any) -> None:
        self._pieces.append(piece)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def open(self) -> StreamAppender[PIECE]:
        """Open for appending; prefer `with appender:` which also closes."""
        if self._append_closed:
            raise AppenderClosedError("A closed StreamAppender cannot be opened again; create a new one.")
        self._append_open = True
        return self

    def close(self) -> None:
        """End the stream; a consumer waiting for more pieces would otherwise wait forever."""
        if self._append_closed:
            return
        self._append_closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def is_closed(self) -> bool:
        """Whether the stream has ended."""
        return self._append_closed

    async def __anext__(self) -> PIECE:
        while not self._pieces:
            if self._append_closed:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return self._pieces.popleft()

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[PIECE]:
        return self
