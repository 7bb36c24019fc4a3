"""Autoscaling of a modelops Deployment's serving pods: one autoscaling/v2
HorizontalPodAutoscaler per serving apps/v1 Deployment (one in ``model`` routing, one per
version in ``gateway`` routing), named as its target.

With ``spec.autoscaling`` set, the serving Deployments are applied without ``spec.replicas``:
the operator applies its children with server-side apply, so a field it leaves out is not
reset by it, and the autoscaler's writes to the scale subresource stand. The CPU target is a
share of the containers' CPU request, which the serving container always has
(resources/serving.py, ``with_defaults``).

Dropping a field it owns from its applied configuration makes the API server reset it when no
other manager owns it: ``replicas`` would fall to its default, 1, until the autoscaler's next
sync (up to 15 s). So before the first apply without ``replicas``, :func:`hand_over_replicas`
hands the field to the field manager :data:`HANDOVER_MANAGER` at its current value, as the
Server-Side Apply documentation's "Transferring ownership" says
(https://kubernetes.io/docs/reference/using-api/server-side-apply/#transferring-ownership);
the autoscaler's writes to the scale subresource then take it over from that manager.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Protocol
from urllib.parse import quote

from modelops.api.deployment import Autoscaling, Deployment

HANDOVER_MANAGER = "handover-to-hpa"
"""The field manager that holds ``spec.replicas`` between the operator and the autoscaler."""
OPERATOR_MANAGER = "modelops"
"""The operator's field manager (``modelops.controllers.cluster.FIELD_MANAGER``)."""
HANDOVER_ATTEMPTS = 3
"""Reads and hand-overs tried while the object keeps changing in between (409 Conflict)."""


def _serving_deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["apiVersion"] == "apps/v1" and o["kind"] == "Deployment"]


def horizontal_pod_autoscaler(scaling: Autoscaling, target: dict[str, Any]) -> dict[str, Any]:
    """The autoscaler of one serving apps/v1 Deployment, labelled and named as it is."""
    meta = target["metadata"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(meta["labels"]),
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"]},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def autoscaled(dep: Deployment, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The children with autoscaling applied: without ``spec.autoscaling`` as they are; with
    it, the serving Deployments without ``replicas`` and an autoscaler for each."""
    scaling = dep.spec.autoscaling
    if scaling is None:
        return objects
    result = []
    for obj in objects:
        if obj["apiVersion"] == "apps/v1" and obj["kind"] == "Deployment":
            obj = copy.deepcopy(obj)
            obj["spec"].pop("replicas", None)
        result.append(obj)
    return result + [horizontal_pod_autoscaler(scaling, d) for d in _serving_deployments(result)]


# -- hand-over of spec.replicas to the autoscaler ------------------------------------------------


class ApiClient(Protocol):
    """What :func:`hand_over_replicas` needs of ``modelops.controllers.cluster.Cluster``."""

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...

    async def request(
        self, method: str, url: str, *, json: Any = None, content_type: str | None = None
    ) -> dict[str, Any]: ...


def owns_replicas(obj: dict[str, Any], manager: str = OPERATOR_MANAGER) -> bool:
    """Whether ``manager`` holds ``spec.replicas`` of ``obj`` (its ``metadata.managedFields``,
    fieldsV1 format)."""
    return any(
        entry.get("manager") == manager
        and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {})
        for entry in obj.get("metadata", {}).get("managedFields") or []
    )


def replicas_handover(child: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any] | None:
    """The apply configuration for :data:`HANDOVER_MANAGER` that keeps ``live``'s replicas
    when ``child`` (the operator's next configuration of it) leaves them out; None when no
    hand-over is needed: ``child`` is not an apps/v1 Deployment without replicas, ``live`` does
    not exist yet (created without replicas, the autoscaler raises it from 1), or the operator
    does not own its replicas (already handed over).

    No ``metadata.resourceVersion`` precondition: the deployment controller's status writes
    change it several times a second while pods start, which made the apply fail for nothing.
    A change of ``spec.replicas`` itself since ``live`` was read is caught by server-side
    apply: the new value is owned by whoever set it, so this non-forced apply of the old value
    fails with a 409 field conflict."""
    if (child["apiVersion"], child["kind"]) != ("apps/v1", "Deployment"):
        return None
    if "replicas" in child.get("spec", {}) or live is None or not owns_replicas(live):
        return None
    replicas = live.get("spec", {}).get("replicas")
    if not isinstance(replicas, int):
        return None
    meta = live["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
        },
        "spec": {"replicas": replicas},
    }


async def hand_over_replicas(
    cluster: ApiClient, child: dict[str, Any], last_applied: str | None = None
) -> int | None:
    """Before ``child`` (an apps/v1 Deployment applied without ``spec.replicas``) is applied:
    give its live replicas to :data:`HANDOVER_MANAGER`, so that the operator's apply without
    them releases the field instead of resetting it to 1. Returns the replicas handed over, or
    None when nothing was to do (see :func:`replicas_handover`).

    ``last_applied`` is the JSON of the configuration this process last applied for the child:
    when that already left replicas out, the field was handed over before and no request is
    made. Otherwise one GET, and one server-side apply (field manager
    :data:`HANDOVER_MANAGER`, not forced: the value is the current one, so it is shared with
    the operator rather than taken) if needed. Raises what the client raises; after
    :data:`HANDOVER_ATTEMPTS` conflicts (replicas changing between read and apply), the
    client's 409 error."""
    if (child["apiVersion"], child["kind"]) != ("apps/v1", "Deployment") or "replicas" in child[
        "spec"
    ]:
        return None
    if last_applied is not None and "replicas" not in json.loads(last_applied).get("spec", {}):
        return None
    meta = child["metadata"]
    for attempt in range(HANDOVER_ATTEMPTS):
        live = await cluster.get("apps/v1", "Deployment", meta["namespace"], meta["name"])
        handover = replicas_handover(child, live)
        if handover is None:
            return None
        url = (
            f"/apis/apps/v1/namespaces/{quote(meta['namespace'])}/deployments/"
            f"{quote(meta['name'])}?fieldManager={HANDOVER_MANAGER}"
        )
        try:
            await cluster.request(
                "PATCH", url, json=handover, content_type="application/apply-patch+yaml"
            )
        except Exception as exc:
            if getattr(exc, "status", None) == 409 and attempt + 1 < HANDOVER_ATTEMPTS:
                continue  # replicas changed since read (e.g. the autoscaler): read again
            raise
        return int(handover["spec"]["replicas"])
    return None
