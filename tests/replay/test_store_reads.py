"""The store reads replay relies on: call lookups by hash key, bulk object loads, integrity on every path."""

from pathlib import Path

import pytest

from miniagents import Message
from miniagents.events import Event, EventKind
from store import SQLiteStore


def finished_call(run_id: str, call_key: str) -> Event:
    return Event(EventKind.CALL_FINISHED, run_id, 1.0, hash_key=call_key, call_id=1, data={"occurrence": 0})


@pytest.mark.parametrize("inline_lookups", [True, False])
async def test_calls_found_by_hash_key_name_their_runs_after_runs_are_deleted_and_added(
    tmp_path: Path, inline_lookups: bool
) -> None:
    key = Message(text="call").hash_key
    async with SQLiteStore(tmp_path / "runs.db", inline_lookups=inline_lookups) as store:
        for run_id in ("first", "second"):
            await store.astart_run(run_id)
            store.append(finished_call(run_id, key))
            await store.afinish_run(run_id)
        await store.adelete_run("second")
        await store.astart_run("third")  # may take the deleted run's row id
        store.append(finished_call("third", key))
        await store.afinish_run("third")
        found = await store.aget_events(kinds=[EventKind.CALL_FINISHED], hash_keys=[key])
        in_third = await store.aget_events("third", kinds=[EventKind.CALL_FINISHED], hash_keys=[key])
    assert [event.run_id for event in found] == ["first", "third"]
    assert [event.run_id for event in in_third] == ["third"]
