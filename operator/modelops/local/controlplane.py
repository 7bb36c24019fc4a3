"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

The four components are the upstream code (``k8s.io/kubernetes`` v1.36 and the etcd server
its ``k8s.io/apiserver`` pins), linked into one binary by the Go module in
``operator/controlplane`` (``make controlplane`` builds it into ``bin/controlplane``); each runs
as its own process group, logging to ``<state_dir>/logs/<component>.log``.

``ControlPlane(state_dir).start()``:

1. makes the PKI (:mod:`modelops.local.pki`) and a kubeconfig per identity;
2. starts etcd (fresh data each start, no fsync: a test and demo harness) and waits for
   ``/health``;
3. starts kube-apiserver on ``127.0.0.1`` (secure port only, ``--authorization-mode=Node,RBAC``,
   service-account issuer and keys, service CIDR 10.96.0.0/16, ``NodeRestriction``) and waits
   for ``/readyz``;
4. starts kube-controller-manager (the controllers in :data:`CONTROLLERS`) and
   kube-scheduler, each with its own identity, and waits until the controller-manager has made
   the ``default`` ServiceAccount (the ServiceAccount admission plugin refuses pods before it).

Flags follow what kwok and controller-runtime's envtest pass on a loopback machine (the
sources are cited in ``shared/notes/real-control-plane.md``): with no default route the API
server needs ``--advertise-address``, and a loopback advertise address needs
``--endpoint-reconciler-type=none``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kopf
import yaml

from modelops.local import processes
from modelops.local.pki import Pki
from modelops.local.s3server import free_port

ROOT = Path(__file__).resolve().parents[3]
NODE_NAME = "local"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_NAME = "modelops-local"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# What the loop needs (Jobs, Deployments, EndpointSlices, garbage collection, namespaces,
# ServiceAccounts, quotas, HPA, node health); the rest of `*` only costs CPU here.
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "disruption-controller",
    "endpointslice-controller",
    "garbage-collector-controller",
    "pod-garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "resourcequota-controller",
    "clusterrole-aggregation-controller",
    "horizontal-pod-autoscaler-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane cannot start or stopped working; the message names the log to read."""


def default_binary() -> Path:
    """``$MODELOPS_CONTROLPLANE``, else ``<checkout>/bin/controlplane``.

    Raises:
        ControlPlaneError: no binary there (``make controlplane`` builds it).
    """
    path = Path(os.environ.get("MODELOPS_CONTROLPLANE") or ROOT / "bin" / "controlplane")
    if not path.is_file():
        raise ControlPlaneError(
            f"no control-plane binary at {path}: build it with `make controlplane` "
            "(needs Go 1.26 and the Go module proxy), or set MODELOPS_CONTROLPLANE"
        )
    return path


