"""Shared helpers for the benchmark scripts: subprocess JSON runs, medians and Markdown tables."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_SCRIPTS_DIR.parent


def subprocess_env(pythonpath: str | None) -> dict[str, str]:
    """Return a copy of the environment with PYTHONPATH set to `pythonpath` (or removed when None)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_json(cmd: Sequence[str], pythonpath: str | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Run a workload script and parse the JSON object on the last line of its stdout.

    Never raises for workload failures: returns {"error": ...} instead (non-zero exit, timeout, garbage output).
    """
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=subprocess_env(pythonpath),
            cwd=REPO_ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if lines:
        try:
            parsed = json.loads(lines[-1])
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    stderr_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    detail = stderr_lines[-1] if stderr_lines else (lines[-1] if lines else "no output")
    return {"error": f"exit code {proc.returncode}: {detail}"[:300]}


def median(values: Sequence[float]) -> float | None:
    """Median of the values, or None when there are none."""
    return statistics.median(values) if values else None


def spread(values: Sequence[float]) -> float | None:
    """Relative max/min spread of positive values (0.05 = 5 %), or None with fewer than two values."""
    positive = [v for v in values if v > 0]
    if len(positive) < 2:
        return None
    return max(positive) / min(positive) - 1


def fmt_num(value: float | None, digits: int = 0) -> str:
    """Format a number with thousands separators (or "-" for a missing value)."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    """Format a ratio as e.g. 0.23x (or "-" for a missing value)."""
    if value is None:
        return "-"
    return f"{value:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a Markdown table with columns padded for readability in a terminal."""
    rows = [[cell.replace("\n", " ").replace("|", "\\|") for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])


def shown_command() -> str:
    """The exact command line that started this process, runnable from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_arg = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_arg = str(script)
    python = Path(sys.executable)
    try:
        python_arg = str(python.relative_to(REPO_ROOT))
    except ValueError:
        python_arg = str(python)
    return f"cd {shlex.quote(str(REPO_ROOT))} && " + shlex.join([python_arg, script_arg, *sys.argv[1:]])


def log(message: str) -> None:
    """Progress output (stderr, so stdout stays just the report)."""
    print(message, file=sys.stderr, flush=True)
