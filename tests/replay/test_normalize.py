"""Replay(normalize=...): volatile inputs (dates, temporary paths) are masked before matching, when recording and
when replaying alike; the recording keeps the original values, and a divergence report shows both."""

import re
from pathlib import Path
from typing import Any

import pytest

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import CallToMatch, Replay, ReplayDivergenceError, aload_tree
from store import MemoryStore, SQLiteStore

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ANSWERS: list[str] = []


def answering(messages: Any) -> str:
    ANSWERS.append(str(messages[-1]))
    return f"answer #{len(ANSWERS)}"


LLM = stand_in_llm_agent.fork(model="m", responder=answering)


def without_dates(call: CallToMatch) -> CallToMatch:
    return call.replace(
        messages=tuple(DATE.sub("<date>", message.text or "") for message in call.messages),
        kwargs={name: "<path>" if name == "workdir" else value for name, value in call.kwargs.items()},
    )


def planner(today: str, workdir: str) -> MiniAgent:
    @miniagent
    async def plan(ctx: InteractionContext) -> None:
        ctx.reply(LLM.inquire(f"Today is {today}. Plan my day.", workdir=workdir))

    return plan


async def run(store: Any, mode: str, today: str, workdir: str, normalize: Any = without_dates) -> list[str]:
    async with MiniAgents(replay=Replay(store, mode=mode, normalize=normalize)):
        return [str(reply) for reply in await planner(today, workdir).inquire().aresolve_messages()]


async def test_a_prompt_with_todays_date_recorded_today_replays_tomorrow(tmp_path: Path) -> None:
    ANSWERS.clear()
    store = SQLiteStore(tmp_path / "plan.db")
    recorded = await run(store, "once", "2026-12-06", "/tmp/run-a1")
    replayed = await run(store, "none", "2026-12-07", "/tmp/run-b2")  # another day, another temporary folder

    assert replayed == recorded == ["answer #1"]
    assert ANSWERS == ["Today is 2026-12-06. Plan my day."]  # the LLM ran once, when recording

    async with store:  # the recording keeps what was really sent
        [run_info] = await store.alist_runs()
        tree = await aload_tree(store, run_info.run_id)
    [llm_call] = [node for node in tree.walk() if node.agent_alias == "STAND_IN_LLM_AGENT"]
    assert str(llm_call.input_messages[0]) == "Today is 2026-12-06. Plan my day."
    assert llm_call.kwargs["workdir"] == "/tmp/run-a1"


async def test_once_on_a_recording_matches_normalized_calls_too() -> None:
    ANSWERS.clear()
    store = MemoryStore()
    await run(store, "once", "2026-12-06", "/tmp/a")
    assert await run(store, "once", "2027-01-01", "/tmp/b") == ["answer #1"]
    assert len(ANSWERS) == 1


async def test_without_normalize_a_new_date_diverges() -> None:
    store = MemoryStore()
    await run(store, "once", "2026-12-06", "/tmp/a", normalize=None)
    with pytest.raises(ReplayDivergenceError):
        await run(store, "none", "2026-12-07", "/tmp/a", normalize=None)


async def test_a_divergence_report_shows_the_normalized_and_the_given_values() -> None:
    store = MemoryStore()
    await run(store, "once", "2026-12-06", "/tmp/a")

    @miniagent
    async def other_plan(ctx: InteractionContext) -> None:
        ctx.reply(LLM.inquire("Today is 2026-12-08. Plan my week.", workdir="/tmp/c"))

    with pytest.raises(ReplayDivergenceError) as raised:
        async with MiniAgents(replay=Replay(store, mode="none", normalize=without_dates)):
            await other_plan.inquire().aresolve_messages()

    report = str(raised.value)
    assert "input message 0: now 'Today is <date>. Plan my week.', recorded 'Today is <date>. Plan my day.'" in report
    assert "now, as given before normalize: input message 0 = 'Today is 2026-12-08. Plan my week.'" in report
    assert "recorded, as given before normalize: input message 0 = 'Today is 2026-12-06. Plan my day.'" in report
    assert "now, as given before normalize: kwarg workdir = '/tmp/c'" in report


async def test_normalize_must_return_a_call() -> None:
    store = MemoryStore()
    await run(store, "once", "2026-12-06", "/tmp/a")

    with pytest.raises(TypeError, match=r"normalize=.*must return the call to match on.*got str"):
        await run(store, "none", "2026-12-06", "/tmp/a", normalize=lambda call: "oops")


def test_replace_refuses_unknown_fields() -> None:
    call = CallToMatch(agent_alias="A", kwargs={}, messages=())
    assert call.replace(agent_alias="B").agent_alias == "B"
    with pytest.raises(TypeError, match=r"unknown field\(s\) prompt; it takes agent_alias, kwargs, messages"):
        call.replace(prompt="x")


async def test_an_openai_prompt_with_a_date_recorded_from_the_api_replays_offline_the_next_day(tmp_path: Path) -> None:
    import openai

    from miniagents.ext.llm.openai import openai_agent
    from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply

    async def plan(mode: str, today: str, base_url: str) -> tuple[list[str], int]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as client:
            llm = openai_agent.fork(model="gpt-test", async_client=client)
            replay = Replay(SQLiteStore(tmp_path / "plan.db"), mode=mode, normalize=without_dates)
            async with MiniAgents(replay=replay):
                replies = await llm.inquire(f"Today is {today}. Plan my day.").aresolve_messages()
            return [str(reply) for reply in replies], replay.replayed_calls

    async with FakeLLMServer() as server:
        server.script(ScriptedReply(tokens=["Walk", " by", " the", " sea."]))
        recorded, _ = await plan("once", "2026-12-06", server.openai_base_url)
        assert len(server.requests) == 1
    # the server is gone: the next day's run is answered from the recording alone
    replayed, replayed_calls = await plan("none", "2026-12-07", "http://127.0.0.1:9/v1")
    assert replayed == recorded == ["Walk by the sea."]
    assert replayed_calls == 1
