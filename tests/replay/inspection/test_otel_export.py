"""OpenTelemetry export: GenAI spans of a recorded run through the SDK's in-memory exporter, as OTLP JSON, and
sent over OTLP/HTTP to a receiver started on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from conftest import FIRST_ANSWER, Recordings
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from replay.inspection.cli import cli
from replay.inspection.otel import (
    TIME_TO_FIRST_CHUNK,
    export_run,
    otlp_json_of_run,
    run_spans,
    span_id_of,
    trace_id_of,
    traces_url,
)


def test_agent_calls_become_invoke_agent_spans_and_llm_calls_chat_spans(recordings: Recordings) -> None:
    exporter = InMemorySpanExporter()
    export_run(recordings.first, exporter)
    spans = exporter.get_finished_spans()
    assert sorted(span.name for span in spans) == sorted(
        [
            "invoke_agent ORCHESTRATOR",
            "invoke_agent RESEARCHER",
            "chat stand-in-1",
            "invoke_agent RESEARCHER",
            "chat stand-in-1",
            "invoke_agent FACT_CHECKER",
        ]
    )
    run = recordings.first
    llm = run.call_at("0.0.0")
    [chat] = [span for span in spans if span.attributes and span.attributes["miniagents.call.position"] == "0.0.0"]
    assert chat.kind is SpanKind.CLIENT
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "miniagents.stand_in"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "stand-in-1"
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (6, 6)
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes[TIME_TO_FIRST_CHUNK] == pytest.approx(llm.time_to_first_token)
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes
    agent = next(span for span in spans if span.name == "invoke_agent ORCHESTRATOR")
    assert dict(agent.attributes or {})["gen_ai.operation.name"] == "invoke_agent"
    assert dict(agent.attributes or {})["gen_ai.agent.name"] == "ORCHESTRATOR"


def test_spans_keep_the_recorded_times_parents_and_errors(recordings: Recordings) -> None:
    run = recordings.first
    spans = run_spans(run)
    assert [dict(span.attributes or {})["miniagents.call.position"] for span in spans] == [
        call.position for call in run.calls
    ]
    by_call = {call.call_id: span for call, span in zip(run.calls, spans, strict=True)}
    for call, span in zip(run.calls, spans, strict=True):
        assert span.context is not None
        assert span.context.trace_id == trace_id_of(run.run_id)
        assert span.context.span_id == span_id_of(run.run_id, call.position)
        parent = by_call.get(call.parent_call_id) if call.parent_call_id is not None else None
        if parent is None:
            assert span.parent is None
        else:
            assert span.parent is not None and parent.context is not None
            assert span.parent.span_id == parent.context.span_id
        assert span.start_time == pytest.approx((run.started_at + (call.started_at or 0)) * 1e9, abs=1_000)
        assert span.end_time == pytest.approx((run.started_at + (call.finished_at or 0)) * 1e9, abs=1_000)
    failed = by_call[run.call_at("0.2").call_id]
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "ValueError"
    assert [event.name for event in failed.events] == ["exception"]
    ok = by_call[run.call_at("0.0").call_id]
    assert ok.status.status_code is StatusCode.UNSET and "error.type" not in dict(ok.attributes or {})


def test_exporting_twice_gives_the_same_ids_and_contents_only_when_asked(recordings: Recordings) -> None:
    first, second = run_spans(recordings.first), run_spans(recordings.first)
    assert [(span.context.trace_id, span.context.span_id) for span in first if span.context] == [
        (span.context.trace_id, span.context.span_id) for span in second if span.context
    ]
    assert otlp_json_of_run(recordings.first) == otlp_json_of_run(recordings.first)
    with_content = run_spans(recordings.first, include_content=True)
    chat = next(
        span for span in with_content if dict(span.attributes or {}).get("miniagents.call.position") == "0.0.0"
    )
    attributes = dict(chat.attributes or {})
    assert orjson.loads(str(attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "Research paper."}]},
        {"role": "user", "parts": [{"type": "text", "content": "How is paper made?"}]},
    ]
    assert orjson.loads(str(attributes["gen_ai.output.messages"])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": FIRST_ANSWER}]}
    ]


def test_otlp_json_has_hex_ids_string_times_and_typed_attributes(recordings: Recordings) -> None:
    run = recordings.first
    payload = otlp_json_of_run(run)
    [resource] = payload["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": "miniagents"}} in resource["resource"]["attributes"]
    spans = resource["scopeSpans"][0]["spans"]
    root = spans[0]
    assert root["traceId"] == f"{trace_id_of(run.run_id):032x}" and len(root["spanId"]) == 16
    assert "parentSpanId" not in root and spans[1]["parentSpanId"] == root["spanId"]
    assert int(root["startTimeUnixNano"]) < int(root["endTimeUnixNano"])
    chat = spans[2]
    assert chat["name"] == "chat stand-in-1" and chat["kind"] == 3  # SPAN_KIND_CLIENT
    attributes = {item["key"]: item["value"] for item in chat["attributes"]}
    assert attributes["gen_ai.usage.input_tokens"] == {"intValue": "6"}
    assert attributes["gen_ai.response.finish_reasons"] == {"arrayValue": {"values": [{"stringValue": "stop"}]}}
    assert set(attributes[TIME_TO_FIRST_CHUNK]) == {"doubleValue"}
    failed = spans[5]
    assert failed["status"] == {"code": 2, "message": "ValueError: no sources for this claim"}


class _Receiver(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((self.path, self.headers["Content-Type"], orjson.loads(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    """An OTLP/HTTP receiver on 127.0.0.1: its base URL and the requests it received."""
    _Receiver.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_export_endpoint_sends_the_spans_over_otlp_http(
    recordings: Recordings, receiver: tuple[str, list[tuple[str, str, Any]]], tmp_path: Path
) -> None:
    url, requests = receiver
    output = tmp_path / "spans.json"
    args = ["export", str(recordings.path), recordings.first_run_id, "--format", "otlp-json"]
    result = CliRunner().invoke(cli, [*args, "-o", str(output), "--endpoint", url])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"sent 6 spans to {url}\nwrote {output}\n"
    [(path, content_type, body)] = requests
    assert (path, content_type) == ("/v1/traces", "application/json")
    assert body == orjson.loads(output.read_bytes()) == otlp_json_of_run(recordings.first)
    again = CliRunner().invoke(cli, [*args, "--endpoint", f"{url}/v1/traces"])  # sending only, to a full URL
    assert again.exit_code == 0 and requests[1][2] == body


def test_an_unreachable_endpoint_is_one_line_and_exit_code_1(recordings: Recordings) -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    args = ["export", str(recordings.path), "--format", "otlp-json", "--endpoint", f"http://127.0.0.1:{port}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"miniagents: error: Could not send the spans to http://127.0.0.1:{port}/v1/traces: ")
    bad = CliRunner().invoke(cli, ["export", str(recordings.path), "--format", "chrome-trace", "--endpoint", "x"])
    assert bad.exit_code == 2 and "use it with --format otlp-json" in bad.stderr


def test_traces_url_adds_the_otlp_path_to_a_base_url() -> None:
    assert traces_url("http://localhost:4318") == "http://localhost:4318/v1/traces"
    assert traces_url("http://localhost:4318/") == "http://localhost:4318/v1/traces"
    assert traces_url("http://localhost:6006/v1/traces") == "http://localhost:6006/v1/traces"
