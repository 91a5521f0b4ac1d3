"""OpenTelemetry export: a recorded run as spans following the GenAI semantic conventions, given to any span
exporter of the OpenTelemetry SDK, written as OTLP JSON or sent over OTLP/HTTP (needs `miniagents[otel]`)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import orjson
from blake3 import blake3

from miniagents.messages import Message
from replay.inspection.model import RecordedRun, RunCall, plain
from store.errors import StoreUsageError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

INSTRUMENTATION_SCOPE = "miniagents.replay"
SERVICE_NAME = "miniagents"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
"""The span attribute holding an LLM call's seconds from its start to the first streamed chunk."""


def _require_sdk() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "OpenTelemetry export needs the OpenTelemetry SDK: pip install 'miniagents[otel]'"
        ) from error


def trace_id_of(run_id: str) -> int:
    """The trace id of a run: derived from its id, so that exporting it twice gives the same trace."""
    return int(blake3(f"miniagents trace {run_id}".encode()).hexdigest()[:32], 16) or 1


def span_id_of(run_id: str, position: str) -> int:
    """The span id of the call at `position` of a run, derived from both."""
    return int(blake3(f"miniagents span {run_id} {position}".encode()).hexdigest()[:16], 16) or 1


def _nanoseconds(run: RecordedRun, moment: float) -> int:
    return round((run.started_at + moment) * 1_000_000_000)


def span_attributes(run: RecordedRun, call: RunCall, include_content: bool = False) -> dict[str, Any]:
    """The attributes of a call's span: `gen_ai.*` (operation, agent or provider and models, token usage, finish
    reasons, time to first chunk), `error.type` for a failed call, `miniagents.*` (run id, call id, position);
    with `include_content`, the input and output messages (`gen_ai.input.messages`, `gen_ai.output.messages`)."""
    attributes: dict[str, Any] = {
        "miniagents.run.id": run.run_id,
        "miniagents.call.id": call.call_id,
        "miniagents.call.position": call.position,
        "gen_ai.agent.name": call.agent_alias,
    }
    if call.is_llm_call:
        attributes["gen_ai.operation.name"] = "chat"
        attributes["gen_ai.provider.name"] = call.provider or "miniagents"
        if call.request_model is not None:
            attributes["gen_ai.request.model"] = call.request_model
        if call.response_model is not None:
            attributes["gen_ai.response.model"] = call.response_model
        usage = call.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        if call.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(call.finish_reasons)
    else:
        attributes["gen_ai.operation.name"] = "invoke_agent"
    if call.time_to_first_token is not None:
        attributes[TIME_TO_FIRST_CHUNK] = call.time_to_first_token
    if call.error is not None:
        attributes["error.type"] = call.error.type_name
    if include_content:
        attributes["gen_ai.input.messages"] = _messages_json(call.inputs, "user")
        attributes["gen_ai.output.messages"] = _messages_json(call.replies, "assistant")
    return attributes


def _messages_json(messages: Sequence[Message], default_role: str) -> str:
    items = []
    for message in messages:
        role = getattr(message, "role", None)
        items.append({"role": role if isinstance(role, str) else default_role, "parts": [_part(message)]})
    return orjson.dumps(items, default=str).decode()


def _part(message: Message) -> dict[str, Any]:
    if message.text is not None:
        return {"type": "text", "content": message.text}
    return {"type": "text", "content": orjson.dumps(plain(message), default=str).decode()}


def span_name(call: RunCall) -> str:
    """`chat {model}` for an LLM call, `invoke_agent {alias}` for any other agent call."""
    if call.is_llm_call:
        return f"chat {call.request_model}" if call.request_model else "chat"
    return f"invoke_agent {call.agent_alias}"


