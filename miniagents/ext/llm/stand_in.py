"""An offline stand-in LLM agent: streams scripted or generated tokens, for demos and tests."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Optional

from miniagents.errors import UsageError
from miniagents.ext.llm.llm_common import AssistantMessage
from miniagents.messages import Message
from miniagents.miniagents import InteractionContext, MiniAgents, miniagent

_TOKEN_PATTERN = re.compile(r"\s*\S+|\s+")

Responder = Callable[[Sequence[Message]], str]
"""Computes the reply text from the input messages (the system prompt, if any, comes first)."""


class StandInLLMMessage(AssistantMessage):
    """A reply of the stand-in LLM."""


def tokenize(text: str) -> list[str]:
    """Word-sized tokens that join back into exactly `text` (leading spaces stay with their word)."""
    return _TOKEN_PATTERN.findall(text)


def generated_reply(messages: Sequence[Message]) -> str:
    """The default reply: a deterministic sentence about the conversation, so reruns give the same text."""
    conversation = [message for message in messages if getattr(message, "role", "user") != "system"]
    if not conversation:
        return "Nothing to answer yet: the conversation is empty."
    last = str(conversation[-1]).strip()
    words = last.split()
    topic = " ".join(words[:8]) + (" …" if len(words) > 8 else "")
    return (
        f"Having read {len(conversation)} message(s), my answer concerns “{topic}”: it has {len(words)} words, "
        f"and the longest of them is “{max(words, key=len) if words else ''}”."
    )


class ScriptedResponses:
    """A responder that returns the given texts one call after another (and says so when it runs out)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = list(texts)
        self._next = 0

    def __call__(self, messages: Sequence[Message]) -> str:
        if self._next >= len(self._texts):
            raise UsageError(
                f"ScriptedResponses ran out after {len(self._texts)} replies; script more texts for the stand-in LLM."
            )
        text = self._texts[self._next]
        self._next += 1
        return text


@miniagent(talks_to_outside_world=True)
async def stand_in_llm_agent(
    ctx: InteractionContext,
    model: str = "stand-in-llm",
    reply: Optional[str] = None,
    responder: Optional[Responder] = None,
    token_delay: float = 0.0,
    stream: Optional[bool] = None,
    system: Optional[str] = None,
    reply_metadata: Optional[dict[str, Any]] = None,
    **llm_kwargs: Any,
) -> None:
    """An LLM that needs no network: it replies with `reply`, or what `responder` computes from the input, or a
    deterministic generated sentence, streamed word by word with `token_delay` seconds between tokens.

    :param model: the model name put on the reply.
    :param reply: a fixed reply text.
    :param responder: a function from the input messages to the reply text (bind it with `fork`).
    :param token_delay: seconds to wait before each token (before the whole text when not streaming).
    :param stream: stream token by token (default: `MiniAgents(stream_llm_tokens_by_default=...)`).
    :param system: a system prompt, passed to `responder` as a first message with role "system".
    :param reply_metadata: extra fields of the reply message.
    :param llm_kwargs: what a real LLM would take (temperature, max_tokens, ...): accepted and ignored.
    """
    if stream is None:
        stream = MiniAgents.get_current().stream_llm_tokens_by_default

    async def token_streamer(metadata_so_far: dict[str, Any]) -> AsyncIterator[str]:
        messages: list[Message] = list(await ctx.messages.aresolve_messages())
        if system is not None:
            messages.insert(0, Message(text=system, role="system"))
        if reply is not None:
            text = reply
        elif responder is not None:
            text = responder(messages)
        else:
            text = generated_reply(messages)
        tokens = tokenize(text)
        if stream:
            for token in tokens:
                if token_delay:
                    await asyncio.sleep(token_delay)
                yield token
        else:
            if token_delay:
                await asyncio.sleep(token_delay * len(tokens))
            yield text
        metadata_so_far["finish_reason"] = "stop"
        metadata_so_far["usage"] = {
            "prompt_tokens": sum(len(tokenize(str(message))) for message in messages),
            "completion_tokens": len(tokens),
        }

    ctx.reply(
        StandInLLMMessage.promise(
            start_asap=True,
            message_token_streamer=token_streamer,
            model=model,
            agent_alias=ctx.this_agent.alias,
            **(reply_metadata or {}),
        )
    )
