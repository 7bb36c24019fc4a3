"""The MLflow sync against a real ``mlflow server`` (SQLite backend, artifacts proxied by the
server), with the real operator on the real control plane.

A TrainingRun trains for real and becomes an MLflow run (params, metrics, the dataset's digest,
the model file) and its ModelVersion a registered model version; a Deployment's stable and
canary versions move the registered model's aliases; a restarted operator that lost its
annotations finds what it logged instead of logging it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.s3server import S3Server, free_port
from modelops.storage import Location
from support.cluster_fixtures import add_version
from support.models import train_version
from support.operator import UNRUNNABLE_IMAGE, OperatorProcess, condition, eventually, supervised

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT = 180.0  # a cold `mlflow server` imports a lot: ~35 s on a busy 2-core box
TRAINING_TIMEOUT = 150.0  # a pod start plus a training, then the operator's first MLflow import
SYNC_TIMEOUT = 60.0
RUN_ID = "modelops.dev/mlflow-run-id"
MODEL_VERSION = "modelops.dev/mlflow-model-version"


class MlflowServer:
    """``mlflow server`` on a free loopback port, in a process group of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"),
            # Proxied artifacts (mlflow-artifacts:/): the operator uploads over HTTP, as it
            # must when the server's disk is not its own.
            *("--artifacts-destination", str(self.root / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
        ]
        # Its job runners are four more processes that nothing here uses.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with (self.root / "server.log").open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"mlflow server not up after {SERVER_START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None:
            return
        # The CLI runs the server as its child: stop the group it leads.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(mlflow_server: MlflowServer) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server.uri, mlflow_server.uri)


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2)}


def mlflow_operator(
    kubeconfig: Path, s3: S3Server, namespace: str, logs: Path, uri: str, **env: str
) -> OperatorProcess:
    """The operator with the MLflow sync on. Its serving pods never run (the test writes their
    reports); a TrainingRun that should train names the runnable image itself."""
    return OperatorProcess(
        kubeconfig,
        s3,
        logs,
        MODELOPS_NAMESPACES=namespace,
        MODELOPS_RUNTIME_IMAGE=UNRUNNABLE_IMAGE,
        MODELOPS_MLFLOW_TRACKING_URI=uri,
        # Tests of one module share the server, each in a namespace of its own.
        MODELOPS_MLFLOW_NAME="{namespace}.{model}",
        MODELOPS_MLFLOW_POLL_SECONDS="0.5",
        **env,
    )


@pytest.fixture
async def operator(
    operator_kubeconfig: Path,
    s3: S3Server,
    namespace: str,
    tmp_path: Path,
    mlflow_server: MlflowServer,
) -> AsyncIterator[OperatorProcess]:
    proc = mlflow_operator(operator_kubeconfig, s3, namespace, tmp_path / "logs", mlflow_server.uri)
    with supervised(proc):
        yield proc


async def annotation(cluster: Cluster, kind: str, namespace: str, name: str, key: str) -> str:
    async def probe() -> str | None:
        obj = await cluster.get(API_VERSION, kind, namespace, name)
        return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(key)

    return await eventually(probe, what=f"{key} on {kind} {name}", timeout=SYNC_TIMEOUT)


async def aliases(client: Any, name: str, expected: dict[str, str]) -> dict[str, str]:
    async def probe() -> dict[str, str] | None:
        found = dict((await asyncio.to_thread(client.get_registered_model, name)).aliases)
        return found if found == expected else None

    return await eventually(probe, what=f"aliases {expected} of {name}", timeout=SYNC_TIMEOUT)


