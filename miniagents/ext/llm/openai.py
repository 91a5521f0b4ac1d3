"""OpenAI chat models as an agent: `openai_agent`, on the Chat Completions API, streamed or not."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Optional

from miniagents.errors import UsageError
from miniagents.ext._optional import optional_dependency
from miniagents.ext.llm.llm_common import AssistantMessage, PerLoopClient, message_to_llm_dict
from miniagents.miniagents import InteractionContext, MiniAgents, miniagent

with optional_dependency("openai", extra="openai", needed_by=__name__):
    import openai

logger = logging.getLogger(__name__)


class OpenAIMessage(AssistantMessage):
    """A message written by an OpenAI model; its metadata holds what the API reported (id, choices, usage...)."""

    if TYPE_CHECKING:  # the signature of `Message`, which type checkers would otherwise derive from the fields

        def __init__(self, text: Optional[str] = None, **metadata: Any) -> None: ...


_default_client: PerLoopClient[openai.AsyncOpenAI] = PerLoopClient(lambda: openai.AsyncOpenAI())


@miniagent(
    description="An OpenAI chat model (Chat Completions API) that replies with one streamed message.",
    talks_to_outside_world=True,
)
async def openai_agent(
    ctx: InteractionContext,
    model: str,
    stream: Optional[bool] = None,
    system: Optional[str] = None,
    n: int = 1,
    async_client: Optional[openai.AsyncOpenAI] = None,
    reply_metadata: Optional[dict[str, Any]] = None,
    **kwargs: Any,
) -> None:
    """Send the input messages to an OpenAI chat model and reply with its answer, an `OpenAIMessage`.

    The reply is a `MessagePromise` that streams tokens as they arrive; its preliminary metadata holds `model` and
    `agent_alias` (plus `reply_metadata`). The final message also holds what the API reported: `id`, `created`,
    `object`, `role`, `choices` (`finish_reason`, ...) and `usage` (sent when streaming only if you pass
    `stream_options={"include_usage": True}`). A failure (HTTP error, broken or malformed stream, timeout) is
    raised in the reply stream, after the tokens received before it.

    :param model: the model name, e.g. `"gpt-4o-mini"`.
    :param stream: ask for a streamed answer; None follows `MiniAgents(stream_llm_tokens_by_default=...)`.
    :param system: a system prompt, sent as the first message.
    :param n: must be 1: the agent replies with exactly one message per call.
    :param async_client: the `openai.AsyncOpenAI` to use (bind it with `fork()`); by default one is created from
        the environment (`OPENAI_API_KEY`, `OPENAI_BASE_URL`), once per event loop.
    :param reply_metadata: extra fields for the reply message.
    :param kwargs: passed to `client.chat.completions.create()` as they are (`temperature`, `max_tokens`, ...).
    """
    alias = ctx.this_agent.alias
    if n != 1:
        raise UsageError(
            f"{alias} was called with n={n}, but it replies with exactly one message per call: leave n at 1 and "
            f"call the agent {n} times to get {n} answers."
        )
    if stream is None:
        stream = MiniAgents.get_current().stream_llm_tokens_by_default
    client: Any = async_client if async_client is not None else _default_client.get()

    async def token_streamer(metadata_so_far: dict[str, Any]) -> AsyncIterator[str]:
        input_messages = await ctx.messages.aresolve_messages()
        message_dicts = [] if system is None else [{"role": "system", "content": system}]
        message_dicts.extend(message_to_llm_dict(message) for message in input_messages)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s sends %d message(s) to OpenAI model %s: %r", alias, len(message_dicts), model, message_dicts
            )

        if not stream:
            completion = await client.chat.completions.create(
                messages=message_dicts, model=model, stream=False, **kwargs
            )
            content = _merge_response(metadata_so_far, completion.model_dump(exclude_none=True), "message", alias)
            if content:
                yield content  # the whole text as one piece
            return

        response = await client.chat.completions.create(messages=message_dicts, model=model, stream=True, **kwargs)
        async with response:
            async for chunk in response:
                token = _merge_response(metadata_so_far, chunk.model_dump(exclude_none=True), "delta", alias)
                if token:
                    yield token
        _drop_stream_indexes(metadata_so_far)

    ctx.reply(
        OpenAIMessage.promise(
            start_asap=True,  # the request goes out now, whether or not anyone consumes the reply yet
            message_token_streamer=token_streamer,
            **{"model": model, "agent_alias": alias, **(reply_metadata or {})},
        )
    )


def _merge_response(metadata: dict[str, Any], response: dict[str, Any], part: str, alias: str) -> Optional[str]:
    """Merge a completion (`part="message"`) or a chunk (`part="delta"`) into `metadata`; return its text.

    `choices[0]` loses `index`; the `content` and `role` of its `message` / `delta` are taken out (the role
    becomes the message's `role`); what remains of the message, or of the choice, is kept only if it is not
    empty. What remains of the deltas is accumulated into `choices[0]["message"]` as the non-streamed answer has
    it: strings (`refusal`, a tool call's `arguments`) are joined, tool calls are merged by their `index`. Fields
    that are None are left out (`response` comes from `model_dump(exclude_none=True)`).
    """
    choices = response.pop("choices", [])
    if len(choices) > 1:
        raise RuntimeError(
            f"{alias} expected one choice from OpenAI but got {len(choices)}; do not pass `n` through "
            "`extra_body` (the agent replies with exactly one message)."
        )
    text: Optional[str] = None
    accumulated: Optional[dict[str, Any]] = None
    if choices:
        choice = choices[0]
        choice.pop("index", None)
        content = choice.pop(part, {})
        text = content.pop("content", None)
        role = content.pop("role", None)
        if role:
            metadata["role"] = role
        if content and part == "delta":
            accumulated = _accumulated_delta(metadata, content)
        elif content:
            choice[part] = content
        if choice:  # a chunk of nothing but text adds nothing to the choice
            response["choices"] = [choice]
    _merge_dicts(metadata, response)
    if accumulated is not None:  # replaces what was collected before (merging would repeat list entries)
        choices_so_far = metadata.setdefault("choices", [])
        if not choices_so_far:
            choices_so_far.append({})
        choices_so_far[0]["message"] = accumulated
    return text


def _merge_dicts(destination: dict[str, Any], source: dict[str, Any]) -> None:
    """Merge chunk data into what was collected so far: dicts deeply, `choices[0]` into `choices[0]`, other lists
    extended, anything else replaced."""
    for key, value in source.items():
        existing = destination.get(key)
        if isinstance(existing, dict) and isinstance(value, dict):
            _merge_dicts(existing, value)
        elif key == "choices" and isinstance(existing, list) and existing and value:
            _merge_dicts(existing[0], value[0])
        elif isinstance(existing, list) and isinstance(value, list):
            existing.extend(value)
        else:
            destination[key] = value


def _accumulated_delta(metadata: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The message of `choices[0]` collected so far, with `delta` added to it."""
    choices = metadata.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    return _accumulate(dict(message) if isinstance(message, dict) else {}, delta)


def _accumulate(collected: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """`collected` with a delta of it added: strings joined, dicts merged, list entries that are dicts merged with
    the entry of the same `index`, other list entries appended, anything else (and `index`, `type`) replaced."""
    for key, value in delta.items():
        existing = collected.get(key)
        if existing is None or key in ("index", "type"):
            collected[key] = value
        elif isinstance(existing, str) and isinstance(value, str):
            collected[key] = existing + value
        elif isinstance(existing, dict) and isinstance(value, dict):
            collected[key] = _accumulate(dict(existing), value)
        elif isinstance(existing, list) and isinstance(value, list):
            merged = list(existing)
            for entry in value:
                at = _entry_with_index(merged, entry)
                if at is None:
                    merged.append(entry)
                else:
                    merged[at] = _accumulate(dict(merged[at]), entry)
            collected[key] = merged
        else:
            collected[key] = value
    return collected


def _entry_with_index(entries: list[Any], entry: Any) -> Optional[int]:
    if not isinstance(entry, dict) or "index" not in entry:
        return None
    for at, existing in enumerate(entries):
        if isinstance(existing, dict) and existing.get("index") == entry["index"]:
            return at
    return None


def _drop_stream_indexes(metadata: dict[str, Any]) -> None:
    """Once the stream is over: tool calls lose the `index` that only served to merge their deltas (the
    non-streamed answer has none)."""
    choices = metadata.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    if isinstance(message, dict) and isinstance(message.get("tool_calls"), list):
        message["tool_calls"] = [
            {key: value for key, value in call.items() if key != "index"} if isinstance(call, dict) else call
            for call in message["tool_calls"]
        ]
