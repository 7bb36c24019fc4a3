"""The process kubelet as the node of a real control plane.

The real controller-manager runs Jobs, ReplicaSets, Deployments and EndpointSlices, the real
scheduler binds pods to the node; the kubelet only runs them as local processes and reports.
A tiny HTTP server (``python -c``) stands in for a workload: it answers with its pod's name and
env, so the tests see which pod answered and what it was given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from modelops.controllers.cluster import Cluster
from modelops.local.controlplane import ControlPlane, ControlPlaneError, default_binary
from modelops.local.kubelet import KubeletConfig, ProcessKubelet
from support.operator import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

IMAGE = "modelops-runtime:local"
STORE_ALIAS = ("minio.modelops-system.svc:9000", "127.0.0.1:19000")

SERVER = """
import http.server, json, os, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        keys = ("POD_NAME", "POD_NAMESPACE", "POD_IP", "ACCESS_KEY", "HOME", "PEER", "STORE")
        body = json.dumps({k: os.environ.get(k) for k in keys}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving on", port, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

# Asks the API server who the pod is, with the kubeconfig the kubelet gave it.
WHOAMI = """
import json, os, ssl, urllib.request, yaml
config = yaml.safe_load(open(os.environ["KUBECONFIG"]))
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
request = urllib.request.Request(
    cluster["server"] + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    .encode(),
    headers={"Authorization": "Bearer " + user["token"], "Content-Type": "application/json"},
)
context = ssl.create_default_context(cafile=cluster["certificate-authority"])
answer = json.load(urllib.request.urlopen(request, context=context))
print("user:", answer["status"]["userInfo"]["username"])
"""


# -- fixtures --


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        default_binary()
    except ControlPlaneError as exc:
        pytest.skip(str(exc))
    with ControlPlane(tmp_path_factory.mktemp("control-plane")) as plane:
        yield plane


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kubelet(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ProcessKubelet]:
    pki, state = control_plane.pki, tmp_path_factory.mktemp("kubelet")
    proxy: tuple[Path, Path] | None = (pki.cert("kube-proxy"), pki.key("kube-proxy"))
    if not pki.cert("kube-proxy").exists():
        # No kube-proxy identity in this PKI: let the node read what kube-proxy reads.
        proxy = None
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "modelops-local:node-proxier"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node-proxier",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": f"system:node:{control_plane.node_name}",
                }
            ],
        }
        path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        await asyncio.to_thread(control_plane.request, "POST", path, binding)
    node = ProcessKubelet(
        KubeletConfig(
            api_url=control_plane.url,
            ca_file=pki.ca_cert,
            client_cert=pki.cert("node"),
            client_key=pki.key("node"),
            serving_cert=pki.cert("kubelet-serving"),
            serving_key=pki.key("kubelet-serving"),
            node_name=control_plane.node_name,
            state_dir=state,
            images={IMAGE: ["python", "-m", "modelops"]},
            aliases=dict([STORE_ALIAS]),
            services_file=state / "services.json",
            pod_env={},
            grace_max=5.0,
            proxy_cert=proxy[0] if proxy else None,
            proxy_key=proxy[1] if proxy else None,
        )
    )
    await node.start()
    yield node
    await node.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(control_plane: ControlPlane) -> AsyncIterator[Cluster]:
    client = Cluster(control_plane.connection("admin"))
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="module")
async def ns(
    control_plane: ControlPlane, kubelet: ProcessKubelet, api: Cluster
) -> AsyncIterator[str]:
    """A fresh namespace, once the controller-manager has made its ``default`` ServiceAccount.

    Deleted after the test (not waited for): the namespace controller deletes its pods and
    the kubelet stops them.
    """
    name = f"t-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await asyncio.to_thread(control_plane.request, "POST", "/api/v1/namespaces", body)
    await eventually(
        lambda: api.get("v1", "ServiceAccount", name, "default"), what="the default SA"
    )
    yield name
    await asyncio.to_thread(control_plane.request, "DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="module")
def kubectl(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not on PATH")
    cache = tmp_path_factory.mktemp("kubectl-cache")

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [binary, "--kubeconfig", str(control_plane.kubeconfig("admin"))]
        command += ["--cache-dir", str(cache), *args]
        return await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )

    return run


# -- objects --


def echo_deployment(ns: str, name: str = "echo", image: str = IMAGE, replicas: int = 2) -> Any:
    labels = {"app": name}
    container = {
        "name": "echo",
        "image": image,
        "command": ["python", "-c", SERVER],
        "args": ["--port", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "HOME", "value": "/tmp"},
            # In-cluster addresses: a Service's DNS name, and an aliased store address.
            {"name": "PEER", "value": f"http://echo.{ns}.svc.cluster.local:80/x"},
            {"name": "STORE", "value": STORE_ALIAS[0]},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": "store", "key": "AWS_ACCESS_KEY_ID"}},
            },
        ],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                    "terminationGracePeriodSeconds": 2,
                },
            },
        },
    }


