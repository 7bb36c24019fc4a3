"""What every object the operator builds shares: labels, names, restricted pod settings."""

from __future__ import annotations

import hashlib
from typing import Any

from modelops import __version__
from modelops.settings import Settings

MANAGED_BY = "modelops-operator"
MODEL_LABEL = "modelops.dev/model"
RUN_UID_LABEL = "modelops.dev/training-run-uid"
TMP_VOLUME = "tmp"


def child_name(owner: str, suffix: str, limit: int = 63) -> str:
    """``<owner>-<suffix>`` within the DNS label limit; a hash keeps long names distinct."""
    name = f"{owner}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{owner[: limit - len(suffix) - 10]}-{digest}-{suffix}"


def labels(component: str, instance: str, model: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"modelops-{component}",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "modelops",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": __version__,
        MODEL_LABEL: model,
    }


def pod_security_context() -> dict[str, Any]:
    """The pod half of the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The container half of the restricted Pod Security Standard, plus a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def store_env(settings: Settings) -> list[dict[str, Any]]:
    """Object-store endpoint, and credentials by reference: secrets never appear in specs."""
    secret = settings.credentials_secret
    return [
        {"name": "MODELOPS_S3_ENDPOINT", "value": settings.s3_endpoint},
        {"name": "MODELOPS_S3_SECURE", "value": str(settings.s3_secure).lower()},
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_ACCESS_KEY_ID"}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}},
        },
    ]


def with_defaults(resources: dict[str, dict[str, str]], cpu: str, memory: str) -> dict[str, Any]:
    """Requests and limits that are never empty: a pod without them is a bad neighbour."""
    requests = {"cpu": cpu, "memory": memory, **resources.get("requests", {})}
    limits = {"memory": requests["memory"], **resources.get("limits", {})}
    return {"requests": requests, "limits": limits}
