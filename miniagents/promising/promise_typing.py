"""Type variables and callback protocols of the promising layer."""

from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar, Union

T = TypeVar("T")
PIECE = TypeVar("PIECE")
WHOLE = TypeVar("WHOLE")
IN = TypeVar("IN")
OUT = TypeVar("OUT")
T_co = TypeVar("T_co", covariant=True)
PIECE_co = TypeVar("PIECE_co", covariant=True)
IN_contra = TypeVar("IN_contra", contravariant=True)
OUT_co = TypeVar("OUT_co", covariant=True)
PromiseBound = TypeVar("PromiseBound", bound="Promise")  # type: ignore[name-defined]  # noqa: F821
StreamedPromiseBound = TypeVar("StreamedPromiseBound", bound="StreamedPromise")  # type: ignore[name-defined]  # noqa: F821
FlatSequenceBound = TypeVar("FlatSequenceBound", bound="FlatSequence")  # type: ignore[name-defined]  # noqa: F821


class PromiseResolver(Protocol[T_co]):
    """Computes the value of a promise; receives the promise itself."""

    async def __call__(self, promise: Any, /) -> T_co: ...


class PromiseStreamer(Protocol[PIECE_co]):
    """Produces the pieces of a streamed promise; receives the promise itself."""

    def __call__(self, streamed_promise: Any, /) -> AsyncIterator[PIECE_co]: ...


class PromiseResolvedEventHandler(Protocol):
    """Called (as a scheduled task) after a promise resolves, with the promise and its result."""

    async def __call__(self, promise: Any, result: Any, /) -> None: ...


class SequenceFlattener(Protocol[IN_contra, OUT_co]):
    """Turns one incoming item into zero or more outgoing items."""

    def __call__(
        self, flat_sequence: Any, zero_or_more_items: Union[IN_contra, BaseException], /
    ) -> AsyncIterator[OUT_co]: ...
