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
    """``<owner>-<suffix>`` within the DNS label limit; a hash keeps long names distinct.

    Too long, it becomes ``<owner head>-<hash>-<suffix>``: the head is at least one character
    (so the name starts as the owner's does: a Deployment's per-version Services stay DNS-1035
    labels), and a suffix too long to leave room for it keeps its end.
    """
    name = f"{owner}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    room = limit - len(digest) - 2  # for the owner's head and the suffix's tail
    head = max(room - len(suffix), min(len(owner), room // 2))
    tail = suffix[len(suffix) - (room - head) :]
    return f"{owner[:head]}-{digest}-{tail}"


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
    """Requests and limits that are never empty (a pod without them is a bad neighbour), and
    no request above its limit (the API server refuses the object).

    As Kubernetes does, a resource given a limit and no request is requested at its limit;
    cpu and memory are otherwise requested at the defaults; memory is always limited, at its
    request unless a limit is given. A request given above its limit is the user's, and is
    refused at admission (``ResourceRequirements``), not silently lowered here.
    """
    given_requests = resources.get("requests", {})
    given_limits = resources.get("limits", {})
    requests = {"cpu": cpu, "memory": memory, **given_limits, **given_requests}
    limits = {"memory": requests["memory"], **given_limits}
    return {"requests": requests, "limits": limits}
