"""`PostgresStore` against a real server: the conformance suite, plus what only a shared server does (processes
appending at once, runs deleted from elsewhere, format checks of a schema, URLs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import asyncpg
import pytest

import miniagents
from miniagents import Message
from miniagents.events import EventKind
from store import (
    EventStore,
    ForeignDatabaseError,
    PostgresStore,
    RunStatus,
    SchemaVersionError,
    StoreOpenError,
    StoreUsageError,
    StoreWriteError,
    open_store,
)
from store import postgres as postgres_module
from store.testing import StoreConformance, arecord_events, arun_flow, message_event

WORKER = Path(__file__).with_name("_postgres_worker.py")


async def aquery(dsn: str, sql: str, *parameters: Any) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(sql, *parameters))
    finally:
        await connection.close()


def with_schema(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"


async def arelations(dsn: str, schema: str) -> list[str]:
    """`kind name` of everything in a schema, to tell that a refused schema was left untouched."""
    rows = await aquery(
        dsn,
        "SELECT c.relkind::text, c.relname::text FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 ORDER BY c.relname",
        schema,
    )
    return [f"{row[0]} {row[1]}" for row in rows]


class TestPostgresStore(StoreConformance):
    separate_instances_share_data = True

    dsn: str

    @pytest.fixture(autouse=True)
    def _database(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    def make_store(self, **options: Any) -> EventStore:
        return PostgresStore(self.dsn, **options)

    def reopened(self, store: EventStore) -> EventStore:
        assert isinstance(store, PostgresStore)
        return PostgresStore(store.dsn, schema=store.schema)

    async def acorrupt_object(self, store: EventStore, hash_key: str, body: Optional[bytes]) -> None:
        if body is None:
            await aquery(self.dsn, "DELETE FROM miniagents.objects WHERE hash = $1", bytes.fromhex(hash_key))
        else:
            await aquery(
                self.dsn, "UPDATE miniagents.objects SET body = $1 WHERE hash = $2", body, bytes.fromhex(hash_key)
            )

    async def aset_format_entry(self, store: EventStore, entry: str, value: str) -> None:
        await aquery(self.dsn, "UPDATE miniagents.meta SET value = $1 WHERE key = $2", value, entry)

    async def atamper_event(self, store: EventStore, seq: int, field: str, value: Any) -> None:
        if field == "delete":
            await aquery(self.dsn, "DELETE FROM miniagents.events WHERE seq = $1", seq)
            return
        column = {"hash_key": "hash"}.get(field, field)
        stored = bytes.fromhex(value) if field == "hash_key" else value
        await aquery(self.dsn, f"UPDATE miniagents.events SET {column} = $1 WHERE seq = $2", stored, seq)


# ------------------------------------------------------------------------------------------------ the stored format


async def test_a_new_store_has_its_tables_and_meta_in_its_own_schema(postgres_dsn: str) -> None:
    message = Message(text="hello")
    async with PostgresStore(postgres_dsn, schema="fresh") as store:
        await arecord_events(store, "run", [message_event("run", message)])
    assert sorted(await arelations(postgres_dsn, "fresh")) == [
        "S events_seq",
        "S runs_id_seq",
        "i events_by_hash",
        "i events_by_run",
        "i events_pkey",
        "i kinds_name_key",
        "i kinds_pkey",
        "i meta_pkey",
        "i objects_pkey",
        "i runs_pkey",
        "i runs_run_id_key",
        "r events",
        "r kinds",
        "r meta",
        "r objects",
        "r runs",
    ]
    meta = dict(await aquery(postgres_dsn, "SELECT key, value FROM fresh.meta"))
    assert meta["application"] == "miniagents-store"
    assert meta["schema_version"] == str(postgres_module.SCHEMA_VERSION)
    assert meta["canonical_form_version"] == "1"
    assert meta["hash_algorithm"] == "blake3"
    assert meta["created_by"] == f"miniagents {miniagents.__version__}"
    kinds = await aquery(postgres_dsn, "SELECT name FROM fresh.kinds ORDER BY code")
    assert [row[0] for row in kinds] == [kind.value for kind in EventKind]
    [(hash_value, body)] = await aquery(postgres_dsn, "SELECT hash, body FROM fresh.objects")
    assert hash_value == bytes.fromhex(message.hash_key) and body == message.canonical_bytes


async def test_stores_in_two_schemas_of_one_database_are_separate(postgres_dsn: str) -> None:
    async with (
        PostgresStore(postgres_dsn, schema="team_a") as first,
        PostgresStore(with_schema(postgres_dsn, "team_b")) as second,
    ):
        await arecord_events(first, "a", [message_event("a", Message(text="a"))])
        await arecord_events(second, "b", [message_event("b", Message(text="b"))])
        assert [run.run_id for run in await first.alist_runs()] == ["a"]
        assert [run.run_id for run in await second.alist_runs()] == ["b"]
    assert second.schema == "team_b" and "schema" not in second.dsn


async def test_a_schema_name_is_quoted_everywhere(postgres_dsn: str) -> None:
    odd = 'it\'s "Odd"; --'
    async with PostgresStore(postgres_dsn, schema=odd) as store:
        await arecord_events(store, "run", [message_event("run", Message(text="quoted"))])
        await store.adelete_run("run")
        assert await store.agc() == 1
        assert (await store.averify()).ok
    assert "r events" in await arelations(postgres_dsn, odd)


async def test_a_schema_of_another_application_is_refused_and_left_untouched(postgres_dsn: str) -> None:
    await aquery(postgres_dsn, "CREATE SCHEMA billing")
    await aquery(postgres_dsn, "CREATE TABLE billing.invoices (id integer PRIMARY KEY, total numeric)")
    await aquery(postgres_dsn, "CREATE TABLE billing.meta (key text, value text)")
    before = await arelations(postgres_dsn, "billing")
    with pytest.raises(ForeignDatabaseError, match=r"another application \(.*table invoices.*\).*left untouched"):
        await PostgresStore(postgres_dsn, schema="billing").aopen()
    assert await arelations(postgres_dsn, "billing") == before
    assert await aquery(postgres_dsn, "SELECT * FROM billing.meta") == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("schema_version", "99", "schema version 99.*upgrade miniagents"),
        ("canonical_form_version", "7", "canonical form version 7"),
        ("hash_algorithm", "sha1", "hashes objects with 'sha1'"),
    ],
)
async def test_a_store_of_another_format_is_refused_and_left_untouched(
    postgres_dsn: str, key: str, value: str, expected: str
) -> None:
    async with PostgresStore(postgres_dsn) as store:
        await arecord_events(store, "run", [message_event("run", Message(text="kept"))])
    await aquery(postgres_dsn, "UPDATE miniagents.meta SET value = $1 WHERE key = $2", value, key)
    before = await aquery(postgres_dsn, "SELECT key, value FROM miniagents.meta ORDER BY key")
    with pytest.raises(SchemaVersionError, match=expected):
        await PostgresStore(postgres_dsn).aopen()
    assert await aquery(postgres_dsn, "SELECT key, value FROM miniagents.meta ORDER BY key") == before
    assert len(await aquery(postgres_dsn, "SELECT * FROM miniagents.events")) == 1


async def test_stores_opened_at_once_create_the_schema_once(postgres_dsn: str) -> None:
    stores = [PostgresStore(postgres_dsn, schema="raced") for _ in range(4)]
    await asyncio.gather(*(store.aopen() for store in stores))
    for store in stores:
        await store.aclose()
    kinds = await aquery(postgres_dsn, "SELECT count(*) FROM raced.kinds")
    assert kinds[0][0] == len(EventKind)


async def test_an_unreachable_server_is_an_open_error_naming_it_without_its_password() -> None:
    store = PostgresStore("postgresql://someone:secret@127.0.0.1:1/nowhere", connect_options={"timeout": 5})
    with pytest.raises(
        StoreOpenError, match=r"someone:\*\*\*@127\.0\.0\.1:1/nowhere.*check that the server runs"
    ) as caught:
        await store.aopen()
    assert "secret" not in str(caught.value)
    assert not store.is_open


def test_without_asyncpg_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.setattr(postgres_module, "_ASYNCPG", None)
    store = PostgresStore("postgresql://localhost/db")
    with pytest.raises(ImportError, match=r"pip install 'miniagents\[postgres\]'"):
        asyncio.run(store.aopen())


def test_the_store_package_imports_without_asyncpg() -> None:
    code = "import sys; sys.modules['asyncpg'] = None; import store; print(store.PostgresStore.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "PostgresStore"


# ------------------------------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_urls_open_a_postgres_store(scheme: str) -> None:
    opened = open_store(f"{scheme}://user:pw@db.example:5433/agents?schema=fleet", batch_size=7)
    assert isinstance(opened, PostgresStore)
    assert opened.dsn == f"{scheme}://user:pw@db.example:5433/agents"
    assert opened.schema == "fleet"
    assert opened._pending._batch_size == 7
    assert "pw" not in opened.location and "fleet" in opened.location


async def test_an_opened_url_records_a_run(postgres_dsn: str) -> None:
    answers = await arun_flow(open_store(postgres_dsn), count=2)
    async with open_store(postgres_dsn.replace("postgresql://", "postgres://", 1)) as reader:
        [run] = await reader.alist_runs()
        assert run.status == RunStatus.OK
        assert await reader.aget(answers[0].hash_key) == answers[0]


# ----------------------------------------------------------------------------------------- processes at one server


def start_worker(dsn: str, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), dsn, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_worker(process: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, err
    return out


async def test_processes_appending_at_once_lose_and_duplicate_nothing_and_readers_miss_nothing(
    postgres_dsn: str,
) -> None:
    count, processes = 400, 4
    workers = [start_worker(postgres_dsn, "append", f"run-{index}", str(count)) for index in range(processes)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    tailed: list[int] = []
    async with PostgresStore(postgres_dsn) as tail:
        # a reader that follows the log by `after_seq` while the processes write must see every event once
        while any(worker.poll() is None for worker in workers):
            tailed.extend(event.seq or 0 for event in await tail.aget_events(after_seq=tailed[-1] if tailed else None))
            await asyncio.sleep(0.005)
        outputs = [json.loads(finish_worker(worker)) for worker in workers]
        tailed.extend(event.seq or 0 for event in await tail.aget_events(after_seq=tailed[-1] if tailed else None))
        events = await tail.aget_events()
        runs = {run.run_id: run for run in await tail.alist_runs()}
        report = await tail.averify()
    assert report.ok, report.problems
    seqs = [event.seq for event in events]
    assert tailed == seqs == sorted(set(seqs))
    assert len(events) == processes * (count + 2)
    for index, output in enumerate(outputs):
        run_id = f"run-{index}"
        assert runs[run_id].status == RunStatus.OK and runs[run_id].event_count == count + 2
        mine = [event for event in events if event.run_id == run_id and event.kind is EventKind.MESSAGE]
        assert [event.hash_key for event in mine] == output["hash_keys"]


async def adelete_once_abandoned(store: PostgresStore, run_id: str) -> None:
    """Delete a run (without `force`) as soon as the server noticed that the process recording it is gone."""
    for _ in range(200):
        with contextlib.suppress(StoreUsageError):
            await store.adelete_run(run_id)
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id!r} was never taken as abandoned")


async def test_a_run_recorded_by_a_live_process_is_refused_and_one_whose_process_died_is_deleted(
    postgres_dsn: str,
) -> None:
    worker = start_worker(postgres_dsn, "hold", "busy", "0")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    try:
        async with PostgresStore(postgres_dsn) as admin:
            with pytest.raises(StoreUsageError, match=r"'busy'.*still running.*force=True"):
                await admin.adelete_run("busy")
            assert [run.status for run in await admin.alist_runs()] == [RunStatus.RUNNING]
            assert await admin.agc() == 0  # a gc keeps everything a running run refers to
            worker.kill()  # the process dies mid-run: its connection, and with it the run's lock, ends
            worker.communicate()
            await adelete_once_abandoned(admin, "busy")  # abandoned: no `force` needed
            assert await admin.alist_runs() == []
            assert await admin.agc() == 1
            assert (await admin.averify()).ok
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


async def test_a_run_deleted_by_force_while_running_fails_its_writer_instead_of_coming_back_half(
    postgres_dsn: str,
) -> None:
    worker = start_worker(postgres_dsn, "hold", "busy", "0")
    assert worker.stdout is not None and worker.stdin is not None
    try:
        assert (await asyncio.to_thread(worker.stdout.readline)).strip() == "ready"
        async with PostgresStore(postgres_dsn) as admin:
            await admin.adelete_run("busy", force=True)
            worker.stdin.write("finish\n")
            worker.stdin.flush()
            outcome = (await asyncio.to_thread(worker.stdout.readline)).strip()
            assert outcome.startswith("StoreWriteError") and "Run 'busy' was deleted from" in outcome
            assert await admin.alist_runs() == []  # not brought back with the events written after the deletion
            assert (await admin.averify()).ok
    finally:
        worker.kill()
        worker.communicate()


async def test_a_run_deleted_after_its_writer_lost_its_connection_is_not_recreated(postgres_dsn: str) -> None:
    async with PostgresStore(postgres_dsn, flush_interval=60) as writer, PostgresStore(postgres_dsn) as admin:
        await writer.astart_run("run")
        writer.append(message_event("run", Message(text="first")))
        await writer.aflush()
        # the writer's connection, and with it the lock on its run, is lost; the run then looks abandoned
        assert writer._writer_state is not None
        await aquery(postgres_dsn, "SELECT pg_terminate_backend($1)", writer._writer_state.connection.get_server_pid())
        await adelete_once_abandoned(admin, "run")
        writer.append(message_event("run", Message(text="second")))
        with pytest.raises(StoreWriteError):  # the lost connection
            await writer.aflush()
        await writer.aflush()  # reconnected: the run is gone, so its events are dropped, not written into a new run
        assert await admin.alist_runs() == []
        with pytest.raises(StoreWriteError, match=r"Run 'run' was deleted from .* while it was running"):
            await writer.afinish_run("run")


async def test_a_write_numbers_its_events_only_after_earlier_numbered_writes_committed(postgres_dsn: str) -> None:
    # another process's transaction that numbered its events and has not committed yet holds the numbering lock
    async with PostgresStore(postgres_dsn, flush_interval=60) as store, PostgresStore(postgres_dsn) as reader:
        await store.astart_run("run")
        other = await asyncpg.connect(postgres_dsn)
        try:
            transaction = other.transaction()
            await transaction.start()
            await other.execute("SELECT pg_advisory_xact_lock($1)", store._seq_key)
            earlier = await other.fetchval("SELECT nextval('miniagents.events_seq')")
            store.append(message_event("run", Message(text="later")))
            flush = asyncio.ensure_future(store.aflush())
            await asyncio.sleep(0.3)
            assert not flush.done()  # a reader that saw this event could otherwise miss the earlier one
            assert await reader.aget_events(after_seq=earlier - 1) == []
            await transaction.commit()
            await flush
        finally:
            await other.close()
        [event] = await reader.aget_events(after_seq=earlier)
        assert event.seq is not None and event.seq > earlier
        await store.afinish_run("run")


async def test_the_command_line_reads_a_store_on_a_server(postgres_dsn: str) -> None:
    from click.testing import CliRunner

    from replay.inspection.cli import cli

    await arun_flow(PostgresStore(postgres_dsn), count=2)
    async with PostgresStore(postgres_dsn) as store:
        [run] = await store.alist_runs()

    def invoke() -> Any:
        return CliRunner().invoke(cli, ["runs", postgres_dsn, "--json"], catch_exceptions=False)

    result = await asyncio.to_thread(invoke)
    assert result.exit_code == 0, result.output
    assert run.run_id in result.output and "ok" in result.output


async def test_without_prepared_statement_caches_as_behind_pgbouncer_it_records_and_reads(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn, statement_cache_size=0)
    answers = await arun_flow(store, count=2)
    async with PostgresStore(postgres_dsn, statement_cache_size=0) as reader:
        [run] = await reader.alist_runs()
        assert await reader.aget(answers[1].hash_key) == answers[1]
        assert (await reader.averify()).ok
    assert run.event_count > 2 and store._connect_options["statement_cache_size"] == 0


async def test_an_object_another_process_stores_at_the_same_moment_is_stored_once(postgres_dsn: str) -> None:
    message = Message(text="brought by two writers at once")
    async with PostgresStore(postgres_dsn, flush_interval=60) as store:
        await store.astart_run("run")
        other = await asyncpg.connect(postgres_dsn)
        try:
            transaction = other.transaction()
            await transaction.start()  # the other writer stored the object, and has not committed yet
            await other.execute(
                "INSERT INTO miniagents.objects (hash, body) VALUES ($1, $2)",
                bytes.fromhex(message.hash_key),
                message.canonical_bytes,
            )
            store.append(message_event("run", message))
            flush = asyncio.ensure_future(store.aflush())
            await asyncio.sleep(0.3)
            assert not flush.done()  # its COPY waits for the other transaction
            await transaction.commit()
            await flush  # then fails on the key, and the next attempt finds the object stored
        finally:
            await other.close()
        await store.afinish_run("run")
        assert [event.hash_key for event in await store.aget_events("run")] == [message.hash_key]
        assert await store.aget(message.hash_key) == message
        assert (await store.averify()).ok
