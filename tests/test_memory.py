"""tether.memory: versions, scopes, values, recording inside flows, crashes, storage growth.

Flows live in tests/memory_flows.py so that child processes (killed with SIGKILL, resumed
from another process) can import them by their recorded path.
"""

from __future__ import annotations

import json
import pickle
import signal
import textwrap
import threading
import time
from dataclasses import dataclass

import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse

import memory_flows
import tether
from helpers import retry_until, run_child
from tether import Status
from tether._core.config import store_for
from tether._core.context import Run, current_run
from tether._memory import api as memory
from tether.errors import (
    LeaseLost,
    MemoryConflictError,
    MemoryKeyError,
    MemoryScopeError,
    MemoryValidationError,
    SerializationError,
    UsageError,
)
from tether.store import Claim, ExecutionRow, MemoryRow, Store

NS = {"namespace": "tests"}


@dataclass
class Note:
    text: str
    tags: tuple[str, ...]


class Profile(BaseModel):
    name: str
    age: int


def rows(key: str, scope: str = "namespace", scope_id: str = "tests") -> list[MemoryRow]:
    """The stored versions of a key, oldest first."""
    return list(reversed(store_for().memory_versions(scope, scope_id, key)))


# --- versions, outside a flow -----------------------------------------------------------------


def test_every_write_is_a_new_version_and_old_versions_stay_readable(db_url: str) -> None:
    assert memory.set("k", "one", **NS) == 1
    assert memory.set("k", {"two": 2}, **NS) == 2
    assert memory.get("k", **NS) == {"two": 2}
    assert memory.get("k", version=1, **NS) == "one"
    versions = memory.history("k", **NS)
    assert [(v.version, v.value, v.deleted) for v in versions] == [
        (1, "one", False),
        (2, {"two": 2}, False),
    ]
    assert versions[0].execution_id is None and versions[0].created_at.tzinfo is not None


def test_a_missing_key_gives_the_default_and_a_missing_version_an_error(db_url: str) -> None:
    assert memory.get("nope", **NS) is None
    assert memory.get("nope", [], **NS) == []
    memory.set("k", 1, **NS)
    with pytest.raises(MemoryKeyError, match=r"has no version 5.*tether memory history"):
        memory.get("k", version=5, **NS)
    assert memory.history("nope", **NS) == []


def test_delete_writes_a_tombstone_that_history_keeps(db_url: str) -> None:
    memory.set("k", "v", **NS)
    assert memory.delete("k", **NS) == 2
    assert memory.get("k", "gone", **NS) == "gone"
    assert memory.list(**NS) == []
    assert [(v.version, v.deleted, v.value) for v in memory.history("k", **NS)] == [
        (1, False, "v"),
        (2, True, None),
    ]
    assert memory.get("k", version=1, **NS) == "v"
    with pytest.raises(MemoryKeyError, match=r"nothing to delete.*missing_ok=True"):
        memory.delete("k", **NS)
    assert memory.delete("k", missing_ok=True, **NS) is None
    assert memory.set("k", "back", **NS) == 3


def test_values_come_back_with_their_types(db_url: str) -> None:
    value = {"note": Note("hi", ("a", "b")), "profile": Profile(name="Ada", age=36), "t": (1, 2)}
    memory.set("k", value, **NS)
    assert memory.get("k", **NS) == value
    memory.set("list", [Note("x", ()), (1, 2), {3: "int key"}], **NS)
    assert memory.get("list", **NS) == [Note("x", ()), (1, 2), {3: "int key"}]


def test_type_validates_what_is_read(db_url: str) -> None:
    memory.set("profile", {"name": "Ada", "age": "36"}, **NS)
    assert memory.get("profile", type=Profile, **NS) == Profile(name="Ada", age=36)
    memory.set("profile", {"name": "Ada", "age": "old"}, **NS)
    with pytest.raises(MemoryValidationError, match="does not match Profile") as caught:
        memory.get("profile", type=Profile, **NS)
    assert caught.value.errors[0]["loc"] == ["age"]
    assert memory.get("missing", "as is", type=Profile, **NS) == "as is"  # defaults unchecked
    [first, second] = memory.history("profile", type=Profile, **NS)
    assert first.value == Profile(name="Ada", age=36)
    with pytest.raises(MemoryValidationError):
        second.value  # noqa: B018 - loading is what raises


