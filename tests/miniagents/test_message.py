"""Message: serialization with sub-message references, sub_messages(), promises, on_persist_message."""

import asyncio
import copy
import gc
import pickle
from collections.abc import AsyncIterator
from typing import Any, Union

import pytest
from blake3 import blake3
from pydantic import AliasPath, ConfigDict, Field, model_validator

import miniagents.messages as messages_module
import miniagents.promising.ext.frozen as frozen_module
from miniagents import EventKind, InteractionContext, ListEventSink, MiniAgents, miniagent
from miniagents.errors import FrozenValueError
from miniagents.messages import Message, MessagePromise, _text_message
from miniagents.promising.errors import PromisingError
from miniagents.promising.ext.frozen import Frozen
from miniagents.promising.promising import Promise, PromisingContext
from miniagents.promising.sentinels import DEFAULT, Sentinel
from miniagents.run_recording import _EMITTED_BY

START_ASAP_MODES = [False, True, DEFAULT]


class SpecialNode(Frozen):
    pass


def blake3_40(text: str) -> str:
    return blake3(text.encode("utf-8")).hexdigest()[:40]


def test_nested_messages_are_serialized_as_hash_references() -> None:
    nested = Message(text="nested_text")
    nested2 = Message(text="nested_text2")
    nested3 = Message(text="nested_text3")
    message = Message(
        text="юнікод",
        extra_field=[15, {"role": "user", "nested_nested": (nested, nested2), "nested_nested2": [nested2]}],
        extra_node=SpecialNode(nested_nested=nested3),
        nested_message=nested,
    )
    assert nested.hash_key == blake3_40('{"class_":"Message","text":"nested_text","text_template":null}')
    expected = {
        "class_": "Message",
        "text": "юнікод",
        "text_template": None,
        "extra_field": (
            15,
            {
                "class_": "Frozen",
                "role": "user",
                "nested_nested__hash_keys": (nested.hash_key, nested2.hash_key),
                "nested_nested2__hash_keys": (nested2.hash_key,),
            },
        ),
        "extra_node": {"class_": "SpecialNode", "nested_nested__hash_key": nested3.hash_key},
        "nested_message__hash_key": nested.hash_key,
    }
    assert message.serialize() == expected
    expected_json = (
        '{"class_":"Message","extra_field":[15,{"class_":"Frozen",'
        f'"nested_nested2__hash_keys":["{nested2.hash_key}"],'
        f'"nested_nested__hash_keys":["{nested.hash_key}","{nested2.hash_key}"],"role":"user"}}],'
        f'"extra_node":{{"class_":"SpecialNode","nested_nested__hash_key":"{nested3.hash_key}"}},'
        f'"nested_message__hash_key":"{nested.hash_key}","text":"юнікод","text_template":null}}'
    )
    assert message.canonical_bytes == expected_json.encode("utf-8")
    assert message.hash_key == blake3_40(expected_json)
    assert list(message.sub_messages()) == [nested, nested2, nested2, nested3, nested]


def test_sub_messages_come_before_their_parent_depth_first() -> None:
    leaf = Message(text="leaf")
    middle = Message(text="middle", child=leaf)
    top = Message(text="top", children=[middle, Message(text="sibling")])
    assert [message.text for message in top.sub_messages()] == ["leaf", "middle", "sibling"]


def test_a_plain_frozen_spells_nested_messages_out() -> None:
    nested = Message(text="n")
    assert Frozen(inner=nested).serialize() == {
        "class_": "Frozen",
        "inner": {"class_": "Message", "text": "n", "text_template": None},
    }


def test_messages_mixed_with_other_values_in_one_list_are_refused() -> None:
    with pytest.raises(FrozenValueError, match=r"Message\.items mixes messages with other values"):
        Message(items=[Message(text="a"), "b"])
    with pytest.raises(FrozenValueError, match=r"Message\.items holds a list of messages inside another list"):
        Message(items=[[Message(text="a")]])


def test_text_positional_and_string_forms() -> None:
    assert Message("hi").text == "hi"
    assert str(Message("hi")) == "hi"
    assert str(Message(text_template="{greeting}, {name}!", greeting="Hello", name="Ann")) == "Hello, Ann!"
    assert str(Message(role="user")) == '{"class_":"Message","role":"user","text":null,"text_template":null}'


