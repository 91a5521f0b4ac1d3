"""Interaction trees loaded from a store."""

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.events import ErrorDescription
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import aload_tree
from store import MemoryStore, SQLiteStore, StoreIntegrityError


@miniagent
async def researcher(ctx: InteractionContext, topic: str) -> None:
    llm = stand_in_llm_agent.fork(reply=f"notes on {topic}", model="m")
    ctx.reply(llm.inquire(ctx.messages, temperature=0))


@miniagent
async def failing_agent(ctx: InteractionContext) -> None:
    ctx.reply("partial")
    raise LookupError("nothing found")


@miniagent
async def lead(ctx: InteractionContext) -> None:
    ctx.reply([researcher.inquire("plan", topic=topic) for topic in ("ink", "paper")])
    ctx.reply(failing_agent.inquire())


async def record() -> tuple[MemoryStore, str]:
    store = MemoryStore()
    async with MiniAgents(store=store) as mini_agents:
        with pytest.raises(LookupError):
            await lead.inquire("start").aresolve_messages()
    assert mini_agents.run_id is not None
    return store, mini_agents.run_id


async def test_the_tree_shows_who_called_whom_with_inputs_kwargs_replies_and_errors() -> None:
    store, run_id = await record()
    async with store:
        tree = await aload_tree(store, run_id)
    (root,) = tree.roots
    assert (root.agent_alias, root.call_id, root.parent_call_id) == ("LEAD", 1, None)
    assert root.input_messages == (Message(text="start"),)
    assert [child.agent_alias for child in root.children] == ["RESEARCHER", "RESEARCHER", "FAILING_AGENT"]
    ink, paper, failing = root.children
    assert ink.kwargs == {"topic": "ink"} and paper.kwargs == {"topic": "paper"}
    assert all(child.parent_call_id == 1 for child in root.children)
    (ink_llm,) = ink.children
    assert ink_llm.agent_alias == "STAND_IN_LLM_AGENT"
    assert ink_llm.kwargs == {"model": "m", "reply": "notes on ink", "temperature": 0}
    assert [str(reply) for reply in ink_llm.replies] == ["notes on ink"]
    assert [str(reply) for reply in ink.replies] == ["notes on ink"]
    assert failing.error == ErrorDescription("LookupError", "builtins", "nothing found")
    assert [str(reply) for reply in failing.replies] == ["partial"]
    assert root.error == ErrorDescription("LookupError", "builtins", "nothing found")
    assert [str(reply) for reply in root.replies] == ["notes on ink", "notes on paper", "partial"]
    assert all(node.finished and node.duration is not None and node.duration >= 0 for node in tree.walk())
    assert len(list(tree.walk())) == len(tree.calls) == 6


async def test_the_tree_renders_as_indented_text() -> None:
    store, run_id = await record()
    async with store:
        text = str(await aload_tree(store, run_id))
    lines = text.splitlines()
    assert lines[0].startswith("LEAD#1() ")
    assert lines[1] == "  < start"
    assert any(line.startswith("  RESEARCHER#2(topic='ink') ") for line in lines)
    assert any(line.startswith("    STAND_IN_LLM_AGENT#") and "reply='notes on ink'" in line for line in lines)
    assert "    !! LookupError: nothing found" in lines


async def test_a_node_restreams_its_replies_without_running_anything() -> None:
    store, run_id = await record()
    async with store:
        tree = await aload_tree(store, run_id)
        ink_llm = tree.roots[0].children[0].children[0]
        async with MiniAgents():
            sequence = await ink_llm.areply_sequence()
            (promise,) = [promise async for promise in sequence]
            assert [token async for token in promise] == ["notes", " on", " ink"]
            failing = tree.roots[0].children[2]
            with pytest.raises(LookupError, match="nothing found"):
                await (await failing.areply_sequence()).aresolve_messages()


async def test_an_unfinished_call_is_marked() -> None:
    store = MemoryStore()
    node: Any = None
    async with MiniAgents(store=store) as mini_agents:
        pass
    async with store:
        tree = await aload_tree(store, mini_agents.run_id or "")
        assert tree.roots == [] and node is None


async def test_the_tree_reads_and_checks_every_object_at_once_and_rebuilds_them_when_used(tmp_path: Path) -> None:
    path = tmp_path / "tree.db"
    async with MiniAgents(store=SQLiteStore(path)) as mini_agents:
        with pytest.raises(LookupError):
            await lead.inquire("start").aresolve_messages()
    run_id = mini_agents.run_id or ""
    async with SQLiteStore(path) as store:
        tree = await aload_tree(store, run_id)
    # the store is closed: what the tree shows was read with it
    assert str(tree).splitlines()[1] == "  < start"
    ink_llm = tree.roots[0].children[0].children[0]
    assert ink_llm.kwargs == {"model": "m", "reply": "notes on ink", "temperature": 0}
    assert ink_llm.kwargs is ink_llm.kwargs  # rebuilt once
    assert [str(reply) for reply in ink_llm.replies] == ["notes on ink"]
    assert ink_llm.input_messages == (Message(text="plan"),)

    prompt = Message(text="plan")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE objects SET body = ? WHERE hash = ?",
            (prompt.canonical_bytes.replace(b"plan", b"PLAN"), bytes.fromhex(prompt.hash_key)),
        )
    async with SQLiteStore(path) as store:
        with pytest.raises(StoreIntegrityError, match=prompt.hash_key):
            await aload_tree(store, run_id)
