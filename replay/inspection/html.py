"""The run viewer: one self-contained HTML file (no network; opens from `file://`) with the call tree, a waterfall
of the calls over time with each stream's first token and token arrivals, full messages on selection, errors where
they happened and token usage per call and in total."""

from __future__ import annotations

import datetime
import html
import os
from pathlib import Path
from typing import Any, Union

import orjson

from miniagents.messages import Message
from replay.inspection.model import RecordedRun, RunCall, message_class, plain


def _message_json(message: Message) -> dict[str, Any]:
    fields = plain(message)
    fields.pop("class_", None)
    text = fields.pop("text", None)
    if fields.get("text_template") is None:
        fields.pop("text_template", None)
    return {
        "class": message_class(message),
        "text": text if isinstance(text, str) else str(message),
        "fields": fields,
        "hash": message.hash_key,
    }


def _call_json(call: RunCall) -> dict[str, Any]:
    usage = call.usage
    error = call.error
    return {
        "id": call.call_id,
        "parent": call.parent_call_id,
        "position": call.position,
        "depth": call.depth,
        "agent": call.agent_alias,
        "start": call.started_at,
        "end": call.finished_at,
        "duration": call.duration,
        "ttft": call.time_to_first_token,
        "replayed": call.node.replayed,
        "finished": call.node.finished,
        "llm": call.is_llm_call,
        "model": call.request_model if call.is_llm_call else None,
        "responseModel": call.response_model,
        "finishReasons": list(call.finish_reasons),
        "usage": {"input": usage.input_tokens, "output": usage.output_tokens} if usage is not None else None,
        "kwargs": plain(call.kwargs),
        "inputs": [_message_json(message) for message in call.inputs],
        "replies": [_message_json(message) for message in call.replies],
        "partialReplies": [
            {"class": partial.message_class, "text": partial.text, "error": str(partial.error)}
            for partial in call.partial_replies
        ],
        "error": str(error) if error is not None else None,
        "raised": str(raised) if (raised := call.node.error or call.node.input_error) is not None else None,
        "streams": [
            {
                "start": stream.started_at,
                "chunks": list(stream.chunk_times),
                "lengths": list(stream.chunk_lengths),
                "error": str(stream.error) if stream.error is not None else None,
            }
            for stream in call.streams
        ],
    }


def viewer_data(run: RecordedRun) -> dict[str, Any]:
    """What the viewer page shows, as plain JSON: the run's summary and every call, in call tree order."""
    info = run.info
    usage = run.usage
    started = (
        datetime.datetime.fromtimestamp(info.started_at, datetime.timezone.utc).isoformat(timespec="seconds")
        if info.started_at
        else None
    )
    return {
        "run": {
            "id": run.run_id,
            "status": info.status,
            "started": started,
            "duration": run.duration,
            "timed": run.timed,
            "events": info.event_count,
            "error": str(info.error) if info.error is not None else None,
            "usage": {"input": usage.input_tokens, "output": usage.output_tokens},
        },
        "calls": [_call_json(call) for call in run.calls],
    }


def render_viewer(run: RecordedRun) -> str:
    """The viewer of a run as one HTML document, its data, styles and script inline. It selects the call named in
    the address (`run.html#call=3`), else the first that failed, else the first LLM call."""
    data = orjson.dumps(viewer_data(run), default=str).decode().replace("<", "\\u003c")
    title = html.escape(f"miniagents run {run.run_id}")
    page = _PAGE.replace("__STYLE__", _STYLE).replace("__SCRIPT__", _SCRIPT).replace("__TITLE__", title)
    return page.replace("__DATA__", data)  # last: the data may hold anything


def write_viewer(run: RecordedRun, path: Union[str, os.PathLike[str]]) -> Path:
    """Write the viewer of a run into an HTML file; return its path."""
    target = Path(path)
    target.write_text(render_viewer(run), encoding="utf-8")
    return target


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__STYLE__</style>
</head>
<body>
<header id="summary"></header>
<main>
<section id="tree-panel"><h2>Calls</h2><div id="tree"></div></section>
<section id="right">
<div id="waterfall-panel"><h2>Waterfall</h2><div id="waterfall"></div></div>
<div id="details-panel"><h2>Details</h2><div id="details">Select a call.</div></div>
</section>
</main>
<script type="application/json" id="run-data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

