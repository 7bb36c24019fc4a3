"""The object store down for 30 s (the S3 server stopped, then started again on the same ports
and data dir: :meth:`S3Server.restart`), once during a training run and once while real
serving pods flush sketch windows and a DriftMonitor reads them.

- training: the trainer's store calls fail while it is down; its pod fails and the Job
  (``backoffLimit`` 6) starts another once the store is back: the run ends Succeeded with one
  Job and one ModelVersion, the failed attempts counted in the Job's status;
- serving: windows closed while the store is down are not written and counted
  (``modelops_serving_sketch_flushes_total{result="error"}``), every window counted as written
  is in the store, and windows are written again after it returns;
- monitoring: the DriftMonitor's check cannot read the windows: ``Drifted=Unknown``
  (``CheckFailed``) while the store is down, a verdict again after it returns.

The outage length, failed attempts and the flush counts are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server
from modelops.local.traffic import Traffic
from support.cluster_fixtures import add_version, sample
from support.models import iris_frame, train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.faults
OUTAGE = 30.0  # seconds the store is down
SKETCH_INTERVAL = 5.0  # s: the serving pods' default (``--sketch-interval``)
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class Outage:
    """Stops the store; :meth:`end` starts it again after ``OUTAGE`` seconds in all."""

    def __init__(self, s3: S3Server) -> None:
        self.s3 = s3
        self.began = 0.0
        self.ended = 0.0  # time.time() when the store answered again

    def begin(self) -> None:
        self.s3.stop()
        self.began = time.time()

    async def end(self) -> None:
        await asyncio.sleep(max(0.0, self.began + OUTAGE - time.time()))
        # On this (the main) thread: the server dies with the thread that started it
        # (PR_SET_PDEATHSIG), and asyncio.to_thread's workers do not live long.
        self.s3.restart()
        self.ended = time.time()


@pytest.fixture
def outage(s3: S3Server) -> Iterator[Outage]:
    """The store's outage; it is up again after the test whatever happened."""
    out = Outage(s3)
    yield out
    if s3.process is None:
        s3.restart()


