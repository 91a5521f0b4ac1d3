"""Store benchmarks: a recorded flow end to end, the append path against raw aiosqlite, size, reads and lookups."""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

# sibling modules: benchmarks/ is sys.path[0] when a script in it is run
import _common as common

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.events import Event, EventKind, EventSink, ListEventSink
from store import MemoryStore, SQLiteStore
from store.backend import Write

PAYLOAD = "x" * 1000  # with the message's other fields: ~1 KB of canonical bytes per message


@miniagent
async def producer(ctx: InteractionContext, count: int, hashed: bool = False) -> None:
    """Replies `count` distinct ~1 KB messages (`hashed`: computing each one's hash key, as recording does)."""
    for index in range(count):
        message = Message(text=f"{index:08d}{PAYLOAD}")
        if hashed:
            message.hash_key  # noqa: B018 - computing the property is the point
        ctx.reply(message)


async def aflow(store: Optional[EventSink], count: int, hashed: bool = False) -> float:
    """Messages per second of one run of the flow (the context exit, which flushes the store, included).
    `hashed` (with no store): each reply's hash key computed, the floor that content addressing cannot go under."""
    gc.collect()
    start = time.perf_counter()
    async with MiniAgents(store=store):
        replies = await producer.inquire(count=count, hashed=hashed).aresolve_messages()
    elapsed = time.perf_counter() - start
    if len(replies) != count:
        raise AssertionError(f"the flow produced {len(replies)} messages instead of {count}")
    return count / elapsed


class DiscardingSink:
    """An `EventSink` that drops every event: what the core's recording costs before any store."""

    async def astart_run(self, run_id: str) -> None:
        pass

    def append(self, event: Event) -> None:
        pass

    async def afinish_run(self, run_id: str) -> None:
        pass


class UncommittedStore(MemoryStore):
    """A store whose buffer does all its work (checks, encoding and redaction of event data, hash chain links,
    batches) and whose commits store nothing: what the store costs on the event loop's thread before any backend."""

    def _commit_write(self, write: Write) -> int:
        return 0


