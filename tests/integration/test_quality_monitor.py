"""DriftMonitor quality rules (concept drift) with the real operator, control plane and store.

The tests write the serving pods' quality objects (joined labels, feedback counters) to the
real S3 server themselves, in the layout the pods write
(``<ns>/quality/<deployment>/<version>/<start>-<pod>.json``, see ``LiveQuality``). The
operator's serving pods never run (``operator_without_pods``), so these are the only ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.drift.quality import QualityCounts
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.cluster_fixtures import Kubectl, add_version, assert_refused_at_apply
from support.models import model_version, train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
MONITOR = "iris-quality"
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2)}


def write_quality(
    s3: S3Server,
    namespace: str,
    version: str,
    right: int,
    wrong: int,
    pod: str = "pod-a",
    feedback: dict[str, int] | None = None,
) -> None:
    """What a serving pod flushes: ``right`` correct and ``wrong`` incorrect joined labels of
    ``version`` (none when both are 0), and its feedback counters."""
    counts = None
    if right or wrong:
        counts = QualityCounts.empty("classification", ["setosa", "versicolor", "virginica"])
        true = ["versicolor"] * (right + wrong)
        counts.add_classification(true, ["versicolor"] * right + ["virginica"] * wrong)
    now = time.time()
    doc = {
        "deployment": "iris",
        "version": version,
        "pod": pod,
        "start": now - 1,
        "end": now,
        "quality": counts.to_dict() if counts else None,
        "agreement": None,
        "feedback": feedback or {"received": right + wrong, "joined": right + wrong},
    }
    key = f"{namespace}/quality/iris/{version}/{int(now - 1)}-{pod}.json"
    s3.store().put(Location("modelops", key), json.dumps(doc).encode())


def monitor(namespace: str, quality: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": MONITOR, "namespace": namespace},
        "spec": {"deployment": "iris", "version": "iris-v1", "interval": "1s", "window": "5m",
                 "quality": quality, **spec},
    }  # fmt: skip


async def get_monitor(cluster: Cluster, namespace: str) -> dict[str, Any]:
    obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, MONITOR)
    assert obj is not None
    return obj


async def wait_underperforming(
    cluster: Cluster, namespace: str, status: str, reason: str | None = None
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await get_monitor(cluster, namespace)
        found = condition(obj, "Underperforming")
        ok = found.get("status") == status and reason in (None, found.get("reason"))
        return obj if ok else None

    return await eventually(probe, what=f"Underperforming={status} {reason}", timeout=TIMEOUT)


async def gauges(operator: OperatorProcess, namespace: str) -> dict[tuple[str, str], float]:
    """This monitor's quality gauges: {(name, metric label or ""): value}."""
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("namespace") == namespace and labels.get("monitor") == MONITOR:
                found[(sample.name, labels.get("metric", ""))] = sample.value
    return found


def column(header: str, row: str, name: str) -> str:
    """A cell of ``kubectl get``'s table, by its header's position (cells may be blank)."""
    start = header.index(name)
    return row[start:].split(" ", 1)[0]


async def events(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in await cluster.list("v1", "Event", namespace, {}) if e["reason"] == reason]


@pytest.fixture
async def version(
    cluster: Cluster,
    namespace: str,
    summaries: dict[int, dict[str, Any]],
    operator_without_pods: OperatorProcess,
) -> str:
    await cluster.create(model_version(summaries[1], 1, namespace))
    return "iris-v1"


async def test_joined_labels_show_in_status_columns_and_feedback_counters(
    cluster: Cluster, namespace: str, s3: S3Server, version: str, kubectl: Kubectl
) -> None:
    write_quality(s3, namespace, version, 190, 10, "pod-a")
    write_quality(s3, namespace, version, 190, 10, "pod-b")
    unattributed = {"received": 10, "unknown": 7, "expired": 3}
    write_quality(s3, namespace, "-", 0, 0, "pod-a", feedback=unattributed)
    await cluster.create(monitor(namespace, {"maxDegradation": 0.1}))

    obj = await wait_underperforming(cluster, namespace, "False", "QualityHealthy")
    quality = obj["status"]["quality"]
    assert (quality["metric"], quality["value"], quality["labels"]) == ("accuracy", 0.95, 400)
    assert quality["decision"] == "Healthy" and quality["baseline"]["kind"] == "training"
    assert (quality["feedback"]["unknown"], quality["feedback"]["expired"]) == (7, 3)
    # No sketch windows: input drift cannot be tested, quality is all the same.
    assert condition(obj, "Drifted")["reason"] == "InsufficientData"
    header, row = kubectl("get", "dm", MONITOR, "-n", namespace).stdout.splitlines()
    assert (column(header, row, "QUALITY"), column(header, row, "LABELS")) == ("0.95", "400")


