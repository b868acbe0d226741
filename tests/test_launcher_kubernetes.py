"""The Kubernetes backend's Jobs, built offline from a Job template (there is no cluster
here: the API calls are a thin layer over the official client, not exercised by these tests),
and the runner names every backend uses."""

from __future__ import annotations

import importlib.util
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from helpers import run_cli
from tether._runtime.kubernetes import (
    DEFAULT_TTL_SECONDS,
    check_template,
    job_manifest,
    label_value,
    load_template,
)
from tether._runtime.launcher import runner_command, runner_name
from tether.errors import ConfigurationError
from tether.store import ExecutionRow

DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")

TEMPLATE = textwrap.dedent(
    """\
    apiVersion: batch/v1
    kind: Job
    metadata:
      generateName: agents-
      namespace: agents
      labels: {team: research}
      annotations:
        tether.io/flow-overrides: >-
          {"myapp.agents:gpu_agent": {"resources": {"limits": {"nvidia.com/gpu": 1}},
           "env": [{"name": "MODEL", "value": "big"}], "nodeSelector": {"gpu": "yes"}}}
    spec:
      ttlSecondsAfterFinished: 600
      template:
        metadata:
          labels: {app: agents}
        spec:
          serviceAccountName: agents
          imagePullSecrets: [{name: registry}]
          volumes: [{name: cache, emptyDir: {}}]
          containers:
            - name: sidecar
              image: proxy:1
            - name: tether
              image: registry.example/agents:1.2
              args: ["--old"]
              env:
                - name: TETHER_DB
                  valueFrom: {secretKeyRef: {name: tether-db, key: url}}
                - name: MODEL
                  value: small
              resources:
                requests: {cpu: 500m, memory: 1Gi}
              volumeMounts: [{name: cache, mountPath: /cache}]
    """
)


def row(execution_id: str = "0193a1b2c3d-4f5e6a7b8c9d", flow: str = "myapp.agents:research",
        attempt: int = 0) -> ExecutionRow:  # fmt: skip
    return ExecutionRow(execution_id, flow, flow, None, "[]", "queued", attempt=attempt)


@pytest.fixture
def template(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    return load_template(path)


def build(template: dict[str, Any], r: ExecutionRow, **kw: Any) -> dict[str, Any]:
    command = runner_command(r.id, program=["tether"], imports=["myapp.agents"], script=None)
    return job_manifest(template, name=runner_name(r.id, r.attempt + 1), row=r, command=command,
                        **kw)  # fmt: skip


def worker(job: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "tether"]
    return found


def test_a_job_keeps_the_template_and_runs_the_worker_for_its_execution(
    template: dict[str, Any],
) -> None:
    r = row(attempt=2)
    job = build(template, r)
    assert job["metadata"]["name"] == f"tether-{r.id}-3"
    assert "generateName" not in job["metadata"]
    assert job["metadata"]["namespace"] == "agents"
    container = worker(job)
    assert container["command"] == [
        "tether", "worker", "--execution", r.id, "--exit-when-idle", "--import", "myapp.agents",
    ]  # fmt: skip
    assert "args" not in container
    # What the user set is kept: image, secrets, resources, volumes, the other container.
    assert container["image"] == "registry.example/agents:1.2"
    assert container["env"][0]["valueFrom"] == {"secretKeyRef": {"name": "tether-db", "key": "url"}}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}
    assert container["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["serviceAccountName"] == "agents"
    assert [c["name"] for c in pod["containers"]] == ["sidecar", "tether"]
    assert pod["containers"][0] == {"name": "sidecar", "image": "proxy:1"}
    # A pod that dies is replaced by the launcher's next attempt, not by the Job.
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 600  # the template's
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "tether-launcher"
        assert meta["labels"]["tether.io/execution"] == r.id
        assert meta["labels"]["tether.io/flow"] == "myapp.agents_research"
        assert meta["labels"]["tether.io/attempt"] == "3"
        assert meta["annotations"]["tether.io/execution-id"] == r.id
        assert meta["annotations"]["tether.io/flow-name"] == "myapp.agents:research"
        assert all(LABEL_VALUE.match(v) for v in meta["labels"].values())
    assert job["metadata"]["labels"]["team"] == "research"
    assert job["spec"]["template"]["metadata"]["labels"]["app"] == "agents"
    # Launcher configuration is not copied into every Job.
    assert "tether.io/flow-overrides" not in job["metadata"]["annotations"]
    assert json.loads(json.dumps(job)) == job  # plain data, as the API takes it


def test_a_job_does_not_change_its_template(template: dict[str, Any]) -> None:
    before = json.dumps(template, sort_keys=True)
    build(template, row())
    build(template, row(flow="myapp.agents:gpu_agent"))
    assert json.dumps(template, sort_keys=True) == before


def test_defaults_fill_in_only_what_the_template_leaves_out(template: dict[str, Any]) -> None:
    del template["spec"]["ttlSecondsAfterFinished"]
    template["spec"]["backoffLimit"] = 2
    template["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    job = build(template, row(), namespace="elsewhere")
    assert job["spec"]["ttlSecondsAfterFinished"] == DEFAULT_TTL_SECONDS
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["metadata"]["namespace"] == "elsewhere"


def test_a_flow_override_changes_only_that_flows_jobs(template: dict[str, Any]) -> None:
    gpu = build(template, row(flow="myapp.agents:gpu_agent"))
    plain = build(template, row())
    container = worker(gpu)
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert [e["name"] for e in container["env"]] == ["TETHER_DB", "MODEL"]
    assert container["env"][1] == {"name": "MODEL", "value": "big"}  # replaced by name
    assert gpu["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "yes"}
    assert worker(plain)["env"][1] == {"name": "MODEL", "value": "small"}
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]


def test_a_single_unnamed_container_runs_the_worker(template: dict[str, Any]) -> None:
    pod = template["spec"]["template"]["spec"]
    pod["containers"] = [dict(pod["containers"][1], name="app")]
    job = build(template, row())
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][1:3] == [
        "worker",
        "--execution",
    ]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: t.update(kind="Pod"), "must be a Job"),
        (lambda t: t["spec"]["template"]["spec"].update(containers=[]), "no spec.template"),
        (
            lambda t: t["spec"]["template"]["spec"]["containers"][1].update(name="app"),
            "name the one that runs tether 'tether'",
        ),
        (
            lambda t: t["spec"]["template"]["spec"]["containers"][1]["env"].pop(0),
            "does not set TETHER_DB",
        ),
        (
            lambda t: t["metadata"]["annotations"].update({"tether.io/flow-overrides": "{"}),
            "is not JSON",
        ),
        (
            lambda t: t["metadata"]["annotations"].update(
                {"tether.io/flow-overrides": '{"f": {"command": ["sh"]}}'}
            ),
            "sets command; an override may set image, resources, env",
        ),
    ],
)
def test_a_template_a_job_cannot_be_made_from_is_refused_saying_what_to_change(
    template: dict[str, Any], change: Any, words: str
) -> None:
    change(template)
    with pytest.raises(ConfigurationError, match=re.escape(words)):
        check_template(template)


