"""Helpers for tests that run real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
T = TypeVar("T")


def child_env(db_url: str, **extra: str) -> dict[str, str]:
    """Environment for a child process: the same store, the tests' modules importable."""
    env = dict(os.environ)
    env["TETHER_DB"] = db_url
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(SRC), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_child(
    code: str, db_url: str, *, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run Python code in a new process against the same store; returns when it exits."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(db_url, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(TESTS),
    )


def retry_until(check: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
