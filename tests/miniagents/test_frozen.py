"""Frozen: immutability, canonical bytes, blake3 hash keys, refusal of values without one JSON form, redaction."""

import copy
import enum
import pickle
from typing import Any, Optional
from unittest.mock import patch

import pytest
from blake3 import blake3
from pydantic import ValidationError, field_validator

from miniagents.errors import FrozenValueError
from miniagents.promising.ext import frozen as frozen_module
from miniagents.promising.ext.frozen import REDACTION, Frozen, freeze
from miniagents.promising.promising import PromisingContext


class SampleModel(Frozen):
    some_req_field: str
    some_opt_field: int = 2
    sub_model: Optional["SampleModel"] = None


def blake3_40(text: str) -> str:
    return blake3(text.encode("utf-8")).hexdigest()[:40]


def test_subclass_fields_cannot_be_reassigned() -> None:
    sample = SampleModel(some_req_field="test")
    with pytest.raises(ValidationError):
        sample.some_req_field = "test2"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        sample.some_opt_field = 3  # type: ignore[misc]
    assert (sample.some_req_field, sample.some_opt_field) == ("test", 2)


def test_extra_fields_cannot_be_added_or_reassigned() -> None:
    model = Frozen(some_field="some value")
    with pytest.raises(ValidationError):
        model.some_other_field = "x"
    with pytest.raises(ValidationError):
        model.some_field = "x"
    assert model.some_field == "some value"  # type: ignore[attr-defined]


def test_hash_key_is_blake3_of_sorted_compact_utf8_json() -> None:
    sample = SampleModel(some_req_field="test", sub_model=SampleModel(some_req_field="юнікод", some_opt_field=3))
    sample._some_private_attribute = "private values may be set and do not change the hash"
    expected_json = (
        '{"class_":"SampleModel","some_opt_field":2,"some_req_field":"test","sub_model":'
        '{"class_":"SampleModel","some_opt_field":3,"some_req_field":"юнікод","sub_model":null}}'
    )
    assert sample.canonical_bytes == expected_json.encode("utf-8")
    assert sample.serialized == expected_json
    assert sample.hash_key == blake3_40(expected_json)
    assert len(sample.hash_key) == 40


def test_dicts_become_frozen_and_lists_become_tuples() -> None:
    model = Frozen(content="test", final_sender_alias="user", custom_field={"role": "user"}, items=[1, [2, 3]])
    assert isinstance(model.custom_field, Frozen)  # type: ignore[attr-defined]
    assert model.items == (1, (2, 3))  # type: ignore[attr-defined]
    expected_json = (
        '{"class_":"Frozen","content":"test","custom_field":{"class_":"Frozen","role":"user"},'
        '"final_sender_alias":"user","items":[1,[2,3]]}'
    )
    assert model.hash_key == blake3_40(expected_json)


async def test_longer_hash_keys_give_all_64_hex_characters() -> None:
    async with PromisingContext(longer_hash_keys=True):
        model = Frozen(a=1)
        assert model.hash_key == blake3(b'{"a":1,"class_":"Frozen"}').hexdigest()
        assert len(model.hash_key) == 64


def test_nested_objects_are_kept_not_copied() -> None:
    sub_model = SampleModel(some_req_field="test")
    assert SampleModel(some_req_field="test", sub_model=sub_model).sub_model is sub_model


def test_hash_key_is_computed_once() -> None:
    with patch.object(frozen_module, "blake3", side_effect=blake3) as hasher:
        sample = SampleModel(some_req_field="test")
        hasher.assert_not_called()
        first = sample.hash_key
        assert sample.hash_key == first
        hasher.assert_called_once()


def test_hashing_does_not_keep_a_second_copy_of_the_object_in_memory() -> None:
    sample = SampleModel(some_req_field="x" * 1000)
    hash_key = sample.hash_key
    assert "canonical_bytes" not in sample.__dict__  # a recorded message would otherwise carry 2x its size
    assert blake3(sample.encode_canonical()).hexdigest()[:40] == hash_key
    assert sample.encode_canonical() == sample.canonical_bytes  # kept from now on, because it was asked for
    assert sample.encode_canonical() is sample.canonical_bytes


def test_field_order_does_not_change_the_hash_key() -> None:
    assert Frozen(some_field="test", other=2).hash_key == Frozen(other=2, some_field="test").hash_key