def test_a_template_file_that_is_not_a_job_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ConfigurationError, match="is not a mapping"):
        load_template(path)
    path.write_text("kind: [\n")
    with pytest.raises(ConfigurationError, match="is not YAML"):
        load_template(path)
    with pytest.raises(ConfigurationError, match="cannot read the Job template"):
        load_template(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "execution_id",
    [
        "0193a1b2c3d-4f5e6a7b8c9d",  # tether's own ids, and its children's
        "0193a1b2c3d-0123456789abcdef",
        "Order_42/retry#1",  # an id from elsewhere: upper case, other characters
        "x" * 200,
        "---",
    ],
)
def test_runner_names_are_dns_labels_that_name_the_attempt(execution_id: str) -> None:
    name = runner_name(execution_id, 7)
    assert DNS_LABEL.match(name), name
    assert name.startswith("tether-") and name.endswith("-7")
    assert runner_name(execution_id, 8) != name
    assert LABEL_VALUE.match(label_value(execution_id))


def test_ids_that_clean_up_alike_get_different_runner_names() -> None:
    names = {runner_name(i, 1) for i in ("Ab-1", "ab-1", "ab_1", "ab.1", "x" * 100, "x" * 101)}
    assert len(names) == 6


def test_the_cli_needs_a_template_for_kubernetes_and_only_there(db_url: str) -> None:
    done = run_cli(db_url, "launcher", "--backend", "kubernetes", COLUMNS="300")
    assert done.returncode == 2 and "needs --template" in done.stderr
    done = run_cli(db_url, "launcher", "--template", "job.yaml", COLUMNS="300")
    assert done.returncode == 2 and "--backend kubernetes" in done.stderr


def test_the_kubernetes_launcher_refuses_a_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    done = run_cli(url, "launcher", "--backend", "kubernetes", "--template", str(path),
                   COLUMNS="300")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "needs a PostgreSQL store" in done.stderr and "--backend process" in done.stderr
    # The process backend takes it: its runners share this machine's file.
    done = run_cli(url, "launcher", "--backend", "process", COLUMNS="300")
    assert done.returncode == 2 and "no tether database" in done.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("kubernetes") is not None, reason="the kubernetes client is here"
)
def test_the_kubernetes_backend_without_its_client_says_how_to_install_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    # A PostgreSQL URL (a Kubernetes launcher refuses SQLite): the client is looked for
    # before the store is connected to.
    url = "postgresql://tether@127.0.0.1:1/tether"
    done = run_cli(url, "launcher", "--backend", "kubernetes", "--template", str(path))
    assert done.returncode == 2, done.stderr
    assert "pip install -e '.[kubernetes]'" in done.stderr
