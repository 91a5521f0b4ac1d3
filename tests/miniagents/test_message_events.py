"""`message` events name the agent call that made the message (and that call's parent), whoever resolved it first;
a sub-message's event names the message it is nested in."""

from __future__ import annotations

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.events import Event, EventKind, ListEventSink, MessagePayload
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import FingerprintSink, Replay, afingerprint
from store import MemoryStore


@miniagent
async def inner(ctx: InteractionContext) -> None:
    ctx.reply("made by inner")
    ctx.reply(stand_in_llm_agent.inquire("streamed by the LLM", reply="a streamed answer"))


@miniagent
async def outer(ctx: InteractionContext) -> None:
    ctx.reply(inner.inquire("sent by outer"))
    ctx.reply(Message(text="wrapper", quote=Message(text="quoted", source=Message(text="deep"))))


def _message_events(sink: ListEventSink) -> dict[str, Event]:
    """The first `message` event of each text."""
    events: dict[str, Event] = {}
    for event in sink.of_kind(EventKind.MESSAGE):
        text = getattr(event.obj, "text", None)
        if isinstance(text, str):
            events.setdefault(text, event)
    return events


def _calls(sink: ListEventSink) -> dict[str, tuple[int, int | None]]:
    return {
        str(event.data["agent_alias"]): (event.call_id, event.parent_call_id)  # type: ignore[index,misc]
        for event in sink.of_kind(EventKind.CALL_STARTED)
    }


async def test_a_reply_names_the_call_that_made_it_not_the_call_that_consumed_it() -> None:
    sink = ListEventSink()
    async with MiniAgents(store=sink):
        await outer.inquire("asked outside any agent").aresolve_messages()
    calls = _calls(sink)
    events = _message_events(sink)
    # "made by inner" is resolved first by OUTER's reply sequence (which consumes INNER's), yet INNER made it
    assert (events["made by inner"].call_id, events["made by inner"].parent_call_id) == calls["INNER"]
    assert (events["a streamed answer"].call_id, events["a streamed answer"].parent_call_id) == calls[
        "STAND_IN_LLM_AGENT"
    ]
    assert (events["sent by outer"].call_id, events["sent by outer"].parent_call_id) == calls["OUTER"]
    assert (events["streamed by the LLM"].call_id, events["streamed by the LLM"].parent_call_id) == calls["INNER"]
    assert (events["wrapper"].call_id, events["wrapper"].parent_call_id) == calls["OUTER"]
    asked = events["asked outside any agent"]
    assert (asked.call_id, asked.parent_call_id) == (None, None)
    assert calls["INNER"][1] == calls["OUTER"][0] and calls["STAND_IN_LLM_AGENT"][1] == calls["INNER"][0]


async def test_sub_messages_name_the_message_they_are_nested_in_and_come_first() -> None:
    sink = ListEventSink()
    async with MiniAgents(store=sink):
        await outer.inquire().aresolve_messages()
    events = _message_events(sink)
    wrapper, quoted, deep = events["wrapper"], events["quoted"], events["deep"]
    assert deep.payload == MessagePayload(parent=quoted.hash_key) and deep.data == {"parent": quoted.hash_key}
    assert quoted.payload == MessagePayload(parent=wrapper.hash_key)
    assert wrapper.payload is None and wrapper.data is None  # not nested in anything
    order = [event.hash_key for event in sink.of_kind(EventKind.MESSAGE)]
    assert order.index(deep.hash_key) < order.index(quoted.hash_key) < order.index(wrapper.hash_key)
    assert quoted.call_id == deep.call_id == wrapper.call_id


async def test_the_stored_events_keep_the_fields_verify_and_replay_with_the_same_fingerprint() -> None:
    store = MemoryStore()
    recording = MiniAgents(replay=Replay(store, mode="once"))
    async with recording:
        recorded = await outer.inquire("question").aresolve_messages()
    replayed_fingerprint = FingerprintSink()
    async with MiniAgents(replay=Replay(store, mode="none"), store=replayed_fingerprint):
        replayed = await outer.inquire("question").aresolve_messages()
    assert replayed == recorded
    async with store:
        assert (await store.averify()).ok
        assert recording.run_id is not None
        assert await afingerprint(store, recording.run_id) == replayed_fingerprint.fingerprint
        stored = [
            event
            for event in await store.aget_events(recording.run_id, kinds=[EventKind.MESSAGE])
            if event.data is not None
        ]
        assert [type(event.payload) for event in stored] == [MessagePayload, MessagePayload]
        assert {event.parent_call_id for event in await store.aget_events(recording.run_id)} > {None}


async def test_a_message_event_says_its_sub_messages_came_before_it() -> None:
    sink = ListEventSink()
    async with MiniAgents(store=sink):
        await outer.inquire("asked outside any agent").aresolve_messages()
    seen: set[str] = set()
    events = sink.of_kind(EventKind.MESSAGE)
    for event in events:
        assert isinstance(event.obj, Message) and event.sub_messages_emitted
        assert {sub.hash_key for sub in event.obj.sub_messages()} <= seen, event.obj
        seen.add(str(event.hash_key))
    assert any(any(True for _ in event.obj.sub_messages()) for event in events if isinstance(event.obj, Message))
    # an event built by anyone else promises nothing: a store then looks for the nested messages itself
    assert not Event(EventKind.MESSAGE, "run", 0.0).sub_messages_emitted
