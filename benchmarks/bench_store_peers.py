"""Persistence peers: raw aiosqlite inserts, MiniAgents 0.0.14/0.0.35 persist hooks, LangGraph SQLite checkpoints."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.metadata
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# sibling modules: benchmarks/ is sys.path[0] when a script in it is run (or imported by another such script)
import _common as common
import peers

PERSIST_WORKLOAD = common.BENCH_SCRIPTS_DIR / "_persist_workload.py"
LANGGRAPH_WORKLOAD = common.BENCH_SCRIPTS_DIR / "_langgraph_workload.py"

EVENTS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events ("
    "seq INTEGER PRIMARY KEY, run_id TEXT, kind TEXT, hash_key TEXT, t REAL, data BLOB)"
)
INSERT_EVENT = "INSERT INTO events (seq, run_id, kind, hash_key, t, data) VALUES (?, ?, ?, ?, ?, ?)"

EventRow = tuple[int, str, str, str, float, bytes]


# ----------------------------------------------------------------------------------------------------------------
# raw aiosqlite (in-process)
# ----------------------------------------------------------------------------------------------------------------


def make_events(n: int, payload_size: int) -> list[EventRow]:
    """Build n distinct event rows with a payload_size-byte blob each (done before timing starts)."""
    filler = b"x" * max(payload_size - 16, 0)
    now = time.time()
    return [
        (
            i,
            "bench-run",
            "message",
            hashlib.sha256(i.to_bytes(8, "little")).hexdigest()[:40],
            now + i * 1e-6,
            f"{i:016d}".encode() + filler,
        )
        for i in range(n)
    ]


async def _open_events_db(path: Path) -> Any:
    import aiosqlite  # the project's own dependency; imported lazily so the module imports without it

    conn = await aiosqlite.connect(str(path))
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute(EVENTS_SCHEMA)
    await conn.commit()
    return conn


async def raw_aiosqlite_executemany(
    n: int, payload_size: int = 1024, batch_size: int = 1000, tmpdir: str | None = None
) -> float:
    """Insert n events with `executemany` in batches (one commit per batch) into a WAL file DB; return events/s."""
    rows = make_events(n, payload_size)
    with tempfile.TemporaryDirectory(prefix="bench-events-", dir=tmpdir) as tmp:
        conn = await _open_events_db(Path(tmp) / "events.sqlite")
        try:
            start = time.perf_counter()
            for offset in range(0, n, batch_size):
                await conn.executemany(INSERT_EVENT, rows[offset : offset + batch_size])
                await conn.commit()
            elapsed = time.perf_counter() - start
            await _check_count(conn, n)
        finally:
            await conn.close()
    return n / elapsed


async def raw_aiosqlite_one_await_per_insert(
    n: int, payload_size: int = 1024, commit_every: int = 1000, tmpdir: str | None = None
) -> float:
    """Insert n events with one awaited `execute` each (commit every `commit_every` rows); return events/s."""
    rows = make_events(n, payload_size)
    with tempfile.TemporaryDirectory(prefix="bench-events-", dir=tmpdir) as tmp:
        conn = await _open_events_db(Path(tmp) / "events.sqlite")
        try:
            start = time.perf_counter()
            for i, row in enumerate(rows, 1):
                await conn.execute(INSERT_EVENT, row)
                if i % commit_every == 0:
                    await conn.commit()
            await conn.commit()
            elapsed = time.perf_counter() - start
            await _check_count(conn, n)
        finally:
            await conn.close()
    return n / elapsed


async def _check_count(conn: Any, n: int) -> None:
    async with conn.execute("SELECT COUNT(*) FROM events") as cursor:
        row = await cursor.fetchone()
    if row is None or row[0] != n:
        raise AssertionError(f"expected {n} events in the DB, found {row}")


# ----------------------------------------------------------------------------------------------------------------
# subprocess runners (peer venvs)
# ----------------------------------------------------------------------------------------------------------------


def run_persist_workload(
    python: Path | str,
    api: str,
    messages: int,
    flow: str = "single",
    payload_size: int = 1024,
    pythonpath: str | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run _persist_workload.py with a MiniAgents interpreter; returns its JSON (messages_per_s, ...) or {"error"}."""
    cmd = [
        str(python),
        str(PERSIST_WORKLOAD),
        "--api",
        api,
        "--flow",
        flow,
        "--messages",
        str(messages),
        "--payload",
        str(payload_size),
    ]
    return common.run_json(cmd, pythonpath, timeout=timeout)


def persist_hook_messages_per_s(
    python: Path | str, api: str, messages: int, flow: str = "single", payload_size: int = 1024
) -> float:
    """Messages/s seen by a no-op MiniAgents persistence hook (raises RuntimeError if the workload fails)."""
    result = run_persist_workload(python, api, messages, flow=flow, payload_size=payload_size)
    if "error" in result:
        raise RuntimeError(result["error"])
    return float(result["messages_per_s"])


