"""What a replay matches agent calls on: `CallToMatch`, the call as a user's `normalize` function sees it, and its
match key."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from miniagents.errors import FrozenValueError
from miniagents.messages import Message
from miniagents.miniagents import AgentCallNode
from miniagents.promising.ext.frozen import Frozen, freeze

_NODE_FIELDS = frozenset({"class_", "text", "text_template", "agent_alias", "messages", "kwargs"})


@dataclass(frozen=True)
class CallToMatch:
    """An agent call as the replay matches it: what `Replay(normalize=...)` receives and returns.

    `replace(**changes)` gives a copy with some of `agent_alias`, `kwargs` (a dict), `messages` (a tuple of
    messages; strings are taken as `Message(text=...)`) or `metadata` (the agent's interaction metadata) changed.
    """

    agent_alias: str
    kwargs: Mapping[str, Any]
    messages: tuple[Message, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, call_node: Frozen) -> CallToMatch:
        """The call a call node records."""
        values = call_node.frozen_fields_and_values()
        return cls(
            agent_alias=str(values.get("agent_alias", "")),
            kwargs=dict(values.get("kwargs") or ()),
            messages=tuple(values.get("messages") or ()),
            metadata={name: value for name, value in values.items() if name not in _NODE_FIELDS},
        )

    def replace(self, **changes: Any) -> CallToMatch:
        """A copy with these fields changed (`agent_alias`, `kwargs`, `messages`, `metadata`)."""
        unknown = sorted(set(changes) - {item.name for item in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"CallToMatch.replace() got unknown field(s) {', '.join(unknown)}; it takes agent_alias, kwargs, "
                "messages and metadata."
            )
        return dataclasses.replace(self, **changes)

    def as_call_node(self) -> AgentCallNode:
        """The call node this call would record; its hash key is the match key."""
        kwargs = {}
        for name, value in dict(self.kwargs).items():
            try:
                kwargs[str(name)] = freeze(value, f"kwargs[{name!r}]")
            except FrozenValueError as exc:
                raise FrozenValueError(
                    f"The normalized call of {self.agent_alias} cannot be matched on: {exc}"
                ) from None
        messages = tuple(as_message(message) for message in self.messages)
        return AgentCallNode(
            **{
                **dict(self.metadata),
                "kwargs": tuple(sorted(kwargs.items())),
                "messages": messages,
                "agent_alias": self.agent_alias,
            }
        )


def legacy_call_key(call_node: AgentCallNode) -> Optional[str]:
    """The key this call had in recordings made before keyword arguments were kept apart (their names mixed with
    the node's fields), or None when it has no kwargs or that shape cannot hold them (a name clashes with a field)."""
    values = call_node.frozen_fields_and_values()
    pairs = values.pop("kwargs", None)
    if not pairs:
        return None
    kwargs = dict(pairs)
    if set(kwargs) & (set(values) | {"class_", "text", "text_template"}):
        return None
    return AgentCallNode(**{**values, **kwargs}).hash_key


def as_message(message: Any) -> Message:
    """A message of a normalized call: a string stands for `Message(text=...)`."""
    return message if isinstance(message, Message) else Message(text=str(message))


Normalizer = Callable[[CallToMatch], CallToMatch]
"""A function from a call to the call to match on (volatile values replaced by placeholders, say)."""


class CallMatcher:
    """Match keys of call nodes: the call node's own hash key, or that of the call `normalize` returns for it
    (computed once per call node)."""

    def __init__(self, normalize: Optional[Normalizer] = None) -> None:
        self.normalize = normalize
        self._keys: dict[str, str] = {}

    def normalized(self, call_node: Frozen) -> CallToMatch:
        """The call as matched: what `normalize` returns for it (the call itself without one)."""
        call = CallToMatch.of(call_node)
        if self.normalize is None:
            return call
        result = self.normalize(call)
        if not isinstance(result, CallToMatch):
            raise TypeError(
                f"Replay(normalize=...) must return the call to match on (a CallToMatch, e.g. `call.replace(...)`), "
                f"got {type(result).__name__} for a call of {call.agent_alias}."
            )
        return result.replace(messages=tuple(as_message(message) for message in result.messages))

    def key(self, call_node: Frozen) -> str:
        """The key this call is matched on."""
        if self.normalize is None:
            return call_node.hash_key
        key = self._keys.get(call_node.hash_key)
        if key is None:
            key = self._keys[call_node.hash_key] = self.normalized(call_node).as_call_node().hash_key
        return key