async def test_live_accuracy_far_below_held_out_underperforms_with_event_and_gauges(
    cluster: Cluster,
    namespace: str,
    s3: S3Server,
    version: str,
    summaries: dict[int, dict[str, Any]],
    operator_without_pods: OperatorProcess,
) -> None:
    write_quality(s3, namespace, version, 200, 200)
    await cluster.create(monitor(namespace, {"maxDegradation": 0.1}))

    obj = await wait_underperforming(cluster, namespace, "True", "WorseThanBaseline")
    held_out = summaries[1]["metrics"]["accuracy"]
    assert obj["status"]["phase"] == "Underperforming"
    baseline = obj["status"]["quality"]["baseline"]
    assert (baseline["against"], baseline["worse"]) == (held_out, True)
    assert baseline["pValue"] < 0.05 and baseline["z"] < 0
    assert f"worse than the held-out {held_out:.4g} of iris-v1" in obj["status"]["message"]
    assert len(await events(cluster, namespace, "UnderperformanceDetected")) == 1
    found = await gauges(operator_without_pods, namespace)
    assert found[("modelops_underperforming", "")] == 1.0
    assert found[("modelops_model_quality", "accuracy")] == 0.5
    assert found[("modelops_quality_labels", "")] == 400.0


async def test_recovery_posts_quality_recovered(
    cluster: Cluster, namespace: str, s3: S3Server, version: str
) -> None:
    write_quality(s3, namespace, version, 200, 200)
    await cluster.create(monitor(namespace, {"threshold": 0.9}))
    await wait_underperforming(cluster, namespace, "True", "QualityBelowThreshold")

    body = {"spec": {"quality": {"threshold": 0.4}}}  # 0.5 is not shown below 0.4
    await cluster.patch(API_VERSION, "DriftMonitor", namespace, MONITOR, body)

    obj = await wait_underperforming(cluster, namespace, "False", "QualityHealthy")
    assert obj["status"]["quality"]["threshold"]["against"] == 0.4
    assert len(await events(cluster, namespace, "QualityRecovered")) == 1


async def test_too_few_labels_are_unknown_never_an_alarm(
    cluster: Cluster, namespace: str, s3: S3Server, version: str
) -> None:
    write_quality(s3, namespace, version, 0, 30)  # accuracy 0, but only 30 labels
    await cluster.create(monitor(namespace, {"threshold": 0.9, "minLabels": 100}))

    obj = await wait_underperforming(cluster, namespace, "Unknown", "InsufficientLabels")
    assert "30 labels of iris-v1, need 100" in condition(obj, "Underperforming")["message"]
    assert obj["status"]["quality"]["decision"] == "InsufficientLabels"
    assert obj["status"]["phase"] != "Underperforming"


async def test_metric_the_version_cannot_answer_is_an_invalid_spec(
    cluster: Cluster, namespace: str, s3: S3Server, version: str
) -> None:
    write_quality(s3, namespace, version, 200, 200)
    await cluster.create(monitor(namespace, {"metric": "mae", "threshold": 1.0}))

    obj = await wait_underperforming(cluster, namespace, "Unknown", "InvalidSpec")
    assert condition(obj, "Underperforming")["message"] == (
        "spec.quality.metric mae needs a regressor, but iris-v1 is a classifier (use accuracy)"
    )
    assert "quality" not in obj["status"]


