"""Stored canonical bytes back into `Frozen` / `Message` objects whose hash keys match the stored ones."""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson
from blake3 import blake3

from miniagents.messages import REFERENCE_SUFFIX, REFERENCES_SUFFIX, Message, may_reference_messages
from miniagents.promising.ext.frozen import PLAIN_VALUE_TYPES, Frozen
from store.errors import StoreIntegrityError

HASH_KEY_LENGTHS = (40, 64)
"""Hex lengths of hash keys: 40 by default, 64 with `longer_hash_keys=True`."""

_HEX_DIGITS = frozenset("0123456789abcdef")


def is_hash_key(value: object) -> bool:
    """Whether `value` looks like a hash key: 40 or 64 lower-case hex characters."""
    return isinstance(value, str) and len(value) in HASH_KEY_LENGTHS and _HEX_DIGITS.issuperset(value)


def hash_matches(hash_key: str, body: bytes) -> bool:
    """Whether `body` hashes to `hash_key` (compared at the length of `hash_key`)."""
    return blake3(body).hexdigest()[: len(hash_key)] == hash_key


def find_references(value: Any) -> Iterator[str]:
    """Hash keys of the messages referenced (`x__hash_key`, `x__hash_keys`) anywhere inside parsed JSON."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, item in current.items():
                if key.endswith(REFERENCE_SUFFIX) and is_hash_key(item):
                    yield item
                elif key.endswith(REFERENCES_SUFFIX) and _are_hash_keys(item):
                    yield from item
                elif isinstance(item, (dict, list)):
                    stack.append(item)
        elif isinstance(current, list):
            stack.extend(item for item in current if isinstance(item, (dict, list)))


def _are_hash_keys(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(is_hash_key(item) for item in value)


def body_references(body: bytes) -> list[str]:
    """Hash keys referenced by one object's canonical bytes (parses only bytes that can hold references)."""
    if not may_reference_messages(body):
        return []
    return list(find_references(orjson.loads(body)))


