"""Replayed answers complete in the recorded order, at any speed: a flow that acts on whichever parallel call
finishes first takes the recorded branch; a flow that waits on a call the recording completed after one it has
not asked for is told so instead of hanging."""

import asyncio
from collections.abc import Sequence
from typing import Any, Optional

import openai
import pytest

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.ext.llm.openai import openai_agent
from miniagents.messages import MessageSequencePromise
from miniagents.testing.fake_llm_server import FakeLLMServer, RecordedRequest, ScriptedReply
from replay import Replay, ReplayDivergenceError, ReplayOrderError
from store import MemoryStore


@miniagent(talks_to_outside_world=True)
async def worker(ctx: InteractionContext, name: str, delay: float) -> None:
    await asyncio.sleep(delay)
    ctx.reply(f"{name} done")  # one message, complete from the start: not streamed


async def first_finished(sequences: Sequence[MessageSequencePromise]) -> str:
    tasks = [asyncio.ensure_future(sequence.aresolve_messages()) for sequence in sequences]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return str(next(iter(done)).result()[0])


@miniagent
async def race(ctx: InteractionContext) -> None:
    slow = worker.inquire(name="slow", delay=0.08)  # asked first, recorded finishing last
    fast = worker.inquire(name="fast", delay=0.01)
    ctx.reply(f"winner: {await first_finished([slow, fast])}")


async def run(store: MemoryStore, mode: str, flow: MiniAgent = race, **replay_options: Any) -> tuple[str, str]:
    replay = Replay(store, mode=mode, **replay_options)
    async with MiniAgents(replay=replay):
        [message] = await flow.inquire().aresolve_messages()
    return str(message), replay.fingerprint


@pytest.mark.parametrize("speed", [None, 0.5, 1.0, 4.0])
async def test_the_call_that_finished_first_when_recorded_finishes_first_when_replayed(speed: Optional[float]) -> None:
    store = MemoryStore()
    recorded = await run(store, "once")
    assert recorded[0] == "winner: fast done"

    for _ in range(5):
        assert await run(store, "none", speed=speed) == recorded


async def test_a_flow_that_waits_on_a_later_call_before_asking_an_earlier_one_is_told_so() -> None:
    store = MemoryStore()
    await run(store, "once")

    @miniagent
    async def reordered(ctx: InteractionContext) -> None:
        # the recording has `fast` finishing before `slow`: this flow waits on `slow` before it asks for `fast`
        slow = await worker.inquire(name="slow", delay=0.08).aresolve_messages()
        fast = await worker.inquire(name="fast", delay=0.01).aresolve_messages()
        ctx.reply(f"{slow[0]}, then {fast[0]}")

    with pytest.raises(ReplayOrderError) as raised:
        await asyncio.wait_for(run(store, "none", flow=reordered, order_timeout=0.3), timeout=10)

    assert isinstance(raised.value, ReplayDivergenceError)
    message = str(raised.value)
    assert "WORKER" in message and "completed before this call in the recording" in message
    assert "has not asked for it" in message


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
