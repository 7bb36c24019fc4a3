"""Integration fixtures: a real S3 server, an in-process API server, the real operator."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kopf
import pytest

from modelops.api.crd import load_all
from modelops.controllers.cluster import Cluster
from modelops.local.apiserver import ApiServer
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.models import iris_frame
from support.operator import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        store = server.store()
        store.ensure_bucket("modelops")
        frame = iris_frame()
        store.put(Location("modelops", "datasets/iris.csv"), frame.to_csv(index=False).encode())
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        store.put(Location("modelops", "datasets/iris.parquet"), buffer.getvalue())
        yield server


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    async with ApiServer(crds=load_all(ROOT / "crds")) as server:
        yield server


@pytest.fixture
async def cluster(api: ApiServer, s3: S3Server) -> AsyncIterator[Cluster]:
    client = Cluster(kopf.ConnectionInfo(server=api.url, insecure=True))
    await client.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "modelops-s3", "namespace": "default"},
            "stringData": {
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            },
        }
    )
    yield client
    await client.close()


@pytest.fixture
async def operator(
    api: ApiServer, s3: S3Server, cluster: Cluster, tmp_path: Path
) -> AsyncIterator[OperatorProcess]:
    proc = OperatorProcess(api.write_kubeconfig(tmp_path / "kubeconfig"), s3, tmp_path / "logs")
    proc.start()
    yield proc
    crashed = proc.starts and not proc.alive() and proc.process is not None
    proc.stop()
    assert not crashed, f"the operator exited by itself:\n{proc.logs()[-3000:]}"


@pytest.fixture(autouse=True)
def fresh_live_data(s3: S3Server) -> None:
    """Each test starts with no sketches and no pod reports left by an earlier one."""
    store = s3.store()
    for prefix in ("default/sketches/", "default/serving/"):
        store.delete_prefix(Location("modelops", prefix))
