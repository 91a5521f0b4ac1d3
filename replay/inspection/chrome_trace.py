"""Chrome Trace Event export: a recorded run as JSON that Perfetto (ui.perfetto.dev) and chrome://tracing open."""

from __future__ import annotations

from typing import Any

from replay.inspection.model import RecordedRun, RunCall

_PID = 1


def _microseconds(seconds: float) -> float:
    return round(seconds * 1_000_000, 3)


def chrome_trace(run: RecordedRun) -> dict[str, Any]:
    """The run as a Chrome Trace Event document: one track per agent call (named by position and agent, in call
    tree order) with a complete event spanning the call, an instant event at the first token and at each chunk
    of its streamed replies, and one at each error. Times are microseconds since the run started."""
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": _PID, "tid": 0, "args": {"name": f"miniagents run {run.run_id}"}}
    ]
    run_end = run.duration
    for index, call in enumerate(run.calls):
        tid = call.call_id
        events.append(
            {
                "name": "thread_name",
                "ph": "M",
                "pid": _PID,
                "tid": tid,
                "args": {"name": f"{call.position} {call.agent_alias}"},
            }
        )
        events.append({"name": "thread_sort_index", "ph": "M", "pid": _PID, "tid": tid, "args": {"sort_index": index}})
        started = call.started_at if call.started_at is not None else 0.0
        finished = call.finished_at if call.finished_at is not None else max(started, run_end)
        events.append(
            {
                "name": call.agent_alias,
                "cat": "llm" if call.is_llm_call else "agent",
                "ph": "X",
                "pid": _PID,
                "tid": tid,
                "ts": _microseconds(started),
                "dur": _microseconds(max(0.0, finished - started)),
                "args": _call_args(call),
            }
        )
        first = call.first_token_at
        if first is not None:
            events.append(_instant("first token", "stream", tid, first, {}))
        for stream in call.streams:
            for moment, length in zip(stream.chunk_times, stream.chunk_lengths, strict=False):
                events.append(_instant("token", "stream", tid, moment, {"characters": length}))
            if stream.error is not None:
                moment = stream.chunk_times[-1] if stream.chunk_times else stream.started_at
                events.append(_instant("stream error", "error", tid, moment, {"error": str(stream.error)}))
        raised = call.node.error or call.node.input_error  # (a broken stream is marked where it broke, above)
        if raised is not None:
            events.append(_instant("error", "error", tid, finished, {"error": str(raised)}))
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"run_id": run.run_id}}


def _instant(name: str, category: str, tid: int, moment: float, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "cat": category,
        "ph": "i",
        "s": "t",
        "pid": _PID,
        "tid": tid,
        "ts": _microseconds(moment),
        "args": args,
    }


def _call_args(call: RunCall) -> dict[str, Any]:
    args: dict[str, Any] = {"position": call.position, "call_id": call.call_id}
    if call.parent_call_id is not None:
        args["parent_call_id"] = call.parent_call_id
    if call.request_model is not None and call.is_llm_call:
        args["model"] = call.request_model
    usage = call.usage
    if usage is not None:
        args["input_tokens"] = usage.input_tokens
        args["output_tokens"] = usage.output_tokens
    if call.time_to_first_token is not None:
        args["time_to_first_token_ms"] = round(call.time_to_first_token * 1000, 3)
    if call.error is not None:
        args["error"] = str(call.error)
    return args
