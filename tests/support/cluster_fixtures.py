"""Fixtures of the integration and fault tiers: per test package one real control plane +
kubelet + S3 server (the local cluster without its operator), and a namespace per test.

Registered for every test by ``tests/conftest.py``; a package-scoped fixture is made once for
each test package that asks for it (``tests/integration``, ``tests/faults``).

The local cluster runs without its operator; each test that needs one starts the real
operator process scoped to the test's namespace (``MODELOPS_NAMESPACES``), logged in with a
token of the shipped ServiceAccount ``modelops-system/modelops-operator``, so the shipped
ClusterRole is exactly what it may do.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.cluster import BUCKET, SECRET, LocalCluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.models import iris_frame
from support.operator import OperatorProcess, eventually


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
    proc = OperatorProcess(
        operator_kubeconfig, s3, tmp_path / "logs", MODELOPS_NAMESPACES=namespace
    )
    proc.start()
    yield proc
    crashed = proc.starts and not proc.alive() and proc.process is not None
    proc.stop()
    assert not crashed, f"the operator exited by itself:\n{proc.logs()[-3000:]}"
