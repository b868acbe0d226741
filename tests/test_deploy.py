"""The manifests in deploy/: every Kubernetes object valid against the Kubernetes API schema
(kubernetes-validate, strict, the version pinned in tests/kube_schema.py), and what they say
about tether true of tether: the commands parse with the real CLI, the launcher's Role allows
exactly the calls its backend makes, the Job template is one the launcher takes, the server's
probe and the KEDA query match the server's routes and metrics.

Checked offline: there is no Kubernetes cluster (nor KEDA, nor Prometheus) on the machines
that build tether, so nothing here was run on Kubernetes.
"""

from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

import tether
from helpers import run_cli
from kube_schema import validate
from server_procs import Processes, free_port
from test_launcher_kubernetes import TEMPLATE
from tether._runtime.kubernetes import KubernetesBackend, job_manifest, load_template
from tether.cli._app import app
from tether.server import _metrics
from tether.store import ExecutionRow, ExecutionStats

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is not installed (the kubernetes client of the test extra brings it)"
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NAMESPACE = "tether"


def _objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj is not None:
                found.append((path.name, obj))
    return found


OBJECTS = _objects()


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for _, o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _parse(command: list[str]) -> dict[str, Any]:
    """The options of `command` (tether SUBCOMMAND ...) as the real CLI parses and checks
    them (types, ranges, choices), without running it."""
    assert command[0] == "tether", command
    # Typer's Click (vendored from Typer 0.22 on, Click itself before): used through the
    # group's own classes, whichever it is.
    group: Any = typer.main.get_command(app)
    parent = group.context_class(group, info_name="tether")
    sub = group.get_command(parent, command[1])
    assert sub is not None, f"tether has no command {command[1]!r}"
    return dict(sub.make_context(command[1], list(command[2:]), parent=parent).params)


def test_deploy_holds_the_four_shapes() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for _, o in OBJECTS}
    assert {
        ("Deployment", "tether-worker"),
        ("Deployment", "tether-launcher"),
        ("Deployment", "tether-server"),
        ("Service", "tether-server"),
        ("ServiceAccount", "tether-launcher"),
        ("Role", "tether-launcher"),
        ("RoleBinding", "tether-launcher"),
        ("ConfigMap", "tether-job-template"),
        ("ScaledObject", "tether-worker"),
    } <= kinds


