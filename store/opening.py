"""`open_store`: the store a path or URL names."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union
from urllib.parse import unquote, urlsplit

from store.base import EventStore
from store.errors import StoreUsageError
from store.jsonl import JSONLStore
from store.memory import MemoryStore
from store.postgres import PostgresStore
from store.sqlite import SQLiteStore

StoreFactory = Callable[..., EventStore]
"""Makes a store from a URL (as given) and keyword options."""

_SCHEMES: dict[str, StoreFactory] = {}
_SUFFIXES: dict[str, StoreFactory] = {}


def register_scheme(scheme: str, factory: StoreFactory) -> None:
    """Open URLs `scheme://...` with `factory(url, **options)` (how a backend outside this module plugs in)."""
    _SCHEMES[scheme.lower()] = factory


def register_suffix(suffix: str, factory: StoreFactory) -> None:
    """Open plain paths ending in `suffix` (say `.jsonl`) with `factory(path, **options)`; the longest registered
    suffix a path ends in wins (`.tar.jsonl` over `.jsonl`)."""
    _SUFFIXES[suffix.lower()] = factory


def open_store(target: Union[str, os.PathLike[str], EventStore], **options: Any) -> EventStore:
    """The store `target` names, not opened yet: use it as `async with open_store(target) as store:`, or pass it
    to `MiniAgents(store=...)` (which opens and closes it).

    `target` is a URL or a path: `memory://` (a `MemoryStore`), `sqlite:///relative.db` or `sqlite:////abs.db`,
    `postgresql://user:password@host:5432/database` or `postgres://...` (a `PostgresStore`; `?schema=name` picks
    the PostgreSQL schema of its tables, `miniagents` by default), a path ending in a suffix a backend registered
    (`*.jsonl`: a text recording), or any other path (a `SQLiteStore`). An `EventStore` is returned as it is.
    `options` go to the store's constructor.
    """
    if isinstance(target, EventStore):
        if options:
            raise StoreUsageError(
                f"open_store() got a store object and options {sorted(options)}; pass one or the other."
            )
        return target
    if not isinstance(target, (str, os.PathLike)):
        raise StoreUsageError(
            f"open_store() needs a path, URL or store, got {target!r} ({type(target).__name__}); pass a file path "
            "such as runs.db, a URL such as sqlite:///runs.db or memory://, or an EventStore."
        )
    text = os.fspath(target)
    if not isinstance(text, str):
        raise StoreUsageError(
            f"open_store() needs a path, URL or store, with the path as text, got {target!r}; decode it first."
        )
    if not text:
        raise StoreUsageError("open_store() got an empty path; pass a file path or a URL such as memory://.")
    scheme, separator, _ = text.partition("://")
    if separator and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        factory = _SCHEMES.get(scheme.lower())
        if factory is None:
            known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
            raise StoreUsageError(
                f"open_store() does not know the URL scheme {scheme!r} of {text!r}; it opens {known}, and file paths."
            )
        return _construct(factory, text, **options)
    path = _expand_user(text, text)
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if path.lower().endswith(suffix):
            return _construct(_SUFFIXES[suffix], path, **options)
    return _construct(SQLiteStore, path, **options)


def _expand_user(path: str, given: str) -> str:
    """`path` with a leading `~` or `~user` made the home directory (`Path.expanduser`), else as it is."""
    if not path.startswith("~"):
        return path
    try:
        return str(Path(path).expanduser())
    except RuntimeError as error:
        raise StoreUsageError(
            f"open_store() cannot expand the ~ of {given!r} ({error}); give the path without ~."
        ) from None


def _construct(factory: StoreFactory, *args: Any, **options: Any) -> EventStore:
    """`factory(*args, **options)`, with options its signature does not take refused as a `StoreUsageError` that
    names the backend, the options and what it takes (not a bare `TypeError` from the constructor)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to check against: let the factory say
        return factory(*args, **options)
    try:
        signature.bind(*args, **options)
    except TypeError as error:
        name = getattr(factory, "__qualname__", None) or repr(factory)
        by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        filled = [p.name for p in signature.parameters.values() if p.kind in positional][: len(args)]
        takes = [p.name for p in signature.parameters.values() if p.kind in by_keyword and p.name not in filled]
        unknown = [option for option in options if option not in takes]
        what = f"the options {unknown}" if unknown else f"these options ({error})"
        taken = f"it takes {', '.join(takes)}" if takes else "it takes no options"
        target = f" (for {os.fspath(args[0])!r})" if args and isinstance(args[0], (str, os.PathLike)) else ""
        raise StoreUsageError(
            f"open_store() cannot pass {what} to {name}{target}: {taken}; correct or drop the option."
        ) from None
    return factory(*args, **options)


def _memory_store(url: str, **options: Any) -> EventStore:
    rest = url.partition("://")[2]
    if rest:
        raise StoreUsageError(f"A memory store URL is just memory://, got {url!r}; every call opens a new store.")
    return _construct(MemoryStore, **options)


def _sqlite_store(url: str, **options: Any) -> EventStore:
    parts = urlsplit(url)
    forms = "sqlite:///relative/path.db or sqlite:////absolute/path.db"
    if parts.query:
        raise StoreUsageError(
            f"A SQLite store URL is {forms}, got {url!r}: query strings such as ?mode=ro are not supported; pass "
            "store options to open_store() as keyword arguments."
        )
    if parts.netloc or parts.fragment or not parts.path.startswith("/"):
        raise StoreUsageError(f"A SQLite store URL is {forms}, got {url!r}.")
    path = unquote(parts.path[1:])
    if not path or path.endswith("/") or Path(path).name in ("", ".", ".."):
        raise StoreUsageError(
            f"A SQLite store URL is {forms}, got {url!r}, whose path names no file; add the database file name."
        )
    return _construct(SQLiteStore, Path(_expand_user(path, url)), **options)


register_scheme("memory", _memory_store)
register_scheme("sqlite", _sqlite_store)
register_scheme("postgresql", PostgresStore)
register_scheme("postgres", PostgresStore)
register_suffix(".jsonl", JSONLStore)
