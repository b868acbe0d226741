"""Group commit: concurrent checkpoint commits of one process share one statement.

The mechanics (`GroupCommit`) are tested with a write function under the test's control, so
that who ends up in which batch is decided by the test, not by timing. The PostgreSQL
statement is tested on a real server; a batch is formed on purpose by holding a lock on the
checkpoints table while the callers queue up behind the first one.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from backend import postgres_only
from store._rows import NOW, start
from tether._core.persist import persist
from tether.errors import StoreUnavailable
from tether.store import CheckpointRow, Commit, EventRow, _group_commit
from tether.store._group_commit import GroupCommit

# --- the mechanics ---------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Block until `condition()` holds (a failure after 30 s, not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


class Calls:
    """Runs `group.commit(item)` for each item on its own thread; collects results/errors."""

    def __init__(self, group: GroupCommit[Any, Any]) -> None:
        self.group = group
        self.results: dict[Any, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, item: Any) -> None:
        def run() -> None:
            try:
                self.results[item] = self.group.commit(item)
            except BaseException as exc:
                self.results[item] = exc

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()

    def join(self) -> dict[Any, Any]:
        for thread in self.threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a caller hangs"
        return self.results


def queued(group: GroupCommit[Any, Any]) -> int:
    return len(group._queue) + len(group._inbox)  # the inbox: callers on event loops


class Gate:
    """A write function whose first call blocks until released, recording every batch."""

    def __init__(self, fail: Callable[[list[Any]], None] | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.threads: list[threading.Thread] = []
        self.open = threading.Event()
        self.entered = threading.Event()
        self.fail = fail

    def write(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.threads.append(threading.current_thread())
        if len(self.batches) == 1:
            self.entered.set()
            self.open.wait(30)
        if self.fail is not None:
            self.fail(items)
        return [f"done {item}" for item in items]


def batch_behind_a_first_write(gate: Gate, items: list[Any], *, key: Any = None) -> dict[Any, Any]:
    """Commit `items[0]` and hold its write until all others are queued, then let it go."""
    group: GroupCommit[Any, Any] = GroupCommit(
        gate.write, key=key or (lambda item: item), shared=(StoreUnavailable,)
    )
    calls = Calls(group)
    calls.start(items[0])
    assert gate.entered.wait(30)
    for item in items[1:]:
        calls.start(item)
    wait_for(lambda: queued(group) == len(items) - 1, "every caller queued")
    gate.open.set()
    return calls.join()


def test_callers_queued_behind_a_write_share_the_next_batch() -> None:
    gate = Gate()
    results = batch_behind_a_first_write(gate, list(range(8)))
    assert gate.batches == [[0], [1, 2, 3, 4, 5, 6, 7]]
    assert results == {i: f"done {i}" for i in range(8)}


def test_a_lone_caller_writes_on_its_own_thread() -> None:
    gate = Gate()
    gate.open.set()
    group: GroupCommit[int, str] = GroupCommit(gate.write, key=lambda i: i, shared=())
    assert [group.commit(i) for i in range(3)] == ["done 0", "done 1", "done 2"]
    assert gate.batches == [[0], [1], [2]]
    assert set(gate.threads) == {threading.current_thread()}


def test_items_with_the_same_key_never_share_a_batch() -> None:
    gate = Gate()
    items = [("e1", 0), ("e1", 1), ("e2", 1), ("e1", 1), ("e3", 1)]
    results = batch_behind_a_first_write(gate, items, key=lambda item: item[1])
    assert gate.batches[0] == [("e1", 0)]
    for batch in gate.batches:
        keys = [item[1] for item in batch]
        assert len(keys) == len(set(keys))
    assert sorted(item for batch in gate.batches for item in batch) == sorted(items)
    assert results == {item: f"done {item}" for item in items}


def test_the_next_batch_waits_only_for_callers_that_come_back() -> None:
    # An execution's end is its caller's last item: gathering the next batch does not count
    # on it (that thread is busy claiming other work meanwhile).
    gate = Gate()
    group: GroupCommit[Any, Any] = GroupCommit(
        gate.write, key=lambda item: item, shared=(),
        rejoins=lambda item: not str(item).startswith("end"),
    )  # fmt: skip
    calls = Calls(group)
    calls.start(0)
    assert gate.entered.wait(30)
    items = [1, 2, "end-a", 3, "end-b"]
    for item in items:
        calls.start(item)
    wait_for(lambda: queued(group) == len(items), "every caller queued")
    gate.open.set()
    results = calls.join()
    assert gate.batches == [[0], items]
    assert results == {item: f"done {item}" for item in [0, *items]}
    assert group._last_size == 3


def _gathering(monkeypatch: pytest.MonkeyPatch) -> tuple[Gate, GroupCommit[int, str]]:
    """An open gate and a group commit as after a slow batch of three: its next leader
    gathers for up to a minute, unless the callers it waits for wake it first."""
    monkeypatch.setattr(_group_commit, "_MAX_GATHER_SECONDS", 60.0)
    gate = Gate()
    gate.open.set()
    group: GroupCommit[int, str] = GroupCommit(gate.write, key=lambda i: i, shared=())
    group._last_size, group._last_seconds = 3, 60.0
    return gate, group


def test_callers_on_an_event_loop_wake_the_leader_that_gathers_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The leader would gather for a minute: only the callers' arrival can end its wait.
    gate, group = _gathering(monkeypatch)

    async def main() -> list[str]:
        first = group.commit_async(0)
        # Until the writer thread leads for it and gathers the two others.
        await asyncio.to_thread(wait_for, lambda: group._gather == 3, "the leader gathering")
        rest = [group.commit_async(1), group.commit_async(2)]
        return await asyncio.wait_for(asyncio.gather(first, *rest), timeout=30)

    assert asyncio.run(main()) == ["done 0", "done 1", "done 2"]
    assert gate.batches == [[0, 1, 2]]


def test_callers_on_threads_wake_the_leader_that_gathers_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate, group = _gathering(monkeypatch)
    calls = Calls(group)
    calls.start(0)  # leads on its own thread, and gathers
    wait_for(lambda: group._gather == 3, "the leader gathering")
    calls.start(1)
    calls.start(2)
    assert calls.join() == {0: "done 0", 1: "done 1", 2: "done 2"}
    assert gate.batches == [[0, 1, 2]]


def test_no_wake_of_a_gathering_leader_is_lost_whenever_its_callers_arrive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each round the writer thread gathers for a minute, and the callers arrive before it
    # offers its wake, while it counts, or while it waits: a lost wake would hold a round
    # for the minute, past the 30 s this allows it.
    gate, group = _gathering(monkeypatch)

    async def main() -> None:
        for round_ in range(300):
            group._last_size, group._last_seconds = 3, 60.0
            items = [3 * round_ + i for i in range(3)]
            first = group.commit_async(items[0])
            if round_ % 3 == 1:
                await asyncio.sleep(0)  # let the writer thread get at the lock meanwhile
            elif round_ % 3 == 2:
                await asyncio.to_thread(wait_for, lambda: group._gather == 3, "gathering")
            rest = [group.commit_async(item) for item in items[1:]]
            done = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=30)
            assert done == [f"done {item}" for item in items]

    asyncio.run(main())
    assert all(len(batch) == 3 for batch in gate.batches)


def test_what_follows_a_write_on_a_loop_runs_for_every_caller_before_it_wakes() -> None:
    # The first write is held until all four are queued, so the last three share a batch: 2's
    # caller is cancelled meanwhile, 3's write fails, and 1's follow-up raises.
    def fail(items: list[Any]) -> None:
        if 3 in items:
            raise ValueError("item 3 cannot be stored")

    gate = Gate(fail)
    group: GroupCommit[int, str] = GroupCommit(gate.write, key=lambda i: i, shared=())
    followed: list[tuple[int, str | None, bool]] = []
    reported: list[BaseException] = []

    async def main() -> list[Any]:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context["exception"])
        )
        futures: list[asyncio.Future[str]] = []

        def then(item: int, outcome: str | None) -> None:
            followed.append((item, outcome, futures[item].done()))
            if item == 1:
                raise RuntimeError("the follow-up of 1 failed")

        for item in range(4):
            futures.append(group.commit_async(item, functools.partial(then, item)))
            if item == 0:
                await asyncio.to_thread(gate.entered.wait, 30)
        futures[2].cancel()
        await asyncio.to_thread(wait_for, lambda: queued(group) == 3, "every caller queued")
        gate.open.set()
        return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=30)

    results = asyncio.run(main())
    assert results[:2] == ["done 0", "done 1"]
    assert isinstance(results[2], asyncio.CancelledError)
    assert isinstance(results[3], ValueError)
    # Each ran once, on the loop, before its caller was answered; the cancelled caller's too.
    assert sorted(followed) == [
        (0, "done 0", False), (1, "done 1", False), (2, "done 2", True), (3, None, False)
    ]  # fmt: skip
    assert [str(exc) for exc in reported] == ["the follow-up of 1 failed"]


def test_a_store_error_reaches_every_caller_of_the_batch_each_with_its_own_exception() -> None:
    def fail(items: list[Any]) -> None:
        raise StoreUnavailable("the database went away")

    gate = Gate(fail)
    results = batch_behind_a_first_write(gate, list(range(5)))
    assert gate.batches == [[0], [1, 2, 3, 4]]  # each batch tried once: no retry per item
    errors = list(results.values())
    assert all(isinstance(e, StoreUnavailable) for e in errors)
    assert len({id(e) for e in errors}) == 5


def test_a_faulty_item_fails_alone_and_the_others_of_its_batch_are_written() -> None:
    def fail(items: list[Any]) -> None:
        if 3 in items:
            raise ValueError("item 3 cannot be stored")

    gate = Gate(fail)
    results = batch_behind_a_first_write(gate, list(range(6)))
    assert isinstance(results.pop(3), ValueError)
    assert results == {i: f"done {i}" for i in (0, 1, 2, 4, 5)}
    assert gate.batches[1] == [1, 2, 3, 4, 5]  # then each again alone
    assert gate.batches[2:] == [[1], [2], [3], [4], [5]]


def test_an_interrupted_leader_leaves_no_caller_waiting() -> None:
    gate = Gate()
    group: GroupCommit[int, str] = GroupCommit(gate.write, key=lambda i: i, shared=())
    calls = Calls(group)

    def interrupted(items: list[int]) -> None:
        if 0 not in items:
            raise KeyboardInterrupt

    gate.fail = interrupted
    calls.start(0)
    assert gate.entered.wait(30)
    for i in (1, 2, 3):
        calls.start(i)
    wait_for(lambda: queued(group) == 3, "every caller queued")
    gate.open.set()
    results = calls.join()
    assert results[0] == "done 0"
    outcomes = [type(results[i]) for i in (1, 2, 3)]
    # The one that led the second batch sees the interruption, the others that the store
    # did not answer.
    assert sorted(t.__name__ for t in outcomes) == [
        "KeyboardInterrupt", "StoreUnavailable", "StoreUnavailable",
    ]  # fmt: skip
    # The group is usable afterwards.
    gate.fail = None
    assert group.commit(9) == "done 9"


# --- the PostgreSQL statement ------------------------------------------------------------------


@pytest.fixture
def store(store_url: str) -> Iterator[Any]:
    from tether.store.postgres import PostgresStore

    opened = PostgresStore(store_url, connect_timeout=2)
    yield opened
    opened.close()


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    from backend import BACKEND, fresh_database

    if BACKEND != "postgres":
        pytest.skip("needs TETHER_TEST_DB=postgres")
    return fresh_database(request)


def ckpt(position: int, status: str = "succeeded", result: str = '"ok"') -> CheckpointRow:
    return CheckpointRow(str(position), "step", "fp", status, result, None, None, NOW, NOW + 1)


def event(execution_id: str, position: int, message: str) -> EventRow:
    return EventRow(execution_id, str(position), NOW, "info", "log", message)


Commits = list[tuple[str, str, CheckpointRow, list[EventRow]]]


def finish(store: Any, execution_id: str, token: str, status: str = "succeeded") -> Any:
    """A call that finishes an execution, for `one_batch`."""
    return lambda: store.finish(execution_id, token, status=status, result="1", error=None, now=NOW)


def one_batch(
    store: Any, url: str, commits: Commits, *, calls: list[Callable[[], Any]] = ()
) -> tuple[list[Any], list[int]]:
    """Commit all of `commits` (through the public record_checkpoint) and make the `calls`
    in one batch; return their outcomes in order, with the sizes of every batch written."""
    sizes: list[int] = []
    write = store._write_group

    def spy(batch: list[Any]) -> list[Commit]:
        sizes.append(len(batch))
        return write(batch)  # type: ignore[no-any-return]

    store._group._write = spy
    leader = f"leader-{uuid.uuid4().hex[:8]}"
    start(store, leader, "tok-leader")
    results: dict[int, Any] = {}
    threads: list[threading.Thread] = []

    def call(i: int, make: Callable[[], Any]) -> None:
        try:
            results[i] = make()
        except BaseException as exc:
            results[i] = exc

    every = [
        lambda c=c: store.record_checkpoint(*c)  # type: ignore[misc]
        for c in commits
    ] + list(calls)

    with psycopg.connect(url) as locker:
        # Inserts wait for this lock: the leader's write blocks in the server meanwhile.
        locker.execute("LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE")
        lead = threading.Thread(
            target=call, args=(-1, lambda: store.record_checkpoint(leader, "tok-leader", ckpt(0)))
        )
        lead.start()
        wait_for(lambda: sizes == [1], "the leader writing")
        for i, make in enumerate(every):
            threads.append(threading.Thread(target=call, args=(i, make)))
            threads[-1].start()
        wait_for(lambda: queued(store._group) == len(every), "every caller queued")
    for thread in [lead, *threads]:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a caller hangs"
    assert results.pop(-1) is Commit.COMMITTED
    return [results[i] for i in range(len(every))], sizes


@postgres_only
def test_concurrent_commits_from_many_threads_all_land(store: Any) -> None:
    executions = [f"e{i}" for i in range(12)]
    tokens = {eid: start(store, eid, f"tok-{eid}") for eid in executions}
    outcomes: list[Commit] = []

    def run(eid: str) -> None:
        for position in range(25):
            outcomes.append(store.record_checkpoint(eid, tokens[eid], ckpt(position)))

    threads = [threading.Thread(target=run, args=(eid,)) for eid in executions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [Commit.COMMITTED] * (12 * 25)
    for eid in executions:
        assert [c.position for c in store.get_checkpoints(eid)] == [str(p) for p in range(25)]


@postgres_only
def test_a_stale_token_in_a_batch_is_lost_while_the_others_commit(
    store: Any, store_url: str
) -> None:
    for eid in ("a", "b", "c"):
        start(store, eid, f"tok-{eid}")
    outcomes, sizes = one_batch(
        store, store_url,
        [("a", "tok-a", ckpt(0), []), ("b", "stale", ckpt(0), []), ("c", "tok-c", ckpt(0), [])],
    )  # fmt: skip
    assert sizes == [1, 3]
    assert outcomes == [Commit.COMMITTED, Commit.LOST, Commit.COMMITTED]
    assert [len(store.get_checkpoints(eid)) for eid in ("a", "b", "c")] == [1, 0, 1]


@postgres_only
def test_commits_awaited_on_event_loops_get_their_own_answers_lost_ones_read_back(
    store: Any, store_url: str
) -> None:
    # The writer reads back what a LOST commit found (the caller on a loop awaits only the
    # batch's future): a stale token is LOST, and a retry of a commit already written under
    # the lease (as after a lost reply) is COMMITTED, each without touching the others.
    for eid in ("a", "b", "c"):
        start(store, eid, f"tok-{eid}")
    assert store.record_checkpoint("c", "tok-c", ckpt(0)) is Commit.COMMITTED

    async def commit(eid: str, token: str) -> Commit:
        return await store.record_checkpoint_async(eid, token, ckpt(0))  # type: ignore[no-any-return]

    outcomes, sizes = one_batch(store, store_url, [], calls=[
        lambda: asyncio.run(commit("a", "tok-a")),
        lambda: asyncio.run(commit("b", "stale")),
        lambda: asyncio.run(commit("c", "tok-c")),
    ])  # fmt: skip
    assert sizes == [1, 3]
    assert outcomes == [Commit.COMMITTED, Commit.LOST, Commit.COMMITTED]
    assert [len(store.get_checkpoints(eid)) for eid in ("a", "b", "c")] == [1, 0, 1]


@postgres_only
def test_each_caller_of_a_batch_learns_of_its_own_executions_cancel(
    store: Any, store_url: str
) -> None:
    for eid in ("a", "b"):
        start(store, eid, f"tok-{eid}")
    assert store.request_cancel("b", now=NOW) == "running"
    outcomes, sizes = one_batch(
        store, store_url,
        [("a", "tok-a", ckpt(0), []), ("b", "tok-b", ckpt(0), []), ("a", "tok-a", ckpt(1), [])],
    )  # fmt: skip
    assert sizes == [1, 3]
    assert outcomes == [Commit.COMMITTED, Commit.CANCEL_REQUESTED, Commit.COMMITTED]


@postgres_only
def test_a_retrying_row_is_replaced_in_a_batch_and_a_final_one_never(
    store: Any, store_url: str
) -> None:
    for eid in ("a", "b", "c"):
        start(store, eid, f"tok-{eid}")
    assert store.record_checkpoint("a", "tok-a", ckpt(0, "retrying", None)) is Commit.COMMITTED
    assert store.record_checkpoint("b", "tok-b", ckpt(0, "succeeded", '"first"'))
    outcomes, _ = one_batch(
        store, store_url,
        [("a", "tok-a", ckpt(0, "succeeded", '"second try"'), []),
         ("b", "tok-b", ckpt(0, "succeeded", '"overwrite"'), []),
         ("c", "tok-c", ckpt(0), [])],
    )  # fmt: skip
    assert outcomes == [Commit.COMMITTED, Commit.LOST, Commit.COMMITTED]
    assert [(c.status, c.result) for c in store.get_checkpoints("a")] == [
        ("succeeded", '"second try"')
    ]
    assert [c.result for c in store.get_checkpoints("b")] == ['"first"']


@postgres_only
def test_events_commit_with_their_row_and_only_with_it(store: Any, store_url: str) -> None:
    for eid in ("a", "b"):
        start(store, eid, f"tok-{eid}")
    outcomes, _ = one_batch(
        store, store_url,
        [("a", "tok-a", ckpt(0), [event("a", 0, f"line {i}") for i in range(5)]),
         ("b", "stale", ckpt(0), [event("b", 0, "never")]),
         ("a", "tok-a", ckpt(1), [event("a", 1, "next")])],
    )  # fmt: skip
    assert outcomes == [Commit.COMMITTED, Commit.LOST, Commit.COMMITTED]
    assert [(e.position, e.message) for e in store.get_events("a")] == [
        ("0", "line 0"), ("0", "line 1"), ("0", "line 2"), ("0", "line 3"), ("0", "line 4"),
        ("1", "next"),
    ]  # fmt: skip
    assert store.get_events("b") == []


@postgres_only
def test_a_row_the_database_refuses_fails_only_its_own_caller(store: Any, store_url: str) -> None:
    for eid in ("a", "b"):
        start(store, eid, f"tok-{eid}")
    outcomes, _ = one_batch(
        store, store_url,
        [("a", "tok-a", ckpt(0), []),
         ("b", "tok-b", ckpt(0), [event("b", 0, "a NUL \x00 cannot be stored as text")]),
         ("a", "tok-a", ckpt(1), [])],
    )  # fmt: skip
    assert outcomes[0] is Commit.COMMITTED and outcomes[2] is Commit.COMMITTED
    assert isinstance(outcomes[1], Exception) and not isinstance(outcomes[1], StoreUnavailable)
    assert store.get_checkpoints("b") == []


@postgres_only
def test_a_database_gone_mid_batch_fails_every_waiting_caller_and_none_hangs(
    store: Any, store_url: str
) -> None:
    eids = [f"e{i}" for i in range(6)]
    for eid in eids:
        start(store, eid, f"tok-{eid}")
    database = store_url.rsplit("/", 1)[1]
    admin_url = store_url.rsplit("/", 1)[0] + "/postgres"
    results: dict[str, Any] = {}

    def commit(eid: str) -> None:
        try:
            results[eid] = store.record_checkpoint(eid, f"tok-{eid}", ckpt(0))
        except BaseException as exc:
            results[eid] = exc

    threads = [threading.Thread(target=commit, args=(eid,)) for eid in eids]
    with psycopg.connect(store_url) as locker, psycopg.connect(admin_url, autocommit=True) as admin:
        locker.execute("LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE")
        threads[0].start()
        wait_for(lambda: store._commit_conn is not None, "the leader writing")
        for t in threads[1:]:
            t.start()
        wait_for(lambda: queued(store._group) == len(eids) - 1, "every caller queued")
        # The database goes away: no new connections, and the one in use is cut.
        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> %s",
                (database, locker.info.backend_pid),
            )
            for t in threads:
                t.join(timeout=60)
                assert not t.is_alive(), "a caller hangs"
        finally:
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
    assert all(isinstance(results[eid], StoreUnavailable) for eid in eids), results
    # Back: a retry (as the checkpoint's commit does) goes through on a fresh connection.
    again = persist(lambda: store.record_checkpoint("e0", "tok-e0", ckpt(0)))
    assert again is Commit.COMMITTED


@postgres_only
def test_executions_end_in_the_batch_of_other_executions_checkpoints(
    store: Any, store_url: str
) -> None:
    for eid in ("a", "b", "c"):
        start(store, eid, f"tok-{eid}")
    outcomes, sizes = one_batch(
        store, store_url, [("a", "tok-a", ckpt(0), [])],
        calls=[finish(store, "b", "tok-b"), finish(store, "c", "stale", "failed")],
    )  # fmt: skip
    assert sizes == [1, 3]
    assert outcomes == [Commit.COMMITTED, True, False]
    b, c = store.get_execution("b"), store.get_execution("c")
    assert (b.status, b.result, b.lease_token, b.owner, b.finished_at) == (
        "succeeded", "1", None, None, NOW,
    )  # fmt: skip
    assert (c.status, c.lease_token) == ("running", "tok-c")
    # Its last checkpoint (with what it logged) and an execution's end may share a batch:
    # the row is written first.
    outcomes, _ = one_batch(
        store, store_url, [("c", "tok-c", ckpt(0), [event("c", 0, "last words")])],
        calls=[finish(store, "c", "tok-c")],
    )  # fmt: skip
    assert outcomes == [Commit.COMMITTED, True]
    assert [r.position for r in store.get_checkpoints("c")] == ["0"]
    assert [e.message for e in store.get_events("c")] == ["last words"]
    assert store.get_execution("c").status == "succeeded"
