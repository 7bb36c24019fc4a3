"""Canary analysis on live quality, A/B tests and shadows, with the real operator.

The operator's serving pods name an image the process kubelet does not run
(``UNRUNNABLE_IMAGE``): this test writes what serving pods write to the real S3 server, their
reports (what each pod has loaded) and their quality objects
(``<ns>/quality/<deployment>/<version>/<start>-<pod>.json``: labels joined by request id, and
a shadow's agreement with stable), and the operator reads them as it reads the pods'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.drift.quality import Agreement, QualityCounts
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.cluster_fixtures import Kubectl, add_version, assert_refused_at_apply
from support.models import train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
TIMEOUT = 90.0
BUCKET = "modelops"
VERSIONS = ["iris-v1", "iris-v2"]


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2)}


class Pods:
    """Two serving pods' reports, rewritten every half second as live pods do."""

    def __init__(self, s3: S3Server, namespace: str) -> None:
        self.store = s3.store()
        self.namespace = namespace
        self.loaded = ["iris-v1"]

    def write(self) -> None:
        for pod in ("iris-server-0", "iris-server-1"):
            report = {"pod": pod, "time": time.time(), "versions": VERSIONS,
                      "loaded": self.loaded, "failed": {}}  # fmt: skip
            key = f"{self.namespace}/serving/iris/pods/{pod}.json"
            self.store.put(Location(BUCKET, key), json.dumps(report).encode())

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


def labels(correct: int, total: int) -> QualityCounts:
    """An iris classifier's joined labels: ``correct`` of ``total`` predicted right."""
    counts = QualityCounts.empty("classification", ["setosa", "versicolor", "virginica"])
    wrong = total - correct
    counts.add_classification(["setosa"] * total, ["setosa"] * correct + ["virginica"] * wrong)
    return counts


def write_quality(
    s3: S3Server,
    namespace: str,
    version: str,
    quality: QualityCounts | None = None,
    agreement: Agreement | None = None,
) -> None:
    """One quality object of one pod for ``version``, as a serving pod flushes it."""
    now = time.time()
    doc = {
        "deployment": "iris",
        "version": version,
        "pod": "iris-server-0",
        "start": now - 5,
        "end": now,
        "quality": quality.to_dict() if quality else None,
        "agreement": agreement.to_dict() if agreement else None,
        "feedback": {"received": quality.labels if quality else 0},
    }
    key = f"{namespace}/quality/iris/{version}/{int(now - 5)}-iris-server-0.json"
    s3.store().put(Location(BUCKET, key), json.dumps(doc).encode())


async def get(cluster: Cluster, namespace: str) -> dict[str, Any]:
    obj = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
    assert obj is not None
    return obj


