"""MiniAgents persistence-hook workload: a flow produces M distinct 1 KB messages; prints JSON to stdout."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import json
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any

# API flavours (see _core_workload.py): "seed14" and "pypi14" have `on_persist_message(promise, message)` called once
# per message; "v35" has `on_persist_messages(messages)` called with batches of messages.
APIS = ("seed14", "pypi14", "v35")


class Counter:
    """Counts what the persistence hook sees without storing anything."""

    def __init__(self) -> None:
        self.calls = 0
        self.messages = 0
        self.reply_ns: set[int] = set()

    def see(self, message: Any) -> None:
        self.messages += 1
        n = getattr(message, "n", None)
        if isinstance(n, int) and getattr(message, "bench", None) == "persist":
            self.reply_ns.add(n)

    async def per_message(self, _promise: Any, message: Any) -> None:
        self.calls += 1
        self.see(message)

    async def batched(self, messages: Iterable[Any]) -> None:
        self.calls += 1
        for message in messages:
            self.see(message)


def _call(api: str, agent: Any) -> Any:
    return agent.trigger() if api == "v35" else agent.inquire()


async def _resolve(api: str, reply: Any) -> tuple[Any, ...]:
    return await (reply.aresolve_messages() if api == "seed14" else reply.aresolve())


async def measure(api: str, flow: str, m: int, payload_size: int) -> dict[str, Any]:
    """Run one flow producing m messages under a MiniAgents context whose persistence hook counts them.

    flow "single": one agent call replies with all m messages; flow "calls": m agent calls awaited one after
    another, each replying with one message (the shape of an m-step graph run).
    """
    core = importlib.import_module("miniagents.miniagents")
    message_cls = importlib.import_module("miniagents.messages").Message
    payload = "x" * payload_size
    numbers = iter(range(m))

    async def producer(ctx: Any) -> None:
        for i in range(m):
            ctx.reply(message_cls(text=payload, n=i, bench="persist"))

    async def step(ctx: Any) -> None:
        ctx.reply(message_cls(text=payload, n=next(numbers), bench="persist"))

    agent = core.miniagent(producer if flow == "single" else step)
    counter = Counter()
    if api == "v35":
        context = core.MiniAgents(on_persist_messages=counter.batched)
    else:
        context = core.MiniAgents(on_persist_message=counter.per_message)

    gc.collect()
    start = time.perf_counter()
    async with context:
        if flow == "single":
            replies = await _resolve(api, _call(api, agent))
        else:
            replies = tuple([message for _ in range(m) for message in await _resolve(api, _call(api, agent))])
    elapsed = time.perf_counter() - start

    if len(replies) != m:
        raise AssertionError(f"expected {m} replies, got {len(replies)}")
    if len(counter.reply_ns) != m:
        raise AssertionError(f"the hook saw {len(counter.reply_ns)} of the {m} reply messages")
    return {
        "flow": flow,
        "messages": m,
        "seconds": elapsed,
        "messages_per_s": m / elapsed,
        "handler_calls": counter.calls,
        "hook_messages_total": counter.messages,
    }


def main() -> None:
    """Entry point: print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", choices=APIS, default="seed14", help="which MiniAgents API flavour to drive")
    parser.add_argument("--flow", choices=("single", "calls"), default="single", help="see measure() docstring")
    parser.add_argument("--messages", type=int, default=5000, help="messages the flow produces")
    parser.add_argument("--payload", type=int, default=1024, help="characters of text per message")
    parser.add_argument("--warmup", type=int, default=200, help="messages in a warm-up flow first")
    args = parser.parse_args()
    try:
        if args.warmup:
            asyncio.run(measure(args.api, args.flow, args.warmup, args.payload))
        result = asyncio.run(measure(args.api, args.flow, args.messages, args.payload))
        result["module"] = str(importlib.import_module("miniagents").__file__)
        try:
            result["version"] = importlib.metadata.version("miniagents")
        except importlib.metadata.PackageNotFoundError:
            result["version"] = "unknown"
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300], "traceback": traceback.format_exc()[-2000:]}))
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
