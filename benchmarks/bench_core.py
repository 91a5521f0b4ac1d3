"""Core speed of this project vs MiniAgents 0.0.14 and 0.0.35: echo calls, concurrency and message hashing."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# sibling modules: benchmarks/ is sys.path[0] when a script in it is run (or imported by another such script)
import _common as common
import peers

WORKLOAD = common.BENCH_SCRIPTS_DIR / "_core_workload.py"

# goals for this project, relative to MiniAgents 0.0.14
TARGET_SEQ_RATIO = 0.12  # per sequential call: <= 0.12x of 0.0.14 (issue 14)
TARGET_CONC_RATIO = 0.25  # per call at 2000 concurrent: <= 0.25x of 0.0.14
TARGET_SCALING = 1.3  # per-call cost at 4000 concurrent <= 1.3x of that at 250
TARGET_HASH_RATIO = 2.0  # create+hash rate >= 2x of 0.0.14
TARGET_FLOOR_RATIO = 4.0  # per call: within 4x of the same echo call in plain asyncio (issue 14)


@dataclass
class Impl:
    """One implementation under test: an interpreter, an API flavour and what to put on PYTHONPATH."""

    key: str
    label: str
    python: Path
    api: str
    pythonpath: str | None
    error: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def default_project_python() -> Path:
    """The project's own interpreter: .venv/bin/python if present, else the one running this script."""
    venv_python = peers.venv_python(common.REPO_ROOT / ".venv")
    return venv_python if venv_python.exists() else Path(sys.executable)


def build_impls(args: argparse.Namespace) -> list[Impl]:
    """Set up the peer venvs and list the implementations in the (interleaving) order they run."""
    names = ["miniagents-0.0.14", "miniagents-0.0.35"]
    pythons = peers.ensure_peers(names)
    impls = [
        Impl("0.0.14", "MiniAgents 0.0.14 (PyPI)", pythons["miniagents-0.0.14"], "pypi14", None),
        Impl("0.0.35", "MiniAgents 0.0.35 (PyPI)", pythons["miniagents-0.0.35"], "v35", None),
    ]
    if args.with_seed:
        seed_dir = peers.ensure_seed_copy()
        if seed_dir is None:
            common.log(f"[core] reference source not found at {peers.SEED_DIR}; skipping it")
        else:
            impls.append(
                Impl(
                    "seed",
                    "MiniAgents 0.0.14 (reference source)",
                    pythons["miniagents-0.0.14"],
                    "seed14",
                    str(seed_dir),
                )
            )
    impls.append(Impl("this", "this project", Path(args.project_python), "seed14", str(common.REPO_ROOT)))
    impls.append(Impl("asyncio", "plain asyncio task + queue (floor)", Path(args.project_python), "asyncio", None))
    return impls


def workload_cmd(impl: Impl, args: argparse.Namespace) -> list[str]:
    """The exact subprocess command measuring one implementation."""
    return [
        str(impl.python),
        str(WORKLOAD),
        "--api",
        impl.api,
        "--seq",
        str(args.seq),
        "--concurrency",
        ",".join(str(c) for c in args.concurrency),
        "--hash",
        str(args.hash),
        "--warmup",
        str(args.warmup),
    ]


def run_rounds(impls: list[Impl], args: argparse.Namespace) -> None:
    """Run every implementation once per round, interleaved (A, B, C, A, B, C, ...)."""
    for round_no in range(1, args.rounds + 1):
        for impl in impls:
            if impl.error:
                continue
            started = time.perf_counter()
            result = common.run_json(workload_cmd(impl, args), impl.pythonpath, timeout=args.timeout)
            elapsed = time.perf_counter() - started
            if "error" in result:
                impl.error = result["error"]
                common.log(f"[core] round {round_no}/{args.rounds} {impl.label}: unavailable: {impl.error}")
                continue
            impl.info = {k: result.get(k) for k in ("module", "version", "python", "api")}
            impl.runs.append(result)
            common.log(f"[core] round {round_no}/{args.rounds} {impl.label}: {elapsed:.1f} s")


