"""A separate process writing into a PostgresStore, for the tests of processes sharing one server.

`append DSN RUN COUNT`: once stdin says "go", record a run of COUNT message events (small batches, so that the
processes' transactions interleave) and print the hash keys in order, as JSON. `hold DSN RUN 0`: start a run,
write one event, say "ready"; then, once stdin says "finish" (unless killed first), write one more event, finish
the run and print what happened.
"""

from __future__ import annotations

import asyncio
import json
import sys

from miniagents import Message
from miniagents.events import Event, EventKind
from store import PostgresStore, StoreError

SHARED = Message(text="shared by every process")


async def aappend(dsn: str, run_id: str, count: int) -> None:
    async with PostgresStore(dsn, batch_size=20, flush_interval=0.01) as store:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await store.astart_run(run_id)
        store.append(Event(EventKind.RUN_STARTED, run_id, 0.0, data={"started_at": 1.0}))
        hash_keys = []
        for index in range(count):
            message = Message(text=f"{run_id} {index}", shared=SHARED)
            hash_keys.append(message.hash_key)
            store.append(Event(EventKind.MESSAGE, run_id, index / 1000, hash_key=message.hash_key, obj=message))
            if index % 25 == 0:
                await asyncio.sleep(0)
        store.append(Event(EventKind.RUN_FINISHED, run_id, 1.0, data={"status": "ok"}))
        await store.afinish_run(run_id)
    print(json.dumps({"hash_keys": hash_keys}), flush=True)


async def ahold(dsn: str, run_id: str) -> None:
    store = await PostgresStore(dsn).aopen()
    await store.astart_run(run_id)
    store.append(Event(EventKind.MESSAGE, run_id, 0.0, obj=Message(text="written first")))
    await store.aflush()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    store.append(Event(EventKind.MESSAGE, run_id, 1.0, obj=Message(text="written last")))
    try:
        await store.afinish_run(run_id)
        print("finished", flush=True)
    except StoreError as error:
        print(f"{type(error).__name__}: {error}", flush=True)
    store._pending.events.clear()  # what could not be written is given up, so that closing does not report it again
    await store.aclose()


def main() -> None:
    dsn, mode, run_id, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "append":
        asyncio.run(aappend(dsn, run_id, count))
    else:
        asyncio.run(ahold(dsn, run_id))


if __name__ == "__main__":
    main()
