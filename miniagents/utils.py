"""Utilities: dialog and chain loops, joining and splitting messages, singletons."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Optional, Union

from pydantic._internal._model_construction import ModelMetaclass

from miniagents.errors import UsageError
from miniagents.messages import Message, MessagePromise, MessageSequencePromise
from miniagents.miniagent_typing import MessageType
from miniagents.miniagents import MessageSequence, MiniAgent
from miniagents.promising.promising import StreamAppender
from miniagents.promising.sentinels import AWAIT, CLEAR, DEFAULT, Sentinel
from miniagents.promising.sequence import collect_tuple

logger = logging.getLogger(__name__)

ChainStep = Union[MiniAgent, Callable[..., Any], Sentinel]


async def adialog_loop(user_agent: ChainStep, assistant_agent: ChainStep) -> None:
    """Alternate the user agent and the assistant agent forever, each receiving the other's replies."""
    # AWAIT after the user agent: its turn (reading the console, say) completes before the assistant is called
    await achain_loop([user_agent, AWAIT, assistant_agent])


async def achain_loop(agents: Iterable[ChainStep], initial_input: Optional[MessageType] = None) -> None:
    """Call the agents in turn forever, each with the previous one's replies.

    `AWAIT` waits until the replies so far are complete; `CLEAR` drops them (the next agent gets no input).
    At least one `AWAIT` is required, otherwise turns would be scheduled endlessly without ever running.
    """
    steps = list(agents)
    if not any(step is AWAIT for step in steps):
        raise UsageError(
            "achain_loop needs at least one AWAIT among its agents, e.g. [user_agent, AWAIT, assistant_agent]; "
            "without it the loop schedules turns forever without waiting for any of them."
        )
    turns = [_chain_turn(step) for step in steps]
    messages: Any = initial_input
    while True:
        for turn in turns:
            messages = await turn(messages)


def _chain_turn(step: ChainStep) -> Callable[[Any], Awaitable[Any]]:
    """What one step of `achain_loop` does with the replies so far (only `AWAIT` suspends the loop)."""
    if step is AWAIT:
        return _aresolve_replies
    if step is CLEAR:
        return _adrop_replies
    if isinstance(step, MiniAgent):
        agent = step

        async def ainquire(messages: Any) -> Any:
            return agent.inquire(messages)

        return ainquire
    if callable(step):
        function = step

        async def acall(messages: Any) -> Any:
            return function(messages)

        return acall
    raise UsageError(f"achain_loop got {step!r}: each step must be an agent, a callable, AWAIT or CLEAR.")


async def _aresolve_replies(messages: Any) -> Any:
    return await messages.aresolve_messages() if isinstance(messages, MessageSequencePromise) else messages


async def _adrop_replies(messages: Any) -> None:
    return None


def join_messages(
    messages: MessageType,
    delimiter: Optional[str] = "\n\n",
    strip_leading_newlines: bool = False,
    reference_original_messages: bool = True,
    start_asap: Union[bool, Sentinel] = DEFAULT,
    **message_metadata: Any,
) -> MessagePromise:
    """One message made of all `messages`, streamed as they arrive.

    :param delimiter: inserted between messages.
    :param strip_leading_newlines: drop newlines at the start of each message (LLMs often begin with some).
    :param reference_original_messages: keep the original messages in the `original_messages` field.
    :param start_asap: start joining in the background now.
    :param message_metadata: fields of the resulting message.
    """

    async def token_streamer(metadata_so_far: dict[str, Any]) -> AsyncIterator[str]:
        metadata_so_far.update(message_metadata)
        originals: list[Message] = []
        first = True
        async for message_promise in MessageSequence.turn_into_sequence_promise(messages):
            if delimiter and not first:
                yield delimiter
            first = False
            stripping = strip_leading_newlines
            async for token in message_promise:
                if stripping:
                    token = token.lstrip("\n\r")
                    if not token:
                        continue
                    stripping = False
                yield token
            if reference_original_messages:
                originals.append(await message_promise)
        if reference_original_messages:
            metadata_so_far["original_messages"] = originals

    return Message.promise(message_token_streamer=token_streamer, start_asap=start_asap)


