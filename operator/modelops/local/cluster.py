"""The local cluster: a real control plane, an S3 server, the process kubelet, the operator.

``LocalCluster(state_dir).start()`` brings up, in order:

1. the control plane (:class:`~modelops.local.controlplane.ControlPlane`: etcd,
   kube-apiserver with RBAC, kube-controller-manager, kube-scheduler), with the admin
   kubeconfig at ``<state_dir>/kubeconfig``;
2. an S3 server (``weed mini``) with the bucket, and the Secret ``modelops-s3`` in
   ``modelops-system`` and ``default``;
3. the process kubelet (its own thread and event loop): the Node ``local``, whose pods run as
   local processes; Services get loopback addresses (``<state_dir>/services.json``);
4. ``manifests/overlays/local`` (the shipped ``manifests/base``: CRDs, namespace, RBAC, the
   operator's Deployment, with local image names), applied with ``kubectl apply
   --server-side``. The operator then runs as the Deployment's pod, with its own
   ServiceAccount token, so the shipped ClusterRole is all it can do; if it dies, the kubelet
   restarts it and the ReplicaSet replaces a deleted pod, as on any cluster.

With ``operator=False`` the operator's Deployment is left out (the integration tests run the
operator themselves, one per namespace, with the same ServiceAccount's token).

``stop()`` undoes it all, and is safe to call twice or after a failed start. Every process is
in its own process group and recorded in :mod:`modelops.local.processes`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import kopf
import yaml

from modelops.controllers.cluster import Cluster
from modelops.local import processes
from modelops.local.controlplane import ROOT, ControlPlane, ControlPlaneError
from modelops.local.kubelet import KubeletConfig, ProcessKubelet
from modelops.local.s3server import S3Server
from modelops.storage import ArtifactStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

RUNTIME_IMAGE = "modelops-runtime:local"
OPERATOR_IMAGE = "modelops-operator:local"
# What each image runs when a container names no command (the images' ENTRYPOINT/CMD).
IMAGES = {
    RUNTIME_IMAGE: ["python", "-m", "modelops", "--help"],
    OPERATOR_IMAGE: ["python", "-m", "modelops", "run"],
}
OVERLAY = ROOT / "manifests" / "overlays" / "local"
BUCKET = "modelops"
SECRET = "modelops-s3"
NAMESPACE = "default"
SYSTEM_NAMESPACE = "modelops-system"
OPERATOR = "modelops-operator"
# Where the shipped settings say the store is: pods carrying this address reach the local one.
IN_CLUSTER_S3 = "minio.modelops-system.svc:9000"


class LocalCluster(processes.Lifecycle):
    def __init__(
        self,
        state_dir: Path,
        *,
        operator: bool = True,
        startup_timeout: float = 180.0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.with_operator = operator
        self.startup_timeout = startup_timeout
        self.control_plane = ControlPlane(
            self.state_dir / "controlplane", startup_timeout=startup_timeout
        )
        self.s3: S3Server | None = None
        self.kubelet: ProcessKubelet | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._log_handler: logging.Handler | None = None

    # -- paths --

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (``system:masters``)."""
        return self.state_dir / "kubeconfig"

    @property
    def services_file(self) -> Path:
        return self.state_dir / "services.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def store(self) -> ArtifactStore:
        assert self.s3 is not None, "the cluster is not started"
        return self.s3.store()

    # -- lifecycle --

    def _start(self) -> None:
        for stale in ("pods", "s3", "logs"):  # a fresh cluster: etcd starts empty too
            shutil.rmtree(self.state_dir / stale, ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.log_dir / "local.log")
        self._log_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        local_logger = logging.getLogger("modelops.local")
        local_logger.addHandler(self._log_handler)
        local_logger.setLevel(logging.INFO)

        # 1: the control plane
        self.control_plane.start()
        shutil.copyfile(self.control_plane.kubeconfig("admin"), self.kubeconfig)
        self.kubeconfig.chmod(0o600)

        # 2: the object store
        self.s3 = S3Server(self.state_dir / "s3", startup_timeout=self.startup_timeout)
        self.s3.start()
        if self.s3.process is not None:
            processes.track(self.s3.process.pid, "s3 server")
        self.s3.store().ensure_bucket(BUCKET)

        # 3: the node
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="local-kubelet", daemon=True
        )
        self._thread.start()
        self._call(self._start_kubelet())

        # 4: the shipped manifests, the operator among them
        self._apply_manifests()
        for namespace in (SYSTEM_NAMESPACE, NAMESPACE):
            self._call(self._ensure_secret(namespace))
        if self.with_operator:
            self._wait_operator_available()

    def stop(self) -> None:
        """Stop everything started, newest first; never raises for what is already gone."""
        if self._loop is not None and self._thread is not None:
            try:
                self._call(self._stop_kubelet(), timeout=60)
            except Exception:
                logger.exception("stopping the kubelet failed; stopping what remains")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()
        self._loop = self._thread = None
        self.kubelet = None
        if self.s3 is not None:
            pid = self.s3.process.pid if self.s3.process else None
            self.s3.stop()
            if pid is not None:
                processes.untrack(pid)
            self.s3 = None
        self.control_plane.stop()
        if self._log_handler is not None:
            logging.getLogger("modelops.local").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the kubelet's loop and wait for its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout if timeout is not None else self.startup_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _kubelet_config(self) -> KubeletConfig:
        """The node's configuration: its identities from the PKI, the images, the aliases."""
        assert self.s3 is not None
        pki = self.control_plane.pki
        return KubeletConfig(
            api_url=self.control_plane.url,
            ca_file=pki.ca_cert,
            client_cert=pki.cert("node"),
            client_key=pki.key("node"),
            proxy_cert=pki.cert("kube-proxy"),
            proxy_key=pki.key("kube-proxy"),
            serving_cert=pki.cert("kubelet-serving"),
            serving_key=pki.key("kubelet-serving"),
            node_name=self.control_plane.node_name,
            state_dir=self.state_dir,
            images=IMAGES,
            aliases={IN_CLUSTER_S3: self.s3.endpoint},
            services_file=self.services_file,
            pod_env={},
        )

    async def _start_kubelet(self) -> None:
        self.kubelet = ProcessKubelet(self._kubelet_config())
        await self.kubelet.start()

    async def _stop_kubelet(self) -> None:
        if self.kubelet is not None:
            await self.kubelet.stop()

    def _apply_manifests(self) -> None:
        """``kubectl kustomize`` the local overlay, then server-side apply it as admin."""
        docs = [d for d in yaml.safe_load_all(_kubectl("kustomize", str(OVERLAY))) if d]
        if not self.with_operator:
            docs = [
                d for d in docs if (d["kind"], d["metadata"]["name"]) != ("Deployment", OPERATOR)
            ]
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
        kubeconfig = str(self.kubeconfig)
        _kubectl("--kubeconfig", kubeconfig, "apply", "--server-side", "-f", "-", input=crds)
        names = [f"crd/{d['metadata']['name']}" for d in crds]
        _kubectl(
            "--kubeconfig",
            kubeconfig,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *names,
        )
        _kubectl("--kubeconfig", kubeconfig, "apply", "--server-side", "-f", "-", input=rest)

    async def _ensure_secret(self, namespace: str) -> None:
        assert self.s3 is not None
        async with _admin(self) as cluster:
            await cluster.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": SECRET, "namespace": namespace},
                    "type": "Opaque",
                    "data": {
                        "AWS_ACCESS_KEY_ID": _b64(self.s3.access_key),
                        "AWS_SECRET_ACCESS_KEY": _b64(self.s3.secret_key),
                    },
                }
            )

    def _wait_operator_available(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        path = f"/apis/apps/v1/namespaces/{SYSTEM_NAMESPACE}/deployments/{OPERATOR}"
        while time.monotonic() < deadline:
            if (why := self.failure()) is not None:
                raise ControlPlaneError(why)
            found = self.control_plane.get(path) or {}
            if (found.get("status") or {}).get("availableReplicas"):
                return
            time.sleep(0.3)
        raise ControlPlaneError(
            f"the operator's Deployment was not available in {self.startup_timeout:.0f} s: "
            f"`kubectl --kubeconfig {self.kubeconfig} -n {SYSTEM_NAMESPACE} describe pods` "
            f"and {self.state_dir / 'pods' / SYSTEM_NAMESPACE}"
        )

    # -- what the demo, the tests and users need --

    def failure(self) -> str | None:
        """Why the cluster cannot work any more (a process it needs exited), or None."""
        if (why := self.control_plane.failure()) is not None:
            return why
        if (
            self.s3 is not None
            and self.s3.process is not None
            and self.s3.process.poll() is not None
        ):
            return f"the S3 server exited: see {self.s3.data_dir / 'weed.log'}"
        if self._thread is not None and not self._thread.is_alive():
            return "the kubelet's thread ended"
        return None

    def connection(self) -> kopf.ConnectionInfo:
        """Admin credentials for the API server."""
        return self.control_plane.connection("admin")

    def operator_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig with a token of the operator's ServiceAccount (the shipped RBAC)."""
        return self.control_plane.write_service_account_kubeconfig(path, SYSTEM_NAMESPACE, OPERATOR)

    @property
    def api_url(self) -> str:
        return self.control_plane.url

    def service_url(self, name: str, namespace: str = NAMESPACE, port: int | None = None) -> str:
        """``http://127.0.0.1:<port>`` of a Service, once the kubelet has given it one."""
        assert self.kubelet is not None, "the cluster is not started"
        address = self.kubelet.service_address(namespace, name, port)
        if address is None:
            raise LookupError(f"service {namespace}/{name} has no local address (yet)")
        return f"http://{address}"

    def info(self) -> dict[str, Any]:
        """How to reach everything, as ``modelops local up`` writes it to ``local.json``."""
        assert self.s3 is not None
        return {
            "pid": os.getpid(),
            "api": self.api_url,
            "kubeconfig": str(self.kubeconfig),
            "services": str(self.services_file),
            "s3": {
                "endpoint": self.s3.endpoint,
                "bucket": BUCKET,
                "accessKey": self.s3.access_key,
                "secretKey": self.s3.secret_key,
            },
            "runtimeImage": RUNTIME_IMAGE,
            "logs": str(self.log_dir),
            "controlPlaneLogs": str(self.control_plane.log_dir),
        }


class _admin:
    """``async with _admin(cluster) as client``: an admin API client, closed after use."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.client = Cluster(cluster.connection())

    async def __aenter__(self) -> Cluster:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


def _kubectl(*args: str, input: list[dict[str, Any]] | None = None) -> str:
    """Run kubectl; raise ControlPlaneError with its stderr when it fails."""
    binary = shutil.which("kubectl")
    if binary is None:
        raise ControlPlaneError(
            "kubectl is not on PATH (the local cluster applies manifests with it)"
        )
    text = yaml.safe_dump_all(input) if input is not None else None
    done = subprocess.run(
        [binary, *args], input=text, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args[:4])} failed: {done.stderr.strip()}")
    return done.stdout


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
