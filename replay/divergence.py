"""What differs between an agent call and the recorded calls closest to it, as a divergence report shows it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from miniagents.messages import Message
from miniagents.miniagents import AgentCallNode
from replay.matching import CallToMatch, as_message

_SHORT = 60
"""Values whose text is at most this long, on one line, are shown whole."""
_CONTEXT = 30
"""Characters shown on each side of the first difference in a long one-line text."""
_DIFF_LINES = 12
"""Lines of unified diff shown at most for a multi-line text."""
_NOT_GIVEN = object()


@dataclass(frozen=True)
class Difference:
    """One thing that differs between two calls: where, and how much (0 = nearly equal, 1 = wholly different)."""

    where: str
    lines: tuple[str, ...]
    distance: float


def describe_differences(
    current: Union[CallToMatch, AgentCallNode], recorded: Union[CallToMatch, AgentCallNode]
) -> list[str]:
    """What differs between a call and a recorded one, as report lines: each differing keyword argument, metadata
    field and input message (class, fields, and the text around the first differing position)."""
    lines = [line for difference in call_differences(current, recorded) for line in difference.lines]
    return lines or ["(identical content; only the occurrence or position differs)"]


def call_differences(
    current: Union[CallToMatch, AgentCallNode], recorded: Union[CallToMatch, AgentCallNode]
) -> list[Difference]:
    """Every difference between two calls, in the order a report shows them."""
    now, then = _as_call(current), _as_call(recorded)
    differences: list[Difference] = []
    if now.agent_alias != then.agent_alias:
        differences.append(_value_difference("agent", now.agent_alias, then.agent_alias))
    differences += _mapping_differences("kwarg", now.kwargs, then.kwargs)
    differences += _mapping_differences("metadata", now.metadata, then.metadata)
    if len(now.messages) != len(then.messages):
        differences.append(
            Difference(
                "input messages",
                (f"input messages: now {len(now.messages)}, recorded {len(then.messages)}",),
                1.0,
            )
        )
    for index, (now_message, then_message) in enumerate(zip(now.messages, then.messages, strict=False)):
        if now_message.hash_key != then_message.hash_key:
            differences += _message_differences(f"input message {index}", now_message, then_message)
    for index in range(min(len(now.messages), len(then.messages)), max(len(now.messages), len(then.messages))):
        side, message = (
            ("now", now.messages[index]) if index < len(now.messages) else ("recorded", then.messages[index])
        )
        differences.append(
            Difference(f"input message {index}", (f"input message {index}: only {side}: {_show(message.text)}",), 1.0)
        )
    return differences


def distance(differences: Iterable[Difference]) -> float:
    """How much two calls differ: the sum of their differences' distances (for ranking the closest calls)."""
    return sum(difference.distance for difference in differences)


def normalization_notes(given: CallToMatch, normalized: CallToMatch, side: str) -> list[str]:
    """The values `normalize` changed, as given (`side`: "now" or "recorded"), for a report that compared
    normalized calls."""
    notes = []
    for kind, given_values, normalized_values in (
        ("kwarg", given.kwargs, normalized.kwargs),
        ("metadata", given.metadata, normalized.metadata),
    ):
        for name in sorted(set(given_values) | set(normalized_values)):
            value = given_values.get(name, _NOT_GIVEN)
            if value != normalized_values.get(name, _NOT_GIVEN):
                shown = "not given" if value is _NOT_GIVEN else _show(value)
                notes.append(f"{side}, as given before normalize: {kind} {name} = {shown}")
    normalized_messages = [as_message(message) for message in normalized.messages]
    for index, message in enumerate(given.messages):
        if index >= len(normalized_messages) or normalized_messages[index].hash_key != message.hash_key:
            notes.append(f"{side}, as given before normalize: input message {index} = {_show(message.text)}")
    return notes


def _as_call(call: Union[CallToMatch, AgentCallNode]) -> CallToMatch:
    return call if isinstance(call, CallToMatch) else CallToMatch.of(call)


