"""Helpers for the serving tests (no tests here): models trained by the real trainer, routing
tables, and the server run in-process or as a subprocess, always over real HTTP; a server that
watches its ConfigMap on a real control plane, as a ServiceAccount with the serving Role.

Importable without a network (many unit tests import it), as
``unit.serving.test_serving_support`` (``tests`` is on the path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

from modelops import API_VERSION
from modelops.api.deployment import Deployment
from modelops.api.trainingrun import TrainingRunSpec
from modelops.controllers.cluster import path as api_path
from modelops.resources.serving import server_name, server_rbac
from modelops.serving.server import ModelServer, ServerConfig
from modelops.storage import ArtifactError, ArtifactStore, Location, sha256_hex
from modelops.training.trainer import train

if TYPE_CHECKING:
    from modelops.local.controlplane import ControlPlane

BUCKET = "modelops"
ROOT = Path(__file__).resolve().parents[3]
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class MemoryStore(ArtifactStore):
    """An in-memory ArtifactStore (unit tests): same get/put/get_verified semantics."""

    def __init__(self) -> None:  # no S3 client
        self.objects: dict[tuple[str, str], bytes] = {}

    def ensure_bucket(self, bucket: str) -> None:
        pass

    def put(
        self, loc: Location, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        self.objects[(loc.bucket, loc.key)] = bytes(data)
        return sha256_hex(data)

    def get(self, loc: Location) -> bytes:
        try:
            return self.objects[(loc.bucket, loc.key)]
        except KeyError:
            raise ArtifactError("ArtifactMissing", f"{loc.uri} does not exist") from None

    def exists(self, loc: Location) -> bool:
        return (loc.bucket, loc.key) in self.objects

    def list(self, loc: Location) -> list[str]:
        return sorted(k for b, k in self.objects if b == loc.bucket and k.startswith(loc.key))


def iris_frame() -> pd.DataFrame:
    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = [data.target_names[i] for i in frame.pop("target")]
    return frame


def train_version(
    store: ArtifactStore,
    name: str,
    frame: pd.DataFrame,
    target: str,
    estimator: str = "LogisticRegression",
    params: Mapping[str, Any] | None = None,
    categorical: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train with the real trainer; the routing-table entry (without role/weight)."""
    dataset = Location(BUCKET, f"datasets/{name}.csv")
    store.put(dataset, frame.to_csv(index=False).encode())
    spec = TrainingRunSpec.model_validate(
        {
            "model": name.rsplit("-v", 1)[0],
            "dataset": {
                "uri": dataset.uri,
                "target": target,
                **({"categorical": list(categorical)} if categorical else {}),
            },
            "estimator": {"name": estimator, "params": dict(params or {})},
            "seed": seed,
        }
    )
    summary = train(spec, store, Location(BUCKET, f"default/{name}/run"))
    return {
        "name": name,
        "artifact": {k: summary["artifact"][k] for k in ("uri", "sha256")},
        "profile": {k: summary["profile"][k] for k in ("uri", "sha256")},
        "signature": summary["signature"],
    }


def routing_table(
    versions: Iterable[tuple[Mapping[str, Any], str, int]],
    model: str = "iris",
    deployment: str | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    return {
        "deployment": deployment or model,
        "namespace": namespace,
        "model": model,
        "versions": [{**entry, "role": role, "weight": weight} for entry, role, weight in versions],
    }


def matrix_request(rows: Any, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """One [n, k] FP64 tensor, flat data."""
    arr = np.asarray(rows, dtype=np.float64)
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "x",
                "shape": list(arr.shape),
                "datatype": "FP64",
                "data": arr.ravel().tolist(),
            }
        ],
        **extra,
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_in_process(
    store: ArtifactStore | None,
    table: Mapping[str, Any] | None,
    **config: Any,
) -> AsyncIterator[tuple[ModelServer, str]]:
    """The server on a free loopback port, the table applied (models loaded)."""
    server = ModelServer(ServerConfig(**config), store)
    if table is not None:
        await server.manager.apply(dict(table))
    http = server.http_server()
    host, port = await http.start("127.0.0.1", 0)
    try:
        yield server, f"http://{host}:{port}"
    finally:
        server.stopping = True
        await http.close(5)
        server.writer.close()


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, *, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        text = await r.read()
        return r.status, json.loads(text) if text else None


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as r:
        text = await r.read()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text.decode()


