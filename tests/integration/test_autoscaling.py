"""spec.autoscaling with the real operator and the real HorizontalPodAutoscaler controller.

The control plane runs the HPA controller but no metrics server: it cannot compute CPU use
(``ScalingActive=False``), yet it still enforces ``minReplicas`` on its target and reports
``currentReplicas``. The serving pods never run (``operator_without_pods``): only replicas
matter here.
"""

from __future__ import annotations

from typing import Any

import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import FIELD_MANAGER, Cluster
from modelops.local.s3server import S3Server
from support.cluster_fixtures import Kubectl, add_version, assert_refused_at_apply
from support.models import train_version
from support.operator import OperatorProcess, eventually

pytestmark = pytest.mark.integration
TIMEOUT = 90.0  # the HPA controller syncs every 15 s
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")


@pytest.fixture(scope="module")
def summary(s3: S3Server) -> dict[str, Any]:
    return train_version(s3.store(), 1)


def deployment(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {"model": "iris", "replicas": 1, **spec},
    }


def _owns_replicas(server: dict[str, Any], manager: str) -> bool:
    return any(
        entry.get("manager") == manager
        and "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
        for entry in server["metadata"].get("managedFields", [])
    )


async def test_autoscaling_leaves_replicas_to_an_owned_autoscaler_until_removed(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summary: dict[str, Any],
) -> None:
    await add_version(cluster, namespace, summary, 1)
    await cluster.create(deployment(namespace, autoscaling={"minReplicas": 2, "maxReplicas": 4}))

    async def hpa() -> dict[str, Any] | None:
        return await cluster.get(*HPA, namespace, "iris-server")

    autoscaler = await eventually(hpa, what="the autoscaler", timeout=TIMEOUT)
    owner = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
    assert owner is not None
    [ref] = autoscaler["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == (
        "Deployment",
        owner["metadata"]["uid"],
        True,
    )
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "iris-server"
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 4)

    # The HPA controller, not the operator, raises the server to minReplicas.
    async def scaled_up() -> dict[str, Any] | None:
        server = await cluster.get("apps/v1", "Deployment", namespace, "iris-server")
        return server if server and server["spec"].get("replicas") == 2 else None

    server = await eventually(scaled_up, what="iris-server scaled to 2", timeout=TIMEOUT)
    assert not _owns_replicas(server, FIELD_MANAGER), server["metadata"]["managedFields"]

    async def reported() -> dict[str, Any] | None:
        dep = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
        status = (dep or {}).get("status", {})
        return status if (status.get("replicas"), status.get("desiredReplicas")) == (2, 2) else None

    await eventually(reported, what="status.replicas 2 of 2", timeout=TIMEOUT)

    # Removed: the autoscaler goes, and the operator applies replicas again.
    await cluster.patch(
        API_VERSION, "Deployment", namespace, "iris", {"spec": {"autoscaling": None}}
    )

    async def gone() -> bool:
        return await hpa() is None

    await eventually(gone, what="the autoscaler deleted", timeout=TIMEOUT)

    async def scaled_back() -> dict[str, Any] | None:
        server = await cluster.get("apps/v1", "Deployment", namespace, "iris-server")
        return server if server and server["spec"].get("replicas") == 1 else None

    server = await eventually(scaled_back, what="iris-server back at 1", timeout=TIMEOUT)
    assert _owns_replicas(server, FIELD_MANAGER)


async def test_autoscaling_with_max_below_min_is_refused_at_apply(
    kubectl: Kubectl, namespace: str
) -> None:
    doc = deployment(namespace, autoscaling={"minReplicas": 3, "maxReplicas": 2})
    assert_refused_at_apply(kubectl, doc, "autoscaling.maxReplicas must be at least minReplicas")