def deployment(namespace: str) -> dict[str, Any]:
    """Stable: the newest Ready version; a newer one is a canary held at 10 % for an hour."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {
            "model": "iris",
            "replicas": 1,
            "canary": {"version": "latest", "steps": [{"weight": 10, "pause": "1h"}]},
        },
    }


async def deployment_status(cluster: Cluster, namespace: str, **expected: Any) -> None:
    async def probe() -> bool:
        dep = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
        status = (dep or {}).get("status", {})
        return all(status.get(k) == v for k, v in expected.items())

    await eventually(probe, what=f"Deployment status {expected}", timeout=90)


def report_pods_loaded(s3: S3Server, namespace: str, *versions: str) -> None:
    """What a serving pod writes once it holds ``versions`` (its pods do not run here)."""
    report = {
        "pod": "iris-server-0",
        "time": time.time(),
        "versions": sorted(versions),
        "loaded": list(versions),
        "failed": {},
    }
    s3.store().put(
        Location("modelops", f"{namespace}/serving/iris/pods/iris-server-0.json"),
        json.dumps(report).encode(),
    )


async def test_a_trained_run_is_logged_and_its_version_registered(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server, client: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    run = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    run["metadata"]["namespace"] = namespace
    run["spec"]["image"] = "modelops-runtime:local"  # the operator's default does not run
    await cluster.create(run)

    async def logged() -> dict[str, Any] | None:
        tr = await cluster.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
        return tr if RUN_ID in ((tr or {}).get("metadata", {}).get("annotations") or {}) else None

    tr = await eventually(logged, what="the run logged to MLflow", timeout=TRAINING_TIMEOUT)
    status = tr["status"]
    logged_run = await asyncio.to_thread(client.get_run, tr["metadata"]["annotations"][RUN_ID])
    assert logged_run.info.status == "FINISHED"
    assert logged_run.info.run_name == "iris-logreg"
    # The estimator's params under their names, as stored (the API server may write 1.0 as 1).
    stored = {k: str(v) for k, v in tr["spec"]["estimator"]["params"].items()}
    assert stored.keys() == {"C", "max_iter"}
    extra = {"estimator": "LogisticRegression", "seed": "42", "test_size": "0.25"}
    assert logged_run.data.params == {**stored, **extra}
    assert logged_run.data.metrics == status["metrics"]
    # The dataset's digest: the sha256 of the object it trained on, as a tag and an input.
    data = s3.store().get(Location("modelops", "datasets/iris.csv"))
    digest = hashlib.sha256(data).hexdigest()
    assert logged_run.data.tags["modelops.dataset.sha256"] == digest
    (dataset_input,) = logged_run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == digest[:36]
    assert json.loads(dataset_input.dataset.source) == {"uri": "s3://modelops/datasets/iris.csv"}
    # The model file itself, byte for byte what the store holds.
    run_id = logged_run.info.run_id
    local = await asyncio.to_thread(
        client.download_artifacts, run_id, "model/model.skops", str(tmp_path)
    )
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == status["artifact"]["sha256"]
    assert condition(tr, "MlflowSynced")["status"] == "True"

    name = f"{namespace}.iris"
    number = await annotation(cluster, "ModelVersion", namespace, "iris-v1", MODEL_VERSION)
    registered = await asyncio.to_thread(client.get_model_version, name, number)
    assert registered.run_id == run_id
    assert registered.source == f"{logged_run.info.artifact_uri}/model"
    assert registered.tags["modelops.model_version"] == "iris-v1"


async def test_aliases_follow_the_deployments_stable_and_canary(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    s3: S3Server,
    client: Any,
    summaries: dict[int, dict[str, Any]],
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    name = f"{namespace}.iris"
    await add_version(cluster, namespace, summaries[1], 1)
    await cluster.create(deployment(namespace))
    await deployment_status(cluster, namespace, stableVersion="iris-v1")
    v1 = await annotation(cluster, "ModelVersion", namespace, "iris-v1", MODEL_VERSION)
    await aliases(client, name, {"stable": v1})

    await add_version(cluster, namespace, summaries[2], 2)
    await deployment_status(cluster, namespace, canaryVersion="iris-v2")
    v2 = await annotation(cluster, "ModelVersion", namespace, "iris-v2", MODEL_VERSION)
    assert v2 != v1
    await aliases(client, name, {"stable": v1, "canary": v2})

    report_pods_loaded(s3, namespace, "iris-v1", "iris-v2")
    await deployment_status(cluster, namespace, canaryWeight=10)
    await cluster.patch(
        API_VERSION,
        "Deployment",
        namespace,
        "iris",
        {"metadata": {"annotations": {"modelops.dev/action": "promote"}}},
    )
    await deployment_status(cluster, namespace, phase="Promoted", stableVersion="iris-v2")
    await aliases(client, name, {"stable": v2})
    # What an MLflow user gets by the alias is the file the Deployment now serves.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    from mlflow.artifacts import download_artifacts

    local = await asyncio.to_thread(
        download_artifacts, artifact_uri=f"models:/{name}@stable", dst_path=str(tmp_path)
    )
    (model_file,) = Path(local).rglob("*.skops")
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert digest == summaries[2]["artifact"]["sha256"]


async def test_a_restarted_operator_finds_what_it_logged_instead_of_logging_it_again(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    client: Any,
    summaries: dict[int, dict[str, Any]],
) -> None:
    """The annotations are removed while the operator is down, as if it had been killed after
    its MLflow calls and before annotating: the restarted one must search, not log again."""
    name = f"{namespace}.iris"
    await add_version(cluster, namespace, summaries[1], 1)
    number = await annotation(cluster, "ModelVersion", namespace, "iris-v1", MODEL_VERSION)
    mv = await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-v1")
    assert mv is not None
    run_id = mv["metadata"]["annotations"][RUN_ID]

    operator.stop()
    forget = {"metadata": {"annotations": {RUN_ID: None, MODEL_VERSION: None}}}
    await cluster.patch(API_VERSION, "ModelVersion", namespace, "iris-v1", forget)
    operator.start()

    again = await annotation(cluster, "ModelVersion", namespace, "iris-v1", MODEL_VERSION)
    mv = await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-v1")
    assert mv is not None
    assert (again, mv["metadata"]["annotations"][RUN_ID]) == (number, run_id)
    experiment = await asyncio.to_thread(client.get_experiment_by_name, name)
    runs = await asyncio.to_thread(client.search_runs, [experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    versions = await asyncio.to_thread(client.search_model_versions, f"name = '{name}'")
    assert [v.version for v in versions] == [number]


def without_mlflow_package(tmp_path: Path) -> dict[str, str]:
    """Environment in which ``import mlflow`` fails in the operator as if it were not installed
    (a ``sitecustomize`` module, run at interpreter start, blanks it in ``sys.modules``)."""
    shim = tmp_path / "no-mlflow"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text('import sys\n\nsys.modules["mlflow"] = None\n')
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}


def metric(port: int, name: str, labels: dict[str, str]) -> float:
    """A sample of the operator's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("case", "reason"),
    [("server down", "MlflowUnavailable"), ("package missing", "MlflowNotInstalled")],
)
async def test_without_a_usable_mlflow_versions_are_ready_and_say_why_they_are_not_synced(
    cluster: Cluster,
    namespace: str,
    operator_kubeconfig: Path,
    s3: S3Server,
    tmp_path: Path,
    summaries: dict[int, dict[str, Any]],
    case: str,
    reason: str,
) -> None:
    env = without_mlflow_package(tmp_path) if case == "package missing" else {}
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = mlflow_operator(operator_kubeconfig, s3, namespace, tmp_path / "logs", dead, **env)
    with supervised(proc):
        await add_version(cluster, namespace, summaries[1], 1)  # Ready: the core path goes on

        async def reported() -> dict[str, Any] | None:
            mv = await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-v1")
            return mv if condition(mv, "MlflowSynced").get("reason") == reason else None

        mv = await eventually(reported, what=f"MlflowSynced reason {reason}", timeout=SYNC_TIMEOUT)
        assert condition(mv, "MlflowSynced")["status"] == "False"
        assert mv["status"]["phase"] == "Ready"
        labels = {"kind": "ModelVersion", "reason": reason}
        assert metric(proc.metrics_port, "modelops_mlflow_sync_errors_total", labels) >= 1
        if case == "package missing":
            assert "MLflow client is not installed" in proc.logs()
        events = await cluster.list("v1", "Event", namespace, {})
        assert any(
            e["reason"] == reason
            and e["type"] == "Warning"
            and e["involvedObject"]["name"] == "iris-v1"
            for e in events
        ), [(e["reason"], e["involvedObject"]["name"]) for e in events]


async def test_a_registered_model_of_another_namespace_gets_no_versions_of_this_one(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    client: Any,
    summaries: dict[int, dict[str, Any]],
) -> None:
    name = f"{namespace}.iris"
    tags = {"modelops.namespace": "someone-else"}
    await asyncio.to_thread(client.create_registered_model, name, tags)
    await add_version(cluster, namespace, summaries[1], 1)

    async def refused() -> dict[str, Any] | None:
        mv = await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-v1")
        return mv if condition(mv, "MlflowSynced").get("reason") == "MlflowNameConflict" else None

    mv = await eventually(refused, what="MlflowSynced reason MlflowNameConflict", timeout=60)
    assert "someone-else" in condition(mv, "MlflowSynced")["message"]
    assert await asyncio.to_thread(client.search_model_versions, f"name = '{name}'") == []
