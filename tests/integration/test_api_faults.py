"""What the real API server refuses, and how reconciliation survives it and says so.

The status-write tests drive :func:`modelops.controllers.status.reconciling` in this process
against the real server (the refusals are the server's own); the quota test runs the real
operator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.controllers.main import runtime
from modelops.controllers.metrics import STATUS_FIELDS_PRUNED, STATUS_WRITE_ERRORS
from modelops.controllers.status import reconciling
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def sample_run(namespace: str, name: str = "iris-logreg") -> dict[str, Any]:
    run: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests/samples/trainingrun-iris.yaml").read_text()
    )
    run["metadata"] |= {"namespace": namespace, "name": name}
    return run


@pytest.fixture
async def as_operator(cluster: Cluster) -> AsyncIterator[Cluster]:
    """``runtime.cluster`` for in-process reconciliations (restored after)."""
    previous = getattr(runtime, "cluster", None)
    runtime.cluster = cluster
    yield cluster
    if previous is not None:
        runtime.cluster = previous


async def created(cluster: Cluster, obj: dict[str, Any]) -> kopf.Body:
    await cluster.create(obj)
    meta = obj["metadata"]
    found = await cluster.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
    assert found is not None
    return kopf.Body(found)


async def test_non_finite_metrics_never_reach_the_server_and_the_rest_is_written(
    as_operator: Cluster, namespace: str
) -> None:
    body = await created(as_operator, sample_run(namespace))
    patch = kopf.Patch()
    async with reconciling("TrainingRun", body, patch):
        patch.status["metrics"] = {"r2": float("nan"), "mae": float("inf"), "accuracy": 0.9}
        patch.status["phase"] = "Running"
    stored = await as_operator.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
    assert stored is not None
    assert stored["status"]["metrics"] == {"accuracy": 0.9}
    assert stored["status"]["phase"] == "Running"


async def test_a_status_field_the_schema_lacks_is_counted_when_the_server_prunes_it(
    as_operator: Cluster, namespace: str
) -> None:
    body = await created(as_operator, sample_run(namespace))
    before = STATUS_FIELDS_PRUNED.labels("TrainingRun")._value.get()
    patch = kopf.Patch()
    async with reconciling("TrainingRun", body, patch):
        patch.status["phase"] = "Running"
        patch.status["notInTheSchema"] = {"a": 1}
    assert STATUS_FIELDS_PRUNED.labels("TrainingRun")._value.get() == before + 1
    stored = await as_operator.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
    assert stored is not None and "notInTheSchema" not in stored["status"]


async def test_a_status_the_server_refuses_becomes_a_condition_not_a_dead_timer(
    as_operator: Cluster, namespace: str
) -> None:
    body = await created(as_operator, sample_run(namespace))
    before = STATUS_WRITE_ERRORS.labels("TrainingRun", "422")._value.get()
    patch = kopf.Patch()
    async with reconciling("TrainingRun", body, patch):  # no exception escapes to Kopf
        patch.status["phase"] = "Exploded"  # not in the CRD's enum: 422 from the server
    stored = await as_operator.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
    ready = condition(stored, "Ready")
    assert (ready["status"], ready["reason"]) == ("Unknown", "StatusRejected"), stored
    assert "Exploded" in ready["message"] and "Unsupported value" in ready["message"]
    assert STATUS_WRITE_ERRORS.labels("TrainingRun", "422")._value.get() == before + 1


async def test_a_full_quota_stalls_the_run_with_the_servers_message_then_it_proceeds(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-jobs", "namespace": namespace},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    await cluster.create(quota)
    await cluster.create(sample_run(namespace))

    async def stalled() -> dict[str, Any] | None:
        run = await cluster.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
        stall = condition(run, "Stalled")
        return (
            run if (stall.get("status"), stall.get("reason")) == ("True", "QuotaExceeded") else None
        )

    # (Until the quota controller has counted, admission says "status unknown": Forbidden.)
    run = await eventually(stalled, timeout=60, what="Stalled=True, QuotaExceeded")
    stall = condition(run, "Stalled")
    assert stall["reason"] == "QuotaExceeded"
    assert "exceeded quota: no-jobs" in stall["message"]

    quota["spec"]["hard"]["count/jobs.batch"] = "1"
    await cluster.patch("v1", "ResourceQuota", namespace, "no-jobs", {"spec": quota["spec"]})

    async def unstalled() -> dict[str, Any] | None:
        run = await cluster.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
        stalled_now = condition(run, "Stalled")
        job = await cluster.get("batch/v1", "Job", namespace, "iris-logreg-train")
        return run if job and stalled_now.get("status") == "False" else None

    run = await eventually(unstalled, timeout=90, what="the Job created and Stalled=False")
    assert condition(run, "Stalled")["reason"] == "Reconciled"
