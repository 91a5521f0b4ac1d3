"""Durability under load: how old the oldest unwritten event gets, how many wait, memory, and what a SIGKILL loses.

Each producer shape runs in a fresh subprocess (this script with `--worker`). A sampler thread in that process
reads the store's file through a connection of its own every 50 ms and compares the newest committed event with
the events the store was handed (their count and append times are kept in a shared memory map, which the parent
also reads after killing a worker). Lag = the age of the oldest appended event not committed yet.

No thread of the process runs while Python's collector makes a full (generation 2) collection: its pauses grow with
everything the application keeps (the dict shape keeps 200k messages; the same flow without a store pauses up to
about 0.4 s), and no writer inside the process can write during them (the store writes what waits just before
each one the event loop's thread starts: `store.full_collections`). So the script also reports the collector's
pauses, with the store and without, and the lag net of them: the lag minus the collector pauses that fell between
the oldest unwritten event's append and the sample.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import mmap
import os
import resource
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import _common as common

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.events import Event
from store import SQLiteStore


@dataclass(frozen=True)
class Shape:
    name: str
    count: int
    """Replies per agent."""
    pause_every: int = 0
    """`await asyncio.sleep(0.001)` after every this many replies (0: a tight loop)."""
    keep: bool = True
    """Whether the consumer keeps the replies (else it drops each one once read)."""
    payload: str = "text"
    agents: int = 1


SHAPES = [
    Shape("tight loop, 100k replies", 100_000),
    Shape("sleep(0.001) every 100 replies, 100k, kept", 100_000, pause_every=100),
    Shape("same, 600k, consumer drops the replies", 600_000, pause_every=100, keep=False),
    Shape("same, dict payloads, 200k", 200_000, pause_every=100, payload="dict"),
    Shape("500 concurrent agents x 1,000 replies", 1_000, pause_every=100, agents=500),
    Shape("tight loop, 20k replies of 16 KB", 20_000, payload="large"),
]

_COUNTER = struct.Struct("<q")


@miniagent
async def producer(ctx: InteractionContext, count: int, pause_every: int, payload: str, agent: int) -> None:
    """Replies `count` distinct messages, pausing as its shape says."""
    for index in range(count):
        if payload == "dict":
            ctx.reply(Message(text=f"{agent}:{index}", data={"n": index, "tags": ["a", "b"], "nested": {"x": 1.5}}))
        elif payload == "large":
            ctx.reply(Message(text=f"{agent}:{index:08d}" + "y" * 16_000))
        else:
            ctx.reply(Message(text=f"{agent}:{index:08d}" + "x" * 200))
        if pause_every and index % pause_every == pause_every - 1:
            await asyncio.sleep(0.001)


class WatchedStore(SQLiteStore):
    """A `SQLiteStore` that notes when each event was handed to it (the sampler's and the parent's view)."""

    def __init__(self, path: Path, counter: mmap.mmap, **options: Any) -> None:
        super().__init__(path, **options)
        self.append_times = array("d")
        self._counter = counter

    def append(self, event: Event) -> None:
        super().append(event)
        self.append_times.append(time.perf_counter())
        _COUNTER.pack_into(self._counter, 0, len(self.append_times))


class CollectorPauses:
    """The full collections of Python's collector while it is installed: (start, end) in `time.perf_counter()`."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._started = 0.0

    def __enter__(self) -> CollectorPauses:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((self._started, time.perf_counter()))

    def within(self, start: float, end: float) -> float:
        """Seconds of collector pauses between `start` and `end`."""
        return sum(max(0.0, min(end, stop) - max(start, begin)) for begin, stop in self.pauses)

    def summary(self) -> dict[str, float]:
        lengths = [stop - begin for begin, stop in self.pauses]
        return {"gc_pauses": len(lengths), "gc_max": max(lengths, default=0.0), "gc_total": sum(lengths)}


class Sampler(threading.Thread):
    """Every 50 ms: the age of the oldest appended event that is not committed, and how many are waiting."""

    def __init__(self, path: Path, store: WatchedStore, collector: CollectorPauses) -> None:
        super().__init__(daemon=True)
        self.path, self.store, self.collector = path, store, collector
        self.lags: list[float] = []
        self.net_lags: list[float] = []
        self.backlogs: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        connection: Optional[sqlite3.Connection] = None
        while not self.stopping.wait(0.05):
            if connection is None:
                if not self.path.exists():
                    continue
                connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            try:
                row = connection.execute("SELECT max(seq) FROM events").fetchone()
            except sqlite3.OperationalError:  # the schema is being created
                continue
            committed = row[0] or 0
            times = self.store.append_times
            appended = len(times)
            now = time.perf_counter()
            self.backlogs.append(appended - committed)
            if committed < appended:
                self.lags.append(now - times[committed])
                self.net_lags.append(now - times[committed] - self.collector.within(times[committed], now))
            else:
                self.lags.append(0.0)
                self.net_lags.append(0.0)
        if connection is not None:
            connection.close()