def test_list_and_entries_show_live_keys_by_prefix(db_url: str) -> None:
    for key in ("user:2", "user:1", "task:1"):
        memory.set(key, key.upper(), **NS)
    memory.set("user:9", 1, **NS)
    memory.delete("user:9", **NS)
    memory.set("user:3", 1, namespace="elsewhere")
    assert memory.list(**NS) == ["task:1", "user:1", "user:2"]
    assert memory.list("user:", **NS) == ["user:1", "user:2"]
    [entry] = memory.entries("task", **NS)
    assert (entry.key, entry.version, entry.value, entry.scope_id) == (
        "task:1",
        1,
        "TASK:1",
        "tests",
    )


# --- mistakes ---------------------------------------------------------------------------------


def test_outside_a_flow_a_call_without_a_scope_says_what_to_pass(db_url: str) -> None:
    with pytest.raises(MemoryScopeError, match=r"namespace=.*flow=.*execution_id="):
        memory.get("k")
    with pytest.raises(MemoryScopeError, match="scope 'flow' outside a flow needs the flow"):
        memory.set("k", 1, scope="flow")
    with pytest.raises(MemoryScopeError, match="needs execution_id="):
        memory.get("k", scope="execution")
    with pytest.raises(MemoryScopeError, match="name different scopes"):
        memory.get("k", namespace="a", flow="f")
    with pytest.raises(MemoryScopeError, match="namespace= does not apply to scope 'flow'"):
        memory.get("k", scope="flow", flow="f", namespace="a")
    with pytest.raises(MemoryScopeError, match="scope is 'execution', 'flow' or 'namespace'"):
        memory.get("k", scope="global")  # type: ignore[arg-type]
    with pytest.raises(MemoryScopeError, match=r"flow= is a @tether\.flow or a flow's name"):
        memory.get("k", flow=42)
    assert isinstance(MemoryScopeError("x"), UsageError)


@pytest.mark.parametrize("key", ["", None, 3, "a\x00b"])
def test_a_bad_key_is_a_usage_error(db_url: str, key: object) -> None:
    with pytest.raises(UsageError, match="memory key"):
        memory.set(key, 1, **NS)  # type: ignore[arg-type]


def test_an_unstorable_value_leaves_the_previous_version_intact(db_url: str) -> None:
    memory.set("k", [1, 2], **NS)
    with pytest.raises(SerializationError, match=r"value of memory key 'k'\[2\]"):
        memory.set("k", [1, 2, threading.Lock()], **NS)
    tether.configure(pickle=False)
    with pytest.raises(SerializationError, match="pickle fallback is off"):
        memory.set("k", {"x": object()}, **NS)
    assert memory.get("k", **NS) == [1, 2]
    assert [v.version for v in memory.history("k", **NS)] == [1]


def test_a_flow_given_as_an_object_or_a_name_is_the_same_scope(db_url: str) -> None:
    memory.set("k", "shared", flow=memory_flows.scoped)
    assert memory.get("k", flow="scoped") == "shared"
    assert memory.get("k", scope="flow", flow="scoped") == "shared"


# --- storage: content addressing and list extension -------------------------------------------


def test_a_list_that_extends_the_previous_version_stores_only_what_it_appends(
    db_url: str,
) -> None:
    memory.set("chat", ["a", "b"], **NS)
    memory.set("chat", ["a", "b", "c"], **NS)
    memory.set("chat", ["a", "b", "c", "d", "e"], **NS)
    first, second, third = rows("chat")
    assert (first.base_version, len(json.loads(first.items or ""))) == (None, 2)
    assert (second.base_version, len(json.loads(second.items or ""))) == (1, 1)
    assert (third.base_version, len(json.loads(third.items or ""))) == (2, 2)
    assert third.length == 5
    assert memory.get("chat", **NS) == ["a", "b", "c", "d", "e"]
    assert [v.value for v in memory.history("chat", **NS)] == [
        ["a", "b"],
        ["a", "b", "c"],
        ["a", "b", "c", "d", "e"],
    ]


def test_a_list_that_does_not_extend_is_stored_whole_and_reads_back(db_url: str) -> None:
    memory.set("chat", ["a", "b", "c"], **NS)
    memory.set("chat", ["a", "x"], **NS)  # shorter, different
    memory.set("chat", ["z", "a", "x"], **NS)  # prepended
    memory.set("chat", "not a list", **NS)
    memory.set("chat", [], **NS)
    memory.set("chat", ["after", "empty"], **NS)
    memory.delete("chat", **NS)
    memory.set("chat", ["after", "empty", "tombstone"], **NS)
    assert [r.base_version for r in rows("chat")] == [None] * 8
    assert [v.value for v in memory.history("chat", **NS)] == [
        ["a", "b", "c"],
        ["a", "x"],
        ["z", "a", "x"],
        "not a list",
        [],
        ["after", "empty"],
        None,
        ["after", "empty", "tombstone"],
    ]


def test_identical_values_are_stored_once(db_url: str) -> None:
    big = {"text": "x" * 10_000}
    for key in ("a", "b", "c"):
        memory.set(key, big, **NS)
    memory.set("list", [big, big, big], **NS)
    hashes = {r.blob for key in "abc" for r in rows(key)}
    assert len(hashes) == 1
    [item] = set(json.loads(rows("list")[0].items or ""))
    assert item in hashes
    assert memory.get("list", **NS) == [big, big, big]


# --- inside a flow ----------------------------------------------------------------------------


def test_calls_in_a_flow_are_recorded_at_positions(client: tether.Client) -> None:
    handle = memory_flows.counter.run("c", 2)
    assert handle.result(timeout=30) == [0, 1]
    calls = client.get(handle.id).checkpoints
    assert [(c.position, c.name, c.result) for c in calls] == [
        # (the scope id the call ran in, the version read or written; 0: none yet)
        ("0", "memory.get:count", ["c", 0]),
        ("1", "memory.set:count", ["c", 1]),
        ("2", "memory.get:count", ["c", 1]),
        ("3", "memory.set:count", ["c", 2]),
    ]
    assert [(v.execution_id, v.position) for v in memory.history("count", namespace="c")] == [
        (handle.id, "1"),
        (handle.id, "3"),
    ]


def test_the_default_scope_in_a_flow_is_the_execution(client: tether.Client) -> None:
    handles = [memory_flows.scoped.run(i) for i in range(4)]
    results = [h.result(timeout=60) for h in handles]
    assert [r["own"] for r in results] == [0, 1, 2, 3]
    for i, handle in enumerate(handles):
        assert memory.get("own", execution_id=handle.id) == i
    # Concurrent read-modify-writes with if_version: each run counted exactly once.
    assert sorted(r["runs"] for r in results) == [1, 2, 3, 4]
    assert memory.get("runs", flow=memory_flows.scoped) == 4


def test_an_if_version_no_next_version_fits_is_a_usage_error(db_url: str) -> None:
    for beyond in (2**31 - 1, 2**40, -1):
        with pytest.raises(tether.UsageError, match="if_version is a version number"):
            memory.set("n", 1, if_version=beyond, **NS)
    assert memory.latest("n", **NS) is None


def test_set_if_version_writes_only_over_the_version_read(db_url: str) -> None:
    assert memory.latest("n", **NS) is None
    assert memory.set("n", 1, if_version=0, **NS) == 1
    with pytest.raises(MemoryConflictError, match="is at version 1, not 0") as caught:
        memory.set("n", 99, if_version=0, **NS)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    # Recorded inside flows: it survives the round trip with its fields.
    again = pickle.loads(pickle.dumps(caught.value))
    assert (type(again), again.key, again.actual, str(again)) == (
        MemoryConflictError,
        "n",
        1,
        str(caught.value),
    )
    current = memory.latest("n", **NS)
    assert current is not None and (current.version, current.value) == (1, 1)
    assert memory.set("n", 2, if_version=current.version, **NS) == 2
    memory.delete("n", **NS)
    tomb = memory.latest("n", **NS)
    assert tomb is not None and tomb.deleted and tomb.version == 3
    assert memory.set("n", 3, if_version=3, **NS) == 4
    assert [v.value for v in memory.history("n", **NS)] == [1, 2, None, 3]
    with pytest.raises(UsageError, match="if_version is a version number"):
        memory.set("n", 5, if_version=-1, **NS)


