"""DriftMonitor live fairness with the real operator, control plane, store and a real serving
process (``python -m modelops.serving``): predictions with request ids, feedback carrying each
item's sensitive group, joined in the server into per-group counts, merged and tested by the
operator. One group's labels wrong -> ``FairnessViolated=True`` (with its Event); both groups'
labels right -> ``False``.

The operator's own serving pods never run (``operator_without_pods``); the test's server
writes the quality objects under the test's namespace, where the monitor reads them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.s3server import S3Server
from support.models import model_version, train_version
from support.operator import OperatorProcess, condition, eventually
from unit.serving.test_serving_support import (
    IRIS_FEATURES,
    ServerProcess,
    iris_frame,
    matrix_request,
    post,
    write_json,
)

pytestmark = pytest.mark.integration
MONITOR = "iris-fairness"
ROWS = 60
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def summary(s3: S3Server) -> dict[str, Any]:
    return train_version(s3.store(), 1)


@pytest.fixture
async def server(
    cluster: Cluster,
    namespace: str,
    s3: S3Server,
    summary: dict[str, Any],
    operator_without_pods: OperatorProcess,
    tmp_path: Path,
) -> AsyncIterator[ServerProcess]:
    """The ModelVersion iris-v1 and a real server answering it for Deployment ``iris``."""
    mv = model_version(summary, 1, namespace)
    await cluster.create(mv)
    entry = {k: mv["spec"][k] for k in ("artifact", "profile", "signature")}
    table = {
        "deployment": "iris",
        "namespace": namespace,
        "model": "iris",
        "versions": [{"name": "iris-v1", "role": "stable", "weight": 100, **entry}],
    }
    routing = tmp_path / "routing.json"
    write_json(routing, table)
    process = ServerProcess(
        routing, s3.endpoint, s3.access_key, s3.secret_key, tmp_path / "server.log"
    )
    process.start()
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


async def predict_and_label(url: str, wrong_group: str | None) -> None:
    """Predict ROWS iris rows with ids, then send each one's label with its group (``F`` for
    even rows, ``M`` for odd): the predicted class, or another one for ``wrong_group``."""
    frame = iris_frame()
    classes = sorted(set(frame["species"]))
    items = []
    async with aiohttp.ClientSession() as session:
        for i in range(ROWS):
            row = frame[IRIS_FEATURES].iloc[(i * 7) % len(frame)].tolist()
            status, body = await post(
                session, f"{url}/v2/models/iris/infer", matrix_request([row], f"r{i}")
            )
            assert status == 200, body
            predicted = body["outputs"][0]["data"][0]
            group = "F" if i % 2 == 0 else "M"
            label = predicted
            if group == wrong_group:
                label = classes[(classes.index(predicted) + 1) % len(classes)]
            items.append({"id": f"r{i}", "label": label, "groups": {"sex": group}})
        status, counts = await post(session, f"{url}/v2/models/iris/feedback", {"feedback": items})
        assert status == 200 and counts["joined"] == ROWS, counts


def monitor(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": MONITOR, "namespace": namespace},
        "spec": {
            "deployment": "iris",
            "version": "iris-v1",
            "interval": "1s",
            "window": "5m",
            "fairness": {
                "sensitiveFeature": "sex",
                "metric": "accuracy_difference",
                "threshold": 0.1,
                "minLabels": 20,
            },
        },
    }


async def wait_fairness(cluster: Cluster, namespace: str, status: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, MONITOR)
        return obj if condition(obj, "FairnessViolated").get("status") == status else None

    return await eventually(probe, what=f"FairnessViolated={status}", timeout=TIMEOUT)


async def test_one_groups_wrong_labels_violate_fairness(
    cluster: Cluster, namespace: str, server: ServerProcess
) -> None:
    await predict_and_label(server.url, wrong_group="M")
    await cluster.create(monitor(namespace))
    obj = await wait_fairness(cluster, namespace, "True")
    assert condition(obj, "FairnessViolated")["reason"] == "FairnessThresholdExceeded"
    table = obj["status"]["fairness"]
    groups = {g["group"]: (g["labels"], g["rates"]["accuracy"]) for g in table["groups"]}
    assert groups == {"F": (ROWS // 2, 1.0), "M": (ROWS // 2, 0.0)}
    assert (table["value"], table["decision"]) == (1.0, "Violated")
    events = await cluster.list("v1", "Event", namespace, {})
    assert any(e["reason"] == "FairnessViolationDetected" for e in events)


async def test_both_groups_right_labels_are_within_the_threshold(
    cluster: Cluster, namespace: str, server: ServerProcess
) -> None:
    await predict_and_label(server.url, wrong_group=None)
    await cluster.create(monitor(namespace))
    obj = await wait_fairness(cluster, namespace, "False")
    assert condition(obj, "FairnessViolated")["reason"] == "FairnessWithinThreshold"
    assert obj["status"]["fairness"]["value"] == 0.0
