"""How agent calls start, reply, fail, nest and are numbered: the cases around the happy path."""

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from miniagents import (
    EventKind,
    InteractionContext,
    ListEventSink,
    Message,
    MiniAgents,
    miniagent,
)
from miniagents.errors import AgentDefinitionError


async def test_a_cancelled_consumer_leaves_the_replies_to_the_others() -> None:
    @miniagent
    async def slow(ctx: InteractionContext) -> None:
        await asyncio.sleep(0.05)
        ctx.reply("first")
        ctx.reply("second")

    async with MiniAgents():
        replies = slow.inquire("question")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(replies.__aiter__().__anext__(), 0.01)
        assert [str(message) for message in await replies.aresolve_messages()] == ["first", "second"]


async def test_a_keyword_argument_given_to_the_call_overrides_the_bound_one() -> None:
    @miniagent
    async def answer(ctx: InteractionContext, model: str, temperature: float) -> None:
        ctx.reply(f"{model} at {temperature}")

    bound = answer.fork(model="small", temperature=0.5)
    async with MiniAgents():
        assert str((await bound.inquire().aresolve_messages())[0]) == "small at 0.5"
        assert str((await bound.inquire(temperature=0.9).aresolve_messages())[0]) == "small at 0.9"


async def test_a_failure_nobody_awaits_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    @miniagent
    async def crashing(ctx: InteractionContext) -> None:
        raise RuntimeError("agent crashed")

    async def failing_resolver(_: Any) -> None:
        raise ValueError("resolver crashed")

    from miniagents.promising.promising import Promise

    with caplog.at_level(logging.ERROR):
        async with MiniAgents():
            crashing.inquire("go")
            Promise(resolver=failing_resolver)
    logged = {(record.levelno, str(record.exc_info[1])) for record in caplog.records if record.exc_info}
    assert (logging.ERROR, "agent crashed") in logged
    assert (logging.ERROR, "resolver crashed") in logged
    assert any("CRASHING (call 1) failed" in record.getMessage() for record in caplog.records)


async def test_background_failures_are_logged_at_the_contexts_level(caplog: pytest.LogCaptureFixture) -> None:
    @miniagent
    async def crashing(ctx: InteractionContext) -> None:
        raise RuntimeError("agent crashed")

    with caplog.at_level(logging.DEBUG):
        async with MiniAgents(log_level_for_errors=logging.INFO):
            crashing.inquire("go")
    levels = {record.levelno for record in caplog.records if record.exc_info and "crashed" in str(record.exc_info[1])}
    assert logging.INFO in levels and max(levels) == logging.INFO  # (DEBUG records come from promises' internals)


async def test_an_error_after_finish_early_is_logged_and_recorded_once(caplog: pytest.LogCaptureFixture) -> None:
    @miniagent
    async def early(ctx: InteractionContext) -> None:
        ctx.reply("partial answer")
        ctx.finish_early()
        raise RuntimeError("failed after finishing early")

    sink = ListEventSink()
    with caplog.at_level(logging.ERROR):
        async with MiniAgents(store=sink):
            assert [str(message) for message in await early.inquire().aresolve_messages()] == ["partial answer"]
    assert any("failed after its reply sequence was closed" in record.getMessage() for record in caplog.records)
    errors = sink.of_kind(EventKind.ERROR)
    assert [(event.call_id, event.data["error"]["text"]) for event in errors if event.data] == [
        (1, "failed after finishing early")
    ]


async def test_replying_after_finish_early_is_recorded_once() -> None:
    @miniagent
    async def early(ctx: InteractionContext) -> None:
        ctx.finish_early()
        ctx.reply("too late")

    sink = ListEventSink()
    async with MiniAgents(store=sink):
        assert await early.inquire().aresolve_messages() == ()
    errors = sink.of_kind(EventKind.ERROR)
    assert [event.data["error"]["type"] for event in errors if event.data] == ["AppenderClosedError"]


async def test_identical_calls_are_numbered_in_the_order_their_input_resolves() -> None:
    @miniagent
    async def llm(ctx: InteractionContext) -> None:
        await ctx.messages.aresolve_messages()
        await asyncio.sleep(0.05 if ctx.agent_call.call_id == 1 else 0)  # the first call finishes last
        ctx.reply(f"answer of call {ctx.agent_call.call_id}")

    sink = ListEventSink()
    async with MiniAgents(store=sink):
        first, second = llm.inquire("same prompt"), llm.inquire("same prompt")
        await first.aresolve_messages()
        await second.aresolve_messages()
    finished = {event.call_id: event for event in sink.of_kind(EventKind.CALL_FINISHED)}
    assert finished[1].hash_key == finished[2].hash_key
    assert finished[1].data is not None and finished[1].data["occurrence"] == 0
    assert finished[2].data is not None and finished[2].data["occurrence"] == 1


