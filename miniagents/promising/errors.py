"""Errors of the promising layer (see `miniagents.errors` for the whole tree)."""

from miniagents.errors import MiniAgentsError


class PromisingError(MiniAgentsError):
    """Base class of the promising layer's errors."""


class FunctionNotProvidedError(PromisingError):
    """A resolver or streamer was neither passed to the constructor nor implemented by a subclass."""


class AppenderNotOpenError(PromisingError):
    """`append()` was called on a `StreamAppender` that was never opened."""


class AppenderClosedError(PromisingError):
    """`append()` or `open()` was called on a `StreamAppender` that is already closed."""


class NoActiveContextError(PromisingError, RuntimeError):
    """A promise was used outside of an active `PromisingContext` / `MiniAgents` context."""
