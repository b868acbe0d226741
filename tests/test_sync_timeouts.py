"""A sync checkpoint's `timeout`: each attempt runs on a thread and a frame of its own, so
waiting for a thread never counts against it, and an attempt abandoned on timeout cannot
put its late output, spend or memory writes on the attempt that follows."""

from __future__ import annotations

import threading
import time
from typing import Any

import tether
from tether import memory

NS = "sync-timeouts"


@tether.checkpoint(timeout=1)
def quick(i: int) -> int:
    time.sleep(0.01)  # the work: 10 ms, far below the timeout
    return i * 2


@tether.flow
def many_quick_calls(n: int) -> list[int]:
    return quick.map(range(n))


def test_two_hundred_quick_calls_through_map_do_not_time_out(client: tether.Client) -> None:
    # 200 calls on .map()'s 32 threads: with the attempts queued on those same threads, the
    # wait for a free one counted against the timeout and calls of 10 ms timed out.
    handle = many_quick_calls.run(200)
    assert handle.result(timeout=120) == [i * 2 for i in range(200)]
    calls = client.get(handle.id).checkpoints
    assert len(calls) == 200
    assert all(c.status == "succeeded" and len(c.attempts) <= 1 for c in calls), [
        c.attempts for c in calls if c.attempts
    ]


release = threading.Event()
late_done = threading.Event()
late: dict[str, Any] = {}


@tether.checkpoint(timeout=2, retries=1, backoff=0)
def slow_then_quick() -> int:
    attempt = tether.current().attempt
    if attempt == 1:
        print("attempt 1 starts")
        tether.record_usage(model="test-model", input_tokens=10, output_tokens=1)
        release.wait(60)  # until attempt 2 runs: this attempt times out first
        try:
            # All of this happens while attempt 2 runs, before it returns.
            print("late line from attempt 1")
            tether.record_usage(model="test-model", input_tokens=1000, output_tokens=100)
            tether.log(late=True)
            memory.set("late", "from attempt 1", namespace=NS)
        except tether.CheckpointTimeout as exc:
            late["refused"] = str(exc)
        finally:
            late_done.set()
        return 1
    release.set()
    assert late_done.wait(60), "the abandoned attempt went on"
    print("attempt 2 line")
    return 2


@tether.flow
def timed_out_once() -> int:
    return slow_then_quick()


def test_an_abandoned_attempt_leaves_nothing_on_the_retry(client: tether.Client) -> None:
    handle = timed_out_once.run()
    try:
        assert handle.result(timeout=60) == 2
    finally:
        release.set()
    assert late_done.is_set()
    assert "timed out and was abandoned: nothing was written" in late["refused"]
    with_attempts = [(log.attempt, log.message.strip()) for log in client.logs(handle.id)]
    assert with_attempts == [(1, "attempt 1 starts"), (2, "attempt 2 line")]
    (call,) = client.get(handle.id).checkpoints
    assert [(a.attempt, (a.error or "").split(":")[0]) for a in call.attempts] == [
        (1, "CheckpointTimeout"),
        (2, ""),
    ]
    assert "late" not in call.metadata
    assert call.usage is not None and call.usage.input_tokens == 10, call.usage
    assert memory.history("late", namespace=NS) == []


@tether.checkpoint(timeout=5)
def prints_and_fails() -> None:
    print("before the error")
    raise ValueError("broken inside the timed attempt")


@tether.flow
def failing_in_time() -> str:
    try:
        prints_and_fails()
    except ValueError as exc:
        return f"caught {exc}"
    return "not raised"


def test_an_attempt_that_ends_in_time_keeps_its_error_and_output(client: tether.Client) -> None:
    handle = failing_in_time.run()
    assert handle.result(timeout=30) == "caught broken inside the timed attempt"
    assert [log.message.strip() for log in client.logs(handle.id)] == ["before the error"]
