"""The process executor as a kubelet and controllers: plain apps/v1 Deployments and Jobs.

A tiny HTTP server in the runtime image (``python -c``) stands in for a workload: it answers
with its pod's name and env, so the tests see which pod answered and what it was given.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from modelops.controllers.cluster import Cluster
from modelops.local.cluster import LocalCluster

pytestmark = pytest.mark.e2e
NS = "default"
T = TypeVar("T")

SERVER = """
import http.server, json, os, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        keys = ("POD_NAME", "POD_NAMESPACE", "VERSION", "ACCESS_KEY", "HOME", "PEER", "STORE")
        body = json.dumps({k: os.environ.get(k) for k in keys}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def echo_deployment(image: str, replicas: int = 2, version: str = "1") -> dict[str, Any]:
    labels = {"app": "echo"}
    container = {
        "name": "echo",
        "image": image,
        "command": ["python", "-c", SERVER],
        "args": ["--port", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "VERSION", "value": version},
            {"name": "HOME", "value": "/tmp"},
            # In-cluster addresses: a Service's DNS name, and the store's default address.
            {"name": "PEER", "value": "http://echo.default.svc.cluster.local:80/x"},
            {"name": "STORE", "value": "minio.modelops-system.svc:9000"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {
                "name": "ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": "modelops-s3", "key": "AWS_ACCESS_KEY_ID"}},
            },
        ],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "volumes": [{"name": "tmp", "emptyDir": {}}]},
            },
        },
    }


ECHO_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "echo", "namespace": NS},
    "spec": {
        "selector": {"app": "echo"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    },
}


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        if last := await probe():
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


@pytest.fixture
async def api(local_cluster: LocalCluster) -> AsyncIterator[Cluster]:
    client = Cluster(local_cluster.connection())
    yield client
    await client.close()


async def pods(api: Cluster, app: str) -> list[dict[str, Any]]:
    return await api.list("v1", "Pod", NS, {"app": app})


