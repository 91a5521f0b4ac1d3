"""Ask an LLM one question, stream its answer, and print every message MiniAgents persists on the way."""

# python examples/llm_example.py                        # OpenAI: needs OPENAI_API_KEY
# python examples/llm_example.py --provider anthropic   # Anthropic: needs ANTHROPIC_API_KEY
# python examples/llm_example.py --offline              # a local fake LLM server, no key (or MINIAGENTS_OFFLINE=1)

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pprint import pprint
from typing import Any, Optional

from miniagents import Message, MiniAgent, MiniAgents

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
OFFLINE_MODEL = "fake-llm"
OFFLINE_ANSWER = "Well, I am. Thank you for asking, you did. Hmm."


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", choices=sorted(MODELS), default="openai", help="which API to ask")
    parser.add_argument("--model", help="the model (default: a small one of the provider)")
    parser.add_argument(
        "--offline",
        action="store_true",
        default=os.environ.get("MINIAGENTS_OFFLINE") == "1",
        help="answer from a local fake LLM server instead of the real API (also: MINIAGENTS_OFFLINE=1)",
    )
    return parser.parse_args(argv)


@contextlib.asynccontextmanager
async def llm_agent(provider: str, model: Optional[str], offline: bool) -> AsyncIterator[MiniAgent]:
    """An LLM agent bound to a client of the real API, or of a local fake server that says `OFFLINE_ANSWER`."""
    async with contextlib.AsyncExitStack() as stack:
        base_url: Optional[str] = None
        api_key: Optional[str] = None  # None: the SDK reads it from the environment
        if offline:
            from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply

            reply = ScriptedReply.from_text(OFFLINE_ANSWER, token_delay=0.02)
            server = await stack.enter_async_context(FakeLLMServer(default_reply=reply))
            base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
            api_key = "offline"
        if provider == "openai":
            import openai

            from miniagents.ext.llm.openai import openai_agent

            openai_client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key)
            await stack.enter_async_context(openai_client)
            yield openai_agent.fork(model=model or MODELS[provider], async_client=openai_client)
        else:
            import anthropic

            from miniagents.ext.llm.anthropic import anthropic_agent

            anthropic_client = anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key)
            await stack.enter_async_context(anthropic_client)
            yield anthropic_agent.fork(model=model or MODELS[provider], async_client=anthropic_client)


async def persist_message(_: Any, message: Message) -> None:
    """Print each message (and interaction node) once, when it is complete."""
    print("HASH KEY:", message.hash_key)
    print(type(message).__name__)
    pprint(message.serialize(), width=119)
    print()


async def amain(args: argparse.Namespace) -> None:
    model = args.model or (OFFLINE_MODEL if args.offline else None)
    async with llm_agent(args.provider, model, args.offline) as agent:
        async with MiniAgents(on_persist_message=persist_message):
            reply_sequence = agent.inquire("How are you today?", max_tokens=1000, system="Respond only in Yoda-speak.")
            colored = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
            start, end = ("\033[92;1m", "\033[0m") if colored else ("", "")
            print()
            async for message_promise in reply_sequence:
                async for token in message_promise:
                    print(f"{start}{token}{end}", end="", flush=True)
                print("\n")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        from dotenv import load_dotenv  # keys may live in a .env file

        load_dotenv()
    if not args.offline and not os.environ.get(KEY_VARIABLES[args.provider]):
        print(f"Set {KEY_VARIABLES[args.provider]} to ask the real API, or run with --offline.", file=sys.stderr)
        return 2
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
