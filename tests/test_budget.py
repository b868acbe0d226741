"""Budgets: the model request that would go over an execution's budget is not made.

Each request of the "tiny" model (usage_flows.py) spends 110 tokens (100 in, 10 out) and
$0.0002; the prompts are a few characters, estimated at 1 token each before the request.
"""

from __future__ import annotations

import json
import pickle
import signal
from pathlib import Path
from typing import Any

import pytest

import tether
import usage_flows as uf
from helpers import run_child, run_cli
from tether import Budget, Status


@pytest.fixture(autouse=True)
def tiny_price(db_url: str) -> None:
    tether.configure(prices={"tiny": uf.PRICE})


def _requests(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _failure(handle: tether.Handle[Any]) -> tether.ExecutionFailed:
    with pytest.raises(tether.ExecutionFailed) as failed:
        handle.result(timeout=60)
    return failed.value


# --- the budget itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "a Budget needs a limit"),
        ({"max_tokens": 0}, "max_tokens is a positive whole number"),
        ({"max_tokens": 1.5}, "max_tokens is a positive whole number"),
        ({"max_tokens": True}, "max_tokens is a positive whole number"),
        ({"max_cost_usd": -1}, "max_cost_usd is a positive number"),
        ({"max_cost_usd": float("inf")}, "max_cost_usd is a positive number"),
    ],
)
def test_a_budget_refuses_what_is_not_a_limit(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(tether.UsageError, match=message):
        Budget(**kwargs)


def test_a_budget_must_be_a_budget(db_url: str) -> None:
    with pytest.raises(tether.UsageError, match=r"budget is a tether\.Budget"):
        tether.flow(budget=100)(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(tether.UsageError, match=r"budget is a tether\.Budget"):
        uf.ten_questions.options(budget={"max_tokens": 5}).run("x")  # type: ignore[arg-type]


def test_budget_exceeded_survives_a_pickle_round_trip() -> None:
    error = tether.BudgetExceeded("over", spent_tokens=5, spent_cost_usd=0.1, max_tokens=4)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy)) == (tether.BudgetExceeded, "over")
    assert (copy.spent_tokens, copy.spent_cost_usd, copy.max_tokens, copy.max_cost_usd) == (
        5,
        0.1,
        4,
        None,
    )


def test_a_resumed_flow_that_caught_it_gets_the_same_partial_result(db_url: str) -> None:
    handle = uf.careful.options(budget=Budget(max_tokens=300)).run("p")
    first = handle.result(timeout=30)
    # Replaying everything: the recorded stop is raised again from its record, caught again.
    fork = tether.Client().replay(handle.id, from_=4)
    assert fork.result(timeout=30) == first


# --- stopping -------------------------------------------------------------------------------