async def deployment_settled(api: Cluster, name: str, replicas: int) -> dict[str, Any] | None:
    dep = await api.get("apps/v1", "Deployment", NS, name)
    status = (dep or {}).get("status", {})
    settled = (
        dep is not None
        and status.get("observedGeneration") == dep["metadata"]["generation"]
        and status.get("replicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
    )
    return dep if settled else None


async def test_a_deployment_runs_rolls_scales_and_stops(
    local_cluster: LocalCluster, api: Cluster
) -> None:
    await api.create(ECHO_SERVICE)
    await api.create(echo_deployment(local_cluster.runtime_image))
    dep = await eventually(lambda: deployment_settled(api, "echo", 2), "2 ready echo pods")
    available = next(c for c in dep["status"]["conditions"] if c["type"] == "Available")
    assert available["status"] == "True"

    # The pods: Running and Ready, with their env resolved (fieldRef, secretKeyRef, mounts).
    listed = await pods(api, "echo")
    assert len(listed) == 2
    for pod in listed:
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["containerStatuses"][0]["ready"] is True
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    url = local_cluster.service_url("echo")
    async with aiohttp.ClientSession() as session:
        answers = [await (await session.get(url)).json() for _ in range(6)]
    assert {a["POD_NAME"] for a in answers} == {p["metadata"]["name"] for p in listed}
    assert {a["POD_NAMESPACE"] for a in answers} == {NS}
    assert {a["ACCESS_KEY"] for a in answers} == {local_cluster.s3.access_key}  # type: ignore[union-attr]
    assert all(a["HOME"] != "/tmp" and a["HOME"].endswith("/volumes/tmp") for a in answers)
    assert {a["PEER"] for a in answers} == {f"{url}/x"}
    assert {a["STORE"] for a in answers} == {local_cluster.s3.endpoint}  # type: ignore[union-attr]

    # A changed template rolls the pods, one at a time, and clients see no error meanwhile.
    failures: list[str] = []
    seen_versions: set[str] = set()
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(url) as response:
                        if response.status != 200:
                            failures.append(f"HTTP {response.status}: {await response.text()}")
                        else:
                            seen_versions.add((await response.json())["VERSION"])
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(0.01)

    load = asyncio.create_task(client())
    old = {p["metadata"]["name"] for p in listed}
    changed = copy.deepcopy(dep["spec"]["template"])
    changed["spec"]["containers"][0]["env"][0]["value"] = "2"
    await api.patch("apps/v1", "Deployment", NS, "echo", {"spec": {"template": changed}})

    async def rolled() -> bool:
        names = {p["metadata"]["name"] for p in await pods(api, "echo")}
        return bool(await deployment_settled(api, "echo", 2)) and not names & old

    await eventually(rolled, "the rolling update")
    await asyncio.sleep(0.5)
    stop.set()
    await load
    assert failures == []
    assert seen_versions == {"1", "2"}

    # Scale up and down; the processes of removed pods stop.
    await api.patch("apps/v1", "Deployment", NS, "echo", {"spec": {"replicas": 3}})
    await eventually(lambda: deployment_settled(api, "echo", 3), "3 replicas")
    executor = local_cluster.executor
    assert executor is not None
    pids = {p.name: p.process.pid for p in executor.pods.values() if p.process is not None}
    await api.patch("apps/v1", "Deployment", NS, "echo", {"spec": {"replicas": 1}})
    await eventually(lambda: deployment_settled(api, "echo", 1), "1 replica")
    remaining = {p["metadata"]["name"] for p in await pods(api, "echo")}
    gone = [pid for name, pid in pids.items() if name.startswith("echo-") and name not in remaining]
    assert len(gone) == 2
    await eventually(lambda: _all_exited(gone), "the removed pods' processes to exit", 15)

    # Deleting the Deployment deletes its pods (ownerReferences) and stops their processes.
    await api.delete("apps/v1", "Deployment", NS, "echo")
    await eventually(lambda: _no_pods(api, "echo"), "the echo pods to go")
    await eventually(lambda: _all_exited(list(pids.values())), "every echo process to exit", 15)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 503  # the Service has no ready endpoint left
    await api.delete("v1", "Service", NS, "echo")


async def _all_exited(pids: list[int]) -> bool:
    def exited(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone as far as work goes; the executor reaps it.
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"

    return all(exited(pid) for pid in pids)


async def _no_pods(api: Cluster, app: str) -> bool:
    return not await pods(api, app)


async def test_a_crashing_container_is_restarted_with_back_off(
    local_cluster: LocalCluster, api: Cluster
) -> None:
    dep = echo_deployment(local_cluster.runtime_image, replicas=1)
    dep["metadata"]["name"] = "crasher"
    dep["spec"]["selector"]["matchLabels"] = {"app": "crasher"}
    dep["spec"]["template"]["metadata"]["labels"] = {"app": "crasher"}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["python", "-c", "import sys; sys.exit(3)"]
    await api.create(dep)

    async def restarted() -> dict[str, Any] | None:
        for pod in await pods(api, "crasher"):
            status = pod.get("status", {}).get("containerStatuses", [{}])[0]
            if status.get("restartCount", 0) >= 2:
                return status
        return None

    status = await eventually(restarted, "two restarts")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["ready"] is False
    await api.delete("apps/v1", "Deployment", NS, "crasher")
    await eventually(lambda: _no_pods(api, "crasher"), "the crasher pods to go")


async def test_other_images_are_not_run(local_cluster: LocalCluster, api: Cluster) -> None:
    dep = echo_deployment("nginx:1.27", replicas=1)
    dep["metadata"]["name"] = "elsewhere"
    dep["spec"]["selector"]["matchLabels"] = {"app": "elsewhere"}
    dep["spec"]["template"]["metadata"]["labels"] = {"app": "elsewhere"}
    await api.create(dep)

    async def pulled() -> dict[str, Any] | None:
        for pod in await pods(api, "elsewhere"):
            waiting = pod.get("status", {}).get("containerStatuses", [{}])[0]
            if waiting.get("state", {}).get("waiting", {}).get("reason") == "ErrImagePull":
                return pod
        return None

    pod = await eventually(pulled, "ErrImagePull")
    assert pod["status"]["phase"] == "Pending"
    status = (await api.get("apps/v1", "Deployment", NS, "elsewhere") or {}).get("status", {})
    assert status.get("readyReplicas") == 0
    await api.delete("apps/v1", "Deployment", NS, "elsewhere")


def job(name: str, image: str, code: str, backoff: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "command": ["python", "-c", code],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                }
            },
        },
    }


async def test_jobs_complete_or_fail_after_their_back_off_limit(
    local_cluster: LocalCluster, api: Cluster
) -> None:
    image = local_cluster.runtime_image
    await api.create(job("works", image, "print('done')", backoff=0))
    await api.create(job("fails", image, "raise SystemExit('broken input')", backoff=1))

    async def finished(name: str) -> dict[str, Any] | None:
        obj = await api.get("batch/v1", "Job", NS, name)
        conditions = (obj or {}).get("status", {}).get("conditions", [])
        done = [c for c in conditions if c["type"] in ("Complete", "Failed")]
        return obj if done else None

    works = await eventually(lambda: finished("works"), "the good Job")
    assert works["status"]["succeeded"] == 1
    assert works["status"].get("completionTime")
    fails = await eventually(lambda: finished("fails"), "the bad Job")
    assert fails["status"]["failed"] == 2  # the first try and one retry
    failed = next(c for c in fails["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    pods_of_bad = await api.list("v1", "Pod", NS, {"job-name": "fails"})
    assert len(pods_of_bad) == 2
    terminated = pods_of_bad[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert "broken input" in terminated["message"]  # FallbackToLogsOnError
    for name in ("works", "fails"):
        await api.delete("batch/v1", "Job", NS, name)