async def test_a_message_token_streamer_builds_the_message_from_tokens_and_metadata() -> None:
    async def token_streamer(metadata_so_far: dict[str, Any]) -> AsyncIterator[str]:
        yield "Hel"
        yield "lo"
        metadata_so_far["finish_reason"] = "stop"

    class ReplyMessage(Message):
        role: str = "assistant"

    async with PromisingContext():
        promise = ReplyMessage.promise(message_token_streamer=token_streamer, model="m1")
        assert isinstance(promise, MessagePromise)
        assert promise.preliminary_metadata.model == "m1"  # type: ignore[attr-defined]
        assert [token async for token in promise] == ["Hel", "lo"]
        message = await promise
        assert message == ReplyMessage(text="Hello", model="m1", finish_reason="stop")
        chunks, offsets = promise.chunk_record()
        assert chunks == ["Hel", "lo"]
        assert len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]


async def test_a_token_that_is_not_a_string_becomes_an_error_at_its_position() -> None:
    async def token_streamer(_: dict[str, Any]) -> AsyncIterator[Any]:
        yield "a"
        yield 5

    async with PromisingContext():
        promise = Message.promise(message_token_streamer=token_streamer)
        iterator = promise.__aiter__()
        assert await iterator.__anext__() == "a"
        with pytest.raises(TypeError, match="yielded a int; tokens must be strings"):
            await iterator.__anext__()


async def test_message_promise_arguments_are_checked() -> None:
    async with PromisingContext():
        with pytest.raises(PromisingError, match="needs a `message_token_streamer` or a `prefill_message`"):
            MessagePromise()
        with pytest.raises(PromisingError, match="not both"):
            MessagePromise(prefill_message=Message(text="a"), extra=1)
        prefilled = Message.promise(text="ready", n=1)
        assert [token async for token in prefilled] == ["ready"]
        assert await prefilled == Message(text="ready", n=1)


async def persist_counters(**kwargs: Any) -> tuple[list[Any], list[Any], MiniAgents]:
    resolved: list[Any] = []
    persisted: list[Any] = []

    async def on_promise_resolved(_: Any, result: Any) -> None:
        resolved.append(result)

    async def on_persist_message(_: Any, message: Message) -> None:
        persisted.append(message)

    return (
        resolved,
        persisted,
        MiniAgents(on_promise_resolved=on_promise_resolved, on_persist_message=on_persist_message),
    )


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_on_persist_message_sees_one_message_object_once(start_asap: Union[bool, Sentinel]) -> None:
    resolved, persisted, mini_agents = await persist_counters()
    message = Message()
    async with mini_agents:
        Promise(prefill_result=message, start_asap=start_asap)
        Promise(prefill_result=message, start_asap=start_asap)
    assert len(resolved) == 2
    assert persisted == [message]


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_on_persist_message_sees_two_messages_twice(start_asap: Union[bool, Sentinel]) -> None:
    resolved, persisted, mini_agents = await persist_counters()
    first, second = Message(), Message()
    async with mini_agents:
        Promise(prefill_result=first, start_asap=start_asap)
        Promise(prefill_result=second, start_asap=start_asap)
    assert len(resolved) == 2
    assert len(persisted) == 2 and persisted[0] is first and persisted[1] is second


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_on_persist_message_ignores_values_that_are_not_messages(start_asap: Union[bool, Sentinel]) -> None:
    resolved, persisted, mini_agents = await persist_counters()
    not_a_message = Frozen(some_field="not a message")
    async with mini_agents:
        Promise(prefill_result=not_a_message, start_asap=start_asap)
        Promise(prefill_result=not_a_message, start_asap=start_asap)
    assert len(resolved) == 2
    assert persisted == []


async def test_on_persist_message_sees_sub_messages_first_without_a_task_per_message() -> None:
    persisted: list[str] = []
    running_handlers = 0
    max_running = 0

    async def handler(_: Any, message: Message) -> None:
        nonlocal running_handlers, max_running
        running_handlers += 1
        max_running = max(max_running, running_handlers)
        await asyncio.sleep(0)
        persisted.append(message.text or "")
        running_handlers -= 1

    leaf = Message(text="leaf")
    top = Message(text="top", child=Message(text="middle", child=leaf), again=leaf)
    async with MiniAgents(on_persist_message=handler) as mini_agents:
        tasks_before = len(mini_agents.child_tasks)
        for index in range(50):
            Promise(prefill_result=Message(text=f"m{index}"))
        Promise(prefill_result=top)
        assert len(mini_agents.child_tasks) - tasks_before == 1  # one worker, not one task per message
    assert persisted[-3:] == ["leaf", "middle", "top"]
    assert persisted[:50] == [f"m{index}" for index in range(50)]
    assert max_running == 1