async def test_retrain_action_starts_one_training_run_triggered_by_quality(
    cluster: Cluster, namespace: str, s3: S3Server, version: str
) -> None:
    write_quality(s3, namespace, version, 200, 200)
    template = {
        "model": "iris",
        "dataset": {"uri": "s3://modelops/datasets/iris.csv", "target": "species"},
        "estimator": {"name": "LogisticRegression"},
    }
    spec = {"action": "retrain", "retrain": {"template": template, "cooldown": "1h"}}
    await cluster.create(monitor(namespace, {"threshold": 0.9}, **spec))
    await wait_underperforming(cluster, namespace, "True", "QualityBelowThreshold")

    async def runs() -> list[dict[str, Any]]:
        return await cluster.list(API_VERSION, "TrainingRun", namespace, {})

    created = await eventually(runs, what="a retraining TrainingRun", timeout=TIMEOUT)
    await asyncio.sleep(3)  # later checks still fire, inside the cooldown
    created = await runs()
    assert [r["metadata"]["name"] for r in created] == [f"{MONITOR}-retrain-1"]
    assert created[0]["metadata"]["annotations"]["modelops.dev/trigger"] == "quality"
    assert (await get_monitor(cluster, namespace))["status"]["lastTrigger"] == "quality"


def test_quality_rule_without_threshold_or_degradation_is_refused_at_apply(
    kubectl: Kubectl, namespace: str
) -> None:
    doc = monitor(namespace, {"metric": "accuracy", "baseline": "training"})
    assert_refused_at_apply(kubectl, doc, "spec.quality needs threshold or maxDegradation")


# -- a canary against the stable version ----------------------------------------------------


class Pods:
    """Serving pods' reports, rewritten every half second as live pods do: both versions
    held and loaded (model routing), so the canary enters its step."""

    def __init__(self, s3: S3Server, namespace: str) -> None:
        self.store = s3.store()
        self.namespace = namespace

    def write(self) -> None:
        for pod in ("iris-server-0", "iris-server-1"):
            versions = ["iris-v1", "iris-v2"]
            report = {"pod": pod, "time": time.time(), "versions": versions,
                      "loaded": versions, "failed": {}}  # fmt: skip
            key = f"{self.namespace}/serving/iris/pods/{pod}.json"
            self.store.put(Location("modelops", key), json.dumps(report).encode())

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.write)
            await asyncio.sleep(0.5)


@pytest.fixture
async def pods(s3: S3Server, namespace: str) -> AsyncIterator[Pods]:
    reporter = Pods(s3, namespace)
    task = asyncio.create_task(reporter.run())
    yield reporter
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_canary_worse_than_stable_by_more_than_the_margin_underperforms(
    cluster: Cluster,
    namespace: str,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
    operator_without_pods: OperatorProcess,
    pods: Pods,
) -> None:
    await add_version(cluster, namespace, summaries[1], 1)
    dep = {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {"model": "iris", "replicas": 2,
                 "canary": {"version": "latest", "steps": [{"weight": 50, "pause": "1h"}]}},
    }  # fmt: skip
    await cluster.create(dep)
    await add_version(cluster, namespace, summaries[2], 2)

    async def canary_live() -> bool:
        obj = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
        status = (obj or {}).get("status", {})
        return status.get("canaryVersion") == "iris-v2" and status.get("canaryWeight") == 50

    await eventually(canary_live, what="iris-v2 at 50%", timeout=90)
    write_quality(s3, namespace, "iris-v1", 380, 20)  # stable 0.95
    write_quality(s3, namespace, "iris-v2", 300, 100)  # canary 0.75
    spec = monitor(namespace, {"maxDegradation": 0.05})
    del spec["spec"]["version"]  # traffic auto: the canary while it takes traffic
    await cluster.create(spec)

    obj = await wait_underperforming(cluster, namespace, "True", "WorseThanBaseline")
    status = obj["status"]
    assert status["version"] == "iris-v2"
    baseline = status["quality"]["baseline"]
    assert (baseline["kind"], baseline["version"], baseline["labels"]) == ("stable", "iris-v1", 400)
    assert (baseline["against"], status["quality"]["value"]) == (0.95, 0.75)
    assert (
        "worse than stable iris-v1's 0.95 (400 labels) by more than 0.05"
        in (condition(obj, "Underperforming")["message"])
    )