def test_a_flow_resumed_by_replay_reads_what_it_read_and_writes_once(
    client: tether.Client,
) -> None:
    memory.set("doc", "old", namespace="w")
    handle = memory_flows.waiter.run("w")
    retry_until(lambda: handle.status() is Status.WAITING, what="the wait")
    memory.set("doc", "new", namespace="w")  # another writer, while the flow waits
    client.input(handle.id, "go", True)
    result = handle.result(timeout=30)
    # The replayed first read returns the version it read before; the live one the new one.
    assert (result["before"], result["after"]) == ("old", "new")
    assert result["written"] == 1 and result["mine"] == [1] and result["keys"] == ["mine"]
    assert [v.value for v in memory.history("mine", execution_id=handle.id)] == ["saw old"]
    names = [c.name for c in client.get(handle.id).checkpoints]
    assert names == [
        "memory.get:doc",
        "memory.set:mine",
        "memory.get:doc",
        "memory.history:mine",
        "memory.list:",
    ]


def test_reads_record_the_version_not_the_value(client: tether.Client) -> None:
    memory.set("doc", ["x" * 1000] * 50, namespace="r")
    handle = memory_flows.reader.run("r")
    assert len(handle.result(timeout=30)[0]) == 50
    recorded = client.get(handle.id).checkpoints
    assert [c.result for c in recorded] == [["r", 1], "between", ["r", 1]]
    assert all(len(c.result_json or "") < 20 for c in recorded)


def test_an_unstorable_value_in_a_flow_takes_no_position(client: tether.Client) -> None:
    handle = memory_flows.unstorable.run()
    assert handle.result(timeout=30) == 1
    assert [c.name for c in client.get(handle.id).checkpoints] == ["memory.set:k"]


def test_a_fork_replays_the_source_s_memory_calls_into_its_own_scope(
    client: tether.Client,
) -> None:
    source = memory_flows.forkable.run("t")
    assert source.result(timeout=30) == {
        "seen": ["t", "more"],
        "now": ["t", "more"],
        "versions": [1, 2],
    }
    fork = client.replay(source.id, from_="mark#2")
    # Reads before the fork point see what the source saw; the source's writes are copied
    # into the fork's own execution memory, so its live reads see them too.
    assert fork.result(timeout=30) == source.result(timeout=1)
    copies = memory.history("notes", execution_id=fork.id)
    assert [(v.value, v.execution_id, v.position) for v in copies] == [
        (["t"], fork.id, "0"),
        (["t", "more"], fork.id, "2"),
    ]
    assert [r.base_version for r in rows("notes", "execution", fork.id)] == [None, 1]
    assert client.get(fork.id).warnings == []
    # A fork of the fork: the same versions, copied into its own scope; the others unchanged.
    again = client.replay(fork.id, from_="mark#2")
    assert again.result(timeout=30)["versions"] == [1, 2]
    assert [v.value for v in memory.history("notes", execution_id=again.id)] == [
        ["t"],
        ["t", "more"],
    ]
    assert len(memory.history("notes", execution_id=fork.id)) == 2
    assert len(memory.history("notes", execution_id=source.id)) == 2


# --- crashes: a real process killed with SIGKILL, resumed from another -------------------------

START = textwrap.dedent(
    """
    import sys, memory_flows
    handle = getattr(memory_flows, sys.argv[1]).run(*sys.argv[2:3], *map(int, sys.argv[3:]))
    print(handle.id, flush=True)
    print(repr(handle.result(timeout=60)), flush=True)
    """
)
RESUME = textwrap.dedent(
    """
    import sys, tether, memory_flows  # runs the flows it loaded
    print(repr(tether.Client().resume(sys.argv[1]).result(timeout=120)), flush=True)
    """
)


def crash_then_resume(db_url: str, *start: str, crash: str) -> tuple[str, str]:
    """Run a flow in a child that kills itself at `crash`; resume it in another child.
    Returns (execution id, the resumed result's repr)."""
    crashed = run_child(START, db_url, *start, MEMORY_CRASH=crash)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    resumed = run_child(RESUME, db_url, execution.id)
    assert resumed.returncode == 0, resumed.stderr
    return execution.id, resumed.stdout.strip()


@pytest.mark.parametrize("put", [1, 2, 3])
def test_a_write_committed_just_before_a_crash_is_not_written_again(db_url: str, put: int) -> None:
    # Killed right after the put-th write committed, before the flow recorded its position.
    execution_id, result = crash_then_resume(db_url, "counter", "k", "3", crash=f"put:{put}")
    assert result == "[0, 1, 2]"
    versions = memory.history("count", namespace="k")
    assert [(v.version, v.value, v.position) for v in versions] == [
        (1, 1, "1"),
        (2, 2, "3"),
        (3, 3, "5"),
    ]
    assert {v.execution_id for v in versions} == {execution_id}
    sets = [
        c for c in tether.Client().get(execution_id).checkpoints if c.name == "memory.set:count"
    ]
    assert [c.result for c in sets] == [["k", 1], ["k", 2], ["k", 3]]


