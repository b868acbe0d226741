"""The Kubernetes backend through the official client (the `kubernetes` extra), where it is
installed: its Jobs validated against the Kubernetes API schema (`kubernetes-validate`), and
its create and list calls sent through the client's own request layer to a local stand-in
for the API server, which answers as one does (201, 409 Conflict, a JobList).

There is no Kubernetes cluster on the machines that build tether, so nothing here is a test
on Kubernetes: what a real API server and kubelet do with these Jobs is not exercised.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

import launcher_flows
import tether
from test_launcher_kubernetes import TEMPLATE
from tether._runtime.kubernetes import KubernetesBackend, job_manifest, load_template
from tether._runtime.launcher import Launcher, runner_command, runner_name
from tether.store import ExecutionRow

kubernetes = pytest.importorskip("kubernetes")


class ApiServer(ThreadingHTTPServer):
    """Answers the batch/v1 Job calls the backend makes, keeping the Jobs it was sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def finish_job(self, name: str, condition: str = "Complete") -> None:
        self.jobs[name]["status"] = {"conditions": [{"type": condition, "status": "True"}]}


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path))
        job = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = job["metadata"]["name"]
        if name in self.server.jobs:
            self._answer(409, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "AlreadyExists", "code": 409})  # fmt: skip
            return
        job["status"] = {}
        self.server.jobs[name] = job
        self._answer(201, job)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        selector = parse_qs(urlparse(self.path).query).get("labelSelector", [""])[0]
        key, _, value = selector.partition("=")
        items = [j for j in self.server.jobs.values() if j["metadata"]["labels"].get(key) == value]
        self._answer(200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {},
                           "items": items})  # fmt: skip


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def template(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    return load_template(path)


def batch_api(server: ApiServer) -> Any:
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{server.port}")
    return kubernetes.client.BatchV1Api(kubernetes.client.ApiClient(configuration))


def test_jobs_are_valid_against_the_kubernetes_api_schema(template: dict[str, Any]) -> None:
    validate = pytest.importorskip("kubernetes_validate")
    for flow in ("myapp.agents:research", "myapp.agents:gpu_agent"):
        r = ExecutionRow("0193a1b2c3d-4f5e6a7b8c9d", flow, flow, None, "[]", "queued")
        command = runner_command(r.id, program=["tether"], imports=["myapp.agents"], script=None)
        job = job_manifest(template, name=runner_name(r.id, 1), row=r, command=command)
        validate.validate(job, validate.utils.latest_version(), strict=True)


def test_the_launcher_creates_one_job_per_runnable_execution_through_the_client(
    db_url: str, template: dict[str, Any], api_server: ApiServer
) -> None:
    tether.configure(executor=False)
    handles = [launcher_flows.gated.enqueue(1) for _ in range(3)]
    backend = KubernetesBackend(template, api=batch_api(api_server))
    launcher = Launcher(backend, db_url, max_running=2, imports=["launcher_flows"])
    first = launcher.run_once()
    assert first == [runner_name(h.id, 1) for h in handles[:2]]
    assert set(api_server.jobs) == set(first)
    job = api_server.jobs[first[0]]
    assert job["metadata"]["namespace"] == "agents"
    assert ("POST", "/apis/batch/v1/namespaces/agents/jobs") in api_server.requests
    # Two Jobs alive: nothing more, however often it looks (a restarted launcher too).
    assert launcher.run_once() == []
    again = Launcher(backend, db_url, max_running=3, imports=["launcher_flows"])
    assert again.run_once() == [runner_name(handles[2].id, 1)]
    # A Job that ended frees its slot; its name is not created twice (409 from the server).
    api_server.finish_job(first[0], "Failed")
    assert backend.alive() == {*first[1:], runner_name(handles[2].id, 1)}
    assert again.run_once() == []
    assert len(api_server.jobs) == 3
