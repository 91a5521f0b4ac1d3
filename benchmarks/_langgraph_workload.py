"""LangGraph + SQLite checkpointer workload: N graph steps each append one 1 KB message; prints JSON to stdout."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import operator
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.channels import DeltaChannel
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph


def append_batches(state: list[dict[str, Any]], writes: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """DeltaChannel reducer: fold a batch of list writes onto the state (deterministic, batching-invariant)."""
    return [*state, *(message for write in writes for message in write)]


class AppendState(TypedDict):
    """Graph state: a list of messages with the classic append reducer (the full list is in every checkpoint)."""

    messages: Annotated[list[dict[str, Any]], operator.add]
    target: int


class DeltaState(TypedDict):
    """Graph state: a list of messages kept in a DeltaChannel (checkpoints hold only the new writes; beta)."""

    messages: Annotated[list[dict[str, Any]], DeltaChannel(append_batches)]
    target: int


def build_graph(channel: str, payload_size: int) -> StateGraph:
    """Two nodes, A and B, alternating; each step appends one distinct message until `target` is reached."""
    filler = "x" * max(payload_size - 16, 0)

    def make_node(name: str) -> Any:
        def node(state: dict[str, Any]) -> dict[str, Any]:
            index = len(state["messages"])
            return {"messages": [{"role": name, "n": index, "content": f"{index:016d}{filler}"}]}

        return node

    def route(state: dict[str, Any]) -> str:
        return "done" if len(state["messages"]) >= state["target"] else "next"

    graph = StateGraph(DeltaState if channel == "delta" else AppendState)
    graph.add_node("a", make_node("a"))
    graph.add_node("b", make_node("b"))
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", route, {"next": "b", "done": END})
    graph.add_conditional_edges("b", route, {"next": "a", "done": END})
    return graph


def _config(thread_id: str, steps: int) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": steps + 10}


def run_sync(db_path: Path, args: argparse.Namespace) -> float:
    """Run with the synchronous SqliteSaver via graph.invoke; return elapsed seconds of the measured run."""
    with SqliteSaver.from_conn_string(str(db_path)) as saver:
        app = build_graph(args.channel, args.payload).compile(checkpointer=saver)
        if args.warmup:
            app.invoke({"messages": [], "target": args.warmup}, _config("warmup", args.warmup))
        start = time.perf_counter()
        final = app.invoke({"messages": [], "target": args.messages}, _config("measured", args.messages))
        elapsed = time.perf_counter() - start
    _check(final, args.messages)
    return elapsed


async def run_async(db_path: Path, args: argparse.Namespace) -> float:
    """Run with AsyncSqliteSaver (aiosqlite) via graph.ainvoke; return elapsed seconds of the measured run."""
    async with AsyncSqliteSaver.from_conn_string(str(db_path)) as saver:
        app = build_graph(args.channel, args.payload).compile(checkpointer=saver)
        if args.warmup:
            await app.ainvoke({"messages": [], "target": args.warmup}, _config("warmup", args.warmup))
        start = time.perf_counter()
        final = await app.ainvoke({"messages": [], "target": args.messages}, _config("measured", args.messages))
        elapsed = time.perf_counter() - start
    _check(final, args.messages)
    return elapsed


def _check(final: dict[str, Any], expected: int) -> None:
    messages = final["messages"]
    if len(messages) != expected or [m["n"] for m in messages] != list(range(expected)):
        raise AssertionError(f"expected {expected} messages in order, got {len(messages)}")


def db_stats(db_path: Path) -> dict[str, int]:
    """Checkpoints and writes stored for the measured thread, and their total serialized bytes."""
    with sqlite3.connect(db_path) as conn:
        checkpoints, checkpoint_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) FROM checkpoints "
            "WHERE thread_id = 'measured'"
        ).fetchone()
        writes, write_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM writes WHERE thread_id = 'measured'"
        ).fetchone()
    return {
        "checkpoints": int(checkpoints),
        "checkpoint_bytes": int(checkpoint_bytes),
        "writes": int(writes),
        "write_bytes": int(write_bytes),
    }


def main() -> None:
    """Entry point: run one measured invocation and print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saver", choices=("sync", "async"), default="sync", help="SqliteSaver or AsyncSqliteSaver")
    parser.add_argument("--channel", choices=("append", "delta"), default="append", help="state channel for messages")
    parser.add_argument("--messages", type=int, default=500, help="messages = graph steps in the measured run")
    parser.add_argument("--payload", type=int, default=1024, help="bytes of content per message")
    parser.add_argument("--warmup", type=int, default=20, help="steps of a warm-up run on another thread")
    parser.add_argument("--tmpdir", default=None, help="directory for the temporary SQLite file")
    args = parser.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-langgraph-", dir=args.tmpdir) as tmp:
            db_path = Path(tmp) / "checkpoints.sqlite"
            elapsed = run_sync(db_path, args) if args.saver == "sync" else asyncio.run(run_async(db_path, args))
            stats = db_stats(db_path)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300], "traceback": traceback.format_exc()[-2000:]}))
        sys.exit(1)
    print(
        json.dumps(
            {
                "saver": args.saver,
                "channel": args.channel,
                "messages": args.messages,
                "seconds": elapsed,
                "messages_per_s": args.messages / elapsed,
                "checkpoints_per_s": stats["checkpoints"] / elapsed,
                **stats,
                "langgraph": importlib.metadata.version("langgraph"),
                "langgraph_checkpoint_sqlite": importlib.metadata.version("langgraph-checkpoint-sqlite"),
            }
        )
    )


if __name__ == "__main__":
    main()
