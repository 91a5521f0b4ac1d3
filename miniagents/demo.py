"""`make demo`: a small multi-agent flow, offline, with LLM tokens streamed to the console."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

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
    """Stream every reply of the panel to the console as it arrives."""
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--question", default="How is paper made, and can it be recycled?")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds per streamed token")
    args = parser.parse_args(argv)
    MiniAgents().run(arun_panel(args.question, args.token_delay))


if __name__ == "__main__":
    main()
