"""Opening a store changes nothing it should not (issue 23, stage 3).

Reading commands open read-only: no migration, no journal switch, no file made, so they work
on read-only media and leave another application's database as it was. A database that is
not tether's, a schema newer than the code and a damaged file are clear errors, for writing
opens too, and leave the file byte for byte unchanged. A store path that does not exist is
refused by the CLI and `tether worker` (only a flow's first run() or `--create` makes one).
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import tether
from backend import BACKEND, postgres_only
from helpers import child_env, retry_until, run_child, run_cli, spawn_python, tmpfs
from tether._core import config as _config
from tether.errors import NotATetherStore, StoreOpenedReadOnly, StoreVersionError
from tether.store import ExecutionRow, open_store
from tether.store.sqlite import path_from_url

sqlite_only = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite files and mounts")

# Records, in a process of its own (which closes the store cleanly as it exits): a finished
# execution (printed id) with output, one waiting for input, a memory key and a token.
RECORD = """
import tether, cli_flows, approval_flows
from helpers import retry_until
from tether import memory
done = cli_flows.greeting.run("ada")
done.result(timeout=30)
waiting = approval_flows.approval_flow.run("essay")
client = tether.Client()
retry_until(lambda: client.get(waiting.id).status == tether.Status.WAITING, what="the wait")
memory.set("k", {"a": 1}, namespace="n")
client.create_token("ci", "read")
print(done.id)
"""

# As RECORD, then killed before it can close the store: its commits stay in the -wal file.
RECORD_AND_DIE = """
import os, signal, tether, cli_flows
done = cli_flows.greeting.run("ada")
done.result(timeout=30)
print(done.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def read_commands(execution_id: str) -> list[tuple[str, ...]]:
    """Every command that only reads, with what its output shows of RECORD's store."""
    return [
        ("executions", "list"),
        ("executions", "get", execution_id),
        ("executions", "logs", execution_id),
        ("executions", "watch", execution_id),
        ("executions", "waits"),
        ("memory", "list"),
        ("memory", "get", "k", "--namespace", "n"),
        ("memory", "history", "k", "--namespace", "n"),
        ("tokens", "list"),
    ]


SHOWN = ["greeting", "succeeded", "greeting ada", "succeeded", "approve", "k", '"a"', "1", "ci"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file in `folder` with the sha256 of its bytes (so a -wal or -shm file made or
    removed shows, as well as any byte changed)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


def record(url: str) -> str:
    made = run_child(RECORD, url)
    assert made.returncode == 0, made.stderr
    return made.stdout.split()[-1]


def foreign_file(path: Path, *, wal: bool = False) -> None:
    """Another application's SQLite database: its own tables and rows."""
    with closing(sqlite3.connect(path)) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)")
        conn.execute("INSERT INTO users (name) VALUES ('ada'), ('grace')")
        conn.commit()


@pytest.fixture
def media(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own, to be remounted read-only (`read_only(media)`)."""
    with tmpfs(tmp_path / "media", "16m") as where:
        try:
            yield where
        finally:
            _config.reset()  # no connection of this process stays on the mount


def read_only(where: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")


# --- another application's database -----------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_every_read_command_refuses_a_foreign_sqlite_file_and_leaves_it_unchanged(
    tmp_path: Path, wal: bool
) -> None:
    path = tmp_path / "other-app.db"
    foreign_file(path, wal=wal)
    before = snapshot(tmp_path)
    url = f"sqlite:///{path}"
    for command in read_commands("abc"):
        done = run_cli(url, *command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "is not a tether database" in done.stderr, (command, done.stderr)
        assert "users" in done.stderr and "Traceback" not in done.stderr
        assert snapshot(tmp_path) == before, command
    with closing(sqlite3.connect(path)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == ("wal" if wal else "delete"), "the journal mode is the application's"


@sqlite_only
def test_writing_opens_refuse_a_foreign_sqlite_file_too(tmp_path: Path) -> None:
    path = tmp_path / "other-app.db"
    foreign_file(path)
    before = snapshot(tmp_path)
    url = f"sqlite:///{path}"
    with pytest.raises(NotATetherStore, match="orders, users"):
        open_store(url)
    for command in (("executions", "cancel", "abc"), ("memory", "set", "k", "--value", "1",
                    "--namespace", "n"), ("worker", "--import", "cli_flows")):  # fmt: skip
        done = run_cli(url, *command)
        assert done.returncode == 2, (command, done.stderr)
        assert "is not a tether database" in done.stderr
    assert snapshot(tmp_path) == before


@sqlite_only
def test_a_file_that_is_not_sqlite_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 50)
    before = snapshot(tmp_path)
    url = f"sqlite:///{path}"
    for command in (("executions", "list"), ("executions", "cancel", "abc")):
        done = run_cli(url, *command)
        assert done.returncode == 2, done.stderr
        assert "not a SQLite database" in done.stderr
    with pytest.raises(NotATetherStore):
        open_store(url)
    assert snapshot(tmp_path) == before


@sqlite_only
def test_reading_a_store_leaves_its_database_file_as_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    execution_id = record(url)
    before = snapshot(tmp_path)["tether.db"]
    for command, shown in zip(read_commands(execution_id), SHOWN, strict=True):
        done = run_cli(url, *command, COLUMNS="200")
        assert done.returncode == 0 and shown in done.stdout, (command, done.stderr)
    # Readers of a WAL database may leave its (empty) -wal and -shm, as any SQLite reader.
    assert snapshot(tmp_path)["tether.db"] == before


@sqlite_only
def test_an_empty_file_becomes_a_store_only_when_opened_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "tether.db"
    path.touch()
    url = f"sqlite:///{path}"
    with pytest.raises(tether.ConfigurationError, match="reading does not create one"):
        open_store(url, readonly=True)
    assert path.stat().st_size == 0
    open_store(url).close()
    open_store(url, readonly=True).close()


# --- read-only media ----------------------------------------------------------------------------


@sqlite_only
def test_every_read_command_reads_a_store_on_a_read_only_mount(media: Path) -> None:
    url = f"sqlite:///{media / 'tether.db'}"
    execution_id = record(url)
    assert not (media / "tether.db-wal").exists(), "closed cleanly: the WAL was merged"
    read_only(media)
    before = snapshot(media)
    for command, shown in zip(read_commands(execution_id), SHOWN, strict=True):
        done = run_cli(url, *command, COLUMNS="200")
        assert done.returncode == 0, (command, done.stderr)
        assert shown in done.stdout, (command, done.stdout)
    assert snapshot(media) == before
    # A command that writes says the file system is read-only (a store fault, exit 4).
    done = run_cli(url, "memory", "set", "k", "--value", "2", "--namespace", "n")
    assert done.returncode == 4, done.stderr
    assert "read-only" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(media) == before


@sqlite_only
def test_a_read_only_mount_with_commits_still_in_the_wal_is_read_with_them(media: Path) -> None:
    url = f"sqlite:///{media / 'tether.db'}"
    died = run_child(RECORD_AND_DIE, url)
    assert died.returncode == -signal.SIGKILL, died.stderr
    execution_id = died.stdout.split()[-1]
    assert (media / "tether.db-wal").stat().st_size > 0, "the commits are in the WAL only"
    read_only(media)
    before = snapshot(media)
    listed = run_cli(url, "executions", "get", execution_id)
    assert listed.returncode == 0, listed.stderr
    assert "succeeded" in listed.stdout
    assert snapshot(media) == before


@sqlite_only
def test_commits_in_a_wal_without_its_shm_on_a_read_only_mount_are_a_clear_error(
    media: Path,
) -> None:
    url = f"sqlite:///{media / 'tether.db'}"
    died = run_child(RECORD_AND_DIE, url)
    assert died.returncode == -signal.SIGKILL, died.stderr
    (media / "tether.db-shm").unlink()
    read_only(media)
    before = snapshot(media)
    done = run_cli(url, "executions", "list")
    # Reading the file alone (immutable) would silently miss the commits in the -wal.
    assert done.returncode == 4, done.stderr
    assert "no " in done.stderr and "-shm file" in done.stderr and "Copy the three" in done.stderr
    assert snapshot(media) == before


@sqlite_only
def test_a_foreign_file_on_a_read_only_mount_is_refused(media: Path) -> None:
    foreign_file(media / "other-app.db", wal=True)
    read_only(media)
    before = snapshot(media)
    done = run_cli(f"sqlite:///{media / 'other-app.db'}", "executions", "list")
    assert done.returncode == 2 and "is not a tether database" in done.stderr, done.stderr
    assert snapshot(media) == before


# --- schema versions and damage -----------------------------------------------------------------


@sqlite_only
def test_a_newer_schema_is_a_clear_error_and_nothing_is_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    execution_id = record(url)
    with closing(sqlite3.connect(tmp_path / "tether.db")) as conn:
        conn.execute("INSERT INTO tether_schema VALUES (99, '0099_future.sql', 0)")
        conn.commit()
    before = snapshot(tmp_path)
    for command in (("executions", "get", execution_id), ("executions", "cancel", execution_id),
                    ("worker", "--import", "cli_flows")):  # fmt: skip
        done = run_cli(url, *command)
        assert done.returncode == 4, (command, done.stderr)
        assert "schema version 99, newer than this tether's" in done.stderr
        assert "Upgrade tether" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


def test_a_newer_or_older_schema_is_refused_by_read_only_opens(db_url: str) -> None:
    tether.Client(db_url)  # made at this code's schema
    _config.reset()
    newest = execute(db_url, "SELECT max(version) FROM tether_schema")[0][0]
    execute(db_url, f"DELETE FROM tether_schema WHERE version = {newest}")
    with pytest.raises(StoreVersionError, match="older than this tether's") as older:
        open_store(db_url, readonly=True)
    assert (older.value.found, older.value.known) == (newest - 1, newest)
    execute(db_url, f"INSERT INTO tether_schema VALUES ({newest}, 'x', 0), (99, 'future', 0)")
    for readonly in (True, False):
        with pytest.raises(StoreVersionError, match="newer than this tether's"):
            open_store(db_url, readonly=readonly)
    assert execute(db_url, "SELECT count(*) FROM tether_schema")[0][0] == newest + 1


@sqlite_only
def test_a_damaged_file_is_a_clear_error_and_left_as_it_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    record(url)
    path = tmp_path / "tether.db"
    # Fold the WAL into the file first: a process that exits with a connection still open
    # leaves its commits in tether.db-wal, where damaging tether.db would not reach them.
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    # The header and schema page stay; the pages after it (the tables) become noise.
    data[4096:] = bytes((i * 7 + 13) % 251 for i in range(len(data) - 4096))
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    for command in (("executions", "list"), ("executions", "cancel", "abc")):
        done = run_cli(url, *command)
        assert done.returncode == 4, (command, done.stderr)
        assert "is damaged" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


# --- read-only through the API -----------------------------------------------------------------


def test_a_read_only_client_reads_and_refuses_writes(db_url: str) -> None:
    import cli_flows

    handle = cli_flows.greeting.run("ada")
    handle.result(timeout=30)
    reader = tether.Client(db_url, readonly=True)
    assert reader.get(handle.id).status == tether.Status.SUCCEEDED
    assert [r.id for r in reader.list()] == [handle.id]
    with pytest.raises(StoreOpenedReadOnly, match="opened read-only"):
        reader.create_token("nope", "read")
    with pytest.raises(StoreOpenedReadOnly):
        reader.prune(older_than=0)
    assert tether.Client(db_url).tokens() == []


def test_configure_readonly_opens_the_process_stores_read_only(db_url: str) -> None:
    from tether import memory

    memory.set("k", 1, namespace="n")
    _config.reset()
    tether.configure(db=db_url, readonly=True)
    assert memory.get("k", namespace="n") == 1
    with pytest.raises(StoreOpenedReadOnly):
        memory.set("k", 2, namespace="n")
    tether.configure(readonly=False)
    assert memory.get("k", namespace="n") == 1


# --- stores that do not exist -----------------------------------------------------------------


@sqlite_only
def test_a_store_path_that_does_not_exist_is_refused_and_not_made(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo' / 'tether.db'}"
    for command in (*read_commands("abc"), ("worker", "--import", "cli_flows")):
        done = run_cli(url, *command)
        assert done.returncode == 2, (command, done.stderr)
        assert "no tether database at" in done.stderr, done.stderr
    assert "--create" in done.stderr
    with pytest.raises(tether.ConfigurationError, match="reading does not create one"):
        open_store(url, readonly=True)
    assert not (tmp_path / "typo").exists(), "nothing was made"


@sqlite_only
def test_a_worker_outside_any_project_refuses_to_make_a_store(tmp_path: Path) -> None:
    env = {k: v for k, v in child_env("").items() if k != "TETHER_DB"}
    done = subprocess.run(
        [sys.executable, "-m", "tether", "worker", "--import", "cli_flows"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "no tether database at sqlite:///.tether/tether.db" in done.stderr
    assert not (tmp_path / ".tether").exists()


@sqlite_only
def test_a_worker_with_create_makes_the_store_it_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'tether.db'}"
    worker = spawn_python(
        ["-m", "tether", "worker", "--create", "--import", "cli_flows", "--poll", "0.01"],
        url,
        stderr=subprocess.PIPE,
    )
    try:
        retry_until(lambda: run_cli(url, "executions", "list").returncode == 0, what="the store")
    finally:
        worker.kill()
        worker.communicate(timeout=30)
    assert "No executions yet" in run_cli(url, "executions", "list").stdout


# --- PostgreSQL -------------------------------------------------------------------------------


@postgres_only
def test_a_role_that_may_only_select_reads_with_every_read_command(db_url: str) -> None:
    import psycopg

    execution_id = record(db_url)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")  # type: ignore[arg-type]
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")  # type: ignore[arg-type]
    reader = db_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    for command, shown in zip(read_commands(execution_id), SHOWN, strict=True):
        done = run_cli(reader, *command, COLUMNS="200")
        assert done.returncode == 0, (command, done.stderr)
        assert shown in done.stdout, (command, done.stdout)
    refused = run_cli(reader, "executions", "cancel", execution_id)
    assert refused.returncode == 4 and "permission denied" in refused.stderr, refused.stderr


@postgres_only
def test_a_postgres_database_without_tether_tables_is_refused_for_reading(
    db_url: str, pg_cluster: object
) -> None:
    other = pg_cluster.create_database(f"app_{uuid.uuid4().hex[:12]}")  # type: ignore[attr-defined]
    execute(other, "CREATE TABLE users (id integer)")
    done = run_cli(other, "executions", "list")
    assert done.returncode == 2, done.stderr
    assert "has no tether tables" in done.stderr
    assert tables(other) == {"users"}, "reading created nothing"
    execute(other, "CREATE TABLE executions (id integer)")
    with pytest.raises(NotATetherStore, match="executions"):
        open_store(other)
    assert tables(other) == {"users", "executions"}, "a name clash: nothing was created"


def execute(url: str, sql: str) -> list[tuple[object, ...]]:
    """Run SQL on the store's database directly, outside tether."""
    if url.startswith("postgres"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(sql)  # type: ignore[arg-type]
            return list(cursor.fetchall()) if cursor.description else []
    with closing(sqlite3.connect(path_from_url(url))) as conn:
        rows = list(conn.execute(sql).fetchall())
        conn.commit()
        return rows


def tables(url: str) -> set[str]:
    found = execute(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {str(name) for (name,) in found}


# --- the WAL's checkpoints ----------------------------------------------------------------------


@sqlite_only
def test_a_burst_of_commits_stays_in_the_wal_past_sqlites_thousand_pages(tmp_path: Path) -> None:
    """A checkpoint runs inside the commit that crosses `wal_autocheckpoint`, under the store's
    write lock, and syncs twice while every writer of the process waits: the store's
    connections leave 10,000 pages to the WAL, not SQLite's 1,000."""
    path = tmp_path / "tether.db"
    store = open_store(f"sqlite:///{path}")
    try:
        # Each start is a commit of its own, a WAL frame for each B-tree its row enters.
        for i in range(400):
            store.create_execution(
                ExecutionRow(
                    id=f"e{i:04d}", flow="flow", import_path="agents:flow", script=None,
                    args='{"args":[],"kwargs":{}}', status="queued", created_at=1.0 + i,
                    updated_at=1.0 + i,
                )
            )  # fmt: skip
        with closing(sqlite3.connect(path)) as conn:
            # (busy, frames in the WAL, frames checkpointed by this call)
            frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    finally:
        store.close()
    # With SQLite's default the WAL would have been checkpointed and started again from the
    # beginning every 1,000 frames.
    assert frames > 2_000