def _metric(impl: Impl, path: tuple[str, ...], field_name: str) -> tuple[list[float], str | None]:
    """Values of run[path...][field_name] over the rounds, plus the workload's error if none succeeded."""
    values: list[float] = []
    error: str | None = None
    for run in impl.runs:
        node: Any = run
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            continue
        if isinstance(node.get(field_name), (int, float)):
            values.append(float(node[field_name]))
        elif "error" in node:
            error = str(node["error"])
    return values, error


def summarize(impl: Impl, args: argparse.Namespace) -> dict[str, Any]:
    """Medians (and errors) per metric for one implementation."""
    summary: dict[str, Any] = {"errors": {}, "spreads": {}}

    def take(name: str, path: tuple[str, ...], field_name: str) -> None:
        values, error = _metric(impl, path, field_name)
        summary[name] = common.median(values)
        summary["spreads"][name] = common.spread(values)
        if error and not values:
            summary["errors"][name] = error

    take("seq", ("sequential",), "us_per_call")
    for c in args.concurrency:
        take(f"c{c}", ("concurrent", str(c)), "us_per_call")
    take("hash", ("create_hash",), "messages_per_s")

    lo, hi = min(args.concurrency), max(args.concurrency)
    scaling = []
    for run in impl.runs:
        try:
            scaling.append(run["concurrent"][str(hi)]["us_per_call"] / run["concurrent"][str(lo)]["us_per_call"])
        except (KeyError, TypeError, ZeroDivisionError):
            pass
    summary["scaling"] = common.median(scaling)  # median over rounds of the per-round ratio
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _check(value: float | None, goal: float, at_most: bool) -> str:
    if value is None:
        return "?"
    return "✅" if (value <= goal if at_most else value >= goal) else "❌"


def render(impls: list[Impl], args: argparse.Namespace) -> str:
    """Build the Markdown report: one table plus notes and the exact command."""
    lo, hi = min(args.concurrency), max(args.concurrency)
    headers = [
        "implementation",
        "sequential µs/call",
        *[f"{c} concurrent µs/call" for c in args.concurrency],
        f"{hi}÷{lo} per-call",
        "create+hash 1 KB msgs/s",
    ]
    metric_keys = ["seq", *[f"c{c}" for c in args.concurrency], "scaling", "hash"]
    summaries = {impl.key: summarize(impl, args) for impl in impls}
    rows: list[list[str]] = []
    for impl in impls:
        label = impl.label
        if impl.key == "this" and impl.info.get("version"):
            label = f"this project ({impl.info['version']})"
        if impl.error and not impl.runs:
            rows.append([label, f"unavailable: {impl.error}", *["-"] * (len(headers) - 2)])
            continue
        s = summaries[impl.key]
        cells = []
        for key in metric_keys:
            if key in s["errors"]:
                cells.append(f"error: {s['errors'][key]}"[:120])
            elif key == "scaling":
                cells.append(fmt_ratio_plain(s[key]))
            elif key == "hash":
                cells.append(common.fmt_num(s[key]))
            else:
                cells.append(common.fmt_num(s[key], 1))
        rows.append([label, *cells])

    base = summaries.get("0.0.14")
    this = summaries.get("this")
    this_impl = next(impl for impl in impls if impl.key == "this")
    if base and this and this_impl.runs:
        ratios = [common.fmt_ratio(_ratio(this.get(k), base.get(k))) for k in metric_keys]
        ratios[metric_keys.index("scaling")] = "-"
        rows.append(["this project ÷ 0.0.14", *ratios])
        seq_r = _ratio(this["seq"], base["seq"])
        conc_key = "c2000" if 2000 in args.concurrency else f"c{hi}"
        conc_r = _ratio(this[conc_key], base[conc_key])
        hash_r = _ratio(this["hash"], base["hash"])
        goals = ["" for _ in metric_keys]
        goals[metric_keys.index("seq")] = f"≤ {TARGET_SEQ_RATIO}x {_check(seq_r, TARGET_SEQ_RATIO, True)}"
        goals[metric_keys.index(conc_key)] = f"≤ {TARGET_CONC_RATIO}x {_check(conc_r, TARGET_CONC_RATIO, True)}"
        goals[metric_keys.index("scaling")] = f"≤ {TARGET_SCALING} {_check(this['scaling'], TARGET_SCALING, True)}"
        goals[metric_keys.index("hash")] = f"≥ {TARGET_HASH_RATIO:g}x {_check(hash_r, TARGET_HASH_RATIO, False)}"
        rows.append(["target (this project)", *goals])
    floor = summaries.get("asyncio")
    if floor and this and this_impl.runs:
        over_floor = [_ratio(this.get(k), floor.get(k)) for k in metric_keys]
        cells = [common.fmt_ratio(value) for value in over_floor]
        cells[metric_keys.index("scaling")] = "-"
        cells[metric_keys.index("hash")] = "-"
        rows.append(["this project ÷ plain asyncio", *cells])
        goals = ["" for _ in metric_keys]
        for key in ("seq", *[f"c{c}" for c in args.concurrency]):
            goals[metric_keys.index(key)] = (
                f"≤ {TARGET_FLOOR_RATIO:g}x {_check(over_floor[metric_keys.index(key)], TARGET_FLOOR_RATIO, True)}"
            )
        rows.append(["target (within the floor)", *goals])

    all_spreads = [v for s in summaries.values() for v in s["spreads"].values() if v is not None]
    out = [
        "## Core benchmark: this project vs MiniAgents 0.0.14 / 0.0.35",
        "",
        common.markdown_table(headers, rows),
        "",
        f"- Medians of {args.rounds} rounds; each round runs every implementation once, interleaved "
        f"({', '.join(impl.key for impl in impls)}), each in a fresh subprocess with its own interpreter.",
        f"- Sequential: {args.seq:,} x `await echo.inquire('hello')` resolved one after another in one "
        f"`MiniAgents()` context (after {args.warmup} warm-up calls). Concurrent: C calls started at once, then "
        "`asyncio.gather` of all resolutions, fresh context per C. Times run from the first call to the exit of the "
        "`async with MiniAgents()` block, so background work the calls triggered is included.",
        f"- create+hash: {args.hash:,} x `Message(text=<1024-char str>, n=i).hash_key` in a `MiniAgents()` context.",
        f"- {hi}÷{lo}: per-call cost at {hi} concurrent divided by that at {lo} (median of per-round ratios).",
    ]
    if all_spreads:
        out.append(f"- Largest max/min spread across rounds in any cell: {max(all_spreads) * 100:.0f} %.")
    for impl in impls:
        where = impl.info.get("module") or "?"
        out.append(f"- {impl.label}: `{impl.python}` (API flavour `{impl.api}`), miniagents from `{where}`.")
    out += [
        "",
        "Command:",
        "",
        f"    {common.shown_command()}",
        "",
        "Workload subprocesses (one per implementation per round, run from the repository root):",
        "",
        *(f"    {shown_workload_cmd(impl, args)}" for impl in impls),
    ]
    return "\n".join(out)


