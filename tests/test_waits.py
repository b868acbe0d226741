"""wait() and sleep() in one process, with an injected clock (no real long sleeps)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any, Literal

import pytest
from pydantic import BaseModel

import tether
from helpers import FakeClock, retry_until
from tether import Status
from tether.store import EventRow

ran: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


def waiting(handle: tether.Handle[Any]) -> tether.Handle[Any]:
    retry_until(lambda: handle.status() is Status.WAITING, what=f"{handle.id} to wait")
    return handle


@tether.checkpoint
def draft(topic: str) -> str:
    ran["draft"] += 1
    return f"draft on {topic}"


@tether.checkpoint
def publish(text: str) -> str:
    ran["publish"] += 1
    return f"published {text}"


@tether.flow
def approval(topic: str) -> str:
    text = draft(topic)
    if not tether.wait("approve", schema=bool, question={"draft": text}):
        return "rejected"
    return publish(text)


@tether.flow
async def async_approval(topic: str) -> str:
    text = draft(topic)
    if not tether.wait("approve", schema=bool, question=text):
        return "rejected"
    return publish(text)


@pytest.mark.parametrize("flow", [approval, async_approval])
def test_wait_suspends_and_input_resumes_without_rerunning_checkpoints(
    client: tether.Client, flow: tether.Flow[Any, Any]
) -> None:
    handle = waiting(flow.run("tides"))
    record = client.get(handle.id)
    assert record.owner is None, "a waiting execution is held by nobody"
    (pending,) = record.pending_waits
    assert pending.name == "approve" and pending.json_schema == {"type": "boolean"}
    client.input(handle.id, "approve", True, by="alice")
    assert handle.result(timeout=10) == "published draft on tides"
    assert ran == Counter(draft=1, publish=1)
    (wait,) = client.get(handle.id).waits
    assert (wait.status, wait.value, wait.resolved_by) == ("resolved", True, "alice")


def test_denial_path(client: tether.Client) -> None:
    handle = waiting(approval.run("x"))
    client.input(handle.id, value=False)  # the only pending wait is found by itself
    assert handle.result(timeout=10) == "rejected"
    assert ran["publish"] == 0


def test_pending_waits_lists_question_schema_and_since(client: tether.Client) -> None:
    handle = waiting(approval.run("seas"))
    (pending,) = client.pending_waits(flow="approval")
    assert pending.execution_id == handle.id
    assert pending.question == {"draft": "draft on seas"}
    assert pending.json_schema == {"type": "boolean"}
    assert pending.deadline is None and pending.created_at is not None
    assert client.pending_waits(flow="other") == []
    assert [w.name for w in handle.pending_waits()] == ["approve"]


def test_result_keeps_waiting_through_a_wait(client: tether.Client) -> None:
    handle = waiting(approval.run("x"))
    with pytest.raises(tether.ResultTimeout):
        handle.result(timeout=0.05)
    threading.Timer(0.1, lambda: client.input(handle.id, "approve", True)).start()
    assert handle.result(timeout=10) == "published draft on x"


# --- bad input ------------------------------------------------------------------------------


def test_invalid_input_is_refused_and_changes_nothing(client: tether.Client) -> None:
    handle = waiting(approval.run("x"))
    before = client.get(handle.id)
    with pytest.raises(tether.InputValidationError) as info:
        client.input(handle.id, "approve", "perhaps")
    assert info.value.errors and info.value.errors[0]["type"] == "bool_parsing"
    with pytest.raises(tether.InputValidationError, match=r"not valid JSON|does not match"):
        client.input_json(handle.id, "approve", "{not json")
    after = client.get(handle.id)
    assert after.status is Status.WAITING
    assert after.waits == before.waits
    client.input(handle.id, "approve", True)
    assert handle.result(timeout=10) == "published draft on x"


def test_unknown_wait_unknown_execution_and_finished_execution_are_clear_errors(
    client: tether.Client,
) -> None:
    handle = waiting(approval.run("x"))
    with pytest.raises(tether.WaitNotFound, match=r"no wait 'nope'.*'approve'"):
        client.input(handle.id, "nope", True)
    with pytest.raises(tether.ExecutionNotFound):
        client.input("missing", "approve", True)
    client.input(handle.id, "approve", True)
    handle.result(timeout=10)
    with pytest.raises(tether.InvalidStateError, match="no more input"):
        client.input(handle.id, "approve", True)


def test_duplicate_input_is_refused(client: tether.Client) -> None:
    handle = waiting(approval.run("x"))
    client.input(handle.id, "approve", False)
    with pytest.raises((tether.WaitAlreadyResolved, tether.InvalidStateError)):
        client.input(handle.id, "approve", True)
    assert handle.result(timeout=10) == "rejected"


def test_concurrent_inputs_exactly_one_wins(client: tether.Client) -> None:
    handle = waiting(approval.run("x"))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def give(value: bool) -> None:
        barrier.wait()
        try:
            tether.Client().input(handle.id, "approve", value)
            outcomes.append(f"won:{value}")
        except (tether.WaitAlreadyResolved, tether.InvalidStateError):
            outcomes.append("lost")

    threads = [threading.Thread(target=give, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("lost") == 7
    expected = "published draft on x" if winners[0] == "won:True" else "rejected"
    assert handle.result(timeout=10) == expected


def test_a_huge_input_is_refused_before_anything_is_stored(client: tether.Client) -> None:
    handle = waiting(approval.run("x"))
    huge = "x" * (50 * 1024 * 1024)
    with pytest.raises(tether.InputTooLarge, match="over the limit"):
        client.input_json(handle.id, "approve", f'"{huge}"')
    with pytest.raises((tether.InputTooLarge, tether.InputValidationError)):
        client.input(handle.id, "approve", huge)
    record = client.get(handle.id)
    assert record.status is Status.WAITING
    assert record.waits[0].status == "pending"


class Review(BaseModel):
    approved: bool
    comment: str = ""


@tether.flow
def reviewed(topic: str) -> dict[str, Any]:
    text = draft(topic)
    review = tether.wait("review", schema=Review, question=text)
    choice = tether.wait("channel", schema=Literal["blog", "mail"])
    return {"review": review, "channel": choice, "is_model": isinstance(review, Review)}


def test_pydantic_schema_input_arrives_as_the_model(client: tether.Client) -> None:
    handle = waiting(reviewed.run("x"))
    with pytest.raises(tether.InputValidationError, match="approved"):
        client.input(handle.id, "review", {"comment": "no verdict"})
    client.input_json(handle.id, "review", '{"approved": true, "comment": "ship it"}')
    retry_until(lambda: [w.name for w in client.pending_waits()] == ["channel"])
    with pytest.raises(tether.InputValidationError):
        client.input(handle.id, "channel", "fax")
    client.input(handle.id, "channel", "blog")
    result = handle.result(timeout=10)
    assert result["review"] == Review(approved=True, comment="ship it")
    assert result["is_model"] and result["channel"] == "blog"


# --- deadlines and sleeps, on the injected clock ---------------------------------------------


@tether.flow
def with_deadline(use_default: bool) -> str:
    if use_default:
        return str(tether.wait("answer", timeout=60, default="default answer"))
    try:
        return str(tether.wait("answer", timeout=60))
    except tether.WaitTimeout as exc:
        return f"timed out: {exc.name}"


@pytest.mark.parametrize(
    ("use_default", "expected"), [(True, "default answer"), (False, "timed out: answer")]
)
def test_deadline_returns_the_default_or_raises_wait_timeout(
    client: tether.Client, clock: FakeClock, use_default: bool, expected: str
) -> None:
    handle = waiting(with_deadline.run(use_default))
    (pending,) = client.pending_waits()
    assert pending.deadline is not None
    assert pending.deadline.timestamp() == pytest.approx(clock.now + 60)
    clock.advance(59)
    with pytest.raises(tether.ResultTimeout):
        handle.result(timeout=0.5)  # not due yet: still waiting
    clock.advance(2)
    assert handle.result(timeout=10) == expected
    (wait,) = client.get(handle.id).waits
    assert wait.status == "timed_out"


def test_input_before_the_deadline_wins(client: tether.Client, clock: FakeClock) -> None:
    handle = waiting(with_deadline.run(True))
    client.input(handle.id, "answer", "human answer")
    clock.advance(120)
    assert handle.result(timeout=10) == "human answer"


@tether.flow
def sleeper(hours: float) -> list[str]:
    steps = [draft("before")]
    tether.sleep(hours * 3600)
    steps.append(publish("after"))
    return steps


def test_sleep_suspends_until_due_and_does_not_sleep_again(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = waiting(sleeper.run(72))
    record = client.get(handle.id)
    assert record.wake_at is not None
    assert record.wake_at.timestamp() == pytest.approx(clock.now + 72 * 3600)
    assert client.pending_waits() == [], "a sleep takes no input"
    with pytest.raises(tether.UsageError, match="takes no input"):
        client.input(handle.id, "sleep-1", None)
    clock.advance(72 * 3600)
    assert handle.result(timeout=10) == ["draft on before", "published after"]
    assert ran == Counter(draft=1, publish=1)


def test_wait_and_sleep_outside_a_flow_are_clear_errors(client: tether.Client) -> None:
    with pytest.raises(tether.NotInFlowError):
        tether.sleep(1)
    with pytest.raises(tether.NotInFlowError):
        tether.wait("x")


# --- loops, branches, retries ----------------------------------------------------------------


@tether.checkpoint
def handle_item(item: str, approved: bool) -> str:
    ran[item] += 1
    return f"{item}:{'yes' if approved else 'no'}"


@tether.flow
def per_item(items: list[str]) -> list[str]:
    return [handle_item(i, tether.wait(f"approve-{i}", schema=bool)) for i in items]


def test_a_wait_in_a_loop_takes_one_input_per_item(client: tether.Client) -> None:
    handle = waiting(per_item.run(["a", "b", "c"]))
    for item, verdict in (("a", True), ("b", False), ("c", True)):
        retry_until(
            lambda item=item: [w.name for w in client.pending_waits()] == [f"approve-{item}"]
        )
        client.input(handle.id, f"approve-{item}", verdict)
    assert handle.result(timeout=10) == ["a:yes", "b:no", "c:yes"]
    assert ran == Counter(a=1, b=1, c=1)


@tether.flow
def duplicate_names() -> None:
    for _ in range(2):
        tether.wait("same")


def test_reusing_a_wait_name_is_a_usage_error(client: tether.Client) -> None:
    handle = waiting(duplicate_names.run())
    client.input(handle.id, "same", 1)
    with pytest.raises(tether.ExecutionFailed, match="used twice"):
        handle.result(timeout=10)


@tether.checkpoint
async def branch_step(name: str) -> str:
    ran[name] += 1
    return name.upper()


async def branch(name: str) -> str:
    first = await branch_step(name)
    answer = tether.wait(f"ok-{name}", schema=str)
    return f"{first}+{answer}"


@tether.flow
async def branches() -> list[str]:
    return list(await asyncio.gather(branch("left"), branch("right")))


def test_waits_in_concurrent_branches_each_get_their_input(client: tether.Client) -> None:
    handle = waiting(branches.run())
    for _ in range(2):
        retry_until(lambda: client.pending_waits(), what="a pending wait")
        pending = client.pending_waits()
        client.input(handle.id, pending[0].name, pending[0].name.upper())
        retry_until(lambda: handle.status() is not Status.RUNNING, what="the next stop")
    assert handle.result(timeout=10) == ["LEFT+OK-LEFT", "RIGHT+OK-RIGHT"]
    assert ran == Counter(left=1, right=1)


attempts: list[int] = []


@tether.checkpoint(retries=2, backoff=0)
def flaky_fetch() -> str:
    attempt = tether.current().attempt or 0
    attempts.append(attempt)
    if attempt == 1:
        raise ConnectionError("first attempt fails")
    return "fetched"


@tether.flow
def retry_then_wait() -> str:
    data = flaky_fetch()
    return f"{data} and {tether.wait('go', schema=str)}"


def test_a_wait_after_a_retried_checkpoint_does_not_retry_again(client: tether.Client) -> None:
    attempts.clear()
    handle = waiting(retry_then_wait.run())
    client.input(handle.id, "go", "approved")
    assert handle.result(timeout=10) == "fetched and approved"
    assert attempts == [1, 2]


@tether.checkpoint
def waits_inside() -> None:
    tether.wait("nope")


@tether.flow
def wait_in_checkpoint() -> None:
    waits_inside()


def test_wait_inside_a_checkpoint_is_a_usage_error(client: tether.Client) -> None:
    with pytest.raises(tether.ExecutionFailed, match="inside a checkpoint"):
        wait_in_checkpoint.run().result(timeout=10)


def test_cancel_a_waiting_execution_at_once(client: tether.Client) -> None:
    handle = waiting(approval.run("x"))
    assert client.cancel(handle.id) is Status.CANCELLED
    with pytest.raises(tether.ExecutionCancelled):
        handle.result(timeout=10)
    assert client.get(handle.id).waits[0].status == "cancelled"
    assert client.pending_waits() == []


def test_cancel_a_sleeping_execution_at_once(client: tether.Client, clock: FakeClock) -> None:
    handle = waiting(sleeper.run(1))
    assert client.cancel(handle.id) is Status.CANCELLED
    clock.advance(7200)
    with pytest.raises(tether.ExecutionCancelled):
        handle.result(timeout=10)
    assert ran["publish"] == 0


# --- client-only processes and the in-process worker -----------------------------------------


def test_client_only_process_never_runs_and_a_worker_does(client: tether.Client) -> None:
    tether.configure(executor=False)
    handle = approval.run("queued work")
    enqueued = approval.enqueue("more work")
    assert handle.status() is Status.QUEUED and enqueued.status() is Status.QUEUED
    with pytest.raises(tether.ResultTimeout):
        handle.result(timeout=0.2)
    assert ran["draft"] == 0
    worker = tether.Worker(concurrency=2, poll=0.01)
    thread = threading.Thread(target=worker.run, kwargs={"grace": 5})
    thread.start()
    try:
        waiting(handle)
        waiting(enqueued)
        client.input(handle.id, "approve", True)
        client.input(enqueued.id, "approve", False)
        assert handle.result(timeout=10) == "published draft on queued work"
        assert enqueued.result(timeout=10) == "rejected"
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_worker_rejects_bad_settings(db_url: str) -> None:
    with pytest.raises(tether.UsageError, match="concurrency"):
        tether.Worker(concurrency=0)
    with pytest.raises(tether.UsageError, match="no_such_module"):
        tether.Worker(imports=["no_such_module"])


# --- a holder's cleanup and the next holder --------------------------------------------------

held_up = threading.Event()  # the execution's second holder is inside `hold`
let_go = threading.Event()


@tether.checkpoint
def hold(text: str) -> str:
    ran["hold"] += 1
    held_up.set()
    let_go.wait(timeout=30)
    return text


@tether.flow
def reclaimed(topic: str) -> str:
    text = draft(topic)
    tether.wait("go", schema=bool)
    return hold(text)


def test_an_old_holders_cleanup_leaves_the_next_holder_alone(
    client: tether.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that ran an execution up to its wait cleans up after the execution was
    claimed again (input, then another thread's claim): the new holder's lease must keep
    being renewed, and its body must not run a second time elsewhere."""
    from tether._core.config import store_for
    from tether._runtime import engine as _engine
    from tether._runtime import executor as _executor
    from tether._runtime import heartbeat as _heartbeat

    tether.configure(lease_seconds=1.0)
    monkeypatch.setattr(_heartbeat, "_HEARTBEAT_SECONDS", 0.1)
    held_up.clear()
    let_go.clear()
    suspended, cleanup = threading.Event(), threading.Event()
    real_execute = _engine.execute

    def execute(*args: Any, **kwargs: Any) -> _engine.Outcome:
        outcome = real_execute(*args, **kwargs)
        if outcome is _engine.Outcome.SUSPENDED and not suspended.is_set():
            # Widen the window: the first holder has suspended (its lease is gone) but has
            # not cleaned up its bookkeeping yet.
            suspended.set()
            cleanup.wait(timeout=30)
        return outcome

    monkeypatch.setattr(_engine, "execute", execute)
    store = store_for()
    runner = _executor.executor()
    try:
        handle = reclaimed.run("leases")
        retry_until(suspended.is_set, what="the first holder to suspend")
        client.input(handle.id, "go", True)
        # Another thread claims it, then the first holder cleans up. The claimer is an
        # in-process worker, or this process's own executor, which claims an execution
        # whose input it saw given here: either is a second holder on another thread, and
        # the first holder's cleanup must leave it alone.
        worker = tether.Worker(concurrency=2)

        def taken() -> bool:
            return held_up.is_set() or worker.run_once() == [handle.id]

        retry_until(taken, what="another thread to claim it")
        retry_until(held_up.is_set, what="the second holder to reach `hold`")
        second = store.get_execution(handle.id)
        assert second is not None and second.lease_token and second.lease_expires
        cleanup.set()

        def renewed() -> bool:
            row = store.get_execution(handle.id)
            assert row is not None and row.lease_token == second.lease_token, (
                f"the second holder lost its lease (not renewed, taken again); "
                f"`hold` ran {ran['hold']} times"
            )
            assert row.lease_expires is not None
            return row.lease_expires > second.lease_expires + 2.0  # two lease lengths on

        retry_until(renewed, timeout=10, what="the heartbeat to renew the second holder")
        assert runner.holds(store, handle.id)
        assert ran["hold"] == 1
    finally:
        cleanup.set()
        let_go.set()
    assert handle.result(timeout=10) == "draft on leases"
    assert ran == Counter({"draft": 1, "hold": 1})


