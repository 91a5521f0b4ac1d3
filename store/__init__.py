"""The content-addressed, append-only event store: `SQLiteStore`, `MemoryStore`, `open_store` and what they return."""

from store.base import EventStore, Problem, RunInfo, RunStatus, VerifyReport
from store.decoding import ObjectDecoder, is_stand_in_class
from store.errors import (
    ForeignDatabaseError,
    SchemaVersionError,
    StoreClosedError,
    StoreCorruptedError,
    StoreError,
    StoreIntegrityError,
    StoreOpenError,
    StoreReadError,
    StoreUsageError,
    StoreWriteError,
    UnknownHashError,
    UnknownRunError,
)
from store.memory import MemoryStore
from store.opening import open_store, register_scheme, register_suffix
from store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "EventStore",
    "ForeignDatabaseError",
    "MemoryStore",
    "ObjectDecoder",
    "Problem",
    "RunInfo",
    "RunStatus",
    "SQLiteStore",
    "SchemaVersionError",
    "StoreClosedError",
    "StoreCorruptedError",
    "StoreError",
    "StoreIntegrityError",
    "StoreOpenError",
    "StoreReadError",
    "StoreUsageError",
    "StoreWriteError",
    "UnknownHashError",
    "UnknownRunError",
    "VerifyReport",
    "is_stand_in_class",
    "open_store",
    "register_scheme",
    "register_suffix",
]
