"""Usage and cost: recorded per model call, summed per execution, never counted twice.

Offline: the models are Pydantic AI `FunctionModel`s (see usage_flows.py); crashes are real
SIGKILLs of child processes, resumed from new processes.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import genai_prices
import pytest
from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.models.function import FunctionModel

import ai_flows
import tether
import usage_flows as uf
from helpers import run_child, run_cli
from tether import Usage
from tether.ai._metering import usage_of

RESUME = textwrap.dedent(
    """
    import sys, tether, usage_flows
    tether.configure(prices={"tiny": usage_flows.PRICE})
    print(repr(tether.Client().resume(sys.argv[1]).result(timeout=60)), flush=True)
    """
)


@pytest.fixture(autouse=True)
def tiny_price(db_url: str) -> None:
    tether.configure(prices={"tiny": uf.PRICE})


def _requests(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _tiny(requests: int, unpriced: bool = False) -> Usage:
    cost = None if unpriced else round(requests * uf.REQUEST_COST, 8)
    part = Usage(
        input_tokens=100 * requests,
        output_tokens=10 * requests,
        requests=requests,
        cost_usd=cost,
        unpriced_requests=requests if unpriced else 0,
    )
    return Usage(
        input_tokens=100 * requests,
        output_tokens=10 * requests,
        requests=requests,
        cost_usd=cost,
        unpriced_requests=requests if unpriced else 0,
        by_model={"tiny": part},
    )


# --- recording ----------------------------------------------------------------------------


def test_each_model_call_records_its_usage_and_the_execution_sums_them(db_url: str) -> None:
    handle = uf.three_questions.run("usage")
    assert handle.result(timeout=30) == ["echo: usage 0", "echo: usage 1", "echo: usage 2"]
    record = tether.Client().get(handle.id)
    assert [c.usage for c in record.checkpoints] == [_tiny(1)] * 3
    assert record.usage == _tiny(3)
    assert record.usage.total_tokens == 330 and record.usage.cost_usd == pytest.approx(0.0006)
    assert record.usage.cost_complete
    # The usage is not mixed into what the call logged.
    assert all(c.metadata == {} for c in record.checkpoints)


def test_an_agents_model_requests_record_usage_and_its_tools_none(db_url: str) -> None:
    handle = uf.agent_flow.run("look it up")
    assert handle.result(timeout=30) == "done"
    record = tether.Client().get(handle.id)
    usage = {c.name: c.usage for c in record.checkpoints}
    assert [c.name for c in record.checkpoints] == [
        "agent_run",
        "model_request",
        "tool:lookup",
        "model_request",
    ]
    assert usage["agent_run"] is None and usage["tool:lookup"] is None
    assert [c.usage for c in record.checkpoints if c.name == "model_request"] == [_tiny(1)] * 2
    assert record.usage == _tiny(2)


@pytest.mark.parametrize("flow", ["research", "research_sync", "research_streamed"])
def test_streamed_and_sync_agent_runs_record_the_same_usage(db_url: str, flow: str) -> None:
    handle = getattr(ai_flows, flow).run("durability")
    handle.result(timeout=60)
    record = tether.Client().get(handle.id)
    requests = [c for c in record.checkpoints if c.name.startswith("model_request")]
    assert len(requests) == 4 and all(c.usage and c.usage.requests == 1 for c in requests)
    assert record.usage is not None and record.usage.requests == 4
    assert record.usage.input_tokens > 0 and record.usage.output_tokens > 0


def test_usage_recorded_by_hand_is_priced_with_the_configured_price(db_url: str) -> None:
    handle = uf.by_hand.run("shout")
    assert handle.result(timeout=30) == "SHOUT"
    usage = tether.Client().get(handle.id).usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (40, 4, 30)
    # 10 uncached and 30 cached input tokens at $1/M (no cache price given), 4 output at $10/M.
    assert usage.cost_usd == pytest.approx((10 + 30 + 40) / 1_000_000)


def test_cost_of_a_known_model_comes_from_genai_prices(db_url: str) -> None:
    model = FunctionModel(
        lambda m, i: ModelResponse(parts=[TextPart("hi")], usage=uf.request_usage()),
        model_name="gpt-4o",
    )
    execution = _run_llm_flow(model)
    expected = genai_prices.calc_price(uf.request_usage(), "gpt-4o").total_price
    assert execution.usage is not None
    assert execution.usage.cost_usd == pytest.approx(float(expected))
    assert execution.usage.by_model.keys() == {"gpt-4o"}


def test_a_response_naming_a_dated_model_is_priced_as_the_model_asked_for(
    db_url: str,
) -> None:
    # Providers answer `gpt-4o` as `gpt-4o-2024-08-06`: a price given for the name asked for
    # applies. (FunctionModel always answers with its own name, so this is checked directly.)
    usage = usage_of(uf.request_usage(), "tiny-2026-01-01", None, requested="tiny")
    assert usage.by_model.keys() == {"tiny-2026-01-01"}
    assert usage.cost_usd == pytest.approx(uf.REQUEST_COST)


def test_a_model_with_no_price_counts_tokens_and_says_its_cost_is_unknown(db_url: str) -> None:
    tether.configure(prices=None)
    handle = uf.three_questions.run("unpriced")
    handle.result(timeout=30)
    usage = tether.Client().get(handle.id).usage
    assert usage == _tiny(3, unpriced=True)
    assert usage is not None and usage.cost_usd is None and not usage.cost_complete


def test_a_partly_priced_execution_says_its_cost_is_a_lower_bound(db_url: str) -> None:
    tether.configure(prices=None)
    first = uf.three_questions.run("unpriced")
    first.result(timeout=30)
    tether.configure(prices={"tiny": uf.PRICE})
    priced = uf.by_hand.run("x")
    priced.result(timeout=30)
    total = tether.Client().get(first.id).usage + tether.Client().get(priced.id).usage  # type: ignore[operator]
    assert total.cost_usd == pytest.approx(80 / 1_000_000)
    assert total.unpriced_requests == 3 and not total.cost_complete


def test_record_usage_outside_a_flow_does_nothing_and_in_flow_code_is_refused(
    db_url: str,
) -> None:
    tether.record_usage(model="tiny", input_tokens=1)  # outside a flow: a no-op
    assert uf.direct_call("plain") == "PLAIN"
    handle = _flow_recording_usage_in_flow_code.run()
    with pytest.raises(tether.ExecutionFailed) as failed:
        handle.result(timeout=30)
    assert failed.value.error_type.endswith("UsageError")
    assert "inside the @tether.checkpoint" in failed.value.message


@tether.flow
def _flow_recording_usage_in_flow_code() -> None:
    tether.record_usage(model="tiny", input_tokens=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "", "input_tokens": 1}, "model is the model's name"),
        ({"model": "tiny", "input_tokens": -1}, "input_tokens is a whole number"),
        ({"model": "tiny", "output_tokens": 1.5}, "output_tokens is a whole number"),
        ({"model": "tiny", "cost_usd": -1.0}, "cost_usd is a number of dollars"),
    ],
)
def test_record_usage_refuses_bad_values(
    db_url: str, kwargs: dict[str, object], message: str
) -> None:
    handle = _record_usage_with.run(kwargs)
    with pytest.raises(tether.ExecutionFailed) as failed:
        handle.result(timeout=30)
    assert failed.value.error_type.endswith("UsageError") and message in failed.value.message


@tether.checkpoint
def _record(kwargs: dict[str, object]) -> None:
    tether.record_usage(**kwargs)  # type: ignore[arg-type]


@tether.flow
def _record_usage_with(kwargs: dict[str, object]) -> None:
    _record(kwargs)


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"tiny": {"input": 1}}, "must be a tether.ModelPrice"),
        ({"": uf.PRICE}, "a price's key is a model name"),
        ([uf.PRICE], "prices is a mapping"),
    ],
)
def test_prices_must_be_model_prices(db_url: str, prices: object, message: str) -> None:
    with pytest.raises(tether.ConfigurationError, match=message):
        tether.configure(prices=prices)  # type: ignore[arg-type]


def test_a_model_price_refuses_negative_and_missing_numbers() -> None:
    with pytest.raises(tether.UsageError, match="input_per_mtok is dollars per million"):
        tether.ModelPrice(input_per_mtok=-1, output_per_mtok=1)
    with pytest.raises(tether.UsageError, match="output_per_mtok is dollars per million"):
        tether.ModelPrice(input_per_mtok=1, output_per_mtok=float("nan"))


# --- retries, resume, retry and replay: counted once, as spent -------------------------------


def test_failed_attempts_that_were_retried_count_as_the_spend_they_were(db_url: str) -> None:
    handle = uf.retried.run(2)
    assert handle.result(timeout=30) == "echo: retried"
    record = tether.Client().get(handle.id)
    (call,) = record.checkpoints
    assert len(call.attempts) == 3
    assert call.usage == _tiny(3) and record.usage == _tiny(3)


def test_usage_of_a_retrying_call_survives_a_crash_and_resume(db_url: str, tmp_path: Path) -> None:
    """Attempt 1 asks the model and fails (a `retrying` row with its usage); the process is
    killed in attempt 2's request; a new process resumes the call from the recorded usage."""
    log = tmp_path / "requests.log"
    start = "import tether, usage_flows; tether.configure(prices={'tiny': usage_flows.PRICE}); "
    start += "print(usage_flows.retried.run(1).result(timeout=60))"
    crashed = run_child(start, db_url, MODEL_CALLS=str(log), MODEL_CRASH="2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    (row,) = tether.Client().get(execution.id).checkpoints
    assert row.status == "retrying" and row.usage == _tiny(1)

    resumed = run_child(RESUME, db_url, execution.id, MODEL_CALLS=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == repr("echo: retried")
    assert _requests(log) == ["retried"] * 3  # attempt 1, attempt 2 killed, attempt 2 again
    record = tether.Client().get(execution.id)
    # The killed request never reported its usage: counted are the two that did.
    assert record.usage == _tiny(2)
    assert [a.attempt for a in record.checkpoints[0].attempts] == [1, 2]


def test_a_killed_agent_resumed_elsewhere_counts_each_recorded_request_once(
    db_url: str, tmp_path: Path
) -> None:
    """The research agent of test_ai_agent, killed inside its third model request and resumed
    from a new process: the totals equal those of a run that was never interrupted."""
    log = tmp_path / "calls.log"
    start = "import ai_flows; print(ai_flows.research.run('durability').result(timeout=60))"
    crashed = run_child(start, db_url, AI_CALLS=str(log), AI_CRASH="model:3")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    before = tether.Client().get(execution.id)
    assert before.usage is not None and before.usage.requests == 2

    resumed = run_child(
        "import sys, tether; print(tether.Client().resume(sys.argv[1]).result(timeout=60))",
        db_url,
        execution.id,
        AI_CALLS=str(log),
        TETHER_IMPORTS="ai_flows",  # loads the flows this process resumes
    )
    assert resumed.returncode == 0, resumed.stderr
    record = tether.Client().get(execution.id)
    requests = [c for c in record.checkpoints if c.name == "model_request"]
    assert len(requests) == 4 and all(c.usage and c.usage.requests == 1 for c in requests)
    # Resuming replayed the two recorded requests: they ran once and count once.
    assert requests[:2] == [c for c in before.checkpoints if c.name == "model_request"]
    uninterrupted = ai_flows.research.run("durability")
    uninterrupted.result(timeout=60)
    assert record.usage == tether.Client().get(uninterrupted.id).usage


def test_a_retried_execution_still_counts_the_calls_it_forgot(db_url: str) -> None:
    handle = uf.fails_after_asking.run()
    with pytest.raises(tether.ExecutionFailed):
        handle.result(timeout=30)
    assert tether.Client().get(handle.id).usage == _tiny(2)
    # Retry forgets the failed call (and runs it again, failing again); what it spent the
    # first time was spent all the same.
    with pytest.raises(tether.ExecutionFailed):
        tether.Client().retry(handle.id).result(timeout=30)
    record = tether.Client().get(handle.id)
    assert [c.usage for c in record.checkpoints] == [_tiny(1), _tiny(1)]
    assert record.usage == _tiny(3)


def test_a_replay_counts_only_the_calls_it_makes_itself(db_url: str) -> None:
    source = uf.three_questions.run("fork")
    source.result(timeout=30)
    fork = tether.Client().replay(source.id, from_=2)
    assert fork.result(timeout=30) == ["echo: fork 0", "echo: fork 1", "echo: fork 2"]
    record = tether.Client().get(fork.id)
    assert [c.usage for c in record.checkpoints] == [None, None, _tiny(1)]
    assert record.usage == _tiny(1)
    assert tether.Client().get(source.id).usage == _tiny(3)


def test_list_leaves_usage_out_and_get_fills_it(db_url: str) -> None:
    handle = uf.three_questions.run("list")
    handle.result(timeout=30)
    (listed,) = tether.Client().list()
    assert listed.usage is None
    assert tether.Client().get(handle.id).usage == _tiny(3)


# --- the CLI ----------------------------------------------------------------------------------


def test_executions_get_shows_the_usage(db_url: str) -> None:
    handle = uf.three_questions.run("cli")
    handle.result(timeout=30)
    shown = run_cli(db_url, "executions", "get", handle.id)
    assert shown.returncode == 0, shown.stderr
    assert "330 tokens (300 in, 30 out), 3 requests, $0.0006" in " ".join(shown.stdout.split())
    as_json = run_cli(db_url, "executions", "get", handle.id, "--json")
    data = json.loads(as_json.stdout)
    assert data["usage"]["total_tokens"] == 330
    assert data["usage"]["requests"] == 3
    assert data["usage"]["cost_usd"] == pytest.approx(0.0006)
    assert data["usage"]["cost_complete"] is True
    assert data["checkpoints"][0]["usage"]["input_tokens"] == 100


def test_executions_get_says_when_the_cost_is_unknown(db_url: str) -> None:
    tether.configure(prices=None)
    handle = uf.three_questions.run("cli")
    handle.result(timeout=30)
    shown = run_cli(db_url, "executions", "get", handle.id)
    assert "3 requests, cost unknown" in " ".join(shown.stdout.split())


# --- helpers ----------------------------------------------------------------------------------


_model_for_flow: dict[str, FunctionModel] = {}


@tether.flow
def _one_call() -> str:
    return tether.llm("hello", model=_model_for_flow["model"])


def _run_llm_flow(model: FunctionModel) -> tether.ExecutionRecord:
    _model_for_flow["model"] = model
    handle = _one_call.run()
    handle.result(timeout=30)
    return tether.Client().get(handle.id)


def test_usage_adds_up_per_model() -> None:
    a = Usage(input_tokens=1, requests=1, cost_usd=0.5, by_model={"a": Usage(input_tokens=1)})
    b = Usage(output_tokens=2, requests=1, unpriced_requests=1, by_model={"b": Usage()})
    total = a + b
    assert (total.total_tokens, total.requests, total.cost_usd) == (3, 2, 0.5)
    assert set(total.by_model) == {"a", "b"} and not total.cost_complete