def test_class_name_is_filled_in_and_must_match() -> None:
    assert SampleModel(some_req_field="x").class_ == "SampleModel"
    assert SampleModel(some_req_field="x", class_="SampleModel").class_ == "SampleModel"
    with pytest.raises(FrozenValueError, match="`class_` of a SampleModel must be 'SampleModel', got 'Other'"):
        SampleModel(some_req_field="x", class_="Other")


@pytest.mark.parametrize(
    ("value", "expected_message"),
    [
        (float("nan"), r"Frozen\.payload\[1\] holds nan, which has no JSON form"),
        (float("inf"), r"Frozen\.payload\[1\] holds inf"),
        (-float("inf"), r"Frozen\.payload\[1\] holds -inf"),
        (2**64, r"Frozen\.payload\[1\] holds the integer 18446744073709551616, which is outside 64 bits"),
        (-(2**63) - 1, r"outside 64 bits"),
        ({1: "a"}, r"Frozen\.payload\[1\] is a dict with the key 1 \(int\)"),
        ({"a", "b"}, r"Frozen\.payload\[1\] holds a set"),
        (object(), r"Frozen\.payload\[1\] holds a object"),
        (b"bytes", r"holds a bytes"),
        ("\ud800", r"Frozen\.payload\[1\] holds a string that is not valid Unicode"),
    ],
)
def test_values_without_one_canonical_json_form_are_refused_naming_the_field(
    value: Any, expected_message: str
) -> None:
    with pytest.raises(FrozenValueError, match=expected_message):
        Frozen(payload=["fine", value])


def test_boundary_integers_and_subclasses_of_plain_types_are_accepted() -> None:
    class Color(enum.Enum):
        RED = "red"

    class Number(enum.IntEnum):
        ONE = 1

    model = Frozen(low=-(2**63), high=2**64 - 1, color=Color.RED, number=Number.ONE, flag=True)
    assert model.serialize() == {
        "class_": "Frozen",
        "low": -(2**63),
        "high": 2**64 - 1,
        "color": "red",
        "number": 1,
        "flag": True,
    }
    assert type(model.number) is int  # type: ignore[attr-defined]


def test_non_string_field_names_are_refused() -> None:
    with pytest.raises(FrozenValueError, match="field names must be strings"):
        Frozen.model_validate({1: "x"})


def test_freeze_helper_names_the_value() -> None:
    assert freeze([1, {"a": [2]}]) == (1, Frozen(a=(2,)))
    with pytest.raises(FrozenValueError, match=r"value\.client holds a object"):
        freeze(object(), "client")


def test_secret_looking_fields_are_redacted_before_hashing() -> None:
    model = Frozen(api_key="sk-live-123", nested={"access_token": "t0k3n", "max_tokens": 5}, password=None)
    assert model.api_key == "[REDACTED]"  # type: ignore[attr-defined]
    assert model.nested.access_token == "[REDACTED]"  # type: ignore[attr-defined]
    assert model.nested.max_tokens == 5  # type: ignore[attr-defined]
    assert model.password is None  # type: ignore[attr-defined]
    assert b"sk-live-123" not in model.canonical_bytes
    assert b"t0k3n" not in model.canonical_bytes


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("OPENAI_API_KEY", True),
        ("x-api-key", True),
        ("authorization", True),
        ("refresh_token", True),
        ("client_secret", True),
        ("max_tokens", False),
        ("prompt_tokens", False),
        ("token_count", False),
        ("text", False),
    ],
)
def test_secret_name_rules(name: str, secret: bool) -> None:
    assert REDACTION.is_secret(name) is secret


def test_redaction_is_configurable() -> None:
    try:
        REDACTION.configure(names=["ssn"], marker="***")
        model = Frozen(ssn="123-45-6789", api_key="kept now")
        assert (model.ssn, model.api_key) == ("***", "kept now")  # type: ignore[attr-defined]
    finally:
        REDACTION.configure(names=REDACTION.DEFAULT_NAMES, marker="[REDACTED]")
    assert Frozen(api_key="x").api_key == "[REDACTED]"  # type: ignore[attr-defined]