async def test_a_run_whose_store_goes_down_while_training_is_retried_and_succeeds(
    cluster: Cluster, namespace: str, operator: OperatorProcess, outage: Outage
) -> None:
    run = sample("trainingrun-iris.yaml", namespace)
    run["spec"]["backoffLimit"] = 6  # the Job's pod retries: 10 s, 20 s, 40 s... apart
    await cluster.create(run)

    async def trainer_running() -> bool:
        pods = await cluster.list("v1", "Pod", namespace, {"job-name": "iris-logreg-train"})
        return any(p.get("status", {}).get("phase") == "Running" for p in pods)

    await eventually(trainer_running, timeout=90, what="the trainer's pod Running")
    outage.begin()
    await outage.end()

    async def finished() -> dict[str, Any] | None:
        found = await cluster.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
        phase = (found or {}).get("status", {}).get("phase")
        return found if phase in ("Succeeded", "Failed") else None

    done = await eventually(finished, timeout=180, what="the TrainingRun finished")
    jobs = await cluster.list("batch/v1", "Job", namespace, {})
    versions = await cluster.list(API_VERSION, "ModelVersion", namespace, {})
    failed = sum(j.get("status", {}).get("failed", 0) for j in jobs)
    print(
        f"\nstore down {outage.ended - outage.began:.0f}s from the trainer's start: "
        f"{failed} failed trainer attempts, then {done['status']['phase']} "
        f"{done['status'].get('modelVersion')}"
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert [j["metadata"]["name"] for j in jobs] == ["iris-logreg-train"]
    assert [v["metadata"]["name"] for v in versions] == ["iris-v1"]
    assert failed >= 1  # the outage was felt: an attempt failed and another was started


def flushes(metrics: str) -> dict[str, float]:
    """``modelops_serving_sketch_flushes_total`` by result, from a pod's ``/metrics``."""
    found: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("modelops_serving_sketch_flushes_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            found[result] = float(line.split()[-1])
    return found


@pytest.fixture
async def serving(
    cluster: Cluster, namespace: str, s3: S3Server, local_cluster: LocalCluster
) -> AsyncIterator[tuple[str, Traffic]]:
    """iris-v1 served by one real pod (``replicas: 1``: its ``/metrics`` are the whole
    Deployment's), a DriftMonitor on it, and 20 requests/s of iris rows; yields the Service's
    URL and the traffic."""
    await add_version(cluster, namespace, train_version(s3.store(), 1), 1)
    await cluster.create(
        {
            "apiVersion": API_VERSION,
            "kind": "Deployment",
            "metadata": {"name": "iris", "namespace": namespace},
            "spec": {"model": "iris", "replicas": 1},
        }
    )
    await cluster.create(
        {
            "apiVersion": API_VERSION,
            "kind": "DriftMonitor",
            "metadata": {"name": "iris-drift", "namespace": namespace},
            "spec": {"deployment": "iris", "window": "20s", "interval": "2s", "minSamples": 50},
        }
    )

    async def ready() -> str | None:
        dep = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
        if (dep or {}).get("status", {}).get("readyReplicas", 0) < 1:
            return None
        try:
            return local_cluster.service_url("iris", namespace)
        except LookupError:
            return None

    url = await eventually(ready, timeout=120, what="iris served")
    frame = iris_frame()
    traffic = Traffic(
        url,
        "iris",
        FEATURES,
        frame[FEATURES].to_numpy().tolist(),
        stds=frame[FEATURES].std().tolist(),
        rate=20.0,
    )
    traffic.start()
    yield url, traffic
    await traffic.stop()


async def test_sketch_windows_and_monitor_reads_survive_a_store_outage(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    s3: S3Server,
    serving: tuple[str, Traffic],
    outage: Outage,
) -> None:
    url, traffic = serving

    async def monitor_condition() -> dict[str, Any]:
        obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, "iris-drift")
        found: dict[str, Any] = condition(obj, "Drifted")
        return found

    async def verdict() -> dict[str, Any] | None:
        cond = await monitor_condition()
        return cond if cond.get("status") in ("True", "False") else None

    before = await eventually(verdict, timeout=90, what="a drift verdict before the outage")
    outage.begin()
    ending = asyncio.create_task(outage.end())

    async def check_failed() -> dict[str, Any] | None:
        cond = await monitor_condition()
        return (
            cond if (cond.get("status"), cond.get("reason")) == ("Unknown", "CheckFailed") else None
        )

    during = await eventually(
        check_failed, timeout=OUTAGE - 2, what="Drifted=Unknown (CheckFailed)"
    )
    await ending
    after = await eventually(verdict, timeout=60, what="a drift verdict after the outage")

    prefix = f"{namespace}/sketches/iris/"
    store = s3.store()

    async def written_after_return() -> list[Any] | None:
        objects = await asyncio.to_thread(
            lambda: list(store.client.list_objects("modelops", prefix=prefix, recursive=True))
        )
        late = [o for o in objects if o.last_modified.timestamp() > outage.ended]
        return objects if late else None

    await eventually(written_after_return, timeout=30, what="windows written again")
    await traffic.stop()
    await asyncio.sleep(2 * SKETCH_INTERVAL + 1)  # the last open window is flushed: no more
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        counts = flushes(await response.text())
    objects = await asyncio.to_thread(
        lambda: list(store.client.list_objects("modelops", prefix=prefix, recursive=True))
    )
    print(
        f"\nstore down {outage.ended - outage.began:.0f}s under {len(traffic.stats.answers)} "
        f"requests: sketch flushes {counts}; {len(objects)} windows in the store; Drifted "
        f"{before['status']} -> {during['status']} ({during['reason']}) -> {after['status']}"
    )
    assert counts.get("error", 0) >= 1  # windows closed while it was down, counted as dropped
    assert len(objects) == counts.get("ok")  # every window counted as written is there
    assert traffic.stats.errors() == []  # the store is not on the request path
