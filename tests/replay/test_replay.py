"""Replay: record modes, faithful streams and errors, occurrences, divergence errors, fingerprints."""

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from miniagents import InteractionContext, Message, MiniAgent, MiniAgents, miniagent
from miniagents.events import Event, EventKind
from miniagents.ext.llm.stand_in import ScriptedResponses, stand_in_llm_agent
from replay import (
    NoRecordingError,
    RecordedError,
    RecordMode,
    Replay,
    ReplayDivergenceError,
    afingerprint,
)
from store import MemoryStore, SQLiteStore
from store.base import EventStore


class Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, messages: Sequence[Message]) -> str:
        self.calls.append(str(messages[-1]))
        return f"answer {len(self.calls)} to {messages[-1]}"


def make_flow(llm: MiniAgent) -> tuple[MiniAgent, list[str]]:
    orchestration_runs: list[str] = []

    @miniagent
    async def orchestrator(ctx: InteractionContext) -> None:
        orchestration_runs.append("ran")
        question = str((await ctx.messages.aresolve_messages())[0])
        first = llm.inquire(question, model="m-1")
        second = llm.inquire(question, model="m-1")  # identical call: must get its own recorded answer
        ctx.reply([first, second, llm.inquire(first, model="m-2")])

    return orchestrator, orchestration_runs


async def run_flow(orchestrator: MiniAgent, replay: Replay, question: str = "why?") -> list[str]:
    async with MiniAgents(replay=replay):
        return [str(message) for message in await orchestrator.inquire(question).aresolve_messages()]


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    def make() -> EventStore:
        if request.param == "memory":
            return shared_memory
        return SQLiteStore(tmp_path / "recording.db")

    shared_memory = MemoryStore()
    return make


async def test_record_once_then_replay_offline_with_the_same_hashes(store_factory: Any) -> None:
    counter = Counter()
    llm = stand_in_llm_agent.fork(responder=counter)
    orchestrator, orchestration_runs = make_flow(llm)

    recorded_replay = Replay(store_factory(), mode="once")
    recorded = await run_flow(orchestrator, recorded_replay)
    assert recorded == ["answer 1 to why?", "answer 2 to why?", "answer 3 to answer 1 to why?"]
    assert recorded_replay.recording and not recorded_replay.replaying
    assert len(counter.calls) == 3

    replayed_replay = Replay(store_factory(), mode="none")
    replayed = await run_flow(orchestrator, replayed_replay)
    assert replayed == recorded
    assert len(counter.calls) == 3  # the LLM did not run again
    assert orchestration_runs == ["ran", "ran"]  # the orchestration did
    assert replayed_replay.replayed_calls == 3
    assert replayed_replay.fingerprint == recorded_replay.fingerprint
    store = store_factory()
    async with store:
        (run,) = await store.alist_runs()
        assert await afingerprint(store, run.run_id) == recorded_replay.fingerprint


async def test_replayed_streams_have_the_recorded_chunks_and_metadata() -> None:
    store = MemoryStore()
    llm = stand_in_llm_agent.fork(reply="one two three", model="m")

    async def tokens_and_message() -> tuple[list[str], Message]:
        async with MiniAgents(replay=Replay(store)):
            (promise,) = [promise async for promise in llm.inquire("q")]
            return [token async for token in promise], await promise

    recorded_tokens, recorded_message = await tokens_and_message()
    replayed_tokens, replayed_message = await tokens_and_message()
    assert recorded_tokens == replayed_tokens == ["one", " two", " three"]
    assert replayed_message == recorded_message
    assert replayed_message.hash_key == recorded_message.hash_key
    assert type(replayed_message).__name__ == "StandInLLMMessage"
    assert replayed_message.usage.completion_tokens == 3  # type: ignore[attr-defined]