async def aconsume(shape: Shape) -> int:
    async def one(agent: int) -> int:
        replies = producer.inquire(
            count=shape.count, pause_every=shape.pause_every, payload=shape.payload, agent=agent
        )
        kept: list[Message] = []
        async for promise in replies:
            message = await promise
            if shape.keep:
                kept.append(message)
        return shape.count

    counts = await asyncio.gather(*(one(agent) for agent in range(shape.agents)))
    return sum(counts)


def _say_when(store: WatchedStore, appended: int) -> None:
    """Print POINT once the store was handed `appended` events (from a thread: a tight loop never yields)."""
    while len(store.append_times) < appended:
        time.sleep(0.001)
    print("POINT", flush=True)


def worker(shape: Shape, path: Optional[Path], counter_path: Optional[Path], signal_after: int) -> dict[str, Any]:
    """Run one shape (with a store at `path`, or none) and report its figures."""
    counter_file = counter_path.open("r+b") if counter_path is not None else None
    counter = mmap.mmap(counter_file.fileno(), 8) if counter_file is not None else mmap.mmap(-1, 8)
    store = WatchedStore(path, counter) if path is not None else None
    collector = CollectorPauses()
    sampler = Sampler(path, store, collector) if path is not None and store is not None else None
    if sampler is not None:
        sampler.start()

    if signal_after and store is not None:
        threading.Thread(target=_say_when, args=(store, signal_after), daemon=True).start()

    async def arun() -> int:
        async with MiniAgents(store=store):
            # installed once the store is open, so after its own callback: a pause is the collection alone, not
            # the store's wait for its writer before it
            with collector:
                return await aconsume(shape)

    start = time.perf_counter()
    replies = asyncio.run(arun())
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {
        "replies": replies,
        "seconds": elapsed,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **collector.summary(),
    }
    if sampler is not None:
        sampler.stopping.set()
        sampler.join()
        lags = sorted(sampler.lags) or [0.0]
        net_lags = sorted(sampler.net_lags) or [0.0]
        result.update(
            lag_p50=statistics.median(lags),
            lag_p99=_p99(lags),
            lag_max=lags[-1],
            net_p99=_p99(net_lags),
            net_max=net_lags[-1],
            backlog_max=max(sampler.backlogs, default=0),
            samples=len(lags),
        )
    return result


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def kill_run(shape: Shape, directory: Path, signal_after: int) -> dict[str, Any]:
    """Run a shape in a worker, SIGKILL it one second after `signal_after` events were appended, and count what
    the file kept of what the store had been handed."""
    path, counter_path = directory / "killed.db", directory / "killed.counter"
    counter_path.write_bytes(b"\0" * 8)
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", shape.name, "--db", str(path), "--counter", str(counter_path)]
        + ["--signal-after", str(signal_after)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=common.REPO_ROOT,
        env=common.subprocess_env(str(common.REPO_ROOT)),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("POINT"):
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    appended = _COUNTER.unpack(counter_path.read_bytes()[:8])[0]
    with sqlite3.connect(path) as connection:
        kept = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    return {"appended": appended, "kept": kept, "lost": appended - kept}


def run_worker(shape: Shape, with_store: bool, directory: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", shape.name]
    if with_store:
        path = directory / f"run-{time.monotonic_ns()}.db"
        command += ["--db", str(path)]
    return common.run_json(command, pythonpath=str(common.REPO_ROOT), timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--counter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--signal-after", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default="", help="only shapes whose name contains this text")
    parser.add_argument("--kill-after", type=int, default=20_000, help="events appended before the 1 s to SIGKILL")
    args = parser.parse_args()
    by_name = {shape.name: shape for shape in SHAPES}
    if args.worker:
        print(json.dumps(worker(by_name[args.worker], args.db, args.counter, args.signal_after)))
        return

    shapes = [shape for shape in SHAPES if args.shapes in shape.name]
    print(
        "| producer | lag p50 / p99 / max (s) | net of collector pauses: p99 / max (s) | collector pauses: "
        "count, longest (s), store / none | backlog max | RSS peak (MB): store / none | SIGKILL 1 s after "
        f"{args.kill_after:,} events: lost / handed over | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for shape in shapes:
            stored = run_worker(shape, True, Path(directory))
            bare = run_worker(shape, False, Path(directory))
            killed = kill_run(shape, Path(directory), min(args.kill_after, shape.count * shape.agents // 2))
            for name in os.listdir(directory):
                os.remove(Path(directory) / name)
            if "error" in stored or "error" in bare:
                print(f"| {shape.name} | error: {stored.get('error') or bare.get('error')} |||||", flush=True)
                continue
            print(
                f"| {shape.name} | {stored['lag_p50']:.2f} / {stored['lag_p99']:.2f} / {stored['lag_max']:.2f} "
                f"| {stored['net_p99']:.2f} / {stored['net_max']:.2f} "
                f"| {stored['gc_pauses']}, {stored['gc_max']:.2f} / {bare['gc_pauses']}, {bare['gc_max']:.2f} "
                f"| {stored['backlog_max']:,} | {stored['rss_mb']:,.0f} / {bare['rss_mb']:,.0f} "
                f"| {killed['lost']:,} / {killed['appended']:,} | {stored['seconds']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
