"""Routing tables from a file (polled) and the source chosen from the environment; no network.
The ConfigMap source against a real API server is in tests/integration/test_routing_source.py;
the client's kubeconfig reading and watch are tested in tests/unit/test_cluster_client.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import kopf
import pytest

from modelops.controllers.cluster import Cluster
from modelops.serving.routing_source import ConfigMapSource, FileSource, from_environment


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_file_source_submits_each_new_content_once(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    got: list[str | bytes] = []
    task = asyncio.create_task(FileSource(path, interval=0.01).run(got.append))
    try:
        await asyncio.sleep(0.05)  # missing file: nothing, no crash
        assert got == []
        path.write_text('{"a": 1}')
        await until(lambda: len(got) == 1)
        path.write_text('{"a": 1}')  # touched, same content: not submitted again
        await asyncio.sleep(0.05)
        tmp = tmp_path / "new"
        tmp.write_text('{"a": 2}')
        tmp.replace(path)  # atomic replace, as editors and ConfigMap mounts do
        await until(lambda: len(got) == 2)
        assert got == [b'{"a": 1}', b'{"a": 2}']
    finally:
        task.cancel()


async def test_configmap_source_survives_an_unreachable_api_server() -> None:
    # nothing listens on the discard port
    cluster = Cluster(kopf.ConnectionInfo(server="http://127.0.0.1:9"), backoffs=(0.01,))
    source = ConfigMapSource(cluster, "default", "x", max_backoff=0.05)
    task = asyncio.create_task(source.run(lambda text: None))
    await asyncio.sleep(0.3)
    assert not task.done()  # still retrying
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await cluster.close()


async def test_source_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(from_environment(tmp_path / "r.json"), FileSource)
    monkeypatch.delenv("MODELOPS_ROUTING_CONFIGMAP", raising=False)
    with pytest.raises(RuntimeError, match="MODELOPS_ROUTING_CONFIGMAP"):
        from_environment(None)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("MODELOPS_ROUTING_CONFIGMAP", "iris-routing")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    source = from_environment(None)
    assert isinstance(source, ConfigMapSource)
    await source.cluster.connect()  # the kubeconfig's credentials (no request is sent)
    try:
        assert source.cluster.server == "http://127.0.0.1:1"
    finally:
        await source.cluster.close()
    assert (source.namespace, source.name) == ("team-a", "iris-routing")
