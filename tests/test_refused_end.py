"""An execution's end that the store refused (the lease was taken over while the flow ran
its last lines) is not this process's end: nothing here may report or act on it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import tether
from helpers import retry_until
from tether._core import serde as _serde
from tether._core.config import store_for
from tether._runtime import engine as _engine
from tether._runtime.executor import executor
from tether.store import Claim

entered = threading.Event()
let_go = threading.Event()


@tether.flow
def ends_late_sync(topic: str) -> str:
    entered.set()
    let_go.wait(timeout=30)
    return f"stale {topic}"


@tether.flow
async def ends_late_async(topic: str) -> str:
    entered.set()
    await asyncio.to_thread(let_go.wait, 30)
    return f"stale {topic}"


def _take_over(store: Any, execution_id: str, token: str) -> None:
    """Another process takes the execution over (as after a lapsed lease) while its flow
    still runs here."""
    assert store.claim(
        execution_id, Claim("host-b:4242:other", "taken", time.time() + 600),
        from_statuses=("running",), expected_token=token, now=time.time(),
    )  # fmt: skip


@pytest.mark.parametrize("flow", [ends_late_sync, ends_late_async], ids=["sync", "async"])
def test_an_end_refused_after_a_takeover_is_lost_not_finished(
    db_url: str, flow: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[_engine.Outcome | None] = []
    real_conclude, real_conclude_async = _engine.conclude, _engine.conclude_async

    # Spies that pass the real outcome on: how this process concluded the attempt.
    def conclude(*args: Any, **kwargs: Any) -> _engine.Outcome | None:
        outcome = real_conclude(*args, **kwargs)
        outcomes.append(outcome)
        return outcome

    async def conclude_async(*args: Any, **kwargs: Any) -> _engine.Outcome | None:
        outcome = await real_conclude_async(*args, **kwargs)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(_engine, "conclude", conclude)
    monkeypatch.setattr(_engine, "conclude_async", conclude_async)
    entered.clear()
    let_go.clear()
    store = store_for()
    try:
        handle = flow.run("leases")
        retry_until(entered.is_set, what="the flow to start")
        row = store.get_execution(handle.id)
        assert row is not None and row.status == "running" and row.lease_token
        _take_over(store, handle.id, row.lease_token)
    finally:
        let_go.set()
    retry_until(lambda: outcomes, what="the old holder to conclude")
    assert outcomes == [_engine.Outcome.LOST]
    retry_until(lambda: not executor().holds(store, handle.id), what="the hold to end")
    after = store.get_execution(handle.id)
    assert after is not None
    assert (after.status, after.lease_token, after.result) == ("running", "taken", None)
    # Its handle here does not return the end the store refused...
    with pytest.raises(tether.ResultTimeout):
        handle.result(timeout=0.5)
    # ...but the end its new holder records.
    assert store.finish(
        handle.id, "taken", status=tether.Status.SUCCEEDED, result=_serde.dumps("theirs"),
        error=None, now=time.time(),
    )  # fmt: skip
    assert handle.result(timeout=30) == "theirs"
    assert asyncio.run(handle.result_async(timeout=30)) == "theirs"


# --- a checkpoint's commit refused after a takeover ----------------------------------------

after_step: list[str] = []
companion_go = threading.Event()


@tether.checkpoint
async def step_during_takeover(topic: str) -> str:
    entered.set()
    await asyncio.to_thread(let_go.wait, 30)
    return topic


@tether.flow
async def steps_on_after_a_takeover(topic: str) -> str:
    await step_during_takeover(topic)
    after_step.append(topic)  # the commit above was refused: this line must never run
    return topic


@tether.flow
async def companion() -> None:
    await asyncio.to_thread(companion_go.wait, 30)


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "with-another-on-the-loop"])
def test_a_checkpoint_commit_refused_after_a_takeover_stops_the_flow_there(
    db_url: str, alone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on the loop the call writes its row itself; with another execution there it goes
    through the group commit. Either way a LOST commit ends the attempt at the call (the
    async call settles only outcomes other than a plain commit: this one must be)."""
    outcomes: list[_engine.Outcome | None] = []
    real_conclude_async = _engine.conclude_async

    async def conclude_async(*args: Any, **kwargs: Any) -> _engine.Outcome | None:
        outcome = await real_conclude_async(*args, **kwargs)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(_engine, "conclude_async", conclude_async)
    entered.clear()
    let_go.clear()
    companion_go.clear()
    after_step.clear()
    store = store_for()
    other = None if alone else companion.run()
    try:
        handle = steps_on_after_a_takeover.run("fenced")
        retry_until(entered.is_set, what="the checkpoint's body to start")
        row = store.get_execution(handle.id)
        assert row is not None and row.lease_token
        _take_over(store, handle.id, row.lease_token)
    finally:
        let_go.set()
    try:
        retry_until(lambda: outcomes, what="the old holder to conclude")
        assert outcomes == [_engine.Outcome.LOST]
        assert after_step == []
        assert store.get_checkpoints(handle.id) == []
    finally:
        companion_go.set()
        if other is not None:
            other.result(timeout=30)
