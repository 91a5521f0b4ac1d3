"""Recorded replies turned back into live promises: same chunks, same final message, errors at their place."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Optional

from miniagents.messages import Message, MessagePromise
from miniagents.promising.ext.frozen import Frozen
from replay.errors import RecordedError
from store.decoding import message_base_class, stand_in_class

_NOT_REBUILT = (KeyboardInterrupt, SystemExit, GeneratorExit)


def rebuild_error(description: Mapping[str, Any]) -> BaseException:
    """The recorded exception: a built-in type as itself, any other as a `RecordedError` with its type and text."""
    type_name = str(description.get("type", "Exception"))
    module = description.get("module")
    text = str(description.get("text", ""))
    if module == "builtins":
        error_class = getattr(builtins, type_name, None)
        if isinstance(error_class, type) and issubclass(error_class, Exception):
            try:
                return error_class(text)
            except Exception:  # a built-in exception that wants other arguments
                pass
        elif isinstance(error_class, type) and issubclass(error_class, BaseException):
            if not issubclass(error_class, _NOT_REBUILT):
                return error_class(text)
    return RecordedError(type_name, str(module) if module is not None else None, text)


def split_into_chunks(text: str, chunk_lengths: Sequence[int]) -> list[str]:
    """`text` cut at the recorded chunk boundaries (one chunk if they do not add up to the text)."""
    if sum(chunk_lengths) != len(text) or any(length < 0 for length in chunk_lengths):
        return [text]
    chunks: list[str] = []
    position = 0
    for length in chunk_lengths:
        chunks.append(text[position : position + length])
        position += length
    return chunks


async def _apaced(chunks: Sequence[str], offsets: Sequence[float], speed: Optional[float]) -> AsyncIterator[str]:
    previous = 0.0
    for index, chunk in enumerate(chunks):
        if speed and index < len(offsets):
            delay = (offsets[index] - previous) / speed
            previous = offsets[index]
            if delay > 0:
                await asyncio.sleep(delay)
        yield chunk


def replayed_message(
    message: Message,
    chunk_lengths: Optional[Sequence[int]],
    offsets: Sequence[float],
    speed: Optional[float],
) -> MessagePromise:
    """A promise that streams `message` in its recorded chunks (at `speed` times the recorded pace, or at once)."""
    if chunk_lengths is None:
        return MessagePromise(prefill_message=message)
    metadata = message.frozen_fields_and_values()
    text = metadata.pop("text") or ""
    chunks = split_into_chunks(text, chunk_lengths)

    async def token_streamer(_: dict[str, Any]) -> AsyncIterator[str]:
        async for chunk in _apaced(chunks, offsets, speed):
            yield chunk

    return MessagePromise(message_token_streamer=token_streamer, message_class=type(message), **metadata)


def replayed_failure(partial: Mapping[str, Any], speed: Optional[float]) -> MessagePromise:
    """A promise that streams the chunks received before a recorded failure, then raises it."""
    chunks = [str(chunk) for chunk in partial.get("chunks", ())]
    offsets = [float(offset) for offset in partial.get("offsets", ())]
    error = rebuild_error(partial.get("error") or {})
    class_name = str(partial.get("class_") or "Message")
    message_class = _message_class_named(class_name)
    metadata = dict(partial.get("metadata") or {})
    metadata.pop("class_", None)
    try:
        Frozen(**metadata)
    except Exception:  # metadata that cannot be rebuilt is left out rather than failing the replay
        metadata = {}

    async def token_streamer(_: dict[str, Any]) -> AsyncIterator[str]:
        async for chunk in _apaced(chunks, offsets, speed):
            yield chunk
        raise error

    return MessagePromise(message_token_streamer=token_streamer, message_class=message_class, **metadata)


def _message_class_named(class_name: str) -> type[Message]:
    for candidate in _all_message_classes():
        if candidate.__name__ == class_name:
            return candidate
    return stand_in_class(class_name, message_base_class())  # type: ignore[return-value]


def _all_message_classes() -> list[type[Message]]:
    found: list[type[Message]] = []
    pending: list[type[Message]] = [Message]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(current.__subclasses__())
    return found


def replayed_sequence(promises: list[MessagePromise], error: Optional[BaseException]) -> Any:
    """The reply of a replayed call: the promises, then the recorded sequence error (if any) at its place."""
    if error is None:
        return promises

    async def sequence() -> AsyncIterator[MessagePromise]:
        for promise in promises:
            yield promise
        raise error

    return sequence()
