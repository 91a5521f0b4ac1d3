"""Types of the agent layer: agent functions, token streamers, persistence handlers, message types."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, Union

from pydantic import BaseModel

if TYPE_CHECKING:
    from miniagents.messages import Message, MessagePromise


AgentFunction = Callable[..., Awaitable[None]]
"""An agent: an async function taking the interaction context (`ctx`) and keyword arguments."""


class MessageTokenStreamer(Protocol):
    """Yields the tokens of a message; may add metadata to `metadata_so_far`."""

    def __call__(self, metadata_so_far: dict[str, Any], /) -> AsyncIterator[str]: ...


class PersistMessageEventHandler(Protocol):
    """Called once per message object (sub-messages first) when it resolves in a `MiniAgents` context."""

    async def __call__(self, promise: Any, message: Message, /) -> None: ...


SingleMessageType = Union[str, dict[str, Any], BaseModel, "Message", "MessagePromise", BaseException]
MessageType = Union[SingleMessageType, Iterable[Any], AsyncIterable[Any]]
"""Anything an agent can send or reply: strings, dicts, messages, promises, exceptions, and (async) iterables
of those, nested to any depth; it is flattened into a sequence of `MessagePromise`s."""