async def test_a_failing_persist_handler_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    async def failing(_: Any, message: Message) -> None:
        raise RuntimeError("handler broke")

    async def working(_: Any, message: Message) -> None:
        seen.append(message.text or "")

    async with MiniAgents(on_persist_message=[failing, working]):
        Promise(prefill_result=Message(text="a"))
        Promise(prefill_result=Message(text="b"))
    assert seen == ["a", "b"]
    assert "on_persist_message handler failed" in caplog.text


@pytest.mark.parametrize(
    ("build", "expected_path"),
    [
        (lambda: Message(text="t", ref__hash_key="0" * 40), r"^Message\.ref__hash_key: .*'__hash_key' are reserved"),
        (lambda: Message(refs__hash_keys=["0" * 40]), r"^Message\.refs__hash_keys: .*'__hash_keys' are reserved"),
        (lambda: Message(meta={"ref__hash_key": "x"}), r"^Message\.meta\.ref__hash_key: "),
        (lambda: Message(items=[{"a": {"b__hash_keys": ()}}]), r"^Message\.items\[0\]\.a\.b__hash_keys: "),
        (lambda: Frozen(x__hash_key=None), r"^Frozen\.x__hash_key: "),
        (lambda: Message.model_validate({"__hash_key": 1}), r"^Message\.__hash_key: "),
    ],
)
def test_field_names_of_hash_references_are_refused_at_any_depth(build: Any, expected_path: str) -> None:
    with pytest.raises(FrozenValueError, match=expected_path) as error:
        build()
    assert "same hash key" in str(error.value)


def test_declared_fields_named_like_hash_references_are_refused_with_the_class() -> None:
    with pytest.raises(FrozenValueError, match=r"^Forged\.ref__hash_key: field names ending in '__hash_key'"):

        class Forged(Message):
            ref__hash_key: str = ""


def test_a_message_and_a_field_holding_its_hash_key_never_share_a_hash_key() -> None:
    inner = Message(text="inner")
    with pytest.raises(FrozenValueError):
        Message(text="outer", ref__hash_key=inner.hash_key)
    # names that only contain the suffixes, or end in a single underscore version of them, are ordinary fields
    ordinary = Message(parent_hash_key="a", hash_keys=("b",), ref__hash_key_old="c", x__hash_keys_v2=1)
    assert ordinary.parent_hash_key == "a"  # type: ignore[attr-defined]
    assert list(ordinary.sub_messages()) == []


async def test_a_message_derived_with_model_copy_is_recorded_as_a_message_of_its_own() -> None:
    sink = ListEventSink()
    async with MiniAgents(store=sink):
        original = Message(text="original", score=1)
        await original.as_promise
        derived = original.model_copy(update={"text": "changed", "score": 2})
        assert str(derived) == "changed"
        assert derived.hash_key == Message(text="changed", score=2).hash_key != original.hash_key
        await derived.as_promise
        for copied in (copy.copy(original), copy.deepcopy(original)):
            assert copied == original
            assert _EMITTED_BY not in copied.__dict__
        assert _EMITTED_BY in original.__dict__
    recorded = [event.hash_key for event in sink.of_kind(EventKind.MESSAGE)]
    assert recorded == [original.hash_key, derived.hash_key]


class _Text(str):
    pass


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "",
        "  spaces\nand lines ",
        "key sk-abcdefghijklmnopqrstuvwxyz0123 here",
        "Bearer abc.def",
        "ünïcode",
        _Text("x"),
    ],
)
def test_text_message_is_built_like_message(text: str) -> None:
    """The shortcut that turns strings sent to and replied by agents into messages builds what `Message` does."""
    expected = Message(text=text)
    built = _text_message(text)
    assert type(built) is Message
    for attribute in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
        assert getattr(built, attribute) == getattr(expected, attribute)
        assert type(getattr(built, attribute)) is type(getattr(expected, attribute))
    assert list(built.__dict__) == list(expected.__dict__)
    assert built == expected
    assert repr(built) == repr(expected)
    assert built.hash_key == expected.hash_key
    assert built.canonical_bytes == expected.canonical_bytes


