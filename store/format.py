"""The stored-format policy, one for every backend: what a store writes about itself when it is created, and which
stores this library opens.

A backend keeps these entries in its own place (a `meta` table, a file header) and hands what it finds to
`check_format` before it reads or writes anything else; a store of another application, of a newer schema, of
another canonical form or hash algorithm is refused with an error naming it, and left untouched.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping

from miniagents.promising.ext.frozen import CANONICAL_FORM_VERSION, HASH_ALGORITHM
from store.errors import SchemaVersionError, StoreCorruptedError, StoreOpenError

APPLICATION = "miniagents-store"
"""What every store says it belongs to (its `application` entry)."""


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("miniagents")
    except Exception:  # not installed as a distribution (a source checkout)
        return "unknown"


def new_format_entries() -> dict[str, str]:
    """The entries a new store writes about itself (the schema version is the backend's, written next to them)."""
    return {
        "application": APPLICATION,
        "canonical_form_version": str(CANONICAL_FORM_VERSION),
        "hash_algorithm": HASH_ALGORITHM,
        "created_by": f"miniagents {library_version()}",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def check_format(
    entries: Mapping[str, str],
    *,
    location: str,
    newest_schema: int,
    foreign: Callable[[], StoreOpenError],
    elsewhere: str = "start a new store",
    schema: str = "store schema version",
) -> int:
    """The schema version of a store with these entries, if this library can open it; else raise.

    :param entries: what the store says about itself (`application`, `schema_version`, `canonical_form_version`,
        `hash_algorithm`).
    :param newest_schema: the newest schema version of this backend that this library reads.
    :param foreign: the error for storage of another application (a backend says best what it found there).
    :param elsewhere: what to do instead with a store whose schema version cannot be read.
    :param schema: what the backend calls its schema version, for messages.
    """
    if entries.get("application") != APPLICATION:
        raise foreign()
    try:
        version = int(entries.get("schema_version", ""))
    except ValueError:
        raise StoreCorruptedError(
            f"{location} has an unreadable schema version {entries.get('schema_version')!r}; it was left untouched. "
            f"Restore it from a backup or {elsewhere}.",
            location,
        ) from None
    if version > newest_schema:
        raise SchemaVersionError(
            f"{location} was written with {schema} {version}, but this library only reads versions up to "
            f"{newest_schema}; upgrade miniagents to open it (it was left untouched).",
            location,
        )
    canonical = entries.get("canonical_form_version")
    if canonical != str(CANONICAL_FORM_VERSION):
        raise SchemaVersionError(
            f"{location} holds objects in canonical form version {canonical}, but this library writes version "
            f"{CANONICAL_FORM_VERSION}; open it with the miniagents version that wrote it (it was left untouched).",
            location,
        )
    algorithm = entries.get("hash_algorithm")
    if algorithm != HASH_ALGORITHM:
        raise SchemaVersionError(
            f"{location} hashes objects with {algorithm!r}, but this library uses {HASH_ALGORITHM!r}; open it with "
            "the miniagents version that wrote it (it was left untouched).",
            location,
        )
    return version
