"""`make demo`: a multi-agent flow recorded into agents.db, then replayed offline with the same fingerprint."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from miniagents import InteractionContext, Message, MiniAgent, MiniAgents, miniagent
from miniagents.ext.llm.stand_in import stand_in_llm_agent

EXPERTS = {
    "HISTORIAN": "Paper was first made in China around 105 AD, and it reached Europe through the Islamic world.",
    "ENGINEER": "A modern paper machine turns wet pulp into a dry sheet moving at over a hundred km per hour.",
    "ECOLOGIST": "Recycled fibres can be reused five to seven times before they become too short to bond.",
}

GREEN, BOLD, DIM, RESET = "\033[92m", "\033[1m", "\033[2m", "\033[0m"


def expert_agents(token_delay: float) -> list[MiniAgent]:
    """One stand-in LLM per expert, each with a fixed answer, streaming at `token_delay` s per token."""
    return [
        stand_in_llm_agent.fork(alias=alias, model=f"stand-in/{alias.lower()}", reply=reply, token_delay=token_delay)
        for alias, reply in EXPERTS.items()
    ]


def editor_reply(messages: Sequence[Message]) -> str:
    """The editor's summary: one line per expert, built from what the experts said."""
    lines = [
        f"- {getattr(message, 'agent_alias', '?')}: {str(message).split(',')[0].rstrip('.')}." for message in messages
    ]
    return "Summary of the panel:\n" + "\n".join(lines)


@miniagent
async def panel_agent(ctx: InteractionContext, token_delay: float = 0.02) -> None:
    """Asks every expert at once (they run in parallel), then has an editor summarise their answers."""
    answers = [expert.inquire(ctx.messages) for expert in expert_agents(token_delay)]
    ctx.reply(answers)
    editor = stand_in_llm_agent.fork(alias="EDITOR", model="stand-in/editor", responder=editor_reply)
    ctx.reply(editor.inquire(answers, token_delay=token_delay / 2))


async def arun_panel(question: str, token_delay: float) -> None:
    """Stream every reply of the panel to the console as it arrives (needs an active MiniAgents context)."""
    print(f"{BOLD}USER:{RESET} {question}\n")
    started = time.perf_counter()
    async for message_promise in panel_agent.inquire(question, token_delay=token_delay):
        alias = getattr(message_promise.preliminary_metadata, "agent_alias", "?")
        print(f"{GREEN}{BOLD}{alias}:{RESET} ", end="", flush=True)
        async for token in message_promise:
            print(f"{GREEN}{token}{RESET}", end="", flush=True)
        print("\n")
    elapsed = time.perf_counter() - started
    one_expert = sum(len(reply.split()) for reply in EXPERTS.values()) * token_delay / len(EXPERTS)
    print(
        f"{DIM}{len(EXPERTS)} experts answered in parallel: {elapsed:.2f} s in all, ~{one_expert:.2f} s each.{RESET}"
    )


async def arecord_and_replay(question: str, token_delay: float, path: Path) -> None:
    """Record the panel into `path` (replacing an earlier recording), replay it offline, compare fingerprints."""
    from replay import Replay, aload_tree
    from store import SQLiteStore

    print(f"{BOLD}1. Live run, recorded into {path}{RESET}\n")
    recording = Replay(SQLiteStore(path), mode="all")
    async with MiniAgents(replay=recording):
        await arun_panel(question, token_delay)

    print(f"\n{BOLD}2. The same flow replayed offline from {path} (no LLM is called){RESET}\n")
    replayed = Replay(SQLiteStore(path), mode="none")
    async with MiniAgents(replay=replayed):
        await arun_panel(question, token_delay)

    async with SQLiteStore(path) as store:
        (run,) = await store.alist_runs()
        tree = await aload_tree(store, run.run_id)
        report = await store.averify()
    print(f"\n{BOLD}3. The recorded interaction tree (run {run.run_id}, {run.event_count} events){RESET}\n")
    print(tree)
    same = "the same" if recording.fingerprint == replayed.fingerprint else "DIFFERENT"
    print(
        f"\n{BOLD}4. Fingerprints{RESET}: recorded {recording.fingerprint}, replayed {replayed.fingerprint} ({same});"
    )
    print(f"   {replayed.replayed_calls} LLM calls answered from the recording; store verified: {report.ok}.")
    print(f"   Inspect it: async with SQLiteStore({str(path)!r}) as store: await store.alist_runs()")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--question", default="How is paper made, and can it be recycled?")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds per streamed token")
    parser.add_argument("--db", type=Path, default=Path("agents.db"), help="where the run is recorded")
    args = parser.parse_args(argv)
    asyncio.run(arecord_and_replay(args.question, args.token_delay, args.db))


if __name__ == "__main__":
    main()
