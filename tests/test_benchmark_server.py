"""benchmarks/server.py runs end to end at a tiny size (its figures are not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from backend import BACKEND

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "server.py"


def test_server_benchmark_fills_serves_and_reports_every_route(db_url: str) -> None:
    env = dict(os.environ)
    if BACKEND == "postgres":
        env["TETHER_BENCH_PG_URL"] = db_url  # the test's fresh database, filled by the script
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--executions", "40", "--checkpoints", "30",
         "--requests", "3", "--warmup", "1", "--db", BACKEND, "--json", "--quiet"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)["results"][BACKEND]
    assert result["fill"]["executions"] == 40 + 4  # three seeds and the long execution
    assert result["fill"]["checkpoints"] >= 30
    routes = result["routes"]
    assert {"API list", "dashboard list", "API execution, big", "dashboard execution, big"} <= set(
        routes
    )
    for route in routes.values():
        assert route["bytes"] > 0
        assert route["trip_p99_ms"] >= route["trip_p50_ms"] > 0
        assert route["cpu_p99_ms"] >= route["cpu_p50_ms"] > 0
        assert route["met"] in (True, False)
