"""The kubelet's no-process mode (``modelops.local.simpods``) on a real control plane.

A cluster of its own (the package's kubelet runs processes): serving children built by
``modelops.resources.serving`` are applied as the operator would apply them, and the
simulated serving pods are expected to write what real ones write: reports of the versions
in their table, sketch windows counted against each version's profile.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from modelops.api.deployment import Deployment
from modelops.controllers.cluster import Cluster
from modelops.drift import Sketch, detect
from modelops.local.cluster import BUCKET, NAMESPACE
from modelops.resources import serving
from modelops.settings import Settings
from modelops.storage import ArtifactError, ArtifactStore, Location
from support.models import iris_frame, train_version
from support.operator import condition, eventually
from support.simcluster import SimulatedCluster

pytestmark = pytest.mark.integration
RPS = 400.0
INTERVAL = 1.0  # seconds per sketch window: the smallest the server allows
MAX_PODS = 150  # not the kubelet's default 110


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedCluster]:
    directory = tmp_path_factory.mktemp("simulated")
    with SimulatedCluster(
        directory, requests_per_second=RPS, sketch_interval=INTERVAL, max_pods=MAX_PODS
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def summary(sim: SimulatedCluster) -> dict[str, Any]:
    store = sim.store()
    buffer = io.StringIO()
    iris_frame().to_csv(buffer, index=False)
    store.put(Location(BUCKET, "datasets/iris.csv"), buffer.getvalue().encode())
    return train_version(store, 1)


@pytest.fixture
async def admin(sim: SimulatedCluster) -> AsyncIterator[Cluster]:
    client = Cluster(sim.connection())
    yield client
    await client.close()


def version_spec(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("artifact", "profile", "signature")}


async def serve(
    admin: Cluster, name: str, summary: dict[str, Any], weights: dict[str, int]
) -> None:
    """Apply a modelops Deployment's children (model routing) serving ``weights``."""
    dep = Deployment.model_validate(
        {
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"model": "iris", "replicas": 1},
        }
    )
    routes = [
        serving.Route(v, "stable" if i == 0 else "canary", w, version_spec(summary))
        for i, (v, w) in enumerate(weights.items())
    ]
    for child in serving.children(dep, routes, Settings()):
        await admin.apply(child)


def objects(store: ArtifactStore, prefix: str) -> list[dict[str, Any]]:
    found = []
    for key in store.list(Location(BUCKET, prefix)):
        try:
            found.append(json.loads(store.get(Location(BUCKET, key))))
        except ArtifactError:
            continue  # deleted between the listing and the read: a withdrawn report
    return found


async def report(sim: SimulatedCluster, name: str) -> dict[str, Any] | None:
    found = await asyncio.to_thread(objects, sim.store(), f"{NAMESPACE}/serving/{name}/pods/")
    return found[0] if found else None


async def windows(sim: SimulatedCluster, name: str, version: str) -> list[dict[str, Any]]:
    prefix = f"{NAMESPACE}/sketches/{name}/{version}/"
    return await asyncio.to_thread(objects, sim.store(), prefix)


async def profile(sim: SimulatedCluster, summary: dict[str, Any]) -> dict[str, Any]:
    loc = Location.parse(summary["profile"]["uri"])
    data: dict[str, Any] = json.loads(await asyncio.to_thread(sim.store().get, loc))
    return data


async def test_a_pod_is_running_and_ready_without_a_process(
    sim: SimulatedCluster, admin: Cluster
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "no-process", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "main", "image": "registry.example/any:1"}]},
    }
    await admin.create(pod)

    async def running() -> dict[str, Any] | None:
        found = await admin.get("v1", "Pod", NAMESPACE, "no-process")
        return found if condition(found, "Ready").get("status") == "True" else None

    found = await eventually(running, what="the pod Ready")
    status = found["status"]
    assert (status["phase"], "containerID" in status["containerStatuses"][0]) == (
        "Running",
        False,
    )


async def test_a_serving_pod_reports_every_version_of_its_table_loaded(
    sim: SimulatedCluster, admin: Cluster, summary: dict[str, Any]
) -> None:
    await serve(admin, "loaded", summary, {"iris-v1": 90, "iris-v2": 10})

    async def reported() -> dict[str, Any] | None:
        return await report(sim, "loaded")

    found = await eventually(reported, what="the pod's report")
    assert (found["versions"], found["loaded"]) == (["iris-v1", "iris-v2"],) * 2


async def test_a_table_change_is_reported_before_the_next_period(
    sim: SimulatedCluster, admin: Cluster, summary: dict[str, Any]
) -> None:
    await serve(admin, "changed", summary, {"iris-v1": 100})
    await eventually(lambda: report(sim, "changed"), what="the first report")
    await serve(admin, "changed", summary, {"iris-v1": 90, "iris-v3": 10})

    async def with_canary() -> dict[str, Any] | None:
        found = await report(sim, "changed")
        return found if found and "iris-v3" in found["versions"] else None

    # Within the report period (10 s) only if the change itself triggered the report.
    await eventually(with_canary, timeout=sim.simulator.config.report_period - 1, what="v3")


async def test_windows_are_counted_against_the_profile_and_do_not_drift(
    sim: SimulatedCluster, admin: Cluster, summary: dict[str, Any]
) -> None:
    await serve(admin, "healthy", summary, {"iris-v1": 100})
    found = await eventually(lambda: windows(sim, "healthy", "iris-v1"), what="a window")
    reference = await profile(sim, summary)
    report_ = detect(reference, Sketch.from_dict(found[0]))
    assert (found[0]["profile"], report_.dataset_drift) == (reference["fingerprint"], False)


async def test_a_drifted_version_writes_windows_that_drift(
    sim: SimulatedCluster, admin: Cluster, summary: dict[str, Any]
) -> None:
    sim.simulator.drift(NAMESPACE, "drifted", "iris-v1")
    await serve(admin, "drifted", summary, {"iris-v1": 100})
    found = await eventually(lambda: windows(sim, "drifted", "iris-v1"), what="a window")
    reference = await profile(sim, summary)
    assert detect(reference, Sketch.from_dict(found[0])).dataset_drift


async def test_a_deleted_serving_pod_withdraws_its_report(
    sim: SimulatedCluster, admin: Cluster, summary: dict[str, Any]
) -> None:
    await serve(admin, "gone", summary, {"iris-v1": 100})
    await eventually(lambda: report(sim, "gone"), what="the report")
    await admin.delete("apps/v1", "Deployment", NAMESPACE, serving.server_name("gone"))

    async def withdrawn() -> bool:
        return await report(sim, "gone") is None

    await eventually(withdrawn, what="the report deleted")


def test_the_node_advertises_the_configured_pod_capacity(sim: SimulatedCluster) -> None:
    node = sim.control_plane.get(f"/api/v1/nodes/{sim.control_plane.node_name}")
    assert node is not None
    assert node["status"]["capacity"]["pods"] == str(MAX_PODS)
