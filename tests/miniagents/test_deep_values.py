"""Deep values: up to MAX_NESTING_DEPTH levels frozen, hashed, encoded as orjson would, copied, pickled, compared
and shown without recursion; deeper values and values that contain themselves refused, naming the path."""

import copy
import itertools
import pickle
import random
from pathlib import Path
from typing import Any, Optional

import orjson
import pytest
from blake3 import blake3

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.errors import FrozenValueError
from miniagents.messages import Message
from miniagents.promising.ext import frozen as frozen_module
from miniagents.promising.ext.frozen import MAX_NESTING_DEPTH, Frozen, FrozenDict, canonical_json
from store.memory import MemoryStore
from store.sqlite import SQLiteStore

MESSAGE_TAIL = ',"text":null,"text_template":null}'


def blake3_40(data: bytes) -> str:
    return blake3(data).hexdigest()[:40]


def nested_dicts(levels: int) -> dict[str, Any]:
    """`levels` dicts nested in each other: {"a": {"a": ... {"leaf": 1}}}."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def nested_dicts_json(levels: int) -> str:
    """The canonical form of `nested_dicts(levels)` frozen: each dict a Frozen, keys sorted ("a" < "class_")."""
    text = '{"class_":"Frozen","leaf":1}'
    for _ in range(levels - 1):
        text = '{"a":' + text + ',"class_":"Frozen"}'
    return text


def nested_lists(levels: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(levels - 1):
        value = [value]
    return value


def message_chain(length: int) -> list[Message]:
    """`length` messages, each nesting the one before in its field `inner` (the last one nests all the others)."""
    chain = [Message(text="0")]
    for index in range(1, length):
        chain.append(Message(text=str(index), inner=chain[-1]))
    return chain


def test_a_message_holds_dicts_and_lists_nested_up_to_the_limit() -> None:
    message = Message(meta=nested_dicts(MAX_NESTING_DEPTH))
    expected = ('{"class_":"Message","meta":' + nested_dicts_json(MAX_NESTING_DEPTH) + MESSAGE_TAIL).encode()
    assert message.canonical_bytes == expected
    assert message.hash_key == blake3_40(expected)
    assert str(message) == message.full_json == expected.decode()  # no text: the JSON is its text form

    listed = Message(items=nested_lists(MAX_NESTING_DEPTH))
    expected = ('{"class_":"Message","items":' + "[" * MAX_NESTING_DEPTH + "1" + "]" * MAX_NESTING_DEPTH).encode()
    assert listed.canonical_bytes == expected + MESSAGE_TAIL.encode()
    assert listed.hash_key == blake3_40(listed.canonical_bytes)


def test_a_plain_frozen_up_to_the_limit_too() -> None:
    frozen = Frozen(meta=nested_dicts(MAX_NESTING_DEPTH))
    expected = '{"class_":"Frozen","meta":' + nested_dicts_json(MAX_NESTING_DEPTH) + "}"
    assert frozen.canonical_bytes == expected.encode()
    assert str(frozen) == expected


def test_one_level_more_is_refused_naming_the_path_shortened() -> None:
    with pytest.raises(
        FrozenValueError,
        match=(
            r"^Message\.meta(\.a){6}…<988 more levels>…(\.a){6} is nested 1001 levels deep in the Message; at most "
            r"MAX_NESTING_DEPTH \(1000\) dicts, lists and Frozen objects \(messages included\) may be nested in each "
            r"other\. Flatten the structure, or store the deep part as a JSON string\.$"
        ),
    ):
        Message(meta=nested_dicts(MAX_NESTING_DEPTH + 1))
    with pytest.raises(
        FrozenValueError, match=r"^Frozen\.items(\[0\]){6}…<988 more levels>…(\[0\]){6} is nested 1001"
    ):
        Frozen(items=nested_lists(MAX_NESTING_DEPTH + 1))
    with pytest.raises(FrozenValueError, match=r"^Message\.meta(\.a){6}…<988 more levels>…(\.a){6} is nested 1001"):
        Message(meta=nested_dicts(5000))  # found at the limit: what lies deeper is never walked


@pytest.mark.parametrize(
    ("build", "expected_message"),
    [
        (lambda: _self_referencing_dict(), r"^Message\.meta\.x\.y\[1\] is Message\.meta again: the value contains "),
        (lambda: _self_referencing_list(), r"^Message\.meta\[1\] is Message\.meta again"),
        (lambda: _dicts_referencing_each_other(), r"^Message\.meta\.b\.a is Message\.meta again"),
        (lambda: _cycle_below_the_top(), r"^Message\.meta\.top\.inner\[0\] is Message\.meta\.top again"),
    ],
)
def test_values_that_contain_themselves_are_refused_naming_where_the_cycle_closes(
    build: Any, expected_message: str
) -> None:
    with pytest.raises(FrozenValueError, match=expected_message):
        Message(meta=build())


def _self_referencing_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"x": {"y": [1]}}
    value["x"]["y"].append(value)
    return value


def _self_referencing_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def _dicts_referencing_each_other() -> dict[str, Any]:
    first: dict[str, Any] = {}
    first["b"] = {"a": first}
    return first


def _cycle_below_the_top() -> dict[str, Any]:
    top: dict[str, Any] = {"inner": []}
    top["inner"].append(top)
    return {"top": top}


def test_a_value_used_twice_is_not_a_cycle() -> None:
    shared = {"k": [1, 2]}
    message = Message(meta={"first": shared, "second": shared, "list": [shared, shared]})
    assert message.meta.first == message.meta.second == Frozen(k=(1, 2))  # type: ignore[attr-defined]


def test_a_chain_of_messages_up_to_the_limit_is_hashed_listed_and_refused_beyond() -> None:
    chain = message_chain(MAX_NESTING_DEPTH + 1)  # the last one nests MAX_NESTING_DEPTH messages
    top = chain[-1]
    inner_key = chain[-2].hash_key
    expected = f'{{"class_":"Message","inner__hash_key":"{inner_key}","text":"1000","text_template":null}}'
    assert top.canonical_bytes == expected.encode()
    for inner, outer in itertools.pairwise(chain):
        assert outer.serialize()["inner__hash_key"] == inner.hash_key
    assert list(top.sub_messages()) == chain[:-1]  # innermost first, each after the ones it nests
    with pytest.raises(
        FrozenValueError, match=r"^Message\.inner(\.inner){6}…<988 more levels>…(\.inner){6} is nested 1001 levels"
    ):
        Message(inner=top)
    with pytest.raises(
        FrozenValueError, match=r"^Message\.wrapped\[0\](\.inner){5}…<989 more levels>…(\.inner){6} is nested 1002"
    ):
        Message(wrapped=[top])


def test_hashing_a_long_chain_first_at_the_top_needs_no_recursion() -> None:
    chain = message_chain(MAX_NESTING_DEPTH + 1)
    top_key = chain[-1].hash_key  # nothing below was hashed before
    assert all("hash_key" in message.__dict__ for message in chain)
    rebuilt = message_chain(MAX_NESTING_DEPTH + 1)
    for message in rebuilt:  # hashed bottom up, one at a time
        assert message.hash_key
    assert rebuilt[-1].hash_key == top_key


def test_a_plain_frozen_spells_a_long_chain_out() -> None:
    chain = message_chain(MAX_NESTING_DEPTH)
    holder = Frozen(chain=chain[-1])
    parsed = orjson.loads(holder.full_json)  # orjson reads up to 1024 levels
    for _ in range(MAX_NESTING_DEPTH):
        parsed = parsed.get("chain") or parsed["inner"]
    assert parsed == {"class_": "Message", "text": "0", "text_template": None}
    assert holder.canonical_bytes == holder.full_json.encode()


class Node(Message):
    payload: Any = None
    child: Optional["Node"] = None


def node_chain(length: int) -> Node:
    node = Node(text="0")
    for index in range(1, length):
        node = Node(text=str(index), child=node)
    return node


def test_declared_fields_validate_deep_values() -> None:
    deep = Node(payload=nested_dicts(MAX_NESTING_DEPTH))
    assert type(deep.payload) is Frozen
    assert (
        deep.canonical_bytes
        == ('{"child":null,"class_":"Node","payload":' + nested_dicts_json(MAX_NESTING_DEPTH) + MESSAGE_TAIL).encode()
    )
    top = node_chain(MAX_NESTING_DEPTH + 1)
    assert Node.model_validate(top.frozen_fields_and_values()) == top
    assert top.model_copy(update={"text": "changed"}).child is top.child
    with pytest.raises(FrozenValueError, match=r"^Node\.child(\.child){6}…<988 more levels>…"):
        Node(child=top)
    with pytest.raises(FrozenValueError, match=r"^Node\.payload(\.a){6}…<988 more levels>…"):
        Node(payload=nested_dicts(MAX_NESTING_DEPTH + 1))


def deep_objects() -> list[Frozen]:
    return [
        Message(meta=nested_dicts(MAX_NESTING_DEPTH), items=nested_lists(MAX_NESTING_DEPTH)),
        message_chain(MAX_NESTING_DEPTH + 1)[-1],
        node_chain(MAX_NESTING_DEPTH + 1),
        Frozen(chain=message_chain(MAX_NESTING_DEPTH)[-1]),
    ]


@pytest.mark.parametrize(
    "make_copy",
    [copy.copy, copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj)), lambda obj: obj.model_copy()],
    ids=["copy", "deepcopy", "pickle", "model_copy"],
)
def test_deep_objects_are_copied_pickled_compared_and_hashed(make_copy: Any) -> None:
    for original in deep_objects():
        hash_key = original.hash_key
        copied = make_copy(original)
        assert type(copied) is type(original)
        assert copied == original and not copied != original
        assert hash(copied) == hash(original)
        assert copied.hash_key == hash_key
        assert "hash_key" not in make_copy(original).__dict__  # computed again by the copy, not inherited


def test_deep_objects_of_the_same_depth_still_compare_by_content() -> None:
    one, other = Message(meta=nested_dicts(MAX_NESTING_DEPTH)), Message(meta=nested_dicts(MAX_NESTING_DEPTH))
    assert one == other and one is not other
    different = nested_dicts(MAX_NESTING_DEPTH)
    innermost = different
    while "a" in innermost:
        innermost = innermost["a"]
    innermost["leaf"] = 2
    assert Message(meta=different) != one
    assert message_chain(MAX_NESTING_DEPTH)[-1] == message_chain(MAX_NESTING_DEPTH)[-1]
    assert node_chain(MAX_NESTING_DEPTH) != node_chain(MAX_NESTING_DEPTH - 1)


def test_repr_of_deep_objects() -> None:
    levels = MAX_NESTING_DEPTH
    expected = "Frozen(class_='Frozen', leaf=1)"
    for _ in range(levels - 1):
        expected = f"Frozen(class_='Frozen', a={expected})"
    message = Message(meta=nested_dicts(levels))
    assert repr(message) == f"Message(class_='Message', text=None, text_template=None, meta={expected})"
    assert repr(Frozen(items=nested_lists(3))) == "Frozen(class_='Frozen', items=(((1,),),))"


@pytest.mark.parametrize(
    "obj",
    [
        Message(text="x", meta={"a": [1, {"b": (2, "y")}], "e": []}, t=(1,), n=None, f=1.5),
        Frozen(inner=Message(text="m"), pair=(Message(text="a"), Message(text="b"))),
        node_chain(5),
        FrozenDict({"a": {"b": [1, {"c": 2}]}, "d": ()}),
    ],
)
def test_the_loop_that_shows_deep_objects_shows_what_repr_shows(obj: Any) -> None:
    assert frozen_module._deep_repr(obj) == repr(obj)


async def test_a_run_records_deep_messages() -> None:
    @miniagent
    async def echo(ctx: InteractionContext) -> None:
        ctx.reply(ctx.messages)

    chain = message_chain(MAX_NESTING_DEPTH + 1)
    deep = Message(text="deep", meta=nested_dicts(MAX_NESTING_DEPTH), items=nested_lists(MAX_NESTING_DEPTH))
    store = MemoryStore()
    async with MiniAgents(store=store):
        replies = await echo.inquire([chain[-1], deep]).aresolve_messages()
    assert replies == (chain[-1], deep)
    async with store:
        for message in (*chain, deep):
            assert await store.aget_bytes(message.hash_key) == message.canonical_bytes
        assert await store.aget(chain[-1].hash_key) == chain[-1]


async def test_a_recorded_chain_of_messages_is_rebuilt_from_its_bytes(tmp_path: Path) -> None:
    chain = message_chain(MAX_NESTING_DEPTH + 1)
    async with MiniAgents(store=SQLiteStore(tmp_path / "chain.db")):
        await chain[-1].as_promise
    async with SQLiteStore(tmp_path / "chain.db") as store:
        rebuilt = await store.aget(chain[-1].hash_key)
    assert rebuilt == chain[-1] and rebuilt is not chain[-1]
    assert rebuilt.hash_key == chain[-1].hash_key


async def test_a_recorded_deep_message_is_rebuilt_from_its_bytes(tmp_path: Path) -> None:
    deep = Message(text="deep", meta=nested_dicts(MAX_NESTING_DEPTH))
    async with MiniAgents(store=SQLiteStore(tmp_path / "deep.db")):
        await deep.as_promise
    async with SQLiteStore(tmp_path / "deep.db") as store:
        assert await store.aget(deep.hash_key) == deep


# the encoder used beyond orjson's depth limit writes exactly what orjson writes


KEY_CHARACTERS = ["a", "b", "Z", "_", "0", " ", "é", "ж", "\x00", "\x1f", "\x7f", '"', "\\", "/", "\n", "\u2028"]
KEY_CHARACTERS += ["\ud7ff", "\ue000", "\uffef", "\uffff", "\U00010000", "\U0001f600", "\U0010ffff"]
FLOATS = [0.0, -0.0, 1.5, 0.1, 1 / 3, 1e300, -1e-300, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308]
INTEGERS = [0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(KEY_CHARACTERS) for _ in range(rng.randint(0, 4)))


def random_leaf(rng: random.Random) -> Any:
    kind = rng.randint(0, 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice(FLOATS) * rng.choice([1, -1]) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9)
    if kind == 2:
        return rng.choice(INTEGERS) if rng.random() < 0.5 else rng.randint(-(10**6), 10**6)
    return random_text(rng)


def random_data(rng: random.Random, depth: int) -> Any:
    """Plain JSON data as orjson takes it: dicts, lists and tuples of leaves, at most `depth` containers deep."""
    if depth == 0 or rng.random() < 0.25:
        return random_leaf(rng)
    kind = rng.randint(0, 2)
    items = [random_data(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    if kind == 0:
        return {"k" + random_text(rng): item for item in items}
    return items if kind == 1 else tuple(items)


def test_the_deep_encoder_writes_what_orjson_writes() -> None:
    rng = random.Random(15)
    for _ in range(3000):
        data = random_data(rng, rng.randint(0, 7))
        assert frozen_module._encode_deep(data, orjson_depth=0) == orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        assert canonical_json(data) == orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def test_the_deep_encoder_sorts_keys_as_orjson_does() -> None:
    keys = [*KEY_CHARACTERS, "", "aa", "a\x00", "ab", "\U0001f600a", "\uffffz"]
    data = {key: index for index, key in enumerate(reversed(keys))}
    encoded = frozen_module._encode_deep(data, orjson_depth=0)
    assert encoded == orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    assert list(orjson.loads(encoded)) == sorted(keys)  # by code point: U+FFFF before U+10000 (not UTF-16 order)


def test_canonical_bytes_of_frozen_values_through_the_deep_encoder() -> None:
    rng = random.Random(6)
    messages = [Message(text=str(index), n=index) for index in range(5)]
    for _ in range(1000):
        fields = {"k" + random_text(rng): random_data(rng, rng.randint(0, 5)) for _ in range(rng.randint(0, 4))}
        if rng.random() < 0.3:
            fields["nested"] = rng.choice(messages)
        if rng.random() < 0.3:
            fields["several"] = [rng.choice(messages) for _ in range(rng.randint(1, 3))]
        for cls in (Message, Frozen):
            obj = cls(**fields)
            data = obj.serialize()
            assert frozen_module._encode_deep(data, orjson_depth=0) == obj.canonical_bytes
            assert obj.canonical_bytes == orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        messages.append(Message(**fields))


def test_the_deep_encoder_refuses_what_orjson_refuses() -> None:
    for data in ({1: "a"}, [2**64], [{"a": {1, 2}}]):
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        with pytest.raises(orjson.JSONEncodeError):
            frozen_module._encode_deep(data, orjson_depth=0)


def test_walking_in_a_loop_gives_what_walking_by_recursion_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    # values deeper than the recursion budget are serialized (and searched for messages) by a loop: force it
    from miniagents import messages as messages_module

    rng = random.Random(21)
    messages = [Message(text=str(index)) for index in range(3)]
    objects: list[Frozen] = []
    for _ in range(300):
        fields = {"k" + random_text(rng): random_data(rng, rng.randint(0, 6)) for _ in range(rng.randint(0, 4))}
        fields["message"] = rng.choice(messages)
        fields["listed"] = [{"inner": rng.choice(messages), "messages": messages[:2]}, (1, ({"x": [messages[0]]},))]
        objects.extend([Message(**fields), Frozen(**fields)])

    def sub_messages(obj: Frozen) -> list[Message]:
        return list(obj.sub_messages()) if isinstance(obj, Message) else []

    expected = [(obj.serialize(), obj.canonical_bytes, obj.full_json, sub_messages(obj)) for obj in objects]
    monkeypatch.setattr(messages_module, "_RECURSION_BUDGET", 0)
    monkeypatch.setattr(frozen_module, "_RECURSION_BUDGET", 0)
    for obj, (serialized, canonical_bytes, full_json, nested) in zip(objects, expected, strict=True):
        again = obj.model_copy()
        assert again.serialize() == serialized
        assert repr(again.serialize()) == repr(serialized)  # the same order of keys, the same tuples
        assert again.canonical_bytes == canonical_bytes and again.full_json == full_json
        assert [id(message) for message in sub_messages(again)] == [id(message) for message in nested]


def test_a_long_list_of_messages_is_kept_as_it_is_and_checked_like_a_short_one() -> None:
    replies = tuple(Message(text=str(index)) for index in range(1_000))
    assert Message(replies=replies).replies is replies  # frozen already: nothing is copied
    deepest = message_chain(MAX_NESTING_DEPTH)[-1]  # nested 999 levels: one level too deep inside a list
    for length in (1, 1_000):
        with pytest.raises(FrozenValueError, match=rf"^Message\.replies\[{length - 1}\].* is nested 1001 levels"):
            Message(replies=[*replies[: length - 1], deepest])
    with pytest.raises(FrozenValueError, match=r"^Message\.replies mixes messages with other values"):
        Message(replies=[*replies, Frozen(note="not a message")])
