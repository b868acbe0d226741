"""The Kubernetes backend through the official client (the `kubernetes` extra, in the test
extra): its Jobs validated against the Kubernetes API schema (kubernetes-validate, strict, a
pinned API version: tests/kube_schema.py), and its create and list calls sent by the client's
own request layer, over HTTP, to a local stand-in for the API server's Job endpoints.

The stand-in is a server, not a mock of the client: the client builds the URLs, headers and
JSON bodies and decodes the answers as it would with a cluster. It answers as the API server
documents (201 with the fields the server adds, 409 AlreadyExists, 400 for a namespace that
is not the URL's, 422 Invalid for a Job the schema refuses, a JobList filtered by namespace
and label selector). The backend makes no delete call: finished Jobs go through their
ttlSecondsAfterFinished, which the API server's TTL controller applies.

There is no Kubernetes cluster on the machines that build tether, so nothing here is a test
on Kubernetes: what a real API server, scheduler and kubelet do with these Jobs is not
exercised.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pydantic
import pytest

import launcher_flows
import tether
from kube_schema import KUBERNETES_VERSION, validate
from test_launcher_kubernetes import TEMPLATE
from tether._runtime.kubernetes import (
    EXECUTION_ANNOTATION,
    MANAGED_BY,
    MANAGER,
    KubernetesBackend,
    job_manifest,
    load_template,
)
from tether._runtime.launcher import Launcher, runner_command, runner_name
from tether.store import ExecutionRow

kubernetes = pytest.importorskip(
    "kubernetes",
    reason="the kubernetes client is not installed: it comes with the test extra (pip install "
    "-e '.[test]'); the floor run of scripts/test leaves it out on purpose",
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (the test extra has it)"
)

JOBS = "/apis/batch/v1/namespaces/{}/jobs"


class ApiServer(ThreadingHTTPServer):
    """The batch/v1 Job endpoints of an API server, keeping the Jobs it accepted."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        # (namespace, name) -> the Job as stored
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        # method, path, Accept, User-Agent of each request
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def names(self, namespace: str = "agents") -> set[str]:
        return {name for ns, name in self.jobs if ns == namespace}

    def finish_job(self, name: str, condition: str = "Complete", namespace: str = "agents") -> None:
        self.jobs[namespace, name]["status"] = {
            "conditions": [{"type": condition, "status": "True", "reason": "Test"}]
        }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


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

    def _namespace(self) -> str | None:
        parts = urlparse(self.path).path.split("/")
        # /apis/batch/v1/namespaces/NS/jobs
        if len(parts) == 7 and parts[1:5] == ["apis", "batch", "v1", "namespaces"]:
            return parts[5] if parts[6] == "jobs" else None
        return None

    def _record(self) -> None:
        self.server.requests.append((self.command, self.path,
                                     self.headers.get("Accept"),
                                     self.headers.get("User-Agent")))  # fmt: skip

    def do_POST(self) -> None:
        self._record()
        namespace = self._namespace()
        if namespace is None:
            self._answer(404, _status(404, "NotFound", "the server could not find the resource"))
            return
        job = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        metadata = job.get("metadata") or {}
        name = metadata.get("name")
        if metadata.get("namespace", namespace) != namespace:
            message = "the namespace of the provided object does not match the request's"
            self._answer(400, _status(400, "BadRequest", message))
            return
        try:
            validate(job)
        except kubernetes_validate.ValidationError as exc:
            self._answer(422, _status(422, "Invalid", f"Job.batch {name!r} is invalid: {exc}"))
            return
        with self.server.lock:
            if (namespace, name) in self.server.jobs:
                message = f'jobs.batch "{name}" already exists'
                self._answer(409, _status(409, "AlreadyExists", message))
                return
            uid = str(uuid.uuid4())
            metadata.update(namespace=namespace, uid=uid, resourceVersion="1",
                            creationTimestamp="2026-01-01T00:00:00Z")  # fmt: skip
            job["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            job["status"] = {}
            self.server.jobs[namespace, name] = job
        self._answer(201, job)

    def do_GET(self) -> None:
        self._record()
        namespace = self._namespace()
        if namespace is None:
            self._answer(404, _status(404, "NotFound", "the server could not find the resource"))
            return
        selector = parse_qs(urlparse(self.path).query).get("labelSelector", [""])[0]
        wanted = [term.partition("=") for term in selector.split(",") if term]
        with self.server.lock:
            items = [
                job
                for (ns, _), job in self.server.jobs.items()
                if ns == namespace
                and all(job["metadata"].get("labels", {}).get(k) == v for k, _, v in wanted)
            ]
        self._answer(200, {"kind": "JobList", "apiVersion": "batch/v1",
                           "metadata": {"resourceVersion": "1"}, "items": items})  # fmt: skip


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


# Executions of several shapes: a flow with per-flow overrides, a long id, a flow name with
# characters a label value cannot hold, a later attempt.
EXECUTIONS = [
    ("0193a1b2c3d-4f5e6a7b8c9d", "myapp.agents:research", 0),
    ("0193a1b2c3d-4f5e6a7b8c9e", "myapp.agents:gpu_agent", 0),
    ("0193a1b2c3d-4f5e6a7b8c9f" + "x" * 80, "myapp.agents:research", 3),
    ("Run/2026 #7", "my app.agents:Ünïcode flow", 41),
]


def test_jobs_for_a_set_of_executions_are_valid_against_the_kubernetes_api_schema(
    template: dict[str, Any],
) -> None:
    for execution_id, flow, attempt in EXECUTIONS:
        row = ExecutionRow(execution_id, flow, flow, None, "[]", "queued", attempt=attempt)
        command = runner_command(row.id, program=["tether"], imports=["myapp.agents"], script=None)
        job = job_manifest(
            template, name=runner_name(row.id, attempt + 1), row=row, command=command
        )
        validate(job)


def test_the_schema_check_refuses_what_the_api_does_not_define(template: dict[str, Any]) -> None:
    row = ExecutionRow(*EXECUTIONS[0][:2], EXECUTIONS[0][1], None, "[]", "queued")
    job = job_manifest(template, name="tether-x-1", row=row, command=["tether"])
    job["spec"]["template"]["spec"]["containers"][1]["resource"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        validate(job)
    assert KUBERNETES_VERSION.startswith("1.")


def test_the_launcher_creates_one_job_per_runnable_execution_through_the_client(
    db_url: str, template: dict[str, Any], api_server: ApiServer
) -> None:
    tether.configure(executor=False)
    handles = [launcher_flows.gated.enqueue(1) for _ in range(3)]
    backend = KubernetesBackend(template, api=batch_api(api_server))
    launcher = Launcher(backend, db_url, max_running=2, imports=["launcher_flows"])
    first = launcher.run_once()
    assert first == [runner_name(h.id, 1) for h in handles[:2]]
    assert api_server.names() == set(first)
    # What the client sent: a POST to the namespace's Jobs by the official client, asking for
    # JSON; the server accepted each only as a valid Job (422 otherwise). The client sends no
    # Content-Type here; the API server then reads the body as JSON, its first serializer.
    posts = [r for r in api_server.requests if r[0] == "POST"]
    assert len(posts) == 2
    for _, path, accept, agent in posts:
        assert path == JOBS.format("agents")
        assert accept is not None and "application/json" in accept
        assert agent is not None and agent.startswith("OpenAPI-Generator/")
    job = api_server.jobs["agents", first[0]]
    assert job["metadata"]["annotations"][EXECUTION_ANNOTATION] == handles[0].id
    lists = [r for r in api_server.requests if r[0] == "GET"]
    assert lists and all(
        urlparse(path).path == JOBS.format("agents")
        and parse_qs(urlparse(path).query)["labelSelector"] == [f"{MANAGED_BY}={MANAGER}"]
        for _, path, _, _ in lists
    )
    # Two Jobs alive: nothing more, however often it looks (a restarted launcher too).
    assert launcher.run_once() == []
    again = Launcher(backend, db_url, max_running=3, imports=["launcher_flows"])
    assert again.run_once() == [runner_name(handles[2].id, 1)]
    # A Job that ended frees its slot; its name is not created twice (409 from the server).
    api_server.finish_job(first[0], "Failed")
    assert backend.alive() == {*first[1:], runner_name(handles[2].id, 1)}
    assert again.run_once() == []
    assert len(api_server.jobs) == 3
    conflicts = [r for r in api_server.requests if r[0] == "POST"]
    assert len(conflicts) == 4  # the fourth was answered 409 and created nothing


def test_jobs_of_another_namespace_or_manager_are_not_counted(
    db_url: str, template: dict[str, Any], api_server: ApiServer
) -> None:
    tether.configure(executor=False)
    handle = launcher_flows.gated.enqueue(1)
    other = json.loads(json.dumps(template))
    other["metadata"]["namespace"] = "elsewhere"
    row = ExecutionRow("someone-else", "x:y", "x:y", None, "[]", "queued")
    api = batch_api(api_server)
    api.create_namespaced_job(
        "elsewhere", job_manifest(other, name="tether-other-1", row=row, command=["tether"])
    )
    mine = job_manifest(template, name="not-ours", row=row, command=["tether"])
    mine["metadata"]["labels"][MANAGED_BY] = "someone-else"
    api.create_namespaced_job("agents", mine)
    backend = KubernetesBackend(template, api=api)
    assert backend.alive() == set()
    assert Launcher(backend, db_url, max_running=1).run_once() == [runner_name(handle.id, 1)]


def test_a_job_the_kubernetes_api_does_not_define_is_an_error_not_a_launch(
    db_url: str, tmp_path: Path, api_server: ApiServer
) -> None:
    # A template the launcher's own checks let through (they check what tether needs), with a
    # field the Kubernetes API does not define. Clients from 33 on check the body against
    # their model of a Job and refuse it before sending (pydantic's ValidationError); older
    # ones send it and the API server answers 422 Invalid (ApiException). Either reaches the
    # launcher, whose run() logs it and looks again; nothing is created.
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE.replace("ttlSecondsAfterFinished: 600", "ttlSecondsAfterFinish: 600"))
    tether.configure(executor=False)
    launcher_flows.gated.enqueue(1)
    backend = KubernetesBackend(load_template(path), api=batch_api(api_server))
    launcher = Launcher(backend, db_url, max_running=2)
    refusals = (pydantic.ValidationError, kubernetes.client.exceptions.ApiException)
    with pytest.raises(refusals, match="ttlSecondsAfterFinish"):
        launcher.run_once()
    assert api_server.jobs == {}