def test_frozen_fields_and_string_forms() -> None:
    sample = SampleModel(some_req_field="a", extra=1)
    assert list(sample.frozen_fields()) == ["class_", "some_req_field", "some_opt_field", "sub_model", "extra"]
    assert list(sample.frozen_fields(exclude_class=True)) == ["some_req_field", "some_opt_field", "sub_model", "extra"]
    assert sample.frozen_fields_and_values() == {
        "some_req_field": "a",
        "some_opt_field": 2,
        "sub_model": None,
        "extra": 1,
    }
    assert (
        str(sample)
        == sample.full_json
        == ('{"class_":"SampleModel","extra":1,"some_opt_field":2,"some_req_field":"a","sub_model":null}')
    )


def test_hash_key_and_canonical_bytes_encodes_once_and_agrees_with_the_properties() -> None:
    message = SampleModel(some_req_field="hello")
    hash_key, body = message.hash_key_and_canonical_bytes()
    assert body == SampleModel(some_req_field="hello").canonical_bytes
    assert hash_key == SampleModel(some_req_field="hello").hash_key
    assert message.hash_key == hash_key
    assert message.hash_key_and_canonical_bytes() == (hash_key, None)  # the key is known now: nothing is encoded
    assert "canonical_bytes" not in message.__dict__  # and the bytes were not kept on the message


class Scored(Frozen):
    score: float = 0.0
    count: int = 0


class Tagged(Frozen):
    tags: list[str] = []
    ratios: tuple[float, ...] = ()


class Labelled(Frozen):
    labels: set[str] = set()


@pytest.mark.parametrize(
    ("fields", "expected_message"),
    [
        ({"score": "nan"}, r"^Scored\.score holds nan, which has no JSON form"),
        ({"score": "inf"}, r"^Scored\.score holds inf"),
        ({"score": "-inf"}, r"^Scored\.score holds -inf"),
        ({"score": "1e400"}, r"^Scored\.score holds inf"),
        ({"count": "1" * 30}, r"^Scored\.count holds the integer 1{30}, which is outside 64 bits"),
        ({"count": str(2**64)}, r"^Scored\.count holds the integer 18446744073709551616"),
    ],
)
def test_declared_fields_are_checked_after_pydantic_coerced_them(
    fields: dict[str, Any], expected_message: str
) -> None:
    with pytest.raises(FrozenValueError, match=expected_message):
        Scored(**fields)


def test_declared_fields_coerced_into_plain_values_are_kept() -> None:
    scored = Scored(score="1.5", count="3")
    assert (scored.score, scored.count) == (1.5, 3)
    assert scored.canonical_bytes == b'{"class_":"Scored","count":3,"score":1.5}'


def test_declared_list_fields_become_tuples_and_their_items_are_checked() -> None:
    tagged = Tagged(tags=("a", "b"), ratios=["0.5"])
    assert tagged.tags == ("a", "b") and type(tagged.tags) is tuple
    assert tagged.ratios == (0.5,)
    assert Tagged().tags == ()  # the default too
    assert tagged.hash_key == Tagged(tags=["a", "b"], ratios=[0.5]).hash_key
    with pytest.raises(FrozenValueError, match=r"^Tagged\.ratios\[1\] holds inf"):
        Tagged(ratios=["0.5", "inf"])


def test_declared_set_fields_are_refused_naming_the_field() -> None:
    with pytest.raises(FrozenValueError, match=r"^Labelled\.labels holds a set, which has no canonical order"):
        Labelled(labels=["x"])
    with pytest.raises(FrozenValueError, match=r"^Labelled\.labels holds a set"):
        Labelled()  # the default is a set as well


def test_declared_defaults_without_one_json_form_are_refused_when_used() -> None:
    class Unbounded(Frozen):
        limit: float = float("inf")

    assert Unbounded(limit=1).limit == 1
    with pytest.raises(FrozenValueError, match=r"^Unbounded\.limit holds inf"):
        Unbounded()


def test_values_returned_by_field_validators_are_frozen() -> None:
    class Normalized(Frozen):
        words: Optional[str] = None

        @field_validator("words", mode="after")
        @classmethod
        def _split(cls, value: Any) -> Any:
            return value.split() if value is not None else value

    assert Normalized(words="a b").words == ("a", "b")


def test_a_declared_enum_field_keeps_its_member() -> None:
    class Color(enum.Enum):
        RED = "red"

    class Painted(Frozen):
        color: Color = Color.RED

    assert Painted(color="red").color is Color.RED
    assert Painted().canonical_bytes == b'{"class_":"Painted","color":"red"}'


