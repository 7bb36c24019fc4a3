"""Retraining on new data and on a schedule, with the real operator, control plane and store.

No Deployment exists: the monitors have no traffic to check (``Drifted=Unknown, NoTarget``),
and the triggers must fire all the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import Any

import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.models import iris_frame
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
MONITOR = "iris-drift"
TRAINING_TIMEOUT = 150.0  # a pod start plus a training, on a busy 2-core machine


def monitor(namespace: str, dataset: str, **retrain: Any) -> dict[str, Any]:
    template = {
        "model": "iris",
        "dataset": {"uri": dataset, "target": "species"},
        "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": MONITOR, "namespace": namespace},
        "spec": {
            "deployment": "iris",
            "interval": "1s",
            "retrain": {"template": template, "cooldown": "1h", **retrain},
        },
    }


def upload(s3: S3Server, uri: str, seed: int) -> bytes:
    """Put a shuffled iris CSV at ``uri``; return its bytes."""
    data = iris_frame().sample(frac=1.0, random_state=seed).to_csv(index=False).encode()
    s3.store().put(Location.parse(uri), data, content_type="text/csv")
    return bytes(data)


async def get_monitor(cluster: Cluster, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] | None = await cluster.get(API_VERSION, "DriftMonitor", namespace, MONITOR)
    assert obj is not None
    return obj


async def runs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return await cluster.list(API_VERSION, "TrainingRun", namespace, {})


async def status_says(
    cluster: Cluster, namespace: str, what: str, test: Any, timeout: float = 45
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await get_monitor(cluster, namespace)
        return obj if test(obj.get("status") or {}) else None

    return await eventually(probe, what=what, timeout=timeout)


async def checked_after(cluster: Cluster, namespace: str, when: str) -> None:
    """Wait for a check of the monitor that started after ``when`` (ISO 8601, seconds)."""
    await status_says(
        cluster, namespace, f"a check after {when}", lambda s: s.get("lastCheckTime", "") > when
    )


async def test_new_object_under_the_prefix_starts_one_run_on_it_and_no_more_after_restart(
    cluster: Cluster, namespace: str, s3: S3Server, operator: OperatorProcess
) -> None:
    prefix = f"s3://modelops/{namespace}/data/"
    upload(s3, f"{prefix}iris-1.csv", seed=1)
    # no cooldown: only the recorded data version keeps a restarted operator from repeating
    await cluster.create(monitor(namespace, prefix, onNewData=True, cooldown="0s"))
    # the data there when the monitor starts is its baseline, not new data
    await status_says(
        cluster,
        namespace,
        "the data baseline",
        lambda s: (s.get("dataVersion") or {}).get("uri") == f"{prefix}iris-1.csv",
    )
    assert await runs(cluster, namespace) == []

    data = upload(s3, f"{prefix}iris-2.csv", seed=2)
    created = await eventually(lambda: runs(cluster, namespace), what="a retraining run")
    assert [r["metadata"]["name"] for r in created] == [f"{MONITOR}-retrain-1"]
    run = created[0]
    assert run["spec"]["dataset"]["uri"] == f"{prefix}iris-2.csv"
    assert run["metadata"]["annotations"]["modelops.dev/trigger"] == "new-data"
    assert "iris-2.csv" in run["metadata"]["annotations"]["modelops.dev/trigger-detail"]

    async def registered() -> dict[str, Any] | None:
        return await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-v1")

    version = await eventually(registered, what="iris-v1", timeout=TRAINING_TIMEOUT)
    lineage = version["spec"]["lineage"]
    assert lineage["trigger"] == "new-data"
    assert lineage["trainingRun"] == f"{MONITOR}-retrain-1"
    assert lineage["datasetUri"] == f"{prefix}iris-2.csv"
    assert lineage["datasetSha256"] == hashlib.sha256(data).hexdigest()
    events = await cluster.list("v1", "Event", namespace, {})
    started = [e for e in events if e.get("reason") == "RetrainStarted"]
    assert len(started) == 1 and "new-data" in started[0]["message"]

    operator.stop()
    stopped = (await get_monitor(cluster, namespace))["status"]["lastCheckTime"]
    operator.start()
    await checked_after(cluster, namespace, stopped)
    await asyncio.sleep(1.5)  # a few more checks
    assert [r["metadata"]["name"] for r in await runs(cluster, namespace)] == [
        f"{MONITOR}-retrain-1"
    ]
    status = (await get_monitor(cluster, namespace))["status"]
    assert (status["retrains"], status["lastTrigger"]) == (1, "new-data")
    assert status["dataVersion"]["uri"] == f"{prefix}iris-2.csv"


async def test_schedule_starts_one_run_per_slot_and_none_inside_the_cooldown(
    cluster: Cluster, namespace: str, s3: S3Server, operator_without_pods: OperatorProcess
) -> None:
    dataset = f"s3://modelops/{namespace}/iris.csv"
    upload(s3, dataset, seed=1)
    await cluster.create(monitor(namespace, dataset, schedule="* * * * *"))
    baseline = await status_says(
        cluster, namespace, "the schedule baseline", lambda s: s.get("nextScheduleTime")
    )
    first_slot = baseline["status"]["nextScheduleTime"]
    assert baseline["status"]["lastScheduleTime"] < first_slot
    assert await runs(cluster, namespace) == []  # the monitor's start is no slot

    # a real slot, at most a minute away
    created = await eventually(lambda: runs(cluster, namespace), what="a run", timeout=90)
    assert [r["metadata"]["name"] for r in created] == [f"{MONITOR}-retrain-1"]
    annotations = created[0]["metadata"]["annotations"]
    assert annotations["modelops.dev/trigger"] == "schedule"
    assert first_slot in annotations["modelops.dev/trigger-detail"]
    # the pass that created the run writes its status after it
    obj = await status_says(cluster, namespace, "retrains: 1", lambda s: s.get("retrains") == 1)
    status = obj["status"]
    assert (status["lastScheduleTime"], status["lastTrigger"]) == (first_slot, "schedule")

    # Ten slots missed (as if the operator had been down), all inside the cooldown: the latest
    # is skipped, none is run.
    missed = dt.datetime.fromisoformat(first_slot) - dt.timedelta(minutes=10)
    await cluster.patch(
        API_VERSION,
        "DriftMonitor",
        namespace,
        MONITOR,
        {"status": {"lastScheduleTime": missed.strftime("%Y-%m-%dT%H:%M:%SZ")}},
        subresource="status",
    )
    skipped = await status_says(
        cluster,
        namespace,
        "the missed slot skipped",
        lambda s: (
            s.get("lastScheduleTime", "") >= first_slot
            and "skipped" in condition({"status": s}, "Retraining").get("message", "")
        ),
    )
    assert condition(skipped, "Retraining")["status"] == "True"
    assert [r["metadata"]["name"] for r in await runs(cluster, namespace)] == [
        f"{MONITOR}-retrain-1"
    ]


async def test_missed_slots_give_one_run_not_a_burst(
    cluster: Cluster, namespace: str, s3: S3Server, operator_without_pods: OperatorProcess
) -> None:
    dataset = f"s3://modelops/{namespace}/iris.csv"
    upload(s3, dataset, seed=1)
    await cluster.create(monitor(namespace, dataset, schedule="* * * * *", cooldown="0s"))
    baseline = await status_says(
        cluster, namespace, "the schedule baseline", lambda s: s.get("lastScheduleTime")
    )
    handled = dt.datetime.fromisoformat(baseline["status"]["lastScheduleTime"])
    missed = handled - dt.timedelta(minutes=30)  # thirty slots missed while "down"
    await cluster.patch(
        API_VERSION,
        "DriftMonitor",
        namespace,
        MONITOR,
        {"status": {"lastScheduleTime": missed.strftime("%Y-%m-%dT%H:%M:%SZ")}},
        subresource="status",
    )
    created = await eventually(lambda: runs(cluster, namespace), what="a run")
    before = (await get_monitor(cluster, namespace))["status"]["lastCheckTime"]
    await checked_after(cluster, namespace, before)
    await asyncio.sleep(1.5)  # a few more checks, none of them inside a slot change
    names = [r["metadata"]["name"] for r in await runs(cluster, namespace)]
    # with no cooldown a new real slot may have come meanwhile, and run: at most that one more
    assert names[0] == created[0]["metadata"]["name"] == f"{MONITOR}-retrain-1"
    assert len(names) <= 2


async def test_invalid_schedule_is_a_retraining_condition_and_drift_checks_go_on(
    cluster: Cluster, namespace: str, s3: S3Server, operator_without_pods: OperatorProcess
) -> None:
    dataset = f"s3://modelops/{namespace}/iris.csv"
    await cluster.create(monitor(namespace, dataset, schedule="61 * * * *"))  # five fields
    obj = await status_says(
        cluster,
        namespace,
        "Retraining=False",
        lambda s: condition({"status": s}, "Retraining").get("status") == "False",
    )
    retraining = condition(obj, "Retraining")
    assert retraining["reason"] == "InvalidSpec"
    assert "'61 * * * *'" in retraining["message"] and "Bad minute" in retraining["message"]
    assert condition(obj, "Drifted")["reason"] == "NoTarget"  # the drift check still ran


async def test_admission_refuses_a_schedule_that_is_not_five_fields(
    cluster: Cluster, namespace: str
) -> None:
    doc = monitor(namespace, f"s3://modelops/{namespace}/iris.csv", schedule="hourly")
    with pytest.raises(ApiError) as refused:
        await cluster.create(doc)
    assert refused.value.status == 422 and "spec.retrain.schedule" in refused.value.body
