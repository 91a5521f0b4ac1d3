"""Replayed answers complete in the recorded order, at any speed: a flow that acts on whichever parallel call
finishes first takes the recorded branch; a flow that waits on a call the recording completed after one it has
not made yet is told so (a warning) instead of hanging; live steps, nested answered calls and calls matched by
occurrence only hold nothing up."""

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Optional

import openai
import pytest

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.ext.llm.openai import openai_agent
from miniagents.messages import MessageSequencePromise
from miniagents.testing.fake_llm_server import FakeLLMServer, RecordedRequest, ScriptedReply
from replay import Replay
from store import MemoryStore


@miniagent(talks_to_outside_world=True)
async def worker(ctx: InteractionContext, name: str, delay: float) -> None:
    await asyncio.sleep(delay)
    ctx.reply(f"{name} done")  # one message, complete from the start: not streamed


async def first_finished(sequences: Sequence[MessageSequencePromise]) -> str:
    tasks = [asyncio.ensure_future(sequence.aresolve_messages()) for sequence in sequences]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*pending)  # the others finish too
    return str(next(iter(done)).result()[0])


@miniagent
async def race(ctx: InteractionContext) -> None:
    slow = worker.inquire(name="slow", delay=0.08)  # asked first, recorded finishing last
    fast = worker.inquire(name="fast", delay=0.01)
    ctx.reply(f"winner: {await first_finished([slow, fast])}")


async def run(store: MemoryStore, mode: str, flow: MiniAgent = race, **replay_options: Any) -> tuple[str, str]:
    replay = Replay(store, mode=mode, **replay_options)
    async with MiniAgents(replay=replay):
        messages = await flow.inquire().aresolve_messages()
    return " | ".join(str(message) for message in messages), replay.fingerprint


@pytest.mark.parametrize("speed", [None, 0.5, 1.0, 4.0])
async def test_the_call_that_finished_first_when_recorded_finishes_first_when_replayed(speed: Optional[float]) -> None:
    store = MemoryStore()
    recorded = await run(store, "once")
    assert recorded[0] == "winner: fast done"

    for _ in range(5):
        assert await run(store, "none", speed=speed) == recorded


async def test_a_flow_that_waits_on_a_later_call_before_making_an_earlier_one_is_told_so_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    await run(store, "once")

    @miniagent
    async def reordered(ctx: InteractionContext) -> None:
        # the recording has `fast` finishing before `slow`: this flow waits on `slow` before it makes `fast`
        slow = await worker.inquire(name="slow", delay=0.08).aresolve_messages()
        fast = await worker.inquire(name="fast", delay=0.01).aresolve_messages()
        ctx.reply(f"{slow[0]}, then {fast[0]}")

    started = time.monotonic()
    replayed = await asyncio.wait_for(run(store, "none", flow=reordered), timeout=10)

    assert replayed[0] == "slow done, then fast done"
    assert time.monotonic() - started < 2  # not held up: waiting for `fast` would wait forever
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("Replayed out of the recorded order: the answer of WORKER (position 0.0)" in text for text in warnings)
    assert any("FAST" in text or "position 0.1" in text for text in warnings)


TOOL_SECONDS = {"now": 0.0}


@miniagent
async def live_tool(ctx: InteractionContext) -> None:
    await asyncio.sleep(TOOL_SECONDS["now"])
    ctx.reply("tool done")


@miniagent
async def with_a_tool(ctx: InteractionContext) -> None:
    first = worker.inquire(name="slow", delay=0.3)
    await live_tool.inquire().aresolve_messages()
    second = worker.inquire(name="fast", delay=0.01)  # made later, recorded finishing first
    ctx.reply(f"winner: {await first_finished([first, second])}")


async def test_a_live_step_between_replayed_calls_keeps_the_order() -> None:
    store = MemoryStore()
    TOOL_SECONDS["now"] = 0.0
    recorded = await run(store, "once", flow=with_a_tool)
    assert recorded[0] == "winner: fast done"
    TOOL_SECONDS["now"] = 0.5  # the live step is slower now, but the run stays active: the replay waits for it
    try:
        assert await run(store, "none", flow=with_a_tool, order_timeout=2.0) == recorded
    finally:
        TOOL_SECONDS["now"] = 0.0


async def test_calls_nested_in_an_answered_call_are_not_waited_for() -> None:
    store = MemoryStore()

    @miniagent(talks_to_outside_world=True)
    async def app(ctx: InteractionContext) -> None:
        ctx.reply(await worker.inquire(name="inner", delay=0.01).aresolve_messages())

    async def both(mode: str) -> list[str]:
        async with MiniAgents(replay=Replay(store, mode=mode, agents="all")):
            replies = [app.inquire(), worker.inquire(name="outer", delay=0.05)]
            return [str(message) for reply in replies for message in await reply.aresolve_messages()]

    recorded = await both("once")
    started = time.monotonic()
    assert await both("none") == recorded == ["inner done", "outer done"]
    assert time.monotonic() - started < 0.5  # the inner call, answered with APP, is not waited for


async def test_calls_matched_by_occurrence_only_hold_nothing_up() -> None:
    store = MemoryStore()

    def flow(nested: bool) -> MiniAgent:
        @miniagent
        async def helper(ctx: InteractionContext) -> None:
            ctx.reply(worker.inquire(name="a", delay=0.01))

        @miniagent
        async def refactored(ctx: InteractionContext) -> None:
            first = helper.inquire() if nested else worker.inquire(name="a", delay=0.01)
            ctx.reply([first, worker.inquire(name="b", delay=0.05)])

        return refactored

    recorded = await run(store, "once", flow=flow(nested=False))
    started = time.monotonic()
    assert (await run(store, "none", flow=flow(nested=True)))[0] == recorded[0]
    assert time.monotonic() - started < 2


def fake_llm(request: RecordedRequest) -> ScriptedReply:
    prompt = str(request.body["messages"][-1]["content"])
    return ScriptedReply(tokens=["answer to", f" {prompt}"], token_delay=0.08 if "slow" in prompt else 0.01)


async def test_non_streamed_llm_answers_keep_their_recorded_order(tmp_path: Any) -> None:
    async with FakeLLMServer(default_reply=fake_llm) as server:
        async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0) as client:
            llm = openai_agent.fork(model="m", async_client=client, stream=False)

            @miniagent
            async def ask_two(ctx: InteractionContext) -> None:
                ctx.reply(f"first: {await first_finished([llm.inquire('a slow one'), llm.inquire('a quick one')])}")

            store = MemoryStore()
            recorded = await run(store, "once", flow=ask_two)
            assert recorded[0] == "first: answer to a quick one"
            for speed in (None, 1.0):
                for _ in range(3):
                    assert await run(store, "none", flow=ask_two, speed=speed) == recorded
