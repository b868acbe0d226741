"""The memory part of the store conformance suite: versions, blobs, idempotency, fencing.

Written against the abstract `tether.store.Store` interface only, so every store passes the
same tests (`TETHER_TEST_DB=postgres` runs them on PostgreSQL).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _rows import T0, race, start

from tether.errors import MemoryConflictError
from tether.store import MemoryRow, Store, memory_write_key

SRC = Path(__file__).resolve().parents[2] / "src"


def value_row(
    key: str = "k",
    *,
    scope: str = "namespace",
    scope_id: str = "default",
    blob: str | None = "h1",
    idempotency_key: str | None = None,
    created_at: float = T0,
) -> MemoryRow:
    return MemoryRow(
        scope=scope,
        scope_id=scope_id,
        key=key,
        version=0,
        blob=blob,
        size=3,
        created_at=created_at,
        idempotency_key=idempotency_key,
    )


def put(store: Store, row: MemoryRow, blobs: list[tuple[str, str]] | None = None) -> MemoryRow:
    stored = store.put_memory(row, blobs if blobs is not None else [("h1", '"a"')])
    assert stored is not None
    return stored


# --- versions ---------------------------------------------------------------------------------


def test_versions_are_numbered_from_one_per_key(store: Store) -> None:
    assert [put(store, value_row("a")).version for _ in range(3)] == [1, 2, 3]
    assert put(store, value_row("b")).version == 1
    assert put(store, value_row("a", scope_id="other")).version == 1
    assert put(store, value_row("a", scope="flow")).version == 1


def test_a_stored_version_reads_back_field_for_field(store: Store) -> None:
    row = MemoryRow(
        scope="execution",
        scope_id="e1",
        key="chat",
        version=99,  # ignored: the store numbers versions
        deleted=False,
        blob=None,
        base_version=None,
        items='["h1","h2"]',
        length=2,
        size=17,
        created_at=T0 + 0.25,
        writer_execution="e1",
        writer_position="7.1.2",
        idempotency_key="e1:7.1.2:abc",
    )
    stored = store.put_memory(row, [("h1", '"a"'), ("h2", '{"b":[1]}')])
    expected = dataclasses.replace(row, version=1)
    assert stored == expected
    assert store.get_memory("execution", "e1", "chat") == expected
    assert store.get_memory("execution", "e1", "chat", 1) == expected
    assert store.get_blobs(["h1", "h2"]) == {"h1": '"a"', "h2": '{"b":[1]}'}


def test_get_memory_finds_the_latest_or_the_version_asked_for(store: Store) -> None:
    put(store, value_row(blob="h1"))
    put(store, value_row(blob="h2"), [("h2", '"b"')])
    latest = store.get_memory("namespace", "default", "k")
    assert latest is not None and (latest.version, latest.blob) == (2, "h2")
    first = store.get_memory("namespace", "default", "k", 1)
    assert first is not None and first.blob == "h1"
    assert store.get_memory("namespace", "default", "k", 3) is None
    assert store.get_memory("namespace", "default", "nope") is None
    assert store.get_memory("namespace", "elsewhere", "k") is None


def test_a_tombstone_is_a_version(store: Store) -> None:
    put(store, value_row())
    tomb = put(store, dataclasses.replace(value_row(blob=None), deleted=True, size=0), [])
    assert (tomb.version, tomb.deleted, tomb.blob) == (2, True, None)
    latest = store.get_memory("namespace", "default", "k")
    assert latest is not None and latest.deleted
    assert put(store, value_row()).version == 3


def test_memory_versions_are_newest_first_and_stop_at_up_to(store: Store) -> None:
    for _ in range(4):
        put(store, value_row())
    put(store, value_row("other"))
    versions = store.memory_versions("namespace", "default", "k")
    assert [r.version for r in versions] == [4, 3, 2, 1]
    assert [r.version for r in store.memory_versions("namespace", "default", "k", up_to=2)] == [
        2,
        1,
    ]
    assert store.memory_versions("namespace", "default", "nope") == []


# --- blobs ------------------------------------------------------------------------------------


def test_a_blob_is_stored_once_and_never_replaced(store: Store) -> None:
    put(store, value_row("a"), [("h1", '"first"')])
    put(store, value_row("b"), [("h1", '"other data, same hash"'), ("h2", '"two"')])
    assert store.get_blobs(["h1", "h2", "missing"]) == {"h1": '"first"', "h2": '"two"'}
    assert store.get_blobs([]) == {}


def test_get_blobs_reads_many_hashes(store: Store) -> None:
    blobs = [(f"h{i:04}", f'"{i}"') for i in range(1200)]
    put(store, value_row(blob=None), blobs)
    found = store.get_blobs([h for h, _ in blobs] + ["h0001"])
    assert found == dict(blobs)


# --- idempotency and fencing ------------------------------------------------------------------


def test_a_write_with_a_known_idempotency_key_returns_the_earlier_version(store: Store) -> None:
    first = put(store, value_row(idempotency_key="e1:3:abc"))
    put(store, value_row())  # someone else writes meanwhile
    again = put(store, value_row(blob="h9", idempotency_key="e1:3:abc"), [("h9", '"x"')])
    assert again == first
    assert [r.version for r in store.memory_versions("namespace", "default", "k")] == [2, 1]


def test_a_retry_forgets_the_memory_writes_at_the_positions_it_forgets(store: Store) -> None:
    token = start(store, "e1")
    for position, blob in (("0", "h1"), ("2", "h2"), ("2.1.0", "h3"), ("10", "h4")):
        row = value_row(f"k{position}", blob=blob, idempotency_key=memory_write_key("e1", position))
        assert store.put_memory(row, [(blob, '"a"')], fence=("e1", token)) is not None
    other = put(store, value_row("k2", idempotency_key=memory_write_key("e2", "2")))
    assert store.finish("e1", token, status="failed", result=None, error='"boom"', now=T0 + 2)

    assert store.reset_for_retry("e1", positions=["2", "2.1.0", "10"], waits=[], now=T0 + 3)

    # Forgotten, in the same transaction: the versions stay, the positions' claims go.
    def claim(key: str, version: int = 1) -> str | None:
        row = store.get_memory("namespace", "default", key, version)
        assert row is not None, "the version stays"
        return row.idempotency_key

    assert claim("k0") == memory_write_key("e1", "0")
    assert (claim("k2"), claim("k2.1.0"), claim("k10")) == (None, None, None)
    assert claim("k2", 2) == other.idempotency_key, "another execution's write stays"
    # The retried call writes again; the call before the retry point still finds its version.
    again = value_row("k10", blob="h4", idempotency_key=memory_write_key("e1", "10"))
    assert put(store, again).version == 2
    first = value_row("k0", blob="h1", idempotency_key=memory_write_key("e1", "0"))
    assert put(store, first).version == 1


def test_a_fenced_write_with_a_stale_token_writes_nothing(store: Store) -> None:
    token = start(store, "e1")
    row = value_row(blob="h5", idempotency_key="e1:0:x")
    assert store.put_memory(row, [("h5", '"five"')], fence=("e1", "stale")) is None
    assert store.get_memory("namespace", "default", "k") is None
    assert store.get_blobs(["h5"]) == {}
    stored = store.put_memory(row, [("h5", '"five"')], fence=("e1", token))
    assert stored is not None and stored.version == 1


def test_a_fenced_write_for_an_unknown_execution_writes_nothing(store: Store) -> None:
    assert store.put_memory(value_row(), [], fence=("nope", "tok")) is None


# --- compare and set --------------------------------------------------------------------------


def test_if_version_writes_only_over_that_version(store: Store) -> None:
    assert put_if(store, 0).version == 1
    with pytest.raises(MemoryConflictError) as caught:
        put_if(store, 0)
    assert (caught.value.key, caught.value.expected, caught.value.actual) == ("k", 0, 1)
    with pytest.raises(MemoryConflictError):
        put_if(store, 2)
    assert put_if(store, 1).version == 2
    assert [r.version for r in store.memory_versions("namespace", "default", "k")] == [2, 1]


def test_an_idempotent_write_found_again_is_no_conflict(store: Store) -> None:
    first = put_if(store, 0, idempotency_key="e1:4")
    assert put_if(store, 0, idempotency_key="e1:4") == first


def test_of_concurrent_writers_over_one_version_exactly_one_wins(store: Store) -> None:
    put(store, value_row())
    won: list[int] = []
    lost: list[int] = []

    def write(i: int) -> None:
        try:
            won.append(put_if(store, 1).version)
        except MemoryConflictError as exc:
            lost.append(exc.actual)

    race(6, write)
    assert won == [2] and lost == [2] * 5


def put_if(store: Store, version: int, idempotency_key: str | None = None) -> MemoryRow:
    stored = store.put_memory(
        value_row(idempotency_key=idempotency_key), [("h1", '"a"')], if_version=version
    )
    assert stored is not None
    return stored


# --- listing ----------------------------------------------------------------------------------


def test_list_memory_gives_the_latest_version_of_each_live_key(store: Store) -> None:
    put(store, value_row("b"))
    put(store, value_row("a"))
    put(store, value_row("a"))
    put(store, value_row("gone"))
    put(store, dataclasses.replace(value_row("gone", blob=None), deleted=True), [])
    put(store, value_row("x", scope="flow", scope_id="f"))
    rows = store.list_memory(scope="namespace", scope_id="default", prefix=None, limit=100)
    assert [(r.key, r.version) for r in rows] == [("a", 2), ("b", 1)]
    everything = store.list_memory(scope=None, scope_id=None, prefix=None, limit=100)
    assert [(r.scope, r.key) for r in everything] == [
        ("flow", "x"),
        ("namespace", "a"),
        ("namespace", "b"),
    ]
    assert [
        r.key for r in store.list_memory(scope="flow", scope_id=None, prefix=None, limit=9)
    ] == ["x"]


def test_list_memory_prefix_is_literal_and_limit_applies(store: Store) -> None:
    for key in ("user:1", "user:2", "user_3", "us%r", "other"):
        put(store, value_row(key))
    keys = lambda prefix, limit=100: [  # noqa: E731
        r.key
        for r in store.list_memory(
            scope="namespace", scope_id="default", prefix=prefix, limit=limit
        )
    ]
    assert keys("user:") == ["user:1", "user:2"]
    assert keys("us%") == ["us%r"]
    assert keys("user_") == ["user_3"]
    assert keys("user", limit=2) == ["user:1", "user:2"]
    assert keys("zzz") == []


# --- concurrency ------------------------------------------------------------------------------


def test_threads_writing_one_key_get_distinct_consecutive_versions(store: Store) -> None:
    workers, per_worker = 6, 25
    versions: list[int] = []

    def write(w: int) -> None:
        for _ in range(per_worker):
            versions.append(put(store, value_row(created_at=T0 + w)).version)

    race(workers, write)
    assert sorted(versions) == list(range(1, workers * per_worker + 1))


def test_threads_storing_the_same_blobs_in_any_order_all_land(store: Store) -> None:
    blobs = [(f"h{i}", f'"{i}"') for i in range(50)]

    def write(w: int) -> None:
        mine = blobs if w % 2 else list(reversed(blobs))
        for i in range(5):
            put(store, value_row(f"k{w}", blob=None, created_at=T0 + i), mine)

    race(6, write)
    assert store.get_blobs([h for h, _ in blobs]) == dict(blobs)
    for w in range(6):
        assert len(store.memory_versions("namespace", "default", f"k{w}")) == 5


def test_threads_repeating_one_idempotent_write_store_it_once(store: Store) -> None:
    found: list[int] = []
    race(6, lambda _: found.append(put(store, value_row(idempotency_key="e1:1:h")).version))
    assert found == [1] * 6
    assert len(store.memory_versions("namespace", "default", "k")) == 1


_CHILD = """
import sys
from tether.store import MemoryRow, open_store

url, label, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(url)
print("ready", flush=True)
sys.stdin.readline()  # wait for "go", so that the processes write at the same time
versions = []
for i in range(count):
    row = MemoryRow("namespace", "default", "shared", 0, blob=f"{label}{i}", size=1,
                    created_at=1.0)
    versions.append(store.put_memory(row, [(f"{label}{i}", '"x"')]).version)
store.close()
print(" ".join(map(str, versions)), flush=True)
"""


def test_processes_writing_one_key_get_distinct_consecutive_versions(
    store: Store, store_url: str
) -> None:
    count = 100
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, store_url, label, str(count)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("p", "q")
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
        outputs = [child.communicate("go\n", timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    versions: list[int] = []
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        versions.extend(int(v) for v in out.split())
    assert sorted(versions) == list(range(1, 2 * count + 1))
    rows = store.memory_versions("namespace", "default", "shared")
    assert sorted(r.blob or "" for r in rows) == sorted(
        f"{label}{i}" for label in ("p", "q") for i in range(count)
    )
