"""Replay suites (tether.testing.replay, `tether replay-test`): executions recorded for real
in the test's store (SQLite, or PostgreSQL with TETHER_TEST_DB=postgres) run again against
changed code in a scratch store, tool calls answered from the recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import replay_flows as flows
import tether
from helpers import TESTS, record, retry_until, run_replay_cli
from tether.errors import ExecutionNotFound, ReplayMiss, UsageError
from tether.testing import ReplayReport, Sample, export, replay


@pytest.fixture(autouse=True)
def version() -> Iterator[None]:
    flows.VERSION = 1
    flows.CALLS.clear()
    yield
    flows.VERSION = 1


def _executions(db_url: str) -> int:
    return len(tether.Client(db_url).list(limit=1000))


def test_unchanged_code_replays_unchanged_without_running_a_tool(db_url: str) -> None:
    first = record(flows.research, "o1")
    second = record(flows.research, "o2")
    live = dict(flows.CALLS)
    assert live == {"fetch": 4, "charge": 2}
    stored = _executions(db_url)

    report = replay(first, second, db=db_url)

    assert [c.verdict for c in report.cases] == ["unchanged", "unchanged"], str(report)
    assert report.ok and report.totals["unchanged"] == 2
    assert report.cases[0].recorded.result == {
        "summary": "page<a/o1> + page<b/o1>",
        "receipt": "receipt-o1-4200",
    }
    # Every call, the gathered branches' and the child flow's, came from the recording.
    assert live == flows.CALLS
    assert all(c.answered == 3 and not c.live for c in report.cases)
    # Nothing was written to the store the recording came from.
    assert _executions(db_url) == stored


def test_a_changed_flow_is_changed_with_the_checkpoint_diff(db_url: str) -> None:
    recorded = record(flows.research, "o1")
    flows.VERSION = 2
    flows.CALLS.clear()

    report = replay(recorded, db=db_url, tools={"audit": "live"})

    (case,) = report.cases
    assert case.verdict == "changed", str(report)
    assert case.replayed is not None
    assert case.replayed.result["summary"] == "PAGE<A/O1> + PAGE<B/O1>"
    assert [(d.kind, d.name) for d in case.diffs] == [("added", "audit")]
    assert case.diffs[0].replayed == "audited PAGE<A/O1> + PAGE<B/O1>"
    assert flows.CALLS == {"audit": 1}  # the live tool ran, the recorded ones did not
    assert any(line.endswith("audit") for line in case.live)
    assert "changed" in str(report) and "+ " in str(report)


def test_a_call_with_new_arguments_fails_the_case_with_a_miss(db_url: str) -> None:
    recorded = record(flows.billing, "o1")
    flows.VERSION = 3  # charges 4300 cents now
    flows.CALLS.clear()

    report = replay(recorded, db=db_url)

    (case,) = report.cases
    assert case.verdict == "error" and not report.ok
    assert case.problem is not None
    assert "charge at position 0 has no recorded call left with these arguments" in case.problem
    assert '("o1", 4300)' in case.problem and "--tools charge=live" in case.problem
    assert flows.CALLS == {}  # never run live by default
    assert case.replayed is not None and "ReplayMiss" in (case.replayed.error or "")


def test_a_tool_given_a_static_answer_returns_it(db_url: str) -> None:
    recorded = record(flows.billing, "o1")
    flows.CALLS.clear()

    report = replay(recorded, db=db_url, tools={"charge": "receipt-static"})

    (case,) = report.cases
    assert case.verdict == "changed"
    assert case.replayed is not None and case.replayed.result == "receipt-static"
    assert [(d.kind, d.recorded, d.replayed) for d in case.diffs] == [
        ("changed", "receipt-o1-4200", "receipt-static")
    ]
    assert flows.CALLS == {}


def test_a_recorded_failure_replays_as_the_same_failure_not_none(db_url: str) -> None:
    failed = record(flows.declined, "o1")
    empty = record(flows.nothing, "o2")  # a None result, for contrast
    flows.CALLS.clear()

    report = replay(failed, empty, db=db_url)

    by_flow = {c.flow: c for c in report.cases}
    declined, nothing = by_flow["declined"], by_flow["nothing"]
    assert declined.verdict == "unchanged" and nothing.verdict == "unchanged"
    assert declined.recorded.failed and declined.replayed is not None
    assert declined.replayed.error == "ValueError: card declined for o1"
    assert declined.recorded.error == declined.replayed.error
    assert nothing.replayed is not None and not nothing.replayed.failed
    assert nothing.replayed.result is None and nothing.replayed != declined.replayed
    assert flows.CALLS == {}


def test_failure_to_success_is_improved_and_success_to_failure_regressed(db_url: str) -> None:
    failed = record(flows.declined, "o1")
    flows.VERSION = 2  # catches the recorded error now
    report = replay(failed, db=db_url)
    assert report.cases[0].verdict == "improved"
    assert report.ok

    flows.VERSION = 1
    succeeded = record(flows.billing, "o2")
    report = replay(succeeded, db=db_url, tools={"charge": "live"})
    assert report.cases[0].verdict == "unchanged"  # live, and the same
    flows.VERSION = 4  # raises after the charge
    report = replay(succeeded, db=db_url)
    (case,) = report.cases
    assert case.verdict == "regressed" and not report.ok
    assert case.replayed is not None
    assert case.replayed.error == "RuntimeError: the refactor broke billing"
    # An evaluator that never looks at failures does not hide one.
    judged = replay(succeeded, db=db_url, evaluators=[lambda sample: True])
    assert judged.cases[0].verdict == "regressed" and not judged.ok


def test_a_recorded_wait_is_answered_and_a_new_one_is_an_error(db_url: str) -> None:
    handle = flows.approved.run("o1")
    client = tether.Client(db_url)
    retry_until(lambda: client.pending_waits() or None, what="the wait")
    client.input(handle.id, "approve", True)
    assert handle.result(timeout=60) == "receipt-o1-100"
    flows.CALLS.clear()

    same = replay(handle.id, db=db_url)
    flows.VERSION = 5
    other = replay(handle.id, db=db_url)

    assert same.cases[0].verdict == "unchanged", str(same)
    assert other.cases[0].verdict == "error"
    assert "waits for input 'approve-twice'" in (other.cases[0].problem or "")
    assert flows.CALLS == {}


def test_evaluators_decide_improved_and_regressed(db_url: str) -> None:
    recorded = record(flows.research, "o1")
    flows.VERSION = 2

    def shouts(sample: Sample) -> float:
        assert sample.recorded.result is not None
        return 1.0 if str(sample.output["summary"]).isupper() else 0.0

    def quiet(sample: Sample) -> bool:
        return not str(sample.output["summary"]).isupper()

    up = replay(recorded, db=db_url, tools={"audit": "live"}, evaluators=[shouts])
    down = replay(recorded, db=db_url, tools={"audit": "live"}, evaluators={"quiet": quiet})

    assert up.cases[0].verdict == "improved" and up.cases[0].scores == {"shouts": (0.0, 1.0)}
    assert down.cases[0].verdict == "regressed" and not down.ok
    assert "score quiet: 1 -> 0" in str(down)


def test_a_durable_agent_replays_from_its_recorded_model_and_tool_calls(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")
    assert flows.CALLS == {"lookup": 1}
    flows.CALLS.clear()

    same = replay(recorded, db=db_url)
    other = replay(recorded, db=db_url, model=flows.OTHER_MODEL)
    oslo = replay(recorded, db=db_url, model=flows.NEW_ARGS_MODEL)

    assert same.cases[0].verdict == "unchanged", str(same)
    assert same.cases[0].recorded.result == "report: sunny in Paris"
    # Another model, live: its own words, the tool's answer still from the recording.
    assert other.cases[0].verdict == "changed", str(other)
    assert other.cases[0].replayed is not None
    assert other.cases[0].replayed.result == "forecast: sunny in Paris"
    assert len(other.cases[0].live) == 2
    assert all(line.endswith(" model_request") for line in other.cases[0].live)
    # The model asks about another city: the recording has no such tool call.
    assert oslo.cases[0].verdict == "error"
    assert "tool:lookup" in (oslo.cases[0].problem or "")
    assert '{"city": "Oslo"}' in (oslo.cases[0].problem or "")
    assert flows.CALLS == {}  # no live tool call in any of them


def test_a_replay_model_answers_an_agent_built_with_the_durability_capability(
    db_url: str,
) -> None:
    recorded = record(flows.built_weather, "weather?")
    flows.CALLS.clear()

    report = replay(recorded, db=db_url, model=flows.OTHER_MODEL)

    (case,) = report.cases
    assert case.replayed is not None and case.replayed.result == "forecast: sunny in Paris"
    assert len(case.live) == 2 and all(line.endswith(" model_request") for line in case.live)
    assert flows.CALLS == {}


def test_a_replay_leaves_the_agent_as_it_was(db_url: str) -> None:
    recorded = record(flows.weather_on, "weather?", False)
    report = replay(recorded, db=db_url, model=flows.OTHER_MODEL)
    assert report.cases[0].replayed is not None
    assert report.cases[0].replayed.result == "forecast: sunny in Paris", str(report)

    # Outside the replay the agent accepts only the models it was made with: the replay's
    # model was not registered with its durability capability behind its back.
    handle = flows.weather_on.run("weather?", True)
    with pytest.raises(tether.ExecutionFailed, match="not registered"):
        handle.result(timeout=60)
    assert flows.weather_on.run("weather?", False).result(timeout=60) == "report: sunny in Paris"


def test_a_live_test_model_works_offline(db_url: str) -> None:
    recorded = record(flows.weather, "weather?")
    flows.CALLS.clear()

    report = replay(recorded, db=db_url, model="test", tools={"lookup": "live"})

    (case,) = report.cases
    assert case.verdict in ("changed", "unchanged"), str(report)
    assert case.replayed is not None and not case.replayed.failed


def test_selection_by_flow_status_and_time(db_url: str) -> None:
    first = record(flows.billing, "o1")
    record(flows.declined, "o2")
    both = replay(db=db_url, flow="billing")
    failed = replay(db=db_url, status="failed")
    later = replay(db=db_url, since=tether.Client(db_url).get(first).created_at.timestamp() + 1e6)

    # A child flow (billing under research) is replayed with its parent, not alone.
    assert [c.execution_id for c in both.cases] == [first]
    assert [c.flow for c in failed.cases] == ["declined"]
    assert later.cases == []
    acme = record(flows.research, "acme-1")
    record(flows.research, "globex-1")
    assert [c.execution_id for c in replay(db=db_url, tag="customer=acme").cases] == [acme]
    assert len(replay(db=db_url, tag="customer").cases) == 2
    with pytest.raises(ExecutionNotFound):
        replay("no-such-id", db=db_url)
    with pytest.raises(UsageError, match="unknown status 'done'"):
        replay(db=db_url, status="done")
    with pytest.raises(UsageError, match="tools is 'recorded', 'live' or a mapping"):
        replay(first, db=db_url, tools="sometimes")  # type: ignore[arg-type]


def test_the_miss_error_is_typed() -> None:
    error = ReplayMiss("fetch has no recorded call", "fetch")
    assert isinstance(error, tether.TetherError) and error.name == "fetch"


# --- the command ---------------------------------------------------------------------------


def test_cli_exit_codes_json_and_markdown(db_url: str, tmp_path: Path) -> None:
    ok = record(flows.research, "o1")
    declined = record(flows.declined, "o2")
    markdown = tmp_path / "report.md"

    passed = run_replay_cli(db_url, "replay-test", ok, "--import", "replay_flows", "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    data = json.loads(passed.stdout)
    assert data["ok"] and data["totals"]["unchanged"] == 1
    assert data["cases"][0]["recorded"]["result"]["receipt"] == "receipt-o1-4200"

    # `declined` recorded a failure; a static answer makes the replay succeed: improved.
    # `ok` with the charge refused: regressed, exit 1.
    failed = run_replay_cli(
        db_url, "replay-test", ok, declined, "--import", "replay_flows",
        "--tools", "charge=live", "--tools", 'flaky="fine"', "--markdown", str(markdown),
    )  # fmt: skip
    assert failed.returncode == 0, failed.stdout + failed.stderr
    text = markdown.read_text()
    assert "### tether replay: passed" in text
    assert "| improved | `" + declined in text
    assert "| unchanged | `" + ok in text

    missing = run_replay_cli(db_url, "replay-test", "nope", "--import", "replay_flows")
    assert missing.returncode == 3, missing.stderr
    bad = run_replay_cli(db_url, "replay-test", ok, "--tools", "x=", "--import", "replay_flows")
    assert bad.returncode == 2, bad.stderr


def test_cli_exits_1_on_a_regression_and_says_so_in_markdown(db_url: str, tmp_path: Path) -> None:
    ok = record(flows.billing, "o1")
    markdown = tmp_path / "report.md"

    # The code under test raises after the charge now (REPLAY_FLOWS_VERSION: its VERSION).
    result = run_replay_cli(
        db_url, "replay-test", ok, "--import", "replay_flows", "--markdown", str(markdown),
        REPLAY_FLOWS_VERSION="4",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 regressed" in result.stdout
    text = markdown.read_text()
    assert "### tether replay: FAILED" in text
    assert "| regressed | `" + ok in text
    assert "+ failed: RuntimeError: the refactor broke billing" in text

    # A flow this process did not load is a case error: the gate fails too.
    unloaded = run_replay_cli(db_url, "replay-test", ok)
    assert unloaded.returncode == 1, unloaded.stdout + unloaded.stderr
    assert "not loaded" in unloaded.stdout and "--import replay_flows" in unloaded.stdout


def test_report_round_trips_to_json() -> None:
    assert ReplayReport().to_json()["ok"] is True


# --- suites as files -------------------------------------------------------------------------


def test_an_exported_suite_replays_in_a_fresh_directory_without_a_database(
    db_url: str, tmp_path: Path
) -> None:
    research = record(flows.research, "o1")
    declined = record(flows.declined, "o2")
    suite = tmp_path / "suite.jsonl"

    written = run_replay_cli(
        db_url, "replay-test", "export", research, declined, "--out", str(suite)
    )
    assert written.returncode == 0, written.stderr
    assert "wrote 3 execution(s)" in written.stdout  # research, its child billing, declined
    lines = [json.loads(line) for line in suite.read_text().splitlines()]
    assert lines[0] == {"kind": "tether-replay-suite", "version": 1}
    kinds = [line["kind"] for line in lines[1:]]
    assert kinds.count("execution") == 3 and "call" in kinds
    assert "pickle" not in suite.read_text()

    ci = tmp_path / "ci"
    ci.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TETHER_DB"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])
    replayed = subprocess.run(
        [sys.executable, "-m", "tether", "replay-test", "--suite", str(suite),
         "--import", "replay_flows", "--json"],
        env=env, cwd=ci, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["totals"]["unchanged"] == 2, report
    assert {c["execution_id"] for c in report["cases"]} == {research, declined}
    assert not list(ci.iterdir())  # no store made where it ran


def test_export_redacts_what_it_writes_and_the_store_keeps_it(db_url: str, tmp_path: Path) -> None:
    recorded = record(flows.research, "o1")
    suite = tmp_path / "suite.jsonl"

    def no_pages(what: str, value: Any) -> Any:
        return "[page]" if isinstance(value, str) and value.startswith("page<") else value

    count = export(recorded, out=suite, db=db_url, redact=no_pages, redact_keys={"receipt"})

    assert count == 2
    text = suite.read_text()
    assert "receipt-o1-4200" not in text.split('"kind":"call"')[0]  # the result's key hidden
    assert '"receipt":"***"' in text and '"name":"fetch"' in text
    assert "page<" not in "".join(line for line in text.splitlines() if '"name":"fetch"' in line)
    # The store keeps the audit trail as it was.
    assert tether.Client(db_url).get(recorded).result["receipt"] == "receipt-o1-4200"
    # Replayed from the redacted suite: the recorded pages are "[page]" now, so the output
    # differs from the redacted recording in the summary only.
    report = replay(suite=suite)
    (case,) = report.cases
    assert case.replayed is not None
    assert case.replayed.result["summary"] == "[page] + [page]"
    assert case.recorded.result["receipt"] == "***"


def test_a_sample_has_the_logged_metadata_from_a_store_and_from_a_suite(
    db_url: str, tmp_path: Path
) -> None:
    recorded = record(flows.research, "acme-1")
    seen: list[tuple[str, Any, float]] = []

    def customer(sample: Sample) -> bool:
        seen.append((sample.side, sample.metadata, sample.duration))
        return sample.metadata == {"customer": "acme"}

    suite = tmp_path / "suite.jsonl"
    export(recorded, db=db_url, out=suite)
    from_store = replay(recorded, db=db_url, evaluators=[customer])
    from_suite = replay(suite=suite, tag="customer=acme", evaluators=[customer])

    assert from_store.cases[0].scores == {"customer": (1.0, 1.0)}, str(from_store)
    assert [c.execution_id for c in from_suite.cases] == [recorded]
    assert from_suite.cases[0].scores == {"customer": (1.0, 1.0)}, str(from_suite)
    assert [side for side, _, _ in seen] == ["recorded", "replayed"] * 2
    assert all(duration > 0 for _, _, duration in seen)


def test_a_file_that_is_not_a_suite_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.jsonl"
    bogus.write_text('{"kind": "something"}\n')
    with pytest.raises(UsageError, match="is not a tether replay suite"):
        replay(suite=bogus)
    with pytest.raises(UsageError, match="cannot read the suite"):
        replay(suite=tmp_path / "missing.jsonl")


def test_a_case_that_does_not_end_in_time_is_an_error(db_url: str) -> None:
    recorded = record(flows.patient, "o1")
    flows.VERSION = 6

    report = replay(recorded, db=db_url, timeout=0.5)

    (case,) = report.cases
    assert case.verdict == "error" and not report.ok
    assert case.problem == "the replay did not end within 0.5s"


def test_an_agents_parallel_tool_calls_are_matched_by_their_arguments(db_url: str) -> None:
    recorded = record(flows.two_cities, "where?")
    assert flows.CALLS == {"lookup": 2}
    flows.CALLS.clear()

    same = replay(recorded, db=db_url)
    other = replay(recorded, db=db_url, model=flows.OTHER_PAIR_MODEL)

    assert same.cases[0].verdict == "unchanged", str(same)
    # A live model makes the same two calls under new call ids: both found by arguments.
    assert other.cases[0].verdict == "changed", str(other)
    assert other.cases[0].replayed is not None
    assert other.cases[0].replayed.result == "together: sunny in Paris; sunny in Rome"
    assert flows.CALLS == {}
