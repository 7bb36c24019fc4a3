"""Routing tables from a ConfigMap on the real control plane: listed, then watched, through the
credentials of a real kubeconfig (embedded CA, then a client certificate or a ServiceAccount
token), in a namespace of the test's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.cluster import LocalCluster
from modelops.serving.routing_source import ConfigMapSource
from unit.serving.test_serving_support import routing_reader_kubeconfig

pytestmark = pytest.mark.integration

NAME = "iris-routing"


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def configmap(namespace: str, table: dict[str, Any], name: str = NAME) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"routing.json": json.dumps(table)},
    }


def data(table: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"routing.json": json.dumps(table)}}


@pytest.fixture
async def closing() -> AsyncIterator[list[Cluster]]:
    """Clients the test makes, closed after it."""
    clients: list[Cluster] = []
    yield clients
    for client in clients:
        await client.close()


async def test_configmap_source_lists_then_watches(
    local_cluster: LocalCluster, admin: Cluster, namespace: str, closing: list[Cluster]
) -> None:
    control_plane = local_cluster.control_plane
    # the embedded CA and client certificate
    reader = Cluster.from_kubeconfig(control_plane.kubeconfig("admin"))
    closing.append(reader)
    await reader.connect()
    assert reader.server == control_plane.url and reader.namespace is None
    got: list[Any] = []
    source = ConfigMapSource(reader, namespace, NAME, max_backoff=0.2)
    task = asyncio.create_task(source.run(lambda text: got.append(json.loads(text))))
    try:
        await asyncio.sleep(0.3)  # the ConfigMap does not exist yet: fine, keep watching
        assert got == []
        assert await admin.create_new(configmap(namespace, {"v": 1})) is not None
        await until(lambda: got == [{"v": 1}])
        await admin.patch("v1", "ConfigMap", namespace, NAME, data({"v": 2}))
        await until(lambda: got == [{"v": 1}, {"v": 2}])
        assert await admin.delete("v1", "ConfigMap", namespace, NAME)
        await asyncio.sleep(0.1)
        assert await admin.create_new(configmap(namespace, {"v": 3})) is not None
        await until(lambda: got[-1] == {"v": 3})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_configmap_source_watches_with_only_the_serving_role(
    local_cluster: LocalCluster,
    admin: Cluster,
    namespace: str,
    tmp_path: Path,
    closing: list[Cluster],
) -> None:
    kubeconfig = await asyncio.to_thread(
        routing_reader_kubeconfig,
        local_cluster.control_plane,
        namespace,
        "iris",
        "iris",
        [NAME],
        tmp_path / "reader.kubeconfig",
    )
    reader = Cluster.from_kubeconfig(kubeconfig)
    closing.append(reader)
    await admin.create_new(configmap(namespace, {"v": 1}))
    await admin.create_new(configmap(namespace, {"other": True}, name="other"))
    got: list[Any] = []
    source = ConfigMapSource(reader, namespace, NAME, max_backoff=0.2)
    task = asyncio.create_task(source.run(lambda text: got.append(json.loads(text))))
    try:
        await until(lambda: got == [{"v": 1}])
        await admin.patch("v1", "ConfigMap", namespace, NAME, data({"v": 2}))
        await until(lambda: got == [{"v": 1}, {"v": 2}])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The same credentials may read nothing else: not the other ConfigMap, not the list.
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    for url in (f"{base}/other", base):
        with pytest.raises(ApiError) as refused:
            await reader.request("GET", url)
        assert refused.value.status == 403, refused.value
    assert (await reader.request("GET", f"{base}/{NAME}"))["metadata"]["name"] == NAME
