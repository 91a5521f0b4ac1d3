"""Run diffs: two recorded runs compared call by call, aligned by position in the call tree and agent."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from miniagents.messages import Message
from replay.inspection.model import RecordedRun, RunCall, message_class, plain

SECTIONS = ("kwargs", "inputs", "replies", "error")
"""What is compared of two aligned calls, in this order."""


@dataclass(frozen=True)
class CallDifference:
    """How one call differs between two runs: `status` is `"changed"`, `"only_left"` or `"only_right"`;
    `diffs` holds, per differing section (`kwargs`, `inputs`, `replies`, `error`), unified diff lines."""

    position: str
    agent_alias: str
    status: str
    diffs: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RunDiff:
    """Two runs compared call by call; `differences` lists the calls that differ, in call tree order."""

    left: RecordedRun
    right: RecordedRun
    compared: int
    """How many calls the two runs have in common (same position, same agent)."""
    differences: list[CallDifference]

    @property
    def differs(self) -> bool:
        return bool(self.differences)

    def lines(self) -> list[str]:
        """The diff as text: a summary line, then each differing call with the diffs of its sections."""
        left, right = self.left.run_id, self.right.run_id
        if not self.differs:
            return [f"runs {left} and {right}: {self.compared} calls compared, no differences"]
        lines = [
            f"runs {left} and {right}: {self.compared} calls compared, {len(self.differences)} "
            f"call{'s' if len(self.differences) != 1 else ''} differ"
        ]
        for difference in self.differences:
            where = f"{difference.position} {difference.agent_alias}"
            if difference.status == "only_left":
                lines.append(f"- {where}: only in {left}")
            elif difference.status == "only_right":
                lines.append(f"+ {where}: only in {right}")
            else:
                lines.append(f"~ {where}: {', '.join(difference.diffs)} differ")
                for section_lines in difference.diffs.values():
                    lines.extend("    " + line for line in section_lines)
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def diff_runs(left: RecordedRun, right: RecordedRun) -> RunDiff:
    """Compare two runs call by call: calls at the same position with the same agent are compared on their
    kwargs, inputs, replies and error; a call without such a counterpart is reported as only in one run."""
    right_calls = {(call.position, call.agent_alias): call for call in right.calls}
    matched: set[tuple[str, str]] = set()
    differences: list[CallDifference] = []
    compared = 0
    for call in left.calls:
        key = (call.position, call.agent_alias)
        other = right_calls.get(key)
        if other is None:
            differences.append(CallDifference(call.position, call.agent_alias, "only_left"))
            continue
        matched.add(key)
        compared += 1
        diffs = _section_diffs(call, other, left.run_id, right.run_id)
        if diffs:
            differences.append(CallDifference(call.position, call.agent_alias, "changed", diffs))
    for call in right.calls:
        if (call.position, call.agent_alias) not in matched:
            differences.append(CallDifference(call.position, call.agent_alias, "only_right"))
    differences.sort(key=lambda difference: _position_key(difference.position))
    return RunDiff(left, right, compared, differences)


def _position_key(position: str) -> list[int]:
    return [int(part) if part.isdigit() else -1 for part in position.split(".")]


def _section_diffs(left: RunCall, right: RunCall, left_name: str, right_name: str) -> dict[str, list[str]]:
    diffs: dict[str, list[str]] = {}
    for section in SECTIONS:
        before, after = section_text(left, section), section_text(right, section)
        if before != after:
            diffs[section] = list(
                difflib.unified_diff(
                    before,
                    after,
                    f"{left_name} {left.position} {section}",
                    f"{right_name} {right.position} {section}",
                    lineterm="",
                )
            )
    return diffs


def section_text(call: RunCall, section: str) -> list[str]:
    """The lines that stand for one section of a call (`kwargs`, `inputs`, `replies`, `error`) in a diff."""
    if section == "kwargs":
        return _json_lines(plain(call.kwargs))
    if section == "inputs":
        return [line for index, message in enumerate(call.inputs) for line in message_lines(index, message)]
    if section == "replies":
        lines = [line for index, message in enumerate(call.replies) for line in message_lines(index, message)]
        for partial in call.partial_replies:
            lines.append(f"[broken reply] {partial.message_class}: {partial.error}")
            lines.extend(partial.text.splitlines() or [""])
        return lines
    error = call.error
    return [str(error)] if error is not None else []


def message_lines(index: int, message: Message) -> list[str]:
    """A message as diff lines: a header with its class, its text line by line, then its other fields as JSON."""
    fields = plain(message)
    fields.pop("class_", None)
    text: Optional[Any] = fields.pop("text", None)
    if fields.get("text_template") is None:
        fields.pop("text_template", None)
    lines = [f"[{index}] {message_class(message)}"]
    if isinstance(text, str):
        lines.extend(text.splitlines() or [""])
    if fields:
        lines.extend("  " + line for line in _json_lines(fields))
    return lines


def _json_lines(value: Any) -> list[str]:
    if value in ({}, [], None):
        return []
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode().splitlines()
