"""Chat histories: where a conversation is logged and loaded from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property

from miniagents.messages import Message
from miniagents.miniagent_typing import MessageType
from miniagents.miniagents import InteractionContext, MessageSequence, MiniAgent, miniagent


class ChatHistory(ABC):
    """A conversation log: `logging_agent` writes messages to it, `aload_chat_history()` reads them back."""

    @cached_property
    def logging_agent(self) -> MiniAgent:
        """An agent that logs the messages it receives and replies with the same messages (so it can be chained)."""
        return miniagent(self._logging_agent_chained, alias=f"{type(self).__name__.upper()}_LOGGING_AGENT")

    @abstractmethod
    async def aload_chat_history(self) -> tuple[Message, ...]:
        """The messages of the conversation so far."""

    @abstractmethod
    async def _logging_agent(self, ctx: InteractionContext) -> None:
        """Write `ctx.messages` to the log."""

    async def _logging_agent_chained(self, ctx: InteractionContext) -> None:
        ctx.reply(ctx.messages)
        await self._logging_agent(ctx)


class InMemoryChatHistory(ChatHistory):
    """A chat history kept in memory."""

    def __init__(self) -> None:
        self._chat_history: list[MessageType] = []

    async def _logging_agent(self, ctx: InteractionContext) -> None:
        self._chat_history.append(ctx.messages)

    async def aload_chat_history(self) -> tuple[Message, ...]:
        return await MessageSequence.aresolve_messages(self._chat_history)
