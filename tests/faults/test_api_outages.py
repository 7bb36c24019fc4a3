"""The operator behind a fault-injecting proxy: 503/429 answers, slow answers, cut watches.

Whatever is injected, a TrainingRun ends Succeeded with exactly one Job and exactly one
ModelVersion: nothing lost, nothing done twice. The proxy's counts are printed (``-s``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from support.faultproxy import FaultProxy
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


def sample_run(namespace: str) -> dict[str, Any]:
    run: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests/samples/trainingrun-iris.yaml").read_text()
    )
    run["metadata"]["namespace"] = namespace
    return run


async def finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        run = await cluster.get(API_VERSION, "TrainingRun", namespace, name)
        return (
            run if (run or {}).get("status", {}).get("phase") in ("Succeeded", "Failed") else None
        )

    return await eventually(probe, timeout=180, what=f"TrainingRun {name} finished")


async def assert_exactly_once(cluster: Cluster, namespace: str, run: dict[str, Any]) -> None:
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert condition(run, "Registered")["status"] == "True"
    jobs = await cluster.list("batch/v1", "Job", namespace, {})
    versions = await cluster.list(API_VERSION, "ModelVersion", namespace, {})
    assert [j["metadata"]["name"] for j in jobs] == ["iris-logreg-train"]
    assert [v["metadata"]["name"] for v in versions] == ["iris-v1"]
    assert run["status"]["modelVersion"] == "iris-v1"


@pytest.mark.parametrize("proxy", [1, 2, 3], indirect=True, ids=lambda s: f"seed{s}")
async def test_a_run_survives_random_503_and_429_and_cut_watches(
    cluster: Cluster, proxy: FaultProxy, operator_via_proxy: OperatorProcess, namespace: str
) -> None:
    proxy.fail(503, probability=0.15)
    proxy.fail(429, probability=0.10)
    proxy.delay(0.5, probability=0.05)
    stop = threading.Event()

    def cut_watches() -> None:
        while not stop.wait(3.0):
            proxy.drop_watches()

    cutter = threading.Thread(target=cut_watches, daemon=True)
    cutter.start()
    try:
        await cluster.create(sample_run(namespace))
        run = await finished(cluster, namespace, "iris-logreg")
    finally:
        stop.set()
        cutter.join()
    print(f"\nfaults injected: {dict(proxy.injected)}; requests forwarded: {proxy.forwarded}")
    assert sum(proxy.injected.values()) > 0
    await assert_exactly_once(cluster, namespace, run)


async def test_status_writes_refused_for_a_while_are_written_once_the_server_answers(
    cluster: Cluster, proxy: FaultProxy, operator_via_proxy: OperatorProcess, namespace: str
) -> None:
    # Every status write answered 503 (past every client retry) for the first 30 of them.
    rule = proxy.fail(503, method="PATCH", path=r"/trainingruns/[^/]+/status", times=30)
    await cluster.create(sample_run(namespace))
    run = await finished(cluster, namespace, "iris-logreg")
    print(f"\nstatus writes refused: {rule.hits}; faults injected: {dict(proxy.injected)}")
    assert rule.hits == 30
    await assert_exactly_once(cluster, namespace, run)