def shown_workload_cmd(impl: Impl, args: argparse.Namespace) -> str:
    """The workload command for one implementation, with its PYTHONPATH, as a shell line."""
    env = f"PYTHONPATH={shlex.quote(impl.pythonpath)}" if impl.pythonpath else "env -u PYTHONPATH"
    return f"{env} {shlex.join(workload_cmd(impl, args))}"


def fmt_ratio_plain(value: float | None) -> str:
    """A dimensionless ratio such as 2.41 (or "-")."""
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the benchmark's command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median is reported)")
    parser.add_argument("--seq", type=int, default=2000, help="sequential echo calls per round")
    parser.add_argument(
        "--concurrency",
        type=lambda s: sorted({int(x) for x in s.split(",") if x}),
        default=[250, 1000, 2000, 4000],
        help="comma-separated concurrency levels",
    )
    parser.add_argument("--hash", type=int, default=20000, help="messages created and hashed per round")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up iterations per workload")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per workload subprocess")
    parser.add_argument(
        "--project-python", default=str(default_project_python()), help="interpreter for this project's row"
    )
    parser.add_argument(
        "--with-seed", action="store_true", help="also measure the 0.0.14 reference source tree (extra row)"
    )
    parser.add_argument("--json", type=Path, help="also write raw per-round results to this file")
    return parser.parse_args(argv)


def main() -> None:
    """Entry point."""
    args = parse_args()
    impls = build_impls(args)
    run_rounds(impls, args)
    print(render(impls, args))
    if args.json:
        raw = {
            impl.key: {"label": impl.label, "error": impl.error, "info": impl.info, "runs": impl.runs}
            for impl in impls
        }
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
