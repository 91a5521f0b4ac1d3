"""The public API of `store`: what `__init__` exports, the error tree, and the documented example."""

from pathlib import Path

import pytest

import store
from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.errors import MiniAgentsError
from miniagents.events import Event, EventSink
from store import errors


def test_exported_members() -> None:
    assert store.__all__ == [
        "SCHEMA_VERSION",
        "EventStore",
        "ForeignDatabaseError",
        "JSONLStore",
        "MemoryStore",
        "ObjectDecoder",
        "PostgresStore",
        "Problem",
        "RunInfo",
        "RunStatus",
        "SQLiteStore",
        "SchemaVersionError",
        "StoreClosedError",
        "StoreCorruptedError",
        "StoreError",
        "StoreIntegrityError",
        "StoreOpenError",
        "StoreReadError",
        "StoreUsageError",
        "StoreWriteError",
        "UnknownHashError",
        "UnknownRunError",
        "VerifyReport",
        "acopy",
        "is_stand_in_class",
        "open_store",
        "register_scheme",
        "register_suffix",
    ]
    for name in store.__all__:
        assert getattr(store, name) is not None


def test_the_error_tree_is_rooted_in_store_error() -> None:
    assert issubclass(errors.StoreError, MiniAgentsError)
    parents = {
        errors.StoreOpenError: errors.StoreError,
        errors.ForeignDatabaseError: errors.StoreOpenError,
        errors.SchemaVersionError: errors.StoreOpenError,
        errors.StoreCorruptedError: errors.StoreOpenError,
        errors.StoreWriteError: errors.StoreError,
        errors.StoreReadError: errors.StoreError,
        errors.StoreIntegrityError: errors.StoreError,
        errors.UnknownHashError: errors.StoreError,
        errors.UnknownRunError: errors.StoreError,
        errors.StoreUsageError: errors.StoreError,
        errors.StoreClosedError: errors.StoreUsageError,
    }
    for error, parent in parents.items():
        assert error.__bases__[0] is parent, error
        assert error.__name__ in (errors.__doc__ or ""), f"{error.__name__} is missing from the drawn tree"
    assert issubclass(errors.UnknownHashError, LookupError)
    assert issubclass(errors.UnknownRunError, LookupError)


def test_every_store_is_an_event_sink() -> None:
    assert isinstance(store.MemoryStore(), EventSink)
    assert isinstance(store.SQLiteStore("unused.db"), EventSink)
    assert isinstance(store.JSONLStore("unused.jsonl"), EventSink)


@miniagent
async def greeter(ctx: InteractionContext) -> None:
    ctx.reply(Message(text="hello"))


async def test_the_documented_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with MiniAgents(store=store.SQLiteStore("agents.db")):
        await greeter.inquire().aresolve_messages()

    async with store.SQLiteStore("agents.db") as sqlite_store:
        runs = await sqlite_store.alist_runs()
        events: list[Event] = [event async for event in sqlite_store.aiter_events(run_id=runs[0].run_id)]
        hash_key = next(event.hash_key for event in events if event.hash_key is not None)
        message = await sqlite_store.aget(hash_key)
        report = await sqlite_store.averify()

    assert runs[0].status == "ok" and runs[0].event_count == len(events)
    assert all(event.seq is not None and event.obj is None for event in events)
    assert message.hash_key == hash_key
    assert report.ok and report.checked == len(events) + report.checked_objects
    assert report.problems == []
