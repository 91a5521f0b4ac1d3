"""`Frozen`: an immutable pydantic model with canonical bytes and a content hash key."""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import Enum
from itertools import chain, pairwise
from operator import attrgetter, itemgetter
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    NoReturn,
    Optional,
    SupportsIndex,
    TypeVar,
    Union,
    final,
    get_args,
    get_origin,
    is_typeddict,
    overload,
)

import orjson
from blake3 import blake3
from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import CoreSchema, PydanticUndefined

from miniagents.errors import FrozenValueError
from miniagents.redaction import REDACTION as REDACTION
from miniagents.redaction import SecretRedaction as SecretRedaction

if TYPE_CHECKING:
    from typing_extensions import Self

FrozenType = Optional[Union[str, int, float, bool, tuple["FrozenType", ...], "Frozen", "FrozenDict"]]

CANONICAL_FORM_VERSION = 1
"""Version of the canonical byte form; a stored format, so it changes only with a migration."""
HASH_ALGORITHM = "blake3"

_V = TypeVar("_V")
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_SHORT_HASH_LENGTH = 40

MAX_NESTING_DEPTH = 1000
"""How many containers (dicts, lists, `Frozen` objects, messages) may be nested in each other inside a `Frozen`,
not counting the object itself: deeper values, and values that contain themselves, are refused when it is built."""
_RECURSION_SAFE_DEPTH = 64
"""Objects nested deeper than this are compared, hashed, deep-copied, pickled and shown (`repr`) by loops of their
own instead of pydantic's and Python's recursive code, which would exceed Python's recursion limit."""
_ORJSON_SAFE_DEPTH = 128
"""Containers at most this deep are encoded by orjson in one call (orjson refuses nesting beyond 254 levels)."""


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


_set_slot = object.__setattr__
_PLAIN_NAME, _SECRET_NAME, _CLASS_NAME, _RESERVED_NAME = range(4)
_FIELD_NAME_KINDS: dict[str, int] = {}
"""What each field name seen so far is (plain, secret, `class_`, reserved): one dict lookup per field per build."""
_FIELD_NAME_KINDS_KEPT = 10_000
_reserved_name_suffixes: tuple[str, ...] = ()
REDACTION.on_configure(_FIELD_NAME_KINDS.clear)  # secret names changed: every name is looked at again


class FieldNames(set[str]):
    """The names of the fields a frozen object was built with (its `model_fields_set`), shared by every object built
    with the same names and read-only: an object keeps no set of its own for the collector to walk (one per
    message and per nested dict otherwise). Still a `set`, which pydantic requires."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            f"The field names of a frozen object cannot change ({sorted(self)}); "
            "build a new object with `model_copy(update=...)`."
        )

    add = discard = remove = clear = update = _refuse
    pop = _refuse  # type: ignore[assignment]
    intersection_update = difference_update = symmetric_difference_update = _refuse
    __ior__ = __iand__ = __isub__ = __ixor__ = _refuse  # type: ignore[assignment]

    def __copy__(self) -> set[str]:
        return set(self)

    def __reduce__(self) -> Any:
        return set, (list(self),)


FIELD_NAMES_BY_KEYS: dict[tuple[Any, ...], FieldNames] = {}
"""The shared `FieldNames` of the objects built from the same keys: `(class, *keys passed, in order)` -> names.
Only classes whose validation is `Frozen`'s own have entries (see `_field_names_follow_keys`): the names pydantic
puts in their `model_fields_set` depend on nothing else. Looked up where objects are built in numbers."""
_FIELD_NAMES_KEPT = 10_000
_FOLLOW_KEYS: dict[type, bool] = {}


def share_field_names(obj: Frozen, keys: tuple[Any, ...]) -> None:
    """Give `obj`, just built by pydantic from `keys`, the shared `FieldNames` in place of its own set, if its
    class's field names follow from the keys alone (else it keeps its own set)."""
    cls = type(obj)
    follow = _FOLLOW_KEYS.get(cls)
    if follow is None:
        if len(_FOLLOW_KEYS) >= _FIELD_NAMES_KEPT:  # (classes made on the fly, such as stand-ins, are not kept)
            _FOLLOW_KEYS.clear()
        follow = _FOLLOW_KEYS[cls] = _field_names_follow_keys(cls)
    if not follow:
        return
    shared = FIELD_NAMES_BY_KEYS.get(keys)
    if shared is None:
        shared = FieldNames(obj.__pydantic_fields_set__)
        if len(FIELD_NAMES_BY_KEYS) >= _FIELD_NAMES_KEPT:
            FIELD_NAMES_BY_KEYS.clear()
        FIELD_NAMES_BY_KEYS[keys] = shared
    _set_slot(obj, "__pydantic_fields_set__", shared)


