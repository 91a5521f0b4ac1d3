"""`aload_run`: a recorded run's calls with positions, parent links, timing, streams, token usage and errors."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FIRST_ANSWER, LONG_ANSWER, Recordings

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.ext.llm.stand_in import tokenize
from replay.inspection import Usage, aload_run, aresolve_run_id
from store import MemoryStore, SQLiteStore, StoreUsageError, UnknownRunError

OLDER_RECORDING = Path(__file__).resolve().parents[1] / "data" / "recorded_before_kwargs_were_kept_apart.db"


def test_calls_come_in_call_tree_order_with_positions_and_parents(recordings: Recordings) -> None:
    run = recordings.first
    assert [(call.position, call.agent_alias) for call in run.calls] == [
        ("0", "ORCHESTRATOR"),
        ("0.0", "RESEARCHER"),
        ("0.0.0", "STAND_IN_LLM_AGENT"),
        ("0.1", "RESEARCHER"),
        ("0.1.0", "STAND_IN_LLM_AGENT"),
        ("0.2", "FACT_CHECKER"),
    ]
    by_position = {call.position: call for call in run.calls}
    for call in run.calls:
        parent = call.position.rpartition(".")[0]
        assert call.parent_call_id == (by_position[parent].call_id if parent else None)
        assert call.depth == call.position.count(".")
    assert [root.position for root in run.roots] == ["0"]
    assert [child.position for child in run.roots[0].children] == ["0.0", "0.1", "0.2"]


def test_llm_calls_report_usage_model_and_finish_reason_and_forwarders_do_not(recordings: Recordings) -> None:
    run = recordings.first
    llm = run.call_at("0.0.0")
    assert llm.is_llm_call and llm.provider == "miniagents.stand_in"
    assert llm.request_model == llm.response_model == "stand-in-1"
    assert llm.finish_reasons == ("stop",)
    prompt = ["Research paper.", "How is paper made?"]
    assert llm.usage == Usage(sum(len(tokenize(text)) for text in prompt), len(tokenize(FIRST_ANSWER)))
    researcher = run.call_at("0.0")
    # the researcher passes the LLM's reply on: the reply is among its replies, but it made none of them
    assert [str(reply) for reply in researcher.replies] == [FIRST_ANSWER]
    assert researcher.own_replies == () and not researcher.is_llm_call and researcher.usage is None
    assert researcher.streams == []
    assert run.usage == run.call_at("0.0.0").usage + run.call_at("0.1.0").usage  # nothing counted twice


def test_streams_are_placed_on_the_run_clock_within_their_call(recordings: Recordings) -> None:
    run = recordings.first
    for position, answer in (("0.0.0", FIRST_ANSWER), ("0.1.0", LONG_ANSWER)):
        call = run.call_at(position)
        [stream] = call.streams
        assert call.started_at is not None and call.finished_at is not None
        assert stream.chunk_lengths == tuple(len(token) for token in tokenize(answer))
        assert list(stream.chunk_times) == sorted(stream.chunk_times)
        assert call.started_at <= stream.started_at <= stream.chunk_times[0]
        assert stream.chunk_times[-1] <= call.finished_at + 1e-6
        assert call.first_token_at == stream.chunk_times[0]
        assert call.time_to_first_token == pytest.approx(stream.chunk_times[0] - call.started_at)
        assert 0.002 <= call.time_to_first_token < call.duration  # type: ignore[operator]
    assert run.duration >= max(call.finished_at or 0 for call in run.calls)


def test_errors_are_kept_where_they_happened(recordings: Recordings) -> None:
    run = recordings.first
    failed = run.call_at("0.2")
    assert failed.error is not None
    assert (failed.error.type_name, failed.error.text) == ("ValueError", "no sources for this claim")
    assert [call.position for call in run.calls if call.error is not None] == ["0.2"]
    assert run.info.status == "ok"  # the orchestrator caught it


async def test_the_latest_run_is_the_default_and_a_unique_start_of_an_id_names_a_run(recordings: Recordings) -> None:
    async with SQLiteStore(recordings.path) as store:
        assert await aresolve_run_id(store, None) == recordings.second_run_id
        assert (await aload_run(store)).run_id == recordings.second_run_id
        prefix = recordings.first_run_id[:8]
        assert (await aload_run(store, prefix)).run_id == recordings.first_run_id
        with pytest.raises(UnknownRunError, match=r"No run 'nope'.*miniagents runs"):
            await aload_run(store, "nope")


async def test_a_store_without_runs_says_so(tmp_path: Path) -> None:
    async with MemoryStore() as store:
        with pytest.raises(StoreUsageError, match="holds no runs yet"):
            await aload_run(store)


async def test_a_broken_stream_is_placed_on_the_clock_with_its_error() -> None:
    async def tokens(_: dict[str, Any]) -> AsyncIterator[str]:
        yield "Hel"
        await asyncio.sleep(0.01)
        yield "lo"
        raise ConnectionError("dropped")

    @miniagent
    async def flaky(ctx: InteractionContext) -> None:
        ctx.reply(Message.promise(message_token_streamer=tokens, start_asap=True))

    store = MemoryStore()
    async with MiniAgents(store=store):
        with contextlib.suppress(ConnectionError):
            await flaky.inquire().aresolve_messages()
    async with store:
        run = await aload_run(store)
    [call] = run.calls
    [stream] = call.streams
    assert stream.hash_key is None and stream.chunk_lengths == (3, 2)
    assert str(stream.error) == "ConnectionError: dropped"
    assert call.started_at is not None and call.finished_at is not None
    assert call.started_at <= stream.chunk_times[0] < stream.chunk_times[1] <= call.finished_at
    assert stream.chunk_times[1] - stream.chunk_times[0] >= 0.01
    assert [partial.text for partial in call.partial_replies] == ["Hello"]
    assert call.node.error is None  # the agent did not fail, one of its replies broke: that is the call's error
    assert call.error == stream.error


async def test_an_older_recording_reads_with_its_llm_calls_told_from_the_caller(tmp_path: Path) -> None:
    # recorded before message events named the call that made each message: its stream events tell
    copy = tmp_path / "older.db"
    shutil.copy(OLDER_RECORDING, copy)
    async with SQLiteStore(copy) as store:
        run = await aload_run(store)
    assert [(call.position, call.agent_alias, call.is_llm_call) for call in run.calls] == [
        ("0", "APP", False),
        ("0.0", "STAND_IN_LLM_AGENT", True),
        ("0.1", "STAND_IN_LLM_AGENT", True),
    ]
    assert run.call_at("0").usage is None and run.call_at("0").streams == []
    assert all(call.time_to_first_token is not None for call in run.calls[1:])
