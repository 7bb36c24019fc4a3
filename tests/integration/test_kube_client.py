"""The operator's API client (kubernetes_asyncio underneath) logging in as a serving pod or an
operator would, against the real control plane: an exec-plugin kubeconfig, a rotated
ServiceAccount token read again without a restart, and a watch that survives cut streams.

Identities are checked with a SelfSubjectReview: the server says who the request came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kopf
import pytest
import yaml

from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.cluster import LocalCluster
from support.faultproxy import FaultProxy
from support.operator import eventually

pytestmark = pytest.mark.integration


async def whoami(cluster: Cluster) -> str:
    review = await cluster.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    return str(review["status"]["userInfo"]["username"])


async def service_account(admin: Cluster, namespace: str, name: str) -> str:
    """A new ServiceAccount; its user name."""
    await admin.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        }
    )
    return f"system:serviceaccount:{namespace}:{name}"


async def token(admin: Cluster, namespace: str, name: str, bound_to: str | None = None) -> str:
    """A token of the ServiceAccount from the TokenRequest API; with ``bound_to``, bound to a
    new Secret of that name, so deleting the Secret revokes the token."""
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if bound_to is not None:
        secret, _ = await admin.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": bound_to, "namespace": namespace},
            }
        )
        uid = secret["metadata"]["uid"]
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": bound_to,
            "uid": uid,
        }
    answer = await admin.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return str(answer["status"]["token"])


@pytest.fixture
async def clients() -> AsyncIterator[list[Cluster]]:
    """Clients the test makes, closed after it."""
    made: list[Cluster] = []
    yield made
    for client in made:
        await client.close()


def mounted(local_cluster: LocalCluster, directory: Path, namespace: str) -> dict[str, str]:
    """A pod's ServiceAccount mount in ``directory`` (token written by the test), and the
    environment that points a pod at the API server."""
    directory.mkdir()
    (directory / "ca.crt").write_bytes(local_cluster.control_plane.pki.ca_cert.read_bytes())
    (directory / "namespace").write_text(namespace)
    server = urlsplit(local_cluster.api_url)
    return {
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
    }


async def test_an_exec_plugin_kubeconfig_logs_in_as_the_account_it_names(
    local_cluster: LocalCluster,
    admin: Cluster,
    namespace: str,
    tmp_path: Path,
    clients: list[Cluster],
) -> None:
    user = await service_account(admin, namespace, "exec-user")
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": await token(admin, namespace, "exec-user")},
    }
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"print({json.dumps(json.dumps(credential))})\n")
    kubeconfig = local_cluster.control_plane.kubeconfig("admin")
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }
    path = tmp_path / "exec.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    client = Cluster.from_kubeconfig(path)
    clients.append(client)
    assert await whoami(client) == user


async def test_a_revoked_service_account_token_is_replaced_by_the_rotated_file(
    local_cluster: LocalCluster,
    admin: Cluster,
    namespace: str,
    tmp_path: Path,
    clients: list[Cluster],
) -> None:
    first = await service_account(admin, namespace, "first")
    second = await service_account(admin, namespace, "second")
    mount = tmp_path / "serviceaccount"
    environ = mounted(local_cluster, mount, namespace)
    old = await token(admin, namespace, "first", bound_to="first-binding")
    (mount / "token").write_text(old)
    client = Cluster.login(environ=environ, service_account=mount)
    clients.append(client)
    assert client.namespace == namespace
    assert await whoami(client) == first

    # Revoke the old token (its bound Secret is gone), then rotate the file, as the kubelet
    # does: the next call is refused once, reads the file again and succeeds.
    await admin.delete("v1", "Secret", namespace, "first-binding")
    probe = Cluster.login(environ=environ, service_account=mount)
    clients.append(probe)

    async def revoked() -> bool:
        try:
            await whoami(probe)
        except ApiError as exc:
            return exc.status == 401
        return False

    await eventually(revoked, what="the old token refused")
    (mount / "token").write_text(await token(admin, namespace, "second"))
    assert await whoami(client) == second


async def test_a_rotated_service_account_token_is_used_without_a_refusal(
    local_cluster: LocalCluster,
    admin: Cluster,
    namespace: str,
    tmp_path: Path,
    clients: list[Cluster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The library re-reads the token file once its refresh period (a minute) has passed;
    the period is set to nothing here so the test need not wait a minute."""
    from kubernetes_asyncio.config import incluster_config

    monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", datetime.timedelta(0))
    first = await service_account(admin, namespace, "first")
    second = await service_account(admin, namespace, "second")
    mount = tmp_path / "serviceaccount"
    environ = mounted(local_cluster, mount, namespace)
    # (a final newline, as a hand-written token file has, is not sent along)
    (mount / "token").write_text(await token(admin, namespace, "first") + "\n")
    client = Cluster.login(environ=environ, service_account=mount)
    clients.append(client)
    assert await whoami(client) == first
    (mount / "token").write_text(await token(admin, namespace, "second"))  # both still valid
    assert await whoami(client) == second


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_watch_through_cut_streams_misses_no_change(
    local_cluster: LocalCluster,
    admin: Cluster,
    namespace: str,
    clients: list[Cluster],
) -> None:
    await service_account(admin, namespace, "watcher")
    await admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "watcher-view", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "watcher", "namespace": namespace}],
        }
    )
    pki = local_cluster.control_plane.pki
    bearer = await token(admin, namespace, "watcher")
    with FaultProxy(
        local_cluster.api_url,
        str(pki.ca_cert),
        str(pki.cert("apiserver")),
        str(pki.key("apiserver")),
    ) as proxy:
        client = Cluster(
            kopf.ConnectionInfo(
                server=proxy.url, ca_path=str(pki.ca_cert), scheme="Bearer", token=bearer
            )
        )
        clients.append(client)
        seen: dict[str, str] = {}  # name -> last "v" seen

        async def follow() -> None:
            watch = client.watch("v1", "ConfigMap", namespace, max_backoff=0.5)
            async with contextlib.aclosing(watch) as events:
                async for event in events:
                    objects = event.object.get("items") or [event.object]
                    for obj in objects if event.type != "DELETED" else []:
                        seen[obj["metadata"]["name"]] = (obj.get("data") or {}).get("v", "")

        task = asyncio.create_task(follow())
        try:
            cut = 0
            for i in range(10):
                await admin.create(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": f"cm-{i}", "namespace": namespace},
                        "data": {"v": "1"},
                    }
                )
                await admin.patch("v1", "ConfigMap", namespace, f"cm-{i}", {"data": {"v": "2"}})
                cut += await asyncio.to_thread(proxy.drop_watches)
            await until(lambda: all(seen.get(f"cm-{i}") == "2" for i in range(10)))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert cut > 0
