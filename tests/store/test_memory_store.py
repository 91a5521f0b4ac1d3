"""`MemoryStore` against the store conformance suite."""

from typing import Any, Optional

from store import EventStore, MemoryStore
from store.testing import StoreConformance


class TestMemoryStore(StoreConformance):
    def make_store(self, **options: Any) -> EventStore:
        return MemoryStore(**options)

    async def acorrupt_object(self, store: EventStore, hash_key: str, body: Optional[bytes]) -> None:
        assert isinstance(store, MemoryStore)
        if body is None:
            del store._data.objects[hash_key]
        else:
            store._data.objects[hash_key] = body

    async def atamper_event(self, store: EventStore, seq: int, field: str, value: Any) -> None:
        assert isinstance(store, MemoryStore)
        if field == "delete":
            row = store._data.events.pop(seq)
            store._data.runs[row.run_id].seqs.remove(seq)
        else:
            setattr(store._data.events[seq], field, value)
