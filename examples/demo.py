"""`make demo` (python examples/demo.py): a panel of OpenAI agents recorded into agents.db, then replayed offline
with the same fingerprint.

The agents talk through the real `openai` SDK to a local fake LLM server on 127.0.0.1 (scripted answers, streamed
token by token), or to the OpenAI API when OPENAI_API_KEY is set. The replay starts no server and sends no request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, TextIO

import openai

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.ext.llm.llm_common import UserMessage
from miniagents.ext.llm.openai import openai_agent
from miniagents.messages import MessageSequencePromise
from miniagents.testing.fake_llm_server import FakeLLMServer, RecordedRequest, ScriptedReply
from replay import Replay, aload_tree
from store import SQLiteStore

DEFAULT_MODEL = "gpt-4o-mini"
FAKE_MODEL = "fake-llm"
FAKE_API_KEY = "sk-fake-demo-key"


class Expert(NamedTuple):
    """A member of the panel: what they are, and what they answer when the fake LLM server plays them."""

    role: str
    """Who they are, as in "You are a historian."."""
    scripted_answer: str


EXPERTS = {
    "HISTORIAN": Expert(
        "a historian", "Paper was first made in China around 105 AD, and it reached Europe through the Islamic world."
    ),
    "ENGINEER": Expert(
        "a paper engineer",
        "A modern paper machine turns wet pulp into a dry sheet moving at over a hundred km per hour.",
    ),
    "ECOLOGIST": Expert(
        "an ecologist", "Recycled fibres can be reused five to seven times before they become too short to bond."
    ),
}
EDITOR_PROMPT = "You are an editor. Sum up each expert's answer in one line: '- ALIAS: ...'."
NOTES_HEADER = "The panel's answers:"
_NOTE_LINE = re.compile(r"^(?P<alias>[A-Z]+): (?P<answer>.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Style:
    """The escape codes the demo's output is styled with; all empty for plain text."""

    green: str = ""
    bold: str = ""
    dim: str = ""
    reset: str = ""


COLOURS = Style(green="\033[92m", bold="\033[1m", dim="\033[2m", reset="\033[0m")


def terminal_style(stream: TextIO, environ: Mapping[str, str]) -> Style:
    """Colours only when `stream` is a terminal and NO_COLOR is unset or empty (as no-color.org asks)."""
    return COLOURS if stream.isatty() and not environ.get("NO_COLOR") else Style()


def expert_prompt(alias: str) -> str:
    """The system prompt of one expert."""
    return f"You are {EXPERTS[alias].role}. Answer in one sentence."


# Which LLM the live run talks to


@dataclass(frozen=True)
class LLMSettings:
    """Which LLM service the live run records: the OpenAI API, or the local fake LLM server."""

    real_api: bool
    model: str

    def describe(self, server: Optional[FakeLLMServer]) -> str:
        """One line for the console: which LLM answers, and why."""
        if self.real_api:
            return f"the OpenAI API (model {self.model}), because OPENAI_API_KEY is set"
        where = f" at {server.base_url}" if server is not None else ""
        return f"the local fake LLM server{where} (set OPENAI_API_KEY to use the OpenAI API)"


def choose_llm(environ: Mapping[str, str], model: str = DEFAULT_MODEL) -> LLMSettings:
    """The OpenAI API with `model` when `environ` holds a non-empty OPENAI_API_KEY; else the local fake server."""
    if environ.get("OPENAI_API_KEY"):
        return LLMSettings(real_api=True, model=model)
    return LLMSettings(real_api=False, model=FAKE_MODEL)


