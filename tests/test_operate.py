"""Operating executions through Client: replay/fork, retry, prune, logs, progress."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import retry_until, run_child
from tether import Status

ran: Counter[str] = Counter()
behaviour: dict[str, Any] = {}
gate = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()
    behaviour.clear()
    gate.clear()


@tether.checkpoint
def fetch(query: str) -> str:
    ran[f"fetch:{query}"] += 1
    print(f"fetching {query}")
    return f"data about {query}"


@tether.checkpoint
def draft(material: str) -> str:
    ran["draft"] += 1
    if behaviour.get("draft_fails"):
        raise RuntimeError("the model is down")
    return f"draft from [{material}]"


@tether.checkpoint
def publish(text: str) -> str:
    ran["publish"] += 1
    version = behaviour.get("version", "v1")
    return f"{version}: {text}"


@tether.flow
def writer(topic: str) -> str:
    first = fetch(topic)
    second = fetch(f"{topic} history")
    return publish(draft(f"{first} + {second}"))


def test_replay_reuses_calls_before_the_fork_point_and_runs_the_rest(
    client: tether.Client,
) -> None:
    source = writer.run("tides")
    assert (
        source.result(timeout=10) == "v1: draft from [data about tides + data about tides history]"
    )
    ran.clear()
    before = client.get(source.id)

    behaviour["version"] = "v2"  # the code changed since the source ran
    fork = client.replay(source.id, from_="draft", overrides={"fetch#2": "edited history"})
    assert fork.result(timeout=10) == "v2: draft from [data about tides + edited history]"
    assert ran == Counter(draft=1, publish=1), "calls before the fork point did not run"

    record = client.get(fork.id)
    assert record.replay_of == source.id and record.id != source.id
    assert [c.name for c in record.checkpoints] == ["fetch", "fetch", "draft", "publish"]
    assert record.checkpoints[1].metadata == {"override": True}
    after = client.get(source.id)
    assert after.checkpoints == before.checkpoints and after.result == before.result


def test_replay_selectors_name_position_and_kth_call(client: tether.Client) -> None:
    source = writer.run("x")
    source.result(timeout=10)
    ran.clear()
    client.replay(source.id, from_="fetch#2").result(timeout=10)
    assert ran == Counter({"fetch:x history": 1, "draft": 1, "publish": 1})
    ran.clear()
    client.replay(source.id, from_=3).result(timeout=10)
    assert ran == Counter(publish=1)
    ran.clear()
    client.replay(source.id, from_="4").result(timeout=10)  # after the last call: nothing reruns
    assert ran == Counter()


@tether.flow
def reviewed(topic: str) -> str:
    text = draft(fetch(topic))
    tether.sleep(0, name="cool-down")
    if not tether.wait("approve", schema=bool, question=text):
        return "rejected"
    return publish(text)


def test_replay_from_a_wait_by_name_or_position_asks_again(client: tether.Client) -> None:
    source = reviewed.run("x")
    retry_until(lambda: source.status() is Status.WAITING, what="the approval wait")
    client.input(source.id, "approve", True)
    assert source.result(timeout=10) == "v1: draft from [data about x]"
    waits = {w.name: w.position for w in client.get(source.id).waits}
    assert waits == {"cool-down": "2", "approve": "3"}
    ran.clear()
    by_name = client.replay(source.id, from_="approve")
    by_position = reviewed.replay(source.id, from_=3)
    for fork in (by_name, by_position):
        retry_until(lambda f=fork: f.status() is Status.WAITING, what="the fork's wait")
        record = client.get(fork.id)
        assert [c.name for c in record.checkpoints] == ["fetch", "draft"]  # copied
        assert [(w.name, w.status) for w in record.waits] == [
            ("cool-down", "slept"), ("approve", "pending"),
        ]  # fmt: skip
    assert ran == Counter(), "nothing before the wait ran again"
    client.input(by_name.id, "approve", False)
    assert by_name.result(timeout=10) == "rejected"
    # A sleep is a fork point too: the fork sleeps (0 s) again, then asks.
    again = client.replay(source.id, from_="cool-down")
    retry_until(lambda: again.status() is Status.WAITING, what="the fork's wait")
    assert [w.name for w in client.get(again.id).waits] == ["cool-down", "approve"]
    with pytest.raises(tether.UsageError) as unknown:
        client.replay(source.id, from_="nope")
    assert "no checkpoint named 'nope' and no wait of that name" in str(unknown.value)
    assert "waits: sleep cool-down (position 2), wait approve (position 3)" in str(unknown.value)
    with pytest.raises(tether.UsageError, match=r"position 7 and no wait there.*approve"):
        client.replay(source.id, from_=7)


def test_replay_with_new_arguments_and_a_bare_name_override(client: tether.Client) -> None:
    source = writer.run("x")
    source.result(timeout=10)
    fork = writer.replay(source.id, from_="draft", overrides={"fetch": "same"}, args=["y"])
    assert fork.result(timeout=10) == "v1: draft from [same + same]"
    assert client.get(fork.id).args == (("y",), {})


def test_replay_selector_errors_list_the_candidates(client: tether.Client) -> None:
    source = writer.run("x")
    source.result(timeout=10)
    with pytest.raises(tether.UsageError, match=r"no checkpoint named 'nope'; candidates: fetch"):
        client.replay(source.id, from_="nope")
    with pytest.raises(tether.UsageError, match=r"called 2 time\(s\).*fetch#1 to fetch#2"):
        client.replay(source.id, from_="fetch#3")
    with pytest.raises(tether.UsageError, match="no checkpoint call at position 9"):
        client.replay(source.id, from_=9)
    with pytest.raises(tether.UsageError, match="override 'publish' matches no checkpoint call"):
        client.replay(source.id, from_="draft", overrides={"publish": "x"})
    with pytest.raises(tether.UsageError, match="is of flow 'writer', not 'failing_once'"):
        failing_once.replay(source.id, from_=0)
    with pytest.raises(tether.UsageError, match=r"override keys are .* as text, not 0"):
        client.replay(source.id, from_="draft", overrides={0: "x"})  # type: ignore[dict-item]
    with pytest.raises(tether.UsageError, match=r"a checkpoint selector is .* not 1\.5"):
        client.replay(source.id, from_=1.5)  # type: ignore[arg-type]
    assert len(client.list()) == 1, "a refused replay records nothing"


@tether.flow
def failing_once(topic: str) -> str:
    return publish(draft(fetch(topic)))


def test_retry_runs_a_failed_execution_again_from_its_failed_call(client: tether.Client) -> None:
    behaviour["draft_fails"] = True
    handle = failing_once.run("x")
    with pytest.raises(tether.ExecutionFailed, match="the model is down"):
        handle.result(timeout=10)
    behaviour["draft_fails"] = False
    retried = client.retry(handle.id)
    assert retried.id == handle.id
    assert retried.result(timeout=10) == "v1: draft from [data about x]"
    assert ran == Counter({"fetch:x": 1, "draft": 2, "publish": 1})
    record = client.get(handle.id)
    assert record.status is Status.SUCCEEDED and record.attempt == 2
    assert [c.status for c in record.checkpoints] == ["succeeded"] * 3
    with pytest.raises(tether.InvalidStateError, match="only a failed execution"):
        client.retry(handle.id)


def test_prune_deletes_old_finished_executions_after_a_dry_run(client: tether.Client) -> None:
    done = writer.run("x")
    done.result(timeout=10)
    behaviour["draft_fails"] = True
    failed = failing_once.run("y")
    with pytest.raises(tether.ExecutionFailed):
        failed.result(timeout=10)
    assert client.prune(3600) == 0, "nothing is an hour old"
    assert client.prune(0, dry_run=True) == 2
    assert len(client.list()) == 2
    assert client.prune(0, status="failed") == 1
    assert [r.id for r in client.list()] == [done.id]
    with pytest.raises(tether.UsageError, match="finished executions only"):
        client.prune(0, status="running")
    with pytest.raises(tether.UsageError):
        client.prune(-1)
    assert client.prune(0) == 1
    with pytest.raises(tether.ExecutionNotFound):
        client.get(done.id)


def test_list_reports_checkpoints_done_and_the_pending_wait(client: tether.Client) -> None:
    done = writer.run("x")
    done.result(timeout=10)
    waiting = waits_once.run()
    retry_until(lambda: waiting.status() is Status.WAITING, what="the wait")
    by_id = {r.id: r for r in client.list()}
    assert (by_id[done.id].checkpoints_done, by_id[done.id].pending_wait) == (4, None)
    assert (by_id[waiting.id].checkpoints_done, by_id[waiting.id].pending_wait) == (1, "ok")


@tether.flow
def waits_once() -> str:
    fetch("w")
    return str(tether.wait("ok"))


# --- logs ------------------------------------------------------------------------------------

log = logging.getLogger("tests.agent")


@tether.checkpoint
def chatty(name: str) -> str:
    print(f"{name} says hi")
    log.warning("%s warns", name)
    return name


@tether.checkpoint
async def async_chatty(name: str) -> str:
    for i in range(3):
        print(f"{name} line {i}")
        await asyncio.sleep(0)
    return name


@tether.flow
async def logging_flow() -> list[str]:
    first = chatty("solo")
    both = await asyncio.gather(async_chatty("left"), async_chatty("right"))
    return [first, *both]


def test_output_and_logging_land_on_the_checkpoint_that_made_them(client: tether.Client) -> None:
    handle = logging_flow.run()
    handle.result(timeout=10)
    records = client.logs(handle.id)
    by_position: dict[str | None, list[tether.LogRecord]] = {}
    for r in records:
        by_position.setdefault(r.position, []).append(r)
    assert [(r.stream, r.message) for r in by_position["0"]] == [
        ("stdout", "solo says hi\n"),
        ("log", "solo warns\n"),
    ]
    assert by_position["0"][1].level == "warning" and by_position["0"][1].logger == "tests.agent"
    assert "".join(r.message for r in by_position["1"]) == "left line 0\nleft line 1\nleft line 2\n"
    assert "".join(r.message for r in by_position["2"]) == (
        "right line 0\nright line 1\nright line 2\n"
    )
    assert [r.checkpoint for r in client.logs(handle.id, checkpoint="async_chatty#2")] == [
        "async_chatty"
    ]
    assert {r.position for r in client.logs(handle.id, checkpoint="async_chatty")} == {"1", "2"}
    assert client.logs(handle.id, after=records[-1].id) == []
    with pytest.raises(tether.UsageError, match="no checkpoint named 'nope'"):
        client.logs(handle.id, checkpoint="nope")


@tether.flow
def threaded_logging_flow() -> list[str]:
    futures = [chatty.submit(f"t{i}") for i in range(4)]
    return [f.result() for f in futures]


def test_output_from_submit_threads_lands_on_each_call(client: tether.Client) -> None:
    handle = threaded_logging_flow.run()
    handle.result(timeout=10)
    for position in range(4):
        texts = [r.message for r in client.logs(handle.id, checkpoint=position)]
        assert texts == [f"t{position} says hi\n", f"t{position} warns\n"]


@tether.checkpoint
def very_chatty() -> None:
    print("x" * 200_000)


@tether.flow
def flood() -> None:
    very_chatty()


def test_output_is_capped_per_call_with_a_note(client: tether.Client) -> None:
    handle = flood.run()
    handle.result(timeout=10)
    records = client.logs(handle.id)
    assert sum(len(r.message) for r in records if r.stream == "stdout") == 64 * 1024
    assert "output truncated" in records[-1].message


@tether.checkpoint(retries=1, backoff=0)
def noisy_flaky() -> str:
    attempt = tether.current().attempt
    print(f"attempt {attempt}")
    if attempt == 1:
        raise ConnectionError("flaky")
    return "ok"


@tether.flow
def noisy_retry_flow() -> str:
    return noisy_flaky()


def test_logs_of_each_attempt_are_kept_with_the_attempt(client: tether.Client) -> None:
    handle = noisy_retry_flow.run()
    handle.result(timeout=10)
    assert [(r.attempt, r.message) for r in client.logs(handle.id)] == [
        (1, "attempt 1\n"),
        (2, "attempt 2\n"),
    ]


def test_captured_output_still_reaches_the_console(db_url: str, tmp_path: Path) -> None:
    out = run_child(
        "import test_operate; test_operate.logging_flow.run().result(timeout=10)",
        db_url,
    )
    assert out.returncode == 0, out.stderr
    assert "solo says hi" in out.stdout and "left line 2" in out.stdout
    assert "solo warns" in out.stderr, "a warning with no logging config still prints"


@tether.checkpoint
def blocked() -> str:
    gate.wait(20)
    return "done"


@tether.flow
def slow_flow() -> str:
    return blocked()


def test_a_running_execution_shows_its_call_in_flight(client: tether.Client) -> None:
    handle = slow_flow.run()
    try:
        record = retry_until(
            lambda: (r := client.get(handle.id)).progress and r, what="progress from the heartbeat"
        )
        (live,) = record.progress
        assert live["name"] == "blocked" and live["position"] == "0"
    finally:
        gate.set()
    handle.result(timeout=10)
    assert client.get(handle.id).progress == [], "a finished execution runs nothing"
