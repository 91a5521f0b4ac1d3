"""What every LLM agent shares: user, system and assistant messages, and turning messages into chat dicts."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

from miniagents.messages import Message

_ClientT = TypeVar("_ClientT")


class UserMessage(Message):
    """A message from the user (the `user` role of chat LLMs)."""

    role: str = "user"

    if TYPE_CHECKING:  # the signature of `Message`, which type checkers would otherwise derive from the fields

        def __init__(self, text: Optional[str] = None, **metadata: Any) -> None: ...


class SystemMessage(Message):
    """A system message: instructions to the LLM (the `system` role)."""

    role: str = "system"

    if TYPE_CHECKING:  # the signature of `Message`, which type checkers would otherwise derive from the fields

        def __init__(self, text: Optional[str] = None, **metadata: Any) -> None: ...


class AssistantMessage(Message):
    """A message written by an LLM (the `assistant` role), with the model and the alias of the agent."""

    role: str = "assistant"
    model: Optional[str] = None
    agent_alias: Optional[str] = None

    if TYPE_CHECKING:

        def __init__(self, text: Optional[str] = None, **metadata: Any) -> None: ...


def message_to_llm_dict(message: Message) -> dict[str, Any]:
    """`{"role": ..., "content": ...}` for a chat API: the message's `role` (`user` if it has none) and its text."""
    role = getattr(message, "role", None)
    return {"role": role if role is not None else "user", "content": str(message)}


class PerLoopClient(Generic[_ClientT]):
    """A default SDK client, created on first use, one per event loop (an HTTP client cannot outlive its loop)."""

    def __init__(self, create: Callable[[], _ClientT]) -> None:
        self._create = create
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ClientT] = weakref.WeakKeyDictionary()

    def get(self) -> _ClientT:
        """The client of the running event loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._create()
            self._clients[loop] = client
        return client