class ControlPlane(processes.Lifecycle):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, on free loopback ports."""

    def __init__(
        self,
        state_dir: Path,
        *,
        binary: Path | None = None,
        startup_timeout: float = 180.0,
        node_name: str = NODE_NAME,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.node_name = node_name
        self.pki = Pki(self.state_dir / "pki", node_name)
        self.port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started_at = 0.0
        self.ready_seconds = 0.0  # start() to /readyz and the default ServiceAccount

    # -- paths and credentials --

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def kubeconfig(self, identity: str = "admin") -> Path:
        """The kubeconfig of a PKI identity (``admin``, ``controller-manager``, ``scheduler``,
        ``node``, ``kube-proxy``), written at start."""
        return self.state_dir / f"{identity}.kubeconfig"

    def connection(self, identity: str = "admin") -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=self.url,
            ca_path=str(self.pki.ca_cert),
            certificate_path=str(self.pki.cert(identity)),
            private_key_path=str(self.pki.key(identity)),
        )

    def ssl_context(self, identity: str | None = "admin") -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if identity is not None:
            context.load_cert_chain(self.pki.cert(identity), self.pki.key(identity))
        return context

    # -- lifecycle --

    def _start(self) -> None:
        binary = self.binary or default_binary()
        self.started_at = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki.ensure()
        etcd_dir = self.state_dir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)  # a fresh cluster on every start
        etcd_port, peer_port = free_port(), free_port()
        self._spawn(
            binary,
            "etcd",
            f"--data-dir={etcd_dir}",
            f"--listen-client-url=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-url=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
        )
        self._wait("etcd", f"http://127.0.0.1:{etcd_port}/health", None)

        self.port = free_port()
        pki = self.pki
        self._spawn(
            binary,
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--allow-privileged=false",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
        )
        self._wait("kube-apiserver", f"{self.url}/readyz", self.ssl_context())
        for identity in ("admin", "controller-manager", "scheduler", "node", "kube-proxy"):
            self._write_kubeconfig(self.kubeconfig(identity), self._user(identity))

        kcm, scheduler = self.kubeconfig("controller-manager"), self.kubeconfig("scheduler")
        kcm_port, scheduler_port = free_port(), free_port()
        self._spawn(
            binary,
            "kube-controller-manager",
            f"--kubeconfig={kcm}",
            f"--authentication-kubeconfig={kcm}",
            f"--authorization-kubeconfig={kcm}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--cluster-name={CLUSTER_NAME}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            "--use-service-account-credentials=true",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
        )
        self._spawn(
            binary,
            "kube-scheduler",
            f"--kubeconfig={scheduler}",
            f"--authentication-kubeconfig={scheduler}",
            f"--authorization-kubeconfig={scheduler}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez",
            "--bind-address=127.0.0.1",
            f"--secure-port={scheduler_port}",
            "--leader-elect=false",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
        )
        self._wait_for(
            "the default ServiceAccount (made by kube-controller-manager)",
            lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
        )
        self.ready_seconds = time.monotonic() - self.started_at

    def stop(self) -> None:
        """Stop every component, newest first (SIGTERM, then SIGKILL); safe to call twice."""
        for name, process in reversed(list(self.processes.items())):
            processes.kill_group(process.pid, grace=10)
            process.wait()
            processes.untrack(process.pid)
            del self.processes[name]

    def failure(self) -> str | None:
        """Why the control plane cannot work any more (a component exited), or None."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return f"{name} exited ({process.returncode}): see {self.log_dir / name}.log"
        return None

    def memory_bytes(self) -> dict[str, int]:
        """Resident memory of each component, from ``/proc/<pid>/status`` (VmRSS)."""
        found = {}
        for name, process in self.processes.items():
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    found[name] = int(line.split()[1]) * 1024
        return found

    def version(self) -> dict[str, Any]:
        """The API server's ``/version`` document."""
        found = self.get("/version")
        assert found is not None
        return found

    # -- a small synchronous client (start-up, tokens); controllers use their own --

    def request(
        self, method: str, path: str, body: Any = None, *, identity: str = "admin"
    ) -> dict[str, Any]:
        """One API call as ``identity``; raises ``urllib.error.HTTPError`` for 4xx/5xx."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            content = "application/merge-patch+json" if method == "PATCH" else "application/json"
            request.add_header("Content-Type", content)
        with urllib.request.urlopen(
            request, timeout=30, context=self.ssl_context(identity)
        ) as response:
            text = response.read()
        result: dict[str, Any] = json.loads(text) if text else {}
        return result

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 86400
    ) -> str:
        """A token of the ServiceAccount from the TokenRequest API (as the kubelet gets one)."""
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        return str(answer["status"]["token"])

    def write_service_account_kubeconfig(
        self, path: Path, namespace: str, name: str, *, expiration_seconds: int = 86400
    ) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (its RBAC is what it gets)."""
        token = self.service_account_token(namespace, name, expiration_seconds=expiration_seconds)
        self._write_kubeconfig(path, {"token": token})
        return path

    # -- internals --

    def _user(self, identity: str) -> dict[str, str]:
        return {
            "client-certificate-data": _b64(self.pki.cert(identity).read_bytes()),
            "client-key-data": _b64(self.pki.key(identity).read_bytes()),
        }

    def _write_kubeconfig(self, path: Path, user: dict[str, str]) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CLUSTER_NAME,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": _b64(self.pki.ca_cert.read_bytes()),
                    },
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [
                {"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": "user"}}
            ],
            "current-context": CLUSTER_NAME,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _spawn(self, binary: Path, component: str, *args: str) -> None:
        with (self.log_dir / f"{component}.log").open("ab") as log:
            process = subprocess.Popen(
                [str(binary), component, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=processes.child_setup(),
            )
        processes.track(process.pid, component)
        self.processes[component] = process

    def _wait(self, component: str, url: str, context: ssl.SSLContext | None) -> None:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self._wait_for(f"{component} at {url}", ready)

    def _wait_for(self, what: str, probe: Any) -> None:
        deadline = self.started_at + self.startup_timeout
        while time.monotonic() < deadline:
            if (failed := self.failure()) is not None:
                raise ControlPlaneError(f"waiting for {what}: {failed}")
            try:
                if probe():
                    return
            except (urllib.error.URLError, OSError):
                pass  # not serving yet, or RBAC still bootstrapping (403)
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{what} not ready {self.startup_timeout:.0f} s after start: see {self.log_dir}"
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
