"""Fixtures of the integration and fault tiers: per test package one real control plane +
kubelet + S3 server (the local cluster without its operator), and a namespace per test.

Registered for every test by ``tests/conftest.py``; a package-scoped fixture is made once for
each test package that asks for it (``tests/integration``, ``tests/faults``).

The local cluster runs without its operator; each test that needs one starts the real
operator process scoped to the test's namespace (``MODELOPS_NAMESPACES``), logged in with a
token of the shipped ServiceAccount ``modelops-system/modelops-operator``, so the shipped
ClusterRole is exactly what it may do.

Also here, what several test modules share: ``kubectl`` as cluster admin, Gateway API's
HTTPRoute kind (``gateway_api``), the shipped samples (``sample``), ``assert_refused_at_apply``
and ``add_version``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.cluster import BUCKET, SECRET, LocalCluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.models import iris_frame, model_version
from support.operator import UNRUNNABLE_IMAGE, OperatorProcess, eventually, supervised

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="package")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), operator=False) as cluster:
        store = cluster.store()
        frame = iris_frame()
        store.put(Location(BUCKET, "datasets/iris.csv"), frame.to_csv(index=False).encode())
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        store.put(Location(BUCKET, "datasets/iris.parquet"), buffer.getvalue())
        yield cluster


@pytest.fixture(scope="package")
def s3(local_cluster: LocalCluster) -> S3Server:
    assert local_cluster.s3 is not None
    return local_cluster.s3


@pytest.fixture
async def admin(local_cluster: LocalCluster) -> AsyncIterator[Cluster]:
    """An API client with cluster-admin rights (the test's own hands, not the operator's)."""
    client = Cluster(local_cluster.connection())
    yield client
    await client.close()


@pytest.fixture
async def namespace(admin: Cluster, s3: S3Server) -> AsyncIterator[str]:
    """A fresh namespace with its ``default`` ServiceAccount and the store's Secret."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    async def default_account() -> bool:
        return await admin.get("v1", "ServiceAccount", name, "default") is not None

    await eventually(default_account, what=f"the default ServiceAccount of {name}")
    await admin.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": name},
            "stringData": {
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            },
        }
    )
    yield name
    with contextlib.suppress(ApiError):  # already going
        await admin.delete("v1", "Namespace", None, name)


@pytest.fixture
async def cluster(admin: Cluster, namespace: str) -> Cluster:
    """The admin client, once the test's namespace exists."""
    return admin


@pytest.fixture
def operator_kubeconfig(local_cluster: LocalCluster, tmp_path: Path) -> Path:
    return local_cluster.operator_kubeconfig(tmp_path / "operator.kubeconfig")


@pytest.fixture
async def operator(
    operator_kubeconfig: Path, s3: S3Server, namespace: str, tmp_path: Path
) -> AsyncIterator[OperatorProcess]:
    """The real operator, scoped to the test's namespace; its serving pods run."""
    proc = OperatorProcess(
        operator_kubeconfig, s3, tmp_path / "logs", MODELOPS_NAMESPACES=namespace
    )
    with supervised(proc):
        yield proc


@pytest.fixture
async def operator_without_pods(
    operator_kubeconfig: Path, s3: S3Server, namespace: str, tmp_path: Path
) -> AsyncIterator[OperatorProcess]:
    """The real operator, but its serving pods never run (``UNRUNNABLE_IMAGE``): the test
    writes their reports and windows."""
    proc = OperatorProcess(
        operator_kubeconfig,
        s3,
        tmp_path / "logs",
        MODELOPS_NAMESPACES=namespace,
        MODELOPS_RUNTIME_IMAGE=UNRUNNABLE_IMAGE,
    )
    with supervised(proc):
        yield proc


def _kubectl(
    kubeconfig: Path, cache: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubectl")
    assert binary is not None, "kubectl is needed by the local cluster itself"
    command = [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args]
    return subprocess.run(
        command, input=input, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def kubectl(local_cluster: LocalCluster, tmp_path: Path) -> Kubectl:
    """``kubectl(*args, input=None)`` as cluster admin; returns the completed process."""

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return _kubectl(local_cluster.kubeconfig, tmp_path / "kubectl-cache", *args, input=input)

    return run


def assert_refused_at_apply(kubectl: Kubectl, doc: dict[str, Any], message: str) -> None:
    """``kubectl apply --validate=strict`` of ``doc`` fails saying ``message``, and nothing of
    its kind is stored in its namespace."""
    done = kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(doc))
    assert done.returncode != 0, f"the server accepted an invalid {doc['kind']}"
    assert message in done.stderr, done.stderr
    kind = doc["kind"].lower() + "s.modelops.dev"
    namespace = doc["metadata"]["namespace"]
    assert kubectl("get", kind, "-n", namespace, "-o", "name").stdout == ""


# Gateway API is not part of Kubernetes: a cluster that routes through it has its CRDs. The
# operator only applies HTTPRoutes, so the smallest structural CRD of the kind will do.
HTTPROUTE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": "httproutes.gateway.networking.k8s.io",
        # The group ends in k8s.io: the API server asks for an approved API's annotation.
        "annotations": {
            "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"
        },
    },
    "spec": {
        "group": "gateway.networking.k8s.io",
        "scope": "Namespaced",
        "names": {
            "kind": "HTTPRoute",
            "listKind": "HTTPRouteList",
            "plural": "httproutes",
            "singular": "httproute",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}

# The GRPCRoute beside it (the same model over gRPC): the same CRD but for its names.
GRPCROUTE_CRD: dict[str, Any] = json.loads(
    json.dumps(HTTPROUTE_CRD).replace("HTTPRoute", "GRPCRoute").replace("httproute", "grpcroute")
)


@pytest.fixture(scope="package")
def gateway_api(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gateway API's HTTPRoute and GRPCRoute kinds, as a cluster using gateway routing has them.

    Left installed: the cluster is the package's and goes with it, and removing it while
    another module's tests route through it would race them.
    """
    cache = tmp_path_factory.mktemp("kubectl-cache")
    for crd in (HTTPROUTE_CRD, GRPCROUTE_CRD):
        name = crd["metadata"]["name"]
        for args, input in (
            (["apply", "--server-side", "--force-conflicts", "-f", "-"], json.dumps(crd)),
            (["wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}"], None),
        ):
            done = _kubectl(local_cluster.kubeconfig, cache, *args, input=input)
            assert done.returncode == 0, done.stderr


def sample(name: str, namespace: str) -> dict[str, Any]:
    """The shipped sample ``manifests/samples/<name>``, placed in ``namespace``."""
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


async def add_version(
    cluster: Cluster, namespace: str, summary: dict[str, Any], n: int, name: str | None = None
) -> str:
    """Create ModelVersion ``iris-v<n>`` (or ``name``) of a trained ``summary``; return its
    name once it is Ready."""
    version = model_version(summary, n, namespace)
    if name is not None:
        version["metadata"]["name"] = name
    await cluster.create(version)
    name = version["metadata"]["name"]

    async def ready() -> bool:
        mv = await cluster.get(API_VERSION, "ModelVersion", namespace, name)
        return bool(mv and mv.get("status", {}).get("phase") == "Ready")

    await eventually(ready, what=f"{name} Ready")
    return name
