"""The conformance suite every Store implementation must pass.

Written against the abstract `tether.store.Store` interface only: the `store` fixture
(tests/store/conftest.py) is parametrized over the available implementations. Tests that
need one implementation's internals sit at the end, clearly separated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from _rows import LEASE, T0, execution, get, lease, race, start

from tether.errors import ConfigurationError, StoreError, StoreOpenedReadOnly
from tether.store import (
    CheckpointRow,
    Claim,
    Commit,
    EventRow,
    ExecutionRow,
    Store,
    TokenRow,
    WaitRow,
    open_store,
)

SRC = Path(__file__).resolve().parents[2] / "src"


# --- helpers ----------------------------------------------------------------------------------


def checkpoint(
    position: str,
    *,
    name: str = "step",
    status: str = "succeeded",
    result: str | None = '{"v":1}',
    error: str | None = None,
    attempts: str | None = None,
) -> CheckpointRow:
    return CheckpointRow(
        position=position,
        name=name,
        fingerprint=f"fp{position}",
        status=status,
        result=result,
        error=error,
        attempts=attempts,
        started_at=T0,
        finished_at=T0 + 0.5,
        metadata=None,
    )


def snapshot(store: Store, execution_id: str) -> tuple[object, ...]:
    """Everything stored about an execution, to compare before and after."""
    row = store.get_execution(execution_id)
    return (
        dataclasses.replace(row) if row else None,
        [dataclasses.replace(c) for c in store.get_checkpoints(execution_id)],
        [dataclasses.replace(e) for e in store.get_events(execution_id)],
    )


# --- executions: create, get, list ------------------------------------------------------------


def test_created_execution_reads_back_field_for_field(store: Store) -> None:
    row = ExecutionRow(
        id="e1",
        flow="research",
        import_path="__main__:research",
        script="/srv/agent.py",
        args='{"args":[1],"kwargs":{"q":"x"}}',
        status="running",
        result=None,
        error=None,
        owner="host:42:abc",
        lease_token="tok",
        lease_expires=T0 + 30.25,
        attempt=1,
        cancel_requested=False,
        created_at=T0 + 0.125,
        updated_at=T0 + 0.5,
        started_at=T0 + 0.5,
        finished_at=None,
        parent_id="p1",
        replay_of="r1",
        metadata='{"k":"v"}',
        options='{"retries":3}',
    )
    store.create_execution(row)
    assert store.get_execution("e1") == row


def test_starts_from_an_event_loop_are_written_together_with_their_keys_kept(
    store: Store,
) -> None:
    # Gathered, they share batches: keyless rows and keyed ones, two of one key among them.
    def keyed(execution_id: str, key: str | None, flow: str = "flow") -> ExecutionRow:
        return dataclasses.replace(execution(execution_id, flow=flow), dedup_key=key)

    rows = [keyed(f"e{i}", None) for i in range(50)]
    rows += [keyed("k1", "order-1"), keyed("k2", "order-1"), keyed("k3", "order-1", "other")]

    async def main() -> list[str]:
        return list(await asyncio.gather(*(store.create_execution_async(r) for r in rows)))

    ids = asyncio.run(main())
    assert ids[:50] == [f"e{i}" for i in range(50)]
    assert ids[50] == ids[51] in ("k1", "k2")  # one of the two holds the key, whichever first
    assert ids[52] == "k3"  # a key belongs to its flow
    for row in rows[:50]:
        assert store.get_execution(row.id) == row
    assert get(store, ids[50]).dedup_key == "order-1"
    (other,) = {"k1", "k2"} - {ids[50]}
    assert store.get_execution(other) is None  # not inserted beside the key's holder


def test_starts_from_many_threads_are_all_recorded_with_their_keys_kept(store: Store) -> None:
    # Threads starting at once share the group commit of starts (one of them writes for the
    # others): each gets its own id back, or the key holder's.
    got: dict[str, str] = {}

    def contend(i: int) -> None:
        for j in range(10):
            key = "shared" if j == 0 else None  # every thread's first start has one key
            row = dataclasses.replace(execution(f"t{i}-{j}"), dedup_key=key)
            got[row.id] = store.create_execution(row)

    race(8, contend)
    holders = {got[f"t{i}-0"] for i in range(8)}
    assert len(holders) == 1 and get(store, holders.pop()).dedup_key == "shared"
    for i in range(8):
        for j in range(1, 10):
            assert got[f"t{i}-{j}"] == f"t{i}-{j}"
            assert get(store, f"t{i}-{j}").id == f"t{i}-{j}"


def test_a_store_opened_read_only_refuses_a_start_and_writes_nothing(
    store: Store, store_url: str
) -> None:
    # A lone start (one thread, nothing else being written) takes the store's shortest write
    # path; read-only, it is refused as every other write is, keyed or not.
    reader = open_store(store_url, readonly=True)
    try:
        for key in (None, "order-1"):
            row = dataclasses.replace(execution(f"e-{key}"), dedup_key=key)
            with pytest.raises(StoreOpenedReadOnly):
                reader.create_execution(row)
            assert store.get_execution(row.id) is None
    finally:
        reader.close()


def test_get_of_unknown_execution_returns_none(store: Store) -> None:
    assert store.get_execution("nope") is None


def test_creating_a_duplicate_id_fails_and_keeps_the_original(store: Store) -> None:
    store.create_execution(execution("e1", flow="first"))
    with pytest.raises(Exception):  # noqa: B017 - the interface names no type for this
        store.create_execution(execution("e1", flow="second"))
    row = get(store, "e1")
    assert row.flow == "first"


def test_execution_ids_by_prefix_are_literal_sorted_and_limited(store: Store) -> None:
    for eid in ["ab_1", "ab%2", "abc", "xab", "Ab"]:
        store.create_execution(execution(eid))
    assert store.execution_ids("ab", limit=10) == ["ab%2", "ab_1", "abc"]
    assert store.execution_ids("ab_", limit=10) == ["ab_1"]
    assert store.execution_ids("ab%", limit=10) == ["ab%2"]
    limited = store.execution_ids("ab", limit=2)
    assert len(limited) == 2 and set(limited) < {"ab%2", "ab_1", "abc"}
    assert store.execution_ids("zz", limit=10) == []


def test_list_executions_is_newest_first(store: Store) -> None:
    for i, eid in enumerate(["b", "c", "a"]):
        store.create_execution(execution(eid, created_at=T0 + i))
    listed = store.list_executions(statuses=None, flow=None, limit=10)
    assert [r.id for r in listed] == ["a", "c", "b"]


def test_list_executions_filters_by_statuses(store: Store) -> None:
    store.create_execution(execution("q", status="queued", created_at=T0))
    store.create_execution(execution("r", status="running", created_at=T0 + 1))
    store.create_execution(execution("s", status="succeeded", created_at=T0 + 2))
    store.create_execution(execution("f", status="failed", created_at=T0 + 3))
    listed = store.list_executions(statuses=["succeeded", "queued"], flow=None, limit=10)
    assert [r.id for r in listed] == ["s", "q"]
    assert [r.id for r in store.list_executions(statuses=["running"], flow=None, limit=10)] == ["r"]


def test_list_executions_filters_by_flow(store: Store) -> None:
    store.create_execution(execution("a1", flow="alpha", created_at=T0))
    store.create_execution(execution("b1", flow="beta", created_at=T0 + 1))
    store.create_execution(execution("a2", flow="alpha", created_at=T0 + 2))
    listed = store.list_executions(statuses=None, flow="alpha", limit=10)
    assert [r.id for r in listed] == ["a2", "a1"]
    assert store.list_executions(statuses=None, flow="gamma", limit=10) == []


def test_list_executions_limit_keeps_the_newest(store: Store) -> None:
    for i in range(5):
        store.create_execution(execution(f"e{i}", created_at=T0 + i))
    listed = store.list_executions(statuses=None, flow=None, limit=2)
    assert [r.id for r in listed] == ["e4", "e3"]


def test_list_executions_combines_status_flow_and_limit(store: Store) -> None:
    rows = [
        ("a1", "alpha", "succeeded"),
        ("b1", "beta", "succeeded"),
        ("a2", "alpha", "failed"),
        ("a3", "alpha", "succeeded"),
        ("a4", "alpha", "succeeded"),
    ]
    for i, (eid, flow, status) in enumerate(rows):
        store.create_execution(execution(eid, flow=flow, status=status, created_at=T0 + i))
    listed = store.list_executions(statuses=["succeeded"], flow="alpha", limit=2)
    assert [r.id for r in listed] == ["a4", "a3"]


def test_list_executions_pages_by_creation_time_then_id(store: Store) -> None:
    # Two share a creation time: the id breaks the tie, so no row is skipped or repeated.
    for eid, at in [("a", T0), ("b", T0 + 1), ("c", T0 + 1), ("d", T0 + 2)]:
        store.create_execution(execution(eid, created_at=at))
    seen, before = [], None
    while True:
        page = store.list_executions(statuses=None, flow=None, limit=1, before=before)
        if not page:
            break
        seen.append(page[0].id)
        before = (page[0].created_at, page[0].id)
    assert seen == ["d", "c", "b", "a"]
    after_c = store.list_executions(statuses=None, flow=None, limit=10, before=(T0 + 1, "c"))
    assert [r.id for r in after_c] == ["b", "a"]


def test_execution_stats_count_by_status_and_queue(store: Store) -> None:
    store.create_execution(execution("q1", status="queued", created_at=T0 + 1))  # updated then
    store.create_execution(execution("q2", status="queued", created_at=T0 + 2))
    store.create_execution(execution("s", status="succeeded", created_at=T0))
    stats = store.execution_stats()
    assert stats.counts == {("queued", "default"): 2, ("succeeded", "default"): 1}
    assert stats.queued_since == T0 + 1
    assert stats.pending_waits == 0


def test_tokens_are_stored_listed_found_by_hash_and_revoked(store: Store) -> None:
    assert store.create_token(TokenRow("ci", "h1", "read", T0))
    assert not store.create_token(TokenRow("ci", "h2", "admin", T0 + 1))  # the name is taken
    assert store.token_by_hash("h1") == TokenRow("ci", "h1", "read", T0)
    assert store.token_by_hash("h2") is None
    assert store.revoke_token("ci", now=T0 + 2)
    assert not store.revoke_token("ci", now=T0 + 3)
    assert store.token_by_hash("h1") == TokenRow("ci", "h1", "read", T0, T0 + 2)
    # A revoked name can be given to a new token; the old secret is gone with it.
    assert store.create_token(TokenRow("ci", "h3", "operate", T0 + 4))
    assert store.list_tokens() == [TokenRow("ci", "h3", "operate", T0 + 4)]
    assert store.token_by_hash("h1") is None


# --- claim (compare and swap) -----------------------------------------------------------------


def test_claim_of_queued_execution_takes_lease_and_counts_an_attempt(store: Store) -> None:
    store.create_execution(execution("e1"))
    claim = Claim(owner="host:1:a", token="tok-1", expires=T0 + 30)
    assert store.claim("e1", claim, from_statuses=["queued"], expected_token=None, now=T0 + 1)
    row = get(store, "e1")
    assert (row.status, row.owner, row.lease_token, row.lease_expires) == (
        "running",
        "host:1:a",
        "tok-1",
        T0 + 30,
    )
    assert row.attempt == 1
    assert row.started_at == T0 + 1
    assert row.updated_at == T0 + 1


def test_claim_from_a_status_not_listed_fails_and_changes_nothing(store: Store) -> None:
    store.create_execution(execution("e1", status="succeeded"))
    before = snapshot(store, "e1")
    taken = store.claim(
        "e1", lease("tok"), from_statuses=["queued", "running"], expected_token=None, now=T0 + 5
    )
    assert not taken
    assert snapshot(store, "e1") == before


def test_claim_with_wrong_expected_token_fails_and_changes_nothing(store: Store) -> None:
    start(store, "e1", token="tok-1")
    before = snapshot(store, "e1")
    for expected in (None, "tok-other"):
        taken = store.claim(
            "e1",
            lease("tok-2", owner="host:2:b"),
            from_statuses=["queued", "running"],
            expected_token=expected,
            now=T0 + 9,
        )
        assert not taken
    assert snapshot(store, "e1") == before


def test_claim_with_the_current_token_takes_the_lease_over(store: Store) -> None:
    start(store, "e1", token="tok-1")
    taken = store.claim(
        "e1",
        lease("tok-2", owner="host:2:b", expires=T0 + 100),
        from_statuses=["running"],
        expected_token="tok-1",
        now=T0 + 50,
    )
    assert taken
    row = get(store, "e1")
    assert (row.owner, row.lease_token, row.lease_expires) == ("host:2:b", "tok-2", T0 + 100)
    assert row.attempt == 2
    assert row.started_at == T0 + 1, "started_at is set by the first start only"
    assert row.updated_at == T0 + 50


def test_hand_over_moves_the_lease_without_counting_an_attempt(store: Store) -> None:
    start(store, "e1", token="tok-1")
    before = get(store, "e1")
    moved = lease("tok-2", owner="host:2:b", expires=T0 + 100)
    assert not store.hand_over("e1", "tok-other", moved, now=T0 + 5), "fenced by the token"
    assert store.hand_over("e1", "tok-1", moved, now=T0 + 6)
    row = get(store, "e1")
    assert (row.owner, row.lease_token, row.lease_expires) == ("host:2:b", "tok-2", T0 + 100)
    assert (row.attempt, row.takeovers) == (before.attempt, before.takeovers)
    # The old holder has nothing left to hand over, and a finished execution cannot be had.
    assert not store.hand_over("e1", "tok-1", lease("tok-3"), now=T0 + 7)
    assert store.finish("e1", "tok-2", status="succeeded", result=None, error=None, now=T0 + 8)
    assert not store.hand_over("e1", "tok-2", lease("tok-4"), now=T0 + 9)


def test_claim_to_a_status_other_than_running_counts_no_attempt(store: Store) -> None:
    store.create_execution(execution("e1"))
    assert store.claim(
        "e1",
        lease("tok-1"),
        from_statuses=["queued", "running"],
        expected_token=None,
        now=T0 + 1,
        status="queued",
    )
    row = get(store, "e1")
    assert (row.status, row.lease_token, row.attempt, row.started_at) == (
        "queued",
        "tok-1",
        0,
        None,
    )
    # Moving on to running with that token counts the first attempt and starts it.
    assert store.claim(
        "e1", lease("tok-2"), from_statuses=["queued"], expected_token="tok-1", now=T0 + 2
    )
    row = get(store, "e1")
    assert (row.status, row.attempt, row.started_at) == ("running", 1, T0 + 2)


def test_claim_of_unknown_execution_returns_false(store: Store) -> None:
    assert not store.claim(
        "nope", lease("tok"), from_statuses=["queued"], expected_token=None, now=T0
    )


def test_only_one_of_many_concurrent_claims_wins(store: Store) -> None:
    store.create_execution(execution("e1"))
    results: dict[str, bool] = {}

    def contend(i: int) -> None:
        results[f"tok-{i}"] = store.claim(
            "e1",
            lease(f"tok-{i}", owner=f"host:{i}:x"),
            from_statuses=["queued"],
            expected_token=None,
            now=T0 + 1,
        )

    race(8, contend)
    winners = [token for token, won in results.items() if won]
    assert len(winners) == 1
    row = get(store, "e1")
    assert row.lease_token == winners[0]
    assert row.attempt == 1


# --- renew ------------------------------------------------------------------------------------


def test_renew_extends_only_the_leases_still_held(store: Store) -> None:
    start(store, "e1", token="tok-1")
    start(store, "e2", token="tok-2")
    held = store.renew(["e1", "e2"], {"e1": "tok-1", "e2": "stale"}, T0 + 500)
    assert held == [("e1", False)]
    e1, e2 = store.get_execution("e1"), store.get_execution("e2")
    assert e1 is not None and e2 is not None
    assert e1.lease_expires == T0 + 500
    assert e2.lease_expires == T0 + LEASE


def test_renew_moves_only_the_leases_due_for_it_with_refresh_before(store: Store) -> None:
    start(store, "e1", token="tok-1")  # expires at T0 + LEASE
    start(store, "e2", token="tok-2")
    store.renew(["e2"], {"e2": "tok-2"}, T0 + 900)
    tokens = {"e1": "tok-1", "e2": "tok-2"}
    live = {"e2": '[{"position": "1"}]'}
    held = store.renew(["e1", "e2"], tokens, T0 + 1000, live, refresh_before=T0 + 800)
    assert sorted(held) == [("e1", False), ("e2", False)]  # both still held and reported
    e1, e2 = store.get_execution("e1"), store.get_execution("e2")
    assert e1 is not None and e2 is not None
    assert e2.progress == live["e2"]  # progress is written either way
    assert e1.lease_expires == T0 + 1000  # ran out before T0 + 800: moved on
    assert e2.lease_expires == T0 + 900  # runs past it: left as it was
    lost = store.renew(["e1"], {"e1": "stale"}, T0 + 2000, refresh_before=T0 + 3000)
    assert lost == []
    e1 = store.get_execution("e1")
    assert e1 is not None and e1.lease_expires == T0 + 1000  # a stale token moves nothing
    # A lease beyond the new expiry (the clock went back) is brought back to it.
    store.renew(["e2"], {"e2": "tok-2"}, T0 + 850, refresh_before=T0 + 800)
    e2 = store.get_execution("e2")
    assert e2 is not None and e2.lease_expires == T0 + 850


def test_renew_skips_finished_executions(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.finish("e1", "tok-1", status="succeeded", result="1", error=None, now=T0 + 2)
    assert store.renew(["e1"], {"e1": "tok-1"}, T0 + 500) == []


def test_renew_reports_a_requested_cancel(store: Store) -> None:
    start(store, "e1", token="tok-1")
    start(store, "e2", token="tok-2")
    store.request_cancel("e2", now=T0 + 3)
    held = store.renew(["e1", "e2"], {"e1": "tok-1", "e2": "tok-2"}, T0 + 500)
    assert sorted(held) == [("e1", False), ("e2", True)]


def test_renew_writes_progress_only_for_the_ids_given_one(store: Store) -> None:
    start(store, "e1", token="tok-1")
    start(store, "e2", token="tok-2")
    tokens = {"e1": "tok-1", "e2": "tok-2"}
    store.renew(["e1", "e2"], tokens, T0 + 500, {"e1": '[{"position": "1"}]', "e2": "[]"})
    # e2's lease alone is renewed: e1's progress stays as written, e2's is cleared.
    held = store.renew(["e2"], tokens, T0 + 600, {"e2": None})
    assert held == [("e2", False)]
    assert get(store, "e1").progress == '[{"position": "1"}]'
    assert get(store, "e1").lease_expires == T0 + 500
    assert get(store, "e2").progress is None
    assert get(store, "e2").lease_expires == T0 + 600
    assert store.renew([], {}, T0 + 700) == []


def test_cancel_requests_lists_the_running_executions_asked_to_stop(store: Store) -> None:
    start(store, "e1", token="tok-1")
    start(store, "e2", token="tok-2")
    assert store.cancel_requests() == []
    store.request_cancel("e2", now=T0 + 3)
    assert store.cancel_requests() == [("e2", "tok-2")]
    assert store.finish("e2", "tok-2", status="cancelled", result=None, error=None, now=T0 + 4)
    assert store.cancel_requests() == [], "an ended execution is no longer listed"


# --- finish and release -----------------------------------------------------------------------


def test_finish_records_the_outcome_and_releases_the_lease(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.finish("e1", "tok-1", status="succeeded", result='"ok"', error=None, now=T0 + 7)
    row = get(store, "e1")
    assert (row.status, row.result, row.error) == ("succeeded", '"ok"', None)
    assert (row.owner, row.lease_token, row.lease_expires) == (None, None, None)
    assert row.finished_at == T0 + 7
    assert row.updated_at == T0 + 7
    assert row.attempt == 1


def test_finish_of_a_failure_keeps_the_error_text(store: Store) -> None:
    start(store, "e1", token="tok-1")
    error = '{"type":"ValueError","message":"bad"}'
    assert store.finish("e1", "tok-1", status="failed", result=None, error=error, now=T0 + 7)
    row = get(store, "e1")
    assert (row.status, row.result, row.error) == ("failed", None, error)


def test_finish_with_stale_token_changes_nothing(store: Store) -> None:
    start(store, "e1", token="tok-1")
    before = snapshot(store, "e1")
    assert not store.finish(
        "e1", "stale", status="succeeded", result='"late"', error=None, now=T0 + 9
    )
    assert snapshot(store, "e1") == before


def test_finish_a_second_time_is_rejected(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.finish("e1", "tok-1", status="succeeded", result='"first"', error=None, now=T0)
    before = snapshot(store, "e1")
    assert not store.finish("e1", "tok-1", status="failed", result=None, error="x", now=T0 + 1)
    assert snapshot(store, "e1") == before


def test_release_gives_the_lease_back_without_an_outcome(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.release("e1", "tok-1", status="queued", now=T0 + 4)
    row = get(store, "e1")
    assert (row.status, row.owner, row.lease_token, row.lease_expires) == (
        "queued",
        None,
        None,
        None,
    )
    assert (row.result, row.error, row.finished_at) == (None, None, None)
    assert row.updated_at == T0 + 4
    # Released means anyone may claim it again, as from scratch.
    assert store.claim(
        "e1", lease("tok-2"), from_statuses=["queued"], expected_token=None, now=T0 + 5
    )


def test_release_with_stale_token_changes_nothing(store: Store) -> None:
    start(store, "e1", token="tok-1")
    before = snapshot(store, "e1")
    assert not store.release("e1", "stale", status="queued", now=T0 + 4)
    assert snapshot(store, "e1") == before


# --- crash loops: takeovers counted, the backoff's not_before ------------------------------------


def test_takeovers_without_progress_are_counted_and_progress_starts_the_count_again(
    store: Store,
) -> None:
    start(store, "e1", token="tok-1", expires=T0 + 10)
    assert get(store, "e1").takeovers == 0

    def take_over(old: str, new: str, now: float, *, by_claim: bool) -> None:
        # The holder died: its lease runs out, and a claim (or a compare-and-swap on its
        # token, as same-host takeovers and resume do) takes the execution over.
        claim = lease(new, expires=now + LEASE)
        if by_claim:
            assert store.claim_runnable(claim, now=now, due=now) is not None
        else:
            assert store.claim("e1", claim, from_statuses=["running"], expected_token=old, now=now)

    take_over("tok-1", "tok-2", T0 + 11, by_claim=True)
    assert get(store, "e1").takeovers == 1  # nothing recorded before the first death either
    take_over("tok-2", "tok-3", T0 + 12, by_claim=False)
    assert get(store, "e1").takeovers == 2
    assert store.record_checkpoint("e1", "tok-3", checkpoint("0")) == Commit.COMMITTED
    take_over("tok-3", "tok-4", T0 + 13, by_claim=False)
    assert get(store, "e1").takeovers == 1  # progress in between: the count starts again
    take_over("tok-4", "tok-5", T0 + 13 + LEASE + 1, by_claim=True)
    assert get(store, "e1").takeovers == 2

    # A claim of a queued execution (a hand-back, not a death) counts nothing.
    assert store.release("e1", "tok-5", status="queued", now=T0 + 100)
    assert store.claim_runnable(lease("tok-6"), now=T0 + 100, due=T0 + 100) is not None
    assert get(store, "e1").takeovers == 2
    # A retry starts the count again.
    assert store.finish("e1", "tok-6", status="failed", result=None, error="x", now=T0 + 101)
    assert store.reset_for_retry("e1", positions=[], waits=[], now=T0 + 102)
    assert get(store, "e1").takeovers == 0


def test_scan_runnable_pages_each_branch_by_its_key_and_reaches_every_row(store: Store) -> None:
    # Queued rows with equal creation times: the id breaks the tie, so no row is skipped.
    for i in range(5):
        store.create_execution(execution(f"q{i}", created_at=T0 + (i // 2)))
    start(store, "run-live", token="tok-a", expires=T0 + 100)
    start(store, "run-dead", token="tok-b", expires=T0 + 2)
    seen: list[str] = []
    after = None
    while True:
        page = store.scan_runnable("queued", after=after, now=T0 + 5, due=T0 + 5, limit=2)
        seen += [r.id for r in page]
        if len(page) < 2:
            break
        after = (page[-1].created_at, page[-1].id)
    assert seen == ["q0", "q1", "q2", "q3", "q4"]
    expired = store.scan_runnable("expired", after=None, now=T0 + 5, due=T0 + 5, limit=10)
    assert [r.id for r in expired] == ["run-dead"]
    assert store.scan_runnable("due", after=None, now=T0 + 5, due=T0 + 5, limit=10) == []
    assert store.execution_states(["q0", "run-live", "nope"]) == {
        "q0": ("queued", None),
        "run-live": ("running", "host:1:a"),
    }


def test_a_queued_execution_is_not_claimed_before_its_not_before(store: Store) -> None:
    start(store, "e1", token="tok-1")
    store.create_execution(execution("e2", created_at=T0 + 1))
    assert store.release("e1", "tok-1", status="queued", now=T0 + 2, not_before=T0 + 50)
    row = get(store, "e1")
    assert (row.status, row.owner, row.not_before) == ("queued", None, T0 + 50)
    # The older one waits out its pause; the queue behind it is not held up.
    assert [r.id for r in store.runnable(now=T0 + 3, due=T0 + 3, limit=10)] == ["e2"]
    taken = store.claim_runnable(lease("tok-2"), now=T0 + 3, due=T0 + 3)
    assert taken is not None and taken.id == "e2"
    assert store.claim_runnable(lease("tok-3"), now=T0 + 3, due=T0 + 3) is None
    taken = store.claim_runnable(lease("tok-4"), now=T0 + 50, due=T0 + 50)
    assert taken is not None and taken.id == "e1"
    # Taken after its pause, it keeps not_before: the pause of this takeover was served.
    assert taken.not_before == T0 + 50
    assert store.finish("e1", "tok-4", status="failed", result=None, error="x", now=T0 + 51)
    assert store.reset_for_retry("e1", positions=[], waits=[], now=T0 + 52)
    assert get(store, "e1").not_before is None


# --- request_cancel ---------------------------------------------------------------------------


def test_cancel_of_an_unowned_execution_cancels_it_at_once(store: Store) -> None:
    store.create_execution(execution("e1"))
    assert store.request_cancel("e1", now=T0 + 3) == "cancelled"
    row = get(store, "e1")
    assert row.status == "cancelled"
    assert row.finished_at == T0 + 3


def test_cancel_of_an_owned_execution_flags_it_and_keeps_its_status(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.request_cancel("e1", now=T0 + 3) == "running"
    row = get(store, "e1")
    assert row.cancel_requested is True
    assert (row.status, row.lease_token, row.finished_at) == ("running", "tok-1", None)


def test_cancel_of_an_owned_queued_execution_waits_for_its_holder(store: Store) -> None:
    store.create_execution(execution("e1"))
    assert store.claim(
        "e1",
        lease("tok-1"),
        from_statuses=["queued"],
        expected_token=None,
        now=T0 + 1,
        status="queued",
    )
    assert store.request_cancel("e1", now=T0 + 3) == "queued"
    row = get(store, "e1")
    assert (row.status, row.cancel_requested, row.lease_token) == ("queued", True, "tok-1")


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_cancel_of_a_finished_execution_changes_nothing(store: Store, final: str) -> None:
    start(store, "e1", token="tok-1")
    assert store.finish("e1", "tok-1", status=final, result=None, error=None, now=T0 + 2)
    before = snapshot(store, "e1")
    assert store.request_cancel("e1", now=T0 + 3) == final
    assert snapshot(store, "e1") == before


def test_cancel_of_unknown_execution_returns_none(store: Store) -> None:
    assert store.request_cancel("nope", now=T0) is None


# --- metadata and orphans ---------------------------------------------------------------------


def test_set_metadata_with_held_token_stores_it(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.set_metadata("e1", "tok-1", '{"progress":0.5}', T0 + 2)
    row = get(store, "e1")
    assert row.metadata == '{"progress":0.5}'
    assert row.updated_at == T0 + 2


def test_set_metadata_with_stale_token_changes_nothing(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.set_metadata("e1", "tok-1", '{"v":1}', T0 + 2)
    before = snapshot(store, "e1")
    assert not store.set_metadata("e1", "stale", '{"v":2}', T0 + 3)
    assert snapshot(store, "e1") == before


def test_leased_on_host_lists_live_leases_of_owners_on_that_host(store: Store) -> None:
    start(store, "running", token="t1")  # owner host:1:a, lease until T0 + LEASE
    store.create_execution(execution("owned-queued"))
    assert store.claim(
        "owned-queued",
        lease("t2"),
        from_statuses=["queued"],
        expected_token=None,
        now=T0,
        status="queued",
    )
    start(store, "done", token="t3")
    assert store.finish("done", "t3", status="succeeded", result="1", error=None, now=T0 + 2)
    store.create_execution(execution("unowned"))

    found = store.leased_on_host(prefix="host:", now=T0 + 1)
    assert {r.id for r in found} == {"running", "owned-queued"}
    assert {r.owner for r in found} == {"host:1:a"}
    assert store.leased_on_host(prefix="elsewhere:", now=T0 + 1) == []
    assert store.leased_on_host(prefix="host:", now=T0 + 10_000) == [], "expired: runnable"
    assert store.leased_on_host(prefix="host:", now=T0 + 1, other_than="host:1:a") == []
    assert {r.id for r in store.leased_on_host(prefix="host:", now=T0 + 1, other_than="x")} == {
        "running",
        "owned-queued",
    }


def test_a_released_execution_is_runnable_for_another_process(store: Store) -> None:
    # The engine releases an execution it cannot import the flow for, "leaving it runnable
    # for a process that can"; recovery and workers find it through runnable().
    start(store, "e1", token="tok-1")
    assert store.release("e1", "tok-1", status="queued", now=T0 + 2)
    assert [r.id for r in store.runnable(now=T0 + 3, due=T0 + 3, limit=10)] == ["e1"]


# --- checkpoints ------------------------------------------------------------------------------


def test_recorded_checkpoint_reads_back_field_for_field(store: Store) -> None:
    token = start(store)
    row = CheckpointRow(
        position="0",
        name="search",
        fingerprint="abc123",
        status="succeeded",
        result='{"hits":[1,2]}',
        error=None,
        attempts='[{"error":"timeout"}]',
        started_at=T0 + 0.25,
        finished_at=T0 + 1.75,
        metadata='{"tokens":12}',
    )
    assert store.record_checkpoint("e1", token, row) == Commit.COMMITTED
    assert store.get_checkpoints("e1") == [row]


def test_get_checkpoints_orders_by_position(store: Store) -> None:
    token = start(store)
    # Positions are text, but they come back in program order, not in the text's order:
    # "10" after "2", and a branch's calls ("3.0", "3.1.2", "3.10") after the slot that made
    # them and before the flow body's next call; named branches after the numbered ones.
    recorded = ["10", "2", "3.10", "0", "[b].0", "3.1.2", "3", "3.0", "1", "[a].1", "[a].0"]
    for position in recorded:
        assert store.record_checkpoint("e1", token, checkpoint(position, name=f"s{position}"))
    in_order = ["0", "1", "2", "3", "3.0", "3.1.2", "3.10", "10", "[a].0", "[a].1", "[b].0"]
    assert [c.position for c in store.get_checkpoints("e1")] == in_order
    assert [c.name for c in store.get_checkpoints("e1")] == [f"s{p}" for p in in_order]


def test_checkpoints_of_unknown_execution_are_empty(store: Store) -> None:
    assert store.get_checkpoints("nope") == []


def test_checkpoints_belong_to_their_own_execution(store: Store) -> None:
    t1 = start(store, "e1", token="tok-1")
    t2 = start(store, "e2", token="tok-2")
    assert store.record_checkpoint("e1", t1, checkpoint("0", result='"one"'))
    assert store.record_checkpoint("e2", t2, checkpoint("0", result='"two"'))
    assert [c.result for c in store.get_checkpoints("e1")] == ['"one"']
    assert [c.result for c in store.get_checkpoints("e2")] == ['"two"']
    # A token fences only its own execution.
    assert not store.record_checkpoint("e2", t1, checkpoint("1"))


def test_record_checkpoint_with_stale_token_writes_nothing(store: Store) -> None:
    start(store, "e1", token="tok-1")
    assert store.record_checkpoint("e1", "stale", checkpoint("0")) == Commit.LOST
    assert store.get_checkpoints("e1") == []


def test_record_checkpoint_with_stale_token_leaves_prior_rows_byte_identical(
    store: Store,
) -> None:
    token = start(store)
    assert store.record_checkpoint("e1", token, checkpoint("0", result='{"a":"é\\u0000"}'))
    assert store.record_checkpoint(
        "e1", token, checkpoint("1", status="retrying", result=None, attempts='[{"n":1}]')
    )
    before = snapshot(store, "e1")
    # Neither a new position nor a replacement of the retrying row gets in.
    assert not store.record_checkpoint("e1", "stale", checkpoint("1", result='"evil"'))
    assert not store.record_checkpoint("e1", "stale", checkpoint("2", result='"evil"'))
    assert not store.record_checkpoint("e1", "stale", checkpoint("0", result='"evil"'))
    assert snapshot(store, "e1") == before


def test_rejected_checkpoint_row_leaves_prior_rows_intact_and_the_store_usable(
    store: Store,
) -> None:
    token = start(store)
    assert store.record_checkpoint("e1", token, checkpoint("0"))
    before = snapshot(store, "e1")
    broken = dataclasses.replace(checkpoint("1"), name=None)  # violates the row's types
    with pytest.raises(Exception):  # noqa: B017 - the interface names no type for this
        store.record_checkpoint("e1", token, broken)
    assert snapshot(store, "e1") == before
    # No half-open transaction is left behind: the next write lands and is seen elsewhere.
    assert store.record_checkpoint("e1", token, checkpoint("1"))
    reader = open_store(store.url)
    try:
        assert [c.position for c in reader.get_checkpoints("e1")] == ["0", "1"]
    finally:
        reader.close()


def test_checkpoint_from_a_previous_lease_holder_is_fenced_after_takeover(store: Store) -> None:
    old = start(store, "e1", token="tok-old")
    assert store.record_checkpoint("e1", old, checkpoint("0"))
    assert store.claim(
        "e1", lease("tok-new"), from_statuses=["running"], expected_token=old, now=T0 + 60
    )
    assert not store.record_checkpoint("e1", old, checkpoint("1"))
    assert store.record_checkpoint("e1", "tok-new", checkpoint("1"))
    assert [c.position for c in store.get_checkpoints("e1")] == ["0", "1"]


def test_record_checkpoint_after_finish_writes_nothing(store: Store) -> None:
    token = start(store)
    assert store.finish("e1", token, status="succeeded", result="1", error=None, now=T0 + 2)
    assert not store.record_checkpoint("e1", token, checkpoint("0"))
    assert store.get_checkpoints("e1") == []


def test_record_checkpoint_for_unknown_execution_writes_nothing(store: Store) -> None:
    assert not store.record_checkpoint("nope", "tok", checkpoint("0"))
    assert store.get_checkpoints("nope") == []


def test_retrying_checkpoint_row_is_replaced_by_a_later_record(store: Store) -> None:
    token = start(store)
    retrying = checkpoint("0", status="retrying", result=None, attempts='[{"error":"e1"}]')
    assert store.record_checkpoint("e1", token, retrying)
    final = dataclasses.replace(
        checkpoint("0", result='"done"', attempts='[{"error":"e1"},{"ok":true}]'),
        finished_at=T0 + 99,
    )
    assert store.record_checkpoint("e1", token, final) == Commit.COMMITTED
    assert store.get_checkpoints("e1") == [final]


@pytest.mark.parametrize("final_status", ["succeeded", "failed"])
@pytest.mark.parametrize("second_status", ["succeeded", "failed", "retrying"])
def test_final_checkpoint_row_is_never_overwritten(
    store: Store, final_status: str, second_status: str
) -> None:
    token = start(store)
    first = checkpoint("0", status=final_status, result='"first"', error='"err"')
    assert store.record_checkpoint("e1", token, first)
    before = snapshot(store, "e1")
    second = checkpoint("0", name="other", status=second_status, result='"second"')
    assert store.record_checkpoint("e1", token, second) == Commit.LOST
    assert snapshot(store, "e1") == before
    assert store.get_checkpoints("e1") == [first]


def test_record_checkpoint_reports_a_requested_cancel(store: Store) -> None:
    token = start(store)
    assert store.record_checkpoint("e1", token, checkpoint("0")) == Commit.COMMITTED
    assert store.request_cancel("e1", now=T0 + 2) == "running"
    assert store.record_checkpoint("e1", token, checkpoint("1")) == Commit.CANCEL_REQUESTED
    assert [c.position for c in store.get_checkpoints("e1")] == ["0", "1"]


def _logged(position: str) -> list[EventRow]:
    return [EventRow("e1", position, T0, "info", "output", "printed", '{"attempt":1}')]


def test_record_checkpoint_with_events_reports_a_requested_cancel(store: Store) -> None:
    # A cancel pending at the commit: the row and what the call printed are still written.
    token = start(store)
    assert store.request_cancel("e1", now=T0 + 2) == "running"
    row = checkpoint("0", error='"e"', attempts='[{"attempt":1}]')
    assert store.record_checkpoint("e1", token, row, _logged("0")) == Commit.CANCEL_REQUESTED
    assert store.get_checkpoints("e1") == [row]
    assert [(e.position, e.message) for e in store.get_events("e1")] == [("0", "printed")]


def test_record_checkpoint_with_a_cancel_pending_and_a_stale_token_writes_nothing(
    store: Store,
) -> None:
    token = start(store)
    assert store.record_checkpoint("e1", token, checkpoint("0"))
    assert store.request_cancel("e1", now=T0 + 2) == "running"
    before = snapshot(store, "e1")
    assert store.record_checkpoint("e1", "stale", checkpoint("1")) == Commit.LOST
    assert store.record_checkpoint("e1", "stale", checkpoint("2"), _logged("2")) == Commit.LOST
    # A final row stays final with a cancel pending too, and keeps no events of the refusal.
    assert store.record_checkpoint("e1", token, checkpoint("0", result='"x"')) == Commit.LOST
    again = checkpoint("0", result='"y"')
    assert store.record_checkpoint("e1", token, again, _logged("0")) == Commit.LOST
    assert snapshot(store, "e1") == before


@pytest.mark.parametrize("result", ['"v"', "null", None])
def test_recorded_checkpoint_reads_back_with_every_optional_field_empty_or_set(
    store: Store, result: str | None
) -> None:
    token = start(store)
    bare = dataclasses.replace(checkpoint("0", result=result), metadata=None)
    full = dataclasses.replace(
        checkpoint("1", result=result, error='"e"', attempts="[]"), metadata='{"k":1}'
    )
    assert store.record_checkpoint("e1", token, bare) == Commit.COMMITTED
    assert store.record_checkpoint("e1", token, full, _logged("1")) == Commit.COMMITTED
    assert store.get_checkpoints("e1") == [bare, full]


# --- retry -----------------------------------------------------------------------------------


def _failed_with_history(store: Store) -> None:
    """e1 failed with calls in the flow body and in a branch, and two waits."""
    token = start(store)
    for position in ("0", "1", "2", "2.0", "2.1.0", "10"):
        assert store.record_checkpoint("e1", token, checkpoint(position, name=f"s{position}"))
    for name, position in (("early", "1"), ("late", "2.1.1")):
        wait = WaitRow("e1", name, position, "sleep", "pending", deadline=T0, created_at=T0)
        assert store.create_wait(token, wait)
    assert store.finish("e1", token, status="failed", result=None, error='"boom"', now=T0 + 2)


def test_reset_for_retry_forgets_exactly_the_named_calls_and_waits(store: Store) -> None:
    _failed_with_history(store)
    # The caller decides what lies after the retry point ("2" in program order): the text
    # of the positions ("10" < "2") must not matter to the store.
    assert store.reset_for_retry(
        "e1", positions=["2", "2.0", "2.1.0", "10"], waits=["late"], now=T0 + 3
    )
    row = get(store)
    assert (row.status, row.result, row.error, row.lease_token) == ("queued", None, None, None)
    assert [c.position for c in store.get_checkpoints("e1")] == ["0", "1"]
    assert [(w.name, w.position) for w in store.get_waits("e1")] == [("early", "1")]


def test_reset_for_retry_with_nothing_to_forget_only_requeues(store: Store) -> None:
    _failed_with_history(store)
    calls = [dataclasses.replace(c) for c in store.get_checkpoints("e1")]
    waits = [dataclasses.replace(w) for w in store.get_waits("e1")]
    assert store.reset_for_retry("e1", positions=[], waits=[], now=T0 + 3)
    assert get(store).status == "queued"
    assert store.get_checkpoints("e1") == calls
    assert store.get_waits("e1") == waits


def test_reset_for_retry_of_an_execution_that_is_not_failed_changes_nothing(store: Store) -> None:
    token = start(store)
    assert store.record_checkpoint("e1", token, checkpoint("0"))
    before = snapshot(store, "e1")
    assert not store.reset_for_retry("e1", positions=["0"], waits=[], now=T0 + 3)
    assert snapshot(store, "e1") == before
    assert not store.reset_for_retry("nope", positions=["0"], waits=[], now=T0 + 3)


# --- events -----------------------------------------------------------------------------------


def test_events_read_back_in_the_order_added(store: Store) -> None:
    events = [
        EventRow("e1", None, T0, "info", "start", "started", None),
        EventRow("e1", "0", T0, "warning", "retry", "retrying step", '{"n":1}'),
        EventRow("e2", "0", T0, "info", "other", "another execution", None),
        EventRow("e1", "3.1.2", T0 - 5, "error", "fail", "clock went back", None),
        EventRow("e1", "1", T0 + 1, "info", "log", "ünïcode ✓", '{"k":[1,2]}'),
    ]
    for event in events:
        store.add_event(event)

    def without_id(rows: list[EventRow]) -> list[EventRow]:
        return [dataclasses.replace(r, id=None) for r in rows]

    e1 = store.get_events("e1")
    assert without_id(e1) == [e for e in events if e.execution_id == "e1"]
    assert [r.id for r in e1] == sorted(r.id for r in e1 if r.id is not None), "ids increase"
    assert without_id(store.get_events("e2")) == [events[2]]
    assert store.get_events("nope") == []
    assert without_id(store.get_events("e1", after=e1[1].id or 0)) == without_id(e1[2:])
    assert [r.kind for r in store.get_events("e1", kinds=["retry", "log"])] == ["retry", "log"]


# --- lifecycle --------------------------------------------------------------------------------


def test_reopened_store_sees_the_data_and_migrating_again_is_harmless(store_url: str) -> None:
    first = open_store(store_url)
    try:
        token = start(first)
        assert first.record_checkpoint("e1", token, checkpoint("0"))
        first.add_event(EventRow("e1", "0", T0, "info", "k", "m"))
        expected = snapshot(first, "e1")
        second = open_store(store_url)  # while the first is still open
        try:
            assert snapshot(second, "e1") == expected
            assert second.record_checkpoint("e1", token, checkpoint("1"))
        finally:
            second.close()
        assert [c.position for c in first.get_checkpoints("e1")] == ["0", "1"]
    finally:
        first.close()
    third = open_store(store_url)
    try:
        assert [c.position for c in third.get_checkpoints("e1")] == ["0", "1"]
        assert third.get_events("e1") == expected[2]
    finally:
        third.close()


def test_closed_store_refuses_further_use(store_url: str) -> None:
    opened = open_store(store_url)
    opened.create_execution(execution("e1"))
    opened.close()
    opened.close()  # closing twice is harmless
    with pytest.raises(StoreError):
        opened.get_execution("e1")


@pytest.mark.parametrize(
    "url",
    ["sqlite:///:memory:", "sqlite://", "sqlite:///", "mysql://localhost/db", "tether.db", ""],
)
def test_open_store_rejects_urls_that_name_no_durable_store(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url)


# --- concurrency ------------------------------------------------------------------------------


def test_threads_recording_checkpoints_concurrently_all_land(store: Store) -> None:
    workers, per_worker = 6, 200
    tokens = {f"e{w}": start(store, f"e{w}", token=f"tok-{w}") for w in range(workers)}

    def record(w: int) -> None:
        execution_id = f"e{w}"
        for position in range(per_worker):
            committed = store.record_checkpoint(
                execution_id, tokens[execution_id], checkpoint(str(position))
            )
            assert committed, (execution_id, position)

    race(workers, record)
    for execution_id in tokens:
        recorded = [c.position for c in store.get_checkpoints(execution_id)]
        assert recorded == [str(p) for p in range(per_worker)]


_CHILD = """
import sys
from tether.store import CheckpointRow, open_store