def run_langgraph_workload(
    python: Path | str,
    messages: int,
    payload_size: int = 1024,
    saver: str = "sync",
    channel: str = "append",
    tmpdir: str | None = None,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Run _langgraph_workload.py with the langgraph venv's interpreter; returns its JSON or {"error": ...}."""
    cmd = [
        str(python),
        str(LANGGRAPH_WORKLOAD),
        "--saver",
        saver,
        "--channel",
        channel,
        "--messages",
        str(messages),
        "--payload",
        str(payload_size),
    ]
    if tmpdir:
        cmd += ["--tmpdir", tmpdir]
    return common.run_json(cmd, None, timeout=timeout)


def langgraph_messages_per_s(
    messages: int, payload_size: int = 1024, saver: str = "sync", channel: str = "append"
) -> float:
    """Messages persisted per second by LangGraph's SQLite checkpointer (raises RuntimeError on failure)."""
    python = peers.ensure_peer("langgraph")
    result = run_langgraph_workload(python, messages, payload_size, saver=saver, channel=channel)
    if "error" in result:
        raise RuntimeError(result["error"])
    return float(result["messages_per_s"])


# ----------------------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One row of the table: how to measure it once, and what it means."""

    label: str
    n: int
    unit: str
    writes: str
    measure: Callable[[], dict[str, Any]]
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def measure_in_process(func: Callable[..., Any], n: int, *args: Any) -> Callable[[], dict[str, Any]]:
    """Wrap `async func(n, *args) -> rate` as a Case measurement (a small un-timed warm-up precedes the first)."""
    warmed: list[bool] = []

    def measure() -> dict[str, Any]:
        try:
            if not warmed:
                asyncio.run(func(min(n, 1000), *args))
                warmed.append(True)
            return {"rate": asyncio.run(func(n, *args))}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:300]}

    return measure


