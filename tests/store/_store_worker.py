"""A separate process that writes into a SQLiteStore for the multi-process, crash and fresh-process tests."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from miniagents import Message
from miniagents.events import Event, EventKind
from miniagents.promising.ext.frozen import Frozen
from store import SQLiteStore


class Step(Frozen):
    """Exists only in this process."""

    title: str


class Plan(Message):
    """Exists only in this process."""

    steps: tuple[Step, ...] = ()


async def aappend(path: str, run_id: str, count: int) -> None:
    """Append `count` message events to a new run once stdin says "go" (so that several processes overlap)."""
    shared = Message(text="shared by every process")
    async with SQLiteStore(path, batch_size=50) as store:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await store.astart_run(run_id)
        store.append(Event(EventKind.RUN_STARTED, run_id, 0.0, data={"started_at": time.time()}))
        for index in range(count - 2):
            message = shared if index % 10 == 0 else Message(text=f"{run_id} {index}", index=index)
            store.append(Event(EventKind.MESSAGE, run_id, index / 1000, hash_key=message.hash_key, obj=message))
            if index % 50 == 0:
                await asyncio.sleep(0.005)
        store.append(Event(EventKind.RUN_FINISHED, run_id, 1.0, data={"status": "ok", "error": None}))
        await store.afinish_run(run_id)
    print("done", flush=True)


async def acrash(path: str, run_id: str) -> None:
    """Append forever, reporting how many events are flushed; the test kills this process mid-run."""
    store = SQLiteStore(path, batch_size=100, flush_interval=0.01)
    await store.astart_run(run_id)
    store.append(Event(EventKind.RUN_STARTED, run_id, 0.0, data={"started_at": time.time()}))
    appended = 1
    while True:
        for _ in range(100):
            message = Message(text=f"message {appended}", index=appended)
            store.append(Event(EventKind.MESSAGE, run_id, appended / 1000, hash_key=message.hash_key, obj=message))
            appended += 1
        await asyncio.sleep(0.001)
        print(appended - store.pending_count, flush=True)


async def aclasses(path: str) -> None:
    """Store messages of classes only this process defines; print their hash keys."""
    owner = Message(text="owner")
    plan = Plan(text="the plan", steps=(Step(title="one"), Step(title="two", extra={"k": 1})), owner=owner)
    async with SQLiteStore(path) as store:
        await store.astart_run("classes")
        for message in (owner, plan):
            store.append(Event(EventKind.MESSAGE, "classes", 0.0, hash_key=message.hash_key, obj=message))
        await store.afinish_run("classes")
    print(plan.hash_key, owner.hash_key, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["append", "crash", "classes"])
    parser.add_argument("path")
    parser.add_argument("--run-id", default="run")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    if args.mode == "append":
        asyncio.run(aappend(args.path, args.run_id, args.count))
    elif args.mode == "crash":
        asyncio.run(acrash(args.path, args.run_id))
    else:
        asyncio.run(aclasses(args.path))


if __name__ == "__main__":
    sys.exit(main())
