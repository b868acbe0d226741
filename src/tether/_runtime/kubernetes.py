"""The launcher's Kubernetes backend: one batch/v1 Job per runner.

The Job is built from the user's Job template by a pure function (`job_manifest`), so what
the launcher would create can be checked without a cluster; the API calls are a thin layer
over the official `kubernetes` client (the `kubernetes` extra, imported only when this
backend is used). The Job's name is the runner's name, so the API server itself refuses a
second Job for the same attempt (409 Conflict): that is the deduplication, for any number
of launchers.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..store import ExecutionRow

log = logging.getLogger("tether.launcher")

#: labels on every Job (and its pods) a launcher creates
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "tether-launcher"
EXECUTION_LABEL = "tether.io/execution"
FLOW_LABEL = "tether.io/flow"
ATTEMPT_LABEL = "tether.io/attempt"
#: annotations with the exact values (a label value is limited to 63 characters of a small
#: alphabet)
EXECUTION_ANNOTATION = "tether.io/execution-id"
FLOW_ANNOTATION = "tether.io/flow-name"
#: an annotation of the template: per-flow changes to the Job (see `job_manifest`)
OVERRIDES_ANNOTATION = "tether.io/flow-overrides"
#: the container that runs the worker, when the template has several
CONTAINER_NAME = "tether"
#: how long a finished Job (and its pod, with its logs) is kept, unless the template says
DEFAULT_TTL_SECONDS = 3600

_CONTAINER_KEYS = ("image", "resources", "env")
_POD_KEYS = ("nodeSelector", "tolerations", "serviceAccountName")
_LABEL_LIMIT = 63


def load_template(path: Path) -> dict[str, Any]:
    """Read a Job template (YAML or JSON) and check it (see `check_template`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the Job template {path}: {exc.strerror or exc}"
        ) from None
    try:
        import yaml
    except ImportError:  # JSON is YAML; without PyYAML only JSON templates are read
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"the Job template {path} is not JSON ({exc.msg}), and PyYAML is not installed "
                "to read YAML: pip install -e '.[kubernetes]' in a clone of tether "
                "(or pip install pyyaml)"
            ) from None
    else:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"the Job template {path} is not YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"the Job template {path} is not a mapping (a batch/v1 Job)")
    check_template(loaded, where=str(path))
    return loaded


def check_template(template: Mapping[str, Any], *, where: str = "the Job template") -> None:
    """Refuse a template a runner Job cannot be made from, saying what to change."""
    if template.get("apiVersion") != "batch/v1" or template.get("kind") != "Job":
        raise ConfigurationError(
            f"{where} must be a Job (apiVersion: batch/v1, kind: Job), not "
            f"{template.get('apiVersion')}/{template.get('kind')}"
        )
    containers = _containers(template, where)
    container = _worker_container(containers, where)
    env = container.get("env") or []
    if not any(isinstance(e, dict) and e.get("name") == "TETHER_DB" for e in env) and not (
        container.get("envFrom")
    ):
        raise ConfigurationError(
            f"{where}: the container {container.get('name')!r} does not set TETHER_DB, so its "
            "runner would not find the store; add it from a Secret (env: - name: TETHER_DB, "
            "valueFrom: secretKeyRef: ...) or with envFrom"
        )
    _overrides(template, where)