def measure_in_subprocess(
    runner: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> Callable[[], dict[str, Any]]:
    """Wrap a subprocess runner returning JSON with `messages_per_s` as a Case measurement."""

    def measure() -> dict[str, Any]:
        result = runner(*args, **kwargs)
        if "error" not in result:
            result["rate"] = result["messages_per_s"]
        return result

    return measure


def build_cases(args: argparse.Namespace) -> list[Case]:
    """All measurements, in the order they run within each round."""
    pythons = peers.ensure_peers(["miniagents-0.0.14", "miniagents-0.0.35", "langgraph"])
    size = args.payload
    cases = [
        Case(
            "raw aiosqlite `executemany`, batches of 1,000 (commit per batch)",
            args.events,
            "events/s",
            "events rows",
            measure_in_process(raw_aiosqlite_executemany, args.events, size, 1000, args.tmpdir),
        ),
        Case(
            "raw aiosqlite, one `await execute` per insert (commit per 1,000)",
            args.events,
            "events/s",
            "events rows",
            measure_in_process(raw_aiosqlite_one_await_per_insert, args.events, size, 1000, args.tmpdir),
        ),
    ]
    for version, api, hook in (("0.0.14", "pypi14", "on_persist_message"), ("0.0.35", "v35", "on_persist_messages")):
        python = pythons[f"miniagents-{version}"]
        for flow, shape in (("single", "1 agent call replying M msgs"), ("calls", "M agent calls x 1 reply")):
            cases.append(
                Case(
                    f"MiniAgents {version} `{hook}` no-op hook, {shape}",
                    args.messages,
                    "msgs/s",
                    "nothing (hook only)",
                    measure_in_subprocess(
                        run_persist_workload, python, api, args.messages, flow=flow, payload_size=size
                    ),
                )
            )
    for saver, saver_name in (("sync", "SqliteSaver"), ("async", "AsyncSqliteSaver")):
        for channel, channel_name in (("append", "`operator.add` list"), ("delta", "`DeltaChannel` list (beta)")):
            cases.append(
                Case(
                    f"LangGraph {saver_name}, {channel_name}, N steps x 1 msg",
                    args.graph_messages,
                    "msgs/s",
                    "checkpoint per step",
                    measure_in_subprocess(
                        run_langgraph_workload,
                        pythons["langgraph"],
                        args.graph_messages,
                        size,
                        saver=saver,
                        channel=channel,
                        tmpdir=args.tmpdir,
                    ),
                )
            )
    return cases


def run_rounds(cases: list[Case], rounds: int) -> None:
    """Measure every case once per round, interleaved, so machine noise spreads evenly."""
    for round_no in range(1, rounds + 1):
        for case in cases:
            if case.error:
                continue
            started = time.perf_counter()
            result = case.measure()
            if "error" in result:
                case.error = result["error"]
                common.log(f"[store] round {round_no}/{rounds} {case.label}: failed: {case.error}")
                continue
            case.results.append(result)
            common.log(f"[store] round {round_no}/{rounds} {case.label}: {time.perf_counter() - started:.1f} s")


def _detail(case: Case) -> str:
    if not case.results:
        return ""
    last = case.results[-1]
    if "checkpoints" in last:
        written_mb = (last["checkpoint_bytes"] + last["write_bytes"]) / 1e6
        return f"{last['checkpoints']:,} checkpoints + {last['writes']:,} writes, {written_mb:,.1f} MB serialized"
    if "handler_calls" in last:
        return f"{last['handler_calls']:,} hook calls for {last['hook_messages_total']:,} messages"
    return ""


def render(cases: list[Case], args: argparse.Namespace) -> str:
    """The Markdown report."""
    headers = ["measurement", "N", "median rate", "spread", "stored", "detail (last round)"]
    rows = []
    for case in cases:
        rates = [float(r["rate"]) for r in case.results]
        rate = common.median(rates)
        if rate is None:
            shown = f"unavailable: {case.error}"
        else:
            shown = f"{common.fmt_num(rate)} {case.unit}"
        spread = common.spread(rates)
        rows.append(
            [
                case.label,
                f"{case.n:,}",
                shown,
                "-" if spread is None else f"{spread * 100:.0f} %",
                case.writes,
                _detail(case),
            ]
        )
    lines = [
        "## Store benchmark (peers): raw SQLite, MiniAgents persistence hooks, LangGraph checkpointers",
        "",
        common.markdown_table(headers, rows),
        "",
        f"- Medians of {args.rounds} interleaved rounds; spread = max/min - 1 across rounds. Payload {args.payload} "
        "bytes per event / message.",
        "- Raw aiosqlite: temp-file DB, `PRAGMA journal_mode=WAL` (default synchronous=FULL), schema `events(seq "
        "INTEGER PRIMARY KEY, run_id TEXT, kind TEXT, hash_key TEXT, t REAL, data BLOB)`; rows are built before the "
        "clock starts; timed: inserts + commits. Runs in this interpreter.",
        "- MiniAgents: timed from the first call to the exit of `async with MiniAgents(...)` (all hook tasks done); "
        "each message has a 1 KB text and a distinct `n`; the hook only counts (0.0.14: one call per message; 0.0.35: "
        "batches). The hook also sees the agent call/reply nodes (see detail).",
        "- LangGraph: one thread, a two-node graph A->B->A->... where every step appends one 1 KB message dict and "
        "a checkpoint is written per step (default durability `async`); N messages = N steps (recursion_limit = "
        "N + 10); timed: one `invoke`/`ainvoke` after a 20-step warm-up on another thread. With the classic "
        "`operator.add` reducer every checkpoint holds the whole list, so bytes written grow as N^2 and the rate "
        "falls with N; `DeltaChannel` (beta) stores only each step's write plus periodic snapshots.",
    ]
    versions = sorted(
        {
            f"{name} {r[key]}"
            for case in cases
            for r in case.results
            for name, key in (
                ("miniagents", "version"),
                ("langgraph", "langgraph"),
                ("langgraph-checkpoint-sqlite", "langgraph_checkpoint_sqlite"),
            )
            if key in r
        }
    )
    if versions:
        lines.append(
            f"- Versions measured: {', '.join(versions)}; aiosqlite {_aiosqlite_version()} in this interpreter."
        )
    lines += ["", "Command:", "", f"    {common.shown_command()}"]
    return "\n".join(lines)


def _aiosqlite_version() -> str:
    try:
        return importlib.metadata.version("aiosqlite")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the benchmark's command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median is reported)")
    parser.add_argument("--events", type=int, default=20000, help="events for the raw aiosqlite cases")
    parser.add_argument("--messages", type=int, default=5000, help="messages for the MiniAgents hook cases")
    parser.add_argument("--graph-messages", type=int, default=1000, help="messages (= steps) for LangGraph cases")
    parser.add_argument("--payload", type=int, default=1024, help="bytes per event / message")
    parser.add_argument("--tmpdir", default=None, help="where temporary SQLite files go (default: system temp)")
    return parser.parse_args(argv)


def main(
    argv: list[str] | None = None, extra_cases: Callable[[argparse.Namespace], list[Case]] | None = None
) -> list[Case]:
    """Entry point; `extra_cases` lets another script add its own rows (measured interleaved with these)."""
    args = parse_args(argv)
    cases = build_cases(args) + (extra_cases(args) if extra_cases else [])
    run_rounds(cases, args.rounds)
    print(render(cases, args))
    return cases


if __name__ == "__main__":
    main()
