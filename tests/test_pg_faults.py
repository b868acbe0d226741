"""PostgreSQL faults injected for real: the server stopped mid-commit, a commit whose reply
is lost after the server committed (a loopback proxy drops it), and a server that accepts
no writes. Typed errors; executions released, never failed, and finished once the server
is back; an ambiguous commit is read back instead of being taken for a lost lease."""

from __future__ import annotations

import dataclasses
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import store_fault_flows
import tether
from backend import postgres_only
from helpers import retry_until
from tether._core import config as _config
from tether.store import CheckpointRow, Claim, Commit, ExecutionRow
from tether.store.postgres import PostgresStore

pytestmark = postgres_only


@pytest.fixture
def pg(db_url: str, pg_cluster: Any, caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    caplog.set_level(logging.WARNING, logger="tether")
    store_fault_flows.reset()
    # Retries of a failing commit last `lease_seconds`: short, so the release comes soon.
    tether.configure(db=db_url, lease_seconds=1)
    try:
        yield pg_cluster
    finally:
        store_fault_flows.reset()
        _config.reset()
        if not _running(pg_cluster):
            pg_cluster.start()


def _running(cluster: Any) -> bool:
    return cluster.ctl("status").returncode == 0


def test_postgres_stopped_mid_commit_releases_the_execution_which_finishes_once_it_is_back(
    pg: Any, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store_fault_flows.FAULT["in b"] = pg.stop  # b's commit is the first write after the stop
    handle = store_fault_flows.three_steps.run()
    retry_until(lambda: "handed back for" in caplog.text, timeout=90, what="a hand-back")
    assert "is unavailable" in caplog.text and "Is the server running" in caplog.text
    pg.start()
    assert handle.result(timeout=60) == ["a done", "b done", "c done"]
    assert dict(store_fault_flows.RAN) == {"a": 1, "b": 2, "c": 1}
    released = [e.message for e in tether.Client(db_url).get(handle.id).events
                if e.kind == "released"]  # fmt: skip
    # The last error of the retries: the server refused connections (or, had it stopped
    # between a commit and its reply, CommitUnknown); both are StoreUnavailable.
    assert len(released) == 1 and "StoreUnavailable: PostgreSQL" in released[0]


class DropReply:
    """A TCP proxy on 127.0.0.1 to the test cluster. Once armed with a marker, the client
    message that carries it is forwarded, the server's answer (up to ReadyForQuery: the
    statement has committed) is read and thrown away, and both connections are closed: a
    commit whose reply was lost."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.dropped = threading.Event()
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping:
            ready, _, _ = select.select([self.listener], [], [], 0.1)
            if not ready:
                continue
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream, timeout=30)
            self._start(self._pump, client, server)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        cut = False
        with client, server:
            while not self.stopping:
                ready, _, _ = select.select([client, server], [], [], 0.1)
                for side in ready:
                    data = side.recv(65536)
                    if not data:
                        return
                    if side is client:
                        if self.marker is not None and self.marker in data:
                            self.marker, cut = None, True
                        server.sendall(data)
                    elif cut:
                        # The answer to the marked statement: read it to its ReadyForQuery
                        # (committed by then), never pass it on, and hang up on both.
                        while b"Z\x00\x00\x00\x05" not in data:
                            data += server.recv(65536)
                        self.dropped.set()
                        return
                    else:
                        client.sendall(data)

    def close(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join(timeout=10)
        self.listener.close()


def test_a_commit_whose_reply_is_lost_is_read_back_and_the_step_runs_once(
    pg: Any, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = DropReply(pg.port)
    try:
        through = db_url.replace(f":{pg.port}/", f":{proxy.port}/")
        _config.reset()
        tether.configure(db=through, lease_seconds=5)
        # b's result is in its commit's parameters (the flow's own result is cut short).
        store_fault_flows.FAULT["in b"] = lambda: setattr(proxy, "marker", b"b done xx")
        handle = store_fault_flows.three_steps.run()
        assert handle.result(timeout=60) == ["a done", "b done", "c done"]
        assert proxy.dropped.is_set()
        # The retry found b's row written by the commit whose reply was lost: not a lost
        # lease, and b did not run again.
        assert dict(store_fault_flows.RAN) == {"a": 1, "b": 1, "c": 1}
        assert "handed back" not in caplog.text
    finally:
        _config.reset()
        proxy.close()


def test_a_server_that_accepts_no_writes_gives_store_read_only(
    pg: Any, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    database = db_url.rsplit("/", 1)[1]
    with psycopg.connect(pg.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    _config.reset()  # new connections, which take the setting
    tether.configure(db=db_url, lease_seconds=1)
    try:
        with pytest.raises(tether.StoreReadOnly, match="accepts no writes") as raised:
            store_fault_flows.one_step.run("a")
        assert "primary" in str(raised.value)
    finally:
        _config.reset()
        with psycopg.connect(pg.url(), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off')
    tether.configure(db=db_url, lease_seconds=1)
    assert store_fault_flows.one_step.run("b").result(timeout=30) == "b done"


def test_a_lost_commit_reply_is_commit_unknown_and_the_retry_reads_the_row_back(
    pg: Any, db_url: str
) -> None:
    proxy = DropReply(pg.port)
    store = PostgresStore(db_url.replace(f":{pg.port}/", f":{proxy.port}/"))
    try:
        now = time.time()
        store.create_execution(
            ExecutionRow(id="e1", flow="f", import_path="m:f", script=None, args="{}",
                         status="queued", created_at=now, updated_at=now)
        )  # fmt: skip
        claim = Claim("me", "tok", now + 60)
        assert store.claim("e1", claim, from_statuses=("queued",), expected_token=None, now=now)
        row = CheckpointRow(
            position="0",
            name="step",
            fingerprint="fp",
            status="succeeded",
            result='"lost reply marker"',
            started_at=now,
            finished_at=now,
        )
        proxy.marker = b"lost reply marker"
        with pytest.raises(tether.CommitUnknown, match="lost with a commit in flight") as raised:
            store.record_checkpoint("e1", "tok", row)
        assert isinstance(raised.value, tether.StoreUnavailable)  # retried like an outage
        assert proxy.dropped.is_set()
        # It did commit: the retry writes nothing (a final row is never overwritten) and
        # reads the row back instead of reporting a lost lease.
        assert store.record_checkpoint("e1", "tok", row) is Commit.COMMITTED
        assert store.get_checkpoints("e1") == [row]
        # A different row at that position is still refused.
        other = dataclasses.replace(row, result='"another"')
        assert store.record_checkpoint("e1", "tok", other) is Commit.LOST
    finally:
        store.close()
        proxy.close()


def test_a_row_locked_past_the_lock_timeout_gives_store_busy_and_the_execution_waits_it_out(
    pg: Any, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    database = db_url.rsplit("/", 1)[1]
    with psycopg.connect(pg.url(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{database}\" SET lock_timeout = '100ms'")
    _config.reset()  # new connections, which take the setting
    tether.configure(db=db_url, lease_seconds=1)
    locker = psycopg.connect(db_url)  # another client, in a transaction it keeps open
    try:

        def lock_the_execution() -> None:
            locker.execute(
                "SELECT 1 FROM executions WHERE id = %s FOR UPDATE",
                (tether.current().execution_id,),
            )

        # The execution's end updates its row: the lock holds it up (its checkpoint rows
        # are written beside it, so b and c commit).
        store_fault_flows.FAULT["in b"] = lock_the_execution
        handle = store_fault_flows.three_steps.run()
        retry_until(
            lambda: "handed back for StoreBusy" in caplog.text, timeout=60, what="a hand-back"
        )
        assert "could not take a lock in time" in caplog.text
        locker.rollback()
        assert handle.result(timeout=60) == ["a done", "b done", "c done"]
        assert dict(store_fault_flows.RAN) == {"a": 1, "b": 1, "c": 1}  # replayed, not run again
    finally:
        locker.close()
        _config.reset()