async def test_errors_are_replayed_at_the_same_place() -> None:
    broken_after_two = {"fail": True}

    async def tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        yield "par"
        yield "tial"
        if broken_after_two["fail"]:
            raise ConnectionResetError("peer went away")

    class VendorError(Exception):
        pass

    @miniagent(talks_to_outside_world=True)
    async def flaky_llm(ctx: InteractionContext) -> None:
        ctx.reply("complete first")
        ctx.reply(Message.promise(message_token_streamer=tokens, model="x"))
        raise VendorError("quota exceeded")

    async def observe() -> list[Any]:
        seen: list[Any] = []
        async with MiniAgents(replay=Replay(store)):
            try:
                async for promise in flaky_llm.inquire("go"):
                    try:
                        seen.append([token async for token in promise])
                    except Exception as exc:
                        seen.append(("stream broke", type(exc).__name__, str(exc), [t async for t in _safe(promise)]))
            except Exception as exc:
                seen.append(("sequence broke", type(exc).__name__, str(exc)))
        return seen

    store = MemoryStore()
    recorded = await observe()
    broken_after_two["fail"] = False  # would succeed now: the replay must still fail as recorded
    replayed = await observe()
    assert recorded[0] == replayed[0] == ["complete first"]
    assert recorded[1] == ("stream broke", "ConnectionResetError", "peer went away", ["par", "tial"])
    assert replayed[1] == recorded[1]
    assert recorded[2][0:2] == ("sequence broke", "VendorError")
    assert replayed[2][0:2] == ("sequence broke", "RecordedError")
    assert "VendorError: quota exceeded" in replayed[2][2]
    assert "test_replay" in replayed[2][2]  # the original module is named


async def _safe(promise: Any) -> AsyncIterator[str]:
    iterator = promise.__aiter__()
    while True:
        try:
            yield await iterator.__anext__()
        except StopAsyncIteration:
            return
        except Exception:
            return


async def test_recorded_error_keeps_the_original_type_name() -> None:
    error = RecordedError("VendorError", "vendor.sdk", "quota")
    assert (error.type_name, error.module, error.text) == ("VendorError", "vendor.sdk", "quota")
    assert str(error) == "vendor.sdk.VendorError: quota"


async def test_mode_none_without_a_recording_says_how_to_record(tmp_path: Path) -> None:
    with pytest.raises(NoRecordingError, match=r"holds no recording.*mode='once'.*--record-mode=once"):
        async with MiniAgents(replay=Replay(SQLiteStore(tmp_path / "missing.db"), mode="none")):
            pass


async def test_an_unrecorded_call_in_mode_none_raises_a_divergence_error_naming_what_differs() -> None:
    store = MemoryStore()
    llm = stand_in_llm_agent.fork(reply="recorded", model="gpt-x")
    async with MiniAgents(replay=Replay(store)):
        await llm.inquire(["system prompt", "What is 2+2?"], temperature=0).aresolve_messages()
    async with store:
        events_before = len(await store.aget_events())

    ran: list[str] = []
    live = stand_in_llm_agent.fork(reply="live", model="gpt-x", responder=lambda _: ran.append("x") or "live")
    replay = Replay(store, mode="none")
    with pytest.raises(ReplayDivergenceError) as at_exit:
        async with MiniAgents(replay=replay):
            with pytest.raises(ReplayDivergenceError) as caught:
                await live.inquire(["system prompt", "What is 3+3?"], temperature=0).aresolve_messages()
    assert at_exit.value is caught.value  # caught in the block, it still fails the context
    message = str(caught.value)
    assert caught.value.agent_alias == "STAND_IN_LLM_AGENT"
    assert caught.value.occurrence == 0
    assert f"call key {caught.value.call_key}, occurrence 0" in message
    assert "input message 1: now 'What is 3+3?', recorded 'What is 2+2?'" in message
    assert "kwarg responder: given now ('<function>'), not recorded" in message
    assert "mode='all'" in message
    assert ran == []  # the real agent never ran
    assert replay.divergences == [caught.value]
    async with store:
        assert len(await store.aget_events()) == events_before  # a failed replay writes nothing


async def test_calling_more_often_than_recorded_names_the_occurrence() -> None:
    store = MemoryStore()
    llm = stand_in_llm_agent.fork(reply="r")
    async with MiniAgents(replay=Replay(store)):
        await llm.inquire("same").aresolve_messages()
    with pytest.raises(ReplayDivergenceError, match=r"recorded 1 time\(s\); this run makes it more often"):
        async with MiniAgents(replay=Replay(store, mode="none")):
            await llm.inquire("same").aresolve_messages()
            await llm.inquire("same").aresolve_messages()


