"""Clear `ImportError`s, with the `pip install` hint, for optional dependencies that are not installed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def install_hint(extra: str) -> str:
    """The command that installs a `miniagents` extra."""
    return f"pip install 'miniagents[{extra}]'"


@contextmanager
def optional_dependency(module: str, extra: str, needed_by: str) -> Iterator[None]:
    """Turn the failed import of `module` in the `with` block into an `ImportError` that says how to install it.

    :param module: the top-level module imported in the block (`openai`, `markdown_it`, ...).
    :param extra: the `miniagents` extra that installs it (`openai`, `markdown`, ...).
    :param needed_by: what needs it, for the message (usually the importing module's `__name__`).
    """
    try:
        yield
    except ImportError as error:
        missing = error.name or ""
        if missing != module and not missing.startswith(f"{module}."):
            raise  # the package is there but something inside it failed: that error says more than a hint would
        raise ImportError(
            f"{needed_by} needs the optional dependency {module!r}, which is not installed: {install_hint(extra)}",
            name=module,
        ) from error