async def abreakdown(args: argparse.Namespace, tmpdir: Path) -> str:
    """Where the flow's time goes, per message, tier by tier: no store, the hash floor, the core's recording into a
    sink that drops every event, the store's buffer with commits that store nothing, MemoryStore and SQLiteStore,
    each with Python's garbage collector on (as always) and off, interleaved."""
    sinks: dict[str, Callable[[int], Optional[EventSink]]] = {
        "no store": lambda _: None,
        "no store, each reply hashed (the floor)": lambda _: None,
        "recording only (events dropped)": lambda _: DiscardingSink(),
        "store buffer, commits store nothing": lambda _: UncommittedStore(),
        "MemoryStore": lambda _: MemoryStore(),
        "SQLiteStore": lambda index: SQLiteStore(tmpdir / f"breakdown-{index}.db"),
    }
    micros: dict[tuple[str, bool], list[float]] = {}
    flow_numbers = itertools.count()  # one database file per flow
    for round_index in range(args.rounds):
        print(f"breakdown round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for name, make_sink in sinks.items():
            for collector_on in (True, False):
                if not collector_on:
                    gc.disable()
                try:
                    rate = await aflow(make_sink(next(flow_numbers)), args.messages, hashed="floor" in name)
                finally:
                    gc.enable()
                micros.setdefault((name, collector_on), []).append(1e6 / rate)
    med = {key: common.median(values) or 0.0 for key, values in micros.items()}
    base_on, base_off = med[("no store", True)], med[("no store", False)]
    names = list(sinks)
    floor_on = med[(names[1], True)]
    rows = [
        [
            name,
            f"{med[(name, True)]:.2f}",
            f"{med[(name, True)] - med[(names[index - 1], True)]:+.2f}" if index else "",
            common.fmt_ratio(med[(name, True)] / base_on),
            common.fmt_ratio(med[(name, True)] / floor_on),
            f"{med[(name, False)]:.2f}",
            common.fmt_ratio(med[(name, False)] / base_off),
            f"{med[(name, True)] - med[(name, False)]:.2f}",
        ]
        for index, name in enumerate(names)
    ]
    table = common.markdown_table(
        [
            "flow",
            "µs/msg",
            "vs the row above",
            "vs no store",
            "vs the hash floor",
            "µs/msg, collector off",
            "vs no store",
            "collector's µs/msg",
        ],
        rows,
    )
    return (
        f"## Store flow breakdown ({args.messages:,} messages, {args.rounds} rounds, median)\n\n{table}\n\n"
        f"Command: `{common.shown_command()}`\n"
    )


def prebuilt_events(count: int, run_id: str) -> list[Event]:
    """`count` message events of distinct ~1 KB messages, built before any timing starts the way the core builds
    them: hashed, with the canonical bytes that hashing encoded."""
    events = []
    for index in range(count):
        message = Message(text=f"{index:08d}{PAYLOAD}")
        hash_key, canonical_bytes = message.hash_key_and_canonical_bytes()
        events.append(
            Event(EventKind.MESSAGE, run_id, index * 1e-5, hash_key, 1, None, None, message, None, canonical_bytes)
        )
    return events


async def aappend(store: SQLiteStore, events: list[Event], run_id: str) -> float:
    """Events per second through `append()` until `afinish_run()` returns (the store already open)."""
    await store.astart_run(run_id)
    gc.collect()
    start = time.perf_counter()
    for index, event in enumerate(events):
        store.append(event)
        if index % 1000 == 999:
            await asyncio.sleep(0)  # what a running flow does between events
    await store.afinish_run(run_id)
    return len(events) / (time.perf_counter() - start)


async def araw_executemany(count: int, tmpdir: str) -> Optional[float]:
    """The raw aiosqlite peer from bench_store_peers (None when that module is not there)."""
    try:
        from bench_store_peers import raw_aiosqlite_executemany
    except ImportError:  # INTEGRATION POINT: benchmarks/bench_store_peers.py provides the raw aiosqlite peer
        return None
    return await raw_aiosqlite_executemany(count, 1024, 1000, tmpdir)


def langgraph_rate(messages: int, channel: str) -> Optional[float]:
    """LangGraph's SqliteSaver persisting `messages` ~1 KB messages, one per step of a two-node graph, in its own
    virtualenv (installed on first use); None when it cannot be measured (no network for the install)."""
    try:
        from bench_store_peers import langgraph_messages_per_s

        return langgraph_messages_per_s(messages, 1024, saver="sync", channel=channel)
    except Exception as exc:  # a missing peer must not hide this project's own figures
        print(f"LangGraph ({channel}) not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


async def around(args: argparse.Namespace, tmpdir: Path, results: dict[str, list[float]]) -> None:
    """One round of every measurement; appends each figure to `results`."""

    def record(name: str, value: Optional[float]) -> None:
        if value is not None:
            results.setdefault(name, []).append(value)

    count = args.messages
    if args.graph_messages:
        record("langgraph_append", langgraph_rate(args.graph_messages, "append"))
        record("langgraph_delta", langgraph_rate(args.graph_messages, "delta"))
    record("flow_no_store", await aflow(None, count))
    record("flow_hash_floor", await aflow(None, count, hashed=True))
    record("flow_discarding_sink", await aflow(DiscardingSink(), count))
    record("flow_list_sink", await aflow(ListEventSink(), count))
    record("flow_memory_store", await aflow(MemoryStore(), count))
    flow_path = tmpdir / f"flow-{len(results.get('flow_sqlite', []))}.db"
    record("flow_sqlite", await aflow(SQLiteStore(flow_path), count))

    events = prebuilt_events(count, "append")
    append_path = tmpdir / f"append-{len(results.get('append_sqlite', []))}.db"
    async with SQLiteStore(append_path) as store:
        record("append_sqlite", await aappend(store, events, "append"))
    record("append_raw_aiosqlite", await araw_executemany(count, str(tmpdir)))
    body = statistics.mean(len(event.canonical_bytes or b"") for event in events)
    record("bytes_per_event", append_path.stat().st_size / count)
    record("body_bytes", body)

    repeated = Message(text=PAYLOAD)
    size_before = append_path.stat().st_size
    async with SQLiteStore(append_path) as store:
        again = [
            Event(EventKind.MESSAGE, "again", i * 1e-5, repeated.hash_key, 1, None, None, repeated)
            for i in range(count)
        ]
        await aappend(store, again, "again")
    record("bytes_per_repeated_event", (append_path.stat().st_size - size_before) / count)

    async with SQLiteStore(append_path) as store:
        start = time.perf_counter()
        read = 0
        async for _ in store.aiter_events("append"):
            read += 1
        record("read_events_per_s", read / (time.perf_counter() - start))
    keys = random.Random(7).sample([event.hash_key or "" for event in events], min(args.lookups, count))
    async with SQLiteStore(append_path) as store:
        start = time.perf_counter()
        for key in keys:
            await store.aget(key)
        record("aget_per_s", len(keys) / (time.perf_counter() - start))


def render(results: dict[str, list[float]], args: argparse.Namespace) -> str:
    """The Markdown report: medians over the rounds, each against its target."""
    med = {name: common.median(values) or 0.0 for name, values in results.items()}
    raw = med.get("append_raw_aiosqlite")
    body = med["body_bytes"]
    rows: list[tuple[str, str, str, bool]] = [
        (
            "flow, 1 KB messages into SQLiteStore (msg/s)",
            common.fmt_num(med["flow_sqlite"]),
            ">= 25,000",
            med["flow_sqlite"] >= 25_000,
        ),
        ("same flow without a store (msg/s)", common.fmt_num(med["flow_no_store"]), "-", True),
        (
            "same flow without a store, each reply's hash key computed: the floor (msg/s)",
            common.fmt_num(med["flow_hash_floor"]),
            "-",
            True,
        ),
        (
            "floor vs no store (the cost of hashing)",
            common.fmt_ratio(med["flow_no_store"] / med["flow_hash_floor"]),
            "-",
            True,
        ),
        (
            "recording only (a sink that drops every event) vs the floor",
            common.fmt_ratio(med["flow_hash_floor"] / med["flow_discarding_sink"]),
            "<= 1.20x",
            med["flow_hash_floor"] / med["flow_discarding_sink"] <= 1.2,
        ),
        (
            "SQLiteStore vs the floor",
            common.fmt_ratio(med["flow_hash_floor"] / med["flow_sqlite"]),
            "<= 1.40x",
            med["flow_hash_floor"] / med["flow_sqlite"] <= 1.4,
        ),
        (
            "slowdown with SQLiteStore vs no store",
            common.fmt_ratio(med["flow_no_store"] / med["flow_sqlite"]),
            "-",
            True,
        ),
        ("same flow, core recording into a list only (msg/s)", common.fmt_num(med["flow_list_sink"]), "-", True),
        (
            "slowdown with SQLiteStore vs list sink (the store's own share)",
            common.fmt_ratio(med["flow_list_sink"] / med["flow_sqlite"]),
            "-",
            True,
        ),
        ("same flow into MemoryStore (msg/s)", common.fmt_num(med["flow_memory_store"]), "-", True),
        ("append path, SQLiteStore (events/s)", common.fmt_num(med["append_sqlite"]), "-", True),
        ("raw aiosqlite executemany, same sizes (rows/s)", common.fmt_num(raw) if raw else "not available", "-", True),
        (
            "append path vs raw",
            common.fmt_ratio(med["append_sqlite"] / raw) if raw else "-",
            ">= 0.70x",
            bool(raw) and med["append_sqlite"] / raw >= 0.7,
        ),
        (
            f"bytes per event (body {body:,.0f} B)",
            common.fmt_num(med["bytes_per_event"]),
            f"<= {1.25 * body + 100:,.0f}",
            med["bytes_per_event"] <= 1.25 * body + 100,
        ),
        (
            "bytes per extra event of a repeated message",
            common.fmt_num(med["bytes_per_repeated_event"]),
            "<= 100",
            med["bytes_per_repeated_event"] <= 100,
        ),
        (
            f"reading a {args.messages:,}-event run (events/s)",
            common.fmt_num(med["read_events_per_s"]),
            ">= 150,000",
            med["read_events_per_s"] >= 150_000,
        ),
        ("random aget (objects/s)", common.fmt_num(med["aget_per_s"]), ">= 20,000", med["aget_per_s"] >= 20_000),
    ]
    for name, label in (
        ("langgraph_append", "`operator.add` list channel"),
        ("langgraph_delta", "`DeltaChannel` list (its fastest)"),
    ):
        if name in med:
            ratio = med["flow_sqlite"] / med[name]
            rows.append(
                (
                    f"LangGraph SqliteSaver, {label}, {args.graph_messages:,} steps x 1 msg (msg/s)",
                    common.fmt_num(med[name]),
                    "-",
                    True,
                )
            )
            rows.append((f"this project's flow vs LangGraph, {label}", common.fmt_ratio(ratio), ">= 25x", ratio >= 25))
    table = common.markdown_table(
        ["measurement", "median", "target", "met"],
        [[name, value, target, "yes" if met else "NO"] for name, value, target, met in rows],
    )
    return (
        f"## Store ({args.messages:,} messages, {args.rounds} rounds, median)\n\n{table}\n\n"
        f"Command: `{common.shown_command()}`\n"
    )


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse the benchmark's command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages per flow / events per run")
    parser.add_argument("--lookups", type=int, default=20_000, help="random aget calls")
    parser.add_argument(
        "--graph-messages",
        type=int,
        default=2_000,
        help="messages LangGraph persists per round (its list channel re-serializes the whole list at every step, "
        "so 100k would take hours); 0 skips LangGraph",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tmpdir", default=None, help="where the database files go (default: a temporary dir)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="instead: split the flow's time per message into the core's recording, the store and Python's "
        "garbage collector",
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> dict[str, list[float]]:
    """Run the rounds in one temporary directory."""
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.tmpdir) as tmp:
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
            await around(args, Path(tmp), results)
    return results


async def amain_breakdown(args: argparse.Namespace) -> str:
    """`abreakdown` in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.tmpdir) as tmp:
        return await abreakdown(args, Path(tmp))


def main() -> None:
    """Measure, print the report and the raw figures (JSON, last line)."""
    args = parse_args()
    if args.breakdown:
        print(asyncio.run(amain_breakdown(args)))
        return
    results = asyncio.run(amain(args))
    print(render(results, args))
    print(json.dumps({name: common.median(values) for name, values in results.items()}))


if __name__ == "__main__":
    main()
