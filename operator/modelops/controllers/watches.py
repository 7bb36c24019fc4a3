"""What the object loops read from memory instead of the API, and who wakes whom.

Kopf keeps these indexes (https://docs.kopf.dev/en/stable/indexing/) from the watch streams it
already holds, so a Deployment's pass reads its model's ModelVersions, its guards and its
serving Deployments without a request. Each index value is a small copy of the object, made
when its watch event arrives.

Wake-ups (:mod:`modelops.controllers.loop`), each only when what the reader uses changed. The
handlers, and the indexing functions, are coroutines: Kopf runs plain functions in a thread
(a hop per watch event), and an :class:`asyncio.Event` set from another thread does not wake
its waiter.

=============================  ===============================================================
watch event of                 wakes
=============================  ===============================================================
a Deployment (spec, metadata)  its own loop (generation, annotations or deletion changed;
                               never its own status writes)
a ModelVersion                 the Deployments serving its model (phase, spec or deletion)
a DriftMonitor                 its own loop (generation); the Deployments it guards (its
                               conditions or version changed)
a serving apps/v1 Deployment   the Deployment owning it (replicas or readiness changed)
=============================  ===============================================================
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import kopf

from modelops import GROUP, VERSION
from modelops.controllers.loop import Signatures, wakeups
from modelops.resources.serving import DEPLOYMENT_LABEL

Key = tuple[str, str]
"""(namespace, name-or-model)."""

_signatures = Signatures()
TARGET_FIELDS = ("phase", "canaryWeight", "canaryVersion", "stableVersion")


def deployment_key(namespace: str, name: str) -> tuple[str, str, str]:
    return ("Deployment", namespace, name)


def monitor_key(namespace: str, name: str) -> tuple[str, str, str]:
    return ("DriftMonitor", namespace, name)


def _snapshot(
    body: Mapping[str, Any], status_fields: Iterable[str] | None = None
) -> dict[str, Any]:
    """name, generation, spec and status (all of it, or only ``status_fields``), copied."""
    status = dict(body.get("status") or {})
    if status_fields is not None:
        status = {k: status[k] for k in status_fields if k in status}
    return {
        "metadata": {
            "name": body["metadata"]["name"],
            "generation": body["metadata"].get("generation"),
        },
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": copy.deepcopy(status),
    }


# -- indexes (injected into handlers as kwargs of these names) -----------------------------------


@kopf.index(GROUP, VERSION, "modelversions")
async def versions_by_model(
    namespace: str | None, body: kopf.Body, spec: kopf.Spec, **_: Any
) -> dict[Key, dict[str, Any]]:
    """ModelVersions by (namespace, spec.model): name, spec and ``status.phase``."""
    return {(str(namespace), str(spec.get("model"))): _snapshot(body, ("phase",))}


@kopf.index(GROUP, VERSION, "modelversions")
async def versions_by_name(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    """ModelVersions by (namespace, name): name, spec and status."""
    return {(str(namespace), name): _snapshot(body)}


@kopf.index(GROUP, VERSION, "deployments")
async def deployment_statuses(
    namespace: str | None, name: str, status: kopf.Status, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Deployments' status by (namespace, name) ({} before their first): only what a
    DriftMonitor reads to find its target (phase, weight, canary and stable versions)."""
    return {(str(namespace), name): {k: status[k] for k in TARGET_FIELDS if k in status}}