class _Note(Message):
    topic: str = ""


def test_objects_built_with_the_same_keys_share_their_field_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """`model_fields_set` is what pydantic says, and one shared set for every object built from the same keys."""
    monkeypatch.setattr(frozen_module, "FIELD_NAMES_BY_KEYS", {})  # (not one other tests nearly filled)
    monkeypatch.setattr(messages_module, "FIELD_NAMES_BY_KEYS", frozen_module.FIELD_NAMES_BY_KEYS)
    first, second = Message(text="a", n=1), Message(text="b", n=2)
    assert first.model_fields_set == {"class_", "text", "n"}
    assert first.__pydantic_fields_set__ is second.__pydantic_fields_set__
    assert Message(n=3).model_fields_set == {"class_", "text", "n"}  # `text` is passed, as None
    assert Message(text="c").__pydantic_fields_set__ is Message(text="e").__pydantic_fields_set__
    assert Message(text="c").model_fields_set == _text_message("d").model_fields_set == {"class_", "text"}
    assert Message(text="c", m=1).model_fields_set == {"class_", "text", "m"}

    one, other = Message(data={"x": 1, "y": {"z": 2}}), Message(data={"x": 5, "y": {"z": 6}})
    assert one.data.model_fields_set == {"class_", "x", "y"}
    assert one.data.y.model_fields_set == {"class_", "z"}
    assert one.data.__pydantic_fields_set__ is other.data.__pydantic_fields_set__
    assert one.data.y.__pydantic_fields_set__ is other.data.y.__pydantic_fields_set__

    note = _Note(text="a", n=1)
    assert note.model_fields_set == {"class_", "text", "n"}
    assert note.__pydantic_fields_set__ is not first.__pydantic_fields_set__  # (keyed by class too)
    assert _Note(text="a", topic="t").model_fields_set == {"class_", "text", "topic"}


def test_shared_field_names_cannot_change_and_copies_get_their_own() -> None:
    message = Message(text="a", n=1)
    names = message.model_fields_set
    for change in (
        lambda: names.add("m"),
        lambda: names.discard("n"),
        lambda: names.remove("n"),
        lambda: names.pop(),
        lambda: names.clear(),
        lambda: names.update({"m"}),
        lambda: names.difference_update({"n"}),
        lambda: names.intersection_update({"n"}),
        lambda: names.symmetric_difference_update({"n"}),
    ):
        with pytest.raises(TypeError, match=r"cannot change \(\['class_', 'n', 'text'\]\).*model_copy"):
            change()
    with pytest.raises(TypeError, match="cannot change"):
        names |= {"m"}
    assert Message(text="b", n=2).model_fields_set == {"class_", "text", "n"}  # nothing changed for the others

    assert message.model_dump(exclude_unset=True) == {"class_": "Message", "text": "a", "n": 1}
    assert message.model_dump_json(exclude_unset=True) == '{"class_":"Message","text":"a","n":1}'
    for copied in (copy.copy(message), copy.deepcopy(message), pickle.loads(pickle.dumps(message))):
        assert copied == message
        assert copied.model_fields_set == {"class_", "text", "n"}
        copied.model_fields_set.add("m")  # a set of its own, which changes nothing for the original
        assert message.model_fields_set == {"class_", "text", "n"}


class _Tagged(Message):
    @model_validator(mode="before")
    @classmethod
    def _tag_urgent(cls, values: Any) -> Any:
        return {**values, "priority": 1} if isinstance(values, dict) and values.get("text") == "urgent" else values


class _Unfrozen(Message):
    model_config = ConfigDict(frozen=False)


class _Preprocessed(Message):
    @classmethod
    def _preprocess_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in values.items() if value is not None}


class _PostInit(Message):
    score: float = 0.0  # (a float field: the library's own `model_post_init` freezes it, then calls this one)

    def model_post_init(self, context: Any, /) -> None:
        if self.score < 0:
            self.__pydantic_fields_set__.discard("score")


class _AliasPath(Message):
    first: Any = Field(None, validation_alias=AliasPath("items", 0))