def test_model_post_init_of_a_subclass_still_runs_and_sees_frozen_values() -> None:
    seen: list[Any] = []

    class Watched(Frozen):
        tags: list[str] = []

        def model_post_init(self, context: Any, /) -> None:
            seen.append(self.tags)

    Watched(tags=["a"])
    assert seen == [("a",)]


def test_classes_with_only_plain_declared_fields_are_not_validated_twice() -> None:
    # building these is on the hot path: they get no post-validation step, so they cost nothing more to build
    from miniagents.ext.llm.llm_common import AssistantMessage, UserMessage
    from miniagents.messages import Message
    from miniagents.miniagents import AgentCallNode, AgentReplyNode

    class Linked(Frozen):
        name: str
        flag: bool = False
        anything: Any = None
        next: Optional["Linked"] = None

    for cls in (Frozen, Message, UserMessage, AssistantMessage, AgentCallNode, AgentReplyNode, Linked):
        assert cls.__pydantic_post_init__ is None, cls
    assert Scored.__pydantic_post_init__ is not None
    assert SampleModel.__pydantic_post_init__ is not None  # an `int` field accepts strings of 30 digits


@pytest.mark.parametrize(
    ("fields", "expected_message"),
    [
        ({"meta": {"score": float("nan")}}, r"^Frozen\.meta\.score holds nan"),
        ({"items": [{"ok": 1}, {"x": {1, 2}}]}, r"^Frozen\.items\[1\]\.x holds a set"),
        ({"usage": {"tokens": {"n": 2**70}}}, r"^Frozen\.usage\.tokens\.n holds the integer"),
        ({"usage": {"tokens": {1: "a"}}}, r"^Frozen\.usage\.tokens is a dict with the key 1 \(int\)"),
        ({"meta": {"class_": "Other"}}, r"^Frozen\.meta\.class_ is 'Other'; a dict becomes a Frozen"),
    ],
)
def test_errors_inside_nested_dicts_name_the_whole_path(fields: dict[str, Any], expected_message: str) -> None:
    with pytest.raises(FrozenValueError, match=expected_message):
        Frozen(**fields)


def test_nested_dicts_are_frozen_as_before() -> None:
    model = Frozen(meta={"a": [1, {"b": 2}], "class_": "Frozen", "api_key": "secret"})
    assert model.meta == Frozen(a=(1, Frozen(b=2)), api_key="[REDACTED]")  # type: ignore[attr-defined]
    assert type(model.meta.a) is tuple  # type: ignore[attr-defined]


def test_model_copy_builds_a_new_validated_object_with_its_own_hash_key() -> None:
    original = SampleModel(some_req_field="original", extra=1)
    original_key, original_text = original.hash_key, str(original)
    derived = original.model_copy(update={"some_req_field": "changed", "extra": [2, 3]})
    assert derived.some_req_field == "changed" and derived.extra == (2, 3)  # type: ignore[attr-defined]
    assert derived.hash_key == SampleModel(some_req_field="changed", extra=(2, 3)).hash_key != original_key
    assert str(derived) != original_text
    assert "hash_key" not in original.model_copy().__dict__
    assert original.model_copy() == original
    with pytest.raises(FrozenValueError, match=r"^SampleModel\.extra holds nan"):
        original.model_copy(update={"extra": float("nan")})
    with pytest.raises(FrozenValueError, match=r"^Scored\.score holds inf"):
        Scored().model_copy(update={"score": "inf"})


@pytest.mark.parametrize(
    "make_copy",
    [copy.copy, copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))],
    ids=["copy", "deep", "pickle"],
)
def test_copies_do_not_inherit_values_computed_once_or_marks(make_copy: Any) -> None:
    original = SampleModel(some_req_field="x", nested={"a": 1})
    _ = original.hash_key, original.canonical_bytes, original.as_string, original.nested.hash_key  # type: ignore[attr-defined]
    original.__dict__["_some_mark"] = 1  # like the core's "emitted already" mark
    copied = make_copy(original)
    assert set(copied.__dict__) == {"class_", "some_req_field", "some_opt_field", "sub_model"}
    assert set(original.__dict__) > set(copied.__dict__)  # the original keeps what it computed
    assert copied == original
    assert copied.hash_key == original.hash_key