async def wait_status(
    cluster: Cluster, namespace: str, what: str, **expected: Any
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        dep = await get(cluster, namespace)
        status = dep.get("status", {})
        return dep if all(status.get(k) == v for k, v in expected.items()) else None

    try:
        return await eventually(probe, what=what, timeout=TIMEOUT)
    except AssertionError as exc:  # say where it stands instead
        status = (await get(cluster, namespace)).get("status", {})
        raise AssertionError(f"{exc}\nstatus: {json.dumps(status, indent=1)}") from None


async def wait_reason(cluster: Cluster, namespace: str, reason: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        dep = await get(cluster, namespace)
        return dep if condition(dep, "Progressing").get("reason") == reason else None

    return await eventually(probe, what=f"Progressing reason {reason}", timeout=TIMEOUT)


async def routing(cluster: Cluster, namespace: str) -> dict[str, Any]:
    cm = await cluster.get("v1", "ConfigMap", namespace, "iris-routing")
    assert cm is not None
    table: dict[str, Any] = json.loads(cm["data"]["routing.json"])
    return table


def weights(table: dict[str, Any]) -> dict[str, int]:
    return {v["name"]: v["weight"] for v in table["versions"]}


async def canary_running(
    cluster: Cluster,
    namespace: str,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
    canary: dict[str, Any],
    **loaded: Any,
) -> None:
    """Stable iris-v1, then iris-v2 as a canary (``spec.canary``), loaded by both pods, at
    the status ``loaded`` names (its first step, A/B split or shadow)."""
    await add_version(cluster, namespace, summaries[1], 1)
    dep = {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {"model": "iris", "replicas": 2, "canary": {"version": "latest"} | canary},
    }
    await cluster.create(dep)
    await wait_status(cluster, namespace, "stable iris-v1", stableVersion="iris-v1")
    pods.loaded = VERSIONS
    await add_version(cluster, namespace, summaries[2], 2)
    await wait_status(cluster, namespace, "canary under way", canaryVersion="iris-v2", **loaded)


STEPS = [{"weight": 20, "pause": "1s"}, {"weight": 50, "pause": "1s"}]


async def test_canary_shown_worse_is_rolled_back_as_underperforming_with_its_numbers(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
) -> None:
    analysis = {"margin": 0.02, "minLabels": 100, "window": "5m"}
    canary = {"steps": STEPS, "analysis": analysis}
    await canary_running(cluster, namespace, summaries, pods, canary, step=0, canaryWeight=20)
    write_quality(s3, namespace, "iris-v1", labels(190, 200))
    write_quality(s3, namespace, "iris-v2", labels(140, 200))

    dep = await wait_status(cluster, namespace, "rolled back", phase="RolledBack")
    status = dep["status"]
    entry = status["history"][-1]
    assert (entry["reason"], entry["version"]) == ("Underperforming", "iris-v2")
    assert (
        "accuracy iris-v2 0.7000 (200 labels) vs iris-v1 0.9500 (200 labels)" in (entry["message"])
    )
    report = status["analysis"]
    assert report == entry["analysis"]
    assert (report["decision"], report["metric"], report["margin"]) == ("Failed", "accuracy", 0.02)
    assert (report["canaryValue"], report["canaryLabels"]) == (0.7, 200)
    assert (report["stableValue"], report["stableLabels"]) == (0.95, 200)
    assert report["z"] < -1.645 and report["pWorse"] < 0.05
    assert status["rejectedVersions"] == ["iris-v2"]
    assert weights(await routing(cluster, namespace)) == {"iris-v1": 100}


async def test_canary_is_held_until_shown_not_worse_then_promoted(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
) -> None:
    analysis = {"margin": 0.05, "minLabels": 100, "window": "5m"}
    canary = {"steps": STEPS, "analysis": analysis}
    await canary_running(cluster, namespace, summaries, pods, canary, step=0, canaryWeight=20)

    dep = await wait_reason(cluster, namespace, "AwaitingAnalysis")
    progressing = condition(dep, "Progressing")
    assert progressing["status"] == "True"
    assert (
        "iris-v2 held at step 1 until it is shown not worse than iris-v1"
        in (progressing["message"])
    )
    assert "(0 labels)" in progressing["message"]
    await asyncio.sleep(3)  # both 1 s pauses over: without the analysis it would be promoted
    status = (await get(cluster, namespace))["status"]
    assert (status["phase"], status["step"], status["canaryWeight"]) == ("Progressing", 0, 20)
    assert weights(await routing(cluster, namespace)) == {"iris-v1": 80, "iris-v2": 20}

    write_quality(s3, namespace, "iris-v1", labels(190, 200))
    write_quality(s3, namespace, "iris-v2", labels(192, 200))
    dep = await wait_status(
        cluster, namespace, "promoted", phase="Promoted", stableVersion="iris-v2"
    )
    history = dep["status"]["history"]
    assert [h["reason"] for h in history][-3:] == ["CanaryStep", "CanaryStep", "Promoted"]
    for entry in history[-2:]:  # the step to 50% and the promotion, each on its numbers
        assert entry["analysis"]["decision"] == "Passed"
        assert "accuracy iris-v2 0.9600 (200 labels)" in entry["message"]
    assert weights(await routing(cluster, namespace)) == {"iris-v2": 100}


async def test_abtest_routes_a_sticky_split_and_records_its_decision(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
) -> None:
    test = {"weight": 30, "stickyHeader": "x-user-id", "maxDuration": "1h"}
    canary = {"mode": "abtest", "analysis": {"minLabels": 100, "window": "5m"}, "abtest": test}
    await canary_running(cluster, namespace, summaries, pods, canary, step=0, canaryWeight=30)
    table = await routing(cluster, namespace)
    assert (table["mode"], table["stickyHeader"]) == ("abtest", "x-user-id")
    assert weights(table) == {"iris-v1": 70, "iris-v2": 30}
    await wait_reason(cluster, namespace, "AwaitingAnalysis")

    write_quality(s3, namespace, "iris-v1", labels(170, 200))
    write_quality(s3, namespace, "iris-v2", labels(196, 200))
    dep = await wait_status(
        cluster, namespace, "promoted", phase="Promoted", stableVersion="iris-v2"
    )
    entry = dep["status"]["history"][-1]
    assert entry["reason"] == "ABTestWon"
    assert "won the A/B test against iris-v1: accuracy iris-v2 0.9800" in entry["message"]
    report = entry["analysis"]
    assert (report["mode"], report["decision"], report["margin"]) == ("abtest", "Passed", 0.0)
    assert (report["canaryLabels"], report["stableLabels"]) == (200, 200)
    assert report["z"] > 1.645 and report["pNotWorse"] < 0.05
    assert (await routing(cluster, namespace))["mode"] == "canary"  # one version: plain


async def test_shadow_takes_no_client_traffic_and_is_promoted_on_agreement(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
) -> None:
    canary = {"mode": "shadow",
              "shadow": {"duration": "2s", "minAgreement": 0.95, "minCompared": 100}}  # fmt: skip
    await canary_running(cluster, namespace, summaries, pods, canary, step=0, canaryWeight=0)
    table = await routing(cluster, namespace)
    assert table["mode"] == "shadow"
    assert [(v["name"], v["role"], v["weight"]) for v in table["versions"]] == [
        ("iris-v1", "stable", 100),
        ("iris-v2", "canary", 0),
    ]
    dep = await wait_reason(cluster, namespace, "AwaitingAnalysis")  # its 2 s are over
    assert "0 rows compared with iris-v1, 100 needed" in condition(dep, "Progressing")["message"]

    write_quality(s3, namespace, "iris-v2", agreement=Agreement(compared=400, agreed=396))
    dep = await wait_status(
        cluster, namespace, "promoted", phase="Promoted", stableVersion="iris-v2"
    )
    entry = dep["status"]["history"][-1]
    assert entry["reason"] == "Promoted"
    assert "agreement with iris-v1 0.9900 over 400 rows >= 0.95" in entry["message"]
    assert (entry["analysis"]["agreement"], entry["analysis"]["compared"]) == (0.99, 400)


def test_shadow_through_a_gateway_is_refused_at_apply(kubectl: Kubectl, namespace: str) -> None:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {"model": "iris", "routing": "gateway",
                 "gateway": {"parentRefs": [{"name": "public"}]},
                 "canary": {"version": "latest", "mode": "shadow"}},
    }  # fmt: skip
    assert_refused_at_apply(kubectl, doc, "canary.mode: shadow needs routing: model")
