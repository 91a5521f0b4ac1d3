"""The error tree of `store`, rooted in `StoreError`.

```
MiniAgentsError                         miniagents.errors
└── StoreError
    ├── StoreOpenError                  the store cannot be opened (path)
    │   ├── ForeignDatabaseError        the file is not a miniagents store (path)
    │   ├── SchemaVersionError          the store was written by another schema/format version (path)
    │   └── StoreCorruptedError         the file is damaged, or its `-wal` file is another database's (path)
    ├── StoreWriteError                 events could not be written; they stay buffered (path)
    ├── StoreReadError                  the driver failed while reading (path)
    ├── StoreIntegrityError             stored bytes or events are not as written (hash; run, seq)
    ├── UnknownHashError                no object with this hash key (hash; also a LookupError)
    ├── UnknownRunError                 no run with this id (run id; also a LookupError)
    └── StoreUsageError                 the store was used in a way that cannot work
        └── StoreClosedError            the store is not open
```
"""

from __future__ import annotations

from typing import Optional

from miniagents.errors import MiniAgentsError


class StoreError(MiniAgentsError):
    """Base class of every error raised by a store."""


class StoreOpenError(StoreError):
    """The store cannot be opened; `path` says which file."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class ForeignDatabaseError(StoreOpenError):
    """The file exists but is not a miniagents store; it is left untouched."""


class SchemaVersionError(StoreOpenError):
    """The store was written with a schema, canonical form or hash algorithm this library does not read."""


class StoreCorruptedError(StoreOpenError):
    """The store file is damaged, or the write-ahead log next to it was written for another database (both are
    left untouched)."""


class StoreWriteError(StoreError):
    """Events could not be written; they stay buffered in the store until a flush succeeds."""

    def __init__(self, message: str, path: str, pending: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.pending = pending
        """How many events were still buffered (not written) when this was raised."""


class StoreReadError(StoreError):
    """The storage driver failed while reading."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class StoreIntegrityError(StoreError):
    """An object's stored bytes do not match its hash key (or it refers to an object that is missing), or a run's
    events are not as they were written (`run_id`, and `seq` of the first changed event when it is known)."""

    def __init__(
        self, message: str, hash_key: Optional[str] = None, *, run_id: Optional[str] = None, seq: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.hash_key = hash_key
        self.run_id = run_id
        self.seq = seq


class UnknownHashError(StoreError, LookupError):
    """No object with this hash key is stored."""

    def __init__(self, message: str, hash_key: str) -> None:
        super().__init__(message)
        self.hash_key = hash_key


class UnknownRunError(StoreError, LookupError):
    """No run with this id is stored."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class StoreUsageError(StoreError):
    """The store was used in a way that cannot work (a bug in the calling code, not a storage failure)."""


class StoreClosedError(StoreUsageError):
    """The store is not open."""

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