def test_classes_whose_own_validation_decides_the_fields_keep_sets_of_their_own() -> None:
    """A validator, `_preprocess_values` or `model_post_init` of a class's own, or an alias path, may add or drop
    fields depending on the values, so the keys passed do not tell its field names; nor do they for a class that
    is not frozen (assigning a field adds its name)."""
    assert _Tagged(text="normal").model_fields_set == {"class_", "text"}
    assert _Tagged(text="urgent").model_fields_set == {"class_", "text", "priority"}
    assert _Preprocessed(text="x", note="n").model_fields_set == {"class_", "text", "note"}
    assert _Preprocessed(text="y", note=None).model_fields_set == {"class_", "text"}
    assert _PostInit(score=-1.0).model_fields_set == {"class_", "text"}
    assert _PostInit(score=2.0).model_fields_set == {"class_", "text", "score"}
    assert _AliasPath(items=[5]).model_fields_set == {"class_", "text", "first"}
    assert _AliasPath(items=[]).model_fields_set == {"class_", "text", "items"}
    unfrozen = _Unfrozen(text="a", n=1)
    unfrozen.n = 2
    unfrozen.extra = 3
    assert unfrozen.model_fields_set == {"class_", "text", "n", "extra"}
    assert _Unfrozen(text="b", n=1).model_fields_set == {"class_", "text", "n"}


def test_the_shared_field_names_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frozen_module, "_FIELD_NAMES_KEPT", 3)
    monkeypatch.setattr(frozen_module, "FIELD_NAMES_BY_KEYS", {})
    monkeypatch.setattr(messages_module, "FIELD_NAMES_BY_KEYS", frozen_module.FIELD_NAMES_BY_KEYS)
    monkeypatch.setattr(frozen_module, "_FOLLOW_KEYS", {})
    built = [Message(text="a", **{f"field_{index}": index}) for index in range(10)]
    assert len(frozen_module.FIELD_NAMES_BY_KEYS) <= 3
    for index, message in enumerate(built):
        assert message.model_fields_set == {"class_", "text", f"field_{index}"}
    classes_made_on_the_fly = [type(f"Made{index}", (Message,), {}) for index in range(10)]
    for cls in classes_made_on_the_fly:
        assert cls(text="a", n=1).model_fields_set == {"class_", "text", "n"}
    assert len(frozen_module._FOLLOW_KEYS) <= 3


@miniagent
async def _replier(ctx: InteractionContext, count: int, payload: str) -> None:
    for index in range(count):
        if payload == "dict":
            ctx.reply(Message(text=f"{index}", data={"n": index, "nested": {"x": 1.5}}))
        else:
            ctx.reply(f"reply {index}")


@pytest.mark.parametrize(("payload", "most_per_reply"), [("text", 2.2), ("dict", 6.2)])
async def test_kept_replies_leave_the_collector_few_objects_to_walk(payload: str, most_per_reply: float) -> None:
    """What a kept reply costs every full collection of Python's collector: the objects it keeps that the collector
    walks. A reply of text: the message and its promise (the reply sequence keeps it); of a dict nested in a dict:
    also the two frozen dicts and the two dicts of their fields. No set of field names of its own, no list of
    pieces for a promise known from the start (4 and 9 objects a reply before)."""
    count = 3000
    async with MiniAgents():
        warm = await _replier.inquire(count=10, payload=payload)
        gc.collect()
        before = len(gc.get_objects())
        replies = _replier.inquire(count=count, payload=payload)
        kept = await replies
        gc.collect()
        per_reply = (len(gc.get_objects()) - before) / count
        assert len(kept) == count and len(warm) == 10
        assert per_reply <= most_per_reply, per_reply


async def test_recording_a_message_leaves_its_fields_untracked_by_the_collector() -> None:
    """The mark of the run that recorded a message, kept in the message's `__dict__`, is a number: recording does
    not make the collector track that dict (a tuple did, until a collection found it holds nothing to walk)."""
    sink = ListEventSink()
    gc.disable()  # (a collection would untrack the dict either way)
    try:
        async with MiniAgents(store=sink):
            replies = await _replier.inquire(count=3, payload="text").aresolve_messages()
            assert all(not gc.is_tracked(message.__dict__) for message in replies)
            assert all(_EMITTED_BY in message.__dict__ for message in replies)
    finally:
        gc.enable()
    recorded = {event.hash_key for event in sink.events if event.kind is EventKind.MESSAGE}
    assert all(message.hash_key in recorded for message in replies)
