"""The demo's story on a real cluster: the operator and MinIO from manifests/overlays/dev, the
runtime image's pods run by a real kubelet, traffic through ``kubectl port-forward``.

Skipped (with the reason) where no real cluster can be had: see conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from modelops.local.s3server import free_port
from modelops.local.scenario import Result, Scenario
from modelops.local.view import PlainView
from modelops.storage import ArtifactStore

pytestmark = pytest.mark.kind
ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "modelops-system"


class RealCluster:
    """kubectl against one kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, timeout: float = 600) -> str:
        command = ["kubectl", "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done.stdout


class PortForwards:
    """``kubectl port-forward`` processes, one per service port, stopped at the end."""

    def __init__(self, cluster: RealCluster) -> None:
        self.cluster = cluster
        self.ports: dict[tuple[str, str, int], int] = {}
        self.processes: list[subprocess.Popen[bytes]] = []

    def local_port(self, namespace: str, service: str, port: int) -> int:
        key = (namespace, service, port)
        if key not in self.ports:
            local = free_port()
            process = subprocess.Popen(
                [
                    "kubectl", "--kubeconfig", str(self.cluster.kubeconfig), "-n", namespace,
                    "port-forward", f"svc/{service}", f"{local}:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.processes.append(process)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise LookupError(f"port-forward to {namespace}/{service} exited")
                try:
                    socket.create_connection(("127.0.0.1", local), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            self.ports[key] = local
        return self.ports[key]

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)


class KindBackend:
    """What the scenario needs, on a real cluster."""

    def __init__(self, cluster: RealCluster, forwards: PortForwards) -> None:
        self.cluster = cluster
        self.forwards = forwards

    def connection(self) -> kopf.ConnectionInfo:
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(self.cluster.kubeconfig)
        try:
            info = kopf.login_with_kubeconfig()
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG")
            else:
                os.environ["KUBECONFIG"] = previous
        assert info is not None
        return info

    def store(self) -> ArtifactStore:
        secret = json.loads(
            self.cluster.kubectl("-n", SYSTEM, "get", "secret", "modelops-s3", "-o", "json")
        )

        values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        port = self.forwards.local_port(SYSTEM, "minio", 9000)
        return ArtifactStore(
            f"127.0.0.1:{port}", values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
        )

    def service_url(self, name: str, namespace: str = "default", port: int | None = None) -> str:
        return f"http://127.0.0.1:{self.forwards.local_port(namespace, name, port or 8080)}"


@pytest.fixture(scope="module")
def installed(kind_kubeconfig: Path) -> Iterator[RealCluster]:
    real_cluster = RealCluster(kind_kubeconfig)
    real_cluster.kubectl("apply", "-k", str(ROOT / "manifests/overlays/dev"))
    real_cluster.kubectl(
        "-n", SYSTEM, "rollout", "status", "deploy/modelops-operator", "--timeout=600s"
    )
    real_cluster.kubectl("-n", SYSTEM, "rollout", "status", "statefulset/minio", "--timeout=600s")
    real_cluster.kubectl(
        "-n", SYSTEM, "wait", "--for=condition=complete", "job/minio-make-bucket", "--timeout=600s"
    )
    # Workload namespaces need the store's credentials too (docs/INSTALL.md).
    secret = json.loads(
        real_cluster.kubectl("-n", SYSTEM, "get", "secret", "modelops-s3", "-o", "json")
    )
    secret["metadata"] = {"name": "modelops-s3", "namespace": "default"}
    manifest = Path(os.environ.get("TMPDIR", "/tmp")) / "modelops-s3-default.json"
    manifest.write_text(json.dumps(secret))
    real_cluster.kubectl("apply", "-f", str(manifest))
    yield real_cluster


@pytest.mark.timeout(3600)
def test_drift_rolls_the_canary_back_on_a_real_cluster(installed: RealCluster) -> None:
    forwards = PortForwards(installed)
    try:
        scenario = Scenario(
            KindBackend(installed, forwards), PlainView(sys.stdout), stage_timeout=600
        )
        result: Result = asyncio.run(scenario.run())
    finally:
        forwards.close()
    assert result.problems() == []
    dep = result.objects["Deployment"]["iris"]["status"]
    assert (dep["phase"], dep["stableVersion"], dep["rejectedVersions"]) == (
        "RolledBack",
        "iris-v1",
        ["iris-v2"],
    )
    assert result.traffic.errors() == []
    assert {a.version for a in result.after} == {"iris-v1"}
    print(f"\nfirst drifted request -> rollback: {result.drift_to_rollback:.1f}s")
    columns = installed.kubectl("get", "mdep").splitlines()[0].split()
    assert columns[:7] == ["NAME", "MODEL", "STABLE", "CANARY", "WEIGHT", "PHASE", "READY"]