@pytest.mark.parametrize(
    ("file", "obj"),
    [(f, o) for f, o in OBJECTS if not o["apiVersion"].startswith("keda.sh/")],
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_every_kubernetes_object_is_valid_against_the_api_schema(
    file: str, obj: dict[str, Any]
) -> None:
    validate(obj)
    if obj["kind"] != "Namespace":
        assert obj["metadata"]["namespace"] == NAMESPACE, file


def test_the_schema_check_can_fail() -> None:
    worker = _one("Deployment", "tether-worker")
    broken = {**worker, "spec": {**worker["spec"], "replica": 2}}
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        validate(broken)


def test_every_deployment_selects_its_own_pods() -> None:
    deployments = [o for _, o in OBJECTS if o["kind"] == "Deployment"]
    assert len(deployments) == 3
    for deployment in deployments:
        wanted = deployment["spec"]["selector"]["matchLabels"].items()
        assert wanted <= deployment["spec"]["template"]["metadata"]["labels"].items()


def _pod_specs() -> list[dict[str, Any]]:
    specs = [o["spec"]["template"]["spec"] for _, o in OBJECTS if o["kind"] == "Deployment"]
    config_map = _one("ConfigMap", "tether-job-template")
    specs.append(yaml.safe_load(config_map["data"]["job.yaml"])["spec"]["template"]["spec"])
    return specs


def test_no_pod_shares_the_nodes_hostname() -> None:
    # The manifests keep each pod apart from its node: its own hostname and pids. (An owner id
    # carries a container's PID namespace too, so even pods on the host network would never
    # read each other's pids; tests/test_processes.py covers that.)
    specs = _pod_specs()
    assert len(specs) == 4
    for spec in specs:
        assert not spec.get("hostNetwork") and not spec.get("hostPID")
        assert "hostname" not in spec


def test_the_worker_command_parses_and_its_pod_outlives_the_grace() -> None:
    worker = _one("Deployment", "tether-worker")
    container = _container(worker)
    params = _parse(container["command"])
    assert params["imports"], "a worker runs the flows it imports"
    assert params["execution"] is None and not params["exit_when_idle"]
    # SIGTERM, then up to --grace for executions to hand back, then the process exits: the
    # kubelet's SIGKILL must come after that.
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > params["grace"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    _assert_db_from_secret(container)
    lease = {e["name"]: e.get("value") for e in container["env"]}.get("TETHER_LEASE_SECONDS")
    assert lease is None or float(lease) > 0


def _assert_db_from_secret(container: dict[str, Any]) -> None:
    (db,) = [e for e in container["env"] if e["name"] == "TETHER_DB"]
    assert db["valueFrom"]["secretKeyRef"] == {"name": "tether-db", "key": "url"}


def test_the_launcher_command_parses_and_mounts_its_job_template(tmp_path: Path) -> None:
    launcher = _one("Deployment", "tether-launcher")
    container = _container(launcher)
    params = _parse(container["command"])
    assert params["backend"].value == "kubernetes"
    assert params["namespace"] == NAMESPACE
    _assert_db_from_secret(container)
    assert launcher["spec"]["replicas"] == 1
    # --template is the ConfigMap's job.yaml, mounted where the command says.
    template_path = params["template"]
    (mount,) = container["volumeMounts"]
    assert str(template_path.parent) == mount["mountPath"]
    (volume,) = launcher["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"]
    config_map = _one("ConfigMap", volume["configMap"]["name"])
    assert template_path.name in config_map["data"]
    # The launcher takes the template, and the Jobs it makes from it are valid.
    path = tmp_path / template_path.name
    path.write_text(config_map["data"][template_path.name])
    template = load_template(path)
    for flow in ("myapp.agents:research", "myapp.agents:vision"):
        row = ExecutionRow("0193a1b2c3d-4f5e6a7b8c9d", flow, flow, None, "[]", "queued")
        command = ["tether", "worker", "--execution", row.id, "--exit-when-idle"]
        job = job_manifest(template, name="tether-x-1", row=row, command=command,
                           namespace=params["namespace"])  # fmt: skip
        validate(job)
        runner = job["spec"]["template"]["spec"]
        _assert_db_from_secret(runner["containers"][0])
        assert runner.get("automountServiceAccountToken") is False


def test_the_launchers_role_allows_exactly_the_calls_its_backend_makes(tmp_path: Path) -> None:
    from test_launcher_kubernetes_client import ApiServer, batch_api

    launcher = _one("Deployment", "tether-launcher")
    account = launcher["spec"]["template"]["spec"]["serviceAccountName"]
    binding = _one("RoleBinding", "tether-launcher")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    role = _one(binding["roleRef"]["kind"], binding["roleRef"]["name"])
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["batch"] and rule["resources"] == ["jobs"]

    # Everything the backend does (count the live Jobs, create one, meet one that exists),
    # through the official client, against the stand-in API server: the verbs of the
    # requests it received are the Role's.
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    server = ApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = KubernetesBackend(load_template(path), api=batch_api(server))
        backend.alive()
        row = ExecutionRow("0193a1b2c3d-4f5e6a7b8c9d", "f:g", "f:g", None, "[]", "queued")
        assert backend.launch("tether-x-1", row, ["tether"])
        assert not backend.launch("tether-x-1", row, ["tether"])
        backend.failures()
    finally:
        server.shutdown()
        server.server_close()
    verbs = {"POST": "create", "GET": "list"}
    assert sorted({verbs[method] for method, *_ in server.requests}) == sorted(rule["verbs"])


def test_the_server_listens_beyond_loopback_and_its_probe_needs_no_token(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    server = _one("Deployment", "tether-server")
    container = _container(server)
    params = _parse(container["command"])
    assert params["host"] == "0.0.0.0"
    _assert_db_from_secret(container)
    # What the manifest's header says: off loopback, no token, no server.
    refused = run_cli(db_url, "server", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2, refused.stderr
    assert "tether tokens create" in refused.stderr
    # With a token, /healthz (the readiness probe) answers without one; /metrics wants it.
    token = client.create_token("prometheus", "read")
    procs = Processes(db_url, tmp_path, "server_flows")
    try:
        url = procs.server()
        probe = container["readinessProbe"]["httpGet"]
        assert httpx.get(url + probe["path"], timeout=10).status_code == 200
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        shown = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert shown.status_code == 200 and "tether_executions" in shown.text
    finally:
        procs.kill_all()
    service = _one("Service", "tether-server")
    assert (
        service["spec"]["selector"].items()
        <= server["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    (exposed,) = container["ports"]
    assert port["targetPort"] == exposed["name"] and exposed["containerPort"] == params["port"]


# KEDA's ScaledObject is a custom resource: kubernetes-validate holds only the Kubernetes
# API's own schemas, so its structure is checked here against the fields KEDA documents for
# keda.sh/v1alpha1 ScaledObject (https://keda.sh/docs/latest/reference/scaledobject-spec/).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
    "triggers",
}  # fmt: skip
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
TRIGGER = {"type", "metadata", "name", "authenticationRef", "metricType", "useCachedMetrics"}
# The prometheus scaler's metadata (https://keda.sh/docs/latest/scalers/prometheus/).
PROMETHEUS = {
    "serverAddress", "query", "threshold", "activationThreshold", "namespace",
    "customHeaders", "ignoreNullValues", "queryParameters", "unsafeSsl", "timeout",
}  # fmt: skip


def test_the_keda_scaled_object_scales_the_workers_on_the_servers_metric() -> None:
    scaled = _one("ScaledObject", "tether-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["namespace"] == NAMESPACE
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
    target = spec["scaleTargetRef"]
    worker = _one(target.get("kind", "Deployment"), target["name"])
    assert target.get("apiVersion", "apps/v1") == worker["apiVersion"]
    # One worker always: scheduled flows' ticks are fired by workers only.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec[key], int) and spec[key] >= 0
    (trigger,) = spec["triggers"]
    assert set(trigger) <= TRIGGER and trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert set(metadata) <= PROMETHEUS
    assert {"serverAddress", "query", "threshold"} <= set(metadata)
    # KEDA takes metadata values as strings.
    assert all(isinstance(v, str) for v in metadata.values())
    assert float(metadata["threshold"]) > 0
    # The query names a metric and labels that `tether server` publishes at /metrics.
    stats = ExecutionStats({("queued", "default"): 3, ("running", "default"): 2}, None, 0)
    published = _metrics.render(stats)
    assert 'tether_executions{status="queued",queue="default"} 3' in published
    assert 'tether_executions{status="running",queue="default"} 2' in published
    assert 'tether_executions{status=~"queued|running"}' in metadata["query"]
    # The threshold is the work per worker: its --concurrency.
    params = _parse(_container(worker)["command"])
    assert float(metadata["threshold"]) == params["concurrency"]


@pytest.mark.parametrize(
    "command", ["tether worker --grace -1", "tether launcher --backend kube", "tether worker --x"]
)
def test_the_command_check_refuses_what_the_cli_refuses(command: str) -> None:
    # Click's class depends on Typer's version (vendored or not): a usage error exits 2.
    with pytest.raises(Exception) as refused:
        _parse(shlex.split(command))
    assert getattr(refused.value, "exit_code", None) == 2, refused.value