async def test_calls_made_by_replies_generated_lazily_are_children_of_the_replying_call() -> None:
    @miniagent
    async def leaf(ctx: InteractionContext, n: int) -> None:
        ctx.reply(f"leaf {n}")

    @miniagent
    async def lazy(ctx: InteractionContext) -> None:
        ctx.reply(leaf.inquire(n=n) for n in range(2))

    @miniagent
    async def async_generated(ctx: InteractionContext) -> None:
        async def replies() -> AsyncIterator[Any]:
            for n in range(2, 4):
                yield leaf.inquire(n=n)

        ctx.reply(replies())

    sink = ListEventSink()
    async with MiniAgents(store=sink):
        assert [str(m) for m in await lazy.inquire().aresolve_messages()] == ["leaf 0", "leaf 1"]
        assert [str(m) for m in await async_generated.inquire().aresolve_messages()] == ["leaf 2", "leaf 3"]
    started = {event.call_id: event for event in sink.of_kind(EventKind.CALL_STARTED)}

    def alias(call_id: Any) -> Any:
        event = started.get(call_id)
        return event.data["agent_alias"] if event is not None and event.data else None

    parents = Counter((alias(call_id), alias(event.parent_call_id)) for call_id, event in started.items())
    assert parents == Counter(
        {("LAZY", None): 1, ("ASYNC_GENERATED", None): 1, ("LEAF", "LAZY"): 2, ("LEAF", "ASYNC_GENERATED"): 2}
    )


async def test_a_call_left_open_after_its_parent_returned_is_closed_when_the_context_exits() -> None:
    @miniagent
    async def counting(ctx: InteractionContext) -> None:
        ctx.reply(f"got {len(await ctx.messages.aresolve_messages())}")

    left_open: list[Any] = []

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def tokens(_: Any) -> AsyncIterator[str]:
            await asyncio.sleep(0.01)  # runs after the parent's function returned
            call = counting.initiate_inquiry()
            call.send_message("x")  # and never finished
            left_open.append(call)
            yield "streamed"

        ctx.reply(Message.promise(message_token_streamer=tokens))

    async def arun() -> tuple[Message, ...]:
        async with MiniAgents():
            await parent.inquire().aresolve_messages()
            replies = asyncio.ensure_future(left_open[0].reply_sequence_promise.aresolve_messages())
        return await replies

    # the context exit closes the input of the call left open, so the call replies and the exit returns
    assert [str(m) for m in await asyncio.wait_for(arun(), 5)] == ["got 1"]


async def test_a_reused_context_numbers_and_records_each_run_afresh() -> None:
    @miniagent
    async def greet(ctx: InteractionContext) -> None:
        ctx.reply(greeting)

    greeting = Message(text="hello")
    sinks = [ListEventSink(), ListEventSink()]
    mini_agents = MiniAgents()
    for sink in sinks:
        mini_agents._recorder.sinks = [sink]
        async with mini_agents:
            await greet.inquire().aresolve_messages()
    for sink in sinks:
        assert [event.call_id for event in sink.of_kind(EventKind.CALL_STARTED)] == [1]
        finished = sink.of_kind(EventKind.CALL_FINISHED)
        assert finished[0].data is not None and finished[0].data["occurrence"] == 0
        assert greeting.hash_key in {event.hash_key for event in sink.of_kind(EventKind.MESSAGE)}


async def test_a_sink_error_is_not_reported_again_by_the_next_run() -> None:
    class FailingOnce(ListEventSink):
        failed = False

        def append(self, event: Any) -> None:
            if not self.failed:
                self.failed = True
                raise OSError("disk full")
            super().append(event)

    mini_agents = MiniAgents(store=FailingOnce())
    with pytest.raises(Exception, match="disk full"):
        async with mini_agents:
            pass
    async with mini_agents:
        pass


async def test_nested_contexts_each_record_a_message_once() -> None:
    outer_sink, inner_sink = ListEventSink(), ListEventSink()
    persisted: Counter[str] = Counter()
    outer = MiniAgents(store=outer_sink)

    @outer.on_persist_message
    async def on_outer(_: Any, message: Message) -> None:
        persisted["outer"] += 1

    async with outer:
        inner = MiniAgents(store=inner_sink)

        @inner.on_persist_message
        async def on_inner(_: Any, message: Message) -> None:
            persisted["inner"] += 1

        async with inner:
            message = Message(text="hello")
            for _ in range(3):
                await message.as_promise
    assert persisted == Counter({"outer": 1, "inner": 1})
    assert len(outer_sink.of_kind(EventKind.MESSAGE)) == len(inner_sink.of_kind(EventKind.MESSAGE)) == 1


