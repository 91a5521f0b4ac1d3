"""The call tree of a recorded run as text, as `miniagents tree` prints it."""

from __future__ import annotations

from typing import Optional

from replay.inspection.model import RecordedRun, RunCall

SHORT_TEXT = 100
"""Characters of a message text shown on one line without `full`."""


def format_seconds(seconds: Optional[float]) -> str:
    """A duration for people: `812 ms`, `1.52 s`."""
    if seconds is None:
        return "?"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def _text_lines(text: str, pad: str, mark: str, full: bool) -> list[str]:
    if not full:
        flat = " ".join(text.split())
        return [f"{pad}{mark} {flat if len(flat) <= SHORT_TEXT else flat[: SHORT_TEXT - 1] + '…'}"]
    lines = text.splitlines() or [""]
    return [f"{pad}{mark} {lines[0]}", *(f"{pad}{' ' * len(mark)} {line}" for line in lines[1:])]


def _short(text: str, full: bool, limit: int = 40) -> str:
    return text if full or len(text) <= limit else text[: limit - 1] + "…"


def call_lines(call: RunCall, full: bool = False, timed: bool = True) -> list[str]:
    """The lines of one call (not of its children): position, agent, kwargs, duration and flags; then its inputs
    (`<`), replies (`>`), broken replies, time to first token, token usage, model and errors (`!!`); without
    durations and time to first token when not `timed` (a recording that holds no times)."""
    pad = "  " * call.depth
    kwargs = ", ".join(f"{name}={_short(repr(value), full)}" for name, value in sorted(call.kwargs.items()))
    flags = (" [replayed]" if call.node.replayed else "") + ("" if call.node.finished else " [unfinished]")
    duration = f" {format_seconds(call.duration)}" if timed else ""
    lines = [f"{pad}{call.position} {call.agent_alias}({kwargs}){duration}{flags}"]
    inner = pad + "  "
    for message in call.inputs:
        lines.extend(_text_lines(str(message), inner, "<", full))
    for message in call.replies:
        lines.extend(_text_lines(str(message), inner, ">", full))
    for partial in call.partial_replies:
        lines.extend(_text_lines(partial.text, inner, ">", full))
        lines.append(f"{inner}!! broken reply: {partial.error}")
    facts = []
    if timed and call.time_to_first_token is not None:
        facts.append(f"first token {format_seconds(call.time_to_first_token)}")
    usage = call.usage
    if usage is not None:
        facts.append(f"tokens {usage.input_tokens} in / {usage.output_tokens} out")
    if call.is_llm_call and call.request_model:
        facts.append(f"model {call.request_model}")
    if facts:
        lines.append(f"{inner}· {' · '.join(facts)}")
    if call.node.input_error is not None and call.node.input_error != call.node.error:
        lines.extend(_text_lines(str(call.node.input_error), inner, "!! input:", full))
    if call.node.error is not None:
        lines.extend(_text_lines(str(call.node.error), inner, "!!", full))
    return lines


def tree_lines(run: RecordedRun, full: bool = False) -> list[str]:
    """The whole call tree of a run as text: a header (run id, status, duration, token usage), then every call,
    depth first, indented by depth; texts cut to one line of `SHORT_TEXT` characters unless `full`. A run whose
    recording holds no times (a text recording made without `timing=True`) shows no durations."""
    usage = run.usage
    timed = run.timed
    duration = format_seconds(run.duration) if timed else "(no times recorded)"
    header = f"run {run.run_id} {run.info.status} {duration}, {len(run.calls)} calls"
    if usage.total_tokens:
        header += f", tokens {usage.input_tokens} in / {usage.output_tokens} out"
    lines = [header]
    if run.info.error is not None:
        lines.append(f"!! {run.info.error}")
    for call in run.calls:
        lines.extend(call_lines(call, full, timed))
    return lines
