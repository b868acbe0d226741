"""The README's first command: the demo kills an agent and resumes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tether
from tether import Status


def test_demo_kills_the_agent_and_resumes_it_without_redoing_recorded_steps(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    out = subprocess.run(
        [sys.executable, "-m", "tether.demo", "--db", url, "--kill-after", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "SIGKILL" in out.stdout
    assert "The 2 steps recorded before the kill did not run again" in out.stdout
    (summary,) = tether.Client(url).list()
    record = tether.Client(url).get(summary.id)
    assert record.status is Status.SUCCEEDED
    assert record.result.startswith("Report on durable execution")
    pids = [cp.metadata["pid"] for cp in record.checkpoints]
    assert len(pids) == 6 and len(set(pids)) == 2
    assert pids[0] == pids[1] != pids[-1]
    # The recorded steps were not run by the resuming process.
    plan_runs = out.stdout.count("running  plan(")
    assert plan_runs == 1


def test_demo_rejects_a_bad_kill_point(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tether.demo", "--kill-after", "9"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "--kill-after must be between 1 and 5" in out.stderr
