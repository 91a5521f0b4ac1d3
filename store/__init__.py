"""The content-addressed, append-only event store: `SQLiteStore`, `JSONLStore`, `PostgresStore`, `MemoryStore`,
`open_store`, `acopy` and what they return."""

from store.base import EventStore
from store.copying import acopy
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
from store.jsonl import JSONLStore
from store.memory import MemoryStore
from store.opening import open_store, register_scheme, register_suffix
from store.postgres import PostgresStore
from store.results import Problem, RunInfo, RunStatus, VerifyReport
from store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "EventStore",
    "ForeignDatabaseError",
    "JSONLStore",
    "MemoryStore",
    "ObjectDecoder",
    "PostgresStore",
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
    "acopy",
    "is_stand_in_class",
    "open_store",
    "register_scheme",
    "register_suffix",
]
