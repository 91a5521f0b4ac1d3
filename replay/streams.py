"""Recorded replies turned back into live promises: same chunks, same final message, errors at their place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from itertools import accumulate
from typing import Any, Optional, Protocol

from miniagents.messages import Message, MessagePromise
from miniagents.promising.ext.frozen import Frozen
from miniagents.promising.promising import PromisingContext
from replay.rebuilt_errors import rebuild_error
from store.decoding import stand_in_class


def split_into_chunks(text: str, chunk_lengths: Sequence[int]) -> list[str]:
    """`text` cut at the recorded chunk boundaries (one chunk if they do not add up to the text)."""
    if sum(chunk_lengths) != len(text) or min(chunk_lengths, default=0) < 0:
        return [text]
    ends = accumulate(chunk_lengths)
    return [text[end - length : end] for length, end in zip(chunk_lengths, ends, strict=True)]


class Pacing(Protocol):
    """Who decides when a replayed answer may complete (see `replay.ordering.CompletionClock`)."""

    def progress(self) -> None:
        """A chunk was replayed."""

    def turn(self) -> asyncio.Future[None]:
        """Done when the answer may complete; one future per answer, awaited through `asyncio.shield` so that a
        cancelled consumer leaves it (and the stream) whole for the others."""

    def completed(self) -> None:
        """The call's whole answer was replayed."""


class _ReplayedChunks:
    """The chunks of a replayed message, at once or at `speed` times the recorded pace; with `pacing`, the last
    chunk waits for the answer's turn. Not an async generator: a consumer cancelled while it pulls (a timeout,
    `asyncio.wait` dropping a loser) leaves the stream whole for the others."""

    def __init__(
        self, chunks: Sequence[str], offsets: Sequence[float], speed: Optional[float], pacing: Optional[Pacing]
    ) -> None:
        self._chunks = chunks
        self._offsets = offsets
        self._speed = speed
        self._pacing = pacing
        self._index = 0
        self._previous = 0.0

    def __aiter__(self) -> _ReplayedChunks:
        return self

    async def __anext__(self) -> str:
        index = self._index
        if index >= len(self._chunks):
            if self._pacing is not None and not self._chunks:
                await asyncio.shield(self._pacing.turn())
            raise StopAsyncIteration
        if self._speed and index < len(self._offsets):
            delay = (self._offsets[index] - self._previous) / self._speed
            if delay > 0:
                await asyncio.sleep(delay)
            self._previous = self._offsets[index]
        if self._pacing is not None:
            if index == len(self._chunks) - 1:
                await asyncio.shield(self._pacing.turn())
            self._pacing.progress()
        self._index = index + 1
        return self._chunks[index]


def _token_streamer(
    chunks: Sequence[str], offsets: Sequence[float], speed: Optional[float], pacing: Optional[Pacing] = None
) -> Any:
    """The token streamer of a replayed message (see `_ReplayedChunks`)."""

    def streamer(_: dict[str, Any]) -> AsyncIterator[str]:
        return _ReplayedChunks(chunks, offsets, speed, pacing)

    return streamer


class ReplayedMessagePromise(MessagePromise):
    """A message promise that streams a recorded message's chunks and resolves to the recorded message itself
    (read from the store and checked against its hash key), rather than to a copy rebuilt from the chunks."""

    def __init__(
        self,
        message: Message,
        chunks: Sequence[str],
        offsets: Sequence[float],
        speed: Optional[float],
        pacing: Optional[Pacing] = None,
    ) -> None:
        self.recorded_message = message
        metadata = message.frozen_fields_and_values()
        metadata.pop("text", None)
        streamer = _token_streamer(chunks, offsets, speed, pacing)
        super().__init__(message_token_streamer=streamer, message_class=type(message), **metadata)

    async def _resolver(self) -> Message:
        async for _ in self:  # the whole stream first, as every message promise resolves
            pass
        return self.recorded_message


def replayed_message(
    message: Message,
    chunk_lengths: Optional[Sequence[int]],
    offsets: Sequence[float],
    speed: Optional[float],
    pacing: Optional[Pacing] = None,
) -> MessagePromise:
    """A promise that streams `message` in its recorded chunks (at `speed` times the recorded pace, or at once).

    A message that was complete from the start (no chunks recorded) is complete from the start again: its turn
    to complete (`pacing`) is then kept by the reply sequence, which holds it back (see `replayed_sequence`)."""
    if chunk_lengths is None:
        return MessagePromise(prefill_message=message)
    chunks = split_into_chunks(message.text or "", chunk_lengths)
    return ReplayedMessagePromise(message, chunks, offsets, speed, pacing)


def replayed_failure(
    partial: Mapping[str, Any], speed: Optional[float], pacing: Optional[Pacing] = None
) -> MessagePromise:
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

    chunk_streamer = _token_streamer(chunks, offsets, speed, pacing)

    async def token_streamer(metadata_so_far: dict[str, Any]) -> AsyncIterator[str]:
        async for chunk in chunk_streamer(metadata_so_far):
            yield chunk
        raise error

    return MessagePromise(message_token_streamer=token_streamer, message_class=message_class, **metadata)


def _message_class_named(class_name: str) -> type[Message]:
    for candidate in _all_message_classes():
        if candidate.__name__ == class_name:
            return candidate
    return stand_in_class(class_name, Message)  # type: ignore[return-value]


def _all_message_classes() -> list[type[Message]]:
    found: list[type[Message]] = []
    pending: list[type[Message]] = [Message]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(current.__subclasses__())
    return found


def replayed_sequence(
    promises: list[MessagePromise], error: Optional[BaseException], pacing: Optional[Pacing] = None
) -> Any:
    """The reply of a replayed call: the promises, then the recorded sequence error (if any) at its place. With
    `pacing`, a last message that was complete from the start is held back until the call's turn to complete, and
    so is the end of the sequence."""
    if error is None and pacing is None:
        return promises
    return _ReplayedSequence(promises, error, pacing)


class _ReplayedSequence:
    """A replayed reply sequence (see `replayed_sequence`). With `pacing`, a task of the context waits for the
    answer's turn and its messages, then marks the answer complete, whether anyone reads the sequence or not.
    Not an async generator, for the same reason as `_ReplayedChunks`."""

    def __init__(
        self, promises: list[MessagePromise], error: Optional[BaseException], pacing: Optional[Pacing]
    ) -> None:
        self._promises = promises
        self._error = error
        self._pacing = pacing
        self._index = 0
        self._finished: Optional[asyncio.Future[None]] = None
        if pacing is not None:
            self._finished = PromisingContext.get_current().spawn(self._afinish(pacing))

    async def _afinish(self, pacing: Pacing) -> None:
        try:
            await pacing.turn()
            await asyncio.gather(*self._promises, return_exceptions=True)  # every message complete, failed too
        finally:
            pacing.completed()

    def __aiter__(self) -> _ReplayedSequence:
        return self

    async def __anext__(self) -> MessagePromise:
        index = self._index
        if index < len(self._promises):
            promise = self._promises[index]
            if self._pacing is not None and index == len(self._promises) - 1 and not promise.is_streamed:
                await asyncio.shield(self._pacing.turn())
            self._index = index + 1
            return promise
        if self._finished is not None:
            await asyncio.shield(self._finished)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration
