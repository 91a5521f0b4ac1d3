"""`FlatSequence`: a stream of incoming items turned, item by item, into a flat stream of outgoing items."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Generic, Optional, Union

from miniagents.promising.errors import FunctionNotProvidedError
from miniagents.promising.promise_typing import IN, OUT, PromiseStreamer, SequenceFlattener
from miniagents.promising.promising import StreamedPromise
from miniagents.promising.sentinels import DEFAULT, Sentinel


class FlatSequence(Generic[IN, OUT]):
    """Feeds every item from `incoming_streamer` through `flattener`, which yields zero or more items each.

    The result is `sequence_promise`: a `StreamedPromise` of the outgoing items whose whole value is their tuple.

    :param incoming_streamer: where incoming items come from (a `StreamAppender`, another promise, ...).
    :param flattener: an async generator function `(flat_sequence, item)` yielding outgoing items.
    :param start_asap: start flattening in the background now.
    :param sequence_promise_class: the `StreamedPromise` subclass to create.
    """

    sequence_promise: StreamedPromise[OUT, tuple[OUT, ...]]

    def __init__(
        self,
        incoming_streamer: PromiseStreamer[IN],
        flattener: Optional[SequenceFlattener[IN, OUT]] = None,
        start_asap: Union[bool, Sentinel] = DEFAULT,
        sequence_promise_class: type[StreamedPromise[OUT, tuple[OUT, ...]]] = StreamedPromise,
    ) -> None:
        self._flattener_fn = flattener
        self._incoming_streamer = incoming_streamer
        self.sequence_promise = sequence_promise_class(
            streamer=self._flat_streamer,
            resolver=collect_tuple,
            start_asap=start_asap,
        )

    def _flattener(self, zero_or_more_items: IN) -> AsyncIterator[OUT]:
        if self._flattener_fn is None:
            raise FunctionNotProvidedError(
                f"{type(self).__name__} has no flattener: pass `flattener=` or override `_flattener()`."
            )
        return self._flattener_fn(self, zero_or_more_items)

    async def _flat_streamer(self, _: Any) -> AsyncIterator[OUT]:
        async for zero_or_more_items in self._incoming_streamer(self):
            async for item in self._flattener(zero_or_more_items):
                yield item


async def collect_tuple(promise: StreamedPromise[Any, Any]) -> tuple[Any, ...]:
    """A resolver that makes the whole value of a streamed promise the tuple of its pieces."""
    return tuple([item async for item in promise])
