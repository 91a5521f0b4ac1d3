"""What every LLM agent shares: user, system and assistant messages, and turning messages into chat dicts."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Callable
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
    """A default SDK client, created on first use, one per event loop (an HTTP client cannot outlive its loop).

    The client is closed when its event loop shuts down (`asyncio.run()` and pytest-asyncio shut their loops
    down so), so its pooled connections do not outlive the loop; `aclose()` closes the running loop's client
    sooner. A client the user passes to an agent is never touched.
    """

    def __init__(self, create: Callable[[], _ClientT]) -> None:
        self._create = create
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[_ClientT, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    def get(self) -> _ClientT:
        """The client of the running event loop."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = self._create()
            # an async generator started on the loop is closed by `loop.shutdown_asyncgens()`, which closes the
            # client: the one hook every loop runner calls before closing the loop
            closer = _aclose_at_loop_shutdown(client)
            starting: Any = closer.__anext__()  # the loop learns of the generator here
            try:
                starting.send(None)  # runs it to its `yield` (nothing to await before it)
            except StopIteration:
                pass
            entry = (client, closer)
            self._clients[loop] = entry
        return entry[0]

    async def aclose(self) -> None:
        """Close the running loop's client now, if one was created (the next `get()` creates another)."""
        entry = self._clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()


async def _aclose_at_loop_shutdown(client: Any) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        close = getattr(client, "close", None)  # `AsyncOpenAI.close()`, `AsyncAnthropic.close()`
        if close is not None:
            await close()