def echo_service(ns: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {
            "selector": {"app": "echo"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def store_secret(ns: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "store", "namespace": ns},
        "stringData": {"AWS_ACCESS_KEY_ID": "the-key"},
    }


def job(ns: str, name: str, code: str, backoff: int = 0) -> Any:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": IMAGE,
                            "command": ["python", "-c", code],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                }
            },
        },
    }


def bare_pod(ns: str, name: str, code: str, image: str = IMAGE, **spec: Any) -> Any:
    container = {"name": "main", "image": image, "command": ["python", "-c", code]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [container], **spec},
    }


async def finished_job(api: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    obj = await api.get("batch/v1", "Job", ns, name)
    conditions = (obj or {}).get("status", {}).get("conditions", [])
    done = [c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
    return obj if done else None


async def deployment_available(api: Cluster, ns: str, name: str, replicas: int) -> Any:
    dep = await api.get("apps/v1", "Deployment", ns, name)
    status = (dep or {}).get("status", {})
    available = any(
        c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", [])
    )
    return dep if available and status.get("readyReplicas") == replicas else None


async def pod_phase(api: Cluster, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    pod = await api.get("v1", "Pod", ns, name)
    return pod if pod and pod.get("status", {}).get("phase") == phase else None


def exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is gone as far as work goes
        return handle.read().rsplit(")", 1)[1].split()[0] == "Z"


# -- the node --


async def test_the_node_registers_ready_and_renews_its_lease(
    kubelet: ProcessKubelet, control_plane: ControlPlane
) -> None:
    name = control_plane.node_name
    node = control_plane.get(f"/api/v1/nodes/{name}")
    assert node is not None
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert not node["spec"].get("taints")
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kubelet.port
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
    first = (control_plane.get(lease_path) or {})["spec"]["renewTime"]

    async def renewed() -> bool:
        lease = await asyncio.to_thread(control_plane.get, lease_path)
        return bool(lease and lease["spec"]["renewTime"] != first)

    await eventually(renewed, timeout=25, what="the Lease to be renewed")


# -- Jobs --


async def test_a_job_completes_through_the_job_controller(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(job(ns, "works", "print(1)"))
    done = await eventually(lambda: finished_job(api, ns, "works"), what="the Job to finish")
    assert done["status"]["succeeded"] == 1
    assert any(c["type"] == "Complete" for c in done["status"]["conditions"])
    [pod] = await api.list("v1", "Pod", ns, {"job-name": "works"})
    assert pod["status"]["phase"] == "Succeeded"  # terminated pods stay as objects
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network("10.244.0.0/16")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")


async def test_a_failing_job_fails_with_its_logs_as_termination_message(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(job(ns, "fails", "raise SystemExit('broken input')"))
    failed = await eventually(lambda: finished_job(api, ns, "fails"), what="the Job to fail")
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "BackoffLimitExceeded"
    [pod] = await api.list("v1", "Pod", ns, {"job-name": "fails"})
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert "broken input" in terminated["message"]  # FallbackToLogsOnError


# -- Deployments and Services --


async def test_a_deployment_becomes_available_behind_its_service_address(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(store_secret(ns))
    await api.create(echo_service(ns))

    async def address() -> str | None:
        return kubelet.service_address(ns, "echo")

    await eventually(address, what="a loopback address for the Service")
    await api.create(echo_deployment(ns))
    await eventually(
        lambda: deployment_available(api, ns, "echo", 2), what="2 available replicas", timeout=90
    )
    pods = await api.list("v1", "Pod", ns, {"app": "echo"})
    url = f"http://{kubelet.service_address(ns, 'echo', 80)}"
    names = {p["metadata"]["name"] for p in pods}

    async def both_answer() -> list[dict[str, Any]] | None:
        async with aiohttp.ClientSession() as session:
            answers = [await (await session.get(url)).json() for _ in range(6)]
        return answers if {a.get("POD_NAME") for a in answers} == names else None

    answers = await eventually(both_answer, what="both pods behind the Service")
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    assert all(a["POD_IP"] == ips[a["POD_NAME"]] for a in answers)  # the downward API
    assert {a["POD_NAMESPACE"] for a in answers} == {ns}
    assert {a["ACCESS_KEY"] for a in answers} == {"the-key"}  # a Secret the node may read
    assert all(a["HOME"].endswith("/volumes/tmp") for a in answers)  # mounts are per-pod dirs
    assert {a["PEER"] for a in answers} == {f"{url}/x"}  # Service DNS names to loopback
    assert {a["STORE"] for a in answers} == {STORE_ALIAS[1]}  # aliases to loopback
    services = kubelet.services()[f"{ns}/echo"]["80"]
    assert services["url"] == url


async def test_deleting_a_deployment_removes_its_pods_and_processes(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(store_secret(ns))
    await api.create(echo_service(ns))
    await api.create(echo_deployment(ns))
    await eventually(
        lambda: deployment_available(api, ns, "echo", 2), what="2 available replicas", timeout=90
    )
    pids = [p.process.pid for p in kubelet.pods.values() if p.namespace == ns and p.process]
    assert len(pids) == 2
    # The garbage collector deletes the ReplicaSet, then its pods; the kubelet stops them.
    await api.delete("apps/v1", "Deployment", ns, "echo")

    async def no_pods() -> bool:
        return not await api.list("v1", "Pod", ns, {"app": "echo"})

    await eventually(no_pods, what="the echo pods to be deleted", timeout=60)
    assert all(exited(pid) for pid in pids)
    assert not [p for p in kubelet.pods.values() if p.namespace == ns]
    async with aiohttp.ClientSession() as session:
        address = kubelet.service_address(ns, "echo")
        async with session.get(f"http://{address}/") as response:
            assert response.status == 503  # the Service has no ready endpoint left


# -- pods --


async def test_kubectl_logs_reads_a_pods_output_through_the_api_server(
    kubelet: ProcessKubelet, api: Cluster, ns: str, kubectl: Any
) -> None:
    await api.create(bare_pod(ns, "talker", "print('hello from the pod')", restartPolicy="Never"))
    await eventually(lambda: pod_phase(api, ns, "talker", "Succeeded"), what="the pod to end")
    done = await kubectl("logs", "-n", ns, "talker")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the pod\n"
    missing = await kubectl("logs", "-n", ns, "talker", "-c", "nope")
    assert missing.returncode != 0


async def test_a_pod_talks_to_the_api_server_as_its_service_account(
    kubelet: ProcessKubelet, api: Cluster, ns: str, kubectl: Any
) -> None:
    await api.create(bare_pod(ns, "whoami", WHOAMI, restartPolicy="Never"))
    await eventually(lambda: pod_phase(api, ns, "whoami", "Succeeded"), what="the pod to end")
    done = await kubectl("logs", "-n", ns, "whoami")
    assert done.stdout.strip() == f"user: system:serviceaccount:{ns}:default"


async def test_a_crashing_container_is_restarted_with_back_off(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(bare_pod(ns, "crasher", "import sys; sys.exit(3)"))

    async def restarted() -> dict[str, Any] | None:
        pod = await api.get("v1", "Pod", ns, "crasher")
        status = ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0]
        return status if status.get("restartCount", 0) >= 2 else None

    status = await eventually(restarted, what="two restarts")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["ready"] is False


async def test_a_pod_of_another_image_waits_with_err_image_pull(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(bare_pod(ns, "elsewhere", "print(1)", image="nginx:1.27"))

    async def pulled() -> dict[str, Any] | None:
        pod = await api.get("v1", "Pod", ns, "elsewhere")
        status = ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0]
        waiting = status.get("state", {}).get("waiting", {})
        return pod if waiting.get("reason") == "ErrImagePull" else None

    pod = await eventually(pulled, what="ErrImagePull")
    assert pod["status"]["phase"] == "Pending"
    assert "nginx:1.27" in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]


async def test_a_deleted_pod_is_stopped_and_removed_not_left_terminating(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(bare_pod(ns, "sleeper", "import time; time.sleep(600)"))
    await eventually(lambda: pod_phase(api, ns, "sleeper", "Running"), what="the pod to run")
    [local] = [p for p in kubelet.pods.values() if p.key == (ns, "sleeper")]
    assert local.process is not None
    await api.delete("v1", "Pod", ns, "sleeper")

    async def gone() -> bool:
        return await api.get("v1", "Pod", ns, "sleeper") is None

    await eventually(gone, what="the pod object to go", timeout=30)
    assert exited(local.process.pid)


SLOW_SERVER = """
import http.server, sys, time
time.sleep(float(sys.argv[sys.argv.index('--delay') + 1]))
port = int(sys.argv[sys.argv.index('--port') + 1])
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(('127.0.0.1', port), Ok).serve_forever()
"""


def slow_pod(ns: str, name: str, delay: float, startup_failures: int) -> Any:
    pod = bare_pod(ns, name, SLOW_SERVER)
    container = pod["spec"]["containers"][0]
    probe = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
    container |= {
        "args": ["--port", "8080", "--delay", str(delay)],
        "ports": [{"name": "http", "containerPort": 8080}],
        # Alone, this liveness probe would kill the server before it listens.
        "livenessProbe": probe | {"failureThreshold": 1},
        "startupProbe": probe | {"failureThreshold": startup_failures},
    }
    return pod


async def container_status(api: Cluster, ns: str, name: str) -> dict[str, Any]:
    pod = await api.get("v1", "Pod", ns, name)
    return dict(((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0])


async def test_a_slow_start_is_covered_by_the_startup_probe_not_restarted(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(slow_pod(ns, "slow", delay=3, startup_failures=60))

    async def ready() -> dict[str, Any] | None:
        status = await container_status(api, ns, "slow")
        return status if status.get("ready") else None

    status = await eventually(ready, what="the slow server ready", timeout=60)
    assert status["restartCount"] == 0


async def test_a_startup_probe_that_never_passes_restarts_the_container(
    kubelet: ProcessKubelet, api: Cluster, ns: str
) -> None:
    await api.create(slow_pod(ns, "never", delay=3600, startup_failures=2))

    async def restarted() -> dict[str, Any] | None:
        status = await container_status(api, ns, "never")
        return status if status.get("restartCount", 0) >= 1 else None

    status = await eventually(restarted, what="a restart after the startup probe", timeout=60)
    assert status["ready"] is False
