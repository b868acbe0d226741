"""Shared fixtures: a fresh store per test, on SQLite or PostgreSQL.

`TETHER_TEST_DB=postgres` runs every test that uses `db_url` against PostgreSQL: one
throwaway cluster per session (see pg_cluster.py), a fresh database per test. The default
is SQLite: a fresh file per test.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from backend import BACKEND, fresh_database
from helpers import FakeClock
from tether._core import config as _config


def pytest_configure(config: pytest.Config) -> None:
    """Give the processes the tests start a working Ctrl-C, however pytest itself was started.

    A shell that starts a command in the background without job control starts it with
    SIGINT ignored, children inherit an ignored signal, and Python installs no
    KeyboardInterrupt handler in a process that starts with SIGINT ignored: the tests that
    press Ctrl-C on a `tether` process would then see it run on. A handled signal is reset to
    the default in a child at exec, so handling it here restores the default there.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """A PostgreSQL server for the whole session (started only when a test asks for it)."""
    import pg_cluster as pg

    if pg.server_bin() is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (see README)")
    cluster = pg.start_cluster()
    yield cluster
    pg.remove(cluster)


@pytest.fixture
def db_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh store, configured as the process's store for the test."""
    if BACKEND == "postgres":
        url = fresh_database(request)
    else:
        url = f"sqlite:///{tmp_path / 'tether.db'}"
    _config.reset()
    # The test process plays the operator (resume, recover, input) beside the processes it
    # starts and kills: it adopts no stranded execution unless a test turns adoption on, so
    # that what it resumes is what the test asked for. Child processes adopt as any
    # application does (tests/test_recovery.py).
    tether.configure(db=url, adopt=False)
    yield url
    _config.reset()


@pytest.fixture
def client(db_url: str) -> tether.Client:
    return tether.Client(db_url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On PostgreSQL, run only the tests that use a store: the rest ran on SQLite already."""
    if BACKEND != "postgres":
        return
    uses_store = {"db_url", "client", "store", "store_url"}
    keep = [i for i in items if uses_store & set(getattr(i, "fixturenames", ()))]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def clock(db_url: str) -> Iterator[FakeClock]:
    """This process's clock, moved by hand (`clock.advance(seconds)`)."""
    fake = FakeClock()
    tether.configure(clock=fake)
    yield fake
