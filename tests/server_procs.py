"""The processes a server test starts: `tether server` on a free loopback port and `tether
worker`s, each importing the test's flows module, all killed (SIGKILL) at teardown. Shared by
the API, fuzzing and dashboard tests."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from helpers import TESTS, ProcessPool, child_env, retry_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(proc: subprocess.Popen[str], url: str, output: Callable[[], str]) -> None:
    """Return once the server `proc` answers /healthz at `url`; fail the test with its
    `output()` if it exits first."""

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {output()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    retry_until(up, timeout=30, what="the server to answer /healthz")


class Processes(ProcessPool):
    """A server and workers started by a test, killed (SIGKILL) at teardown."""

    def __init__(self, db_url: str, tmp_path: Path, flows: str, *, poll: str = "0.01") -> None:
        super().__init__()
        self.db_url, self.tmp_path, self.flows, self.poll = db_url, tmp_path, flows, poll

    def _spawn(self, argv: list[str], log: str, **env: str) -> subprocess.Popen[str]:
        out = (self.tmp_path / log).open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether", *argv],
            env=child_env(self.db_url, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(TESTS),
        )
        return self.add(proc)

    def server(self, *extra: str, **env: str) -> str:
        port = free_port()
        argv = ["server", "--port", str(port), "--import", self.flows, *extra]
        log = f"server-{port}.log"
        proc = self._spawn(argv, log, **env)
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, url, (self.tmp_path / log).read_text)
        return url

    def worker(self) -> None:
        self._spawn(["worker", "--import", self.flows, "--poll", self.poll], "worker.log")
