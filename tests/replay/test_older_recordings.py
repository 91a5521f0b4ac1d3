"""Recordings made before keyword arguments were kept apart from the call node's fields still replay: a call
without kwargs has the same key as then, and one with kwargs is looked up under the key its older shape had."""

import shutil
from pathlib import Path

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import Replay
from store import SQLiteStore

RECORDING = Path(__file__).parent / "data" / "recorded_before_kwargs_were_kept_apart.db"
LLM = stand_in_llm_agent.fork(model="stand-in")  # a bound kwarg, recorded as a field of the node then


@miniagent
async def app(ctx: InteractionContext) -> None:
    ctx.reply(LLM.inquire("no kwargs at call"))
    ctx.reply(stand_in_llm_agent.inquire("plain"))


async def test_a_recording_of_the_earlier_call_node_shape_replays_offline(tmp_path: Path) -> None:
    recording = tmp_path / "older.db"
    shutil.copyfile(RECORDING, recording)
    replay = Replay(SQLiteStore(recording), mode="none")

    async with MiniAgents(replay=replay):
        replies = [str(message) for message in await app.inquire().aresolve_messages()]

    assert replay.replayed_calls == 2 and replay.divergences == []
    assert "“no kwargs at call”" in replies[0] and "“plain”" in replies[1]
