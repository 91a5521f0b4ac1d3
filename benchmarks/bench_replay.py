"""Replay speed: replay vs the live run, time to first replayed token vs store size, aload_tree vs a raw scan."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common as common

sys.path.insert(0, str(common.REPO_ROOT))

from miniagents import MiniAgents
from miniagents.events import EventKind
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import Replay, aload_tree
from store import SQLiteStore

TARGET_REPLAY_RATIO = 1.0  # replay wall time <= 1.0x the live (recording) run
TARGET_FIRST_TOKEN_MS = 50.0  # first replayed token from a 100k-event store
TARGET_TREE_RATIO = 2.0  # aload_tree <= 2x a raw scan of the run's events

WORDS = " ".join(f"word{index}" for index in range(50))  # 50 tokens per reply


async def flow(calls: int) -> None:
    """`calls` LLM calls with distinct prompts, 50 streamed tokens each, all started at once."""
    llm = stand_in_llm_agent.fork(reply=WORDS)
    replies = [llm.inquire(f"prompt {index}") for index in range(calls)]
    await asyncio.gather(*(reply.aresolve_messages() for reply in replies))


async def timed_run(path: Path, mode: str, calls: int) -> float:
    started = time.perf_counter()
    async with MiniAgents(replay=Replay(SQLiteStore(path), mode=mode)):
        await flow(calls)
    return time.perf_counter() - started


async def replay_vs_live(directory: Path, calls: int, rounds: int) -> tuple[float, float]:
    live_times, replay_times = [], []
    for round_index in range(rounds):
        path = directory / f"replay-vs-live-{round_index}.db"
        live_times.append(await timed_run(path, "once", calls))
        replay_times.append(await timed_run(path, "none", calls))
    return statistics.median(live_times), statistics.median(replay_times)


async def fill_store(path: Path, target_events: int) -> int:
    """Record runs of stand-in LLM calls until the store holds at least `target_events` events."""
    events = 0
    batch = 0
    while events < target_events:
        store = SQLiteStore(path)
        async with MiniAgents(store=store):
            llm = stand_in_llm_agent.fork(reply=WORDS)
            replies = [llm.inquire(f"filler {batch} {index}") for index in range(1_000)]
            await asyncio.gather(*(reply.aresolve_messages() for reply in replies))
        batch += 1
        async with SQLiteStore(path) as reader:
            events = sum(run.event_count for run in await reader.alist_runs())
    return events


async def first_token_ms(path: Path, samples: int) -> float:
    """Open the store, replay one recorded call, and time until its first token (median of `samples`)."""
    times = []
    for sample in range(samples):
        started = time.perf_counter()
        async with MiniAgents(replay=Replay(SQLiteStore(path), mode="none")):
            llm = stand_in_llm_agent.fork(reply=WORDS)
            async for promise in llm.inquire(f"filler 0 {sample}"):
                async for _ in promise:
                    times.append((time.perf_counter() - started) * 1000)
                    break
                break
    return statistics.median(times)


async def tree_vs_scan(path: Path, calls: int, rounds: int) -> tuple[float, float, float]:
    """Median seconds of `aload_tree`, of a raw scan of the run's events, and of `aload_tree` followed by using
    every call's kwargs, inputs and replies (which rebuilds every object the tree read)."""
    await timed_run(path, "once", calls)
    tree_times, scan_times, used_times = [], [], []
    async with SQLiteStore(path) as store:
        (run,) = await store.alist_runs()
        for _ in range(rounds):
            started = time.perf_counter()
            scanned = 0
            async for _event in store.aiter_events(run.run_id):
                scanned += 1
            scan_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            tree = await aload_tree(store, run.run_id)
            tree_times.append(time.perf_counter() - started)
            assert len(tree.calls) == calls, len(tree.calls)
            for node in tree.walk():
                _ = node.kwargs, node.input_messages, node.replies
            used_times.append(time.perf_counter() - started)
            store._decoder.clear()  # each round decodes from scratch
    return statistics.median(tree_times), statistics.median(scan_times), statistics.median(used_times)


def verdict(ok: bool) -> str:
    return "✅" if ok else "❌"


async def amain(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as directory_name:
        directory = Path(directory_name)
        live, replayed = await replay_vs_live(directory, args.calls, args.rounds)

        small = directory / "small.db"
        small_events = await fill_store(small, args.small_events)
        small_ms = await first_token_ms(small, args.samples)
        large = directory / "large.db"
        large_events = await fill_store(large, args.small_events * 10)
        large_ms = await first_token_ms(large, args.samples)

        tree_time, scan_time, used_time = await tree_vs_scan(directory / "tree.db", args.tree_calls, args.rounds)
        async with SQLiteStore(directory / "tree.db") as store:
            (run,) = await store.alist_runs()
            kinds_counted = len(await store.aget_events(run.run_id, kinds=[EventKind.CALL_FINISHED]))

    replay_ratio = replayed / live
    tree_ratio = tree_time / scan_time
    print("## Replay (benchmarks/bench_replay.py)\n")
    print(f"command: `{shlex.join([sys.executable, *sys.argv])}`\n")
    print("| measurement | figure | target | |")
    print("|---|---|---|---|")
    print(f"| {args.calls:,} stand-in LLM calls x 50 tokens: live (recording) run | {live * 1000:.0f} ms | | |")
    print(
        f"| same flow replayed (mode none) | {replayed * 1000:.0f} ms = {replay_ratio:.2f}x live | "
        f"≤ {TARGET_REPLAY_RATIO}x | {verdict(replay_ratio <= TARGET_REPLAY_RATIO)} |"
    )
    print(
        f"| first replayed token, store of {small_events:,} events | {small_ms:.1f} ms | "
        f"≤ {TARGET_FIRST_TOKEN_MS:.0f} ms | {verdict(small_ms <= TARGET_FIRST_TOKEN_MS)} |"
    )
    print(
        f"| first replayed token, store of {large_events:,} events | {large_ms:.1f} ms "
        f"({large_ms / small_ms:.2f}x the smaller store) | no worse | {verdict(large_ms <= small_ms * 1.25)} |"
    )
    print(
        f"| aload_tree of a {kinds_counted:,}-call run | {tree_time * 1000:.0f} ms = {tree_ratio:.2f}x a raw scan "
        f"of its events ({scan_time * 1000:.0f} ms) | ≤ {TARGET_TREE_RATIO}x | "
        f"{verdict(tree_ratio <= TARGET_TREE_RATIO)} |"
    )
    print(
        f"| the same, then every call's kwargs, inputs and replies used (each object rebuilt) | "
        f"{used_time * 1000:.0f} ms = {used_time / scan_time:.2f}x the raw scan | | |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small-events", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--tree-calls", type=int, default=10_000)
    parser.add_argument("--tmpdir", default=None)
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
