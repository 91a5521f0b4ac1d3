"""Replay with bad input: each case gives an error that says what and where, and the recording is left as it was."""

import contextlib
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from miniagents import Message, MiniAgents
from miniagents.errors import FrozenValueError
from miniagents.events import EventKind
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import NoRecordingError, Replay
from store import ForeignDatabaseError, SchemaVersionError, SQLiteStore, StoreIntegrityError

LIVE_CALLS: list[str] = []


def answer(messages: Sequence[Message]) -> str:
    LIVE_CALLS.append(str(messages[-1]))
    return "the recorded answer"


LLM = stand_in_llm_agent.fork(alias="RECORDED_LLM", responder=answer, model="m")


async def record(path: Path) -> str:
    """Record one LLM call into `path`; returns the hash key of the recorded answer."""
    async with MiniAgents(replay=Replay(SQLiteStore(path), mode="once")):
        (answer,) = await LLM.inquire("question?").aresolve_messages()
    return answer.hash_key


def files_named(directory: Path, prefix: str) -> list[str]:
    return [entry.name for entry in directory.iterdir() if entry.name.startswith(prefix)]


def file_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


async def test_a_missing_store_in_mode_none_names_the_file_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "never-recorded.db"
    with pytest.raises(NoRecordingError, match=re.escape("never-recorded.db")):
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            await LLM.inquire("question?").aresolve_messages()
    assert files_named(tmp_path, "never-recorded.db") == []


async def test_a_store_of_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "recording.db"
    await record(path)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    before = file_bytes(path)
    with pytest.raises(SchemaVersionError, match=re.escape("recording.db")):
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            await LLM.inquire("question?").aresolve_messages()
    assert file_bytes(path) == before


async def test_a_database_of_another_application_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other-app.db"
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    before = file_bytes(path)
    with pytest.raises(ForeignDatabaseError, match=re.escape("other-app.db")):
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="once")):
            await LLM.inquire("question?").aresolve_messages()
    assert file_bytes(path) == before


async def test_when_the_context_fails_to_start_after_the_replay_did_the_replay_store_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "recording.db"
    await record(path)
    foreign = tmp_path / "notes.db"
    foreign.write_text("not a database" * 20)
    replay_store = SQLiteStore(path)
    with pytest.raises(ForeignDatabaseError):
        async with MiniAgents(store=SQLiteStore(foreign), replay=Replay(replay_store, mode="none")):
            pass
    assert not replay_store.is_open  # its threads would otherwise keep the process from exiting


async def test_a_recorded_answer_whose_bytes_were_altered_fails_naming_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "recording.db"
    answer_hash = await record(path)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        changed = connection.execute(
            "UPDATE objects SET body = CAST(replace(CAST(body AS TEXT), 'recorded', 'tampered') AS BLOB) "
            "WHERE hash = ?",
            (bytes.fromhex(answer_hash),),
        ).rowcount
    assert changed == 1
    async with SQLiteStore(path) as store:
        events_before = len(await store.aget_events())

    LIVE_CALLS.clear()
    with pytest.raises(StoreIntegrityError, match=answer_hash):
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            await LLM.inquire("question?").aresolve_messages()
    assert LIVE_CALLS == []  # the real agent never ran instead
    async with SQLiteStore(path) as store:
        assert len(await store.aget_events()) == events_before  # the failed replay wrote nothing


async def test_kwargs_that_cannot_be_frozen_name_the_agent_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "recording.db"
    await record(path)
    with pytest.raises(FrozenValueError, match=r"RECORDED_LLM.*temperature|temperature.*RECORDED_LLM"):
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            await LLM.inquire("question?", temperature=float("nan")).aresolve_messages()


async def test_a_call_pointed_at_another_recorded_reply_is_refused_naming_run_and_event(tmp_path: Path) -> None:
    path = tmp_path / "recording.db"
    async with MiniAgents(replay=Replay(SQLiteStore(path), mode="once")):
        recorded = [str((await stand_in_llm_agent.inquire(word).aresolve_messages())[0]) for word in ("Alpha", "Beta")]
    async with SQLiteStore(path) as store:
        [run] = await store.alist_runs()
        finished = await store.aget_events(run.run_id, kinds=[EventKind.CALL_FINISHED])
    first, second = (event.data["replies"][0]["hash"] for event in finished if event.data)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(  # the first call's recorded reply now names the second call's reply
            "UPDATE events SET data = CAST(replace(CAST(data AS TEXT), ?, ?) AS BLOB) WHERE seq = ?",
            (first, second, finished[0].seq),
        )
    before = file_bytes(path)

    with pytest.raises(StoreIntegrityError) as caught:  # not "Beta" as the answer to "Alpha"
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            await stand_in_llm_agent.inquire("Alpha").aresolve_messages()
    assert caught.value.run_id == run.run_id and caught.value.seq == finished[0].seq
    assert f"Event {finished[0].seq} of run {run.run_id!r}" in str(caught.value)
    assert file_bytes(path) == before
    assert len(set(recorded)) == 2
