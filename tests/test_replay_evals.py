"""pydantic-evals evaluators in replay suites (tether.testing.replay(evaluators=...),
`tether replay-test --evaluator`): executions recorded for real in the test's store (SQLite,
or PostgreSQL with TETHER_TEST_DB=postgres) scored on both sides by `EqualsExpected`,
`Contains`, `IsInstance`, a label evaluator and an `LLMJudge` whose model is a FunctionModel.

pydantic-evals pins its own Pydantic AI release, so the main environments do not install it:
these tests run in the evals run of scripts/test (.venv-evals) and skip elsewhere."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip(
    "pydantic_evals",
    reason="pydantic-evals is not installed here: these tests run in the evals run of "
    "scripts/test (.venv-evals, pydantic-evals at its floor)",
)

from pydantic_evals.evaluators import Contains, EqualsExpected, IsInstance, LLMJudge

import eval_judges as judges
import replay_flows as flows
from helpers import record, run_python, run_replay_cli
from tether.errors import UsageError
from tether.testing import replay


@pytest.fixture(autouse=True)
def version() -> Any:
    flows.VERSION = 1
    flows.CALLS.clear()
    judges.JUDGED.clear()
    judges.CONTEXTS.clear()
    yield
    flows.VERSION = 1


def test_builtin_evaluators_score_a_gathered_flow_with_a_child(db_url: str) -> None:
    recorded = record(flows.research, "o1")
    flows.CALLS.clear()
    evaluators = [EqualsExpected(), Contains(value="receipt"), IsInstance(type_name="dict")]

    same = replay(recorded, db=db_url, evaluators=evaluators)
    flows.VERSION = 2  # the summary is upper-cased now, and an audit call is added
    other = replay(recorded, db=db_url, tools={"audit": "live"}, evaluators=evaluators)

    (case,) = same.cases
    assert case.verdict == "unchanged", str(same)
    assert case.scores == {
        "EqualsExpected": (1.0, 1.0),
        "Contains": (1.0, 1.0),
        "IsInstance": (1.0, 1.0),
    }
    # The replayed result differs from the recorded one (its expected output): a regression,
    # while the evaluators the change leaves alone keep their scores.
    (changed,) = other.cases
    assert changed.verdict == "regressed" and not other.ok, str(other)
    assert changed.scores["EqualsExpected"] == (1.0, 0.0)
    assert changed.scores["Contains"] == changed.scores["IsInstance"] == (1.0, 1.0)
    assert "score EqualsExpected: 1 -> 0" in str(other)
    assert flows.CALLS == {"audit": 1}  # the recorded calls stayed recorded


def test_an_llm_judge_passes_the_same_agent_and_fails_another_model(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")
    flows.CALLS.clear()

    same = replay(recorded, db=db_url, evaluators=[judges.reads_like_a_report])
    other = replay(
        recorded,
        db=db_url,
        model=flows.OTHER_MODEL,
        evaluators={"report": judges.reads_like_a_report},
    )

    assert same.cases[0].verdict == "unchanged", str(same)
    assert same.cases[0].scores == {"LLMJudge": (1.0, 1.0)}
    assert same.cases[0].reasons["LLMJudge"] == (
        "it is worded as a report",
        "it is worded as a report",
    )
    # Another model answers "forecast: ...": the judge fails it, with its reason shown.
    case = other.cases[0]
    assert case.verdict == "regressed", str(other)
    assert case.scores == {"report": (1.0, 0.0)}
    assert "score report: 1 -> 0 (it is not worded as a report)" in str(other)
    assert "it is not worded as a report" in other.to_markdown()
    assert case.to_json()["reasons"]["report"]["replayed"] == "it is not worded as a report"
    # The judge saw each side's output: the recorded one, then the replayed one.
    outputs = [p.split("<Output>")[1].split("</Output>")[0].strip() for p in judges.JUDGED]
    assert outputs == [
        "report: sunny in Paris",
        "report: sunny in Paris",
        "report: sunny in Paris",
        "forecast: sunny in Paris",
    ]
    assert flows.CALLS == {}  # the tool was answered from the recording every time


async def test_an_llm_judge_runs_when_replay_is_called_from_async_code(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")

    # This thread runs the test's event loop: the judge runs on tether's own.
    report = replay(recorded, db=db_url, evaluators=[judges.reads_like_a_report])

    assert report.cases[0].scores == {"LLMJudge": (1.0, 1.0)}, str(report)


def test_an_llm_judge_with_the_expected_output_and_inputs(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")
    judge = LLMJudge(
        rubric="The output answers the input",
        model=judges.JUDGE_MODEL,
        include_input=True,
        include_expected_output=True,
        score={"include_reason": False},
    )

    report = replay(recorded, db=db_url, model=flows.OTHER_MODEL, evaluators=[judge])

    # A score and an assertion: two results, named by LLMJudge.
    assert report.cases[0].scores == {"LLMJudge_score": (1.0, 0.0), "LLMJudge_pass": (1.0, 0.0)}
    prompt = judges.JUDGED[-1]
    assert "weather?" in prompt  # the flow's arguments are the inputs
    assert "<ExpectedOutput>" in prompt and "report: sunny in Paris" in prompt


def test_a_label_that_changes_makes_the_case_changed(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")

    same = replay(recorded, db=db_url, evaluators=[judges.tone])
    other = replay(recorded, db=db_url, model=flows.OTHER_MODEL, evaluators=[judges.tone])

    assert same.cases[0].verdict == "unchanged" and same.cases[0].labels == {
        "Tone": ("report", "report")
    }
    case = other.cases[0]
    # A label has no order: neither better nor worse, but not the same.
    assert case.verdict == "changed" and other.ok, str(other)
    assert case.labels == {"Tone": ("report", "forecast")}
    assert case.scores == {}
    assert 'label Tone: "report" -> "forecast" (the answer begins with \'forecast\')' in str(other)


def test_a_failure_is_scored_with_no_output_and_its_error(db_url: str) -> None:
    recorded = record(flows.billing, "o1")

    report = replay(recorded, db=db_url, evaluators=[EqualsExpected()])
    flows.VERSION = 4  # billing raises after the charge now
    broken = replay(recorded, db=db_url, evaluators=[EqualsExpected()])

    assert report.cases[0].verdict == "unchanged", str(report)
    assert broken.cases[0].verdict == "regressed", str(broken)
    assert broken.cases[0].scores == {"EqualsExpected": (1.0, 0.0)}


def test_the_context_holds_the_arguments_results_metadata_and_error(db_url: str) -> None:
    recorded = record(flows.research, "acme-1")
    flows.VERSION = 4  # the child flow (billing) raises after its charge now

    report = replay(recorded, db=db_url, evaluators=[judges.remember])

    # A failure where the recording succeeded: a regression, whatever the evaluator says.
    assert report.cases[0].verdict == "regressed", str(report)
    before, after = judges.CONTEXTS
    for ctx in (before, after):
        assert ctx.name == recorded
        assert ctx.inputs == {"args": ["acme-1"], "kwargs": {}}
        assert ctx.expected_output == report.cases[0].recorded.result
        assert ctx.metadata == {"customer": "acme"}
        assert ctx.duration > 0
    assert before.output == before.expected_output and before.attributes == {}
    # A failure has no output; its error is an attribute.
    assert after.output is None
    assert "the refactor broke billing" in after.attributes["error"]


def test_a_span_based_evaluator_is_a_case_error_that_says_why(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")

    report = replay(recorded, db=db_url, evaluators=[judges.made_a_model_request])

    (case,) = report.cases
    assert case.verdict == "error" and not report.ok
    assert "record no OpenTelemetry spans" in (case.problem or "")
    assert "HasMatchingSpan" in (case.problem or "")


def test_an_evaluator_class_instead_of_an_instance_is_a_usage_error(db_url: str) -> None:
    recorded = record(flows.billing, "o1")
    with pytest.raises(UsageError, match=r"the class EqualsExpected: give an instance"):
        replay(recorded, db=db_url, evaluators=[EqualsExpected])
    with pytest.raises(UsageError, match="neither a function nor a pydantic-evals evaluator"):
        replay(recorded, db=db_url, evaluators={"x": 3})


def test_two_evaluators_of_one_kind_keep_both_scores(db_url: str) -> None:
    recorded = record(flows.research, "o1")
    report = replay(
        recorded, db=db_url, evaluators=[Contains(value="receipt"), Contains(value="missing")]
    )
    assert report.cases[0].scores == {"Contains": (1.0, 1.0), "Contains#2": (0.0, 0.0)}


# --- the command ---------------------------------------------------------------------------


def test_cli_evaluators_by_module_path_gate_on_the_judge(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")

    passed = run_replay_cli(
        db_url, "replay-test", recorded, "--import", "replay_flows", "--json",
        "--evaluator", "eval_judges:reads_like_a_report",
        "--evaluator", "pydantic_evals.evaluators:EqualsExpected",  # a class: made here
        "--evaluator", "eval_judges:tone",
    )  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    data = json.loads(passed.stdout)
    assert data["cases"][0]["verdict"] == "unchanged"
    assert set(data["cases"][0]["scores"]) == {"LLMJudge", "EqualsExpected"}
    assert data["cases"][0]["labels"] == {"Tone": {"recorded": "report", "replayed": "report"}}

    # The code under test shouts the agent's answer (REPLAY_FLOWS_VERSION: its VERSION): the
    # judge fails it.
    failed = run_replay_cli(
        db_url, "replay-test", recorded, "--import", "replay_flows",
        "--evaluator", "eval_judges:reads_like_a_report", REPLAY_FLOWS_VERSION="7",
    )  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "1 regressed" in failed.stdout
    assert "score LLMJudge: 1 -> 0 (it is not worded as a report)" in failed.stdout


def test_cli_evaluator_usage_errors(db_url: str) -> None:
    recorded = record(flows.billing, "o1")

    for spec, message in [
        ("eval_judges", "give MODULE:NAME"),
        ("no_such_module:x", "--evaluator no_such_module"),
        ("eval_judges:nothing_here", "has no nothing_here"),
        ("pydantic_evals.evaluators:IsInstance", "needs arguments"),
        ("replay_flows:VERSION", "name a function"),
    ]:
        result = run_replay_cli(db_url, "replay-test", recorded, "--import", "replay_flows",
                      "--evaluator", spec)  # fmt: skip
        assert result.returncode == 2, (spec, result.stdout, result.stderr)
        assert message in result.stderr, (spec, result.stderr)


def test_without_pydantic_evals_the_error_names_the_extra(db_url: str) -> None:
    recorded = record(flows.billing, "o1")
    # An environment without pydantic-evals, as the main test runs are: its import fails.
    code = (
        "import sys; sys.modules['pydantic_evals'] = None; sys.argv[0] = 'tether'; "
        "from tether.cli import main; raise SystemExit(main())"
    )
    result = run_python(
        ["-c", code, "replay-test", recorded, "--import", "replay_flows",
         "--evaluator", "pydantic_evals.evaluators:EqualsExpected"],
        db_url, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install -e '.[evals]' in a clone of tether" in result.stderr
