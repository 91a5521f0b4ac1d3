"""A divergence never passes silently: leaving the context raises it even when the agents swallowed it or nobody
awaited the diverged call, and each divergence is logged once, not once per agent it passed through."""

import logging
from pathlib import Path

import pytest

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import Replay, ReplayDivergenceError
from store import SQLiteStore

LLM = stand_in_llm_agent.fork(model="docs-writer")


def fire_and_forget_flow(topics: list[str]) -> MiniAgent:
    """As documentation agents are often written: each writer is started, and nobody awaits its reply."""

    @miniagent
    async def writer(ctx: InteractionContext, topic: str) -> None:
        ctx.reply(LLM.inquire(f"Write the docs of {topic}."))

    @miniagent
    async def section(ctx: InteractionContext, topic: str) -> None:
        ctx.reply(writer.inquire(topic=topic))

    @miniagent
    async def docs(ctx: InteractionContext) -> None:
        for topic in topics:
            section.inquire(topic=topic)  # fire and forget

    return docs


async def record(path: Path, flow: MiniAgent) -> None:
    async with MiniAgents(replay=Replay(SQLiteStore(path), mode="once")):
        flow.inquire()


async def test_a_divergence_nobody_awaited_fails_the_context(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "docs.db"
    await record(path, fire_and_forget_flow(["promises", "agents"]))

    caplog.set_level(logging.DEBUG)
    replay = Replay(SQLiteStore(path), mode="none")
    with pytest.raises(ReplayDivergenceError) as raised:
        async with MiniAgents(replay=replay):
            fire_and_forget_flow(["promises", "messages"]).inquire()

    assert raised.value.agent_alias == "STAND_IN_LLM_AGENT"
    assert "Write the docs of messages." in str(raised.value)
    assert len(replay.divergences) == 1
    assert raised.value is replay.divergences[0]
    logged = [record for record in caplog.records if record.exc_info and record.exc_info[1] is raised.value]
    assert len(logged) == 1  # the LLM agent's failure; writer and section pass it on without logging it again
    assert sum("Write the docs of messages." in record.getMessage() for record in caplog.records) <= 1


async def test_a_divergence_the_agents_swallowed_fails_the_context_and_says_how_many_more(tmp_path: Path) -> None:
    path = tmp_path / "docs.db"
    await record(path, fire_and_forget_flow(["promises"]))
    fallbacks: list[str] = []

    @miniagent
    async def careful(ctx: InteractionContext) -> None:
        for topic in ("agents", "stores", "promises"):
            try:
                ctx.reply(await LLM.inquire(f"Write the docs of {topic}.").aresolve_messages())
            except ReplayDivergenceError:
                fallbacks.append(topic)

    with pytest.raises(ReplayDivergenceError) as raised:
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            await careful.inquire().aresolve_messages()

    assert fallbacks == ["agents", "stores"]  # the agents ran on; the context still fails
    assert "Write the docs of agents." in str(raised.value)
    assert "1 more call diverged in this run" in str(raised.value)
    assert "Write the docs of stores." not in str(raised.value).split("1 more call diverged", 1)[0]


async def test_an_error_of_the_body_is_raised_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "docs.db"
    await record(path, fire_and_forget_flow(["promises"]))

    with pytest.raises(KeyError):
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            fire_and_forget_flow(["agents"]).inquire()
            raise KeyError("the body's own error")


async def test_a_faithful_replay_raises_nothing(tmp_path: Path) -> None:
    path = tmp_path / "docs.db"
    await record(path, fire_and_forget_flow(["promises", "agents"]))

    replay = Replay(SQLiteStore(path), mode="none")
    async with MiniAgents(replay=replay):
        fire_and_forget_flow(["promises", "agents"]).inquire()
    assert replay.divergences == [] and replay.replayed_calls == 2