def _mapping_differences(kind: str, now: Mapping[str, Any], then: Mapping[str, Any]) -> list[Difference]:
    differences = []
    for name in sorted(set(now) | set(then)):
        now_value, then_value = now.get(name, _NOT_GIVEN), then.get(name, _NOT_GIVEN)
        if now_value is _NOT_GIVEN:
            differences.append(
                Difference(f"{kind} {name}", (f"{kind} {name}: not given now, recorded {_show(then_value)}",), 1.0)
            )
        elif then_value is _NOT_GIVEN:
            differences.append(
                Difference(f"{kind} {name}", (f"{kind} {name}: given now ({_show(now_value)}), not recorded",), 1.0)
            )
        elif now_value != then_value:
            differences.append(_value_difference(f"{kind} {name}", now_value, then_value))
    return differences


def _message_differences(where: str, now: Message, then: Message) -> list[Difference]:
    differences = []
    now_class, then_class = type(now).__name__, type(then).__name__
    now_fields, then_fields = now.frozen_fields_and_values(), then.frozen_fields_and_values()
    now_class = str(now_fields.get("class_", now_class))
    then_class = str(then_fields.get("class_", then_class))
    if now_class != then_class:
        differences.append(
            Difference(f"{where} class", (f"{where}: class now {now_class}, recorded {then_class}",), 0.5)
        )
    only_now = sorted(set(now_fields) - set(then_fields))
    only_then = sorted(set(then_fields) - set(now_fields))
    if only_now or only_then:
        parts = []
        if only_now:
            parts.append(f"only now: {', '.join(only_now)}")
        if only_then:
            parts.append(f"only recorded: {', '.join(only_then)}")
        differences.append(Difference(f"{where} fields", (f"{where}: fields {'; '.join(parts)}",), 0.5))
    for name in sorted(set(now_fields) & set(then_fields) - {"class_"}):
        if now_fields[name] != then_fields[name]:
            label = where if name == "text" else f"{where} {name}"
            differences.append(_value_difference(label, now_fields[name], then_fields[name]))
    return differences


def _value_difference(where: str, now: Any, then: Any) -> Difference:
    """Two values side by side; for long texts the context around the first differing position, or a few lines
    of unified diff."""
    now_text, then_text = _text(now), _text(then)
    distance_ = _word_distance(now_text, then_text)
    if "\n" in now_text or "\n" in then_text:
        diff = list(
            difflib.unified_diff(then_text.splitlines(), now_text.splitlines(), "recorded", "now", n=1, lineterm="")
        )
        shown = diff[:_DIFF_LINES] + (
            [f"… ({len(diff) - _DIFF_LINES} more diff lines)"] if len(diff) > _DIFF_LINES else []
        )
        return Difference(
            where, (f"{where} differs (unified diff, recorded → now):", *(f"    {line}" for line in shown)), distance_
        )
    if len(now_text) <= _SHORT and len(then_text) <= _SHORT:
        return Difference(where, (f"{where}: now {_show(now)}, recorded {_show(then)}",), distance_)
    position = next(
        (index for index, (a, b) in enumerate(zip(now_text, then_text, strict=False)) if a != b),
        min(len(now_text), len(then_text)),
    )
    start = max(0, position - _CONTEXT)
    return Difference(
        where,
        (
            f"{where} differs at character {position}:",
            f"    now      {_excerpt(now_text, start, position)}",
            f"    recorded {_excerpt(then_text, start, position)}",
        ),
        distance_,
    )


def _word_distance(now: str, then: str) -> float:
    """1 minus the share of words the two texts have in common, in order (0: equal, 1: nothing in common)."""
    if now == then:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, now.split(), then.split(), autojunk=False).ratio()


def _excerpt(text: str, start: int, position: int) -> str:
    end = position + _CONTEXT
    return ("…" if start > 0 else "") + repr(text[start:end]) + ("…" if end < len(text) else "")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHORT + 2 else text[: _SHORT - 1] + "…" + text[-1]
