"""Create (idempotently) the isolated peer virtualenvs under .bench/ that the benchmarks compare against."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / ".bench"

# venv name -> pip requirements installed into it
PEERS: dict[str, tuple[str, ...]] = {
    "miniagents-0.0.14": ("miniagents==0.0.14", "pydantic"),
    "miniagents-0.0.35": ("miniagents==0.0.35",),
    "langgraph": ("langgraph", "langgraph-checkpoint-sqlite", "aiosqlite"),
}

STAMP_NAME = ".bench-installed"

# the reference source tree of MiniAgents 0.0.14 (it differs from the 0.0.14 wheel on PyPI in a few API names)
SEED_DIR = Path(os.environ.get("MINIAGENTS_SEED_DIR", "/work/shared/seed/miniagents-0.0.14"))
SEED_COPY_DIR = BENCH_DIR / "miniagents-0.0.14-seed"


def venv_python(venv_dir: Path) -> Path:
    """Return the interpreter path inside a virtualenv directory."""
    if sys.platform == "win32":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def _stamp_content(requirements: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    return json.dumps({"requirements": list(requirements), "sha256": digest}, sort_keys=True)


def ensure_peer(name: str, quiet: bool = True) -> Path:
    """Create or update the named peer venv (skipped when its stamp matches) and return its python."""
    requirements = PEERS[name]
    venv_dir = BENCH_DIR / name
    python = venv_python(venv_dir)
    stamp = venv_dir / STAMP_NAME
    expected = _stamp_content(requirements)
    if python.exists() and stamp.exists() and stamp.read_text() == expected:
        return python

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        print(f"[peers] creating venv {venv_dir}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=False).create(venv_dir)
    print(f"[peers] installing into {name}: {' '.join(requirements)}", file=sys.stderr)
    pip_cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip_cmd.append("--quiet")
    subprocess.run([*pip_cmd, *requirements], check=True)
    stamp.write_text(expected)
    return python


def ensure_peers(names: list[str] | None = None, quiet: bool = True) -> dict[str, Path]:
    """Ensure every requested peer venv (default: all) exists; return name -> python path."""
    return {name: ensure_peer(name, quiet=quiet) for name in (names or list(PEERS))}


def ensure_seed_copy() -> Path | None:
    """Copy the 0.0.14 reference source into .bench/ as an importable package; return the dir for PYTHONPATH.

    The reference tree has no `__init__.py` files (namespace packages), which an installed regular `miniagents`
    package would shadow, so the copy gets empty ones. Returns None when the reference source is absent.
    """
    source = SEED_DIR / "miniagents"
    if not source.is_dir():
        return None
    target = SEED_COPY_DIR / "miniagents"
    stamp = SEED_COPY_DIR / STAMP_NAME
    fingerprint = json.dumps(
        sorted((str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns) for p in source.rglob("*.py"))
    )
    if stamp.exists() and stamp.read_text() == fingerprint:
        return SEED_COPY_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for directory in [target, *[d for d in target.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch(exist_ok=True)
    stamp.write_text(fingerprint)
    return SEED_COPY_DIR


def installed_version(python: Path, distribution: str) -> str:
    """Return the version of a distribution installed in the interpreter's environment (or 'unknown')."""
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def main() -> None:
    """Command-line entry point: set up the peer venvs and print their interpreters as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"peer venvs to set up (default: all of {', '.join(PEERS)})")
    parser.add_argument("--verbose", action="store_true", help="show pip output")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(unknown)}")
    pythons = ensure_peers(args.names or None, quiet=not args.verbose)
    print(json.dumps({name: str(path) for name, path in pythons.items()}, indent=2))


if __name__ == "__main__":
    main()
