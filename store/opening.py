"""`open_store`: the store a path or URL names."""

from __future__ import annotations

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
    """Open plain paths ending in `suffix` (say `.jsonl`) with `factory(path, **options)`."""
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
    text = os.fspath(target)
    if not isinstance(text, str):
        raise StoreUsageError(f"open_store() needs a path or URL as text, got {target!r}.")
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
        return factory(text, **options)
    for suffix, factory in _SUFFIXES.items():
        if text.lower().endswith(suffix):
            return factory(text, **options)
    return SQLiteStore(text, **options)


def _memory_store(url: str, **options: Any) -> EventStore:
    rest = url.partition("://")[2]
    if rest:
        raise StoreUsageError(f"A memory store URL is just memory://, got {url!r}; every call opens a new store.")
    return MemoryStore(**options)


def _sqlite_store(url: str, **options: Any) -> EventStore:
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/") or parts.path == "/":
        raise StoreUsageError(
            f"A SQLite store URL is sqlite:///relative/path.db or sqlite:////absolute/path.db, got {url!r}."
        )
    return SQLiteStore(Path(unquote(parts.path[1:])), **options)


register_scheme("memory", _memory_store)
register_scheme("sqlite", _sqlite_store)
register_scheme("postgresql", PostgresStore)
register_scheme("postgres", PostgresStore)
register_suffix(".jsonl", JSONLStore)
