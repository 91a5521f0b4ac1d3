"""Agents: parallelism, definition rules, forks, replies and errors, the call tree, events and interception."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Optional, Union

import pytest

from miniagents import (
    AgentCallNode,
    AgentDefinitionError,
    AgentReplyNode,
    EventKind,
    EventSinkError,
    FrozenValueError,
    InteractionContext,
    InterceptedCall,
    ListEventSink,
    Message,
    MiniAgent,
    MiniAgents,
    current_agent_call,
    miniagent,
)
from miniagents.events import Event
from miniagents.promising.errors import AppenderClosedError
from miniagents.promising.sentinels import DEFAULT, Sentinel

START_ASAP_MODES = [False, True, DEFAULT]


def expected_order(start_asap: Union[bool, Sentinel]) -> list[str]:
    if start_asap is False:
        return ["agent1 - start", "agent1 - end", "agent2 - start", "agent2 - end"]
    return ["agent1 - start", "agent2 - start", "agent1 - end", "agent2 - end"]


def recording_agents(events: list[str]) -> tuple[MiniAgent, MiniAgent]:
    @miniagent
    async def agent1(_: InteractionContext) -> None:
        events.append("agent1 - start")
        await asyncio.sleep(0.05)
        events.append("agent1 - end")

    @miniagent
    async def agent2(_: InteractionContext) -> None:
        events.append("agent2 - start")
        await asyncio.sleep(0.05)
        events.append("agent2 - end")

    return agent1, agent2


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_agents_run_in_parallel(start_asap: Union[bool, Sentinel]) -> None:
    events: list[str] = []
    agent1, agent2 = recording_agents(events)
    async with MiniAgents():
        replies1 = agent1.inquire(start_asap=start_asap)
        replies2 = agent2.inquire(start_asap=start_asap)
        if start_asap is False:
            await replies1.aresolve_messages()
            await replies2.aresolve_messages()
    assert events == expected_order(start_asap)


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_sub_agents_run_in_parallel(start_asap: Union[bool, Sentinel]) -> None:
    events: list[str] = []
    agent1, agent2 = recording_agents(events)

    @miniagent
    async def aggregation_agent(ctx: InteractionContext) -> None:
        ctx.reply([agent.inquire(start_asap=start_asap) for agent in (agent1, agent2)])

    async with MiniAgents():
        replies = aggregation_agent.inquire(start_asap=start_asap)
        if start_asap is False:
            await replies.aresolve_messages()
    assert events == expected_order(start_asap)


async def test_echo_with_kwargs_and_incremental_input() -> None:
    @miniagent
    async def repeater(ctx: InteractionContext, times: int, suffix: str = "") -> None:
        async for message_promise in ctx.messages:
            text = str(await message_promise)
            ctx.reply(f"{text * times}{suffix}")

    async with MiniAgents():
        call = repeater.initiate_inquiry(times=2)
        call.send_message("ab").send_message(["c"])
        assert await call.reply_sequence().aresolve_messages() == (Message(text="abab"), Message(text="cc"))
        forked = repeater.fork(suffix="!")
        assert await forked.inquire("x", times=3).aresolve_messages() == (Message(text="xxx!"),)


def test_alias_and_description_rules() -> None:
    @miniagent
    async def my_agent(_: InteractionContext) -> None:
        """I am
        {AGENT_ALIAS}, with {braces} kept."""

    assert my_agent.alias == "MY_AGENT"
    assert my_agent.description == "I am MY_AGENT, with {braces} kept."
    assert my_agent.__name__ == "MY_AGENT"

    @miniagent(alias="custom", description="Alias: {AGENT_ALIAS}", interaction_metadata={"team": "a"})
    async def other(_: InteractionContext) -> None:
        pass

    assert (other.alias, other.description) == ("custom", "Alias: custom")

    @miniagent(uppercase_func_name=False, normalize_spaces_in_docstring=False)
    async def lower(_: InteractionContext) -> None:
        """Two  spaces."""

    assert (lower.alias, lower.description) == ("lower", "Two  spaces.")

    fork = other.fork(alias="fork", interaction_metadata={"role": "x"}, model="m")
    assert fork.alias == "fork"
    assert fork.description == "Alias: custom"
    assert fork.interaction_metadata == other.interaction_metadata.model_copy(update={}).__class__(team="a", role="x")
    assert fork.partial_kwargs == {"model": "m"}
    assert other.fork().alias == "custom"
    assert miniagent(my_agent.func, alias="direct").alias == "direct"


def test_non_async_agent_functions_are_refused() -> None:
    def not_async(ctx: InteractionContext) -> None:
        pass

    with pytest.raises(AgentDefinitionError, match="'not_async' must be an `async def` function"):
        miniagent(not_async)

    @miniagent
    async def real(_: InteractionContext) -> None:
        pass

    with pytest.raises(AgentDefinitionError, match=r"already an agent; use `real\.fork"):
        MiniAgent(real)  # type: ignore[arg-type]

    class CallableAgent:
        async def __call__(self, ctx: InteractionContext) -> None:
            ctx.reply("from an object")

    assert miniagent(CallableAgent(), alias="obj").alias == "obj"


async def test_talks_to_outside_world_survives_forks() -> None:
    @miniagent(talks_to_outside_world=True)
    async def outside(_: InteractionContext) -> None:
        pass

    assert outside.talks_to_outside_world
    assert outside.fork(model="x").talks_to_outside_world


async def test_an_agent_error_reaches_the_consumer_after_the_replies_before_it() -> None:
    @miniagent
    async def failing(ctx: InteractionContext) -> None:
        ctx.reply("first")
        await asyncio.sleep(0)
        raise ValueError("agent broke")

    async with MiniAgents():
        received = []
        with pytest.raises(ValueError, match="agent broke"):
            async for promise in failing.inquire():
                received.append(await promise)
    assert received == [Message(text="first")]


async def test_finish_early_ends_the_replies_and_later_replies_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    done = asyncio.Event()

    @miniagent
    async def early(ctx: InteractionContext) -> None:
        ctx.reply("only this")
        ctx.finish_early()
        try:
            ctx.reply("too late")
        finally:
            done.set()

    async with MiniAgents():
        assert await early.inquire().aresolve_messages() == (Message(text="only this"),)
        await done.wait()
    assert "EARLY (call 1) failed after its reply sequence was closed: AppenderClosedError" in caplog.text
    assert issubclass(AppenderClosedError, Exception)


async def test_unrecordable_call_kwargs_are_refused_naming_the_agent() -> None:
    @miniagent
    async def takes_client(_: InteractionContext, client: Any = None) -> None:
        pass

    async with MiniAgents():
        with pytest.raises(FrozenValueError, match=r"agent TAKES_CLIENT .* Bind such values with `takes_client.fork"):
            takes_client.inquire(client=object())
        assert await takes_client.fork(client=object()).inquire().aresolve_messages() == ()


async def test_an_input_left_open_is_closed_when_the_parent_finishes() -> None:
    @miniagent
    async def reader(ctx: InteractionContext) -> None:
        ctx.reply(await ctx.messages.aresolve_messages())

    @miniagent
    async def forgetful(ctx: InteractionContext) -> None:
        call = reader.initiate_inquiry()
        call.send_message("sent before the parent ended")
        ctx.reply(call.reply_sequence_promise)  # never calls reply_sequence()

    async with MiniAgents():
        replies = await asyncio.wait_for(forgetful.inquire().aresolve_messages(), timeout=2)
        assert replies == (Message(text="sent before the parent ended"),)
        top_level = reader.initiate_inquiry()
        top_level.send_message("top")
        # the context closes what the caller left open instead of waiting forever


async def test_every_call_knows_its_parent() -> None:
    seen: dict[str, tuple[int, Optional[int]]] = {}

    @miniagent
    async def child(ctx: InteractionContext) -> None:
        call = current_agent_call()
        assert call is not None
        seen["child"] = (call.call_id, call.parent_call_id)

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        call = current_agent_call()
        assert call is not None and ctx.agent_call is call
        seen["parent"] = (call.call_id, call.parent_call_id)
        ctx.reply(child.inquire())

    async with MiniAgents():
        assert current_agent_call() is None
        await parent.inquire().aresolve_messages()
    assert seen == {"parent": (1, None), "child": (2, 1)}


def kinds(events: list[Event]) -> list[str]:
    return [str(event.kind) for event in events]


async def test_events_of_a_run_in_order() -> None:
    @miniagent
    async def echo(ctx: InteractionContext, style: str = "plain") -> None:
        ctx.reply(ctx.messages)

    sink = ListEventSink()
    async with MiniAgents(store=sink, run_metadata={"purpose": "test"}) as mini_agents:
        replies = await echo.inquire("hi", style="loud").aresolve_messages()
    assert replies == (Message(text="hi"),)
    assert sink.runs_started == sink.runs_finished == [mini_agents.run_id]
    assert kinds(sink.events) == [
        "run_started",
        "call_started",
        "message",  # "hi"
        "message",  # the AgentCallNode
        "message",  # the AgentReplyNode
        "call_finished",
        "run_finished",
    ]
    started, call_started, hi, call_node_event, reply_node_event, finished, run_finished = sink.events
    assert started.data is not None and started.data["metadata"] == {"purpose": "test"}
    assert call_started.call_id == 1 and call_started.parent_call_id is None
    assert call_started.data == {"agent_alias": "ECHO", "position": "0"}
    call_node = call_node_event.obj
    assert isinstance(call_node, AgentCallNode)
    assert call_node.messages == (Message(text="hi"),)
    assert call_node.style == "loud"  # type: ignore[attr-defined]
    assert hi.hash_key == Message(text="hi").hash_key
    # "hi" was made outside any agent: its event names who made it, not ECHO, whose input resolved it
    assert hi.call_id is None and hi.parent_call_id is None
    assert call_node_event.call_id == 1 and reply_node_event.call_id == 1
    reply_node = reply_node_event.obj
    assert isinstance(reply_node, AgentReplyNode) and reply_node.agent_call is call_node
    assert finished.hash_key == call_node.hash_key
    assert finished.data == {
        "agent_alias": "ECHO",
        "call_node": call_node.hash_key,
        "reply_node": reply_node.hash_key,
        "occurrence": 0,
        "position": "0",
        "replies": [{"hash": Message(text="hi").hash_key}],
        "error": None,
        "replayed": False,
    }
    assert run_finished.data == {"status": "ok", "error": None}
    assert [event.t for event in sink.events] == sorted(event.t for event in sink.events)


async def test_streamed_messages_record_their_chunks_and_broken_streams_their_position() -> None:
    async def good_tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        for token in ("Hel", "lo", "!"):
            yield token

    async def broken_tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        yield "par"
        yield "tial"
        raise ConnectionError("dropped")

    @miniagent
    async def streamer(ctx: InteractionContext) -> None:
        ctx.reply(Message.promise(message_token_streamer=good_tokens, model="m"))
        ctx.reply(Message.promise(message_token_streamer=broken_tokens, model="m"))
        ctx.reply("after")

    sink = ListEventSink()
    async with MiniAgents(store=sink):
        promises = [promise async for promise in streamer.inquire()]
        assert await promises[0] == Message(text="Hello!", model="m")
        with pytest.raises(ConnectionError):
            await promises[1]
    (stream,) = sink.of_kind(EventKind.STREAM)
    assert stream.hash_key == Message(text="Hello!", model="m").hash_key
    assert stream.call_id == 1
    assert stream.data is not None and stream.data["chunks"] == [3, 2, 1]
    assert len(stream.data["offsets"]) == 3
    (error,) = sink.of_kind(EventKind.ERROR)
    assert error.call_id == 1
    assert error.data is not None
    assert error.data["where"] == "message" and error.data["position"] == 2
    assert error.data["chunks"] == ["par", "tial"]
    assert error.data["error"] == {"type": "ConnectionError", "module": "builtins", "text": "dropped"}
    (finished,) = sink.of_kind(EventKind.CALL_FINISHED)
    assert finished.data is not None and finished.data["reply_node"] is None  # no reply node: one reply failed
    assert finished.data is not None
    replies = finished.data["replies"]
    assert replies[0]["hash"] == Message(text="Hello!", model="m").hash_key
    assert replies[0]["chunks"] == [3, 2, 1] and len(replies[0]["offsets"]) == 3
    assert replies[1]["failed"]["chunks"] == ["par", "tial"]
    assert replies[1]["failed"]["class_"] == "Message"
    assert replies[1]["failed"]["metadata"] == {"class_": "Frozen", "model": "m"}
    assert replies[2] == {"hash": Message(text="after").hash_key}


async def test_an_agent_error_is_recorded_on_the_call() -> None:
    @miniagent
    async def failing(ctx: InteractionContext) -> None:
        ctx.reply("one")
        raise KeyError("missing")

    sink = ListEventSink()
    async with MiniAgents(store=sink):
        with pytest.raises(KeyError):
            await failing.inquire().aresolve_messages()
    (error,) = sink.of_kind(EventKind.ERROR)
    assert error.data == {
        "where": "agent",
        "position": None,
        "error": {"type": "KeyError", "module": "builtins", "text": "'missing'", "attributes": {"args": ["missing"]}},
    }
    (finished,) = sink.of_kind(EventKind.CALL_FINISHED)
    assert finished.data is not None
    assert finished.data["replies"] == [{"hash": Message(text="one").hash_key}]
    assert finished.data["error"] == {
        "type": "KeyError",
        "module": "builtins",
        "text": "'missing'",
        "attributes": {"args": ["missing"]},  # a KeyError's text quotes its argument: kept to rebuild it
    }


async def test_identical_calls_get_increasing_occurrences() -> None:
    @miniagent
    async def echo(ctx: InteractionContext) -> None:
        ctx.reply(ctx.messages)

    sink = ListEventSink()
    async with MiniAgents(store=sink):
        for _ in range(3):
            await echo.inquire("same").aresolve_messages()
        await echo.inquire("other").aresolve_messages()
    occurrences = [event.data["occurrence"] for event in sink.of_kind(EventKind.CALL_FINISHED) if event.data]
    assert occurrences == [0, 1, 2, 0]


async def test_a_failing_body_marks_the_run_failed() -> None:
    sink = ListEventSink()
    with pytest.raises(RuntimeError, match="body failed"):
        async with MiniAgents(store=sink):
            raise RuntimeError("body failed")
    (finished,) = sink.of_kind(EventKind.RUN_FINISHED)
    assert finished.data == {
        "status": "failed",
        "error": {"type": "RuntimeError", "module": "builtins", "text": "body failed"},
    }


class BrokenSink(ListEventSink):
    async def afinish_run(self, run_id: str) -> None:
        raise OSError("disk full")


async def test_a_failing_sink_is_reported_when_the_context_exits() -> None:
    with pytest.raises(EventSinkError, match=r"Recording run [0-9a-f]{32} failed: OSError: disk full"):
        async with MiniAgents(store=BrokenSink()):
            pass


def test_store_and_replay_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="`store` must be an event sink"):
        MiniAgents(store="agents.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`replay` must be a call interceptor"):
        MiniAgents(replay=object())  # type: ignore[arg-type]


class ScriptedInterceptor:
    def __init__(self) -> None:
        self.calls: list[InterceptedCall] = []
        self.started = False
        self.finished_with: Optional[BaseException] = None
        self.sink = ListEventSink()

    async def astart(self, mini_agents: MiniAgents) -> None:
        self.started = True
        mini_agents.add_event_sink(self.sink)

    def intercepts(self, agent: MiniAgent) -> bool:
        return agent.talks_to_outside_world

    async def aanswer(self, call: InterceptedCall) -> Any:
        self.calls.append(call)
        if call.input_messages[0].text == "live":
            return None

        async def answer() -> AsyncIterator[Any]:
            yield "recorded answer"
            raise ValueError("recorded error")

        return answer()

    async def afinish(self, mini_agents: MiniAgents, error: Optional[BaseException]) -> None:
        self.finished_with = error


async def test_an_interceptor_answers_calls_instead_of_the_agent() -> None:
    ran: list[str] = []

    @miniagent(talks_to_outside_world=True)
    async def llm(ctx: InteractionContext, model: str = "x") -> None:
        ran.append(str((await ctx.messages.aresolve_messages())[0]))
        ctx.reply("live answer")

    @miniagent
    async def orchestrator(ctx: InteractionContext) -> None:
        ran.append("orchestrator")
        ctx.reply(llm.inquire(ctx.messages, model="m1"))

    interceptor = ScriptedInterceptor()
    async with MiniAgents(replay=interceptor):
        received = []
        with pytest.raises(ValueError, match="recorded error"):
            async for promise in orchestrator.inquire("question"):
                received.append(await promise)
        assert received == [Message(text="recorded answer")]
        assert await llm.inquire("live").aresolve_messages() == (Message(text="live answer"),)
    assert ran == ["orchestrator", "live"]
    assert interceptor.started and interceptor.finished_with is None
    first = interceptor.calls[0]
    assert first.agent is llm and first.occurrence == 0 and first.parent_call_id == 1
    assert first.call_node.model == "m1"  # type: ignore[attr-defined]
    assert first.call_node.messages == (Message(text="question"),)
    replayed = [event.data["replayed"] for event in interceptor.sink.of_kind(EventKind.CALL_FINISHED) if event.data]
    assert sorted(replayed) == [False, False, True]


async def test_nothing_is_built_for_observers_when_nobody_observes() -> None:
    built: list[str] = []

    class CountingCallNode(AgentCallNode):
        pass

    @miniagent
    async def echo(ctx: InteractionContext) -> None:
        ctx.reply(ctx.messages)

    async with MiniAgents() as mini_agents:
        assert not mini_agents._is_observed
        await echo.inquire("x").aresolve_messages()
        call = echo.initiate_inquiry()
        call.reply_sequence()
        await call.reply_sequence_promise.aresolve_messages()
        if call.call_node is not None:
            built.append("call node")
    assert built == []