def test_the_request_that_would_go_over_is_not_made_and_the_execution_fails(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "requests.log"
    monkeypatch.setenv("MODEL_CALLS", str(log))
    handle = uf.ten_questions.options(budget=Budget(max_tokens=300)).run("b")
    error = _failure(handle)
    assert error.error_type.endswith("BudgetExceeded")
    assert "330 tokens spent" in error.message and "limit of 300" in error.message
    assert "replay the execution with a larger budget" in error.message
    assert f"replay({handle.id!r}, from_=3, budget=" in error.message
    # Three requests fit (220 spent + about 1 is under 300); the fourth was never made.
    assert _requests(log) == ["b 0", "b 1", "b 2"]
    record = tether.Client().get(handle.id)
    assert record.budget == Budget(max_tokens=300)
    assert record.usage is not None and record.usage.total_tokens == 330
    stopped = record.checkpoints[-1]
    assert (stopped.position, stopped.status, stopped.usage) == ("3", "failed", None)
    assert stopped.error is not None and stopped.error.type.endswith("BudgetExceeded")


def test_max_tokens_of_a_request_count_before_it_is_made(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "requests.log"
    monkeypatch.setenv("MODEL_CALLS", str(log))
    handle = uf.capped_questions.options(budget=Budget(max_tokens=300)).run("m")
    error = _failure(handle)
    # 220 spent + 1 in + up to 100 out would be 321: the third request is not made.
    assert "220 tokens spent" in error.message and "101 more" in error.message
    assert _requests(log) == ["m 0", "m 1"]


def test_flow_code_may_catch_it_and_return_a_partial_result(db_url: str) -> None:
    handle = uf.careful.options(budget=Budget(max_tokens=300)).run("c")
    assert handle.result(timeout=30) == [
        "echo: c 0",
        "echo: c 1",
        "echo: c 2",
        "stopped by the budget",
    ]
    assert tether.Client().get(handle.id).status is Status.SUCCEEDED


def test_a_cost_budget_is_priced_with_the_models_price(db_url: str, tmp_path: Path) -> None:
    handle = uf.ten_questions.options(budget=Budget(max_cost_usd=0.0005)).run("d")
    error = _failure(handle)
    assert "$0.0006 spent" in error.message and "limit of $0.0005" in error.message
    assert tether.Client().get(handle.id).usage.requests == 3  # type: ignore[union-attr]


def test_a_cost_budget_stops_a_model_whose_price_is_unknown(db_url: str) -> None:
    tether.configure(prices=None)
    handle = uf.ten_questions.options(budget=Budget(max_cost_usd=1.0)).run("e")
    error = _failure(handle)
    assert "the price of tiny is unknown" in error.message
    assert "tether.configure(prices=" in error.message
    assert tether.Client().get(handle.id).usage == tether.Usage()


def test_the_budget_comes_from_the_decorator_or_a_run_keyword(db_url: str) -> None:
    assert "limit of 300" in _failure(uf.budgeted_questions.run("f")).message
    bigger = uf.budgeted_questions.options(budget=Budget(max_tokens=10_000)).run("f")
    assert len(bigger.result(timeout=30)) == 10
    keyword = uf.ten_questions.run("g", budget=Budget(max_tokens=200))  # type: ignore[call-arg]
    assert "limit of 200" in _failure(keyword).message


def test_a_stopped_agent_request_is_not_retried_and_can_be_caught(db_url: str) -> None:
    """The agent's model requests have 3 retries; a budget stop is not retried."""
    handle = uf.agent_twice.options(budget=Budget(max_tokens=250)).run("hi")
    assert handle.result(timeout=30) == ["done", "stopped: BudgetExceeded"]
    record = tether.Client().get(handle.id)
    stopped = record.checkpoints[-1]
    assert (stopped.name, stopped.status, len(stopped.attempts)) == ("model_request", "failed", 1)
    assert record.usage is not None and record.usage.requests == 2


def test_a_resumed_execution_keeps_its_budget_in_another_process(
    db_url: str, tmp_path: Path
) -> None:
    """Killed inside its second request; the process that resumes it was given no budget in
    code, and still stops where the budget says."""
    log = tmp_path / "requests.log"
    start = "import tether, usage_flows; tether.configure(prices={'tiny': usage_flows.PRICE})\n"
    start += "h = usage_flows.ten_questions.options(budget=tether.Budget(max_tokens=300))"
    start += ".run('k')\nprint(h.result(timeout=60))"
    crashed = run_child(start, db_url, MODEL_CALLS=str(log), MODEL_CRASH="2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()

    resume = "import sys, tether, usage_flows\n"  # a process runs the flows it loaded
    resume += "try:\n    tether.Client().resume(sys.argv[1]).result(timeout=60)\n"
    resume += "except tether.ExecutionFailed as e:\n    print(e.error_type)"
    resumed = run_child(resume, db_url, execution.id, MODEL_CALLS=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().endswith("BudgetExceeded")
    assert _requests(log) == ["k 0", "k 1", "k 1", "k 2"]
    record = tether.Client().get(execution.id)
    assert record.usage is not None and record.usage.requests == 3


def test_a_replay_with_a_larger_budget_goes_on(db_url: str) -> None:
    handle = uf.ten_questions.options(budget=Budget(max_tokens=300)).run("r")
    _failure(handle)
    fork = tether.Client().replay(handle.id, from_=3, budget=Budget(max_tokens=2_000))
    assert fork.result(timeout=30) == [f"echo: r {i}" for i in range(10)]
    record = tether.Client().get(fork.id)
    assert record.budget == Budget(max_tokens=2_000)
    assert record.usage is not None and record.usage.requests == 7  # its own calls only
    # Without a budget of its own, a replay keeps the source's, for what it spends itself:
    # three more requests fit.
    again = tether.Client().replay(handle.id, from_=3)
    assert "limit of 300" in _failure(again).message
    assert len(tether.Client().get(again.id).checkpoints) == 3 + 3 + 1


def test_executions_get_shows_the_budget(db_url: str) -> None:
    handle = uf.ten_questions.options(budget=Budget(max_tokens=300, max_cost_usd=2)).run("z")
    _failure(handle)
    shown = run_cli(db_url, "executions", "get", handle.id)
    assert "300 tokens and $2" in shown.stdout
    data = json.loads(run_cli(db_url, "executions", "get", handle.id, "--json").stdout)
    assert data["budget"] == {"max_tokens": 300, "max_cost_usd": 2}
