"""The OpenAPI document of `tether server` fuzzed with schemathesis against a real uvicorn
server (a subprocess on a loopback port), with an admin token and executions and waits in
the store: no request the document allows, or nearly allows, gets a 500, and what the
server answers matches the document it publishes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

import server_flows
import tether
from helpers import retry_until
from server_procs import Processes

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

# Enough to reach every route's validation and error paths; small enough that the whole
# document is fuzzed in seconds on a loaded machine.
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
]


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    pool = Processes(db_url, tmp_path, "server_flows")
    yield pool
    pool.kill_all()


def _seeded(client: tether.Client) -> dict[str, str]:
    """Executions of each shape the routes read: finished with a dataclass result, failed,
    and waiting for input (a pending wait with a schema)."""
    done = server_flows.report.run("fuzzed")
    done.result(timeout=30)
    failed = server_flows.fails_once.run("/nonexistent/fuzz-flag-dir/flag")
    with pytest.raises(tether.TetherError):
        failed.result(timeout=30)
    waiting = server_flows.approval.run("fuzzed")
    retry_until(lambda: client.get(waiting.id).pending_waits, timeout=30, what="the approval wait")
    return {"succeeded": done.id, "failed": failed.id, "waiting": waiting.id}


def _fuzz(operation: Any, url: str, headers: dict[str, str], **fixed: Any) -> None:
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(
        case=operation.as_strategy(**fixed)
        | operation.as_strategy(schemathesis.GenerationMode.NEGATIVE, **fixed)
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=CHECKS)

    run()


def test_every_route_fuzzed_from_the_openapi_document_answers_without_a_server_error(
    procs: Processes, client: tether.Client
) -> None:
    ids = _seeded(client)
    admin = client.create_token("fuzzer", "admin")
    url = procs.server()
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json")
    # JSON on every request: POSTs without a body need it too (anything else is a 415).
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    fuzzed = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        _fuzz(operation, url, headers)
        fuzzed += 1
        if "{execution_id}" not in operation.path:
            continue
        # Random ids only reach the 404 path: the seeded executions reach the rest.
        for status, execution_id in ids.items():
            if operation.path.endswith("/events") and status == "waiting":
                continue  # the stream of a live execution stays open (by design)
            _fuzz(operation, url, headers, path_parameters={"execution_id": execution_id})
    routes = schema.raw_schema["paths"].values()
    assert fuzzed == sum(len(methods) for methods in routes)  # none skipped
