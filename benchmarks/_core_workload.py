"""Core MiniAgents micro-workloads (echo calls, concurrency, message hashing); prints one JSON object to stdout."""

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# API flavours:
#   "seed14": MiniAgents 0.0.14 as in its reference source (and this project): `agent.inquire(...)`, `ctx.messages`,
#             `await reply.aresolve_messages()`
#   "pypi14": the 0.0.14 wheel on PyPI: `agent.inquire(...)`, but `ctx.message_promises` and `await reply.aresolve()`
#             (there is no `aresolve_messages()` in the published wheel)
#   "v35":    MiniAgents 0.0.35: `agent.trigger(...)`, `ctx.message_promises`, `await reply.aresolve()`
#   "asyncio": no framework: the same echo call written with a plain asyncio task and queue (the floor a framework
#             is read against)
APIS = ("seed14", "pypi14", "v35", "asyncio")
PAYLOAD_1KB = "x" * 1024


@dataclass
class Api:
    """The handful of library entry points the workloads need, bridged over API differences."""

    miniagents_cls: Any
    message_cls: Any
    miniagent: Any
    echo: Any
    call: Callable[[Any, Any], Any]
    resolve: Callable[[Any], Awaitable[tuple[Any, ...]]]
    incoming: Callable[[Any], Any]
    module_file: str
    version: str


def _resolve_seed14(reply: Any) -> Awaitable[tuple[Any, ...]]:
    return reply.aresolve_messages()


def _resolve_awaitable(reply: Any) -> Awaitable[tuple[Any, ...]]:
    return reply.aresolve()


def _inquire(agent: Any, messages: Any) -> Any:
    return agent.inquire(messages)


def _trigger(agent: Any, messages: Any) -> Any:
    return agent.trigger(messages)


def _incoming_seed14(ctx: Any) -> Any:
    return ctx.messages


def _incoming_promises(ctx: Any) -> Any:
    return ctx.message_promises


class _PlainMessage:
    """A message as plain asyncio code would pass one: text and fields, hashed like a `Message`."""

    def __init__(self, text: str, **fields: Any) -> None:
        self.text = text
        self.fields = fields

    @property
    def hash_key(self) -> str:
        import blake3
        import orjson

        body = orjson.dumps({"text": self.text, **self.fields}, option=orjson.OPT_SORT_KEYS)
        return blake3.blake3(body).hexdigest()[:40]

    def __str__(self) -> str:
        return self.text


class _PlainContext:
    """What an agent function gets in plain asyncio: its input and a queue for its replies."""

    def __init__(self, messages: Any, replies: asyncio.Queue[Any]) -> None:
        self.messages = messages
        self.replies = replies

    def reply(self, message: Any) -> None:
        self.replies.put_nowait(message)


class _PlainCall:
    """One agent call: a task running the agent, the replies it queued, None when it is done."""

    def __init__(self, agent: Callable[[_PlainContext], Awaitable[None]], messages: Any) -> None:
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._arun(agent, messages))

    async def _arun(self, agent: Callable[[_PlainContext], Awaitable[None]], messages: Any) -> None:
        try:
            await agent(_PlainContext(messages, self.replies))
        finally:
            self.replies.put_nowait(None)

    async def aresolve(self) -> tuple[Any, ...]:
        collected = []
        while (message := await self.replies.get()) is not None:
            collected.append(message)
        return tuple(collected)


class _NoContext:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: Any) -> None:
        return None


def _plain_asyncio_api() -> Api:
    async def echo(ctx: _PlainContext) -> None:
        ctx.reply(ctx.messages)

    return Api(
        miniagents_cls=_NoContext,
        message_cls=_PlainMessage,
        miniagent=lambda function: function,
        echo=echo,
        call=lambda agent, messages: _PlainCall(agent, messages),
        resolve=lambda call: call.aresolve(),
        incoming=lambda ctx: ctx.messages,
        module_file="(plain asyncio)",
        version=sys.version.split()[0],
    )


def load_api(api: str) -> Api:
    """Import the library under test and build an echo agent using the requested API flavour."""
    if api == "asyncio":
        return _plain_asyncio_api()
    # imported dynamically: which `miniagents` this is depends on the interpreter / PYTHONPATH of the subprocess
    package = importlib.import_module("miniagents")
    messages_module = importlib.import_module("miniagents.messages")
    core_module = importlib.import_module("miniagents.miniagents")
    try:
        version = importlib.metadata.version("miniagents")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"

    if api == "seed14":

        async def echo(ctx: Any) -> None:
            ctx.reply(ctx.messages)

    else:

        async def echo(ctx: Any) -> None:
            ctx.reply(ctx.message_promises)

    return Api(
        miniagents_cls=core_module.MiniAgents,
        message_cls=messages_module.Message,
        miniagent=core_module.miniagent,
        echo=core_module.miniagent(echo),
        call=_trigger if api == "v35" else _inquire,
        resolve=_resolve_seed14 if api == "seed14" else _resolve_awaitable,
        incoming=_incoming_seed14 if api == "seed14" else _incoming_promises,
        module_file=str(package.__file__),
        version=version,
    )