class HTTPRequestCounter:
    """An httpx request hook that counts every request a client sends (attempts that fail to connect included)."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, request: Any) -> None:
        self.count += 1


def openai_client(counter: HTTPRequestCounter, base_url: Optional[str] = None) -> openai.AsyncOpenAI:
    """An `openai.AsyncOpenAI` whose requests `counter` counts: the OpenAI API as the environment configures it
    (OPENAI_API_KEY, OPENAI_BASE_URL) when `base_url` is None, else the server at `base_url` (with a fake key and
    no retries)."""
    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [counter]})
    if base_url is None:
        return openai.AsyncOpenAI(http_client=http_client)
    return openai.AsyncOpenAI(base_url=base_url, api_key=FAKE_API_KEY, max_retries=0, http_client=http_client)


def closed_port_url() -> str:
    """The OpenAI base URL of a port on 127.0.0.1 that nothing listens on: a request to it would fail at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# The fake LLM server's side of the conversation


def editor_summary(notes: str) -> str:
    """The fake editor's answer: one line per expert note ("ALIAS: answer"), with the first clause of the answer."""
    lines = [f"- {note['alias']}: {note['answer'].split(',')[0].rstrip('.')}." for note in _NOTE_LINE.finditer(notes)]
    return "Summary of the panel:\n" + "\n".join(lines)


def fake_panel_llm(token_delay: float) -> Callable[[RecordedRequest], ScriptedReply]:
    """The fake server's replies: each expert's scripted answer (recognised by its system prompt), and for the
    editor a summary of the notes it receives; streamed at `token_delay` s per token (the editor twice as fast)."""
    aliases_by_prompt = {expert_prompt(alias): alias for alias in EXPERTS}

    def reply(request: RecordedRequest) -> ScriptedReply:
        messages = request.body.get("messages") or []
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        if system in aliases_by_prompt:
            answer = EXPERTS[aliases_by_prompt[system]].scripted_answer
            return ScriptedReply.from_text(answer, token_delay=token_delay)
        if system == EDITOR_PROMPT:
            return ScriptedReply.from_text(editor_summary(messages[-1]["content"]), token_delay=token_delay / 2)
        return ScriptedReply(status=400, error_message="The demo's fake LLM only knows the panel's prompts.")

    return reply


# The agents


async def apanel_notes(answers: Sequence[MessageSequencePromise]) -> UserMessage:
    """The experts' answers as one message for the editor, one "ALIAS: answer" line per expert."""
    lines = [NOTES_HEADER]
    for answer in answers:
        for message in await answer.aresolve_messages():
            lines.append(f"{getattr(message, 'agent_alias', '?')}: {' '.join(str(message).split())}")
    return UserMessage("\n".join(lines))


@miniagent
async def panel_agent(ctx: InteractionContext, model: str, async_client: openai.AsyncOpenAI) -> None:
    """Asks every expert at once (they run in parallel), then has an editor sum up their answers.

    The experts and the editor are `openai_agent` forks on `model` through `async_client` (bind both with `fork`).
    """
    experts = [
        openai_agent.fork(alias=alias, model=model, system=expert_prompt(alias), async_client=async_client)
        for alias in EXPERTS
    ]
    answers = [expert.inquire(ctx.messages) for expert in experts]
    ctx.reply(answers)
    editor = openai_agent.fork(alias="EDITOR", model=model, system=EDITOR_PROMPT, async_client=async_client)
    ctx.reply(editor.inquire([ctx.messages, await apanel_notes(answers)]))


async def arun_panel(
    question: str, settings: LLMSettings, client: openai.AsyncOpenAI, style: Style = Style()
) -> float:
    """Stream every reply of the panel to the console as it arrives (needs an active MiniAgents context); the
    seconds it took."""
    print(f"{style.bold}USER:{style.reset} {question}\n")
    started = time.perf_counter()
    panel = panel_agent.fork(model=settings.model, async_client=client)
    async for message_promise in panel.inquire(question):
        alias = getattr(message_promise.preliminary_metadata, "agent_alias", "?")
        print(f"{style.green}{style.bold}{alias}:{style.reset} ", end="", flush=True)
        async for token in message_promise:
            print(f"{style.green}{token}{style.reset}", end="", flush=True)
        print("\n")
    return time.perf_counter() - started