async def test_new_episodes_replays_what_it_has_and_records_the_rest() -> None:
    store = MemoryStore()
    counter = Counter()
    llm = stand_in_llm_agent.fork(responder=counter)
    async with MiniAgents(replay=Replay(store)):
        await llm.inquire("old").aresolve_messages()
    async with MiniAgents(replay=Replay(store, mode="new_episodes")):
        old = await llm.inquire("old").aresolve_messages()
        new = await llm.inquire("new").aresolve_messages()
    assert counter.calls == ["old", "new"]
    assert [str(old[0]), str(new[0])] == ["answer 1 to old", "answer 2 to new"]
    async with MiniAgents(replay=Replay(store, mode="none")):
        assert str((await llm.inquire("new").aresolve_messages())[0]) == "answer 2 to new"
    assert counter.calls == ["old", "new"]


async def test_mode_all_records_again_and_drops_the_old_recording() -> None:
    store = MemoryStore()
    counter = Counter()
    llm = stand_in_llm_agent.fork(responder=counter)
    for _ in range(2):
        async with MiniAgents(replay=Replay(store, mode="all")):
            await llm.inquire("q").aresolve_messages()
    assert len(counter.calls) == 2
    async with store:
        assert len(await store.alist_runs()) == 1
    async with MiniAgents(replay=Replay(store, mode="none")):
        assert str((await llm.inquire("q").aresolve_messages())[0]) == "answer 2 to q"


async def test_which_agents_are_replayed_is_a_policy() -> None:
    store = MemoryStore()
    counter = Counter()
    llm = stand_in_llm_agent.fork(responder=counter)
    orchestrator, orchestration_runs = make_flow(llm)
    await run_flow(orchestrator, Replay(store, agents="all"))
    await run_flow(orchestrator, Replay(store, mode="none", agents="all"))
    assert orchestration_runs == ["ran"]  # with agents="all" even the orchestration is answered from the recording
    await run_flow(orchestrator, Replay(store, mode="none", agents=["ORCHESTRATOR"]))
    assert orchestration_runs == ["ran"]
    assert len(counter.calls) == 3

    assert Replay(store, agents=[llm]).intercepts(llm)
    assert not Replay(store, agents=[llm]).intercepts(orchestrator)
    assert Replay(store).intercepts(llm) and not Replay(store).intercepts(orchestrator)


async def test_replay_at_the_recorded_pace_or_at_once() -> None:
    store = MemoryStore()
    llm = stand_in_llm_agent.fork(reply="a b c d e", token_delay=0.03)

    async def timed(replay: Replay) -> float:
        async with MiniAgents(replay=replay):
            started = time.perf_counter()
            await llm.inquire("q").aresolve_messages()
            return time.perf_counter() - started

    recorded = await timed(Replay(store))
    assert recorded >= 0.15
    assert await timed(Replay(store, mode="none")) < 0.05
    paced = await timed(Replay(store, mode="none", speed=1.0))
    assert recorded * 0.7 <= paced
    doubled = await timed(Replay(store, mode="none", speed=2.0))
    assert doubled < paced


def test_replay_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="Unknown record mode 'sometimes'"):
        Replay(MemoryStore(), mode="sometimes")
    with pytest.raises(ValueError, match="`speed` must be positive"):
        Replay(MemoryStore(), speed=0)
    with pytest.raises(TypeError, match="Replay needs a store"):
        Replay("recording.db")  # type: ignore[arg-type]
    assert str(RecordMode("new_episodes")) == "new_episodes"