def test_a_resumed_flow_reads_what_it_read_before_the_crash(db_url: str) -> None:
    memory.set("doc", "before the crash", namespace="rc")
    crashed = run_child(START, db_url, "reader", "rc", MEMORY_CRASH="commit:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    memory.set("doc", "written while it was down", namespace="rc")
    (execution,) = tether.Client().list()
    resumed = run_child(RESUME, db_url, execution.id)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == repr(["before the crash", "written while it was down"])


def test_a_chat_killed_after_a_history_write_resumes_with_one_version_per_turn(
    db_url: str,
) -> None:
    execution_id, result = crash_then_resume(db_url, "chat", "conv", "4", crash="put:3")
    assert result == "8"
    versions = memory.history("history", namespace="conv", type=list[ModelMessage])
    assert [v.length for v in versions] == [2, 4, 6, 8]
    final = versions[-1].value
    assert [type(m) for m in final] == [ModelRequest, ModelResponse] * 4
    assert [r.base_version for r in rows("history", scope_id="conv")] == [None, 1, 2, 3]
    assert tether.Client().get(execution_id).status is Status.SUCCEEDED


# --- storage growth ---------------------------------------------------------------------------


def bytes_per_version(store: Store, scope_id: str, key: str) -> list[int]:
    """What each version of a key added to the store: its row's stored columns, and the
    blobs it stored first (identical blobs are stored once)."""
    seen: set[str] = set()
    added = []
    for row in reversed(store.memory_versions("namespace", scope_id, key)):
        hashes = json.loads(row.items) if row.items is not None else [row.blob]
        new = [h for h in dict.fromkeys(hashes) if h not in seen]
        seen.update(new)
        data = store.get_blobs(new)
        row_bytes = sum(
            len(str(v)) for v in (row.scope, row.scope_id, row.key, row.items, row.blob,
                                  row.idempotency_key, row.writer_execution)
            if v is not None
        ) + 6 * 8  # fmt: skip
        added.append(row_bytes + sum(len(h) + len(d) for h, d in data.items()))
    return added


def test_a_200_turn_conversation_costs_the_same_bytes_per_turn_throughout(
    client: tether.Client,
) -> None:
    assert memory_flows.chat.run("long", 200).result(timeout=600) == 400
    per_turn = bytes_per_version(store_for(), "long", "history")
    assert len(per_turn) == 200
    first, last = sum(per_turn[:50]) / 50, sum(per_turn[-50:]) / 50
    assert 500 < first < 5_000, per_turn[:5]
    assert last < first * 1.2, (first, last)
    # The measure sees quadratic growth where it exists: the whole history as one value.
    assert memory_flows.chat_whole_value.run("naive", 40).result(timeout=600) == 40
    naive = bytes_per_version(store_for(), "naive", "history")
    assert sum(naive[-10:]) / 10 > 5 * sum(naive[:10]) / 10


# --- fencing ----------------------------------------------------------------------------------


def test_a_process_that_lost_its_lease_writes_nothing(db_url: str) -> None:
    store = store_for()
    now = time.time()
    store.create_execution(
        ExecutionRow(
            id="e1", flow="f", import_path="m:f", script=None, args="{}", status="queued",
            created_at=now, updated_at=now,
        )
    )  # fmt: skip
    claim = Claim(owner="host:1:a", token="current", expires=now + 60)
    assert store.claim("e1", claim, from_statuses=["queued"], expected_token=None, now=now)
    zombie = Run(store, "e1", "f", "taken-over", {}, allow_pickle=True, strict=False)
    token = current_run.set(zombie)
    try:
        with pytest.raises(LeaseLost):
            memory.set("k", "from a zombie", namespace="z")
        with pytest.raises(LeaseLost):
            memory.get("k", namespace="z")  # the lost lease stops the run at its next call
    finally:
        current_run.reset(token)
    assert memory.history("k", namespace="z") == []
    assert store.get_checkpoints("e1") == []
