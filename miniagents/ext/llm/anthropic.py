"""Anthropic chat models as an agent: `anthropic_agent`, on the Messages API, streamed or not."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Optional

from miniagents.ext._optional import optional_dependency
from miniagents.ext.llm.llm_common import AssistantMessage, PerLoopClient, message_to_llm_dict
from miniagents.messages import Message
from miniagents.miniagents import InteractionContext, MiniAgents, miniagent

with optional_dependency("anthropic", extra="anthropic", needed_by=__name__):
    import anthropic

logger = logging.getLogger(__name__)


class AnthropicMessage(AssistantMessage):
    """A message written by an Anthropic model; its metadata holds what the API reported (stop_reason, usage...)."""

    if TYPE_CHECKING:  # the signature of `Message`, which type checkers would otherwise derive from the fields

        def __init__(self, text: Optional[str] = None, **metadata: Any) -> None: ...


_default_client: PerLoopClient[anthropic.AsyncAnthropic] = PerLoopClient(lambda: anthropic.AsyncAnthropic())


@miniagent(
    description="An Anthropic chat model (Messages API) that replies with one streamed message.",
    talks_to_outside_world=True,
)
async def anthropic_agent(
    ctx: InteractionContext,
    model: str,
    stream: Optional[bool] = None,
    system: Optional[str] = None,
    fake_first_user_message: str = "/start",
    message_delimiter_for_same_role: str = "\n\n",
    async_client: Optional[anthropic.AsyncAnthropic] = None,
    reply_metadata: Optional[dict[str, Any]] = None,
    **kwargs: Any,
) -> None:
    """Send the input messages to an Anthropic model and reply with its answer, an `AnthropicMessage`.

    The Messages API wants a dialogue of alternating `user` / `assistant` turns that starts with the user, and the
    system prompt apart, so the input is fixed up first: messages with the `system` role are taken out and joined
    into the system prompt (after `system`); if the dialogue does not start with a user message (or is empty),
    `fake_first_user_message` is put first; consecutive messages of the same role are joined into one.

    The reply is a `MessagePromise` that streams tokens as they arrive; its preliminary metadata holds `model` and
    `agent_alias` (plus `reply_metadata`). The final message also holds what the API reported: `id`, `type`,
    `role`, `stop_reason`, `usage`, ... The text is that of all the answer's text blocks. A failure (HTTP error,
    broken or malformed stream, timeout) is raised in the reply stream, after the tokens received before it.

    :param model: the model name, e.g. `"claude-3-5-haiku-latest"`.
    :param stream: ask for a streamed answer; None follows `MiniAgents(stream_llm_tokens_by_default=...)`.
    :param system: a system prompt.
    :param fake_first_user_message: the user message put first when the dialogue does not start with one.
    :param message_delimiter_for_same_role: joins consecutive messages of the same role (and system prompts).
    :param async_client: the `anthropic.AsyncAnthropic` to use (bind it with `fork()`); by default one is created
        from the environment (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`), once per event loop.
    :param reply_metadata: extra fields for the reply message.
    :param kwargs: passed to `client.messages.create()` / `.stream()` as they are (`max_tokens` is required by
        the API); a keyword the installed SDK does not take is its `TypeError` (anthropic 2.x takes no
        `temperature`), and `extra_body={...}` sends fields the SDK does not know.
    """
    alias = ctx.this_agent.alias
    if stream is None:
        stream = MiniAgents.get_current().stream_llm_tokens_by_default
    client: Any = async_client if async_client is not None else _default_client.get()

    async def token_streamer(metadata_so_far: dict[str, Any]) -> AsyncIterator[str]:
        input_messages = await ctx.messages.aresolve_messages()
        message_dicts, system_prompt = prepare_anthropic_dialogue(
            input_messages, system, fake_first_user_message, message_delimiter_for_same_role
        )
        request: dict[str, Any] = {"messages": message_dicts, "model": model}
        if system_prompt is not None:
            request["system"] = system_prompt
        request.update(kwargs)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s sends to Anthropic model %s: %r (system: %r)", alias, model, message_dicts, system_prompt)

        if not stream:
            answer = await client.messages.create(**request, stream=False)
            metadata_so_far.update(answer.model_dump(exclude={"content"}, exclude_none=True))
            text = "".join(block.text for block in answer.content if block.type == "text")
            if text:
                yield text  # the whole text as one piece
            return

        async with client.messages.stream(**request) as response:
            async for event in response:
                if event.type == "text":
                    yield event.text
                elif event.type == "message_start":
                    metadata_so_far.update(event.message.model_dump(exclude={"content"}, exclude_none=True))
            final = await response.get_final_message()
        metadata_so_far.update(final.model_dump(exclude={"content"}, exclude_none=True))

    ctx.reply(
        AnthropicMessage.promise(
            start_asap=True,  # the request goes out now, whether or not anyone consumes the reply yet
            message_token_streamer=token_streamer,
            **{"model": model, "agent_alias": alias, **(reply_metadata or {})},
        )
    )


def prepare_anthropic_dialogue(
    messages: tuple[Message, ...],
    system: Optional[str] = None,
    fake_first_user_message: str = "/start",
    delimiter: str = "\n\n",
) -> tuple[list[dict[str, Any]], Optional[str]]:
    """The `messages` and `system` of a Messages API request for these messages (see `anthropic_agent`)."""
    system_parts = [] if system is None else [system]
    dialogue: list[dict[str, Any]] = []
    for message in messages:
        message_dict = message_to_llm_dict(message)
        if message_dict["role"] == "system":
            system_parts.append(message_dict["content"])
        elif dialogue and dialogue[-1]["role"] == message_dict["role"]:
            dialogue[-1]["content"] += delimiter + message_dict["content"]
        else:
            dialogue.append(message_dict)
    if not dialogue or dialogue[0]["role"] != "user":
        dialogue.insert(0, {"role": "user", "content": fake_first_user_message})
    return dialogue, (delimiter.join(system_parts) if system_parts else None)