_STYLE = """
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
  background: #f6f7f9; }
header { padding: 10px 16px; background: #1d2330; color: #fff; display: flex; flex-wrap: wrap; gap: 18px;
  align-items: baseline; }
header .title { font-weight: 600; font-size: 15px; }
header .status-ok { color: #7ee2a8; } header .status-failed, header .status-running { color: #ff9b8f; }
main { display: flex; gap: 12px; padding: 12px; align-items: flex-start; }
h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: #5b6475; margin: 0 0 6px; }
section, #waterfall-panel, #details-panel { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
  padding: 10px; }
#tree-panel { width: 34%; min-width: 280px; overflow: auto; }
#right { flex: 1; display: flex; flex-direction: column; gap: 12px; background: none; border: none; padding: 0;
  min-width: 0; }
#tree ul { list-style: none; margin: 0; padding-left: 16px; }
#tree > ul { padding-left: 0; }
.tree-row { padding: 2px 6px; border-radius: 4px; cursor: pointer; }
.tree-row:hover, .wf-row:hover { background: #eef2fb; }
.selected { background: #dbe6ff !important; }
.pos { color: #8a93a5; font-family: ui-monospace, monospace; margin-right: 4px; }
.agent { font-weight: 600; }
.meta { color: #5b6475; margin-left: 6px; font-size: 12px; }
.badge { display: inline-block; padding: 0 5px; border-radius: 3px; font-size: 11px; margin-left: 4px; }
.badge.error { background: #ffe1dd; color: #a3261a; } .badge.llm { background: #e5ecff; color: #2b4bb3; }
.badge.replayed { background: #eee; color: #555; }
#waterfall { position: relative; }
.wf-axis { position: relative; height: 18px; margin-left: 180px; border-bottom: 1px solid #dde1e8;
  font-size: 11px; color: #8a93a5; }
.wf-axis span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.wf-row { display: flex; align-items: center; height: 22px; cursor: pointer; border-radius: 3px; }
.wf-label { width: 180px; flex: none; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  padding-right: 6px; font-size: 12px; }
.wf-track { position: relative; flex: 1; height: 14px; }
.wf-bar { position: absolute; top: 2px; height: 10px; border-radius: 2px; background: #8fa7e6; min-width: 2px; }
.wf-bar.llm { background: #5b7fe0; } .wf-bar.error { background: #e0685b; }
.wf-token { position: absolute; top: 0; width: 1px; height: 14px; background: #1d2330; opacity: .55; }
.wf-first-token { position: absolute; top: -2px; width: 3px; height: 18px; background: #14a06a; }
.wf-error { position: absolute; top: -3px; width: 9px; height: 9px; margin-left: -4px; border-radius: 50%;
  background: #c62d1f; }
.legend { font-size: 11px; color: #5b6475; margin-top: 6px; }
.legend i { display: inline-block; width: 10px; height: 10px; vertical-align: middle; margin: 0 3px 0 10px; }
#details pre { white-space: pre-wrap; word-break: break-word; background: #f6f7f9; border: 1px solid #e3e6ec;
  border-radius: 4px; padding: 6px 8px; margin: 4px 0 10px; font: 12px/1.45 ui-monospace, monospace; }
#details h3 { font-size: 13px; margin: 10px 0 2px; }
#details .msg-class { color: #5b6475; font-size: 12px; }
#details .error-text { color: #a3261a; }
#viewer-errors { background: #ffe1dd; color: #a3261a; padding: 8px 16px; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var failures = [];
  function fail(text) {
    failures.push(String(text));
    var box = document.getElementById("viewer-errors");
    if (!box) {
      box = document.createElement("div");
      box.id = "viewer-errors";
      document.body.insertBefore(box, document.body.firstChild);
    }
    box.textContent = "Viewer error: " + failures.join(" | ");
    document.documentElement.setAttribute("data-viewer-errors", String(failures.length));
  }
  window.addEventListener("error", function (event) { fail(event.message || "error"); });
  window.addEventListener("unhandledrejection", function (event) { fail(event.reason || "rejection"); });
  var consoleError = console.error;
  console.error = function () {
    fail(Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function ms(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds >= 10) return seconds.toFixed(1) + " s";
    if (seconds >= 1) return seconds.toFixed(2) + " s";
    return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
  }
  function tokens(usage) {
    return usage ? usage.input + " in / " + usage.output + " out" : "";
  }

  var data = JSON.parse(document.getElementById("run-data").textContent);
  var run = data.run, calls = data.calls;
  var byId = {};
  calls.forEach(function (call) { byId[call.id] = call; });
  var selected = null;

  function summary() {
    var header = document.getElementById("summary");
    header.appendChild(el("span", "title", "Run " + run.id));
    header.appendChild(el("span", "status-" + run.status, run.status));
    if (run.started) header.appendChild(el("span", "", "started " + run.started));
    header.appendChild(el("span", "", run.timed ? "duration " + ms(run.duration) : "no times recorded"));
    header.appendChild(el("span", "", calls.length + " calls, " + run.events + " events"));
    var reported = calls.some(function (call) { return call.usage; });
    var totals = el("span", "", reported ? "tokens: " + tokens(run.usage) + " (" + (run.usage.input +
      run.usage.output) + " total)" : "tokens: none reported");
    totals.id = "totals";
    header.appendChild(totals);
    var failed = calls.filter(function (call) { return call.error; }).length;
    if (failed) header.appendChild(el("span", "status-failed", failed + " failed"));
    if (run.error) header.appendChild(el("span", "status-failed", "run error: " + run.error));
  }

  function tree() {
    var container = document.getElementById("tree");
    var lists = {};
    var top = el("ul");
    container.appendChild(top);
    calls.forEach(function (call) {
      var item = el("li", "tree-node");
      item.setAttribute("data-call-id", call.id);
      var row = el("div", "tree-row");
      row.setAttribute("data-call-id", call.id);
      row.appendChild(el("span", "pos", call.position));
      row.appendChild(el("span", "agent", call.agent));
      if (call.llm) row.appendChild(el("span", "badge llm", call.model || "llm"));
      var meta = run.timed ? [ms(call.duration)] : [];
      if (run.timed && call.ttft !== null) meta.push("first token " + ms(call.ttft));
      if (call.usage) meta.push(tokens(call.usage));
      row.appendChild(el("span", "meta", meta.filter(Boolean).join(" · ")));
      if (call.replayed) row.appendChild(el("span", "badge replayed", "replayed"));
      if (call.error) row.appendChild(el("span", "badge error", call.error.split(":")[0]));
      row.title = call.error || "";
      row.addEventListener("click", function () { select(call.id); });
      item.appendChild(row);
      var children = el("ul");
      item.appendChild(children);
      lists[call.id] = children;
      var parentList = call.parent !== null && lists[call.parent] ? lists[call.parent] : top;
      parentList.appendChild(item);
    });
  }

  function waterfall() {
    var container = document.getElementById("waterfall");
    if (!run.timed) {
      container.appendChild(el("p", "wf-untimed", "This recording holds no times (a text recording made without " +
        "timing=True), so there is no waterfall."));
      return;
    }
    var end = run.duration || 0;
    calls.forEach(function (call) {
      (call.streams || []).forEach(function (stream) {
        stream.chunks.forEach(function (moment) { if (moment > end) end = moment; });
      });
      if (call.end !== null && call.end > end) end = call.end;
    });
    if (!(end > 0)) end = 0.001;
    function pct(moment) { return Math.max(0, Math.min(100, (moment / end) * 100)) + "%"; }
    var axis = el("div", "wf-axis");
    for (var i = 0; i <= 4; i++) {
      var tick = el("span", "", ms((end * i) / 4));
      tick.style.left = (i * 25) + "%";
      if (i === 4) tick.style.transform = "translateX(-100%)";
      if (i === 0) tick.style.transform = "none";
      axis.appendChild(tick);
    }
    container.appendChild(axis);
    calls.forEach(function (call) {
      var row = el("div", "wf-row");
      row.setAttribute("data-call-id", call.id);
      var label = el("div", "wf-label", call.position + " " + call.agent);
      label.style.paddingLeft = (call.depth * 10) + "px";
      row.appendChild(label);
      var track = el("div", "wf-track");
      var start = call.start === null ? 0 : call.start;
      var stop = call.end === null ? end : call.end;
      var bar = el("div", "wf-bar" + (call.llm ? " llm" : "") + (call.error ? " error" : ""));
      bar.style.left = pct(start);
      bar.style.width = Math.max(0, ((stop - start) / end) * 100) + "%";
      bar.title = call.agent + ": " + ms(stop - start) + (call.ttft !== null ? ", first token " + ms(call.ttft) : "");
      track.appendChild(bar);
      (call.streams || []).forEach(function (stream, index) {
        stream.chunks.forEach(function (moment) {
          var mark = el("div", "wf-token");
          mark.style.left = pct(moment);
          track.appendChild(mark);
        });
        if (stream.chunks.length) {
          var first = el("div", "wf-first-token");
          first.style.left = pct(stream.chunks[0]);
          first.title = "first token of reply " + index + " at " + ms(stream.chunks[0]);
          track.appendChild(first);
        }
        if (stream.error) {
          var broken = el("div", "wf-error");
          broken.style.left = pct(stream.chunks.length ? stream.chunks[stream.chunks.length - 1] : stream.start);
          broken.title = stream.error;
          track.appendChild(broken);
        }
      });
      if (call.raised) {
        var failure = el("div", "wf-error");
        failure.style.left = pct(stop);
        failure.title = call.raised;
        track.appendChild(failure);
      }
      row.appendChild(track);
      row.addEventListener("click", function () { select(call.id); });
      container.appendChild(row);
    });
    var legend = el("div", "legend");
    [["#8fa7e6", "agent call"], ["#5b7fe0", "LLM call"], ["#14a06a", "first token"], ["#1d2330", "token"],
     ["#c62d1f", "error"]].forEach(function (entry) {
      var swatch = el("i");
      swatch.style.background = entry[0];
      legend.appendChild(swatch);
      legend.appendChild(document.createTextNode(entry[1]));
    });
    container.appendChild(legend);
  }

  function messageBlock(parent, title, messages) {
    parent.appendChild(el("h3", "", title + " (" + messages.length + ")"));
    messages.forEach(function (message, index) {
      parent.appendChild(el("div", "msg-class", "[" + index + "] " + message["class"] + " " + message.hash));
      parent.appendChild(el("pre", "msg-text", message.text));
      if (message.fields && Object.keys(message.fields).length) {
        parent.appendChild(el("pre", "msg-fields", JSON.stringify(message.fields, null, 2)));
      }
    });
  }

  function select(id) {
    selected = id;
    Array.prototype.forEach.call(document.querySelectorAll("[data-call-id]"), function (node) {
      if (node.classList.contains("tree-row") || node.classList.contains("wf-row")) {
        node.classList.toggle("selected", node.getAttribute("data-call-id") === String(id));
      }
    });
    var call = byId[id];
    var details = document.getElementById("details");
    details.textContent = "";
    details.setAttribute("data-call-id", id);
    details.appendChild(el("h3", "", call.position + " " + call.agent + " (call " + call.id + ")"));
    var facts = ["start " + ms(call.start), "duration " + ms(call.duration)];
    if (call.ttft !== null) facts.push("time to first token " + ms(call.ttft));
    if (call.usage) facts.push("tokens " + tokens(call.usage));
    if (call.model) facts.push("model " + call.model);
    if (call.finishReasons.length) facts.push("finish " + call.finishReasons.join(", "));
    if (!call.finished) facts.push("unfinished");
    details.appendChild(el("div", "facts", facts.join(" · ")));
    if (call.error) {
      details.appendChild(el("h3", "", "Error"));
      details.appendChild(el("pre", "error-text", call.error));
    }
    if (Object.keys(call.kwargs).length) {
      details.appendChild(el("h3", "", "kwargs"));
      details.appendChild(el("pre", "", JSON.stringify(call.kwargs, null, 2)));
    }
    messageBlock(details, "Inputs", call.inputs);
    messageBlock(details, "Replies", call.replies);
    call.partialReplies.forEach(function (partial) {
      details.appendChild(el("h3", "", "Broken reply (" + partial["class"] + ")"));
      details.appendChild(el("pre", "", partial.text));
      details.appendChild(el("pre", "error-text", partial.error));
    });
  }

  summary();
  tree();
  waterfall();
  var linked = /^#call=(\d+)$/.exec(window.location.hash);
  var first = (linked && byId[linked[1]]) || calls.filter(function (call) { return call.error; })[0] ||
    calls.filter(function (call) { return call.llm; })[0] || calls[0];
  if (first) select(first.id);
  document.body.setAttribute("data-viewer-ready", failures.length ? "with-errors" : "yes");
})();
"""
