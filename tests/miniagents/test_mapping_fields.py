"""Declared mapping fields (`dict[str, int]`, `Mapping[...]`, ...): validated by pydantic, read back as read-only
`FrozenDict`s, and canonically the same as the same dict in an undeclared field."""

import copy
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import pytest
from pydantic import ValidationError

from miniagents import MiniAgents
from miniagents.errors import FrozenValueError
from miniagents.messages import Message
from miniagents.promising.ext.frozen import MAX_NESTING_DEPTH, Frozen, FrozenDict
from store.sqlite import SQLiteStore


class Scores(Message):
    scores: dict[str, int] = {}


class Config(Message):
    options: dict[str, Any] = {}
    nested: dict[str, dict[str, int]] = {}
    rows: list[dict[str, int]] = []
    maybe: Optional[Mapping[str, float]] = None
    typed: FrozenDict[str, int] = FrozenDict()


def undeclared(cls: type[Message]) -> type[Message]:
    """A class of the same name whose fields are all undeclared (extra) ones."""
    return type(cls.__name__, (Message,), {"__module__": __name__, "__qualname__": f"undeclared.{cls.__name__}"})


CONFIG_VALUES: dict[str, Any] = {
    "options": {"a": {"b": [1, {"c": 2}]}, "message": Message(text="m"), "empty": {}},
    "nested": {"x": {"y": 1}},
    "rows": [{"a": 1}, {}],
    "maybe": {"f": 1.5},
    "typed": {"t": 3},
}


def test_a_declared_dict_field_takes_dicts_and_reads_back_a_read_only_mapping() -> None:
    assert Scores().scores == {} and type(Scores().scores) is FrozenDict  # the default too
    scores = Scores(scores={"b": 2, "a": 1})
    assert scores.scores == {"b": 2, "a": 1}
    assert isinstance(scores.scores, Mapping) and isinstance(scores.scores, dict)
    assert scores.scores["a"] == 1 and list(scores.scores) == ["b", "a"]
    for change in (
        lambda mapping: mapping.__setitem__("c", 3),
        lambda mapping: mapping.__delitem__("a"),
        lambda mapping: mapping.update(c=3),
        lambda mapping: mapping.pop("a"),
        lambda mapping: mapping.popitem(),
        lambda mapping: mapping.setdefault("c", 3),
        lambda mapping: mapping.clear(),
    ):
        with pytest.raises(TypeError, match="A FrozenDict is read-only"):
            change(scores.scores)
    assert scores.scores == {"b": 2, "a": 1}
    assert hash(scores) == hash(Scores(scores={"a": 1, "b": 2}))
    assert hash(scores.scores) == hash(FrozenDict(a=1, b=2))


def test_values_are_validated_as_pydantic_validates_them() -> None:
    assert Scores(scores={"a": "2"}).scores == {"a": 2}
    with pytest.raises(ValidationError, match=r"scores\.a"):
        Scores(scores={"a": "two"})
    with pytest.raises(ValidationError, match="valid dictionary"):
        Scores(scores=[1, 2])


def test_canonical_form_is_that_of_the_same_dict_undeclared() -> None:
    scores = Scores(scores={"b": 2, "a": 1})
    expected = b'{"class_":"Scores","scores":{"a":1,"b":2,"class_":"Frozen"},"text":null,"text_template":null}'
    assert scores.canonical_bytes == expected
    same_undeclared = undeclared(Scores)(scores={"b": 2, "a": 1})
    assert same_undeclared.canonical_bytes == expected
    assert same_undeclared.hash_key == scores.hash_key
    assert scores.serialize() == same_undeclared.serialize()

    config = Config(**CONFIG_VALUES)
    config_undeclared = undeclared(Config)(**CONFIG_VALUES)
    assert config.canonical_bytes == config_undeclared.canonical_bytes
    assert config.serialize() == config_undeclared.serialize()
    assert config.serialize()["options"]["message__hash_key"] == Message(text="m").hash_key
    assert config.full_json == config_undeclared.full_json


def test_nested_mappings_are_read_only_mappings_all_the_way_down() -> None:
    config = Config(**CONFIG_VALUES)
    assert type(config.options["a"]) is FrozenDict and config.options["a"]["b"] == (1, {"c": 2})
    assert type(config.options["a"]["b"][1]) is FrozenDict
    assert config.options["message"] == Message(text="m")  # messages stay messages
    assert type(config.nested["x"]) is FrozenDict
    assert config.rows == ({"a": 1}, {}) and all(type(row) is FrozenDict for row in config.rows)
    assert type(config.maybe) is FrozenDict and config.maybe == {"f": 1.5}
    assert config.typed == {"t": 3}
    assert list(config.sub_messages()) == [Message(text="m")]


