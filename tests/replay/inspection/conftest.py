"""Recorded runs that the inspection tests read: a flow with nested calls, streamed LLM replies reporting token
usage, a failing agent and a long reply; recorded twice into one SQLite store, the second time with other answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay.inspection import RecordedRun, aload_run
from store import SQLiteStore

LONG_ANSWER = "Paper is made from pulp. " * 8 + "The end of a long answer."
"""Longer than a tree line: `miniagents tree` cuts it, `--full` prints it whole."""


@miniagent
async def researcher(ctx: InteractionContext, topic: str, answer: str) -> None:
    llm = stand_in_llm_agent.fork(model="stand-in-1", token_delay=0.002)
    ctx.reply(llm.inquire([f"Research {topic}.", *await ctx.messages.aresolve_messages()], reply=answer))


@miniagent
async def fact_checker(ctx: InteractionContext) -> None:
    await ctx.messages.aresolve_messages()
    raise ValueError("no sources for this claim")


@miniagent
async def orchestrator(ctx: InteractionContext, answer: str) -> None:
    ctx.reply(researcher.inquire(ctx.messages, topic="paper", answer=answer))
    ctx.reply(researcher.inquire("And recycling?", topic="recycling", answer=LONG_ANSWER))
    try:
        await fact_checker.inquire("Check the answers.").aresolve_messages()
    except ValueError:
        ctx.reply("The fact checker failed.")


FIRST_ANSWER = "Paper is pressed from wood pulp."
SECOND_ANSWER = "Paper is pressed from cotton rags."


async def arecord(path: Path, answer: str) -> str:
    """Record one run of the flow into the SQLite store at `path`; return its id."""
    mini_agents = MiniAgents(store=SQLiteStore(path))
    async with mini_agents:
        await orchestrator.inquire("How is paper made?", answer=answer).aresolve_messages()
    assert mini_agents.run_id is not None
    return mini_agents.run_id


@dataclass(frozen=True)
class Recordings:
    """The store with both runs, their ids, and the first run as read by `aload_run`."""

    path: Path
    first_run_id: str
    second_run_id: str
    first: RecordedRun


async def _arecord_both(path: Path) -> Recordings:
    first_run_id = await arecord(path, FIRST_ANSWER)
    second_run_id = await arecord(path, SECOND_ANSWER)
    async with SQLiteStore(path) as store:
        first = await aload_run(store, first_run_id)
    return Recordings(path, first_run_id, second_run_id, first)


@pytest.fixture(scope="session")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Recordings:
    """Both runs, recorded once for every test that reads them (none of them writes to the store)."""
    return asyncio.run(_arecord_both(tmp_path_factory.mktemp("inspection") / "runs.db"))