class ServerProcess:
    """``python -m modelops.serving`` as a subprocess on a free loopback port."""

    def __init__(
        self,
        routing_file: Path | None,
        s3_endpoint: str,
        access_key: str,
        secret_key: str,
        log: Path,
        *,
        workers: int = 1,
        sketch_interval: float = 1.0,
        extra_args: Sequence[str] = (),
        pod: str = "test-pod",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Without ``routing_file`` the server watches the ConfigMap named in ``env``."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.args = [
            sys.executable,
            "-m",
            "modelops.serving",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *(["--routing-file", str(routing_file)] if routing_file is not None else []),
            "--workers",
            str(workers),
            "--sketch-interval",
            str(sketch_interval),
            *extra_args,
        ]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
            ),
            "MODELOPS_S3_ENDPOINT": s3_endpoint,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "MODELOPS_BUCKET": BUCKET,
            "POD_NAME": pod,
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("wb")
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_ready(self, timeout: float = 30.0, ready: bool = True) -> None:
        """Until /v2/health/ready (or, with ready=False, /live) answers 200."""
        path = "/v2/health/ready" if ready else "/v2/health/live"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited:\n{self.logs()[-3000:]}")
                try:
                    async with session.get(self.url + path) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"server not {'ready' if ready else 'live'}:\n{self.logs()[-3000:]}")

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_json(path: Path, doc: Any) -> None:
    """Atomically, as a ConfigMap update would appear."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def create(control_plane: ControlPlane, obj: Mapping[str, Any]) -> dict[str, Any]:
    """POST ``obj`` as cluster admin (a real server answers 201 or raises HTTPError)."""
    meta = obj["metadata"]
    return control_plane.request(
        "POST", api_path(obj["apiVersion"], obj["kind"], meta.get("namespace")), obj
    )


def routing_reader_kubeconfig(
    control_plane: ControlPlane,
    namespace: str,
    deployment: str,
    model: str,
    config_maps: Sequence[str],
    path: Path,
) -> Path:
    """A kubeconfig (a ServiceAccount token) of the serving pods of ``deployment``: the
    ServiceAccount, Role and RoleBinding the operator makes for them (``server_rbac``), which
    may get, list and watch ``config_maps`` in ``namespace`` and nothing else."""
    dep = Deployment.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "Deployment",
            "metadata": {"name": deployment, "namespace": namespace},
            "spec": {"model": model},
        }
    )
    for obj in server_rbac(dep, list(config_maps)):
        create(control_plane, obj)
    return control_plane.write_service_account_kubeconfig(
        path, namespace, server_name(deployment), expiration_seconds=3600
    )


async def watched_server(
    control_plane: ControlPlane,
    namespace: str,
    s3_endpoint: str,
    access_key: str,
    secret_key: str,
    table: Mapping[str, Any],
    configmap: str,
    tmp: Path,
    **options: Any,
) -> ServerProcess:
    """A server as in a pod (not started): its table in the ConfigMap ``configmap``, created
    here in ``namespace`` of ``control_plane``, which it watches with the least privilege the
    operator gives serving pods (see :func:`routing_reader_kubeconfig`)."""
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap, "namespace": namespace},
        "data": {"routing.json": json.dumps(table)},
    }
    await asyncio.to_thread(create, control_plane, body)
    kubeconfig = await asyncio.to_thread(
        routing_reader_kubeconfig,
        control_plane,
        namespace,
        str(table["deployment"]),
        str(table["model"]),
        [configmap],
        tmp / f"{configmap}-kubeconfig",
    )
    return ServerProcess(
        None,
        s3_endpoint,
        access_key,
        secret_key,
        tmp / f"{configmap}-server.log",
        env={
            "KUBECONFIG": str(kubeconfig),
            "KUBERNETES_SERVICE_HOST": "",
            "MODELOPS_ROUTING_CONFIGMAP": configmap,
            "POD_NAMESPACE": namespace,
        },
        **options,
    )