def _field_names_follow_keys(cls: type[Frozen]) -> bool:
    """Whether the field names of every `cls` object follow from the keys it was built from: it is frozen, nothing
    but `Frozen`'s own validation (and its freezing of declared values afterwards) runs when one is built, and no
    field is read under an alias. A validator, a `_preprocess_values` or a `model_post_init` of the class's own may
    add or drop fields depending on the values, so may an alias path (`AliasPath("items", 0)` is set only when the
    list has an item), and a class that is not frozen adds names to its set when a field is assigned."""
    decorators = cls.__pydantic_decorators__
    validators = [getattr(validator.func, "__func__", None) for validator in decorators.model_validators.values()]
    return (
        cls.model_config.get("frozen") is True
        and validators == [_FROZEN_VALIDATE]
        and not decorators.root_validators
        and not decorators.validators
        and getattr(cls._preprocess_values, "__func__", None) is _FROZEN_PREPROCESS
        and (cls.__pydantic_post_init__ is None or getattr(cls.model_post_init, "_freezes_only", False))
        and all(info.alias is None and info.validation_alias is None for info in cls.model_fields.values())
    )


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
    `FrozenValueError` naming the field. So are field names with a reserved ending (`reserve_field_name_suffixes`),
    values nested more than `MAX_NESTING_DEPTH` levels deep and values that contain themselves. Fields whose names
    look like secrets (see `SecretRedaction`) are replaced by a marker. Declared mapping fields (`dict[str, int]`,
    `Mapping[str, Any]`, ...) are validated by pydantic and hold `FrozenDict`s.

    `model_copy(update=...)` builds a new object, validated like any other; copies (`copy`, `deepcopy`, pickle)
    never inherit what the original computed once (`hash_key`, ...) or marks kept on it. `model_fields_set` of the
    objects built in numbers (messages, and the objects nested dicts become) is one `FieldNames` shared by every
    object built from the same keys, which cannot change; a copy gets a set of its own. Classes whose own
    validation, `model_post_init` or aliases decide which fields are set keep a set each (see
    `_field_names_follow_keys`).
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
        return canonical_json(_full_dump(self)).decode("utf-8")

    @computed_once
    def canonical_bytes(self) -> bytes:
        """The canonical form: `serialize()` as compact UTF-8 JSON with sorted keys."""
        return canonical_json(self.serialize())

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
        return canonical_json(self.serialize())

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

    @computed_once
    def _nesting_depth(self) -> int:
        """How many containers (tuples, `Frozen` objects, `FrozenDict`s) are nested in each other in this object: 0
        when every field holds a plain value."""
        return _nesting_depth_of(self)

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
        mapping_fields = _MAPPING_FIELDS.get(cls)
        if mapping_fields is None:
            mapping_fields = _mapping_field_names(cls)
        for key, value in values.items():
            kind = kinds.get(key)
            if kind is None:
                if not isinstance(key, str):
                    raise FrozenValueError(f"{owner} field names must be strings, got {key!r} ({type(key).__name__}).")
                kind = _field_name_kind(key)
            if kind == _PLAIN_NAME:
                if mapping_fields and key in mapping_fields:
                    # validated by pydantic as it is, then frozen by `_freeze_declared_values`
                    frozen[key] = _plain_frozen_as_dicts(value)
                else:
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
        if self._nesting_depth > _RECURSION_SAFE_DEPTH:
            deep_copy: Self = _unflatten(_flatten(self))
            return deep_copy
        copied = super().__deepcopy__(memo)
        object.__setattr__(copied, "__dict__", _field_values(copied))
        return copied

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__dict__"] = _field_values(self)
        return state

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        if self._nesting_depth > _RECURSION_SAFE_DEPTH:
            return _unflatten, (_flatten(self),)
        return super().__reduce_ex__(protocol)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Frozen) and max(self._nesting_depth, other._nesting_depth) > _RECURSION_SAFE_DEPTH:
            return _deep_equal(self, other)
        return super().__eq__(other)

    def __hash__(self) -> int:
        # like pydantic's (the declared fields), but deep objects are hashed by their class and depth: equal
        # objects are equally deep, and hashing declared fields that nest objects of their own class would recurse
        depth = self._nesting_depth
        if depth > _RECURSION_SAFE_DEPTH:
            return hash((type(self), depth))
        fields = _DECLARED_FIELD_GETTERS.get(type(self))
        if fields is None:
            fields = _DECLARED_FIELD_GETTERS[type(self)] = itemgetter(*declared_field_names(type(self)))
        return hash(fields(self.__dict__))

    def __repr__(self) -> str:
        if self._nesting_depth > _RECURSION_SAFE_DEPTH:
            return _deep_repr(self)
        return super().__repr__()


_FROZEN_PREPROCESS = Frozen._preprocess_values.__func__  # type: ignore[attr-defined]
_FROZEN_VALIDATE = Frozen._validate_and_freeze_values.__func__


def _field_values(frozen: Frozen) -> dict[str, Any]:
    """The declared fields of `frozen` from its `__dict__`, without what else is kept there: values computed once
    (`hash_key`, `as_string`, ...) and marks (the core's "emitted already"), which a copy must not inherit."""
    values = frozen.__dict__
    return {name: values[name] for name in declared_field_names(type(frozen))}


_DECLARED_FIELDS_TO_FREEZE: dict[type, tuple[str, ...]] = {}
_DECLARED_FIELD_GETTERS: dict[type, Callable[[dict[str, Any]], Any]] = {}


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
    model_post_init._freezes_only = not calls_original  # type: ignore[attr-defined]
    setattr(cls, "model_post_init", model_post_init)  # noqa: B010 (mypy refuses assigning to a method)
    cls.__pydantic_post_init__ = "model_post_init"
    if cls.__pydantic_complete__:
        cls.model_rebuild(force=True)


