"""Routing tables from a ConfigMap on the real control plane: listed, then watched, through the
credentials of a real kubeconfig (embedded CA, then a client certificate or a ServiceAccount
token), in a namespace of the test's own."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelops.controllers.cluster import Cluster
from modelops.local.cluster import LocalCluster
from modelops.serving.routing_source import ConfigMapSource, KubeAccess
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


async def test_configmap_source_lists_then_watches(
    local_cluster: LocalCluster, admin: Cluster, namespace: str
) -> None:
    control_plane = local_cluster.control_plane
    access = KubeAccess.from_kubeconfig(control_plane.kubeconfig("admin"))
    assert access.server == control_plane.url and access.namespace is None
    assert isinstance(access.ssl, ssl.SSLContext)  # the embedded CA and client certificate
    got: list[Any] = []
    source = ConfigMapSource(access, namespace, NAME, max_backoff=0.2)
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


async def test_configmap_source_watches_with_only_the_serving_role(
    local_cluster: LocalCluster, admin: Cluster, namespace: str, tmp_path: Path
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
    access = KubeAccess.from_kubeconfig(kubeconfig)
    assert access.auth_headers()["Authorization"].startswith("Bearer ")
    await admin.create_new(configmap(namespace, {"v": 1}))
    await admin.create_new(configmap(namespace, {"other": True}, name="other"))
    got: list[Any] = []
    source = ConfigMapSource(access, namespace, NAME, max_backoff=0.2)
    task = asyncio.create_task(source.run(lambda text: got.append(json.loads(text))))
    try:
        await until(lambda: got == [{"v": 1}])
        await admin.patch("v1", "ConfigMap", namespace, NAME, data({"v": 2}))
        await until(lambda: got == [{"v": 1}, {"v": 2}])
    finally:
        task.cancel()
    # The same credentials may read nothing else: not the other ConfigMap, not the list.
    base = f"{access.server}/api/v1/namespaces/{namespace}/configmaps"
    connector = aiohttp.TCPConnector(ssl=access.ssl)
    async with aiohttp.ClientSession(connector=connector, headers=access.auth_headers()) as s:
        for url in (f"{base}/other", base):
            async with s.get(url) as r:
                assert r.status == 403, await r.text()
        async with s.get(f"{base}/{NAME}") as r:
            assert r.status == 200, await r.text()