# Record, replay, compare


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo did: the run recorded, both fingerprints, and the HTTP requests each phase sent."""

    run_id: str
    recorded_fingerprint: str
    replayed_fingerprint: str
    replayed_calls: int
    live_http_requests: int
    replay_http_requests: int


async def arecord_and_replay(
    question: str, token_delay: float, path: Path, settings: LLMSettings, style: Style = Style()
) -> DemoOutcome:
    """Record the panel into `path` (replacing an earlier recording) from the LLM `settings` choose, replay it
    offline (no server started, the client pointed at a closed port), print the tree and compare fingerprints."""
    live_requests = HTTPRequestCounter()
    recording = Replay(SQLiteStore(path), mode="all")
    async with contextlib.AsyncExitStack() as stack:
        server = None
        if not settings.real_api:
            server = await stack.enter_async_context(FakeLLMServer(default_reply=fake_panel_llm(token_delay)))
        client = openai_client(live_requests, None if server is None else server.openai_base_url)
        await stack.enter_async_context(client)
        print(f"{style.bold}1. Live run, answered by {settings.describe(server)}{style.reset}")
        print(f"{style.bold}   and recorded into {path}{style.reset}\n")
        async with MiniAgents(replay=recording):
            elapsed = await arun_panel(question, settings, client, style)
    print(f"{style.dim}{len(EXPERTS)} experts answered in parallel; the live run took {elapsed:.2f} s.{style.reset}")

    print(f"\n{style.bold}2. The same flow replayed offline from {path.name} (no server, no LLM call){style.reset}\n")
    replay_requests = HTTPRequestCounter()
    replayed = Replay(SQLiteStore(path), mode="none")
    async with openai_client(replay_requests, closed_port_url()) as nowhere_client:
        async with MiniAgents(replay=replayed):
            elapsed = await arun_panel(question, settings, nowhere_client, style)
    print(f"{style.dim}The replay took {elapsed:.2f} s.{style.reset}")

    async with SQLiteStore(path) as store:
        (run,) = await store.alist_runs()
        tree = await aload_tree(store, run.run_id)
        report = await store.averify()
    print(
        f"\n{style.bold}3. The recorded interaction tree (run {run.run_id}, {run.event_count} events){style.reset}\n"
    )
    print(tree)
    same = "the same" if recording.fingerprint == replayed.fingerprint else "DIFFERENT"
    print(
        f"\n{style.bold}4. Fingerprints{style.reset}: "
        f"recorded {recording.fingerprint}, replayed {replayed.fingerprint} ({same})."
    )
    print(
        f"   HTTP requests: {live_requests.count} live, {replay_requests.count} during the replay, which answered "
        f"{replayed.replayed_calls} LLM calls from the recording; store verified: {report.ok}."
    )
    shown = shlex.quote(str(path))
    print(f"   Look at it: .venv/bin/miniagents tree {shown}")
    print(f"   or in a browser: .venv/bin/miniagents view {shown} -o run.html")
    return DemoOutcome(
        run_id=run.run_id,
        recorded_fingerprint=recording.fingerprint,
        replayed_fingerprint=replayed.fingerprint,
        replayed_calls=replayed.replayed_calls,
        live_http_requests=live_requests.count,
        replay_http_requests=replay_requests.count,
    )


def main(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> None:
    """Parse the command line, choose the LLM from `environ` (default: `os.environ`) and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--question", default="How is paper made, and can it be recycled?")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds per token of the fake LLM server")
    parser.add_argument("--db", type=Path, default=Path("agents.db"), help="where the run is recorded")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"the OpenAI model, when OPENAI_API_KEY is set (default {DEFAULT_MODEL})",
    )
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    settings = choose_llm(environ, args.model)
    style = terminal_style(sys.stdout, environ)
    asyncio.run(arecord_and_replay(args.question, args.token_delay, args.db.resolve(), settings, style))


if __name__ == "__main__":
    main()
