"""`Frozen`: an immutable pydantic model with canonical bytes and a content hash key."""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import Enum
from itertools import chain
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Optional, TypeVar, Union, get_args, get_origin, overload

import orjson
from blake3 import blake3
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from miniagents.errors import FrozenValueError
from miniagents.redaction import REDACTION as REDACTION
from miniagents.redaction import SecretRedaction as SecretRedaction

if TYPE_CHECKING:
    from typing_extensions import Self

FrozenType = Optional[Union[str, int, float, bool, tuple["FrozenType", ...], "Frozen"]]

CANONICAL_FORM_VERSION = 1
"""Version of the canonical byte form; a stored format, so it changes only with a migration."""
HASH_ALGORITHM = "blake3"

_V = TypeVar("_V")
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_SHORT_HASH_LENGTH = 40


class computed_once(Generic[_V]):
    """Like `functools.cached_property` (computed on first access, then kept), without its per-access lock."""

    def __init__(self, function: Callable[[Any], _V]) -> None:
        self._function = function
        self._name = function.__name__
        self.__doc__ = function.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, instance: None, owner: Optional[type] = None) -> computed_once[_V]: ...

    @overload
    def __get__(self, instance: object, owner: Optional[type] = None) -> _V: ...

    def __get__(self, instance: Optional[object], owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        value = self._function(instance)
        instance.__dict__[self._name] = value
        return value


_PLAIN_NAME, _SECRET_NAME, _CLASS_NAME, _RESERVED_NAME = range(4)
_FIELD_NAME_KINDS: dict[str, int] = {}
"""What each field name seen so far is (plain, secret, `class_`, reserved): one dict lookup per field per build."""
_FIELD_NAME_KINDS_KEPT = 10_000
_reserved_name_suffixes: tuple[str, ...] = ()
REDACTION.on_configure(_FIELD_NAME_KINDS.clear)  # secret names changed: every name is looked at again


def reserve_field_name_suffixes(*suffixes: str) -> None:
    """Refuse field names ending in any of `suffixes`, at any depth, declared or extra (process-wide).

    `miniagents.messages` reserves the names under which a canonical form holds hash references to nested
    messages (`<field>__hash_key`, `<field>__hash_keys`): a field named like that would be indistinguishable from
    a reference, so two different messages would share one hash key.
    """
    global _reserved_name_suffixes
    _reserved_name_suffixes = tuple(dict.fromkeys((*_reserved_name_suffixes, *suffixes)))
    _FIELD_NAME_KINDS.clear()


def _field_name_kind(name: str) -> int:
    """What the field name `name` is (`_PLAIN_NAME` ...); names seen before are looked up in `_FIELD_NAME_KINDS`."""
    if name == "class_":
        kind = _CLASS_NAME
    elif name.endswith(_reserved_name_suffixes):
        kind = _RESERVED_NAME
    elif REDACTION.is_secret(name):
        kind = _SECRET_NAME
    else:
        kind = _PLAIN_NAME
    if len(_FIELD_NAME_KINDS) >= _FIELD_NAME_KINDS_KEPT:
        _FIELD_NAME_KINDS.clear()
    _FIELD_NAME_KINDS[name] = kind
    return kind


def _reserved_name_error(name: str, path: str) -> FrozenValueError:
    suffix = next(suffix for suffix in _reserved_name_suffixes if name.endswith(suffix))
    return FrozenValueError(
        f"{path}: field names ending in {suffix!r} are reserved. The canonical form of a message refers to a "
        f"message nested in a field {name[: -len(suffix)]!r} by this very name, so this field would give two "
        "different messages the same hash key; rename it."
    )


class _FrozenFields(dict[str, Any]):
    """Field values frozen already (a nested dict): building a `Frozen` from them skips freezing them again."""


def _hash_key_of(canonical_bytes: bytes) -> str:
    digest: str = blake3(canonical_bytes).hexdigest()
    context = _current_context()
    if context is not None and context.longer_hash_keys:
        return digest
    return digest[:_SHORT_HASH_LENGTH]


class Frozen(BaseModel):
    """An immutable model with arbitrary extra fields and a content hash key.

    Values are frozen recursively when the object is built, those of declared fields after pydantic coerced them:
    dicts become `Frozen`, lists become tuples, and anything without exactly one canonical JSON form (NaN,
    infinities, integers beyond 64 bits, non-string keys, sets, arbitrary objects) is refused with a
    `FrozenValueError` naming the field. So are field names with a reserved ending (`reserve_field_name_suffixes`).
    Fields whose names look like secrets (see `SecretRedaction`) are replaced by a marker.

    `model_copy(update=...)` builds a new object, validated like any other; copies (`copy`, `deepcopy`, pickle)
    never inherit what the original computed once (`hash_key`, ...) or marks kept on it.
    """

    model_config = ConfigDict(frozen=True, extra="allow", ignored_types=(computed_once,))

    _is_message: ClassVar[bool] = False
    """True for `Message` and its subclasses: nested messages are stored as hash references."""

    class_: str

    def __str__(self) -> str:
        return self.as_string

    @computed_once
    def as_string(self) -> str:
        """The text form used in prompts; subclasses customise `_as_string()`."""
        return self._as_string()

    @computed_once
    def full_json(self) -> str:
        """JSON of this object with everything nested in it spelled out."""
        return orjson.dumps(_full_dump(self), option=orjson.OPT_SORT_KEYS).decode("utf-8")

    @computed_once
    def canonical_bytes(self) -> bytes:
        """The canonical form: `serialize()` as compact UTF-8 JSON with sorted keys."""
        return orjson.dumps(self.serialize(), option=orjson.OPT_SORT_KEYS)

    @computed_once
    def serialized(self) -> str:
        """`canonical_bytes` as a string."""
        return self.canonical_bytes.decode("utf-8")

    def encode_canonical(self) -> bytes:
        """`canonical_bytes`, without keeping them on the object if they were not kept already.

        The hash key and the store's write path use this, so a recorded message does not carry a second copy
        of itself in memory for the rest of the run.
        """
        kept: Optional[bytes] = self.__dict__.get("canonical_bytes")
        if kept is not None:
            return kept
        return orjson.dumps(self.serialize(), option=orjson.OPT_SORT_KEYS)

    @computed_once
    def hash_key(self) -> str:
        """blake3 of `canonical_bytes` in hex: 40 characters, or 64 with `longer_hash_keys=True`."""
        return _hash_key_of(self.encode_canonical())

    def hash_key_and_canonical_bytes(self) -> tuple[str, Optional[bytes]]:
        """`hash_key`, and the canonical bytes if they had to be encoded for it (None if the key was known).

        For whoever needs both, like the core recording a message into a store: the bytes are encoded once.
        """
        known: Optional[str] = self.__dict__.get("hash_key")
        if known is not None:
            return known, None
        body = self.encode_canonical()
        hash_key = _hash_key_of(body)
        self.__dict__["hash_key"] = hash_key
        return hash_key, body

    def serialize(self) -> dict[str, Any]:
        """A plain dict of this object; the base class spells out everything nested in it."""
        return _full_dump(self)

    def frozen_fields(self, exclude_class: bool = False) -> Iterator[str]:
        """Names of all fields: declared ones (defaults included) and extra ones."""
        for field in declared_field_names(type(self)):
            if not (exclude_class and field == "class_"):
                yield field
        yield from self.__pydantic_extra__ or ()

    def frozen_fields_and_values(self, exclude_class: bool = True) -> dict[str, Any]:
        """A dict of all fields and their values (declared and extra)."""
        values = dict(self.field_items())
        if exclude_class:
            del values["class_"]
        return values

    def field_items(self) -> Iterable[tuple[str, Any]]:
        """(name, value) of every field: the declared ones (`class_` included), then the extra ones."""
        names = declared_field_names(type(self))
        declared = zip(names, map(self.__dict__.__getitem__, names), strict=True)
        extra = self.__pydantic_extra__
        return chain(declared, extra.items()) if extra else declared

    def _as_string(self) -> str:
        return self.full_json

    @classmethod
    def _preprocess_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        class_ = values.get("class_")
        if class_ is None or class_ == cls.__name__:
            return values
        raise FrozenValueError(
            f"`class_` of a {cls.__name__} must be {cls.__name__!r}, got {class_!r}; leave `class_` out and "
            "it is filled in."
        )

    @model_validator(mode="before")
    @classmethod
    def _validate_and_freeze_values(cls, values: Any) -> Any:
        if type(values) is not dict:
            if type(values) is _FrozenFields or not isinstance(values, dict):
                return values
        values = cls._preprocess_values(values)
        owner = cls.__name__
        frozen: dict[str, Any] = {"class_": owner}
        kinds = _FIELD_NAME_KINDS
        for key, value in values.items():
            kind = kinds.get(key)
            if kind is None:
                if not isinstance(key, str):
                    raise FrozenValueError(f"{owner} field names must be strings, got {key!r} ({type(key).__name__}).")
                kind = _field_name_kind(key)
            if kind == _PLAIN_NAME:
                frozen[key] = _freeze(value, key, owner)
            elif kind == _SECRET_NAME:
                REDACTION.register_values(value)
                frozen[key] = REDACTION.marker if value is not None else None
            elif kind == _RESERVED_NAME:
                raise _reserved_name_error(key, f"{owner}.{key}")
        return frozen

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse declared fields with reserved names; make classes whose declared fields pydantic may coerce into
        values without one canonical form (`float`, `int`, `list`, `set`, ...) freeze those values after pydantic
        did (classes whose declared fields hold only `str`, `bool`, None, `Any` or `Frozen` values are left alone,
        so building them costs nothing more)."""
        super().__pydantic_init_subclass__(**kwargs)
        for name in cls.model_fields:
            if name.endswith(_reserved_name_suffixes):
                raise _reserved_name_error(name, f"{cls.__name__}.{name}")
        if _declared_fields_to_freeze(cls) and not getattr(cls.model_post_init, "_freezes_declared_fields", False):
            _freeze_declared_fields_after_validation(cls)

    def model_copy(self, *, update: Optional[Mapping[str, Any]] = None, deep: bool = False) -> Self:
        """A new object of this class with the fields in `update` changed, validated and frozen like any new one
        (so it has its own hash key). `deep` changes nothing: whatever a `Frozen` holds is immutable already."""
        values = dict(self.field_items())
        if update:
            values.update(update)
        return type(self).model_validate(values)

    def __copy__(self) -> Self:
        copied = super().__copy__()
        object.__setattr__(copied, "__dict__", _field_values(self))
        return copied

    def __deepcopy__(self, memo: Optional[dict[int, Any]] = None) -> Self:
        copied = super().__deepcopy__(memo)
        object.__setattr__(copied, "__dict__", _field_values(copied))
        return copied

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__dict__"] = _field_values(self)
        return state


def _field_values(frozen: Frozen) -> dict[str, Any]:
    """The declared fields of `frozen` from its `__dict__`, without what else is kept there: values computed once
    (`hash_key`, `as_string`, ...) and marks (the core's "emitted already"), which a copy must not inherit."""
    values = frozen.__dict__
    return {name: values[name] for name in declared_field_names(type(frozen))}


_DECLARED_FIELDS_TO_FREEZE: dict[type, tuple[str, ...]] = {}


def _declared_fields_to_freeze(cls: type[Frozen]) -> tuple[str, ...]:
    """Declared fields of `cls` whose values pydantic's validation may have turned into something unfrozen."""
    names = _DECLARED_FIELDS_TO_FREEZE.get(cls)
    if names is None:
        validated_fields: set[str] = set()
        for decorator in cls.__pydantic_decorators__.field_validators.values():
            validated_fields.update(decorator.info.fields)
        names = tuple(
            name
            for name, field in cls.model_fields.items()
            if name != "class_" and (name in validated_fields or "*" in validated_fields or not _stays_frozen(field))
        )
        if cls.__pydantic_complete__:  # otherwise annotations may be unresolved yet: decide again later
            _DECLARED_FIELDS_TO_FREEZE[cls] = names
    return names


def _stays_frozen(field: FieldInfo) -> bool:
    """Whether every value of this declared field is frozen as long as the value given for it was."""
    if field.metadata or field.default_factory is not None or not _annotation_stays_frozen(field.annotation):
        return False
    default = field.default
    if default is PydanticUndefined or default is None or type(default) is bool or isinstance(default, Frozen):
        return True
    if type(default) not in (str, tuple):
        return False
    try:
        return _freeze(default, "default", "default") == default
    except FrozenValueError:
        return False


def _annotation_stays_frozen(annotation: Any) -> bool:
    """Whether pydantic, validating a frozen value for this annotation, can only give back a frozen value: it
    returns a `str`, `bool`, None or `Frozen` object as it is (an `Any` value too) and a tuple of such items as a
    tuple of the same objects, where `int` and `float` accept strings (`"1e400"`, 30 digits) and `list`, `set`,
    `dict` rebuild the value."""
    if annotation in (str, bool, type(None), Any):
        return True
    origin = get_origin(annotation)
    if origin is None:  # (on Python 3.10, `isinstance(tuple[X, ...], type)` is true too)
        return isinstance(annotation, type) and issubclass(annotation, Frozen)
    if origin is Union or origin is types.UnionType:
        return all(_annotation_stays_frozen(arg) for arg in get_args(annotation))
    if origin is tuple:  # `tuple[X, ...]` or `tuple[X, Y]`: pydantic rebuilds the tuple from the same items
        args = get_args(annotation)
        items = args[:1] if len(args) == 2 and args[1] is Ellipsis else args
        return bool(items) and all(_annotation_stays_frozen(item) for item in items)
    return False


def _freeze_declared_fields_after_validation(cls: type[Frozen]) -> None:
    """Make pydantic call `_freeze_declared_values` on each new `cls` object after validating it (before any
    `model_post_init` of `cls`); the schema is rebuilt for it once."""
    original = cls.model_post_init
    calls_original = original is not BaseModel.model_post_init

    def model_post_init(self: Frozen, context: Any, /) -> None:
        _freeze_declared_values(self)
        if calls_original:
            original(self, context)

    model_post_init._freezes_declared_fields = True  # type: ignore[attr-defined]
    setattr(cls, "model_post_init", model_post_init)  # noqa: B010 (mypy refuses assigning to a method)
    cls.__pydantic_post_init__ = "model_post_init"
    if cls.__pydantic_complete__:
        cls.model_rebuild(force=True)


def _freeze_declared_values(frozen: Frozen) -> None:
    """Freeze the values of the declared fields pydantic may have coerced (`"inf"` into inf for a `float`, a tuple
    into a list for a `list[str]`) or filled in from a default, or refuse them naming the field."""
    cls = type(frozen)
    owner = cls.__name__
    values = frozen.__dict__
    for name in _declared_fields_to_freeze(cls):
        value = values[name]
        if value is None or type(value) is bool:
            continue
        if isinstance(value, Enum):  # a field declared as an enum keeps its member; orjson writes its value
            _freeze(value.value, name, owner)
            continue
        frozen_value = _freeze(value, name, owner)
        if frozen_value is not value:
            values[name] = frozen_value


def freeze(value: Any, name: str = "value") -> FrozenType:
    """`value` made immutable as a `Frozen` field would be; raises `FrozenValueError` naming `name`."""
    return _freeze(value, name, "value")


def _freeze(value: Any, path: str, owner: str) -> FrozenType:
    """Return `value` made immutable, or raise `FrozenValueError` naming `path` inside `owner`."""
    value_type = type(value)
    if value_type is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise FrozenValueError(
                    f"{owner}.{path} holds a string that is not valid Unicode ({exc.reason} at position "
                    f"{exc.start}); remove the lone surrogate characters."
                ) from None
        return REDACTION.redact_text(value)  # secret values and credential shapes, wherever they turn up
    if value is None or value_type is bool:
        return value
    if value_type is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise FrozenValueError(
                f"{owner}.{path} holds the integer {value}, which is outside 64 bits and has no portable JSON "
                "form; store it as a string."
            )
        return value
    if value_type is float:
        if not math.isfinite(value):
            raise FrozenValueError(
                f"{owner}.{path} holds {value!r}, which has no JSON form; use None or a string instead."
            )
        return value
    if isinstance(value, Frozen):
        return value
    if isinstance(value, (tuple, list)):
        value = REDACTION.mask_secret_items(value)  # ("Authorization", VALUE), ["--api-key", VALUE]
        frozen_items = tuple(_freeze(item, f"{path}[{index}]", owner) for index, item in enumerate(value))
        _refuse_mixed_message_tuple(frozen_items, path, owner)
        return frozen_items
    if isinstance(value, dict):
        return _freeze_dict(value, path, owner)
    if isinstance(value, Enum):
        return _freeze(value.value, path, owner)
    if isinstance(value, str):
        return _freeze(str.__str__(value), path, owner)
    if isinstance(value, int):
        return _freeze(int(value), path, owner)
    if isinstance(value, float):
        return _freeze(float(value), path, owner)
    if isinstance(value, (set, frozenset)):
        raise FrozenValueError(
            f"{owner}.{path} holds a {value_type.__name__}, which has no canonical order (so no single JSON form); "
            "use a list or a tuple instead (sorted, if the order does not matter)."
        )
    raise FrozenValueError(
        f"{owner}.{path} holds a {value_type.__name__}, which a Frozen cannot hold; allowed are None, str, int, "
        "float, bool, lists/tuples, dicts with string keys and Frozen objects (convert other pydantic models with "
        ".model_dump())."
    )


def _freeze_dict(value: dict[Any, Any], path: str, owner: str) -> Frozen:
    """A `Frozen` of the dict `value` found at `path` inside `owner`; errors name the whole path."""
    fields: dict[str, Any] = {"class_": Frozen.__name__}
    kinds = _FIELD_NAME_KINDS
    for key, item in value.items():
        kind = kinds.get(key)
        if kind is None:
            if not isinstance(key, str):
                raise FrozenValueError(
                    f"{owner}.{path} is a dict with the key {key!r} ({type(key).__name__}); JSON objects only "
                    "have string keys, so convert the keys to strings."
                )
            kind = _field_name_kind(key)
        if kind == _PLAIN_NAME:
            fields[key] = _freeze(item, f"{path}.{key}", owner)
        elif kind == _SECRET_NAME:
            REDACTION.register_values(item)
            fields[key] = REDACTION.marker if item is not None else None
        elif kind == _RESERVED_NAME:
            raise _reserved_name_error(key, f"{owner}.{path}.{key}")
        elif item is not None and item != Frozen.__name__:
            raise FrozenValueError(
                f"{owner}.{path}.class_ is {item!r}; a dict becomes a Frozen, so its `class_` can only be "
                f"{Frozen.__name__!r} (or left out)."
            )
    return Frozen.model_validate(_FrozenFields(fields))


def _refuse_mixed_message_tuple(items: tuple[Any, ...], path: str, owner: str) -> None:
    message_count = 0
    for item in items:
        if isinstance(item, Frozen) and item._is_message:
            message_count += 1
        elif type(item) is tuple and item and isinstance(item[0], Frozen) and item[0]._is_message:
            raise FrozenValueError(
                f"{owner}.{path} holds a list of messages inside another list; messages are stored as hash "
                "references of a field, so give each list of messages a field of its own."
            )
    if 0 < message_count < len(items):
        raise FrozenValueError(
            f"{owner}.{path} mixes messages with other values; a sequence holds either only messages (stored as "
            "hash references) or no messages at all. Put the messages into a field of their own."
        )


_FIELD_NAMES_CACHE: dict[type, tuple[str, ...]] = {}
_context_var: Any = None


def _current_context() -> Any:
    """The active PromisingContext, or None (the promising module is imported lazily: it imports this one)."""
    global _context_var
    if _context_var is None:
        from miniagents.promising.promising import PromisingContext

        _context_var = PromisingContext._current
    return _context_var.get()


PLAIN_VALUE_TYPES: frozenset[type] = frozenset({str, int, float, bool, type(None)})
"""Types of frozen values that hold nothing nested (the fast path of every walk over field values)."""


def declared_field_names(model_class: type[Frozen]) -> tuple[str, ...]:
    """The declared (non-extra) field names of a `Frozen` class, `class_` included; cached per class."""
    names = _FIELD_NAMES_CACHE.get(model_class)
    if names is None:
        names = tuple(model_class.model_fields)
        _FIELD_NAMES_CACHE[model_class] = names
    return names


def _full_dump(frozen: Frozen) -> dict[str, Any]:
    return {
        field: value if type(value) in PLAIN_VALUE_TYPES else _full_dump_value(value)
        for field, value in frozen.field_items()
    }


def _full_dump_value(value: Any) -> Any:
    if isinstance(value, Frozen):
        return _full_dump(value)
    if type(value) is tuple:
        return tuple(_full_dump_value(item) for item in value)
    return value