def _traced(func: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Coroutine[Any, Any, None]]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, None]:
        return func(*args, **kwargs)

    return wrapper


async def test_an_agent_function_behind_a_sync_decorator_is_awaited() -> None:
    @miniagent
    @_traced
    async def hello(ctx: InteractionContext) -> None:
        ctx.reply("hello")

    async with MiniAgents():
        assert [str(m) for m in await hello.inquire().aresolve_messages()] == ["hello"]


async def test_an_agent_function_that_returns_no_awaitable_fails_the_call_clearly() -> None:
    def not_awaitable(ctx: InteractionContext) -> None:
        return None

    not_awaitable.__wrapped__ = _async_noop  # type: ignore[attr-defined]  # claims to wrap an async function
    agent = miniagent(not_awaitable)
    async with MiniAgents():
        with pytest.raises(AgentDefinitionError, match="NOT_AWAITABLE returned a NoneType, not an awaitable"):
            await agent.inquire().aresolve_messages()


async def _async_noop(ctx: InteractionContext) -> None:
    pass


async def test_handlers_still_get_what_resolved_before_the_body_failed() -> None:
    resolved: list[Any] = []
    persisted: list[str] = []

    async def on_resolved(_: Any, result: Any) -> None:
        resolved.append(result)

    async def on_persist(_: Any, message: Message) -> None:
        persisted.append(str(message))

    with pytest.raises(RuntimeError, match="body failed"):
        async with MiniAgents(on_promise_resolved=on_resolved, on_persist_message=on_persist):
            for index in range(3):
                await Message(text=f"m{index}").as_promise
            raise RuntimeError("body failed")
    assert persisted == ["m0", "m1", "m2"]
    assert [str(result) for result in resolved] == ["m0", "m1", "m2"]


async def test_each_call_is_recorded_with_its_position_in_the_call_tree() -> None:
    @miniagent
    async def leaf(ctx: InteractionContext, n: int) -> None:
        await asyncio.sleep(0.01 * (3 - n))  # later calls finish first: positions do not depend on timing
        ctx.reply(f"leaf {n}")

    @miniagent
    async def branch(ctx: InteractionContext) -> None:
        ctx.reply([leaf.inquire(n=n) for n in range(3)])

    sink = ListEventSink()
    async with MiniAgents(store=sink):
        await asyncio.gather(branch.inquire().aresolve_messages(), leaf.inquire(n=0).aresolve_messages())
    positions = {
        (event.data["agent_alias"], event.data["position"])
        for event in sink.of_kind(EventKind.CALL_FINISHED)
        if event.data is not None
    }
    assert positions == {("BRANCH", "0"), ("LEAF", "0.0"), ("LEAF", "0.1"), ("LEAF", "0.2"), ("LEAF", "1")}


async def test_calls_are_recorded_when_the_body_fails_finished_or_cancelled() -> None:
    @miniagent
    async def quick(ctx: InteractionContext) -> None:
        ctx.reply("done")

    @miniagent
    async def endless(ctx: InteractionContext) -> None:
        ctx.reply("started")
        await asyncio.sleep(3600)

    sink = ListEventSink()
    with pytest.raises(RuntimeError, match="body failed"):
        async with MiniAgents(store=sink):
            await quick.inquire().aresolve_messages()
            endless_replies = endless.inquire()
            await endless_replies.__aiter__().__anext__()
            raise RuntimeError("body failed")
    finished = {
        event.data["agent_alias"]: event.data["error"] for event in sink.of_kind(EventKind.CALL_FINISHED) if event.data
    }
    assert finished["QUICK"] is None
    assert finished["ENDLESS"] is not None and finished["ENDLESS"]["type"] == "CancelledError"


async def test_a_failing_body_never_hangs_on_handlers_waiting_for_cancelled_replies() -> None:
    @miniagent
    async def leaf(ctx: InteractionContext) -> None:
        raise ValueError("boom")

    @miniagent
    async def leaf2(ctx: InteractionContext) -> None:
        ctx.reply(leaf.inquire())

    @miniagent
    async def inner(ctx: InteractionContext) -> None:
        ctx.reply(leaf2.inquire())

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        ctx.reply(inner.inquire())
        ctx.reply(inner.inquire())  # its replies are never read: the body fails on the first one

    async def run() -> None:
        async with MiniAgents(store=ListEventSink()):
            await outer.inquire().aresolve_messages()

    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(run(), timeout=10)