def _freeze_declared_values(frozen: Frozen) -> None:
    """Freeze the values of the declared fields pydantic may have coerced (`"inf"` into inf for a `float`, a tuple
    into a list for a `list[str]`) or filled in from a default, or refuse them naming the field; those of declared
    mapping fields become `FrozenDict`s."""
    cls = type(frozen)
    owner = cls.__name__
    values = frozen.__dict__
    mapping_fields = _MAPPING_FIELDS.get(cls)
    if mapping_fields is None:
        mapping_fields = _mapping_field_names(cls)
    for name in _declared_fields_to_freeze(cls):
        value = values[name]
        if value is None or type(value) is bool:
            continue
        if isinstance(value, Enum):  # a field declared as an enum keeps its member; orjson writes its value
            _freeze(value.value, name, owner)
            continue
        frozen_value = _freeze(value, name, owner, name in mapping_fields)
        if frozen_value is not value:
            values[name] = frozen_value


_MAPPING_FIELDS: dict[type, frozenset[str]] = {}


def _mapping_field_names(cls: type[Frozen]) -> frozenset[str]:
    """The declared fields of `cls` whose type is or holds a mapping (`dict[str, int]`, `Optional[Mapping[...]]`,
    `list[dict[str, Any]]`, a TypedDict, ...): pydantic validates their values as given, then they are frozen with
    their dicts turned into `FrozenDict`s."""
    names = frozenset(
        name
        for name, field in cls.model_fields.items()
        if name != "class_" and _annotation_holds_mappings(field.annotation)
    )
    if cls.__pydantic_complete__:  # otherwise annotations may be unresolved yet: decide again later
        _MAPPING_FIELDS[cls] = names
    return names


def _annotation_holds_mappings(annotation: Any) -> bool:
    """Whether values of this annotation are or may hold mappings (`dict`, `Mapping`, TypedDicts, at any depth)."""
    stack = [annotation]
    while stack:
        current = stack.pop()
        origin = get_origin(current)
        if origin is not None:  # (on Python 3.10, `isinstance(dict[str, int], type)` is true too)
            if isinstance(origin, type) and issubclass(origin, Mapping):
                return True
            stack.extend(get_args(current))
        elif isinstance(current, type) and (issubclass(current, Mapping) or is_typeddict(current)):
            return True
    return False


def _plain_frozen_as_dicts(value: Any) -> Any:
    """`value`, given for a declared mapping field, with every plain `Frozen` in it (at the top, or in tuples,
    `FrozenDict`s and other plain `Frozen`s) turned into a dict of its fields, for pydantic to validate: a stored
    message holds such a field as a plain `Frozen`, whose canonical form is the same."""
    value_type = type(value)
    if value_type is not Frozen and value_type is not tuple and value_type is not FrozenDict:
        return value
    root: list[Any] = [value]
    pending: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while pending:
        target, slot, item = pending.pop()
        item_type = type(item)
        converted: Any
        if item_type is Frozen:
            converted = {name: field_value for name, field_value in item.field_items() if name != "class_"}
            children: Iterable[tuple[Any, Any]] = converted.items()
        elif item_type is FrozenDict:
            converted = dict(item)
            children = converted.items()
        elif item_type is tuple:
            converted = list(item)
            children = enumerate(converted)
        else:
            continue
        target[slot] = converted
        pending.extend(
            (converted, key, child)
            for key, child in children
            if type(child) is Frozen or type(child) is tuple or type(child) is FrozenDict
        )
    return root[0]


def freeze(value: Any, name: str = "value") -> FrozenType:
    """`value` made immutable as a `Frozen` field would be; raises `FrozenValueError` naming `name`."""
    return _freeze(value, name, "value")


def _at(owner: str, path: str) -> str:
    """Where a value is, for error messages: `Message.meta.a` (`path` "meta.a"), `FrozenDict.a` (`path` ".a")."""
    if not path:
        return owner
    return owner + path if path[0] in ".[" else f"{owner}.{path}"


_PATH_ENDS_SHOWN = 6


def _path_text(segments: Iterable[str]) -> str:
    """A path from its segments (`meta`, `.a`, `[0]`, ...), the middle of a long one left out."""
    parts = list(segments)
    if len(parts) > 2 * _PATH_ENDS_SHOWN + 1:
        hidden = len(parts) - 2 * _PATH_ENDS_SHOWN
        parts = [*parts[: _PATH_ENDS_SHOWN + 1], f"…<{hidden - 1} more levels>…", *parts[-_PATH_ENDS_SHOWN:]]
    return "".join(parts)


def _freeze(value: Any, path: str, owner: str, mappings: bool = False) -> FrozenType:
    """Return `value` made immutable, or raise `FrozenValueError` naming `path` inside `owner`; with `mappings`
    (the value of a declared mapping field), dicts become `FrozenDict`s rather than `Frozen` objects."""
    value_type = type(value)
    if value_type is str:
        if not value.isascii():
            _refuse_invalid_unicode(value, owner, path)
        return REDACTION.redact_text(value)  # secret values and credential shapes, wherever they turn up
    if value is None or value_type is bool:
        return value
    if value_type is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _integer_error(value, owner, path)
        return value
    if value_type is float:
        if not math.isfinite(value):
            raise _float_error(value, owner, path)
        return value
    if isinstance(value, Frozen) or (mappings and value_type is FrozenDict):
        if value._nesting_depth >= MAX_NESTING_DEPTH:
            raise _too_deep_error(owner, [path, *_deepest_path(value)])
        return value
    if isinstance(value, (tuple, list, dict)):
        return _freeze_container(value, path, owner, mappings)
    return _freeze_other(value, path, owner, mappings)


