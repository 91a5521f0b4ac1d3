"""A separate process that writes into a SQLiteStore for the multi-process, crash and fresh-process tests."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from miniagents import Message, MiniAgents
from miniagents.events import Event, EventKind
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from miniagents.promising.ext.frozen import Frozen
from replay import Replay
from store import SQLiteStore, StoreError

RECORDED_LLM = stand_in_llm_agent.fork(reply="a recorded answer")
"""The agent whose answers `areplay_read_only` replays (the test records it with the same fork)."""


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


async def arun_until_told(path: str, run_id: str) -> None:
    """Run a flow that keeps appending; print "running" once events are on disk, finish when stdin says so, and
    print how the run's end went ("finished" or the error, on one line)."""
    store = SQLiteStore(path, flush_interval=0.01)
    stop = asyncio.Event()

    async def aproduce() -> None:
        index = 0
        while not stop.is_set():
            message = Message(text=f"message {index}")
            store.append(Event(EventKind.MESSAGE, run_id, index / 1000, hash_key=message.hash_key, obj=message))
            index += 1
            await asyncio.sleep(0.001)

    await store.astart_run(run_id)
    producing = asyncio.ensure_future(aproduce())
    await asyncio.sleep(0.2)
    await store.aflush()
    print("running", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop.set()
    await producing
    store.append(Event(EventKind.RUN_FINISHED, run_id, 9.0, data={"status": "ok", "error": None}))
    try:
        await store.afinish_run(run_id)
    except StoreError as error:
        print(f"{type(error).__name__}: {error}".replace("\n", " "), flush=True)
    else:
        print("finished", flush=True)


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


async def acreate(run_id: str, repeat: int) -> None:
    """For each path read from stdin: open that (new) store, record a short run and close it, `repeat` times;
    print "ok" or the error (on one line). Several such processes create the same files at once."""
    message = Message(text="created concurrently")
    while True:
        path = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if not path:
            return
        try:
            for attempt in range(repeat):
                async with SQLiteStore(path) as store:
                    await store.astart_run(f"{run_id}-{attempt}")
                    store.append(
                        Event(EventKind.MESSAGE, f"{run_id}-{attempt}", 0.0, hash_key=message.hash_key, obj=message)
                    )
                    await store.afinish_run(f"{run_id}-{attempt}")
        except Exception as error:  # reported to the test, which names the process and the round
            print(f"{type(error).__name__}: {error}".replace("\n", " "), flush=True)
        else:
            print("ok", flush=True)


async def aread_only(path: str) -> None:
    """Read a store that cannot be written here, replay it in mode none, try to write to it; print what happened
    as JSON."""
    outcome: dict[str, object] = {}
    async with SQLiteStore(path) as store:
        runs = await store.alist_runs()
        outcome["runs"] = [run.run_id for run in runs]
        events = [event async for event in store.aiter_events()]
        outcome["events"] = len(events)
        keyed = [event.hash_key for event in events if event.hash_key is not None]
        outcome["objects"] = len({(await store.aget(key)).hash_key for key in keyed})
        report = await store.averify()
        outcome["verified"] = [report.ok, report.checked]
        for name, write in (
            ("start_run", lambda: store.astart_run("new")),
            ("delete_run", lambda: store.adelete_run(runs[0].run_id)),
            ("gc", store.agc),
        ):
            try:
                await write()
            except StoreError as error:
                outcome[name] = f"{type(error).__name__}: {error}"
    replay = Replay(SQLiteStore(path), mode="none")
    async with MiniAgents(replay=replay):
        replies = await RECORDED_LLM.inquire("question").aresolve_messages()
    outcome["replayed"] = [[str(reply) for reply in replies], replay.replayed_calls]
    try:
        async with MiniAgents(store=SQLiteStore(path)):
            pass
    except StoreError as error:
        outcome["record"] = f"{type(error).__name__}: {error}"
    print(json.dumps(outcome), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["append", "crash", "classes", "create", "read-only", "run-until-told"])
    parser.add_argument("path")
    parser.add_argument("--run-id", default="run")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "append":
        asyncio.run(aappend(args.path, args.run_id, args.count))
    elif args.mode == "read-only":
        asyncio.run(aread_only(args.path))
    elif args.mode == "create":
        asyncio.run(acreate(args.run_id, args.repeat))
    elif args.mode == "run-until-told":
        asyncio.run(arun_until_told(args.path, args.run_id))
    elif args.mode == "crash":
        asyncio.run(acrash(args.path, args.run_id))
    else:
        asyncio.run(aclasses(args.path))


if __name__ == "__main__":
    sys.exit(main())
