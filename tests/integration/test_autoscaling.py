"""spec.autoscaling with the real operator and the real HorizontalPodAutoscaler controller.

The control plane runs the HPA controller but no metrics server: it cannot compute CPU use
(``ScalingActive=False``), yet it still enforces ``minReplicas`` on its target and reports
``currentReplicas``. The serving pods never run (``operator_without_pods``): only replicas
matter here.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import FIELD_MANAGER, ApiError, Cluster
from modelops.local.s3server import S3Server
from modelops.resources import autoscaling
from support.cluster_fixtures import Kubectl, add_version, assert_refused_at_apply
from support.models import train_version
from support.operator import UNRUNNABLE_IMAGE, OperatorProcess, eventually

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


async def test_turning_autoscaling_on_never_drops_the_running_replicas(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summary: dict[str, Any],
) -> None:
    await add_version(cluster, namespace, summary, 1)
    await cluster.create(deployment(namespace, replicas=4))

    async def at_four() -> dict[str, Any] | None:
        server = await cluster.get("apps/v1", "Deployment", namespace, "iris-server")
        return server if server and server["spec"].get("replicas") == 4 else None

    server = await eventually(at_four, what="iris-server at 4 replicas", timeout=TIMEOUT)
    assert _owns_replicas(server, FIELD_MANAGER)

    # Every spec.replicas the API server holds from here on, as a watcher sees them.
    seen: list[int] = []

    async def watch() -> None:
        async with contextlib.aclosing(
            cluster.watch(
                "apps/v1",
                "Deployment",
                namespace,
                field_selector="metadata.name=iris-server",
                resource_version=server["metadata"]["resourceVersion"],
            )
        ) as events:
            async for event in events:
                listed = event.object.get("items", []) if event.type == "LISTED" else []
                for obj in listed or [event.object]:
                    seen.append(int(obj.get("spec", {}).get("replicas", -1)))

    watcher = asyncio.create_task(watch())
    try:
        await cluster.patch(
            API_VERSION,
            "Deployment",
            namespace,
            "iris",
            {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}},
        )

        async def handed_over() -> dict[str, Any] | None:
            server = await cluster.get("apps/v1", "Deployment", namespace, "iris-server")
            return server if server and not _owns_replicas(server, FIELD_MANAGER) else None

        await eventually(handed_over, what="replicas released by the operator", timeout=TIMEOUT)

        # The autoscaler has synced (4 is within [2, 6], so it keeps it).
        async def synced() -> dict[str, Any] | None:
            hpa = await cluster.get(*HPA, namespace, "iris-server")
            return hpa if (hpa or {}).get("status", {}).get("currentReplicas") == 4 else None

        await eventually(synced, what="the autoscaler at 4 replicas", timeout=TIMEOUT)
        final = await cluster.get("apps/v1", "Deployment", namespace, "iris-server")
        assert final is not None and final["spec"]["replicas"] == 4
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert seen and min(seen) == 4, seen


# -- the hand-over itself, on the real API server (no operator) ----------------------------------


def serving_deployment(namespace: str, replicas: int | None) -> dict[str, Any]:
    labels = {"app": "handover"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "handover", "namespace": namespace, "labels": labels},
        "spec": {
            **({"replicas": replicas} if replicas is not None else {}),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "server", "image": UNRUNNABLE_IMAGE}]},
            },
        },
    }


async def replicas_of(cluster: Cluster, namespace: str) -> tuple[int, dict[str, Any]]:
    obj = await cluster.get("apps/v1", "Deployment", namespace, "handover")
    assert obj is not None
    return int(obj["spec"]["replicas"]), obj


async def test_dropping_owned_replicas_without_a_handover_resets_them_to_one(
    cluster: Cluster, namespace: str
) -> None:
    # Why the hand-over exists: the API server's behaviour it works around.
    await cluster.apply(serving_deployment(namespace, 4))
    await cluster.apply(serving_deployment(namespace, None))
    assert (await replicas_of(cluster, namespace))[0] == 1


async def test_handed_over_replicas_stay_when_the_operator_drops_them(
    cluster: Cluster, namespace: str
) -> None:
    await cluster.apply(serving_deployment(namespace, 4))
    without = serving_deployment(namespace, None)
    assert await autoscaling.hand_over_replicas(cluster, without) == 4
    await cluster.apply(without)
    replicas, obj = await replicas_of(cluster, namespace)
    assert replicas == 4
    assert not _owns_replicas(obj, FIELD_MANAGER)
    assert _owns_replicas(obj, autoscaling.HANDOVER_MANAGER)
    # Nothing more to hand over: no second apply by the hand-over manager.
    assert await autoscaling.hand_over_replicas(cluster, without) is None


async def test_a_stale_handover_is_refused_when_someone_else_changed_replicas(
    cluster: Cluster, namespace: str
) -> None:
    # The hand-over carries no resourceVersion precondition (status writes would fail it for
    # nothing); server-side apply's field ownership must catch a replicas change instead.
    await cluster.apply(serving_deployment(namespace, 4))
    _, stale = await replicas_of(cluster, namespace)
    without = serving_deployment(namespace, None)
    handover = autoscaling.replicas_handover(without, stale)
    assert handover is not None and handover["spec"]["replicas"] == 4
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/handover"
    await cluster.request(
        "PATCH",
        f"{path}?fieldManager=someone-else",
        json={"spec": {"replicas": 6}},
        content_type="application/merge-patch+json",
    )
    with pytest.raises(ApiError) as refused:
        await cluster.request(
            "PATCH",
            f"{path}?fieldManager={autoscaling.HANDOVER_MANAGER}",
            json=handover,
            content_type="application/apply-patch+yaml",
        )
    assert refused.value.status == 409
    assert (await replicas_of(cluster, namespace))[0] == 6
    # Read again, nothing is left to hand over: the operator no longer owns replicas.
    assert await autoscaling.hand_over_replicas(cluster, without) is None