def _freeze_container(root: Any, path: str, owner: str, mappings: bool) -> FrozenType:
    """`_freeze` of a list, tuple or dict: a loop over an explicit stack of the containers being frozen (one frame
    each), so that depth costs no recursion. Frame: [container, its items, frozen items so far, whether a dict, its
    key in the container above, deepest nesting of its frozen items, key of the item being frozen]. A value that
    contains itself is found when the walk reaches `MAX_NESTING_DEPTH` (it would go on forever)."""
    if type(root) is tuple and len(root) > _MANY_ITEMS and _frozen_objects_as_they_are(root):
        return root
    kinds = _FIELD_NAME_KINDS
    redact_text = REDACTION.redact_text
    stack = [_new_frame(root, None, mappings)]
    while True:
        frame = stack[-1]
        items, results, is_dict, levels = frame[1], frame[2], frame[3], frame[5]
        child: Any = None
        for key, item in items:
            if is_dict:
                kind = kinds.get(key)
                if kind is None:
                    if not isinstance(key, str):
                        raise FrozenValueError(
                            f"{_at(owner, _path_text(_stack_segments(stack, path)))} is a dict with the key {key!r} "
                            f"({type(key).__name__}); JSON objects only have string keys, so convert the keys to "
                            "strings."
                        )
                    kind = _field_name_kind(key)
                if kind != _PLAIN_NAME:
                    _freeze_special_item(stack, path, results, key, item, kind, owner, mappings)
                    continue
            item_type = type(item)
            if item_type is str:
                if not item.isascii():
                    _refuse_invalid_unicode(item, owner, _item_path(stack, path, key))
                item = redact_text(item)
            elif item_type is int:
                if not _INT_MIN <= item <= _INT_MAX:
                    raise _integer_error(item, owner, _item_path(stack, path, key))
            elif item_type is float:
                if not math.isfinite(item):
                    raise _float_error(item, owner, _item_path(stack, path, key))
            elif item is None or item_type is bool:
                pass
            elif item_type is dict or item_type is list or item_type is tuple:
                child = item
                break
            elif isinstance(item, Frozen) or (mappings and item_type is FrozenDict):
                item_levels = 1 + item._nesting_depth
                if len(stack) + item_levels > MAX_NESTING_DEPTH:
                    segments = [*_stack_segments(stack, path), _segment(key, is_dict), *_deepest_path(item)]
                    raise _too_deep_error(owner, segments)
                if item_levels > levels:
                    levels = item_levels
            elif isinstance(item, (tuple, list, dict)):  # subclasses, and a FrozenDict outside a mapping field
                child = item
                break
            else:
                item = _freeze_other(item, _item_path(stack, path, key), owner, mappings)
                if type(item) not in PLAIN_VALUE_TYPES:  # an enum member whose value is a tuple
                    levels = max(levels, _value_levels(item))
            if is_dict:
                results[key] = item
            else:
                results.append(item)
        if child is not None:
            frame[5], frame[6] = levels, key
            if len(stack) >= MAX_NESTING_DEPTH:
                raise _too_deep_or_cycle_error(owner, path, stack, key, child)
            stack.append(_new_frame(child, key, mappings))
            continue
        stack.pop()
        built: Any
        if not is_dict:
            built = tuple(results)
            problem = _mixed_message_problem(built)
            if problem:
                raise FrozenValueError(f"{_at(owner, _path_text(_stack_segments([*stack, frame], path)))} {problem}")
        elif mappings:
            built = _new_frozen_dict(results, levels)
        else:
            built = Frozen.model_validate(results)
            built.__dict__["_nesting_depth"] = levels
            share_field_names(built, (Frozen, *results))
        if not stack:
            return built
        parent = stack[-1]
        if parent[3]:
            parent[2][parent[6]] = built
        else:
            parent[2].append(built)
        if levels + 1 > parent[5]:
            parent[5] = levels + 1


_MANY_ITEMS = 64
_is_frozen = Frozen.__instancecheck__
_nesting_depth_of_each = attrgetter("_nesting_depth")
_is_message_each = attrgetter("_is_message")


def _frozen_objects_as_they_are(items: tuple[Any, ...]) -> bool:
    """Whether a tuple of `Frozen` objects is frozen already (the objects are; none nested too deep; messages not
    mixed with other objects): checked in C for long tuples, such as a call's hundred thousand replies. Anything
    else takes the general walk, which also says what is wrong."""
    if not all(map(_is_frozen, items)):
        return False
    if 2 + max(map(_nesting_depth_of_each, items)) > MAX_NESTING_DEPTH:
        return False
    messages = sum(map(_is_message_each, items))
    return messages == 0 or messages == len(items)


def _new_frame(container: Any, key: Any, mappings: bool) -> list[Any]:
    if isinstance(container, dict):
        if mappings:
            return [container, iter(container.items()), {}, True, key, 0, None]
        fields = _FrozenFields()
        fields["class_"] = Frozen.__name__
        return [container, iter(container.items()), fields, True, key, 0, None]
    items = REDACTION.mask_secret_items(container)  # ("Authorization", VALUE), ["--api-key", VALUE]
    return [container, enumerate(items), [], False, key, 0, None]


def _segment(key: Any, in_dict: bool) -> str:
    return f".{key}" if in_dict else f"[{key}]"


def _stack_segments(stack: list[list[Any]], path: str) -> list[str]:
    """The path segments of the container being frozen at the top of `stack` (for errors)."""
    return [path, *(_segment(frame[4], above[3]) for above, frame in pairwise(stack))]


def _item_path(stack: list[list[Any]], path: str, key: Any) -> str:
    return _path_text([*_stack_segments(stack, path), _segment(key, stack[-1][3])])


