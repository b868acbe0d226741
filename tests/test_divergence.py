"""Resuming with changed code: renamed checkpoints diverge, changed arguments warn."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

import tether
from helpers import run_child
from tether import Status

START = "import agent_flows; agent_flows.evolving_flow.run(4).result(timeout=30)"
RESUME = textwrap.dedent(
    """
    import sys, tether
    import agent_flows  # a process runs the flows it loaded
    if {strict}:
        tether.configure(strict=True)
    (record,) = tether.Client().list()
    try:
        print(repr(tether.Client().resume(record.id).result(timeout=30)))
    except tether.ExecutionFailed as exc:
        print(exc.error_type, "|", exc.message)
    """
)


def crash_then_resume(db_url: str, tmp_path: Path, variant: str, strict: bool = False) -> str:
    effects = str(tmp_path / "effects.log")
    crashed = run_child(START, db_url, SIDE_EFFECTS=effects, CRASH_AT="2", CRASH_PHASE="before")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = run_child(RESUME.format(strict=strict), db_url, SIDE_EFFECTS=effects, VARIANT=variant)
    assert resumed.returncode == 0, resumed.stderr
    return resumed.stdout.strip()


def test_unchanged_code_resumes_to_the_same_result(db_url: str, tmp_path: Path) -> None:
    assert crash_then_resume(db_url, tmp_path, "original") == "[40, 41, 410]"


def test_a_renamed_checkpoint_at_a_recorded_position_is_a_divergence(
    db_url: str, tmp_path: Path
) -> None:
    out = crash_then_resume(db_url, tmp_path, "renamed")
    assert out.startswith("tether.errors.DivergenceError |")
    assert "position 1 was recorded as 'enrich'" in out
    assert "'renamed_step'" in out
    (record,) = tether.Client().list()
    assert record.status is Status.FAILED
    assert record.error is not None and record.error.type == "tether.errors.DivergenceError"


def test_a_divergence_fails_the_execution_even_if_user_code_catches_it(
    db_url: str, tmp_path: Path
) -> None:
    out = crash_then_resume(db_url, tmp_path, "swallow")
    assert out.startswith("tether.errors.DivergenceError |")


def test_changed_arguments_use_the_recorded_result_and_warn(db_url: str, tmp_path: Path) -> None:
    assert crash_then_resume(db_url, tmp_path, "new-args") == "[40, 41, 410]"
    (summary,) = tether.Client().list()
    record = tether.Client().get(summary.id)
    assert len(record.warnings) == 1
    assert "'enrich' at position 1 was called with different arguments" in record.warnings[0]
    # The warning is recorded at the call (beside it, the takeover's lifecycle event).
    (warned,) = [e for e in record.events if e.level == "warning"]
    assert warned.position == "1"


def test_strict_mode_makes_changed_arguments_an_error(db_url: str, tmp_path: Path) -> None:
    out = crash_then_resume(db_url, tmp_path, "new-args", strict=True)
    assert out.startswith("tether.errors.DivergenceError |")
    assert "strict mode" in out


@pytest.mark.parametrize("variant", ["renamed"])
def test_divergence_leaves_recorded_checkpoints_intact(
    db_url: str, tmp_path: Path, variant: str
) -> None:
    crash_then_resume(db_url, tmp_path, variant)
    (summary,) = tether.Client().list()
    record = tether.Client().get(summary.id)
    assert [(c.position, c.name, c.result) for c in record.checkpoints] == [
        ("0", "fetch", 40),
        ("1", "enrich", 41),
    ]