def test_a_frozen_dict_freezes_what_it_is_given() -> None:
    frozen = FrozenDict({"a": [1, {"b": 2}]}, c="x")
    assert frozen == {"a": (1, {"b": 2}), "c": "x"} and type(frozen["a"][1]) is FrozenDict
    with pytest.raises(FrozenValueError, match=r"^FrozenDict\.a\[1\] holds nan"):
        FrozenDict(a=[1, float("nan")])
    assert Message(copied=frozen).copied == Frozen(a=(1, Frozen(b=2)), c="x")  # undeclared: a Frozen, as any dict


@pytest.mark.parametrize(
    ("scores", "expected_message"),
    [
        ({"class_": 1}, r"^Scores\.scores\.class_: a declared mapping field cannot hold the key 'class_'"),
        ({"x__hash_key": 1}, r"^Scores\.scores\.x__hash_key: field names ending in '__hash_key' are reserved"),
    ],
)
def test_keys_the_canonical_form_needs_are_refused(scores: dict[str, Any], expected_message: str) -> None:
    with pytest.raises(FrozenValueError, match=expected_message):
        Scores(scores=scores)


def test_non_string_keys_are_refused_after_validation() -> None:
    class ById(Message):
        names: dict[int, str] = {}

    with pytest.raises(FrozenValueError, match=r"^ById\.names is a dict with the key 1 \(int\)"):
        ById(names={1: "one"})


def test_secret_keys_are_redacted_as_in_an_undeclared_dict() -> None:
    class Headers(Message):
        headers: dict[str, str] = {}

    headers = Headers(headers={"Authorization": "Bearer abc123456789", "accept": "json"})
    assert headers.headers == {"Authorization": "[REDACTED]", "accept": "json"}
    assert b"abc123456789" not in headers.canonical_bytes
    assert headers.canonical_bytes == undeclared(Headers)(headers=dict(headers.headers)).canonical_bytes


def test_deep_and_self_referencing_mappings_are_refused_naming_the_path() -> None:
    class Options(Message):
        options: dict[str, Any] = {}

    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_NESTING_DEPTH - 1):
        deep = {"a": deep}
    assert Options(options=deep).canonical_bytes == undeclared(Options)(options=deep).canonical_bytes
    with pytest.raises(FrozenValueError, match=r"^Options\.options(\.a){6}…<988 more levels>…(\.a){6} is nested 1001"):
        Options(options={"a": deep})
    looped: dict[str, Any] = {"x": [1]}
    looped["x"].append(looped)
    # pydantic validated a copy of the outer dict, so the cycle closes one level down, in the dict given
    with pytest.raises(FrozenValueError, match=r"^Options\.options\.x\[1\]\.x is Options\.options\.x again"):
        Options(options=looped)


@pytest.mark.parametrize(
    "make_copy",
    [
        copy.copy,
        copy.deepcopy,
        lambda obj: pickle.loads(pickle.dumps(obj)),
        lambda obj: obj.model_copy(),
        lambda obj: type(obj).model_validate(obj.frozen_fields_and_values()),
    ],
    ids=["copy", "deepcopy", "pickle", "model_copy", "validate_again"],
)
def test_copies_keep_read_only_mappings(make_copy: Any) -> None:
    config = Config(**CONFIG_VALUES)
    copied = make_copy(config)
    assert copied == config and copied.hash_key == config.hash_key
    assert type(copied.options) is FrozenDict and type(copied.options["a"]) is FrozenDict


def test_model_copy_validates_the_update() -> None:
    scores = Scores(scores={"a": 1})
    assert scores.model_copy(update={"scores": {"b": "2"}}).scores == {"b": 2}
    with pytest.raises(ValidationError):
        scores.model_copy(update={"scores": {"b": "two"}})


def test_a_plain_frozen_is_taken_as_the_dict_it_stands_for() -> None:
    # a stored message is rebuilt with its mapping fields as plain Frozen objects: same canonical form
    assert Scores(scores=Frozen(a=1, b=2)).scores == {"a": 1, "b": 2}
    config = Config(**CONFIG_VALUES)
    rebuilt_fields = {**undeclared(Config)(**CONFIG_VALUES).frozen_fields_and_values(), "class_": "Config"}
    assert Config.model_validate(rebuilt_fields) == config


async def test_a_recorded_message_with_mapping_fields_is_rebuilt_as_its_class(tmp_path: Path) -> None:
    config = Config(**CONFIG_VALUES)
    async with MiniAgents(store=SQLiteStore(tmp_path / "mapping.db")):
        await config.as_promise
    async with SQLiteStore(tmp_path / "mapping.db") as store:
        rebuilt = await store.aget(config.hash_key)
    assert type(rebuilt) is Config and rebuilt is not config
    assert rebuilt == config and type(rebuilt.options) is FrozenDict