async def test_a_run_can_also_be_recorded_elsewhere_while_replaying() -> None:
    recording = MemoryStore()
    llm = stand_in_llm_agent.fork(reply="x")
    async with MiniAgents(replay=Replay(recording)):
        await llm.inquire("q").aresolve_messages()
    elsewhere = MemoryStore()
    replay = Replay(recording, mode="none")
    async with MiniAgents(store=elsewhere, replay=replay):
        await llm.inquire("q").aresolve_messages()
    async with elsewhere:
        (run,) = await elsewhere.alist_runs()
        finished = await elsewhere.aget_events(run.run_id, kinds=[EventKind.CALL_FINISHED])
        assert [event.data["replayed"] for event in finished if event.data] == [True]
        assert await afingerprint(elsewhere, run.run_id) == replay.fingerprint


async def test_concurrent_identical_calls_get_distinct_recorded_answers() -> None:
    store = MemoryStore()
    counter = Counter()
    llm = stand_in_llm_agent.fork(responder=counter, token_delay=0.001)

    async def run() -> list[str]:
        async with MiniAgents(replay=Replay(store)):
            replies = [llm.inquire("same") for _ in range(5)]
            results = await asyncio.gather(*(reply.aresolve_messages() for reply in replies))
            return sorted(str(result[0]) for result in results)

    recorded = await run()
    assert recorded == [f"answer {index} to same" for index in range(1, 6)]
    assert await run() == recorded
    assert len(counter.calls) == 5


async def test_a_failed_re_recording_in_mode_all_leaves_the_earlier_recording_as_it_was() -> None:
    store = MemoryStore()

    async def run(mode: str, answer: str, fail: bool = False) -> str:
        llm = stand_in_llm_agent.fork(responder=ScriptedResponses([answer]))  # recorded as its type only
        async with MiniAgents(replay=Replay(store, mode=mode)):
            [message] = await llm.inquire("hi").aresolve_messages()
            if fail:
                raise RuntimeError("the test failed after the LLM answered")
        return str(message)

    assert await run("all", "GOOD") == "GOOD"
    with pytest.raises(RuntimeError):
        await run("all", "BAD", fail=True)
    async with store:
        assert [run.status for run in await store.alist_runs()] == ["ok"]
    assert await run("none", "unused") == "GOOD"


async def test_answers_come_from_runs_that_finished_ok_before_failed_ones() -> None:
    def llm(*answers: str) -> MiniAgent:
        return stand_in_llm_agent.fork(responder=ScriptedResponses(list(answers)))  # recorded as its type only

    store = MemoryStore()
    async with MiniAgents(replay=Replay(store)):
        await llm("GOOD").inquire("hi").aresolve_messages()
    # a newer run of the same call that failed (recorded by a plain store sink), and one call only it has
    with pytest.raises(RuntimeError):
        async with MiniAgents(store=store):
            bad = llm("BAD", "LATE")
            await bad.inquire("hi").aresolve_messages()
            await bad.inquire("only in the failed run").aresolve_messages()
            await MiniAgents.get_current().aflush_tasks()  # the calls are recorded before the body fails
            raise RuntimeError("failed")
    async with MiniAgents(replay=Replay(store, mode="none")):
        unused = llm()
        [good] = await unused.inquire("hi").aresolve_messages()
        [late] = await unused.inquire("only in the failed run").aresolve_messages()
    assert (str(good), str(late)) == ("GOOD", "LATE")


async def _acopy_runs(source: EventStore, *, unfinished: bool = False, without_positions: bool = False) -> MemoryStore:
    """A copy of `source`'s runs, as a process killed before the end of each would have left them, or as a
    version that did not record positions would have."""
    async with source:
        events = await source.aget_events()
        objects = await source.aget_many(event.hash_key for event in events if event.kind is EventKind.MESSAGE)
    copy = MemoryStore()
    async with copy:
        for run_id in dict.fromkeys(event.run_id for event in events):
            await copy.astart_run(run_id)
        for event in events:
            if unfinished and event.kind is EventKind.RUN_FINISHED:
                continue
            data = event.data
            if without_positions and data is not None and event.kind is EventKind.CALL_FINISHED:
                data = {key: value for key, value in data.items() if key != "position"}
            obj = objects.get(event.hash_key or "") if event.kind is EventKind.MESSAGE else None
            copy.append(
                Event(
                    event.kind, event.run_id, event.t, event.hash_key, event.call_id, event.parent_call_id, data, obj
                )
            )
        await copy.aflush()
    return copy


