"""The DriftMonitor controller with the real operator, real sketches in a real S3 server.

No test here creates a modelops Deployment, so no serving pod runs: the sketch windows the
tests write are the only ones. (The retrain test's TrainingRun does train, in a real pod.)
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import numpy as np
import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.drift import Sketch
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.models import iris_frame, model_version, train_version
from support.operator import (
    OperatorProcess,
    condition,
    eventually,
)

pytestmark = pytest.mark.integration
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def summary(s3: S3Server) -> dict[str, Any]:
    return train_version(s3.store(), 1)


@pytest.fixture
async def version(
    cluster: Cluster, namespace: str, summary: dict[str, Any], operator: OperatorProcess
) -> str:
    await cluster.create(model_version(summary, 1, namespace))
    return "iris-v1"


def write_window(
    s3: S3Server, namespace: str, summary: dict[str, Any], rows: np.ndarray, pod: str
) -> None:
    """What a serving pod flushes: its sketch of the rows it served, in the store."""
    store = s3.store()
    profile = json.loads(store.get(Location.parse(summary["profile"]["uri"])))
    now = time.time()
    sketch = Sketch.empty(profile, start=now - 1, end=now)
    sketch.update(rows)
    window = sketch.to_dict() | {"requests": len(rows), "errors": 0}
    key = f"{namespace}/sketches/iris/iris-v1/{int(now - 1)}-{pod}.json"
    store.put(Location("modelops", key), json.dumps(window).encode())


def monitor(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": "iris-drift", "namespace": namespace},
        "spec": {"deployment": "iris", "version": "iris-v1", "interval": "1s", "window": "5m",
                 "minSamples": 100, **spec},
    }  # fmt: skip


async def wait_drifted(cluster: Cluster, namespace: str, status: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, "iris-drift")
        return obj if condition(obj, "Drifted").get("status") == status else None

    return await eventually(probe, what=f"Drifted={status}", timeout=45)


def iris_rows(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    frame = iris_frame()[FEATURES].to_numpy(np.float64)
    rows = frame[np.random.default_rng(seed).integers(0, len(frame), n)]
    rows[:, 2:] += shift  # petal length and width
    return rows


async def metrics_text(operator: OperatorProcess) -> str:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


def windows_read(metrics: str) -> float:
    line = next(
        x for x in metrics.splitlines() if x.startswith("modelops_sketch_windows_read_total ")
    )
    return float(line.split()[-1])


async def test_too_few_samples_is_unknown_never_an_alarm(
    cluster: Cluster, namespace: str, s3: S3Server, summary: dict, version: str
) -> None:
    write_window(s3, namespace, summary, iris_rows(30, seed=1, shift=5.0), "pod-a")
    await cluster.create(monitor(namespace))
    obj = await wait_drifted(cluster, namespace, "Unknown")
    drifted = condition(obj, "Drifted")
    assert drifted["reason"] == "InsufficientData"
    assert "30 samples of iris-v1" in drifted["message"]
    assert obj["status"]["phase"] == "InsufficientData"


async def test_same_distribution_does_not_drift(
    cluster: Cluster,
    namespace: str,
    s3: S3Server,
    summary: dict,
    version: str,
    operator: OperatorProcess,
) -> None:
    for pod, seed in (("pod-a", 1), ("pod-b", 2)):
        write_window(s3, namespace, summary, iris_rows(300, seed=seed), pod)
    await cluster.create(monitor(namespace))
    obj = await wait_drifted(cluster, namespace, "False")
    status = obj["status"]
    assert status["samples"] == 600  # both pods' windows merged
    assert status["phase"] == "Healthy" and status["driftedShare"] < 0.5
    assert {f["name"] for f in status["features"]} == set(FEATURES)
    assert f'modelops_drift_detected{{monitor="iris-drift",namespace="{namespace}"}} 0.0' in (
        await metrics_text(operator)
    )
    # Later checks add nothing new: the two windows are not read again.
    reads = windows_read(await metrics_text(operator))
    checked = status["lastCheckTime"]

    async def checked_twice_more() -> bool:
        nonlocal checked
        obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, "iris-drift")
        now = (obj or {}).get("status", {}).get("lastCheckTime")
        if now == checked:
            return False
        checked = now
        return True

    for _ in range(2):
        await eventually(checked_twice_more, what="another check", timeout=20)
    obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, "iris-drift")
    assert obj is not None and obj["status"]["samples"] == 600
    assert windows_read(await metrics_text(operator)) == reads


async def test_shifted_features_drift_with_scores_message_gauges_and_event(
    cluster: Cluster,
    namespace: str,
    s3: S3Server,
    summary: dict,
    version: str,
    operator: OperatorProcess,
) -> None:
    write_window(s3, namespace, summary, iris_rows(400, seed=3, shift=2.5), "pod-a")
    await cluster.create(monitor(namespace, action="alert"))
    obj = await wait_drifted(cluster, namespace, "True")
    status = obj["status"]
    drifted = {f["name"] for f in status["features"] if f["drifted"]}
    assert {"petal_length", "petal_width"} <= drifted
    assert status["phase"] == "Drifted" and status["firings"] == 1
    message = condition(obj, "Drifted")["message"]
    assert "features drifted in iris-v1" in message and "petal_" in message
    text = await metrics_text(operator)
    assert f'modelops_drift_detected{{monitor="iris-drift",namespace="{namespace}"}} 1.0' in text
    assert 'modelops_drift_score{feature="petal_length"' in text
    events = await cluster.list("v1", "Event", namespace, {})
    assert any(e.get("reason") == "DriftDetected" for e in events)


async def test_retrain_creates_one_training_run_per_cooldown_across_restarts(
    cluster: Cluster,
    namespace: str,
    s3: S3Server,
    summary: dict,
    version: str,
    operator: OperatorProcess,
) -> None:
    write_window(s3, namespace, summary, iris_rows(400, seed=4, shift=3.0), "pod-a")
    template = {
        "model": "iris",
        "dataset": {"uri": "s3://modelops/datasets/iris.csv", "target": "species"},
        "estimator": {"name": "LogisticRegression"},
    }
    await cluster.create(monitor(namespace, action="retrain",
                                 retrain={"template": template, "cooldown": "1h"}))  # fmt: skip
    await wait_drifted(cluster, namespace, "True")

    async def runs() -> list[dict[str, Any]]:
        return await cluster.list(API_VERSION, "TrainingRun", namespace, {})

    created = await eventually(runs, what="a retrain TrainingRun")
    assert [r["metadata"]["name"] for r in created] == ["iris-drift-retrain-1"]
    assert created[0]["spec"]["model"] == "iris"

    operator.stop()
    operator.start()

    async def checked_again() -> bool:
        obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, "iris-drift")
        return (
            bool(obj)
            and obj["status"]["lastCheckTime"] > created[0]["metadata"]["creationTimestamp"]
        )

    await eventually(checked_again, what="a check after the restart")
    await asyncio.sleep(1.5)
    assert [r["metadata"]["name"] for r in await runs()] == ["iris-drift-retrain-1"]