def _containers(template: Mapping[str, Any], where: str) -> list[Any]:
    spec = template.get("spec")
    pod = spec.get("template") if isinstance(spec, dict) else None
    pod_spec = pod.get("spec") if isinstance(pod, dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if not isinstance(containers, list) or not containers:
        raise ConfigurationError(f"{where} has no spec.template.spec.containers")
    return containers


def _worker_container(containers: list[Any], where: str) -> dict[str, Any]:
    named = [c for c in containers if isinstance(c, dict) and c.get("name") == CONTAINER_NAME]
    if named:
        return named[0]
    if len(containers) > 1:
        raise ConfigurationError(
            f"{where} has {len(containers)} containers: name the one that runs tether "
            f"{CONTAINER_NAME!r}"
        )
    if not isinstance(containers[0], dict):
        raise ConfigurationError(f"{where}: a container is not a mapping")
    return containers[0]


def _overrides(template: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """The per-flow overrides of the template's annotation: flow name -> changes."""
    metadata = template.get("metadata") or {}
    text = (metadata.get("annotations") or {}).get(OVERRIDES_ANNOTATION)
    if text is None:
        return {}
    try:
        found = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{where}: the {OVERRIDES_ANNOTATION} annotation is not JSON ({exc.msg})"
        ) from None
    if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
        raise ConfigurationError(
            f"{where}: the {OVERRIDES_ANNOTATION} annotation maps flow names to changes, e.g. "
            '\'{"myapp.agents:research": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}\''
        )
    allowed = (*_CONTAINER_KEYS, *_POD_KEYS)
    for flow, changes in found.items():
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise ConfigurationError(
                f"{where}: the override of flow {flow!r} sets {', '.join(unknown)}; an override "
                f"may set {', '.join(allowed)}"
            )
    return found


def label_value(text: str) -> str:
    """`text` as a label value (at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends);
    the exact text goes in an annotation beside it."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in text)
    return cleaned[:_LABEL_LIMIT].strip("_.-")


def job_manifest(
    template: Mapping[str, Any],
    *,
    name: str,
    row: ExecutionRow,
    command: Sequence[str],
    namespace: str | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job of runner `name` for the execution `row`, from the user's template.

    Kept from the template: everything (image, env, secrets, volumes, resources, service
    account...). Set: the Job's name and namespace (`namespace`, else the template's, else
    `default`), the worker container's command (`command`, its `args` removed), labels and
    annotations naming the execution, flow and attempt (on the Job and its pods),
    `restartPolicy: Never` and `backoffLimit: 0` unless the template sets them (a pod that
    dies is replaced by the launcher's next attempt, through the lease, not by the Job), and
    `ttlSecondsAfterFinished` (DEFAULT_TTL_SECONDS) unless set. The template's
    `tether.io/flow-overrides` annotation (JSON: flow name -> changes) changes, for the
    executions of one flow, the worker container's `image`, `resources` or `env` (merged by
    name) and the pod's `nodeSelector`, `tolerations` or `serviceAccountName`.
    """
    check_template(template)
    job = copy.deepcopy(dict(template))
    overrides = _overrides(template, "the Job template").get(row.flow, {})
    metadata = job.setdefault("metadata", {})
    metadata.pop("generateName", None)
    metadata["name"] = name
    metadata["namespace"] = namespace or metadata.get("namespace") or "default"
    annotations = metadata.get("annotations") or {}
    annotations.pop(OVERRIDES_ANNOTATION, None)
    ours_labels = {
        MANAGED_BY: MANAGER,
        EXECUTION_LABEL: label_value(row.id),
        FLOW_LABEL: label_value(row.flow),
        ATTEMPT_LABEL: str(row.attempt + 1),
    }
    ours_annotations = {EXECUTION_ANNOTATION: row.id, FLOW_ANNOTATION: row.flow}
    metadata["labels"] = {**(metadata.get("labels") or {}), **ours_labels}
    metadata["annotations"] = {**annotations, **ours_annotations}
    spec = job["spec"]
    spec.setdefault("ttlSecondsAfterFinished", DEFAULT_TTL_SECONDS)
    spec.setdefault("backoffLimit", 0)
    # The Job's own selector is generated by the API server from its unique uid.
    spec.pop("selector", None)
    pod = spec["template"]
    pod_meta = pod.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **ours_labels}
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **ours_annotations}
    pod_spec = pod["spec"]
    pod_spec.setdefault("restartPolicy", "Never")
    container = _worker_container(pod_spec["containers"], "the Job template")
    container["command"] = list(command)
    container.pop("args", None)
    for key in _CONTAINER_KEYS:
        if key not in overrides:
            continue
        if key == "env":
            changed = {e["name"]: e for e in overrides["env"] if isinstance(e, dict)}
            kept = [e for e in container.get("env") or [] if e.get("name") not in changed]
            container["env"] = kept + list(changed.values())
        else:
            container[key] = copy.deepcopy(overrides[key])
    for key in _POD_KEYS:
        if key in overrides:
            pod_spec[key] = copy.deepcopy(overrides[key])
    return job


class KubernetesBackend:
    """Runners as Kubernetes Jobs, through the official client (`api`: a BatchV1Api; by
    default one configured in-cluster, else from the kubeconfig)."""

    local = False

    def __init__(
        self, template: Mapping[str, Any], *, namespace: str | None = None, api: Any = None
    ) -> None:
        check_template(template)
        self.template = template
        metadata = template.get("metadata") or {}
        self.namespace = namespace or metadata.get("namespace") or "default"
        self._api = api if api is not None else _batch_api()
        self._warned: set[str] = set()

    def alive(self) -> set[str]:
        jobs = self._api.list_namespaced_job(
            self.namespace, label_selector=f"{MANAGED_BY}={MANAGER}"
        )
        names = set()
        for job in jobs.items:
            status = job.status
            ended = status is not None and any(
                c.type in ("Complete", "Failed") and c.status == "True"
                for c in status.conditions or ()
            )
            if not ended:
                names.add(job.metadata.name)
        return names

    def launch(self, name: str, row: ExecutionRow, command: list[str]) -> bool:
        from kubernetes.client.exceptions import ApiException

        body = job_manifest(
            self.template, name=name, row=row, command=command, namespace=self.namespace
        )
        try:
            self._api.create_namespaced_job(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # It exists and has ended (alive() did not list it), yet the execution is still
            # at this attempt: its pod never claimed it (a bad image, a wrong TETHER_DB).
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "Job %s ended without running execution %s; it is created again once "
                    "ttlSecondsAfterFinished removes it (see `kubectl logs job/%s`)",
                    name, row.id, name,
                )  # fmt: skip
            return False
        return True

    def failures(self) -> list[tuple[str, int]]:
        # A failed Job keeps its name until its TTL removes it: that is the pause.
        return []


def _batch_api() -> Any:
    try:
        from kubernetes import client, config
    except ImportError:
        raise ConfigurationError(
            "the Kubernetes backend needs the official client: pip install -e '.[kubernetes]' "
            "in a clone of tether (or pip install kubernetes)"
        ) from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except config.ConfigException as exc:
            raise ConfigurationError(
                f"no Kubernetes cluster configured: not in a pod, and no kubeconfig ({exc})"
            ) from None
    return client.BatchV1Api()
