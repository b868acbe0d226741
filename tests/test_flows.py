"""Behaviour of @flow and @checkpoint inside one process, on a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import Counter
from typing import Any

import pytest

import tether
from tether import Status
from tether._core import config as _config

calls: Counter[str] = Counter()
gate = threading.Event()


@pytest.fixture(autouse=True)
def _reset_counters() -> None:
    calls.clear()
    gate.clear()


@tether.checkpoint
def double(x: int) -> int:
    calls["double"] += 1
    return x * 2


@tether.checkpoint
async def adouble(x: int) -> int:
    calls["adouble"] += 1
    await asyncio.sleep(0)
    return x * 2


@tether.flow
def sync_flow(n: int) -> list[int]:
    return [double(i) for i in range(n)]


@tether.flow
async def async_flow(n: int) -> list[int]:
    return [await adouble(i) for i in range(n)]


def test_sync_flow_runs_and_records_each_checkpoint(client: tether.Client) -> None:
    handle = sync_flow.run(3)
    assert handle.result(timeout=10) == [0, 2, 4]
    record = client.get(handle.id)
    assert record.status is Status.SUCCEEDED
    assert record.result == [0, 2, 4]
    assert [(c.position, c.name, c.result) for c in record.checkpoints] == [
        ("0", "double", 0),
        ("1", "double", 2),
        ("2", "double", 4),
    ]
    assert all(c.status == "succeeded" and len(c.attempts) == 1 for c in record.checkpoints)


async def test_async_flow_result_is_awaitable(client: tether.Client) -> None:
    handle = async_flow.run(3)
    assert await handle == [0, 2, 4]
    assert await async_flow.run(2).result_async(timeout=10) == [0, 2]
    assert handle.status() is Status.SUCCEEDED


def test_checkpoint_outside_a_flow_is_a_plain_call(db_url: str) -> None:
    assert double(21) == 42
    assert asyncio.run(adouble(4)) == 8
    assert tether.Client().list() == []


@tether.checkpoint
def outer(x: int) -> int:
    return double(x) + 1


@tether.flow
def nested_flow(x: int) -> int:
    return outer(x)


def test_checkpoint_inside_a_checkpoint_runs_inline(client: tether.Client) -> None:
    handle = nested_flow.run(5)
    assert handle.result(timeout=10) == 11
    assert [c.name for c in client.get(handle.id).checkpoints] == ["outer"]


@tether.checkpoint
def boom(message: str) -> None:
    raise ValueError(message)


@tether.flow
def failing_flow() -> None:
    boom("no luck")


@tether.flow
def catching_flow() -> str:
    try:
        boom("caught me")
    except ValueError as exc:
        return f"handled {exc}"
    return "unreachable"


def test_failed_execution_raises_execution_failed_with_original_error(
    client: tether.Client,
) -> None:
    handle = failing_flow.run()
    with pytest.raises(tether.ExecutionFailed) as info:
        handle.result(timeout=10)
    assert info.value.error_type == "ValueError"
    assert info.value.message == "no luck"
    assert "boom" in info.value.traceback
    record = client.get(handle.id)
    assert record.status is Status.FAILED
    assert record.error is not None and record.error.type == "ValueError"
    assert record.checkpoints[0].status == "failed"
    assert record.checkpoints[0].error is not None


def test_flow_may_catch_a_checkpoint_error(client: tether.Client) -> None:
    assert catching_flow.run().result(timeout=10) == "handled caught me"


attempts_seen: list[int] = []


@tether.checkpoint(retries=3, backoff=0)
def flaky(fail_times: int) -> str:
    attempt = tether.current().attempt
    assert attempt is not None
    attempts_seen.append(attempt)
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok on attempt {attempt}"


@tether.flow
def flaky_flow(fail_times: int) -> str:
    return flaky(fail_times)


def test_retries_record_every_attempt_with_its_error(client: tether.Client) -> None:
    attempts_seen.clear()
    handle = flaky_flow.run(2)
    assert handle.result(timeout=10) == "ok on attempt 3"
    assert attempts_seen == [1, 2, 3]
    (cp,) = client.get(handle.id).checkpoints
    assert [a.attempt for a in cp.attempts] == [1, 2, 3]
    assert [a.error for a in cp.attempts] == [
        "ConnectionError: attempt 1 failed",
        "ConnectionError: attempt 2 failed",
        None,
    ]
    assert all(a.duration >= 0 for a in cp.attempts)


def test_retries_spent_record_the_last_error(client: tether.Client) -> None:
    handle = flaky_flow.run(10)
    with pytest.raises(tether.ExecutionFailed, match="attempt 4 failed"):
        handle.result(timeout=10)
    (cp,) = client.get(handle.id).checkpoints
    assert cp.status == "failed"
    assert len(cp.attempts) == 4


@tether.checkpoint(retries=5, backoff=0, retry_on=KeyError)
def wrong_kind() -> None:
    calls["wrong_kind"] += 1
    raise ValueError("not retried")


@tether.flow
def wrong_kind_flow() -> None:
    wrong_kind()


def test_errors_outside_retry_on_are_not_retried(client: tether.Client) -> None:
    with pytest.raises(tether.ExecutionFailed):
        wrong_kind_flow.run().result(timeout=10)
    assert calls["wrong_kind"] == 1


@tether.checkpoint(timeout=0.05)
def slow_sync() -> None:
    gate.wait(5)


@tether.checkpoint(timeout=0.05)
async def slow_async() -> None:
    await asyncio.sleep(5)


@tether.flow
def timeout_flow(use_async: bool) -> str:
    try:
        if use_async:
            asyncio.run(slow_async())
        else:
            slow_sync()
    except tether.CheckpointTimeout as exc:
        return f"timed out: {exc}"
    return "finished"


@pytest.mark.parametrize("use_async", [False, True])
def test_checkpoint_timeout_raises_checkpoint_timeout(
    client: tether.Client, use_async: bool
) -> None:
    try:
        assert timeout_flow.run(use_async).result(timeout=10).startswith("timed out")
    finally:
        gate.set()


@tether.checkpoint
def who_am_i() -> dict[str, Any]:
    now = tether.current()
    tether.log(model="test-model", tokens=12)
    return dataclasses.asdict(now)


@tether.flow
def context_flow() -> dict[str, Any]:
    tether.log(stage="start")
    outside = tether.current()
    assert outside.checkpoint is None and outside.idempotency_key is None
    double(1)
    return who_am_i()


def test_current_gives_identity_and_a_stable_idempotency_key(client: tether.Client) -> None:
    handle = context_flow.run()
    info = handle.result(timeout=10)
    assert info["execution_id"] == handle.id
    assert info["checkpoint"] == "who_am_i"
    assert info["position"] == "1"
    assert info["attempt"] == 1
    assert info["idempotency_key"] == f"{handle.id}:1"
    record = client.get(handle.id)
    assert record.checkpoints[1].metadata == {"model": "test-model", "tokens": 12}
    assert record.metadata == {"stage": "start"}


def test_current_outside_a_flow_is_a_clear_error() -> None:
    with pytest.raises(tether.NotInFlowError, match="outside a running flow"):
        tether.current()
    tether.log(ignored=True)  # a no-op outside flows, so tools stay unit-testable


@tether.flow
async def gather_flow(n: int) -> list[int]:
    results = await asyncio.gather(*(adouble(i) for i in reversed(range(n))))
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(adouble(100 + i)) for i in range(2)]
    return [*results, *(t.result() for t in tasks)]


def test_gather_and_taskgroup_take_positions_in_call_order(client: tether.Client) -> None:
    handle = gather_flow.run(4)
    assert handle.result(timeout=10) == [6, 4, 2, 0, 200, 202]
    record = client.get(handle.id)
    assert [c.result for c in record.checkpoints] == [6, 4, 2, 0, 200, 202]


@tether.flow
def submit_flow(n: int) -> list[int]:
    futures = [double.submit(i) for i in range(n)]
    mapped = double.map(range(10, 10 + n))
    return [f.result() for f in futures] + mapped


def test_submit_and_map_run_concurrently_in_call_order(client: tether.Client) -> None:
    handle = submit_flow.run(3)
    assert handle.result(timeout=10) == [0, 2, 4, 20, 22, 24]
    record = client.get(handle.id)
    assert [c.result for c in record.checkpoints] == [0, 2, 4, 20, 22, 24]


def test_submit_and_map_work_outside_a_flow() -> None:
    assert double.submit(4).result() == 8
    assert double.map([1, 2]) == [2, 4]


def test_submit_on_an_async_checkpoint_is_a_usage_error() -> None:
    with pytest.raises(tether.UsageError, match=r"asyncio\.gather"):
        adouble.submit(1)


@tether.checkpoint
def blocker() -> str:
    gate.wait(10)
    return "released"


@tether.flow
def cancellable_flow() -> str:
    blocker()
    double(1)
    return "finished"


def test_cancel_stops_at_the_next_checkpoint_boundary(client: tether.Client) -> None:
    handle = cancellable_flow.run()

    def blocked() -> bool:
        return handle.status() is Status.RUNNING

    from helpers import retry_until

    retry_until(blocked, what="the flow to start")
    assert client.cancel(handle.id) is Status.RUNNING
    gate.set()
    with pytest.raises(tether.ExecutionCancelled):
        handle.result(timeout=10)
    record = client.get(handle.id)
    assert record.status is Status.CANCELLED
    assert [c.name for c in record.checkpoints] == ["blocker"]  # `double` never ran
    assert calls["double"] == 0
    assert client.cancel(handle.id) is Status.CANCELLED  # idempotent


@tether.checkpoint
async def held(i: int) -> int:
    calls["held"] += 1
    await asyncio.to_thread(gate.wait, 10)
    return i


@tether.flow
async def gathered_cancellable(n: int) -> str:
    async def line(i: int) -> None:
        await held(i)
        await adouble(i)

    await asyncio.gather(*(line(i) for i in range(n)))
    return "finished"


def test_a_cancel_reaches_gathered_branches_through_their_commits(
    client: tether.Client,
) -> None:
    # Three branches inside a call each when the cancel comes: a call that ends then is still
    # recorded (the cancel is told by its commit), and no branch starts another call.
    handle = gathered_cancellable.run(3)
    from helpers import retry_until

    retry_until(lambda: calls["held"] == 3, what="the three branches to be inside `held`")
    assert client.cancel(handle.id) is Status.RUNNING
    gate.set()
    with pytest.raises(tether.ExecutionCancelled):
        handle.result(timeout=10)
    record = client.get(handle.id)
    assert record.status is Status.CANCELLED
    assert record.checkpoints, "the first call to end was recorded"
    assert {(c.name, c.status.value) for c in record.checkpoints} == {("held", "succeeded")}
    assert {c.position for c in record.checkpoints} <= {"0.0", "1.0", "2.0"}
    assert calls["adouble"] == 0


def test_resume_of_a_finished_execution_is_refused(client: tether.Client) -> None:
    handle = sync_flow.run(1)
    handle.result(timeout=10)
    with pytest.raises(tether.InvalidStateError, match="already succeeded"):
        client.resume(handle.id)


def test_unknown_execution_ids_are_clear_errors(client: tether.Client) -> None:
    for operation in (client.get, client.resume, client.cancel, client.handle):
        with pytest.raises(tether.ExecutionNotFound, match="no execution nope"):
            operation("nope")
    with pytest.raises(tether.UsageError):
        client.get("")


def test_a_priority_beyond_32_bits_is_a_usage_error_and_nothing_is_stored(
    client: tether.Client,
) -> None:
    for priority in (2**31, -(2**31) - 1):
        with pytest.raises(tether.UsageError, match="out of range"):
            sync_flow.options(priority=priority).enqueue(1)
    sync_flow.options(priority=2**31 - 1).enqueue(1)
    assert len(client.list()) == 1


def test_list_filters_by_status_and_flow(client: tether.Client) -> None:
    ok = sync_flow.run(1)
    ok.result(timeout=10)
    bad = failing_flow.run()
    with pytest.raises(tether.ExecutionFailed):
        bad.result(timeout=10)
    assert [r.id for r in client.list()] == [bad.id, ok.id]
    assert [r.id for r in client.list(status="failed")] == [bad.id]
    assert [r.id for r in client.list(status=["failed", "succeeded"], limit=1)] == [bad.id]
    assert [r.id for r in client.list(flow="sync_flow")] == [ok.id]
    with pytest.raises(tether.UsageError, match="unknown status 'done'"):
        client.list(status="done")
    with pytest.raises(tether.UsageError):
        client.list(limit=0)


def test_result_timeout_leaves_the_execution_running(client: tether.Client) -> None:
    handle = cancellable_flow.run()
    with pytest.raises(tether.ResultTimeout):
        handle.result(timeout=0.05)
    gate.set()
    assert handle.result(timeout=10) == "finished"


class Unstorable:
    def __init__(self) -> None:
        self.client = threading.Lock()


@tether.checkpoint
def returns_a_lock() -> dict[str, Any]:
    return {"items": [0, 1, 2, Unstorable()]}


@tether.flow
def unstorable_flow() -> None:
    returns_a_lock()


def test_unstorable_result_fails_the_checkpoint_with_the_path(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With signed pickle on, the path goes down to the attribute that cannot be pickled.
    monkeypatch.setenv("TETHER_SECRET", "test-key")
    _config.reset()  # the key is read from the environment with the other settings
    tether.configure(db=db_url, pickle=True)
    handle = unstorable_flow.run()
    with pytest.raises(tether.ExecutionFailed) as info:
        handle.result(timeout=10)
    assert info.value.error_type == "tether.errors.SerializationError"
    assert "result of checkpoint 'returns_a_lock'['items'][3].client" in info.value.message
    (cp,) = tether.Client(db_url).get(handle.id).checkpoints
    assert cp.status == "failed"


@tether.checkpoint
async def add_one(x: int) -> int:
    return x + 1


_forgotten: list[Any] = []


@tether.flow
async def forgets_to_await(x: int) -> dict[str, Any]:
    pending = add_one(x)  # the mistake under test: no await
    _forgotten.append(pending)  # closed by the test, so no "never awaited" warning later
    return {"sum": pending}


def test_a_missing_await_on_an_async_checkpoint_is_named_in_the_error() -> None:
    handle = forgets_to_await.run(1)
    try:
        with pytest.raises(tether.ExecutionFailed) as info:
            handle.result(timeout=10)
    finally:
        while _forgotten:
            _forgotten.pop().close()
    assert info.value.error_type == "tether.errors.SerializationError"
    message = info.value.message
    assert "result of flow 'forgets_to_await'['sum']" in message
    assert "coroutine of 'add_one'" in message and "did you forget `await`?" in message


def test_unstorable_flow_arguments_are_refused_before_anything_is_stored(
    client: tether.Client,
) -> None:
    with pytest.raises(tether.SerializationError, match="arguments of flow"):
        sync_flow.run(threading.Lock())  # type: ignore[arg-type]
    assert client.list() == []


def test_pickle_fallback_is_off_by_default_and_the_error_names_checkpoint_type_and_path(
    client: tether.Client,
) -> None:
    handle = unstorable_flow.run()
    with pytest.raises(tether.ExecutionFailed, match="pickle fallback is off") as info:
        handle.result(timeout=10)
    message = info.value.message
    assert "result of checkpoint 'returns_a_lock'['items'][3]" in message
    assert "test_flows.Unstorable" in message
    assert "TETHER_SECRET" in message
    assert "tether.register" in message


def test_flows_defined_in_functions_are_refused(db_url: str) -> None:
    @tether.flow
    def local_flow() -> int:
        return 1

    with pytest.raises(tether.UsageError, match="module level"):
        local_flow.run()


def test_decorating_twice_or_a_non_function_is_a_usage_error() -> None:
    with pytest.raises(tether.UsageError):
        tether.checkpoint(double)  # type: ignore[arg-type]
    with pytest.raises(tether.UsageError):
        tether.flow(sync_flow)  # type: ignore[arg-type]
    with pytest.raises(tether.UsageError):
        tether.checkpoint(retries=-1)(lambda: None)


def test_bad_configuration_is_a_configuration_error(db_url: str) -> None:
    with pytest.raises(tether.ConfigurationError, match="store URL"):
        tether.configure(db="tether.db")
    with pytest.raises(tether.ConfigurationError, match="not durable"):
        tether.Client("sqlite:///:memory:")
    with pytest.raises(tether.ConfigurationError, match="unknown store scheme"):
        tether.Client("mysql://x")


def test_calling_a_flow_runs_it_and_returns_the_result(client: tether.Client) -> None:
    assert sync_flow(2) == [0, 2]
    assert asyncio.run(async_flow(2)) == [0, 2]  # type: ignore[arg-type]
    assert len(client.list()) == 2


@tether.checkpoint
def where_am_i() -> bool:
    return tether.in_flow()


@tether.flow
def in_flow_flow() -> list[bool]:
    return [tether.in_flow(), where_am_i()]


def test_in_flow_tells_flow_code_from_plain_calls(client: tether.Client) -> None:
    assert in_flow_flow.run().result(timeout=10) == [True, True]
    assert tether.in_flow() is False
    assert where_am_i() is False