def split_messages(
    messages: MessageType,
    delimiter: str = "\n\n",
    code_block_delimiter: Optional[str] = "```",
    start_asap: Union[bool, Sentinel] = DEFAULT,
    **message_metadata: Any,
) -> MessageSequencePromise:
    """Split `messages` (joined with `delimiter`) into one message per paragraph, streaming each as it arrives.

    Paragraphs are separated by `delimiter`; a code block (from one `code_block_delimiter` to the next) is one
    message of its own, fences included, however many blank lines it holds. Newlines around a paragraph are
    dropped, as is whitespace at its end, and blank paragraphs are skipped. Works the same whether the text
    arrives at once or token by token.
    """
    if not delimiter:
        raise UsageError("split_messages needs a non-empty `delimiter`.")
    if code_block_delimiter == "":
        raise UsageError("`code_block_delimiter` must be None (no code blocks) or a non-empty string.")

    async def sequence_streamer(_: Any) -> AsyncIterator[MessagePromise]:
        splitter = _ParagraphSplitter(delimiter, code_block_delimiter)
        current: Optional[StreamAppender[str]] = None
        try:
            joined = join_messages(messages, delimiter=delimiter, reference_original_messages=False, start_asap=False)
            async for token in joined:
                for action, text in splitter.feed(token):
                    if action == "text":
                        if current is None:
                            current = StreamAppender(capture_errors=False).open()
                            yield _paragraph_promise(current, message_metadata, start_asap)
                        current.append(text)
                    elif current is not None:
                        current.close()
                        current = None
            for action, text in splitter.finish():
                if action == "text":
                    if current is None:
                        current = StreamAppender(capture_errors=False).open()
                        yield _paragraph_promise(current, message_metadata, start_asap)
                    current.append(text)
        except BaseException as exc:
            logger.debug("split_messages: the input failed", exc_info=True)
            if current is None:
                raise
            current._put(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if current is not None:
                current.close()

    # the paragraphs are fed by the streamer above, so it must run on its own (not driven by a consumer that is
    # waiting for a paragraph's tokens): start_asap=True
    return MessageSequencePromise(streamer=sequence_streamer, resolver=collect_tuple, start_asap=True)


def _paragraph_promise(
    appender: StreamAppender[str], message_metadata: dict[str, Any], start_asap: Union[bool, Sentinel]
) -> MessagePromise:
    async def token_streamer(metadata_so_far: dict[str, Any]) -> AsyncIterator[str]:
        metadata_so_far.update(message_metadata)
        async for token in appender:
            yield token

    return Message.promise(message_token_streamer=token_streamer, start_asap=start_asap)


class _ParagraphSplitter:
    """Incremental paragraph splitting: `feed()` text, get ("text", chunk) and ("end", "") actions."""

    def __init__(self, delimiter: str, fence: Optional[str]) -> None:
        self._delimiter = delimiter
        self._fence = fence
        self._pending = ""
        self._in_code = False
        self._in_paragraph = False
        self._holdback = max(len(delimiter), len(fence or "")) - 1

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._pending += text
        actions: list[tuple[str, str]] = []
        while self._split_once(actions):
            pass
        self._emit_safe_part(actions)
        return actions

    def finish(self) -> list[tuple[str, str]]:
        actions: list[tuple[str, str]] = []
        self._emit(actions, self._pending if self._in_code else self._pending.rstrip())
        self._pending = ""
        return actions

    def _split_once(self, actions: list[tuple[str, str]]) -> bool:
        pending = self._pending
        fence = self._fence
        if self._in_code:
            assert fence is not None
            start = len(fence) if not self._in_paragraph else 0
            end = pending.find(fence, start)
            if end < 0:
                return False
            self._emit(actions, pending[: end + len(fence)])
            self._end_paragraph(actions)
            self._pending = pending[end + len(fence) :]
            self._in_code = False
            return True
        delimiter_at = pending.find(self._delimiter)
        fence_at = pending.find(fence) if fence else -1
        if fence_at >= 0 and (delimiter_at < 0 or fence_at < delimiter_at):
            self._emit(actions, pending[:fence_at].rstrip())
            self._end_paragraph(actions)
            self._pending = pending[fence_at:]
            self._in_code = True
            return True
        if delimiter_at >= 0:
            self._emit(actions, pending[:delimiter_at].rstrip())
            self._end_paragraph(actions)
            self._pending = pending[delimiter_at + len(self._delimiter) :]
            return True
        return False

    def _emit_safe_part(self, actions: list[tuple[str, str]]) -> None:
        """Stream what can no longer be part of a delimiter or fence (keeping trailing whitespace back)."""
        pending = self._pending
        safe = len(pending) - self._holdback
        if safe <= 0 or (self._in_code and not self._in_paragraph and safe < len(self._fence or "")):
            return  # an opening fence is only ever emitted whole
        part = pending[:safe]
        if not self._in_code:
            part = part.rstrip()
        if part:
            self._emit(actions, part)
            self._pending = pending[len(part) :]

    def _emit(self, actions: list[tuple[str, str]], text: str) -> None:
        if not self._in_paragraph:
            text = text.lstrip("\r\n") if not self._in_code else text
            if not text.strip():
                return
            self._in_paragraph = True
        if text:
            actions.append(("text", text))

    def _end_paragraph(self, actions: list[tuple[str, str]]) -> None:
        if self._in_paragraph:
            actions.append(("end", ""))
            self._in_paragraph = False


class SingletonMeta(type):
    """A metaclass whose classes have one instance each (created on first call)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = cls.__dict__.get("_singleton_instance")
        if instance is None:
            instance = super().__call__(*args, **kwargs)
            cls._singleton_instance = instance
        return instance


class Singleton(metaclass=SingletonMeta):
    """Subclass this to have exactly one instance of your class."""


class ModelSingletonMeta(ModelMetaclass, SingletonMeta):
    """The metaclass of pydantic models with one instance each (`SingletonMeta` for pydantic's `BaseModel`, whose
    own metaclass would otherwise conflict with it)."""


class ModelSingleton(metaclass=ModelSingletonMeta):
    """Subclass this together with a pydantic model to have exactly one instance of the model class:
    `class Settings(ModelSingleton, BaseModel)`, or `class RepoSnapshot(ModelSingleton, Message)`.

    The first call builds the instance from the arguments it gets; later calls return that instance whatever
    their arguments. Each subclass has an instance of its own.
    """
