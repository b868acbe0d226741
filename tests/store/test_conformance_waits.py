"""Conformance suite for waits, suspension and the runnable queue, for every Store.

Written against the abstract `tether.store.Store` interface only, like test_conformance.py:
the `store` fixture (tests/store/conftest.py) is parametrized over the available
implementations, so a new store passes this file unchanged or is not conforming.

Every state below is reached through the interface itself (create, claim, suspend, finish,
request_cancel), never by writing a row in a status a store need not accept on insert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from _rows import LEASE, NOW, T0, execution, get, lease, race, start

from tether.errors import UsageError
from tether.store import CheckpointRow, Claim, EventRow, ExecutionRow, Store, WaitRow

FINAL = ("succeeded", "failed", "cancelled")


# --- helpers ----------------------------------------------------------------------------------


def wait_row(
    execution_id: str = "e1",
    name: str = "w",
    *,
    position: str = "0",
    kind: str = "input",
    created_at: float = T0 + 2,
    question: str | None = '"approve?"',
    **fields: Any,
) -> WaitRow:
    """A pending wait; `fields` sets any other WaitRow field (schema_ref, deadline, ...)."""
    return WaitRow(
        execution_id=execution_id,
        name=name,
        position=position,
        kind=kind,
        status="pending",
        question=question,
        created_at=created_at,
        **fields,
    )


def waiting(
    store: Store,
    execution_id: str = "e1",
    *,
    wake_at: float | None = None,
    wait: str = "w",
    kind: str = "input",
    flow: str = "flow",
    created_at: float = T0,
) -> None:
    """An execution parked (`waiting`) on a pending wait named `wait`."""
    token = start(store, execution_id, f"tok-{execution_id}", flow=flow, created_at=created_at)
    assert store.create_wait(token, wait_row(execution_id, wait, kind=kind))
    assert store.suspend(execution_id, token, wait=wait, wake_at=wake_at, now=T0 + 3)


def wait_named(store: Store, execution_id: str, name: str) -> WaitRow:
    found = [w for w in store.get_waits(execution_id) if w.name == name]
    assert len(found) == 1, found
    return found[0]


def snapshot(store: Store, execution_id: str) -> tuple[object, ...]:
    """Everything stored about an execution and its waits, to compare before and after."""
    row = store.get_execution(execution_id)
    return (
        dataclasses.replace(row) if row else None,
        [dataclasses.replace(w) for w in store.get_waits(execution_id)],
        [dataclasses.replace(c) for c in store.get_checkpoints(execution_id)],
    )


def runnable_ids(store: Store, *, now: float = NOW, due: float = NOW, limit: int = 100) -> set[str]:
    return {r.id for r in store.runnable(now=now, due=due, limit=limit)}


# --- create_wait and get_waits ----------------------------------------------------------------


def test_created_wait_reads_back_field_for_field(store: Store) -> None:
    token = start(store)
    row = WaitRow(
        execution_id="e1",
        name="approval",
        position="3",
        kind="input",
        status="pending",
        schema_ref="agents:Approval",
        json_schema='{"type":"object","properties":{"ok":{"type":"boolean"}}}',
        question='{"text":"ship it? ünïcödé ✓"}',
        metadata='{"team":"ops"}',
        deadline=T0 + 3600.125,
        value=None,
        resolved_by=None,
        created_at=T0 + 2.25,
        resolved_at=None,
    )
    assert store.create_wait(token, row) is True
    assert store.get_waits("e1") == [row]


def test_created_sleep_wait_with_no_optional_fields_reads_back(store: Store) -> None:
    token = start(store)
    row = WaitRow(
        execution_id="e1",
        name="nap",
        position="0",
        kind="sleep",
        status="pending",
        deadline=T0 + 60.5,
        created_at=T0 + 2.5,
    )
    assert store.create_wait(token, row)
    assert store.get_waits("e1") == [row]


def test_get_waits_orders_by_position_not_by_insertion(store: Store) -> None:
    token = start(store)
    # Program order, not the text's: "10" after "3.1", a branch's waits after its slot.
    for position in ("2", "10", "0", "3.1", "[k].0", "3", "1"):
        assert store.create_wait(token, wait_row(name=f"w{position}", position=position))
    in_order = ["0", "1", "2", "3", "3.1", "10", "[k].0"]
    assert [(w.position, w.name) for w in store.get_waits("e1")] == [(p, f"w{p}") for p in in_order]


def test_waits_of_unknown_execution_are_empty(store: Store) -> None:
    assert store.get_waits("nope") == []


def test_wait_names_are_unique_per_execution_not_across_executions(store: Store) -> None:
    one = start(store, "e1", "tok-1")
    two = start(store, "e2", "tok-2")
    assert store.create_wait(one, wait_row("e1", "w", question='"one"'))
    assert store.create_wait(two, wait_row("e2", "w", question='"two"'))
    assert [w.question for w in store.get_waits("e1")] == ['"one"']
    assert [w.question for w in store.get_waits("e2")] == ['"two"']


def test_create_wait_with_wrong_token_returns_false_and_writes_nothing(store: Store) -> None:
    start(store)
    assert store.create_wait("stale", wait_row()) is False
    assert store.get_waits("e1") == []


def test_create_wait_with_the_token_of_another_execution_writes_nothing(store: Store) -> None:
    start(store, "e1", "tok-1")
    other = start(store, "e2", "tok-2")
    assert store.create_wait(other, wait_row("e1")) is False
    assert store.get_waits("e1") == []
    assert store.get_waits("e2") == []


def test_create_wait_for_unknown_execution_writes_nothing(store: Store) -> None:
    assert store.create_wait("tok", wait_row("nope")) is False
    assert store.get_waits("nope") == []


def test_create_wait_after_finish_writes_nothing(store: Store) -> None:
    token = start(store)
    assert store.finish("e1", token, status="succeeded", result='"ok"', error=None, now=T0 + 5)
    assert store.create_wait(token, wait_row()) is False
    assert store.get_waits("e1") == []


def test_create_wait_on_a_parked_execution_is_refused_for_its_old_token(store: Store) -> None:
    waiting(store)
    before = snapshot(store, "e1")
    assert store.create_wait("tok-e1", wait_row(name="later", position="1")) is False
    assert snapshot(store, "e1") == before


def test_create_wait_keeps_an_existing_row_of_that_name_unchanged(store: Store) -> None:
    token = start(store)
    first = wait_row(question='"first"', created_at=T0 + 2)
    assert store.create_wait(token, first)
    second = wait_row(
        position="7",
        kind="sleep",
        question='"second"',
        schema_ref="x:Y",
        json_schema="{}",
        metadata='{"m":1}',
        deadline=T0 + 99,
        created_at=T0 + 9,
    )
    assert store.create_wait(token, second) is True
    assert store.get_waits("e1") == [first]


def test_create_wait_keeps_a_resolved_row_of_that_name_and_its_value(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    assert store.resolve_wait("e1", "w", status="resolved", value='"yes"', by="ann", now=T0 + 4)
    resolved = wait_named(store, "e1", "w")
    assert store.create_wait(token, wait_row()) is True
    assert store.get_waits("e1") == [resolved]
    assert resolved.status == "resolved"
    assert resolved.value == '"yes"'


# --- suspend ----------------------------------------------------------------------------------


def test_suspend_parks_the_execution_and_gives_up_the_lease(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    before = get(store)
    assert store.suspend("e1", token, wait="w", wake_at=T0 + 60.5, now=T0 + 3) is True
    row = get(store)
    assert row.status == "waiting"
    assert row.wake_at == T0 + 60.5
    assert (row.owner, row.lease_token, row.lease_expires) == (None, None, None)
    assert row.attempt == before.attempt
    assert row.result is None and row.error is None and row.finished_at is None
    assert wait_named(store, "e1", "w").status == "pending"


def test_suspend_without_a_wake_time_parks_until_input(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    assert store.suspend("e1", token, wait="w", wake_at=None, now=T0 + 3)
    row = get(store)
    assert row.status == "waiting"
    assert row.wake_at is None


def test_suspend_with_wrong_token_changes_nothing(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    before = snapshot(store, "e1")
    assert store.suspend("e1", "stale", wait="w", wake_at=T0 + 60, now=T0 + 3) is False
    assert snapshot(store, "e1") == before
    assert get(store).status == "running"


def test_suspend_after_finish_changes_nothing(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    assert store.finish("e1", token, status="failed", result=None, error="boom", now=T0 + 4)
    before = snapshot(store, "e1")
    assert store.suspend("e1", token, wait="w", wake_at=T0 + 60, now=T0 + 5) is False
    assert snapshot(store, "e1") == before


@pytest.mark.parametrize("outcome", ["resolved", "timed_out"])
def test_suspend_is_refused_when_the_wait_was_resolved_in_between(
    store: Store, outcome: str
) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    value = '"yes"' if outcome == "resolved" else None
    assert store.resolve_wait("e1", "w", status=outcome, value=value, by="ann", now=T0 + 3)
    before = snapshot(store, "e1")
    assert store.suspend("e1", token, wait="w", wake_at=T0 + 60, now=T0 + 4) is False
    assert snapshot(store, "e1") == before
    row = get(store)
    assert row.status == "running"
    assert row.lease_token == token
    # The holder still holds it: it can run the flow again and finish.
    assert store.finish("e1", token, status="succeeded", result='"ok"', error=None, now=T0 + 5)


def test_suspend_on_one_pending_wait_is_not_blocked_by_another_resolved_wait(
    store: Store,
) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row(name="first", position="0"))
    assert store.resolve_wait("e1", "first", status="resolved", value="1", by=None, now=T0 + 3)
    assert store.create_wait(token, wait_row(name="second", position="1"))
    assert store.suspend("e1", token, wait="second", wake_at=None, now=T0 + 4)
    assert get(store).status == "waiting"


def test_suspend_and_resolve_racing_never_leave_a_resolved_wait_parked(store: Store) -> None:
    """The lost wake-up: input arriving while the holder suspends must never be missed. And
    a reader that sees the execution parked sees its note; a refused suspension (the input
    won) leaves none behind."""
    rounds = 40
    for n in range(rounds):
        eid = f"e{n}"
        token = start(store, eid, f"tok-{n}")
        assert store.create_wait(token, wait_row(eid))
        outcome: dict[str, bool] = {}

        def contend(i: int, eid: str = eid, token: str = token, out: dict = outcome) -> None:
            if i == 0:
                out["suspend"] = store.suspend(
                    eid, token, wait="w", wake_at=None, now=T0 + 3, note=suspend_note(eid)
                )
            else:
                out["resolve"] = store.resolve_wait(
                    eid, "w", status="resolved", value='"v"', by="ann", now=T0 + 3
                )

        race(2, contend)
        assert outcome["resolve"] is True
        assert wait_named(store, eid, "w").status == "resolved"
        assert len(notes(store, eid)) == (1 if outcome["suspend"] else 0)
        row = get(store, eid)
        if outcome["suspend"]:
            # Parked first, then woken by the input.
            assert (row.status, row.lease_token) == ("queued", None)
        else:
            # The input came first: the holder keeps the lease and must run on.
            assert (row.status, row.lease_token) == ("running", token)


# --- suspend: the note of who continues it ---------------------------------------------------


def suspend_note(execution_id: str = "e1", owner: str = "host:1:a") -> EventRow:
    return EventRow(
        execution_id, None, T0 + 3, "info", "suspend", "suspended; pid 1 continues it",
        f'{{"owner": "{owner}", "parked": true}}',
    )  # fmt: skip


def notes(store: Store, execution_id: str = "e1") -> list[EventRow]:
    return store.get_events(execution_id, kinds=("suspend",))


def test_suspend_records_its_note_with_the_status(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    assert store.suspend("e1", token, wait="w", wake_at=None, now=T0 + 3, note=suspend_note())
    assert get(store).status == "waiting"
    [note] = notes(store)
    assert (note.kind, note.message, note.data) == (
        "suspend", "suspended; pid 1 continues it", '{"owner": "host:1:a", "parked": true}'
    )  # fmt: skip
    # Each suspension records its own: the latest note is the latest suspension's.
    assert store.resolve_wait("e1", "w", status="resolved", value="true", by="ann", now=T0 + 4)
    again = store.claim_runnable(lease("tok-2"), now=T0 + 5, due=T0 + 5)
    assert again is not None and again.id == "e1"
    assert store.create_wait("tok-2", wait_row(name="second", position="1"))
    second = suspend_note(owner="host:2:b")
    assert store.suspend("e1", "tok-2", wait="second", wake_at=None, now=T0 + 6, note=second)
    assert [n.data for n in notes(store)] == [note.data, second.data]


def test_a_refused_suspension_records_no_note(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    # The lease is not this token's.
    assert not store.suspend("e1", "stale", wait="w", wake_at=None, now=T0 + 3, note=suspend_note())
    # The wait got its input first: the holder runs the flow again.
    assert store.resolve_wait("e1", "w", status="resolved", value="true", by="ann", now=T0 + 3)
    assert not store.suspend("e1", token, wait="w", wake_at=None, now=T0 + 4, note=suspend_note())
    assert notes(store) == []
    assert get(store).status == "running"
    # Ended meanwhile.
    assert store.finish("e1", token, status="succeeded", result="1", error=None, now=T0 + 5)
    assert not store.suspend("e1", token, wait="w", wake_at=None, now=T0 + 6, note=suspend_note())
    assert notes(store) == []


def test_a_suspension_parked_as_cancelled_records_no_note(store: Store) -> None:
    """Nothing continues a cancelled execution: a note saying a process will would mislead
    whoever reads it (the timeline, adoption)."""
    token = start(store)
    assert store.create_wait(token, wait_row())
    assert store.request_cancel("e1", now=T0 + 3) == "running"
    assert store.suspend("e1", token, wait="w", wake_at=None, now=T0 + 4, note=suspend_note())
    assert get(store).status == "cancelled"
    assert notes(store) == []


def test_a_note_for_another_execution_is_refused_and_changes_nothing(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    before = snapshot(store, "e1")
    with pytest.raises(UsageError, match="the execution being suspended"):
        store.suspend("e1", token, wait="w", wake_at=None, now=T0 + 3, note=suspend_note("e2"))
    assert snapshot(store, "e1") == before
    assert notes(store) == [] and notes(store, "e2") == []


# --- resolve_wait -----------------------------------------------------------------------------


def test_resolve_wait_records_the_value_and_wakes_a_waiting_execution(store: Store) -> None:
    waiting(store, wake_at=T0 + 500)
    assert (
        store.resolve_wait("e1", "w", status="resolved", value='{"ok":true}', by="ann", now=T0 + 10)
        is True
    )
    wait = wait_named(store, "e1", "w")
    assert (wait.status, wait.value, wait.resolved_by, wait.resolved_at) == (
        "resolved",
        '{"ok":true}',
        "ann",
        T0 + 10,
    )
    row = get(store)
    assert row.status == "queued"
    assert row.wake_at is None
    assert (row.owner, row.lease_token) == (None, None)
    # Woken means runnable at once, whatever the clocks say.
    assert runnable_ids(store, now=NOW, due=T0) == {"e1"}


def test_resolve_wait_keeps_the_other_fields_of_the_wait(store: Store) -> None:
    token = start(store)
    created = wait_row(
        position="4",
        question='"q"',
        schema_ref="a:B",
        json_schema='{"type":"string"}',
        metadata='{"k":1}',
        deadline=T0 + 90,
    )
    assert store.create_wait(token, created)
    assert store.resolve_wait("e1", "w", status="resolved", value='"v"', by="bob", now=T0 + 7)
    expected = dataclasses.replace(
        created, status="resolved", value='"v"', resolved_by="bob", resolved_at=T0 + 7
    )
    assert store.get_waits("e1") == [expected]


def test_timed_out_resolution_wakes_a_waiting_execution_the_same_way(store: Store) -> None:
    waiting(store, wake_at=T0 + 60)
    assert store.resolve_wait("e1", "w", status="timed_out", value=None, by="deadline", now=T0 + 61)
    wait = wait_named(store, "e1", "w")
    assert (wait.status, wait.value, wait.resolved_by) == ("timed_out", None, "deadline")
    row = get(store)
    assert row.status == "queued"
    assert row.wake_at is None


def test_resolve_wait_of_a_running_execution_keeps_its_status_and_lease(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    before = get(store)
    assert store.resolve_wait("e1", "w", status="resolved", value='"v"', by=None, now=T0 + 3)
    row = get(store)
    assert (row.status, row.owner, row.lease_token, row.lease_expires, row.attempt) == (
        before.status,
        before.owner,
        before.lease_token,
        before.lease_expires,
        before.attempt,
    )
    assert wait_named(store, "e1", "w").status == "resolved"


@pytest.mark.parametrize("second", ["resolved", "timed_out"])
def test_a_wait_resolves_only_once_and_the_first_value_stays(store: Store, second: str) -> None:
    waiting(store)
    assert store.resolve_wait("e1", "w", status="resolved", value='"first"', by="ann", now=T0 + 4)
    after_first = snapshot(store, "e1")
    assert (
        store.resolve_wait("e1", "w", status=second, value='"second"', by="bob", now=T0 + 5)
        is False
    )
    assert snapshot(store, "e1") == after_first
    assert wait_named(store, "e1", "w").value == '"first"'


def test_a_timed_out_wait_cannot_be_resolved_with_late_input(store: Store) -> None:
    waiting(store, wake_at=T0 + 60)
    assert store.resolve_wait("e1", "w", status="timed_out", value=None, by="deadline", now=T0 + 61)
    after = snapshot(store, "e1")
    assert not store.resolve_wait(
        "e1", "w", status="resolved", value='"late"', by="ann", now=T0 + 62
    )
    assert snapshot(store, "e1") == after


def test_resolve_wait_of_unknown_name_returns_false_and_changes_nothing(store: Store) -> None:
    waiting(store)
    before = snapshot(store, "e1")
    assert store.resolve_wait("e1", "nope", status="resolved", value="1", by=None, now=T0 + 4) is (
        False
    )
    assert snapshot(store, "e1") == before
    assert get(store).status == "waiting"


def test_resolve_wait_of_unknown_execution_returns_false(store: Store) -> None:
    waiting(store)
    before = snapshot(store, "e1")
    assert not store.resolve_wait("nope", "w", status="resolved", value="1", by=None, now=T0 + 4)
    assert snapshot(store, "e1") == before


def test_resolving_one_executions_wait_leaves_a_namesake_in_another_alone(store: Store) -> None:
    waiting(store, "e1")
    waiting(store, "e2")
    assert store.resolve_wait("e1", "w", status="resolved", value="1", by=None, now=T0 + 4)
    assert wait_named(store, "e2", "w").status == "pending"
    assert get(store, "e2").status == "waiting"


def test_only_one_of_many_concurrent_resolutions_wins_and_its_value_is_kept(
    store: Store,
) -> None:
    waiting(store)
    contenders = 8
    results: dict[int, bool] = {}

    def contend(i: int) -> None:
        results[i] = store.resolve_wait(
            "e1", "w", status="resolved", value=f'"value-{i}"', by=f"user-{i}", now=T0 + 4
        )

    race(contenders, contend)
    winners = [i for i, won in results.items() if won]
    assert len(results) == contenders
    assert len(winners) == 1
    wait = wait_named(store, "e1", "w")
    assert wait.status == "resolved"
    assert wait.value == f'"value-{winners[0]}"'
    assert wait.resolved_by == f"user-{winners[0]}"
    assert get(store).status == "queued"


# --- pending_waits ----------------------------------------------------------------------------


def _pending_waits_world(store: Store) -> None:
    """a1 (flow a, running): input `old` (T0+2), sleep `nap`, resolved input `done`;
    b1 (flow b, waiting): input `ask` (T0+3); a2 (flow a, running): input `new` (T0+4);
    a3 and b2: a pending input wait each, but the executions have finished."""
    a1 = start(store, "a1", "tok-a1", flow="a")
    assert store.create_wait(a1, wait_row("a1", "nap", position="0", kind="sleep", created_at=T0))
    assert store.create_wait(a1, wait_row("a1", "old", position="1", created_at=T0 + 2))
    assert store.create_wait(a1, wait_row("a1", "done", position="2", created_at=T0 + 1))
    assert store.resolve_wait("a1", "done", status="resolved", value="1", by=None, now=T0 + 2)
    b1 = start(store, "b1", "tok-b1", flow="b")
    assert store.create_wait(b1, wait_row("b1", "ask", created_at=T0 + 3))
    assert store.suspend("b1", b1, wait="ask", wake_at=None, now=T0 + 3)
    a2 = start(store, "a2", "tok-a2", flow="a")
    assert store.create_wait(a2, wait_row("a2", "new", created_at=T0 + 4))
    for eid, flow, final in (("a3", "a", "succeeded"), ("b2", "b", "failed")):
        token = start(store, eid, f"tok-{eid}", flow=flow)
        assert store.create_wait(token, wait_row(eid, "gone", created_at=T0 + 0.5))
        assert store.finish(eid, token, status=final, result=None, error=None, now=T0 + 5)


def test_pending_waits_lists_pending_input_waits_of_unfinished_executions_oldest_first(
    store: Store,
) -> None:
    _pending_waits_world(store)
    listed = store.pending_waits(flow=None, limit=100)
    assert [(p.wait.execution_id, p.wait.name, p.flow) for p in listed] == [
        ("a1", "old", "a"),
        ("b1", "ask", "b"),
        ("a2", "new", "a"),
    ]
    assert all(p.wait.status == "pending" and p.wait.kind == "input" for p in listed)


def test_pending_waits_rows_carry_the_full_wait(store: Store) -> None:
    token = start(store, "e1", flow="research")
    row = wait_row(
        position="2",
        question='"how many?"',
        schema_ref="a:B",
        json_schema='{"type":"integer"}',
        metadata='{"m":true}',
        deadline=T0 + 30.5,
        created_at=T0 + 2.125,
    )
    assert store.create_wait(token, row)
    [listed] = store.pending_waits(flow=None, limit=10)
    assert listed.wait == row
    assert listed.flow == "research"


def test_pending_waits_filters_by_flow(store: Store) -> None:
    _pending_waits_world(store)
    assert [p.wait.name for p in store.pending_waits(flow="a", limit=100)] == ["old", "new"]
    assert [p.wait.name for p in store.pending_waits(flow="b", limit=100)] == ["ask"]
    assert store.pending_waits(flow="nope", limit=100) == []


def test_pending_waits_limit_keeps_the_oldest(store: Store) -> None:
    _pending_waits_world(store)
    assert [p.wait.name for p in store.pending_waits(flow=None, limit=2)] == ["old", "ask"]
    assert [p.wait.name for p in store.pending_waits(flow="a", limit=1)] == ["old"]


def test_pending_waits_drops_a_wait_once_resolved_or_its_execution_cancelled(
    store: Store,
) -> None:
    _pending_waits_world(store)
    assert store.resolve_wait("a1", "old", status="resolved", value="1", by=None, now=T0 + 6)
    assert store.request_cancel("b1", now=T0 + 6) == "cancelled"
    assert [p.wait.name for p in store.pending_waits(flow=None, limit=100)] == ["new"]


# --- runnable and claim_runnable: what is runnable --------------------------------------------


def _runnable_world(store: Store) -> set[str]:
    """One execution of every kind; returns the ids runnable at now=NOW+100, due=T0+50."""
    now, due = NOW + 100, T0 + 50
    store.create_execution(execution("queued-free", created_at=T0))
    store.create_execution(execution("queued-dead-lease", created_at=T0 + 0.1))
    assert store.claim(
        "queued-dead-lease",
        lease("t-qd", expires=now - 1),
        from_statuses=["queued"],
        expected_token=None,
        now=NOW,
        status="queued",
    )
    store.create_execution(execution("queued-live-lease", created_at=T0 + 0.2))
    assert store.claim(
        "queued-live-lease",
        lease("t-ql", expires=now + LEASE),
        from_statuses=["queued"],
        expected_token=None,
        now=NOW,
        status="queued",
    )
    waiting(store, "waiting-due", wake_at=due - 1, created_at=T0 + 0.3)
    waiting(store, "waiting-due-exactly", wake_at=due, created_at=T0 + 0.4)
    waiting(store, "waiting-not-due", wake_at=due + 1, created_at=T0 + 0.5)
    waiting(store, "waiting-for-input", wake_at=None, created_at=T0 + 0.6)
    start(store, "running-dead-lease", "t-rd", created_at=T0 + 0.7, expires=now - 1)
    start(store, "running-live-lease", "t-rl", created_at=T0 + 0.8, expires=now + LEASE)
    for n, final in enumerate(FINAL):
        token = start(store, final, f"t-{final}", created_at=T0 + 0.9 + n / 100, expires=now - 1)
        assert store.finish(final, token, status=final, result=None, error=None, now=NOW)
    return {
        "queued-free",
        "queued-dead-lease",
        "waiting-due",
        "waiting-due-exactly",
        "running-dead-lease",
    }


def test_runnable_lists_exactly_the_executions_a_worker_may_take(store: Store) -> None:
    expected = _runnable_world(store)
    assert runnable_ids(store, now=NOW + 100, due=T0 + 50) == expected


def test_runnable_is_oldest_first_and_limited(store: Store) -> None:
    _runnable_world(store)
    ids = [r.id for r in store.runnable(now=NOW + 100, due=T0 + 50, limit=100)]
    assert ids == [
        "queued-free",
        "queued-dead-lease",
        "waiting-due",
        "waiting-due-exactly",
        "running-dead-lease",
    ]
    limited = store.runnable(now=NOW + 100, due=T0 + 50, limit=2)
    assert [r.id for r in limited] == ["queued-free", "queued-dead-lease"]


def test_runnable_does_not_claim(store: Store) -> None:
    _runnable_world(store)
    before = {
        r.id: dataclasses.replace(r) for r in store.runnable(now=NOW + 100, due=T0 + 50, limit=100)
    }
    again = store.runnable(now=NOW + 100, due=T0 + 50, limit=100)
    assert {r.id: r for r in again} == before
    assert all(get(store, eid) == row for eid, row in before.items())


def test_claim_runnable_takes_only_runnable_executions_then_returns_none(store: Store) -> None:
    expected = _runnable_world(store)
    taken: list[str] = []
    for n in range(len(expected) + 3):
        row = store.claim_runnable(
            lease(f"new-{n}", expires=NOW + 1000), now=NOW + 100, due=T0 + 50
        )
        if row is None:
            break
        taken.append(row.id)
    assert taken == [
        "queued-free",
        "queued-dead-lease",
        "waiting-due",
        "waiting-due-exactly",
        "running-dead-lease",
    ]
    assert store.claim_runnable(lease("late"), now=NOW + 100, due=T0 + 50) is None


def test_waiting_timer_follows_the_due_clock_and_leases_follow_the_now_clock(
    store: Store,
) -> None:
    # Timers compare wake_at with `due`; leases compare lease_expires with `now`.
    waiting(store, "timer", wake_at=100.0)
    assert runnable_ids(store, now=0.0, due=100.0) == {"timer"}
    assert runnable_ids(store, now=100.0, due=0.0) == set()
    assert runnable_ids(store, now=1e12, due=99.999) == set()
    assert store.claim_runnable(lease("x", expires=1e12 + LEASE), now=1e12, due=99.0) is None
    row = store.claim_runnable(lease("t", expires=LEASE), now=0.0, due=100.0)
    assert row is not None
    assert row.id == "timer"


def test_running_lease_expiry_follows_the_now_clock_not_the_due_clock(store: Store) -> None:
    start(store, "held", "t-held", now=10.0, expires=50.0)
    assert runnable_ids(store, now=100.0, due=0.0) == {"held"}
    assert runnable_ids(store, now=0.0, due=100.0) == set()
    assert store.claim_runnable(lease("x", expires=200.0), now=0.0, due=100.0) is None
    row = store.claim_runnable(lease("y", expires=200.0), now=100.0, due=0.0)
    assert row is not None
    assert (row.id, row.lease_token) == ("held", "y")


def test_a_waiting_execution_without_wake_time_is_never_runnable_by_timer(store: Store) -> None:
    waiting(store, wake_at=None)
    assert runnable_ids(store, now=1e15, due=1e15) == set()
    assert store.claim_runnable(lease("x"), now=1e15, due=1e15) is None


# --- claim_runnable: what a claim does --------------------------------------------------------


def test_claim_runnable_of_a_due_waiting_execution_runs_it_and_clears_wake_at(
    store: Store,
) -> None:
    waiting(store, wake_at=T0 + 10)
    before = get(store)
    claim = Claim(owner="host:9:z", token="tok-new", expires=T0 + 500)
    row = store.claim_runnable(claim, now=T0 + 11, due=T0 + 10)
    assert row is not None
    assert row.id == "e1"
    assert row.status == "running"
    assert (row.owner, row.lease_token, row.lease_expires) == ("host:9:z", "tok-new", T0 + 500)
    assert row.attempt == before.attempt + 1
    assert row.wake_at is None
    assert get(store) == row
    # The new holder holds it: fenced writes go through with its token only.
    assert store.create_wait("tok-new", wait_row(name="next", position="1"))
    assert not store.create_wait("tok-e1", wait_row(name="other", position="2"))


def test_claim_runnable_takes_over_an_expired_running_lease(store: Store) -> None:
    old = start(store, expires=T0 + 10)
    row = store.claim_runnable(
        lease("tok-2", owner="host:2:b", expires=T0 + 100), now=T0 + 11, due=T0
    )
    assert row is not None
    assert (row.status, row.owner, row.lease_token, row.attempt) == (
        "running",
        "host:2:b",
        "tok-2",
        2,
    )
    assert not store.finish("e1", old, status="succeeded", result=None, error=None, now=T0 + 12)


def test_claim_runnable_takes_the_oldest_first(store: Store) -> None:
    for eid, created in (("mid", T0 + 2), ("new", T0 + 3), ("old", T0 + 1)):
        store.create_execution(execution(eid, created_at=created))
    order = []
    for n in range(3):
        row = store.claim_runnable(lease(f"t{n}"), now=NOW, due=NOW)
        assert row is not None
        order.append(row.id)
    assert order == ["old", "mid", "new"]


def test_claim_runnable_with_ids_picks_only_among_those(store: Store) -> None:
    store.create_execution(execution("old", created_at=T0))
    store.create_execution(execution("new", created_at=T0 + 1))
    store.create_execution(execution("newest", created_at=T0 + 2))
    row = store.claim_runnable(lease("t1"), now=NOW, due=NOW, ids=["newest", "new"])
    assert row is not None
    assert row.id == "new"
    assert get(store, "old").status == "queued"
    assert get(store, "newest").status == "queued"


def test_claim_runnable_with_ids_of_nothing_runnable_returns_none(store: Store) -> None:
    start(store, "held", "t-held")
    store.create_execution(execution("free"))
    before = snapshot(store, "held")
    assert store.claim_runnable(lease("t"), now=NOW, due=NOW, ids=["held", "unknown"]) is None
    assert snapshot(store, "held") == before
    assert get(store, "free").status == "queued"


def test_claim_runnable_with_empty_ids_claims_nothing(store: Store) -> None:
    store.create_execution(execution("free"))
    before = snapshot(store, "free")
    assert store.claim_runnable(lease("t"), now=NOW, due=NOW, ids=[]) is None
    assert snapshot(store, "free") == before


def test_claim_runnable_of_an_empty_store_returns_none(store: Store) -> None:
    assert store.claim_runnable(lease("t"), now=NOW, due=NOW) is None
    assert store.runnable(now=NOW, due=NOW, limit=10) == []


def test_a_claimed_execution_is_not_runnable_while_its_lease_lives(store: Store) -> None:
    store.create_execution(execution())
    assert store.claim_runnable(lease("t1", expires=T0 + 100), now=NOW, due=NOW) is not None
    assert runnable_ids(store, now=T0 + 99, due=T0 + 99) == set()
    assert store.claim_runnable(lease("t2"), now=T0 + 99, due=T0 + 99) is None
    assert runnable_ids(store, now=T0 + 101, due=T0) == {"e1"}


def test_two_racing_claimers_of_one_runnable_execution_get_it_once(store: Store) -> None:
    for n in range(15):
        eid = f"e{n}"
        store.create_execution(execution(eid, created_at=T0 + n))
        got: dict[int, ExecutionRow | None] = {}

        def contend(i: int, n: int = n, got: dict = got) -> None:
            got[i] = store.claim_runnable(
                lease(f"tok-{n}-{i}", owner=f"host:{i}:x"), now=NOW, due=NOW
            )

        race(2, contend)
        winners = [row for row in got.values() if row is not None]
        assert len(winners) == 1, got
        assert winners[0].id == eid
        row = get(store, eid)
        assert row.lease_token == winners[0].lease_token
        assert row.attempt == 1


def test_concurrent_claimers_take_each_runnable_execution_exactly_once(store: Store) -> None:
    # 20 runnable executions of every runnable kind, and some that must never be taken.
    now, due = NOW + 100, T0 + 50
    expected: set[str] = set()
    for n in range(20):
        eid = f"r{n:02d}"
        created = T0 + n / 100
        if n % 3 == 0:
            store.create_execution(execution(eid, created_at=created))
        elif n % 3 == 1:
            waiting(store, eid, wake_at=due - n, created_at=created)
        else:
            start(store, eid, f"old-{n}", created_at=created, expires=now - 1)
        expected.add(eid)
    start(store, "live", "t-live", expires=now + LEASE)
    waiting(store, "later", wake_at=due + 1)
    before = {eid: get(store, eid).attempt for eid in expected}
    claimers = 4
    taken: dict[int, list[ExecutionRow]] = {i: [] for i in range(claimers)}

    def contend(i: int) -> None:
        n = 0
        while True:
            row = store.claim_runnable(
                lease(f"tok-{i}-{n}", owner=f"host:{i}:x", expires=now + LEASE), now=now, due=due
            )
            if row is None:
                return
            taken[i].append(row)
            n += 1

    race(claimers, contend)
    all_taken = [row.id for rows in taken.values() for row in rows]
    assert sorted(all_taken) == sorted(expected)
    for rows in taken.values():
        for row in rows:
            stored = get(store, row.id)
            assert stored.lease_token == row.lease_token
            assert stored.status == "running"
            assert stored.attempt == before[row.id] + 1
    assert get(store, "live").lease_token == "t-live"
    assert get(store, "later").status == "waiting"


# --- cancel and finish ------------------------------------------------------------------------


def test_cancel_of_a_waiting_execution_cancels_it_and_its_pending_waits(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row(name="answered", position="0"))
    assert store.resolve_wait("e1", "answered", status="resolved", value="1", by="ann", now=T0 + 2)
    assert store.create_wait(token, wait_row(name="nap", position="1", kind="sleep"))
    assert store.create_wait(token, wait_row(name="ask", position="2"))
    assert store.suspend("e1", token, wait="ask", wake_at=T0 + 60, now=T0 + 3)
    answered = wait_named(store, "e1", "answered")

    assert store.request_cancel("e1", now=T0 + 4) == "cancelled"

    row = get(store)
    assert row.status == "cancelled"
    assert row.wake_at is None
    assert row.lease_token is None
    assert wait_named(store, "e1", "answered") == answered
    assert wait_named(store, "e1", "nap").status == "cancelled"
    assert wait_named(store, "e1", "ask").status == "cancelled"
    assert store.pending_waits(flow=None, limit=10) == []
    assert runnable_ids(store, now=T0 + 1000, due=T0 + 1000) == set()


def test_input_arriving_after_cancel_is_refused(store: Store) -> None:
    waiting(store, wake_at=T0 + 60)
    assert store.request_cancel("e1", now=T0 + 4) == "cancelled"
    after = snapshot(store, "e1")
    assert not store.resolve_wait("e1", "w", status="resolved", value="1", by=None, now=T0 + 5)
    assert snapshot(store, "e1") == after


def test_cancel_and_input_racing_always_end_cancelled_with_a_consistent_wait(
    store: Store,
) -> None:
    for n in range(20):
        eid = f"e{n}"
        waiting(store, eid, wake_at=None)
        outcome: dict[str, object] = {}

        def contend(i: int, eid: str = eid, out: dict = outcome) -> None:
            if i == 0:
                out["cancel"] = store.request_cancel(eid, now=T0 + 4)
            else:
                out["resolve"] = store.resolve_wait(
                    eid, "w", status="resolved", value="1", by=None, now=T0 + 4
                )

        race(2, contend)
        assert outcome["cancel"] == "cancelled"
        assert get(store, eid).status == "cancelled"
        expected_wait = "resolved" if outcome["resolve"] else "cancelled"
        assert wait_named(store, eid, "w").status == expected_wait


@pytest.mark.parametrize("final", FINAL)
def test_finish_clears_wake_at(store: Store, final: str) -> None:
    waiting(store, wake_at=T0 + 60)
    # Taken over straight from `waiting` (as a client does to act on it): wake_at may remain.
    assert store.claim(
        "e1", lease("tok-2"), from_statuses=["waiting"], expected_token=None, now=T0 + 4
    )
    assert store.finish("e1", "tok-2", status=final, result=None, error=None, now=T0 + 5)
    row = get(store)
    assert row.status == final
    assert row.wake_at is None
    assert runnable_ids(store, now=T0 + 1000, due=T0 + 1000) == set()


# --- bad input never corrupts stored data -----------------------------------------------------


def test_refused_operations_leave_every_stored_row_identical(store: Store) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row(name="answered", position="0"))
    assert store.resolve_wait(
        "e1", "answered", status="resolved", value='"a"', by="ann", now=T0 + 2
    )
    assert store.create_wait(token, wait_row(name="ask", position="1"))
    before = snapshot(store, "e1")

    refused: list[Callable[[], bool]] = [
        lambda: store.suspend("e1", "stale", wait="ask", wake_at=T0 + 9, now=T0 + 3),
        lambda: store.suspend("e1", token, wait="answered", wake_at=T0 + 9, now=T0 + 3),
        lambda: store.create_wait("stale", wait_row(name="new", position="2")),
        lambda: store.resolve_wait(
            "e1", "answered", status="resolved", value='"b"', by="bob", now=T0 + 3
        ),
        lambda: store.resolve_wait(
            "e1", "answered", status="timed_out", value=None, by=None, now=T0 + 3
        ),
        lambda: store.resolve_wait(
            "e1", "missing", status="resolved", value='"c"', by=None, now=T0 + 3
        ),
        lambda: store.resolve_wait(
            "nope", "ask", status="resolved", value='"d"', by=None, now=T0 + 3
        ),
    ]
    for attempt in refused:
        assert attempt() is False
        assert snapshot(store, "e1") == before
    # And an accepted no-op: re-creating an existing wait changes nothing either.
    assert store.create_wait(token, wait_row(name="ask", position="5", question='"other"'))
    assert snapshot(store, "e1") == before


def test_refused_operations_on_a_parked_execution_leave_it_parked(store: Store) -> None:
    waiting(store, wake_at=T0 + 60)
    before = snapshot(store, "e1")
    assert not store.suspend("e1", "tok-e1", wait="w", wake_at=T0 + 1, now=T0 + 5)
    assert not store.create_wait("tok-e1", wait_row(name="x", position="1"))
    assert not store.resolve_wait("e1", "x", status="resolved", value="1", by=None, now=T0 + 5)
    assert snapshot(store, "e1") == before
    assert runnable_ids(store, now=T0 + 5, due=T0 + 59) == set()
    assert runnable_ids(store, now=T0 + 5, due=T0 + 60) == {"e1"}


@pytest.mark.parametrize("status", ["pending", "bogus"])
def test_resolution_with_a_status_that_is_not_an_outcome_changes_nothing(
    store: Store, status: str
) -> None:
    waiting(store)
    before = snapshot(store, "e1")
    try:
        accepted = store.resolve_wait("e1", "w", status=status, value='"x"', by=None, now=T0 + 4)
    except Exception:  # the interface names no type for this
        accepted = False
    assert accepted is False
    assert snapshot(store, "e1") == before


def test_a_cancel_requested_while_running_is_not_lost_when_the_holder_suspends(
    store: Store,
) -> None:
    token = start(store)
    assert store.create_wait(token, wait_row())
    # Nobody is parked yet: the cancel can only be flagged for the holder.
    assert store.request_cancel("e1", now=T0 + 3) == "running"
    parked = store.suspend("e1", token, wait="w", wake_at=None, now=T0 + 4)
    row = get(store)
    if not parked:
        # Refused: the holder keeps the lease and learns of the cancel.
        assert (row.status, row.lease_token, row.cancel_requested) == ("running", token, True)
    else:
        # Accepted: then the cancel must take effect now, or the execution must stay reachable.
        assert row.status == "cancelled" or "e1" in runnable_ids(store, now=T0 + 5, due=T0 + 5)
        if row.status == "cancelled":
            assert store.pending_waits(flow=None, limit=10) == []


# --- claim_runnable: exclusions and history ---------------------------------------------------


def test_claim_runnable_leaves_out_excluded_queues(store: Store) -> None:
    store.create_execution(dataclasses.replace(execution("a", created_at=T0), queue="busy"))
    store.create_execution(dataclasses.replace(execution("b", created_at=T0 + 1), queue="free"))
    row = store.claim_runnable(lease("t1"), now=NOW, due=NOW, exclude_queues=["busy"])
    assert row is not None
    assert row.id == "b"
    assert store.claim_runnable(lease("t2"), now=NOW, due=NOW, exclude_queues=["busy"]) is None
    assert get(store, "a").status == "queued"
    # Excluding wins over naming the queue.
    assert (
        store.claim_runnable(
            lease("t3"), now=NOW, due=NOW, queues=["busy"], exclude_queues=["busy"]
        )
        is None
    )


def test_claim_runnable_leaves_out_excluded_queues_with_limits(store: Store) -> None:
    store.set_queue_limits("capped", concurrency=5, rate_limit=None, rate_period=None, now=T0)
    store.create_execution(dataclasses.replace(execution("a"), queue="capped"))
    assert store.claim_runnable(lease("t1"), now=NOW, due=NOW, exclude_queues=["capped"]) is None
    row = store.claim_runnable(lease("t2"), now=NOW, due=NOW)
    assert row is not None
    assert row.id == "a"


def test_claim_runnable_leaves_out_excluded_flows(store: Store) -> None:
    def flow_execution(eid: str, import_path: str, script: str | None, n: int) -> ExecutionRow:
        row = execution(eid, created_at=T0 + n)
        return dataclasses.replace(row, import_path=import_path, script=script)

    store.create_execution(flow_execution("plain", "agents:a", None, 0))
    store.create_execution(flow_execution("script", "__main__:a", "/x/one.py", 1))
    store.create_execution(flow_execution("other-script", "__main__:a", "/x/two.py", 2))
    store.create_execution(flow_execution("ok", "agents:b", None, 3))
    excluded = [("agents:a", None), ("__main__:a", "/x/one.py")]
    taken = []
    for n in range(3):
        row = store.claim_runnable(lease(f"t{n}"), now=NOW, due=NOW, exclude_flows=excluded)
        if row is None:
            break
        taken.append(row.id)
    assert taken == ["other-script", "ok"]
    assert get(store, "plain").status == "queued"
    assert get(store, "script").status == "queued"


def test_claim_runnable_says_whether_anything_is_recorded(store: Store) -> None:
    store.create_execution(execution("fresh", created_at=T0))
    store.create_execution(execution("with-calls", created_at=T0 + 1))
    store.create_execution(execution("with-wait", created_at=T0 + 2))
    fresh = store.claim_runnable(lease("t1"), now=NOW, due=NOW)
    assert fresh is not None
    assert (fresh.id, fresh.has_history) == ("fresh", False)
    # A holder records a call, then loses its lease; the next claimer must load it.
    calls = store.claim_runnable(lease("t2", expires=T0 + 5), now=NOW, due=NOW)
    assert calls is not None
    assert calls.id == "with-calls"
    assert store.record_checkpoint(
        "with-calls", "t2", CheckpointRow("0", "step", "fp", "succeeded")
    )
    waits = store.claim_runnable(lease("t3", expires=T0 + 5), now=NOW, due=NOW)
    assert waits is not None
    assert waits.id == "with-wait"
    assert store.create_wait("t3", wait_row("with-wait", "w"))
    again = {}
    for n in range(2):
        row = store.claim_runnable(lease(f"t{n + 4}"), now=T0 + 6, due=T0 + 6)
        assert row is not None
        again[row.id] = row.has_history
    assert again == {"with-calls": True, "with-wait": True}
    # Not a stored field: rows read back compare equal whatever it says.
    assert get(store, "fresh") == fresh