@kopf.index(GROUP, VERSION, "driftmonitors")
async def monitors_by_name(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    """DriftMonitors by (namespace, name): name, spec and status."""
    return {(str(namespace), name): _snapshot(body)}


@kopf.index(GROUP, VERSION, "driftmonitors")
async def monitors_by_deployment(
    namespace: str | None, body: kopf.Body, spec: kopf.Spec, **_: Any
) -> dict[Key, Any]:
    """DriftMonitors by (namespace, spec.deployment): name, spec and status."""
    return {(str(namespace), str(spec.get("deployment"))): _snapshot(body)}


@kopf.index(GROUP, VERSION, "deployments")
async def deployments_by_model(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Key, str]:
    """Deployment names by (namespace, spec.model)."""
    return {(str(namespace), str(spec.get("model"))): name}


@kopf.index(GROUP, VERSION, "deployments")
async def deployments_by_monitor(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Key, str]:
    """Deployment names by (namespace, DriftMonitor named in spec.rollback.driftMonitors)."""
    named = (spec.get("rollback") or {}).get("driftMonitors") or []
    return {(str(namespace), str(m)): name for m in named}


@kopf.index("apps", "v1", "deployments", labels={DEPLOYMENT_LABEL: kopf.PRESENT})
async def serving_deployments(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Serving apps/v1 Deployments by (namespace, name): ``spec.replicas`` and status counts."""
    return {
        (str(namespace), name): {
            "spec": {k: spec[k] for k in ("replicas",) if spec.get(k) is not None},
            "status": {k: status[k] for k in ("replicas", "readyReplicas") if status.get(k)},
        }
    }


def first(index: kopf.Index[Key, Any], key: Key) -> Any:
    """The one value under ``key`` (the last seen if several), None when absent."""
    found = index.get(key)
    if not found:
        return None
    return list(found)[-1]


def values(index: kopf.Index[Key, Any], key: Key) -> list[Any]:
    return list(index.get(key) or [])


# -- wake-ups ----------------------------------------------------------------------------------


def _deleted(body: Mapping[str, Any], event_type: str) -> bool:
    return event_type == "DELETED" or bool(body.get("metadata", {}).get("deletionTimestamp"))


def _moved(key: Hashable, signature: Hashable, body: Mapping[str, Any], event_type: str) -> bool:
    """Whether the event matters to readers: the object is going (its signature forgotten)
    or its signature changed."""
    if _deleted(body, event_type):
        _signatures.forget(key)
        return True
    return _signatures.changed(key, signature)


@kopf.on.event(GROUP, VERSION, "deployments")
async def wake_deployment(
    type: str, namespace: str | None, name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
) -> None:
    key = deployment_key(str(namespace), name)
    signature = (meta.get("generation"), repr(sorted(dict(meta.annotations).items())))
    if _deleted(body, type):
        _signatures.forget(key)
        return
    if _signatures.changed(key, signature):
        wakeups.wake(key)


@kopf.on.event(GROUP, VERSION, "modelversions")
async def wake_for_version(
    type: str,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    **kwargs: Any,
) -> None:
    key = ("ModelVersion", namespace, name)
    if not _moved(key, (meta.get("generation"), status.get("phase")), body, type):
        return
    index: kopf.Index[Key, str] = kwargs["deployments_by_model"]
    for deployment in values(index, (str(namespace), str(spec.get("model")))):
        wakeups.wake(deployment_key(str(namespace), deployment))


@kopf.on.event(GROUP, VERSION, "driftmonitors")
async def wake_for_monitor(
    type: str,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    **kwargs: Any,
) -> None:
    own = monitor_key(str(namespace), name)
    deleted = _deleted(body, type)
    if deleted:
        _signatures.forget(own)
    elif _signatures.changed(own, meta.get("generation")):
        wakeups.wake(own)
    verdict = (
        status.get("version"),
        status.get("observedGeneration"),
        tuple(
            (c.get("type"), c.get("status"), c.get("reason"))
            for c in status.get("conditions") or []
        ),
        meta.get("generation"),
    )
    if not _moved(("guard", namespace, name), verdict, body, type):
        return
    guarded = {str(spec.get("deployment"))} | set(
        values(kwargs["deployments_by_monitor"], (str(namespace), name))
    )
    for deployment in guarded:
        wakeups.wake(deployment_key(str(namespace), deployment))


@kopf.on.event("apps", "v1", "deployments", labels={DEPLOYMENT_LABEL: kopf.PRESENT})
async def wake_for_serving(
    type: str,
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    spec: kopf.Spec,
    status: kopf.Status,
    body: kopf.Body,
    **_: Any,
) -> None:
    key = ("apps/Deployment", namespace, name)
    counts = (spec.get("replicas"), status.get("replicas"), status.get("readyReplicas"))
    if _moved(key, counts, body, type):
        wakeups.wake(deployment_key(str(namespace), str(labels.get(DEPLOYMENT_LABEL))))
