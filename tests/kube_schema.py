"""The Kubernetes API version that tether's Jobs and the manifests in deploy/ are checked
against, offline, with kubernetes-validate (the API's own OpenAPI schemas as JSON Schema).

Strict: a field the API does not define is an error, as `kubectl apply --validate=strict`
makes it, so a misspelt key cannot pass. The version is pinned so that a new
kubernetes-validate release adds schemas without moving what these tests hold to; it is one
that the test extra's lower bound of kubernetes-validate ships.
"""

from __future__ import annotations

from typing import Any

import pytest

KUBERNETES_VERSION = "1.33.0"

NOT_INSTALLED = (
    "kubernetes-validate is not installed: it comes with the test extra (pip install -e "
    "'.[test]'); the floor run of scripts/test leaves it out on purpose"
)


def validate(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError unless `obj` is valid for KUBERNETES_VERSION."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason=NOT_INSTALLED)
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
