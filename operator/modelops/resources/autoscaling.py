"""Autoscaling of a modelops Deployment's serving pods: one autoscaling/v2
HorizontalPodAutoscaler per serving apps/v1 Deployment (one in ``model`` routing, one per
version in ``gateway`` routing), named as its target.

With ``spec.autoscaling`` set, the serving Deployments are applied without ``spec.replicas``:
the operator applies its children with server-side apply, so a field it leaves out is not
reset by it, and the autoscaler's writes to the scale subresource stand. The CPU target is a
share of the containers' CPU request, which the serving container always has
(resources/serving.py, ``with_defaults``).
"""

from __future__ import annotations

import copy
from typing import Any

from modelops.api.deployment import Autoscaling, Deployment


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