def export_run(run: RecordedRun, exporter: SpanExporter, include_content: bool = False) -> None:
    """Give the spans of a recorded run to an OpenTelemetry SDK span exporter (one span per agent call, with the
    recorded start and end, parented as the calls were; ids derived from the run id and each call's position)."""
    _require_sdk()
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.trace import Status, StatusCode

    class _RunIds(IdGenerator):
        """Hands out the ids of the span about to be started."""

        def __init__(self) -> None:
            self.span_id = 0
            self.trace_id = trace_id_of(run.run_id)

        def generate_span_id(self) -> int:
            return self.span_id

        def generate_trace_id(self) -> int:
            return self.trace_id

    ids = _RunIds()
    provider = TracerProvider(
        resource=Resource({"service.name": SERVICE_NAME}), id_generator=ids, shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(INSTRUMENTATION_SCOPE)
    run_end = run.duration
    spans: dict[int, Any] = {}
    for call in run.calls:
        parent = spans.get(call.parent_call_id) if call.parent_call_id is not None else None
        context = trace.set_span_in_context(parent) if parent is not None else None
        ids.span_id = span_id_of(run.run_id, call.position)
        started = call.started_at if call.started_at is not None else 0.0
        finished = call.finished_at if call.finished_at is not None else max(started, run_end)
        span = tracer.start_span(
            span_name(call),
            context=context,
            kind=trace.SpanKind.CLIENT if call.is_llm_call else trace.SpanKind.INTERNAL,
            attributes=span_attributes(run, call, include_content),
            start_time=_nanoseconds(run, started),
        )
        first_token = call.first_token_at
        if first_token is not None:
            span.add_event("gen_ai.first_chunk", timestamp=_nanoseconds(run, first_token))
        if call.error is not None:
            span.add_event(
                "exception",
                {"exception.type": call.error.type_name, "exception.message": call.error.text},
                timestamp=_nanoseconds(run, finished),
            )
            span.set_status(Status(StatusCode.ERROR, str(call.error)))
        spans[call.call_id] = span
    for call in reversed(run.calls):
        finished = call.finished_at if call.finished_at is not None else max(call.started_at or 0.0, run_end)
        spans[call.call_id].end(end_time=_nanoseconds(run, finished))
    provider.force_flush()
    provider.shutdown()


def run_spans(run: RecordedRun, include_content: bool = False) -> list[ReadableSpan]:
    """The spans of a recorded run, as the SDK's in-memory exporter receives them (in call tree order)."""
    _require_sdk()
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    export_run(run, exporter, include_content)
    order = {span_id_of(run.run_id, call.position): index for index, call in enumerate(run.calls)}
    return sorted(exporter.get_finished_spans(), key=lambda span: order.get(_span_id(span), len(order)))


def _span_id(span: ReadableSpan) -> int:
    context = span.context
    return context.span_id if context is not None else 0


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """Spans as an OTLP/JSON `ExportTraceServiceRequest` (what an OTLP/HTTP receiver takes as
    `application/json`): ids in hex, times as strings of nanoseconds, attributes as typed values."""
    resource_spans: dict[tuple[Any, ...], dict[str, Any]] = {}
    for span in spans:
        resource_attributes = dict(span.resource.attributes) if span.resource is not None else {}
        key = tuple(sorted((name, repr(value)) for name, value in resource_attributes.items()))
        entry = resource_spans.setdefault(
            key,
            {
                "resource": {"attributes": _attributes(resource_attributes)},
                "scopeSpans": [{"scope": {"name": INSTRUMENTATION_SCOPE}, "spans": []}],
            },
        )
        entry["scopeSpans"][0]["spans"].append(_span_json(span))
    return {"resourceSpans": list(resource_spans.values())}


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    assert context is not None
    data: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
        "name": span.name,
        "kind": span.kind.value + 1,  # the SDK counts from INTERNAL = 0, OTLP from SPAN_KIND_INTERNAL = 1
        "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time),
        "attributes": _attributes(dict(span.attributes or {})),
        "status": {"code": span.status.status_code.value},
    }
    if span.parent is not None:
        data["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.status.description:
        data["status"]["message"] = span.status.description
    if span.events:
        data["events"] = [
            {
                "timeUnixNano": str(event.timestamp),
                "name": event.name,
                "attributes": _attributes(dict(event.attributes or {})),
            }
            for event in span.events
        ]
    return data


def _attributes(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": name, "value": _any_value(value)} for name, value in attributes.items()]


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(item) for item in value]}}
    return {"stringValue": str(value)}


def otlp_json_of_run(run: RecordedRun, include_content: bool = False) -> dict[str, Any]:
    """A recorded run as an OTLP/JSON traces request."""
    return otlp_json(run_spans(run, include_content))


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint: `/v1/traces` is added to a base URL (as the OTLP exporters do
    with `OTEL_EXPORTER_OTLP_ENDPOINT`), a URL ending in it is kept."""
    if not endpoint.startswith(("http://", "https://")):
        raise StoreUsageError(f"--endpoint takes an http:// or https:// URL, got {endpoint!r}.")
    return endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"


def send_otlp_json(payload: dict[str, Any], endpoint: str, headers: Optional[dict[str, str]] = None) -> int:
    """POST an OTLP/JSON request to an OTLP/HTTP receiver (`traces_url(endpoint)`); return the HTTP status.
    Raises `OSError` naming the URL when the receiver cannot be reached or refuses the spans."""
    url = traces_url(endpoint)
    request = urllib.request.Request(
        url,
        data=orjson.dumps(payload),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        raise OSError(f"The OTLP receiver at {url} refused the spans: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise OSError(f"Could not send the spans to {url}: {reason}") from None


async def asend_otlp_json(payload: dict[str, Any], endpoint: str, headers: Optional[dict[str, str]] = None) -> int:
    """`send_otlp_json` on a worker thread."""
    return await asyncio.to_thread(send_otlp_json, payload, endpoint, headers)