def _parse(hash_key: str, body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise StoreIntegrityError(f"Object {hash_key} is not valid JSON ({error}).", hash_key) from None


def _parsed_references(hash_key: str, body: bytes, parsed: dict[str, Any]) -> list[str]:
    """`body_references(body)`, keeping the parsed body in `parsed` if it had to be parsed."""
    if not may_reference_messages(body):
        return []
    data = parsed[hash_key] = _parse(hash_key, body)
    return list(find_references(data))


def find_hash_keys(value: Any) -> Iterator[str]:
    """Every string inside parsed JSON that looks like a hash key (what data of an unknown shape may refer to)."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            if is_hash_key(current):
                yield current
        elif isinstance(current, dict):
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)


_STAND_INS: dict[tuple[str, type[Frozen]], type[Frozen]] = {}
_STAND_IN_CLASSES: set[type[Frozen]] = set()


def is_stand_in_class(cls: type) -> bool:
    """Whether `cls` was created at runtime by the decoder to stand in for a class this process does not have."""
    return cls in _STAND_IN_CLASSES


def stand_in_class(class_name: str, base: type[Frozen]) -> type[Frozen]:
    """A class named `class_name` subclassing `base`, created once per process, for objects of unknown classes."""
    key = (class_name, base)
    cls = _STAND_INS.get(key)
    if cls is None:
        namespace = {
            "__module__": __name__,
            "__qualname__": class_name,
            "__doc__": f"Stand-in for the stored class {class_name!r}, which this process does not define.",
        }
        cls = type(class_name, (base,), namespace)
        _STAND_INS[key] = cls
        _STAND_IN_CLASSES.add(cls)
    return cls


def _frozen_classes_by_name() -> dict[str, list[type[Frozen]]]:
    classes: dict[str, list[type[Frozen]]] = {Frozen.__name__: [Frozen]}
    seen: set[type[Frozen]] = {Frozen}
    stack: list[type[Frozen]] = [Frozen]
    while stack:
        for subclass in stack.pop().__subclasses__():
            if subclass in seen:
                continue
            seen.add(subclass)
            stack.append(subclass)
            if not is_stand_in_class(subclass):
                classes.setdefault(subclass.__name__, []).append(subclass)
    return classes


_PINNABLE: dict[tuple[type, str], bool] = {}


def _pin(obj: Frozen, attribute: str, value: Any) -> None:
    """Fill an attribute of `obj` computed once and kept in its `__dict__` (like `functools.cached_property`) with
    a value already known to be right; the caller checks that the attribute now reads `value`."""
    key = (type(obj), attribute)
    pinnable = _PINNABLE.get(key)
    if pinnable is None:
        descriptor = inspect.getattr_static(type(obj), attribute, None)
        pinnable = isinstance(descriptor, functools.cached_property) or (
            descriptor is not None and not isinstance(descriptor, property) and not hasattr(descriptor, "__set__")
        )
        _PINNABLE[key] = pinnable
    if pinnable:
        obj.__dict__[attribute] = value


@dataclass
class LoadedObjects:
    """What a store read to rebuild some objects: the checked bytes of those not rebuilt yet and of everything
    they reference, the hash keys each of those bodies references, and the objects among them (or referenced by
    them) that were rebuilt already."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=dict)
    decoded: dict[str, Frozen] = field(default_factory=dict)


class ObjectDecoder:
    """Rebuilds objects from canonical bytes, caching what it rebuilt (objects are immutable, so sharing is safe).

    The class named by `class_` is used when this process has it (found by name among the subclasses of `Frozen`;
    no module is ever imported because stored data names it). When it is missing, cannot be built from the stored
    fields, or builds an object with other bytes, a stand-in class of the same name is used instead: a `Message`
    subclass for stored (top-level) objects, a `Frozen` subclass for nested ones.
    """

    def __init__(self, cache_size: int = 50_000) -> None:
        self._cache: OrderedDict[str, Frozen] = OrderedDict()
        self._cache_size = cache_size
        self._classes: Optional[dict[str, list[type[Frozen]]]] = None
        self._missing_names: set[str] = set()

    def cached(self, hash_key: str) -> Optional[Frozen]:
        """The object already rebuilt for `hash_key`, if any."""
        obj = self._cache.get(hash_key)
        if obj is not None:
            self._cache.move_to_end(hash_key)
        return obj

    def clear(self) -> None:
        """Forget every rebuilt object (and which classes this process has)."""
        self._cache.clear()
        self._classes = None
        self._missing_names.clear()

    def decode(self, hash_key: str, bodies: Mapping[str, bytes]) -> Frozen:
        """Rebuild the object `hash_key` from `bodies` (its bytes and those of every object it references that is
        not cached yet); the bytes must already have been checked against their keys."""
        cached = self.cached(hash_key)
        if cached is not None:
            return cached
        return self.decode_many([hash_key], LoadedObjects(bodies=dict(bodies)))[hash_key]

    def decode_many(self, hash_keys: Sequence[str], loaded: LoadedObjects) -> dict[str, Frozen]:
        """Rebuild several objects from what a store loaded for them (bytes checked already), each shared object
        once and each body parsed once."""
        resolved: dict[str, Frozen] = {}
        parsed: dict[str, Any] = {}
        for key in self._build_order(hash_keys, loaded, resolved, parsed):
            resolved[key] = self._rebuild(key, loaded.bodies[key], parsed.get(key), resolved)
            self._remember(key, resolved[key])
        return {key: resolved[key] for key in hash_keys}

    def _build_order(
        self, hash_keys: Sequence[str], loaded: LoadedObjects, resolved: dict[str, Frozen], parsed: dict[str, Any]
    ) -> list[str]:
        """Keys to rebuild, every object after the objects it references (iterative post-order); objects found in
        the load or in the cache go straight into `resolved`, bodies parsed to find references into `parsed`."""
        order: list[str] = []
        done: set[str] = set()
        stack: list[tuple[str, bool]] = [(key, False) for key in reversed(hash_keys)]
        while stack:
            key, expanded = stack.pop()
            if expanded:  # the objects it references are ordered already
                done.add(key)
                order.append(key)
                continue
            if key in done or key in resolved:
                continue
            known = loaded.decoded.get(key)
            if known is None:
                known = self.cached(key)
            if known is not None:
                resolved[key] = known
                continue
            body = loaded.bodies.get(key)
            if body is None:
                raise StoreIntegrityError(
                    f"Object {key} is referenced but missing from the store; run `await store.averify()` to list "
                    "every damaged object.",
                    key,
                )
            stack.append((key, True))
            refs = loaded.references.get(key)
            if refs is None:
                refs = _parsed_references(key, body, parsed)
            stack.extend((ref, False) for ref in refs if ref not in done)
        return order

    def _remember(self, hash_key: str, obj: Frozen) -> None:
        self._cache[hash_key] = obj
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _rebuild(self, hash_key: str, body: bytes, data: Any, resolved: Mapping[str, Frozen]) -> Frozen:
        """The object stored as `body`; `data` is the body parsed already, or None."""
        if data is None:
            data = _parse(hash_key, body)
        class_name = data.get("class_") if isinstance(data, dict) else None
        if not isinstance(class_name, str):
            raise StoreIntegrityError(
                f"Object {hash_key} has no `class_` field, so it is not a stored Frozen object.", hash_key
            )
        first_error: Optional[BaseException] = None
        for cls, real_nested_classes in self._classes_to_try(class_name):
            try:
                obj = cls(**self._fields(data, real_nested_classes, resolved))
                if obj.canonical_bytes != body:
                    continue
            except Exception as error:  # a class that cannot take the stored fields: try the next one
                first_error = first_error or error
                continue
            _pin(obj, "hash_key", hash_key)
            if obj.hash_key == hash_key:
                return obj
        raise StoreIntegrityError(
            f"Object {hash_key} (class {class_name!r}) cannot be rebuilt so that its bytes match the stored ones"
            + (f" ({type(first_error).__name__}: {first_error})" if first_error else "")
            + "; it was stored by an incompatible version of the library.",
            hash_key,
        )

    def _classes_to_try(self, class_name: str) -> Iterator[tuple[type[Frozen], bool]]:
        """The classes to rebuild an object of `class_name` with, and whether its nested objects may use this
        process's classes too: the classes of that name here, then stand-ins (created only when needed)."""
        for cls in self._classes_named(class_name):
            yield cls, True
        yield stand_in_class(class_name, Message), False
        yield stand_in_class(class_name, Frozen), False

    def _fields(
        self,
        data: dict[str, Any],
        real_classes: bool,
        resolved: Mapping[str, Frozen],
        built: Optional[Mapping[int, Any]] = None,
    ) -> dict[str, Any]:
        """The constructor arguments of a stored dict: references replaced by the objects they name, nested dicts
        and lists by what `_value` makes of them (taken from `built`, by `id`, when they were built already)."""
        fields: dict[str, Any] = {}
        for name, value in data.items():
            if REFERENCE_SUFFIX in name:  # in both suffixes
                if name.endswith(REFERENCE_SUFFIX) and is_hash_key(value):
                    fields[name[: -len(REFERENCE_SUFFIX)]] = resolved[value]
                    continue
                if name.endswith(REFERENCES_SUFFIX) and _are_hash_keys(value):
                    fields[name[: -len(REFERENCES_SUFFIX)]] = tuple(resolved[ref] for ref in value)
                    continue
            if type(value) in PLAIN_VALUE_TYPES:
                fields[name] = value
            elif built is not None:
                fields[name] = built[id(value)]
            else:
                fields[name] = self._value(value, real_classes, resolved)
        return fields

    def _value(self, value: Any, real_classes: bool, resolved: Mapping[str, Frozen]) -> Any:
        """A stored field value rebuilt: dicts with a `class_` as those objects, lists as tuples. Values nest up to
        `MAX_NESTING_DEPTH` levels, so the containers are built without recursion: listed parents first, then
        built in the reverse order (every container after those inside it)."""
        if type(value) is not dict and type(value) is not list:
            return value
        containers: list[Any] = []
        stack = [value]
        while stack:
            current = stack.pop()
            containers.append(current)
            items = current.values() if type(current) is dict else current
            stack.extend(item for item in items if type(item) is dict or type(item) is list)
        built: dict[int, Any] = {}
        for container in reversed(containers):
            if type(container) is list:
                built[id(container)] = tuple(
                    built[id(item)] if type(item) is dict or type(item) is list else item for item in container
                )
            else:
                built[id(container)] = self._object(container, real_classes, resolved, built)
        return built[id(value)]

    def _object(
        self, data: dict[str, Any], real_classes: bool, resolved: Mapping[str, Frozen], built: Mapping[int, Any]
    ) -> Any:
        """A nested stored dict as the `Frozen` its `class_` names (a plain dict without one)."""
        fields = self._fields(data, real_classes, resolved, built)
        class_name = data.get("class_")
        if not isinstance(class_name, str):
            return fields
        cls: Optional[type[Frozen]] = None
        if real_classes:
            candidates = self._classes_named(class_name)
            cls = candidates[0] if candidates else None
        if cls is None:
            cls = Frozen if class_name == Frozen.__name__ else stand_in_class(class_name, Frozen)
        return cls(**fields)

    def _classes_named(self, class_name: str) -> list[type[Frozen]]:
        if self._classes is None or (class_name not in self._classes and class_name not in self._missing_names):
            self._classes = _frozen_classes_by_name()
        classes = self._classes.get(class_name)
        if classes is None:
            self._missing_names.add(class_name)
            return []
        return classes


class LazyObjects(Mapping[str, Frozen]):
    """Objects whose bytes were read and checked already, each rebuilt when first looked up (then kept).

    Looking one up raises `StoreIntegrityError` if its bytes cannot be rebuilt into an object.
    """

    def __init__(self, decoder: ObjectDecoder, hash_keys: Sequence[str], loaded: LoadedObjects) -> None:
        self._decoder = decoder
        self._keys = list(dict.fromkeys(hash_keys))
        self._wanted = frozenset(self._keys)
        self._loaded = loaded
        self._objects: dict[str, Frozen] = {key: loaded.decoded[key] for key in self._keys if key in loaded.decoded}

    def __getitem__(self, hash_key: str) -> Frozen:
        obj = self._objects.get(hash_key)
        if obj is None:
            if hash_key not in self._wanted:
                raise KeyError(hash_key)
            obj = self._objects[hash_key] = self._decoder.decode_many([hash_key], self._loaded)[hash_key]
        return obj

    def __contains__(self, hash_key: object) -> bool:
        return hash_key in self._wanted

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
