"""The `miniagents` command line (needs `miniagents[cli]`): each command a thin wrapper over a documented function
of `replay.inspection`. Errors are one line; usage errors exit with 2, problems found (`verify`, `diff`) with 1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

try:
    import click
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn
except ImportError as _error:  # without the extra (a test hides click to check this message)
    raise ImportError("The miniagents command line needs click and rich: pip install 'miniagents[cli]'") from _error

import orjson

from miniagents.errors import MiniAgentsError
from replay.inspection.chrome_trace import chrome_trace
from replay.inspection.diff import diff_runs
from replay.inspection.html import write_viewer
from replay.inspection.model import RecordedRun, aload_run, aresolve_run_id
from replay.inspection.reading import (
    agc_store,
    aiter_event_lines,
    alist_run_summaries,
    ashow_object,
    averify_store,
    open_existing_store,
    verify_report_lines,
)
from replay.inspection.text import format_seconds, tree_lines
from store.copying import acopy
from store.errors import ForeignDatabaseError, StoreError, StoreUsageError, UnknownHashError, UnknownRunError
from store.jsonl import JSONLStore

T = TypeVar("T")

FORMATS = ("jsonl", "otlp-json", "chrome-trace")
"""The formats of `miniagents export`."""

PROGRESS_DELAY = 1.0
"""Seconds of work after which a terminal shows a progress indicator."""

_USAGE_ERRORS = (StoreUsageError, UnknownRunError, UnknownHashError, ForeignDatabaseError)
"""Errors in what the command was given (exit code 2): no such store, run or hash, a file that is no store."""
_RUN_SUFFIX = re.compile(r"^(?P<store>.+):(?P<run>[A-Za-z0-9_-]+)$")


class CommandError(click.ClickException):
    """A failure that is not a usage error: one line, exit code 1."""

    exit_code = 1


class _Cli(click.Group):
    """A click group whose errors are one line (`miniagents: error: ...`), exit code 2 for usage errors."""

    def main(
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name or "miniagents", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:  # no command given: the help, as click shows it
            error.show()
            code = error.exit_code
        except click.ClickException as error:
            click.echo(f"miniagents: error: {_one_line(error.format_message())}", err=True)
            code = error.exit_code
        except click.Abort:
            click.echo("miniagents: aborted", err=True)
            code = 1
        except ImportError as error:  # an optional dependency a command needs
            click.echo(f"miniagents: error: {_one_line(str(error))}", err=True)
            code = 2
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning the store's and the library's errors into one-line command errors."""
    try:
        return asyncio.run(coroutine)
    except _USAGE_ERRORS as error:
        raise click.UsageError(str(error)) from None
    except (StoreError, MiniAgentsError, OSError) as error:
        raise CommandError(str(error)) from None


class _Progress:
    """What `_progress` yields: `update(done, total)` moves the bar (a spinner until a total is known)."""

    def __init__(self) -> None:
        self.done, self.total = 0, 0
        self.bar: Optional[Progress] = None
        self.task: Optional[TaskID] = None

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=total or None)


@contextlib.asynccontextmanager
async def _progress(description: str) -> AsyncIterator[_Progress]:
    """A progress bar with `description` on a terminal's stderr, shown once the work has taken a second."""
    state = _Progress()
    console = Console(stderr=True)
    if not console.is_terminal:
        yield state
        return

    def show() -> None:
        state.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            console=console, transient=True,
        )  # fmt: skip
        state.task = state.bar.add_task(description, total=state.total or None, completed=state.done)
        state.bar.start()

    timer = asyncio.get_running_loop().call_later(PROGRESS_DELAY, show)
    try:
        yield state
    finally:
        timer.cancel()
        if state.bar is not None:
            state.bar.stop()


def _write(path: Path, content: bytes) -> None:
    try:
        path.write_bytes(content)
    except OSError as error:
        raise CommandError(f"Could not write {path}: {error.strerror or error}") from None


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _echo_lines(lines: list[str]) -> None:
    console = _stdout()
    if not console.is_terminal:
        for line in lines:
            click.echo(line)
        return
    for line in lines:
        stripped = line.lstrip()
        style = "red" if stripped.startswith("!!") else "dim" if stripped.startswith(("·", "<")) else None
        console.print(escape(line), style=style)