def _too_deep_or_cycle_error(owner: str, path: str, stack: list[list[Any]], key: Any, child: Any) -> FrozenValueError:
    """The error for `child`, found under `key` in the container at the top of `stack` at `MAX_NESTING_DEPTH`: a
    cycle if a container on the way down is one above it again (named where that happens first), else too deep."""
    segments = [*_stack_segments(stack, path), _segment(key, stack[-1][3])]
    first_seen: dict[int, int] = {}
    for index, container in enumerate([*(frame[0] for frame in stack), child]):
        first = first_seen.setdefault(id(container), index)
        if first != index:
            return FrozenValueError(
                f"{_at(owner, _path_text(segments[: index + 1]))} is {_at(owner, _path_text(segments[: first + 1]))} "
                "again: the value contains itself, and a Frozen holds trees, not cycles (there is no JSON form of a "
                "cycle); copy the repeated part or leave the back reference out."
            )
    return _too_deep_error(owner, segments)


def _freeze_special_item(
    stack: list[list[Any]],
    path: str,
    results: dict[str, Any],
    key: str,
    item: Any,
    kind: int,
    owner: str,
    mappings: bool,
) -> None:
    """A dict item whose key is not a plain field name: a secret (masked), reserved or `class_` one."""
    if kind == _SECRET_NAME:
        REDACTION.register_values(item)
        results[key] = REDACTION.marker if item is not None else None
        return
    where = _at(owner, _item_path(stack, path, key))
    if kind == _RESERVED_NAME:
        raise _reserved_name_error(key, where)
    if mappings:
        raise FrozenValueError(
            f"{where}: a declared mapping field cannot hold the key 'class_'; its canonical form is that of a plain "
            "dict, which names its class under that key. Rename the key."
        )
    if item is not None and item != Frozen.__name__:
        raise FrozenValueError(
            f"{where} is {item!r}; a dict becomes a Frozen, so its `class_` can only be {Frozen.__name__!r} (or left "
            "out)."
        )


def _freeze_other(value: Any, path: str, owner: str, mappings: bool) -> FrozenType:
    """`_freeze` of what is not a plain value or a container: enum members and subclasses of plain types are
    frozen as their values, anything else is refused."""
    value_type = type(value)
    if isinstance(value, Enum):
        return _freeze(value.value, path, owner, mappings)
    if isinstance(value, str):
        return _freeze(str.__str__(value), path, owner, mappings)
    if isinstance(value, int):
        return _freeze(int(value), path, owner, mappings)
    if isinstance(value, float):
        return _freeze(float(value), path, owner, mappings)
    if isinstance(value, (set, frozenset)):
        raise FrozenValueError(
            f"{_at(owner, path)} holds a {value_type.__name__}, which has no canonical order (so no single JSON "
            "form); use a list or a tuple instead (sorted, if the order does not matter)."
        )
    raise FrozenValueError(
        f"{_at(owner, path)} holds a {value_type.__name__}, which a Frozen cannot hold; allowed are None, str, int, "
        "float, bool, lists/tuples, dicts with string keys and Frozen objects (convert other pydantic models with "
        ".model_dump())."
    )