# --- who continues it: the note recorded with the suspension --------------------------------


@pytest.mark.parametrize("flow", [approval, async_approval], ids=["sync", "async"])
def test_input_given_as_soon_as_it_waits_hears_this_process_continues_it(
    client: tether.Client, flow: tether.Flow[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`continuation` says who continues a waiting execution from its suspension's note. A
    note written apart from the suspension, after it, leaves a moment in which the execution
    waits with no note, and input given then hears "a `tether worker` continues it". Any
    such separate write is held here until the question was asked: the moment is made
    certain, not left to luck."""
    from tether._core.config import store_for

    store = store_for()
    real_add_event = store.add_event
    asked = threading.Event()

    def add_event(event: EventRow) -> None:
        if event.kind == "suspend":
            asked.wait(timeout=30)
        real_add_event(event)

    monkeypatch.setattr(store, "add_event", add_event)
    try:
        handle = waiting(flow.run("notes"))
        said = client.continuation(handle.id)
    finally:
        asked.set()
    assert (said.live, said.message) == (True, "this process continues it")
    assert [e.kind for e in client.events(handle.id)].count("suspend") == 1
    client.input(handle.id, "approve", True)
    assert handle.result(timeout=30) == "published draft on notes"


@tether.flow
def cancelled_on_its_way_to_wait(topic: str) -> str:
    from tether._core.config import store_for

    text = draft(topic)
    # Flagged in the store alone, as a cancel from another process is: the run hears of it
    # at its next heartbeat, after it has suspended, and the store parks it as cancelled.
    store_for().request_cancel(tether.current().execution_id, now=time.time())
    return str(tether.wait("approve", schema=bool, question=text))


def test_a_suspension_parked_as_cancelled_says_nobody_continues_it(
    client: tether.Client,
) -> None:
    handle = cancelled_on_its_way_to_wait.run("cancelled")
    with pytest.raises(tether.ExecutionCancelled):
        handle.result(timeout=30)
    # No note that this process continues it: nothing does.
    assert "suspend" not in [e.kind for e in client.events(handle.id)]
    said = client.continuation(handle.id)
    assert (said.live, said.message) == (True, f"execution {handle.id} already cancelled")


@pytest.mark.parametrize("flow", [approval, async_approval], ids=["sync", "async"])
def test_a_suspension_whose_reply_was_lost_is_parked_here_as_its_note_says(
    client: tether.Client, flow: tether.Flow[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store committed the suspension, its note with it, but the reply was lost: the
    retry finds the lease gone. The note says this process continues it, so this process
    must park it, not drop it as taken over by another."""
    from tether._core.config import store_for
    from tether._runtime.executor import executor

    store = store_for()
    real_suspend = store.suspend
    lost: list[str] = []

    def suspend(execution_id: str, token: str, **kwargs: Any) -> bool:
        parked = real_suspend(execution_id, token, **kwargs)
        if not lost:
            lost.append(execution_id)
            raise tether.CommitUnknown("the reply to the suspension was lost (test)")
        return parked

    monkeypatch.setattr(store, "suspend", suspend)
    handle = waiting(flow.run("lost replies"))
    retry_until(lambda: not executor().holds(store, handle.id), what="the hold to end")
    assert lost == [handle.id]
    assert executor().will_run(handle.id), "parked here, as its note says"
    said = client.continuation(handle.id)
    assert (said.live, said.message) == (True, "this process continues it")
    client.input(handle.id, "approve", True)
    assert handle.result(timeout=30) == "published draft on lost replies"
