"""A conversation with an LLM at the console, logged to a markdown chat history (CHAT.md)."""

# python examples/conversation.py                        # OpenAI: needs OPENAI_API_KEY
# python examples/conversation.py --provider anthropic   # Anthropic: needs ANTHROPIC_API_KEY
# python examples/conversation.py --offline              # a local fake LLM that echoes you (or MINIAGENTS_OFFLINE=1)
#
# Enter sends a message, Ctrl+Space starts a new line, Ctrl+D (or Ctrl+C) ends the conversation. The chat is
# appended to the chat file, and a conversation started again goes on from what that file holds.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, Optional

from miniagents import MiniAgent, MiniAgents, adialog_loop
from miniagents.ext.chat_history_md import ChatHistoryMD
from miniagents.ext.console_user_agent import console_user_agent

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
OFFLINE_MODEL = "fake-llm"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", choices=sorted(MODELS), default="openai", help="which API to talk to")
    parser.add_argument("--model", help="the model (default: a small one of the provider)")
    parser.add_argument("--chat-file", default="CHAT.md", help="the markdown chat history (default: CHAT.md)")
    parser.add_argument(
        "--offline",
        action="store_true",
        default=os.environ.get("MINIAGENTS_OFFLINE") == "1",
        help="talk to a local fake LLM server that echoes you instead of the real API (also: MINIAGENTS_OFFLINE=1)",
    )
    return parser.parse_args(argv)


def offline_reply(request: Any) -> str:
    """What the offline fake LLM answers: how long the chat is, and the last thing the user said."""
    messages = request.body["messages"]
    user_texts = [message["content"] for message in messages if message["role"] == "user"]
    return f"(offline) Message {len(messages)} of our chat. You said: {user_texts[-1]}"


@contextlib.asynccontextmanager
async def assistant_agent(provider: str, model: str, offline: bool) -> AsyncIterator[MiniAgent]:
    """The LLM agent, bound to a client of the real API or of a local fake server."""
    async with contextlib.AsyncExitStack() as stack:
        base_url: Optional[str] = None
        api_key: Optional[str] = None  # None: the SDK reads it from the environment
        if offline:
            from miniagents.testing.fake_llm_server import FakeLLMServer

            server = await stack.enter_async_context(FakeLLMServer(default_reply=offline_reply))
            base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
            api_key = "offline"
        if provider == "openai":
            import openai

            from miniagents.ext.llm.openai import openai_agent

            openai_client = await stack.enter_async_context(openai.AsyncOpenAI(base_url=base_url, api_key=api_key))
            yield openai_agent.fork(model=model, async_client=openai_client)
        else:
            import anthropic

            from miniagents.ext.llm.anthropic import anthropic_agent

            anthropic_client = await stack.enter_async_context(
                anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key)
            )
            yield anthropic_agent.fork(model=model, async_client=anthropic_client, max_tokens=1000)


async def amain(args: argparse.Namespace) -> None:
    model = args.model or (OFFLINE_MODEL if args.offline else MODELS[args.provider])
    chat_history = ChatHistoryMD(args.chat_file)
    async with assistant_agent(args.provider, model, args.offline) as assistant:
        async with MiniAgents():
            print()
            try:
                await adialog_loop(
                    user_agent=console_user_agent.fork(chat_history=chat_history),
                    assistant_agent=assistant,
                )
            except EOFError:  # Ctrl+D, or the end of piped input
                print()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        from dotenv import load_dotenv  # keys may live in a .env file

        load_dotenv()
    if not args.offline and not os.environ.get(KEY_VARIABLES[args.provider]):
        print(f"Set {KEY_VARIABLES[args.provider]} to talk to the real API, or run with --offline.", file=sys.stderr)
        return 2
    try:
        asyncio.run(amain(args))
    except KeyboardInterrupt:  # Ctrl+C
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
