"""Two operators with leader election for the same namespace: exactly one reconciles; when it
is SIGKILLed, the other takes the Lease within about its duration and carries on.

Both log in as the shipped ServiceAccount and contend for the shipped Lease
(``modelops-system/modelops-operator``), so the shipped Role is what they may do with it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import ApiError, Cluster
from modelops.controllers.leader import LEASE_API, Timing, holder
from modelops.local.s3server import S3Server
from support.cluster_fixtures import sample
from support.operator import OperatorProcess, eventually

pytestmark = pytest.mark.faults

LEASE_NAMESPACE, LEASE = "modelops-system", "modelops-operator"


@pytest.fixture
async def no_lease(cluster: Cluster) -> AsyncIterator[None]:
    """The shipped Lease, absent before and after the test."""
    with contextlib.suppress(ApiError):
        await cluster.delete(LEASE_API, "Lease", LEASE_NAMESPACE, LEASE)
    yield
    with contextlib.suppress(ApiError):
        await cluster.delete(LEASE_API, "Lease", LEASE_NAMESPACE, LEASE)


async def _finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await cluster.get(API_VERSION, "TrainingRun", namespace, name)
        phase = (found or {}).get("status", {}).get("phase")
        return found if phase in ("Succeeded", "Failed") else None

    return await eventually(probe, timeout=180, what=f"TrainingRun {name} finished")


async def test_one_of_two_operators_leads_and_the_other_takes_over_when_it_is_killed(
    cluster: Cluster,
    no_lease: None,
    operator_kubeconfig: Path,
    s3: S3Server,
    namespace: str,
    tmp_path: Path,
) -> None:
    operators = {
        pod: OperatorProcess(
            operator_kubeconfig,
            s3,
            tmp_path / pod,
            MODELOPS_NAMESPACES=namespace,
            MODELOPS_LEADER_ELECTION="true",
            POD_NAMESPACE=LEASE_NAMESPACE,
            POD_NAME=pod,
        )
        for pod in ("op-a", "op-b")
    }

    async def lease() -> dict[str, Any] | None:
        return await cluster.get(LEASE_API, "Lease", LEASE_NAMESPACE, LEASE)

    async def held_by(pods: tuple[str, ...]) -> dict[str, Any] | None:
        found = await lease()
        return found if holder(found).split("_")[0] in pods else None

    try:
        for proc in operators.values():
            proc.start()
        first = await eventually(
            lambda: held_by(tuple(operators)), timeout=30, what="a leader holds the lease"
        )
        leader_pod = holder(first).split("_")[0]
        standby_pod = next(p for p in operators if p != leader_pod)
        leader, standby = operators[leader_pod], operators[standby_pod]

        # 1: only the leader reconciles; the standby says whom it waits for
        await cluster.create(sample("trainingrun-iris.yaml", namespace))
        done = await _finished(cluster, namespace, "iris-logreg")
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert f"waiting for the lease held by {holder(first)}" in standby.logs()
        assert "acquired the lease" not in standby.logs()
        assert "iris-logreg" not in standby.logs()  # Kopf never ran there
        assert holder(await lease()) == holder(first)  # renewed, never lost

        # 2: the leader dies without releasing: the standby takes over once the lease lapses
        assert leader.process is not None
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait()
        killed = time.monotonic()
        second = await eventually(
            lambda: held_by((standby_pod,)), timeout=40, what=f"{standby_pod} takes the lease"
        )
        took = time.monotonic() - killed
        print(f"\n{standby_pod} took the lease {took:.1f} s after {leader_pod} was killed")
        timing = Timing()
        assert took < timing.lease_duration + timing.retry_period + 5
        assert second["spec"]["leaseTransitions"] == first["spec"]["leaseTransitions"] + 1

        again = sample("trainingrun-iris.yaml", namespace)
        again["metadata"]["name"] = "iris-logreg-2"
        await cluster.create(again)
        done = await _finished(cluster, namespace, "iris-logreg-2")
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert standby.alive(), standby.logs()[-3000:]

        # 3: SIGTERM: the new leader stops and releases the lease for the next at once
        assert standby.stop() == 0
        assert holder(await lease()) == ""
    finally:
        for proc in operators.values():
            proc.stop()
