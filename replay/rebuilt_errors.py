"""Recorded exceptions rebuilt for replay: as their own class wherever it can be imported, else as `RecordedError`."""

from __future__ import annotations

import builtins
import importlib
import inspect
import sys
from collections.abc import Collection, Mapping
from typing import Any, Optional

from miniagents.events import RECORDED_ERROR_ATTRIBUTES
from replay.errors import RecordedError

_NOT_REBUILT = (KeyboardInterrupt, SystemExit, GeneratorExit)

_REPLAYED_CLASSES: dict[type, Optional[tuple[type[RecordedError], frozenset[str]]]] = {}
"""Per original class: its replayed class (a subclass of it and of `RecordedError`) and the attributes it declares
without a value, or None when there is no such class."""


def rebuild_error(description: Mapping[str, Any]) -> BaseException:
    """The recorded exception, never raised here: a built-in one as itself; one whose class can be imported as an
    instance of that class AND of `RecordedError` (built without calling its `__init__`, with its text and its
    recorded attributes); any other as a plain `RecordedError` with its type and text. A run that records the
    rebuilt error records `description` itself (see `miniagents.events.describe_error`)."""
    try:
        type_name = str(description.get("type", "Exception"))
        module = description.get("module")
        module = str(module) if module is not None else None
        text = str(description.get("text", ""))
        recorded = {"type": type_name, "module": module, "text": text, **description}
    except Exception:  # not a description at all
        type_name, module, text = "Exception", None, ""
        recorded = {"type": type_name, "module": module, "text": text}
    try:
        error = _rebuilt(type_name, module, text, recorded)
    except Exception:  # whatever the recorded class does, replay goes on with a stand-in
        error = None
    if error is None:
        error = RecordedError(type_name, module, text)
        _set_attributes(error, recorded, ())
    return error


def _rebuilt(type_name: str, module: Optional[str], text: str, recorded: dict[str, Any]) -> Optional[BaseException]:
    if module == "builtins":
        error_class = getattr(builtins, type_name, None)
        if isinstance(error_class, type) and issubclass(error_class, BaseException):
            if issubclass(error_class, _NOT_REBUILT):
                return None
            attributes = recorded.get("attributes")
            args = attributes.get("args") if isinstance(attributes, Mapping) else None
            if (
                issubclass(error_class, OSError)
                and isinstance(attributes, Mapping)
                and attributes.get("errno") is not None
            ):
                # OSError(errno, strerror, filename, winerror, filename2) sets the fields its args leave out
                args = [attributes.get("errno"), attributes.get("strerror")]
                if attributes.get("filename") is not None or attributes.get("filename2") is not None:
                    args += [attributes.get("filename"), None, attributes.get("filename2")]
            try:  # from its recorded arguments, so that `args`, `str()`, `errno`... are the original's
                error = error_class(*args) if isinstance(args, list) else error_class(text)
            except Exception:  # a built-in exception that wants other arguments: rebuilt as any other class
                pass
            else:
                _force_set(error, "recorded_description", recorded)
                return error
    original = _importable_class(module, type_name)
    replayed = _replayed_class(original) if original is not None else None
    if replayed is None:
        return None
    replayed_class, declared = replayed
    replayed_error = replayed_class.__new__(replayed_class)
    replayed_error.args = (text,)
    for name, value in (("type_name", type_name), ("module", module), ("text", text)):
        _force_set(replayed_error, name, value)
    _set_attributes(replayed_error, recorded, declared)
    return replayed_error


def _importable_class(module: Optional[str], qualname: str) -> Optional[type]:
    """The exception class named by a recorded module and qualname: the module imported (nothing more runs: the
    qualname is looked up in namespaces, without `__getattr__` hooks), or None."""
    if not module or not qualname:
        return None
    try:
        found: Any = sys.modules.get(module) or importlib.import_module(module)
        for part in qualname.split("."):
            found = vars(found)[part]
    except (Exception, SystemExit):  # missing module or name, or a module that fails to import
        return None
    if not isinstance(found, type) or not issubclass(found, Exception) or issubclass(found, RecordedError):
        return None  # a BaseException that is no Exception would become one (`RecordedError` is an Exception)
    return found


def _replayed_class(original: type) -> Optional[tuple[type[RecordedError], frozenset[str]]]:
    """A subclass of `original` and `RecordedError` that looks like `original` (name, qualname, module, text), and
    the attributes `original` declares without a value; None when the two classes cannot be combined (instance
    layouts or metaclasses that conflict)."""
    if original in _REPLAYED_CLASSES:
        return _REPLAYED_CLASSES[original]
    namespace = {
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": original.__doc__,
        # the recorded text as the original's `str()` was, whatever the original's __str__ and __repr__ would read
        "__str__": BaseException.__str__,
        "__repr__": BaseException.__repr__,
        "__reduce__": _reduce_replayed,
    }
    try:
        replayed_class: type[RecordedError] = type(original.__name__, (original, RecordedError), namespace)
    except Exception:
        replayed = None
    else:
        replayed = (replayed_class, _declared_names(original))
    _REPLAYED_CLASSES[original] = replayed
    return replayed


def _reduce_replayed(self: RecordedError) -> tuple[Any, ...]:
    """Pickled (and copied) as its description, rebuilt on the other side."""
    return rebuild_error, (self.recorded_description,)


def _declared_names(original: type) -> frozenset[str]:
    """The instance attributes that `original` (or one of its non-built-in bases) declares by annotation only, with
    no class-level value (such as `request` and `response` of the SDK errors, which are set by `__init__`)."""
    annotated: set[str] = set()
    with_values: set[str] = set()
    for klass in original.__mro__:
        if klass.__module__ == "builtins":
            continue
        try:
            annotated.update(inspect.get_annotations(klass))
        except Exception:  # annotations that cannot be read are left out
            pass
        with_values.update(vars(klass))
    return frozenset(name for name in annotated - with_values if not name.startswith("_"))


def _set_attributes(error: BaseException, recorded: dict[str, Any], declared: Collection[str]) -> None:
    """Set the attributes declared without a value to None (so that reading `request` or `response` of a replayed
    SDK error gives None), then the recorded description and the recorded public attributes."""
    for name in sorted(declared):
        if name not in vars(error):
            _force_set(error, name, None)
    _force_set(error, "recorded_description", recorded)
    attributes = recorded.get("attributes")
    if isinstance(attributes, Mapping):
        for name in RECORDED_ERROR_ATTRIBUTES:
            if name in attributes and name != "args":  # `str()` stays the recorded text
                _force_set(error, name, attributes[name])


def _force_set(error: BaseException, name: str, value: Any) -> None:
    """Set an attribute on an error, past a `__setattr__` that refuses it; one that cannot be set is left out."""
    try:
        setattr(error, name, value)
    except Exception:
        try:
            vars(error)[name] = value
        except Exception:
            pass
