"""Run every benchmarks/bench_*.py in turn with this interpreter (what `make bench` calls)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def discover(names: list[str]) -> list[Path]:
    """All bench_*.py scripts (sorted), optionally only those whose name contains one of `names`."""
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(name in s.stem for name in names)]
    return scripts


def main() -> None:
    """Run the scripts one after another, streaming their output; exit non-zero if any failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="only run scripts whose name contains one of these")
    args = parser.parse_args()

    scripts = discover(args.names)
    if not scripts:
        print("no benchmark scripts matched", file=sys.stderr)
        sys.exit(2)
    failed: list[str] = []
    for script in scripts:
        print(f"\n==> {script.relative_to(REPO_ROOT)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)], cwd=REPO_ROOT)
        print(f"<== {script.name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
