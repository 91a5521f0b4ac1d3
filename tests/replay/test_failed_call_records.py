"""A call that fails keeps its record: kwargs, the input messages it received, partial replies and errors."""

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from miniagents import InteractionContext, Message, MessagePromise, MiniAgents, miniagent
from miniagents.events import ErrorDescription, EventKind, PartialReply
from miniagents.ext.llm.openai import openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply, dropped_connection_errors
from replay import CallTreeNode, aload_tree
from store import EventStore, MemoryStore, SQLiteStore


@miniagent
async def bad_input(ctx: InteractionContext, x: int) -> None:
    async for message_promise in ctx.messages:
        ctx.reply(f"got {await message_promise}")


@miniagent
async def critic(ctx: InteractionContext, question: str) -> None:
    async for message_promise in ctx.messages:
        ctx.reply(f"{question} {await message_promise}: fine")


@miniagent
async def deaf(ctx: InteractionContext, y: int) -> None:
    ctx.reply("not listening")


def failing_promise() -> MessagePromise:
    async def tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        yield "par"
        raise ValueError("the input broke")

    return MessagePromise(message_token_streamer=tokens)


async def three_drafts_then_a_break() -> AsyncIterator[str]:
    for index in range(3):
        yield f"draft {index}"
    raise ConnectionError("the drafts stopped coming")


async def arecord(store: EventStore, flow: Any) -> str:
    async with MiniAgents(store=store) as mini_agents:
        with contextlib.suppress(Exception):
            await flow()
    assert mini_agents.run_id is not None
    return mini_agents.run_id


async def aonly_call(store: EventStore, run_id: str) -> tuple[CallTreeNode, str]:
    async with store:
        tree = await aload_tree(store, run_id)
    (node,) = tree.roots
    return node, str(tree)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> EventStore:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "failed.db")


async def test_a_call_whose_input_fails_keeps_its_kwargs_and_the_messages_it_received(store: EventStore) -> None:
    run_id = await arecord(store, lambda: bad_input.inquire(["hello", failing_promise()], x=2).aresolve_messages())

    node, text = await aonly_call(store, run_id)

    assert node.call_key is None  # no whole call node: nothing replay could match on
    assert node.kwargs == {"x": 2}
    assert node.input_messages == (Message(text="hello"),)
    assert node.input_error == ErrorDescription("ValueError", "builtins", "the input broke")
    assert node.error == node.input_error  # the agent read its input and raised what it got
    assert [str(reply) for reply in node.replies] == ["got hello"]
    assert text.splitlines()[0].startswith("BAD_INPUT#1(x=2) ")
    assert text.splitlines()[1:] == ["  < hello", "  > got hello", "  !! ValueError: the input broke"]


async def test_a_critic_whose_input_breaks_keeps_its_question_and_the_three_messages_it_read(
    store: EventStore,
) -> None:
    run_id = await arecord(
        store, lambda: critic.inquire(three_drafts_then_a_break(), question="Good?").aresolve_messages()
    )

    node, text = await aonly_call(store, run_id)

    assert node.kwargs == {"question": "Good?"}
    assert node.input_messages == tuple(Message(text=f"draft {index}") for index in range(3))
    assert node.input_error == ErrorDescription("ConnectionError", "builtins", "the drafts stopped coming")
    assert text.splitlines()[0].startswith("CRITIC#1(question='Good?') ")
    assert text.splitlines()[1:4] == ["  < draft 0", "  < draft 1", "  < draft 2"]
    assert text.splitlines()[-1] == "  !! ConnectionError: the drafts stopped coming"


async def test_an_input_error_the_agent_never_saw_is_shown_apart() -> None:
    store = MemoryStore()
    run_id = await arecord(store, lambda: deaf.inquire(["hello", ValueError("lost")], y=3).aresolve_messages())

    node, text = await aonly_call(store, run_id)

    assert node.error is None
    assert node.input_error == ErrorDescription("ValueError", "builtins", "lost")
    assert (node.kwargs, node.input_messages) == ({"y": 3}, (Message(text="hello"),))
    assert text.splitlines()[1:] == ["  < hello", "  > not listening", "  !! input: ValueError: lost"]