def _refuse_invalid_unicode(value: str, owner: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FrozenValueError(
            f"{_at(owner, path)} holds a string that is not valid Unicode ({exc.reason} at position {exc.start}); "
            "remove the lone surrogate characters."
        ) from None


def _integer_error(value: int, owner: str, path: str) -> FrozenValueError:
    return FrozenValueError(
        f"{_at(owner, path)} holds the integer {value}, which is outside 64 bits and has no portable JSON form; "
        "store it as a string."
    )


def _float_error(value: float, owner: str, path: str) -> FrozenValueError:
    return FrozenValueError(
        f"{_at(owner, path)} holds {value!r}, which has no JSON form; use None or a string instead."
    )


def _too_deep_error(owner: str, segments: list[str]) -> FrozenValueError:
    """The error for a container at the path `segments` (the field, then `.key` / `[index]` each level down)."""
    return FrozenValueError(
        f"{_at(owner, _path_text(segments))} is nested {len(segments)} levels deep in the {owner}; at most "
        f"MAX_NESTING_DEPTH ({MAX_NESTING_DEPTH}) dicts, lists and Frozen objects (messages included) may be nested "
        "in each other. Flatten the structure, or store the deep part as a JSON string."
    )


def _mixed_message_problem(items: tuple[Any, ...]) -> str:
    """What is wrong with a tuple that holds messages ("" if nothing)."""
    message_count = 0
    for item in items:
        if isinstance(item, Frozen) and item._is_message:
            message_count += 1
        elif type(item) is tuple and item and isinstance(item[0], Frozen) and item[0]._is_message:
            return (
                "holds a list of messages inside another list; messages are stored as hash references of a field, "
                "so give each list of messages a field of its own."
            )
    if 0 < message_count < len(items):
        return (
            "mixes messages with other values; a sequence holds either only messages (stored as hash references) or "
            "no messages at all. Put the messages into a field of their own."
        )
    return ""


@final
class FrozenDict(dict[str, Any]):
    """A read-only dict: what a declared mapping field (`dict[str, int]`, `Mapping[str, Any]`, ...) holds.

    Its values are frozen like any field value (lists become tuples, dicts `FrozenDict`s); it is hashable. Its
    canonical form is that of the same dict in an undeclared field (`{"class_": "Frozen", ...}`), so declaring a
    field's type never changes a hash key. `FrozenDict(mapping)` freezes `mapping` the same way.
    """

    __slots__ = ("_hash", "_nesting")
    _hash: int
    _nesting: int

    def __new__(cls, *args: Any, **kwargs: Any) -> FrozenDict:
        frozen = _freeze(dict(*args, **kwargs), "", cls.__name__, mappings=True)
        assert type(frozen) is FrozenDict
        return frozen

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The items were set by `__new__`."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # validated as a dict (a declared `FrozenDict[str, int]` field is a mapping field: it holds a FrozenDict)
        args = get_args(source)
        return handler.generate_schema(dict.__class_getitem__(args) if args else dict)

    def _refuse_change(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("A FrozenDict is read-only; build a new dict (and a new message from it) instead.")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse_change

    def __hash__(self) -> int:  # type: ignore[override]
        try:
            return self._hash
        except AttributeError:
            # nested values hashed by type, not content: no recursion, and equal dicts still hash alike
            self._hash = hash(
                frozenset(
                    (key, value if type(value) in PLAIN_VALUE_TYPES else type(value)) for key, value in self.items()
                )
            )
            return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict) and max(self._nesting_depth, _dict_depth(other)) > _RECURSION_SAFE_DEPTH:
            return _deep_equal(self, other)
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        if self._nesting_depth > _RECURSION_SAFE_DEPTH:
            return _deep_repr(self)
        return f"{type(self).__name__}({dict.__repr__(self)})"

    def __reduce__(self) -> Any:
        if self._nesting_depth > _RECURSION_SAFE_DEPTH:
            return _unflatten, (_flatten(self),)
        return _new_frozen_dict, (dict(self),)

    @property
    def _nesting_depth(self) -> int:
        """How many containers are nested in each other in this dict (0 when it holds plain values only)."""
        try:
            return self._nesting
        except AttributeError:
            return _nesting_depth_of(self)


def _dict_depth(value: dict[Any, Any]) -> int:
    return value._nesting_depth if type(value) is FrozenDict else 0


def _new_frozen_dict(items: dict[str, Any], nesting_depth: Optional[int] = None) -> FrozenDict:
    """A `FrozenDict` of `items`, which are frozen already."""
    frozen = dict.__new__(FrozenDict)
    dict.update(frozen, items)
    if nesting_depth is not None:
        frozen._nesting = nesting_depth
    return frozen


def _child_values(container: Any) -> Iterable[Any]:
    """The values held directly by a frozen container (a `Frozen`, `FrozenDict` or tuple)."""
    if isinstance(container, Frozen):
        values = container.__dict__
        declared = map(values.__getitem__, declared_field_names(type(container)))
        extra = container.__pydantic_extra__
        return chain(declared, extra.values()) if extra else declared
    if type(container) is FrozenDict:
        return container.values()
    return container


def _known_nesting_depth(value: Any) -> Optional[int]:
    if isinstance(value, Frozen):
        return value.__dict__.get("_nesting_depth")
    if type(value) is FrozenDict:
        return getattr(value, "_nesting", None)
    return None


def _is_frozen_container(value: Any) -> bool:
    return isinstance(value, Frozen) or type(value) is tuple or type(value) is FrozenDict


def _nesting_depth_of(root: Any) -> int:
    """How many containers are nested in each other in the frozen container `root`, found by a loop (no recursion),
    kept on every `Frozen` and `FrozenDict` in it that did not know its own yet."""
    if isinstance(root, Frozen) and all(map(PLAIN_VALUE_TYPES.__contains__, map(type, _child_values(root)))):
        root.__dict__["_nesting_depth"] = 0  # the usual message: plain values only (checked in C)
        return 0
    stack: list[list[Any]] = [[root, iter(_child_values(root)), 0]]
    while True:
        frame = stack[-1]
        deepest = frame[2]
        unknown: Any = None
        for item in frame[1]:
            if type(item) in PLAIN_VALUE_TYPES or not _is_frozen_container(item):
                continue
            known = _known_nesting_depth(item)
            if known is None:
                unknown = item
                break
            if known + 1 > deepest:
                deepest = known + 1
        frame[2] = deepest
        if unknown is not None:
            stack.append([unknown, iter(_child_values(unknown)), 0])
            continue
        stack.pop()
        container = frame[0]
        if isinstance(container, Frozen):
            container.__dict__["_nesting_depth"] = deepest
        elif type(container) is FrozenDict:
            container._nesting = deepest
        if not stack:
            return deepest
        parent = stack[-1]
        if deepest + 1 > parent[2]:
            parent[2] = deepest + 1


def _value_levels(value: Any) -> int:
    """How many containers are nested in each other in a frozen value, the value itself included."""
    return 1 + _nesting_depth_of(value) if _is_frozen_container(value) else 0


def _deepest_path(value: Any) -> list[str]:
    """The path segments (`.a`, `[0]`) from the frozen container `value` down its deepest branch (for errors)."""
    segments: list[str] = []
    current = value
    while _is_frozen_container(current):
        if type(current) is tuple:
            children: Iterable[tuple[str, Any]] = ((f"[{index}]", item) for index, item in enumerate(current))
        elif isinstance(current, Frozen):
            children = ((f".{name}", item) for name, item in current.field_items())
        else:
            children = ((f".{key}", item) for key, item in current.items())
        deepest, deepest_levels, deepest_segment = None, 0, ""
        for segment, item in children:
            levels = _value_levels(item)
            if levels > deepest_levels:
                deepest, deepest_levels, deepest_segment = item, levels, segment
        if deepest is None:
            break
        segments.append(deepest_segment)
        current = deepest
    return segments


class _Ref:
    """A node of a flattened tree referring to an earlier node (see `_flatten`)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return _Ref, (self.index,)


_FROZEN_NODE, _TUPLE_NODE, _FROZEN_DICT_NODE = range(3)


def _flatten(root: Any) -> list[tuple[Any, ...]]:
    """A deep frozen container as a flat list of nodes, each after those it holds (which it refers to by `_Ref`):
    what pickling and deep-copying a deep object work with, as pickle and `copy.deepcopy` would recurse."""
    nodes: list[tuple[Any, ...]] = []
    index_of: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]

    def node_value(value: Any) -> Any:
        return _Ref(index_of[id(value)]) if _is_frozen_container(value) else value

    while stack:
        container, expanded = stack.pop()
        if id(container) in index_of:
            continue
        if not expanded:
            stack.append((container, True))
            stack.extend(
                (item, False)
                for item in _child_values(container)
                if _is_frozen_container(item) and id(item) not in index_of
            )
            continue
        node: tuple[Any, ...]
        if type(container) is tuple:
            node = (_TUPLE_NODE, tuple(map(node_value, container)))
        elif type(container) is FrozenDict:
            node = (_FROZEN_DICT_NODE, tuple(container), tuple(map(node_value, container.values())))
        else:
            names = declared_field_names(type(container))
            extra = container.__pydantic_extra__
            node = (
                _FROZEN_NODE,
                type(container),
                names,
                tuple(node_value(container.__dict__[name]) for name in names),
                None if extra is None else tuple(extra),
                None if extra is None else tuple(map(node_value, extra.values())),
                tuple(container.__pydantic_fields_set__),
                container.__pydantic_private__,
            )
        index_of[id(container)] = len(nodes)
        nodes.append(node)
    return nodes


def _unflatten(nodes: list[tuple[Any, ...]]) -> Any:
    """The frozen container `_flatten` flattened (new objects, none of them knowing what the originals computed)."""
    built: list[Any] = []

    def resolved(values: Iterable[Any]) -> Iterator[Any]:
        return (built[value.index] if type(value) is _Ref else value for value in values)

    for node in nodes:
        obj: Any
        if node[0] == _TUPLE_NODE:
            obj = tuple(resolved(node[1]))
        elif node[0] == _FROZEN_DICT_NODE:
            obj = _new_frozen_dict(dict(zip(node[1], resolved(node[2]), strict=True)))
        else:
            cls, names, values, extra_names, extra_values, fields_set, private = node[1:]
            obj = cls.__new__(cls)
            obj.__setstate__(
                {
                    "__dict__": dict(zip(names, resolved(values), strict=True)),
                    "__pydantic_extra__": (
                        None if extra_names is None else dict(zip(extra_names, resolved(extra_values), strict=True))
                    ),
                    "__pydantic_fields_set__": set(fields_set),
                    "__pydantic_private__": private,
                }
            )
        built.append(obj)
    return built[-1]


def _deep_equal(first: Any, second: Any) -> bool:
    """`first == second` for frozen containers too deep for the recursive comparisons of pydantic and Python."""
    pairs: list[tuple[Any, Any]] = [(first, second)]
    while pairs:
        one, other = pairs.pop()
        if one is other:
            continue
        if isinstance(one, Frozen):
            if type(one) is not type(other) or one.__pydantic_private__ != other.__pydantic_private__:
                return False
            extra, other_extra = one.__pydantic_extra__ or {}, other.__pydantic_extra__ or {}
            if extra.keys() != other_extra.keys():
                return False
            pairs.extend((extra[name], other_extra[name]) for name in extra)
            pairs.extend((one.__dict__[name], other.__dict__[name]) for name in declared_field_names(type(one)))
        elif type(one) is tuple and type(other) is tuple:
            if len(one) != len(other):
                return False
            pairs.extend(zip(one, other, strict=True))
        elif type(one) is FrozenDict and isinstance(other, dict):
            if one.keys() != other.keys():
                return False
            pairs.extend((value, other[key]) for key, value in one.items())
        elif _is_frozen_container(other) or _is_frozen_container(one):
            return False
        elif not one == other:
            return False
    return True


def _deep_repr(root: Any) -> str:
    """`repr(root)` for frozen containers too deep for the recursive `repr` of pydantic and Python: the same text."""
    parts: list[str] = []
    stack: list[tuple[bool, Any]] = [(False, root)]  # (is text already, text or value)
    while stack:
        is_text, item = stack.pop()
        if is_text:
            parts.append(item)
            continue
        pieces: list[tuple[bool, Any]]
        if isinstance(item, Frozen):
            pieces = [(True, f"{type(item).__name__}(")]
            for index, (name, value) in enumerate(item.__repr_args__()):
                pieces.append((True, (", " if index else "") + ("" if name is None else f"{name}=")))
                pieces.append((False, value))
            pieces.append((True, ")"))
        elif type(item) is tuple:
            pieces = [(True, "(")]
            for index, value in enumerate(item):
                pieces.extend(((True, ", " if index else ""), (False, value)))
            pieces.append((True, ",)" if len(item) == 1 else ")"))
        elif type(item) is FrozenDict:
            pieces = [(True, "FrozenDict({")]
            for index, (key, value) in enumerate(item.items()):
                pieces.extend(((True, (", " if index else "") + f"{key!r}: "), (False, value)))
            pieces.append((True, "})"))
        else:
            parts.append(repr(item))
            continue
        stack.extend(reversed(pieces))
    return "".join(parts)


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


_RECURSION_BUDGET = 40
"""Walks over frozen values (`serialize()`) recurse this many levels deep at most, fast; below, they go on in a
loop (no recursion, however deep)."""


def _full_dump(frozen: Frozen, depth: int = 0) -> dict[str, Any]:
    """`Frozen.serialize()`: plain dicts (a `FrozenDict` as `{"class_": "Frozen", ...}`, like a dict in an
    undeclared field) and tuples all the way down."""
    return {
        field: value if type(value) in PLAIN_VALUE_TYPES else _full_dump_value(value, depth)
        for field, value in frozen.field_items()
    }


def _full_dump_value(value: Any, depth: int) -> Any:
    if isinstance(value, Frozen):
        return _full_dump(value, depth + 1) if depth < _RECURSION_BUDGET else _full_dump_in_a_loop(value)
    if type(value) is tuple:
        if depth >= _RECURSION_BUDGET:
            return _full_dump_in_a_loop(value)
        return tuple(item if type(item) in PLAIN_VALUE_TYPES else _full_dump_value(item, depth + 1) for item in value)
    if type(value) is FrozenDict:
        if depth >= _RECURSION_BUDGET:
            return _full_dump_in_a_loop(value)
        dump = {"class_": Frozen.__name__}
        for key, item in value.items():
            dump[key] = item if type(item) in PLAIN_VALUE_TYPES else _full_dump_value(item, depth + 1)
        return dump
    return value


def _full_dump_in_a_loop(value: Any) -> Any:
    """`_full_dump_value` of a value too deep to recurse into: a loop over an explicit stack."""
    root: list[Any] = [value]
    pending: list[tuple[Any, Any, Any]] = [(root, 0, value)]  # (container, key, value to spell out there)
    sequences: list[tuple[Any, Any, list[Any]]] = []  # tuples are built as lists, turned into tuples at the end
    while pending:
        target, slot, item = pending.pop()
        if isinstance(item, Frozen):
            items: Iterable[tuple[Any, Any]] = item.field_items()
            spelled_out: Any = {}
        elif type(item) is FrozenDict:
            items, spelled_out = item.items(), {"class_": Frozen.__name__}
        elif type(item) is tuple:
            items, spelled_out = enumerate(item), list(item)
            sequences.append((target, slot, spelled_out))
        else:
            continue
        target[slot] = spelled_out
        for key, nested in items:
            spelled_out[key] = nested  # (in place already, to keep the order of the keys)
            if type(nested) not in PLAIN_VALUE_TYPES:
                pending.append((spelled_out, key, nested))
    for target, slot, sequence in reversed(sequences):  # inner tuples first
        target[slot] = tuple(sequence)
    return root[0]


def canonical_json(data: Any) -> bytes:
    """`orjson.dumps(data, option=OPT_SORT_KEYS)`, for data nested deeper than orjson allows (254 levels) too: the
    same bytes (the canonical form of a `Frozen` is `canonical_json(obj.serialize())`)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # too deep (or not encodable at all: then `_encode_deep` raises orjson's error)
        return _encode_deep(data)


def _is_json_container(value: Any) -> bool:
    """Whether orjson writes `value` as an array or object (tuple subclasses it refuses, like other objects)."""
    return isinstance(value, (dict, list)) or type(value) is tuple


def _encode_deep(data: Any, orjson_depth: int = _ORJSON_SAFE_DEPTH) -> bytes:
    """What `orjson.dumps(data, option=OPT_SORT_KEYS)` would give without its depth limit: containers at most
    `orjson_depth` deep and every value outside containers are written by orjson; deeper containers level by level,
    keys sorted as orjson sorts them (by code point, the order of Python's `sorted`)."""
    heights = _container_heights(data)
    chunks: list[bytes] = []
    stack: list[tuple[bool, Any]] = [(False, data)]  # (is bytes already, bytes or value)
    while stack:
        is_bytes, item = stack.pop()
        if is_bytes:
            chunks.append(item)
            continue
        height = heights.get(id(item)) if _is_json_container(item) else None
        if height is None or height <= orjson_depth:
            chunks.append(orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
            continue
        pieces: list[tuple[bool, Any]] = []
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                raise orjson.JSONEncodeError("Dict key must be str")
            pieces.append((True, b"{"))
            for index, key in enumerate(sorted(item)):
                pieces.append((True, (b"," if index else b"") + orjson.dumps(key) + b":"))
                pieces.append((False, item[key]))
            pieces.append((True, b"}"))
        else:
            pieces.append((True, b"["))
            for index, value in enumerate(item):
                if index:
                    pieces.append((True, b","))
                pieces.append((False, value))
            pieces.append((True, b"]"))
        stack.extend(reversed(pieces))
    return b"".join(chunks)


def _container_heights(data: Any) -> dict[int, int]:
    """How many containers deep each array and object in `data` is, itself included (by id; a loop, no recursion)."""
    heights: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        value, expanded = stack.pop()
        if not _is_json_container(value) or (not expanded and id(value) in heights):
            continue
        children = value.values() if isinstance(value, dict) else value
        if expanded:
            heights[id(value)] = 1 + max(
                (heights[id(child)] for child in children if _is_json_container(child)), default=0
            )
        else:
            stack.append((value, True))
            stack.extend((child, False) for child in children if _is_json_container(child))
    return heights
