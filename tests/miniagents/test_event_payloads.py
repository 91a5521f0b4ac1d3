"""Typed event payloads: one definition of each event's data, the same through every store, old data still read."""

from pathlib import Path
from typing import Any

import orjson
import pytest

from miniagents import InteractionContext, ListEventSink, Message, MessagePromise, MiniAgents, miniagent
from miniagents.errors import EventDataError
from miniagents.events import (
    PAYLOAD_TYPES,
    CallFinishedPayload,
    CallStartedPayload,
    ErrorDescription,
    ErrorPayload,
    Event,
    EventKind,
    EventPayload,
    PartialReply,
    RunFinishedPayload,
    RunStartedPayload,
    StreamPayload,
    WholeReply,
    payload_from_data,
)
from store import EventStore, MemoryStore, SQLiteStore

CALL_NODE, REPLY_NODE, FIRST, SECOND = (Message(text=name) for name in ("call node", "reply node", "one", "two"))
RATE_LIMITED = ErrorDescription(
    "RateLimitError", "openai", "Try later", {"status_code": 429, "body": {"message": "Try later", "code": None}}
)
PARTIAL = PartialReply(
    "OpenAIMessage",
    {"class_": "Frozen", "model": "m", "usage": {"class_": "Frozen", "input_tokens": 3}, "tags": ["a", "b"]},
    ("par", "tial"),
    (0.0, 0.125),
    RATE_LIMITED,
)
PAYLOADS: list[EventPayload] = [
    RunStartedPayload(started_at=1_700_000_000.5, library_version="0.1.0", metadata={"purpose": "test", "n": [1, 2]}),
    CallStartedPayload("ECHO"),
    StreamPayload((3, 2, 1), (0.0, 0.001, 0.25)),
    ErrorPayload("agent", None, ErrorDescription("KeyError", "builtins", "'missing'")),
    ErrorPayload.of_broken_stream(PARTIAL),
    CallFinishedPayload(
        agent_alias="ECHO",
        call_node=CALL_NODE.hash_key,
        reply_node=REPLY_NODE.hash_key,
        occurrence=1,
        position="0.2",
        replies=(WholeReply(FIRST.hash_key), WholeReply(SECOND.hash_key, (2, 1), (0.0, 0.5)), PARTIAL),
        error=RATE_LIMITED,
        replayed=True,
    ),
    CallFinishedPayload(
        agent_alias="BAD_INPUT",
        position="1",
        partial_call_node=CALL_NODE.hash_key,
        input_error=ErrorDescription("ValueError", "builtins", "the input broke"),
    ),
    RunFinishedPayload("failed", ErrorDescription("ValueError", "builtins", "boom")),
]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> EventStore:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "payloads.db")


async def arecord(store: EventStore, events: list[Event]) -> list[Event]:
    """Store the objects the payloads name and these events as one run; the run's events read back."""
    async with store:
        await store.astart_run("run")
        for message in (CALL_NODE, REPLY_NODE, FIRST, SECOND):
            store.append(Event(EventKind.MESSAGE, "run", 0.0, hash_key=message.hash_key, obj=message))
        for event in events:
            store.append(event)
        await store.afinish_run("run")
    async with store:
        report = await store.averify()
        assert report.ok, report.problems
        return [event for event in await store.aget_events("run") if event.kind is not EventKind.MESSAGE]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda payload: type(payload).__name__)
def test_each_payload_is_plain_json_and_reads_back_as_itself(payload: EventPayload) -> None:
    data = payload.to_data()
    assert orjson.loads(orjson.dumps(data)) == data
    assert payload_from_data(payload.KIND, data) == payload
    assert PAYLOAD_TYPES[payload.KIND] is type(payload)

    event = Event.of(payload, "run", 0.5, call_id=3)
    assert (event.kind, event.data, event.call_id) == (payload.KIND, data, 3)
    assert event.payload is payload  # kept: an in-process sink reads it without parsing


async def test_typed_payloads_round_trip_through_each_store(store: EventStore) -> None:
    events = [
        Event.of(payload, "run", index / 10, hash_key=_hash_key_of(payload), call_id=index)
        for index, payload in enumerate(PAYLOADS)
    ]

    read = await arecord(store, events)

    assert [event.payload for event in read] == PAYLOADS
    assert [event.data for event in read] == [payload.to_data() for payload in PAYLOADS]
    assert all(event.payload is event.payload for event in read)  # parsed once


def _hash_key_of(payload: EventPayload) -> Any:
    if isinstance(payload, CallFinishedPayload):
        return payload.call_node
    if isinstance(payload, StreamPayload):
        return FIRST.hash_key
    return None


