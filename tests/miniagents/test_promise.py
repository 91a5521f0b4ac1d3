"""Promise, StreamedPromise, StreamAppender and PromisingContext."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, Union

import pytest

from miniagents.promising.errors import (
    AppenderClosedError,
    AppenderNotOpenError,
    FunctionNotProvidedError,
    NoActiveContextError,
    PromisingError,
)
from miniagents.promising.promising import Promise, PromisingContext, StreamAppender, StreamedPromise
from miniagents.promising.sentinels import DEFAULT, NO_VALUE, Sentinel

START_ASAP_MODES = [False, True, DEFAULT]


async def collect(promise: StreamedPromise[Any, Any]) -> list[Any]:
    return [piece async for piece in promise]


def filled_appender(pieces: list[Any], capture_errors: bool = True) -> StreamAppender[Any]:
    appender: StreamAppender[Any] = StreamAppender(capture_errors=capture_errors)
    with appender:
        for piece in pieces:
            appender.append(piece)
    return appender


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_streamer_runs_once_however_often_the_stream_is_replayed(start_asap: Union[bool, Sentinel]) -> None:
    produced = 0

    async def streamer(_: Any) -> AsyncIterator[int]:
        nonlocal produced
        for number in range(1, 6):
            produced += 1
            yield number

    async def resolver(promise: StreamedPromise[int, list[int]]) -> list[int]:
        return await collect(promise)

    async with PromisingContext():
        promise = StreamedPromise(streamer=streamer, resolver=resolver, start_asap=start_asap)
        assert await collect(promise) == [1, 2, 3, 4, 5]
        assert await collect(promise) == [1, 2, 3, 4, 5]
    assert produced == 5


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_an_error_is_replayed_at_the_same_position(start_asap: Union[bool, Sentinel]) -> None:
    appender: StreamAppender[int] = StreamAppender(capture_errors=True)
    with appender:
        for number in range(1, 6):
            if number == 3:
                raise ValueError("Test error")
            appender.append(number)

    async def check(promise: StreamedPromise[int, Any]) -> None:
        iterator = promise.__aiter__()
        assert await iterator.__anext__() == 1
        assert await iterator.__anext__() == 2
        with pytest.raises(ValueError, match="Test error"):
            await iterator.__anext__()
        with pytest.raises(StopAsyncIteration):
            await iterator.__anext__()
        with pytest.raises(StopAsyncIteration):
            await iterator.__anext__()

    async with PromisingContext():
        promise = StreamedPromise(streamer=appender, resolver=collect_resolver, start_asap=start_asap)
        await check(promise)
        await check(promise)


async def collect_resolver(promise: StreamedPromise[Any, Any]) -> list[Any]:
    return await collect(promise)


async def _async_function_that_is_not_a_generator(_: Any) -> None:
    return None


@pytest.mark.parametrize("broken_streamer", [lambda _: iter([]), _async_function_that_is_not_a_generator])
@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_a_broken_streamer_raises_once_then_ends_the_stream(
    broken_streamer: Any, start_asap: Union[bool, Sentinel]
) -> None:
    async with PromisingContext():
        promise: StreamedPromise[Any, Any] = StreamedPromise(
            streamer=broken_streamer, resolver=collect_resolver, start_asap=start_asap
        )
        for _ in range(2):
            iterator = promise.__aiter__()
            with pytest.raises(TypeError, match="must return an async iterator"):
                await iterator.__anext__()
            with pytest.raises(StopAsyncIteration):
                await iterator.__anext__()
            with pytest.raises(StopAsyncIteration):
                await iterator.__anext__()
        with pytest.raises(TypeError):
            await promise


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_a_non_async_resolver_fails_only_the_whole_value(start_asap: Union[bool, Sentinel]) -> None:
    async with PromisingContext():
        promise: StreamedPromise[int, Any] = StreamedPromise(
            streamer=filled_appender([1, 2, 3]),
            resolver=lambda _: [],  # type: ignore[arg-type,return-value]
            start_asap=start_asap,
        )
        with pytest.raises(TypeError) as first:
            await promise
        assert await collect(promise) == [1, 2, 3]
        with pytest.raises(TypeError) as second:
            await promise
    assert first.value is second.value


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_a_failing_resolver_is_called_once_and_its_error_raised_every_time(
    start_asap: Union[bool, Sentinel],
) -> None:
    calls = 0

    async def resolver(_: Any) -> None:
        nonlocal calls
        calls += 1
        raise TypeError("Test error")

    async with PromisingContext():
        promise: StreamedPromise[int, None] = StreamedPromise(
            streamer=filled_appender([1, 2, 3, 4, 5]), resolver=resolver, start_asap=start_asap
        )
        with pytest.raises(TypeError) as first:
            await promise
        assert await collect(promise) == [1, 2, 3, 4, 5]
        with pytest.raises(TypeError) as second:
            await promise
    assert first.value is second.value
    assert calls == 1


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_resolver_runs_once_and_the_same_result_object_is_returned(start_asap: Union[bool, Sentinel]) -> None:
    calls = 0

    async def resolver(promise: StreamedPromise[int, list[int]]) -> list[int]:
        nonlocal calls
        calls += 1
        return await collect(promise)

    async with PromisingContext():
        promise = StreamedPromise(
            streamer=filled_appender([1, 2, 3, 4, 5], capture_errors=False), resolver=resolver, start_asap=start_asap
        )
        first = await promise
        second = await promise
    assert calls == 1
    assert first == [1, 2, 3, 4, 5]
    assert second is first


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_an_appender_that_does_not_capture_errors_lets_them_out_and_ends_the_stream_cleanly(
    start_asap: Union[bool, Sentinel],
) -> None:
    appender: StreamAppender[int] = StreamAppender(capture_errors=False)
    with pytest.raises(ValueError, match="Test error"):
        with appender:
            for number in range(1, 6):
                if number == 3:
                    raise ValueError("Test error")
                appender.append(number)

    async with PromisingContext():
        promise = StreamedPromise(streamer=appender, resolver=collect_resolver, start_asap=start_asap)
        assert await promise == [1, 2]


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_streamer_and_resolver_receive_the_promise_itself(start_asap: Union[bool, Sentinel]) -> None:
    seen: list[Any] = []

    async def streamer(promise: Any) -> AsyncIterator[int]:
        seen.append(promise)
        yield 1

    async def resolver(promise: Any) -> list[int]:
        seen.append(promise)
        return await collect(promise)

    async with PromisingContext():
        promise = StreamedPromise(streamer=streamer, resolver=resolver, start_asap=start_asap)
        assert await promise == [1]
    assert seen == [promise, promise]


async def test_consumers_that_start_late_get_every_piece_from_the_start() -> None:
    appender: StreamAppender[str] = StreamAppender(capture_errors=False)
    async with PromisingContext():
        promise = StreamedPromise(streamer=appender, resolver=collect_resolver, start_asap=True)
        early = asyncio.create_task(collect(promise))
        with appender:
            appender.append("a")
            await asyncio.sleep(0.01)
            late = asyncio.create_task(collect(promise))
            appender.append("b")
        assert await early == ["a", "b"]
        assert await late == ["a", "b"]


async def test_start_asap_produces_the_stream_without_any_consumer() -> None:
    produced: list[int] = []

    async def streamer(_: Any) -> AsyncIterator[int]:
        for number in range(3):
            produced.append(number)
            yield number

    async with PromisingContext():
        StreamedPromise(streamer=streamer, resolver=collect_resolver, start_asap=True)
        lazy = StreamedPromise(streamer=streamer, resolver=collect_resolver, start_asap=False)
        await asyncio.sleep(0.01)
        assert produced == [0, 1, 2]
        assert await lazy == [0, 1, 2]


async def test_prefilled_promises_need_no_functions() -> None:
    async with PromisingContext():
        promise = StreamedPromise(prefill_pieces=["a", "b"], prefill_result="ab")
        assert await collect(promise) == ["a", "b"]
        assert await promise == "ab"
        assert await Promise(prefill_result=None) is None


async def test_a_promise_without_a_resolver_says_how_to_give_it_one() -> None:
    async with PromisingContext():
        promise: Promise[int] = Promise(start_asap=False)
        with pytest.raises(FunctionNotProvidedError, match="pass `resolver=` or `prefill_result=`"):
            await promise


async def test_resolver_and_prefill_together_are_refused() -> None:
    async def resolver(_: Any) -> int:
        return 1

    async with PromisingContext():
        with pytest.raises(PromisingError, match="either `resolver` or `prefill_result`"):
            Promise(resolver=resolver, prefill_result=2)
        with pytest.raises(PromisingError, match="either `streamer` or `prefill_pieces`"):
            StreamedPromise(streamer=filled_appender([]), prefill_pieces=[1])


def test_promises_outside_a_context_raise_an_error_that_says_what_to_do() -> None:
    with pytest.raises(NoActiveContextError, match=r"async with PromisingContext\(\):"):
        Promise(prefill_result=1)
    assert issubclass(NoActiveContextError, RuntimeError)


def test_default_appender_settings_need_a_context() -> None:
    with pytest.raises(NoActiveContextError):
        StreamAppender()
    assert PromisingContext.get_current_or_none() is None


async def test_appending_to_an_appender_that_is_not_open_or_closed_says_why() -> None:
    appender: StreamAppender[int] = StreamAppender(capture_errors=False)
    with pytest.raises(AppenderNotOpenError, match="with appender:"):
        appender.append(1)
    with appender:
        appender.append(1)
    with pytest.raises(AppenderClosedError, match="closed and takes no more pieces"):
        appender.append(2)
    with pytest.raises(AppenderClosedError, match="cannot be opened again"):
        appender.open()


async def test_appender_closed_error_is_not_captured() -> None:
    appender: StreamAppender[int] = StreamAppender(capture_errors=True)
    with appender:
        appender.append(1)
    with pytest.raises(AppenderClosedError):
        with appender:
            appender.append(2)


async def test_keyboard_interrupt_reaches_the_consumer_instead_of_leaving_it_waiting() -> None:
    appender: StreamAppender[int] = StreamAppender(capture_errors=True)
    async with PromisingContext():
        promise = StreamedPromise(streamer=appender, resolver=collect_resolver, start_asap=False)
        received: list[int] = []

        async def consume() -> BaseException:
            # a task that lets KeyboardInterrupt escape would stop the event loop itself, so hand it back
            try:
                async for piece in promise:
                    received.append(piece)
            except BaseException as exc:
                return exc
            raise AssertionError("the stream ended without the interrupt")

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0)
        with pytest.raises(KeyboardInterrupt):
            with appender:
                appender.append(1)
                raise KeyboardInterrupt
        assert isinstance(await asyncio.wait_for(consumer, timeout=1), KeyboardInterrupt)
        assert received == [1]


async def test_a_cancelled_streamer_generator_shows_the_cancellation_to_every_consumer() -> None:
    started = asyncio.Event()

    async def streamer(_: Any) -> AsyncIterator[int]:
        yield 1
        started.set()
        await asyncio.sleep(10)
        yield 2

    async with PromisingContext():
        promise = StreamedPromise(streamer=streamer, resolver=collect_resolver, start_asap=False)
        first = asyncio.create_task(collect(promise))
        await started.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        iterator = promise.__aiter__()
        assert await iterator.__anext__() == 1
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(iterator.__anext__(), timeout=1)


async def test_a_consumer_cancelled_while_waiting_for_a_piece_leaves_the_others_unharmed() -> None:
    async with PromisingContext():
        appender: StreamAppender[int] = StreamAppender()
        promise = StreamedPromise(streamer=appender, resolver=collect_resolver, start_asap=False)
        pulling = asyncio.create_task(collect(promise))
        waiting = asyncio.create_task(collect(promise))
        await asyncio.sleep(0)  # the first pulls from the appender, the second waits for that piece
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with appender:
            appender.append(1)
            appender.append(2)
        assert await asyncio.wait_for(pulling, timeout=1) == [1, 2]
        assert await collect(promise) == [1, 2]


class _SlowCounter:
    """An async iterator (not a generator, so it survives a cancelled `__anext__`): 1, 2, 3 after a pause each."""

    def __init__(self) -> None:
        self.count = 0

    def __aiter__(self) -> "_SlowCounter":
        return self

    async def __anext__(self) -> int:
        await asyncio.sleep(0.01)
        if self.count == 3:
            raise StopAsyncIteration
        self.count += 1
        return self.count


async def test_when_the_pulling_consumer_is_cancelled_a_waiting_one_takes_over() -> None:
    counter = _SlowCounter()
    async with PromisingContext():
        promise = StreamedPromise(streamer=lambda _: counter, resolver=collect_resolver, start_asap=False)
        pulling = asyncio.create_task(collect(promise))
        waiting = asyncio.create_task(collect(promise))
        await asyncio.sleep(0)
        pulling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pulling
        assert await asyncio.wait_for(waiting, timeout=1) == [1, 2, 3]


async def test_consumers_of_a_ready_stream_do_not_take_turns_through_the_event_loop() -> None:
    async with PromisingContext():
        appender: StreamAppender[int] = StreamAppender()
        promise = StreamedPromise(streamer=appender, resolver=collect_resolver, start_asap=False)
        first = asyncio.create_task(collect(promise))
        second = asyncio.create_task(collect(promise))
        await asyncio.sleep(0)  # the first waits inside the appender, the second waits for the first piece
        with appender:
            for piece in range(1000):
                appender.append(piece)
        loop_turns = 0
        while not (first.done() and second.done()):
            await asyncio.sleep(0)
            loop_turns += 1
        assert await first == await second == list(range(1000))
        # each consumer is woken a bounded number of times, not once per piece
        assert loop_turns < 10


async def test_on_promise_resolved_handlers_see_every_resolution_in_this_and_parent_contexts() -> None:
    outer_seen: list[Any] = []
    inner_seen: list[Any] = []

    async def outer_handler(_: Any, result: Any) -> None:
        outer_seen.append(result)

    async with PromisingContext(on_promise_resolved=outer_handler):
        async with PromisingContext() as inner:

            @inner.on_promise_resolved
            async def inner_handler(_: Any, result: Any) -> None:
                inner_seen.append(result)

            Promise(prefill_result="x")

            async def resolver(_: Any) -> str:
                return "y"

            assert await Promise(resolver=resolver, start_asap=False) == "y"
    assert sorted(outer_seen) == ["x", "y"]
    assert sorted(inner_seen) == ["x", "y"]


async def test_start_asap_tasks_are_awaited_before_the_context_exits() -> None:
    finished: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.02)
        finished.append("slow")

    async with PromisingContext() as context:
        context.start_asap(slow())
        assert finished == []
    assert finished == ["slow"]


async def test_start_asap_with_suppressed_errors_returns_none() -> None:
    async def failing() -> None:
        raise ValueError("boom")

    async with PromisingContext() as context:
        task = context.start_asap(failing(), suppress_errors=True)
        assert await task is None
        loud = context.start_asap(failing())
        with pytest.raises(ValueError, match="boom"):
            await loud


async def test_a_context_cannot_be_entered_twice_and_sentinels_refuse_boolean_use() -> None:
    context = PromisingContext()
    async with context:
        with pytest.raises(PromisingError, match="already active"):
            context.activate()
    with pytest.raises(RuntimeError, match="boolean"):
        bool(NO_VALUE)
    assert repr(DEFAULT) == "DEFAULT"


def test_waiting_for_the_tasks_of_a_context_never_spins_on_finished_ones() -> None:
    # a finished task leaves `child_tasks` by a done callback that runs later; awaiting finished tasks does not
    # yield to the event loop, so waiting on them again and again would spin forever (as it did on Python 3.12+)
    script = """
import asyncio
import subprocess
import sys
from miniagents.promising.promising import PromisingContext

async def main():
    context = PromisingContext()
    async def nothing():
        return None
    finished = asyncio.ensure_future(nothing())
    await finished
    context.child_tasks.add(finished)  # as between the task's end and its done callback
    await context.aflush_tasks()
    await context.acancel_tasks()
    print("returned")

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert result.stdout.strip() == "returned", result.stderr
