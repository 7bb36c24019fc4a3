"""The operator behind the fault proxy answering 409 Conflict.

Two kinds of 409 a real API server gives: ``Conflict`` on a write of an object that changed
since it was read (here: status writes and updates, refused at random), and ``AlreadyExists``
on a create whose earlier attempt did happen, its answer lost on the way back (here: the
proxy forwards the create of the Job and of the ModelVersion, then answers 409 instead of
201). Either way a TrainingRun ends Succeeded with exactly one Job and exactly one
ModelVersion, and it goes on within a few polls of the last refusal. Counts and times are
printed (``-s``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from support.faultproxy import FaultProxy, Rule
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
RESUMED_WITHIN = 30.0  # s from the last refusal to the run's end: a few of Kopf's retries


def sample_run(namespace: str) -> dict[str, Any]:
    run: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests/samples/trainingrun-iris.yaml").read_text()
    )
    run["metadata"]["namespace"] = namespace
    return run


async def finished(cluster: Cluster, namespace: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        run = await cluster.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
        phase = (run or {}).get("status", {}).get("phase")
        return run if phase in ("Succeeded", "Failed") else None

    done: dict[str, Any] = await eventually(probe, timeout=180, what="iris-logreg finished")
    return done


async def assert_exactly_once(cluster: Cluster, namespace: str, run: dict[str, Any]) -> None:
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert condition(run, "Registered")["status"] == "True"
    jobs = await cluster.list("batch/v1", "Job", namespace, {})
    versions = await cluster.list(API_VERSION, "ModelVersion", namespace, {})
    assert [j["metadata"]["name"] for j in jobs] == ["iris-logreg-train"]
    assert [v["metadata"]["name"] for v in versions] == ["iris-v1"]
    assert run["status"]["modelVersion"] == "iris-v1"


async def last_refusal(rules: list[Rule]) -> float:
    """The monotonic time at which every rule had given all its refusals."""

    async def spent() -> bool:
        return all(rule.times is not None and rule.hits >= rule.times for rule in rules)

    await eventually(spent, timeout=180, what="every refusal given")
    return time.monotonic()


async def test_status_writes_refused_with_conflicts_are_written_once_the_server_accepts(
    cluster: Cluster, proxy: FaultProxy, operator_via_proxy: OperatorProcess, namespace: str
) -> None:
    # Every PATCH or PUT of a status (TrainingRun, ModelVersion) answered 409 Conflict, the
    # first 12 of them: the run's own progress writes and the registration's both meet some.
    rule = proxy.fail(409, method="PATCH|PUT", path=r"/status(\?|$)", times=12)
    await cluster.create(sample_run(namespace))
    refused_until = await last_refusal([rule])
    run = await finished(cluster, namespace)
    resumed = time.monotonic() - refused_until
    print(
        f"\n409 Conflict on status writes: {rule.hits}; the run ended {resumed:.1f}s after "
        f"the last; faults injected: {dict(proxy.injected)}"
    )
    await assert_exactly_once(cluster, namespace, run)
    assert resumed < RESUMED_WITHIN


async def test_creates_answered_409_after_they_happened_make_one_job_and_one_version(
    cluster: Cluster, proxy: FaultProxy, operator_via_proxy: OperatorProcess, namespace: str
) -> None:
    rules = [
        proxy.fail(
            409,
            method="POST",
            path=rf"/namespaces/{namespace}/{plural}(\?|$)",
            times=1,
            forward=True,
        )
        for plural in ("jobs", "modelversions")
    ]
    await cluster.create(sample_run(namespace))
    refused_until = await last_refusal(rules)
    run = await finished(cluster, namespace)
    resumed = time.monotonic() - refused_until
    print(
        f"\ncreates done but answered 409: {[r.hits for r in rules]} (Job, ModelVersion); "
        f"the run ended {resumed:.1f}s after the last; faults injected: {dict(proxy.injected)}"
    )
    await assert_exactly_once(cluster, namespace, run)
    assert resumed < RESUMED_WITHIN