def split_store_and_run(target: str) -> tuple[str, Optional[str]]:
    """`STORE[:RUN]` as (store, run): the part after the last colon is a run when it is a plain name (a run id
    or its start) and what comes before is not just a URL scheme."""
    match = _RUN_SUFFIX.match(target)
    if match is None or match["store"].endswith(":"):
        return target, None
    return match["store"], match["run"]


async def aload_from(target: str, run: Optional[str]) -> RecordedRun:
    """Open the store `target` names, read one run of it (the latest when `run` is None) and close it."""
    async with open_existing_store(target) as store, _progress(f"Reading {target}") as progress:
        return await aload_run(store, run, progress.update)


@click.group(name="miniagents", cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Look at the runs a miniagents store recorded. STORE is anything `store.open_store()` opens: a SQLite file,
    a `.jsonl` text recording, a URL."""


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead of a table.")
def runs(store: str, as_json: bool) -> None:
    """List the runs: id, status, start, duration, event count, error."""

    async def alist() -> list[Any]:
        async with open_existing_store(store) as opened:
            return await alist_run_summaries(opened)

    summaries = _run(alist())
    if as_json:
        for summary in summaries:
            click.echo(orjson.dumps(summary.to_json()).decode())
        return
    console = _stdout()
    if console.is_terminal:  # aligned columns, the status coloured; a pipe gets tab-separated fields
        console.print(
            f"{'run':<32}  {'status':<7}  {'started':<25}  {'duration':>9}  {'events':>6}  error", style="bold"
        )
        for summary in summaries:
            duration = format_seconds(summary.duration) if summary.duration is not None else "-"
            colour = {"ok": "green", "failed": "red"}.get(summary.status, "yellow")
            console.print(
                f"{summary.run_id:<32}  [{colour}]{summary.status:<7}[/]  {summary.started or '-':<25}  "
                f"{duration:>9}  {summary.event_count:>6}  {escape(summary.error or '')}"
            )
        return
    for summary in summaries:
        duration = format_seconds(summary.duration) if summary.duration is not None else "-"
        click.echo(
            "\t".join(
                [summary.run_id, summary.status, summary.started or "-", duration, str(summary.event_count)]
                + ([summary.error] if summary.error else [])
            )
        )


@cli.command()
@click.argument("store")
@click.argument("run", required=False)
@click.option("--full", is_flag=True, help="Print texts whole instead of one line each.")
def tree(store: str, run: Optional[str], full: bool) -> None:
    """Print the call tree of a run (default: the latest): position, agent, kwargs, inputs, replies, durations,
    time to first token, token usage, errors."""
    recorded = _run(aload_from(store, run))
    _echo_lines(tree_lines(recorded, full=full))


@cli.command()
@click.argument("store")
@click.argument("hash_key", metavar="HASH")
@click.option("--text", "as_text", is_flag=True, help="Print the object's text instead of its JSON.")
def show(store: str, hash_key: str, as_text: bool) -> None:
    """Print one stored object, whole, as JSON (nested messages spelled out)."""

    async def ashow() -> str:
        async with open_existing_store(store) as opened:
            return await ashow_object(opened, hash_key, text=as_text)

    click.echo(_run(ashow()))


@cli.command()
@click.argument("store")
@click.argument("run", required=False)
def events(store: str, run: Optional[str]) -> None:
    """Print the events of a run (default: the latest) as JSON Lines."""

    async def aprint() -> None:
        async with open_existing_store(store) as opened:
            async for line in aiter_event_lines(opened, run):
                click.echo(line)

    _run(aprint())


@cli.command()
@click.argument("store")
def verify(store: str) -> None:
    """Check the store's integrity: every object re-hashed, every reference and event checked. Exit code 1 when
    there are problems."""

    async def averify() -> Any:
        async with open_existing_store(store) as opened, _progress(f"Verifying {store}"):
            return await averify_store(opened)

    report = _run(averify())
    _echo_lines(verify_report_lines(report))
    if not report.ok:
        click.get_current_context().exit(1)


@cli.command()
@click.argument("left", metavar="STORE[:RUN]")
@click.argument("right", metavar="STORE[:RUN]")
def diff(left: str, right: str) -> None:
    """Compare two runs call by call (aligned by position and agent): which calls differ, with a text diff of
    their inputs, kwargs and replies. Exit code 1 when they differ."""
    left_store, left_run = split_store_and_run(left)
    right_store, right_run = split_store_and_run(right)

    async def aload_both() -> tuple[RecordedRun, RecordedRun]:
        return await aload_from(left_store, left_run), await aload_from(right_store, right_run)

    before, after = _run(aload_both())
    result = diff_runs(before, after)
    _echo_lines(result.lines())
    if result.differs:
        click.get_current_context().exit(1)


@cli.command()
@click.argument("store")
@click.argument("run", required=False)
@click.option("--format", "-f", "format_", type=click.Choice(FORMATS), required=True, help="What to write.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="The file to write.")
@click.option("--endpoint", help="otlp-json: also send the spans to this OTLP/HTTP receiver (base URL).")
@click.option("--content", is_flag=True, help="otlp-json: put message contents into the spans.")
def export(
    store: str, run: Optional[str], format_: str, output: Optional[Path], endpoint: Optional[str], content: bool
) -> None:
    """Write a run (default: the latest) as a text recording (jsonl), OpenTelemetry spans (otlp-json) or a
    Chrome Trace Event file for Perfetto (chrome-trace)."""
    if endpoint is not None and format_ != "otlp-json":
        raise click.UsageError("--endpoint sends OpenTelemetry spans: use it with --format otlp-json.")
    if output is None and endpoint is None:
        raise click.UsageError(f"export --format {format_} needs -o FILE.")
    if format_ == "jsonl":
        assert output is not None
        if os.path.exists(store) and output.exists() and os.path.samefile(store, output):
            raise click.UsageError(f"-o {output} is the store being read; write the text recording to another file.")
        _run(aexport_jsonl(store, run, output))
    elif format_ == "chrome-trace":
        assert output is not None
        recorded = _run(aload_from(store, run))
        _write(output, orjson.dumps(chrome_trace(recorded)))
    else:
        _run(aexport_otlp(store, run, output, endpoint, content))
    if output is not None:
        click.echo(f"wrote {output}", err=True)


async def aexport_jsonl(target: str, run: Optional[str], output: Path) -> None:
    """Write one run of a store as a text recording into `output` (`store.acopy` into a `store.JSONLStore`),
    replacing the file if there is one: written beside it, then renamed, so a failed export leaves it as it was."""
    async with open_existing_store(target) as source, _progress(f"Copying a run of {target}"):
        run_id = await aresolve_run_id(source, run)
        temporary = output.with_name(f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.export.jsonl")
        try:
            await acopy(source, JSONLStore(temporary), run_ids=[run_id])
            os.replace(temporary, output)
        finally:
            temporary.unlink(missing_ok=True)


async def aexport_otlp(
    target: str, run: Optional[str], output: Optional[Path], endpoint: Optional[str], content: bool
) -> None:
    """Write a run's spans as OTLP JSON into `output` and/or send them to an OTLP/HTTP `endpoint`."""
    from replay.inspection.otel import asend_otlp_json, otlp_json_of_run

    recorded = await aload_from(target, run)
    payload = otlp_json_of_run(recorded, include_content=content)
    if output is not None:
        _write(output, orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    if endpoint is not None:
        await asend_otlp_json(payload, endpoint)
        click.echo(
            f"sent {sum(len(item['scopeSpans'][0]['spans']) for item in payload['resourceSpans'])} spans "
            f"to {endpoint}",
            err=True,
        )


@cli.command()
@click.argument("store")
@click.argument("run", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="FILE.html")
def view(store: str, run: Optional[str], output: Path) -> None:
    """Write the run viewer (default: the latest run) into one self-contained HTML file: call tree, waterfall with
    token arrivals, full messages, errors, token usage."""
    recorded = _run(aload_from(store, run))
    try:
        write_viewer(recorded, output)
    except OSError as error:
        raise CommandError(f"Could not write {output}: {error.strerror or error}") from None
    click.echo(f"wrote {output}", err=True)


@cli.command()
@click.argument("store")
def gc(store: str) -> None:
    """Delete the objects no event refers to any more; print how many."""

    async def acollect() -> int:
        async with open_existing_store(store) as opened, _progress(f"Collecting garbage in {store}"):
            return await agc_store(opened)

    deleted = _run(acollect())
    click.echo(f"deleted {deleted} object{'s' if deleted != 1 else ''}")


def main(args: Optional[Sequence[str]] = None) -> None:
    """Run the `miniagents` command line (the console script, and `python -m replay`)."""
    cli.main(args, prog_name="miniagents")