async def test_a_recording_whose_run_never_finished_is_said_to_be_incomplete(caplog: pytest.LogCaptureFixture) -> None:
    complete = MemoryStore()
    async with MiniAgents(replay=Replay(complete)):
        await stand_in_llm_agent.inquire("question 1").aresolve_messages()
    killed = await _acopy_runs(complete, unfinished=True)  # killed before it asked question 2

    replay = Replay(killed, mode="none")
    with pytest.raises(ReplayDivergenceError, match=r"The recording is incomplete: run \w+ \(started .*\) never"):
        async with MiniAgents(replay=replay):
            await stand_in_llm_agent.inquire("question 1").aresolve_messages()  # what it has is replayed
            await stand_in_llm_agent.inquire("question 2").aresolve_messages()
    assert "--record-mode=once" in str(replay.divergences[0])

    replay = Replay(killed, mode="once")  # an incomplete recording is recorded again
    async with MiniAgents(replay=replay):
        await stand_in_llm_agent.inquire("question 1").aresolve_messages()
        await stand_in_llm_agent.inquire("question 2").aresolve_messages()
    assert (replay.replaying, replay.recording) == (False, True)
    assert "is incomplete" in caplog.text and "records it again" in caplog.text
    async with MiniAgents(replay=Replay(killed, mode="none")):
        await stand_in_llm_agent.inquire("question 2").aresolve_messages()


async def test_identical_calls_are_told_apart_by_their_place_in_the_call_tree_not_by_timing() -> None:
    store = MemoryStore()

    async def run(mode: str) -> tuple[list[str], str]:
        judge = stand_in_llm_agent.fork(alias="JUDGE", responder=ScriptedResponses(["sample #1", "sample #2"]))

        @miniagent
        async def flow(ctx: InteractionContext) -> None:
            slow = stand_in_llm_agent.inquire("Q", reply="same draft", token_delay=0.05, stream=True)
            fast = stand_in_llm_agent.inquire("Q", reply="same draft", token_delay=0.001, stream=True)
            ctx.reply([judge.inquire(slow), judge.inquire(fast)])  # identical calls, inputs ready at other times

        replay = Replay(store, mode=mode)
        async with MiniAgents(replay=replay):
            replies = await flow.inquire().aresolve_messages()
        return [str(reply) for reply in replies], replay.fingerprint

    recorded = await run("once")
    assert recorded[0] == ["sample #2", "sample #1"]  # the slow branch asked second
    assert await run("none") == recorded  # replayed at once, the slow branch's input is ready first

    older = await _acopy_runs(store, without_positions=True)  # made before positions were recorded
    async with MiniAgents(replay=Replay(older, mode="none")):
        replies = stand_in_llm_agent.inquire("Q", reply="same draft", token_delay=0.05, stream=True)
        assert [str(reply) for reply in await replies.aresolve_messages()] == ["same draft"]


async def test_a_replayed_error_of_any_type_is_recorded_as_the_original_was() -> None:
    class RateLimitError(Exception):
        pass

    @miniagent(talks_to_outside_world=True)
    async def limited_llm(ctx: InteractionContext) -> None:
        ctx.reply("partial answer")
        raise RateLimitError("slow down")

    async def run(mode: str) -> tuple[str, str]:
        replay = Replay(store, mode=mode)
        async with MiniAgents(replay=replay):
            with pytest.raises(Exception) as caught:
                await limited_llm.inquire("hi").aresolve_messages()
        return replay.fingerprint, str(caught.value)

    store = MemoryStore()
    recorded_fingerprint, _ = await run("once")
    assert (await run("none"))[0] == recorded_fingerprint
    for _ in range(2):  # re-recorded replays describe the error as the original run did
        assert await run("new_episodes") == (
            recorded_fingerprint,
            f"{__name__}.{RateLimitError.__qualname__}: slow down",
        )
    async with store:
        errors = [
            event.data["error"] for event in await store.aget_events(kinds=[EventKind.CALL_FINISHED]) if event.data
        ]
    assert errors == [{"type": RateLimitError.__qualname__, "module": __name__, "text": "slow down"}] * 3
