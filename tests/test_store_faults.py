"""Store faults injected for real (DESIGN.md, the fault table): a full disk (a small tmpfs
that fills), a read-only file system, a lock held by another process, a damaged file. Each
gives a typed error with advice; none marks an execution failed or leaves it `running`
with nobody on it, and an execution cut off by one finishes by itself once the store is
back, with every committed call run once."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import store_fault_flows
import tether
from backend import BACKEND
from helpers import retry_until, run_child, run_cli, tmpfs
from tether import Status
from tether._core import config as _config

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite file-system faults")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: small enough to fill in a moment."""
    with tmpfs(tmp_path / "disk", "2m") as where:
        try:
            yield where
        finally:
            _config.reset()  # the store's connections, before the file system goes
            store_fault_flows.reset()


@pytest.fixture
def on_small_disk(small_disk: Path, caplog: pytest.LogCaptureFixture) -> str:
    caplog.set_level(logging.WARNING, logger="tether")
    url = f"sqlite:///{small_disk / 'tether.db'}"
    _config.reset()
    store_fault_flows.reset()
    # The retries of a failing commit last `lease_seconds`: short, so the test sees the
    # release soon.
    tether.configure(db=url, lease_seconds=1)
    return url


def fill(disk: Path) -> None:
    """Write a file until the file system has no byte left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def released_events(url: str, execution_id: str) -> list[str]:
    return [e.message for e in tether.Client(url).get(execution_id).events if e.kind == "released"]


@pytest.mark.parametrize("where", ["in b", "before the end"])
def test_a_disk_that_fills_releases_a_sync_execution_which_finishes_once_space_returns(
    on_small_disk: str, small_disk: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    store_fault_flows.FAULT[where] = lambda: fill(small_disk)
    handle = store_fault_flows.three_steps.run()
    retry_until(
        lambda: "handed back for StoreFull" in caplog.text, what="the execution handed back"
    )
    # Not failed, and not held: the release waits for the disk, and the waker says so.
    retry_until(
        lambda: f"execution {handle.id}: cannot release it yet (StoreFull" in caplog.text,
        what="the waker's word on the release",
    )
    assert tether.Client(on_small_disk).get(handle.id).status is Status.RUNNING
    assert "disk holding" in caplog.text
    (small_disk / "filler").unlink()
    assert handle.result(timeout=60) == ["a done", "b done", "c done"]
    # The call whose commit the full disk refused ran again; every committed one ran once.
    b_ran = 2 if where == "in b" else 1
    assert dict(store_fault_flows.RAN) == {"a": 1, "b": b_ran, "c": 1}
    (released,) = released_events(on_small_disk, handle.id)
    assert "StoreFull" in released and "is full" in released


@pytest.mark.parametrize("where", ["in b", "before the end"])
def test_a_disk_that_fills_releases_an_async_execution_which_finishes_once_space_returns(
    on_small_disk: str, small_disk: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    store_fault_flows.FAULT[where] = lambda: fill(small_disk)
    handle = store_fault_flows.gathered_steps.run()
    retry_until(
        lambda: "handed back for StoreFull" in caplog.text, what="the execution handed back"
    )
    assert tether.Client(on_small_disk).get(handle.id).status is Status.RUNNING
    (small_disk / "filler").unlink()
    assert handle.result(timeout=60) == ["a1 done", "a2 done", "a3 done", "b done "]
    b_ran = 2 if where == "in b" else 1
    assert dict(store_fault_flows.RAN) == {"a1": 1, "a2": 1, "a3": 1, "b": b_ran}
    (released,) = released_events(on_small_disk, handle.id)
    assert "StoreFull" in released


def test_executions_sharing_commit_batches_are_each_released_and_each_finish(
    on_small_disk: str, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_fault_flows.FAULT["in n0"] = lambda: fill(small_disk)
    gate = store_fault_flows.GATE["open"] = threading.Event()
    handles = [store_fault_flows.async_one.run(i) for i in range(8)]
    gate.set()  # all eight run their step together; n0 fills the disk in it
    retry_until(lambda: "handed back for StoreFull" in caplog.text, what="an execution handed back")
    client = tether.Client(on_small_disk)
    assert all(client.get(h.id).status is not Status.FAILED for h in handles)
    (small_disk / "filler").unlink()
    assert [h.result(timeout=60) for h in handles] == [f"n{i} don" for i in range(8)]
    # Each ran once, or twice when the full disk refused its commit; never failed.
    assert set(store_fault_flows.RAN) == {f"n{i}" for i in range(8)}
    assert all(count in (1, 2) for count in store_fault_flows.RAN.values())
    assert store_fault_flows.RAN["n0"] == 2


def test_executions_ending_in_a_shared_batch_on_a_full_disk_are_each_released_and_each_end(
    on_small_disk: str, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_fault_flows.FAULT["end 0"] = lambda: fill(small_disk)
    gate = store_fault_flows.GATE["open"] = threading.Event()
    handles = [store_fault_flows.async_end.run(i) for i in range(8)]
    client = tether.Client(on_small_disk)
    retry_until(
        lambda: all(client.get(h.id).status is Status.RUNNING for h in handles),
        what="every execution running",
    )
    gate.set()  # all eight end together; the first fills the disk before its end is written
    retry_until(lambda: "handed back for StoreFull" in caplog.text, what="an execution handed back")
    assert all(client.get(h.id).status is not Status.FAILED for h in handles)
    (small_disk / "filler").unlink()
    assert [h.result(timeout=60) for h in handles] == [f"e{i} ended" for i in range(8)]
    assert all(client.get(h.id).status is Status.SUCCEEDED for h in handles)


def test_a_read_only_file_system_gives_store_read_only_and_nothing_is_lost(
    on_small_disk: str, small_disk: Path
) -> None:
    # Written by another process: none of this one's threads keeps the file open for
    # writing, which the remount needs.
    first = run_child(
        "import store_fault_flows; print(store_fault_flows.one_step.run('a').result(timeout=30))",
        on_small_disk,
    )
    assert first.stdout.strip() == "a done", first.stderr
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        tether.configure(db=on_small_disk, lease_seconds=1)
        with pytest.raises(tether.StoreReadOnly, match="read-only") as raised:
            store_fault_flows.one_step.run("b")
        assert "writable" in str(raised.value)
        assert isinstance(raised.value, tether.StoreUnavailable)  # transient: retry later
    finally:
        _config.reset()
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    tether.configure(db=on_small_disk, lease_seconds=1)
    assert store_fault_flows.one_step.run("c").result(timeout=30) == "c done"
    assert dict(store_fault_flows.RAN) == {"c": 1}  # b never started: nothing could record it
    assert len(tether.Client(on_small_disk).list()) == 2


_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


def _hold_lock(path: Path) -> subprocess.Popen[str]:
    locker = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


def _let_go(locker: subprocess.Popen[str]) -> None:
    assert locker.stdin is not None
    locker.stdin.close()
    locker.wait(timeout=30)


def test_a_lock_held_by_another_process_past_the_busy_timeout_gives_store_busy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether")
    path = tmp_path / "tether.db"
    url = f"sqlite:///{path}"
    _config.reset()
    store_fault_flows.reset()
    tether.configure(db=url, lease_seconds=1, busy_timeout=0.2)
    try:
        assert store_fault_flows.one_step.run("a").result(timeout=30) == "a done"
        locker = _hold_lock(path)
        try:
            with pytest.raises(tether.StoreBusy, match="busy timeout") as raised:
                store_fault_flows.one_step.run("b")
            assert "0.2s" in str(raised.value) and "TETHER_BUSY_TIMEOUT" in str(raised.value)
        finally:
            _let_go(locker)
        # Taken during a run: the commit is retried, the execution released, and it
        # finishes once the lock is let go.
        lockers: list[subprocess.Popen[str]] = []
        store_fault_flows.FAULT["in b"] = lambda: lockers.append(_hold_lock(path))
        handle = store_fault_flows.three_steps.run()
        retry_until(
            lambda: "handed back for StoreBusy" in caplog.text, what="the execution handed back"
        )
        _let_go(lockers[0])
        assert handle.result(timeout=60) == ["a done", "b done", "c done"]
        # "a": once in one_step, once in three_steps; "b" again after its refused commit.
        assert dict(store_fault_flows.RAN) == {"a": 2, "b": 2, "c": 1}
        assert "StoreBusy" in released_events(url, handle.id)[0]
    finally:
        _config.reset()
        store_fault_flows.reset()


def test_a_damaged_database_gives_store_corrupt_and_is_not_written_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tether.db"
    url = f"sqlite:///{path}"
    _config.reset()
    # Written by another process, whose exit folds the WAL into the file.
    code = (
        "import store_fault_flows\n"
        "for c in 'abcdefgh': store_fault_flows.one_step.run(c).result(30)"
    )
    written = run_child(code, url)
    assert written.returncode == 0, written.stderr
    assert not Path(f"{path}-wal").exists()
    size = path.stat().st_size
    with open(path, "r+b") as db:  # every page but the first (the schema) overwritten
        db.seek(4096)
        db.write(b"\xa5" * (size - 4096))
    damaged = path.read_bytes()
    tether.configure(db=url)
    try:
        with pytest.raises(tether.StoreCorrupt, match="damaged") as raised:
            store_fault_flows.one_step.run("z")
        assert "backup" in str(raised.value)
        with pytest.raises(tether.StoreCorrupt):
            tether.Client(url).list()
    finally:
        _config.reset()
    cli = run_cli(url, "executions", "list")
    assert cli.returncode == 4, cli.stderr  # the store failed (the exit-code table)
    assert "damaged" in cli.stderr and "Traceback" not in cli.stderr
    assert "unexpected" not in cli.stderr
    assert path.read_bytes() == damaged  # nothing was written into it


def test_an_error_escaping_the_executor_hands_the_execution_back_and_result_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether")
    path = tmp_path / "tether.db"
    url = f"sqlite:///{path}"
    _config.reset()
    store_fault_flows.reset()
    tether.configure(db=url)
    client = tether.Client(url)
    try:
        handle = store_fault_flows.waits_for_go.run()
        retry_until(lambda: handle.status() is Status.WAITING, what="the execution parked")
        # Stored data the engine cannot read (the execution's metadata is not JSON): its
        # run fails before any flow code, outside anything the engine handles.
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE executions SET metadata = '{not json' WHERE id = ?", (handle.id,))
        client.input(handle.id, "go", "a")
        with pytest.raises(tether.InvalidStateError, match="internal errors") as raised:
            handle.result(timeout=60)
        assert "recover" in str(raised.value)
        # Each escape was logged with the execution id, released with the reason recorded,
        # and tried again here; never left `running` without a holder.
        assert caplog.text.count(f"execution {handle.id}: the executor thread failed") == 3
        # Read from the store itself: Client.get() decodes the metadata this test broke.
        store = _config.store_for(url)
        row = store.get_execution(handle.id)
        assert row is not None and row.status == "queued" and row.owner is None
        released = [e.message for e in store.get_events(handle.id) if e.kind == "released"]
        assert len(released) == 3 and all("JSONDecodeError" in m for m in released)
        assert store_fault_flows.RAN == {}
    finally:
        _config.reset()
        store_fault_flows.reset()