url, execution_id, token, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(url)
print("ready", flush=True)
sys.stdin.readline()  # wait for "go", so that both processes write at the same time
written = 0
for position in range(count):
    row = CheckpointRow(str(position), f"step{position}", "fp", "succeeded", '"x"', None, None,
                        1.0, 2.0, None)
    if store.record_checkpoint(execution_id, token, row):
        written += 1
store.close()
print(written, flush=True)
"""


def test_processes_recording_checkpoints_into_one_store_all_land(
    store: Store, store_url: str
) -> None:
    count = 500
    tokens = {eid: start(store, eid, token=f"tok-{eid}") for eid in ("p1", "p2")}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, store_url, eid, token, str(count)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for eid, token in tokens.items()
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
        outputs = [child.communicate("go\n", timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.strip() == str(count), err
    for eid in tokens:
        assert [c.position for c in store.get_checkpoints(eid)] == [str(p) for p in range(count)]


# --- SQLite only: schema versions ---------------------------------------------------------------
# These reach under the interface (the sqlite file itself) and do not run for other stores.


def test_sqlite_store_with_a_newer_schema_version_refuses_to_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    opened = open_store(url)
    opened.create_execution(execution("e1"))
    opened.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute(
            "INSERT INTO tether_schema (version, name, applied_at) VALUES (999, 'future', 0)"
        )
    conn.close()
    with pytest.raises(StoreError, match="999"):
        open_store(url)


def test_sqlite_migrations_are_recorded_once_however_often_the_store_opens(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    for _ in range(3):
        open_store(url).close()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        versions = [v for (v,) in conn.execute("SELECT version FROM tether_schema ORDER BY 1")]
    finally:
        conn.close()
    assert versions == list(range(1, len(versions) + 1))
    assert versions, "at least one migration is applied"


def test_renew_records_progress_and_keeps_the_order_asked(store: Store) -> None:
    for n in range(3):
        start(store, f"e{n}", token=f"tok-{n}")
    ids = ["e2", "e0", "e1"]
    tokens = {"e0": "tok-0", "e1": "tok-1", "e2": "tok-2"}
    held = store.renew(ids, tokens, T0 + 500, {"e0": '[{"position": "3"}]', "e2": None})
    assert held == [("e2", False), ("e0", False), ("e1", False)]
    assert get(store, "e0").progress == '[{"position": "3"}]'
    assert get(store, "e1").progress is None
    assert get(store, "e2").lease_expires == T0 + 500