def _text_of(message: Any) -> str:
    return str(message).strip()


def _check_replies(replies: tuple[Any, ...]) -> None:
    if len(replies) != 1 or _text_of(replies[0]) != "hello":
        raise AssertionError(f"echo agent returned {replies!r} instead of one 'hello' message")


async def sequential_calls(api: Api, n: int, warmup: int) -> dict[str, float]:
    """Await n echo calls one after another inside one MiniAgents context."""
    async with api.miniagents_cls():
        for _ in range(warmup):
            _check_replies(await api.resolve(api.call(api.echo, "hello")))
    gc.collect()
    start = time.perf_counter()
    async with api.miniagents_cls():
        replies: tuple[Any, ...] = ()
        for _ in range(n):
            replies = await api.resolve(api.call(api.echo, "hello"))
        loop_end = time.perf_counter()
    end = time.perf_counter()
    _check_replies(replies)
    return {"us_per_call": (end - start) / n * 1e6, "us_per_call_loop_only": (loop_end - start) / n * 1e6}


async def concurrent_calls(api: Api, concurrency: int) -> dict[str, float]:
    """Start `concurrency` echo calls at once, then resolve them all (fresh MiniAgents context)."""
    gc.collect()
    start = time.perf_counter()
    async with api.miniagents_cls():
        replies = [api.call(api.echo, "hello") for _ in range(concurrency)]
        results = await asyncio.gather(*(api.resolve(reply) for reply in replies))
        loop_end = time.perf_counter()
    end = time.perf_counter()
    if len(results) != concurrency:
        raise AssertionError(f"expected {concurrency} results, got {len(results)}")
    for result in results:
        _check_replies(result)
    return {
        "us_per_call": (end - start) / concurrency * 1e6,
        "us_per_call_loop_only": (loop_end - start) / concurrency * 1e6,
    }


async def create_and_hash(api: Api, n: int, warmup: int) -> dict[str, float]:
    """Create n distinct messages carrying a 1 KB text and compute each one's hash_key."""
    message_cls = api.message_cls
    async with api.miniagents_cls():
        keys = {message_cls(text=PAYLOAD_1KB, n=i).hash_key for i in range(max(warmup, 2))}
        if len(keys) != max(warmup, 2):
            raise AssertionError("distinct messages produced identical hash keys")
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            message_cls(text=PAYLOAD_1KB, n=i).hash_key  # noqa: B018 - computing the property is the workload
        end = time.perf_counter()
    return {"messages_per_s": n / (end - start)}


async def _guarded(coro: Awaitable[dict[str, float]]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(coro, timeout=300)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}".strip()[:300], "traceback": traceback.format_exc()[-2000:]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected workloads and collect their results."""
    api = load_api(args.api)
    result: dict[str, Any] = {
        "module": api.module_file,
        "version": api.version,
        "python": sys.version.split()[0],
        "api": args.api,
    }
    if args.seq > 0:
        result["sequential"] = await _guarded(sequential_calls(api, args.seq, args.warmup))
    if args.concurrency:
        result["concurrent"] = {str(c): await _guarded(concurrent_calls(api, c)) for c in args.concurrency if c > 0}
    if args.hash > 0:
        result["create_hash"] = await _guarded(create_and_hash(api, args.hash, args.warmup))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the workload's command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", choices=APIS, default="seed14", help="which MiniAgents API flavour to drive")
    parser.add_argument("--seq", type=int, default=2000, help="sequential echo calls")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[250, 1000, 2000, 4000],
        help="comma-separated concurrency levels",
    )
    parser.add_argument("--hash", type=int, default=20000, help="messages to create and hash")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up iterations before timing")
    return parser.parse_args(argv)


def main() -> None:
    """Entry point: print the JSON result (or a JSON error if the library cannot even be imported)."""
    args = parse_args()
    try:
        result = asyncio.run(run(args))
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}".strip()[:300], "traceback": traceback.format_exc()[-2000:]}
        print(json.dumps(result))
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
