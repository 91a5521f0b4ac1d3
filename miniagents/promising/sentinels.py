"""Sentinel values: markers that are never confused with real data (None included)."""


class Sentinel:
    """A unique marker object; using one in a boolean expression is a bug and raises."""

    __slots__ = ("_name",)

    def __init__(self, name: str = "SENTINEL") -> None:
        self._name = name

    def __bool__(self) -> bool:
        raise RuntimeError(f"Sentinel {self._name} must not be used in a boolean expression; compare with `is`.")

    def __repr__(self) -> str:
        return self._name


NO_VALUE = Sentinel("NO_VALUE")
DEFAULT = Sentinel("DEFAULT")
FAILED = Sentinel("FAILED")
END_OF_QUEUE = Sentinel("END_OF_QUEUE")
AWAIT = Sentinel("AWAIT")
CLEAR = Sentinel("CLEAR")
