"""Looking at recorded runs: the run model shared by the call tree, the waterfall viewer, run diffs and the
OpenTelemetry and Chrome Trace exports, and the `miniagents` command line over them (`replay.inspection.cli`, needs
`miniagents[cli]`; the OpenTelemetry export needs `miniagents[otel]`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

from replay.inspection.chrome_trace import chrome_trace
from replay.inspection.diff import CallDifference, RunDiff, diff_runs
from replay.inspection.html import render_viewer, viewer_data, write_viewer
from replay.inspection.model import (
    RecordedRun,
    RunCall,
    StreamTiming,
    Usage,
    alatest_run_id,
    aload_run,
    aresolve_run_id,
)
from replay.inspection.reading import (
    RunSummary,
    agc_store,
    aiter_event_lines,
    alist_run_summaries,
    ashow_object,
    averify_store,
    open_existing_store,
    verify_report_lines,
)
from replay.inspection.text import tree_lines


def main(args: Optional[Sequence[str]] = None) -> None:
    """Run the `miniagents` command line; without `miniagents[cli]` installed, say in one line how to get it."""
    try:
        from replay.inspection.cli import main as cli_main
    except ImportError as error:
        print(f"miniagents: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    cli_main(args)


__all__ = [
    "CallDifference",
    "RecordedRun",
    "RunCall",
    "RunDiff",
    "RunSummary",
    "StreamTiming",
    "Usage",
    "agc_store",
    "aiter_event_lines",
    "alatest_run_id",
    "alist_run_summaries",
    "aload_run",
    "aresolve_run_id",
    "ashow_object",
    "averify_store",
    "chrome_trace",
    "diff_runs",
    "main",
    "open_existing_store",
    "render_viewer",
    "tree_lines",
    "verify_report_lines",
    "viewer_data",
    "write_viewer",
]