async def test_a_call_cancelled_while_its_input_was_pending_keeps_what_it_had_received() -> None:
    async def first_then_nothing() -> AsyncIterator[str]:
        yield "first"
        await asyncio.Event().wait()

    store = MemoryStore()
    with pytest.raises(RuntimeError, match="enough"):
        async with MiniAgents(store=store) as mini_agents:
            async for reply in bad_input.inquire(first_then_nothing(), x=5):
                assert str(await reply) == "got first"
                raise RuntimeError("enough")

    node, text = await aonly_call(store, mini_agents.run_id or "")

    assert node.finished and node.call_key is None
    assert (node.kwargs, node.input_messages) == ({"x": 5}, (Message(text="first"),))
    assert node.input_error is not None and node.input_error.type_name == "CancelledError"
    assert text.splitlines()[0].startswith("BAD_INPUT#1(x=5) ")


async def test_a_call_whose_agent_raises_keeps_its_kwargs_and_inputs_and_its_call_key() -> None:
    @miniagent
    async def raiser(ctx: InteractionContext, z: str) -> None:
        await ctx.messages
        raise KeyError("gone")

    store = MemoryStore()
    run_id = await arecord(store, lambda: raiser.inquire(["a", "b"], z="q").aresolve_messages())

    node, text = await aonly_call(store, run_id)

    assert node.call_key is not None and node.input_error is None
    assert (node.kwargs, node.input_messages) == ({"z": "q"}, (Message(text="a"), Message(text="b")))
    assert node.error == ErrorDescription("KeyError", "builtins", "'gone'", {"args": ["gone"]})
    assert text.splitlines()[1:] == ["  < a", "  < b", "  !! KeyError: 'gone'"]


async def test_the_record_of_a_failed_input_is_verified_and_kept_by_gc(tmp_path: Path) -> None:
    path = tmp_path / "kept.db"
    run_id = await arecord(
        SQLiteStore(path), lambda: bad_input.inquire(["kept", ValueError("x")], x=1).aresolve_messages()
    )
    async with SQLiteStore(path) as store:
        [finished] = await store.aget_events(run_id, kinds=[EventKind.CALL_FINISHED])
        assert (await store.averify()).ok
        assert await store.agc() == 0
        node, _ = await aonly_call(store, run_id)
    assert node.input_messages == (Message(text="kept"),)
    assert finished.data is not None
    partial_node_key = finished.data["partial_call_node"]

    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DELETE FROM objects WHERE hash = ?", (bytes.fromhex(partial_node_key),))
    async with SQLiteStore(path) as store:
        report = await store.averify()
    # named by the call_finished event, and by the message event that brought it
    assert {(problem.kind, problem.hash_key) for problem in report.problems} == {("missing_object", partial_node_key)}
    assert finished.seq in {problem.seq for problem in report.problems}


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as fake_server:
        yield fake_server


async def test_a_broken_llm_stream_is_shown_as_a_partial_reply(server: FakeLLMServer, tmp_path: Path) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], drop_after=2))
    store = SQLiteStore(tmp_path / "llm.db")
    async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0) as client:
        agent = openai_agent.fork(model="test-model", async_client=client)
        run_id = await arecord(store, lambda: agent.inquire("Tell me more", stream=True, temperature=0).aresolve())

    node, text = await aonly_call(store, run_id)

    assert node.call_key is not None  # the input was whole: the call keeps its call key
    assert node.kwargs["model"] == "test-model" and node.kwargs["temperature"] == 0
    assert node.input_messages == (Message(text="Tell me more"),)
    assert node.replies == ()
    (partial,) = node.partial_replies
    assert isinstance(partial, PartialReply)
    assert (partial.message_class, partial.chunks, partial.text) == ("OpenAIMessage", ("a", "b"), "ab")
    assert partial.metadata["model"] == "test-model" and partial.metadata["role"] == "assistant"
    assert len(partial.offsets) == 2
    error_names = {error.__qualname__ for error in dropped_connection_errors(openai)}
    assert partial.error.type_name in error_names
    lines = text.splitlines()
    assert lines[0].startswith("OPENAI_AGENT#1(") and "model='test-model'" in lines[0]
    assert lines[1] == "  < Tell me more"
    assert lines[2] == f"  > ab !! {partial.error}"