OLD_DATA: list[tuple[EventKind, dict[str, Any]]] = [
    # before positions, reply chunking and error attributes were recorded
    (
        EventKind.CALL_FINISHED,
        {
            "agent_alias": "ECHO",
            "call_node": CALL_NODE.hash_key,
            "reply_node": None,
            "occurrence": 0,
            "replies": [
                {"hash": FIRST.hash_key},
                {
                    "failed": {
                        "class_": "Message",
                        "metadata": {"class_": "Frozen", "model": "m"},
                        "chunks": ["par", "tial"],
                        "offsets": [0.0, 0.1],
                        "error": {"type": "ConnectionError", "module": "builtins", "text": "dropped"},
                    }
                },
            ],
            "error": None,
            "replayed": False,
        },
    ),
    (
        EventKind.ERROR,
        {
            "where": "message",
            "position": 2,
            "class_": "Message",
            "metadata": {"class_": "Frozen", "model": "m"},
            "chunks": ["par", "tial"],
            "offsets": [0.0, 0.1],
            "error": {"type": "ConnectionError", "module": "builtins", "text": "dropped"},
        },
    ),
    (EventKind.ERROR, {"where": "agent", "position": None, "error": {"type": "E", "module": "app", "text": "x"}}),
    (EventKind.RUN_FINISHED, {"status": "failed", "error": {"type": "ValueError", "module": "builtins", "text": "b"}}),
]


async def test_old_dict_shaped_data_is_still_read(store: EventStore) -> None:
    events = [Event(kind, "run", 0.0, call_id=1, data=data) for kind, data in OLD_DATA]
    events[0].hash_key = CALL_NODE.hash_key

    read = await arecord(store, events)

    assert [event.data for event in read] == [data for _, data in OLD_DATA]  # stored as written
    # what a payload writes is the same format: the old fields as they were, newer ones at their defaults
    expected = [data for _, data in OLD_DATA]
    expected[0] = {**expected[0], "position": None}
    assert [event.payload.to_data() for event in read if event.payload is not None] == expected
    finished = read[0].payload
    assert isinstance(finished, CallFinishedPayload)
    assert finished.position is None and finished.partial_call_node is None and finished.input_error is None
    whole, failed = finished.replies
    assert whole == WholeReply(FIRST.hash_key)  # no chunking recorded: complete from the start
    assert isinstance(failed, PartialReply) and failed.text == "partial"
    assert failed.error == ErrorDescription("ConnectionError", "builtins", "dropped")
    assert failed.error.attributes is None
    broken = read[1].payload
    assert isinstance(broken, ErrorPayload) and broken.partial == failed and broken.error == failed.error


async def test_every_event_of_a_run_carries_the_payload_its_data_was_made_from() -> None:
    @miniagent
    async def streamer(ctx: InteractionContext, mode: str) -> None:
        async def tokens(_: dict[str, Any]) -> Any:
            yield "he"
            yield "llo"
            if mode == "break":
                raise ConnectionError("dropped")

        ctx.reply(MessagePromise(message_token_streamer=tokens))
        if mode == "raise":
            raise KeyError("missing")

    async def flow() -> None:
        for mode in ("fine", "break", "raise"):
            try:
                await streamer.inquire("hi", mode=mode).aresolve_messages()
            except (ConnectionError, KeyError):
                pass
        try:
            await streamer.inquire(["hi", ValueError("bad input")], mode="fine").aresolve_messages()
        except ValueError:
            pass

    sink, store = ListEventSink(), MemoryStore()
    mini_agents = MiniAgents(store=sink, run_metadata={"purpose": "payloads"})
    mini_agents.add_event_sink(store)
    async with mini_agents:
        await flow()
    emitted = [event for event in sink.events if event.kind is not EventKind.MESSAGE]
    assert {event.kind for event in emitted} == set(PAYLOAD_TYPES)
    for event in emitted:
        assert event.payload is not None and event.payload.KIND is event.kind
        assert event.payload.to_data() == event.data

    async with store:
        events = await store.aget_events(mini_agents.run_id)
        stored = [event for event in events if event.kind is not EventKind.MESSAGE]
        assert (await store.averify()).ok
    assert [event.payload for event in stored] == [event.payload for event in emitted]
    finished = [event.payload for event in stored if isinstance(event.payload, CallFinishedPayload)]
    assert [payload.partial_call_node is not None for payload in finished] == [False, False, False, True]
    assert [type(reply).__name__ for payload in finished for reply in payload.replies] == [
        "WholeReply",
        "PartialReply",
        "WholeReply",
        "WholeReply",
    ]


async def test_data_that_is_not_its_kinds_payload_is_refused_and_reported_by_verify(store: EventStore) -> None:
    bad = Event(EventKind.CALL_FINISHED, "run", 0.0, call_id=1, data={"agent_alias": "A", "replies": 5})
    with pytest.raises(EventDataError, match="replies=5"):
        _ = bad.payload

    async with store:
        await store.astart_run("run")
        store.append(bad)
        await store.afinish_run("run")
        [stored] = await store.aget_events("run")
        report = await store.averify()
    assert stored.data == bad.data  # kept as it was written
    assert [(problem.kind, problem.seq) for problem in report.problems] == [("malformed_event", stored.seq)]
    assert "replies=5" in str(report.problems[0])
