"""What holds a canary and when a manual action is consumed, with the real operator.

One test per row of the issue table:

- row 5: a DriftMonitor guarding the canary whose ``features`` name one the profile lacks says
  ``Drifted=Unknown, reason=InvalidSpec`` (naming the missing feature and the ones there are)
  while its sample count follows the windows, and the canary is held in its step
  (``Progressing=False, reason=GuardUnknown``) until the monitor's spec is fixed;
- row 9: ``modelops.dev/action=abort`` while every pass fails after deciding stays on the
  object, and is obeyed and then removed once passes succeed again;
- row 10: ``modelops.dev/action=promote`` waits, annotation kept and status saying so, until
  every serving pod reports the canary loaded.

The operator's serving pods name an image the process kubelet does not run
(``UNRUNNABLE_IMAGE``), so the pod reports and sketch windows the tests write to the real S3
server are the only ones: when each pod has loaded what is the point of these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import ApiError, Cluster
from modelops.drift import Sketch
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.cluster_fixtures import Kubectl, add_version
from support.models import iris_frame, train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
TIMEOUT = 90.0
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
"""In the signature's order: a sketch counts rows by position."""
ACTION = "modelops.dev/action"


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2)}


class Pods:
    """Serving pods' reports, rewritten every half second as live pods do: what each pod
    holds (both versions: model routing) and what it has loaded so far."""

    def __init__(self, s3: S3Server, namespace: str) -> None:
        self.store = s3.store()
        self.namespace = namespace
        self.loaded: dict[str, list[str]] = {}

    def write(self) -> None:
        for pod, loaded in self.loaded.items():
            report = {
                "pod": pod,
                "time": time.time(),
                "versions": ["iris-v1", "iris-v2"],
                "loaded": loaded,
                "failed": {},
            }
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


async def get(cluster: Cluster, namespace: str, kind: str = "Deployment") -> dict[str, Any]:
    name = "iris" if kind == "Deployment" else "iris-drift"
    obj = await cluster.get(API_VERSION, kind, namespace, name)
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


async def routing(cluster: Cluster, namespace: str) -> dict[str, int]:
    cm = await cluster.get("v1", "ConfigMap", namespace, "iris-routing")
    assert cm is not None
    return {v["name"]: v["weight"] for v in json.loads(cm["data"]["routing.json"])["versions"]}


async def canary_loading(
    cluster: Cluster,
    namespace: str,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
    steps: list[dict[str, Any]],
) -> None:
    """Stable iris-v1 on two pods, then iris-v2 as a canary at weight 0, loaded by none."""
    await add_version(cluster, namespace, summaries[1], 1)
    pods.loaded = {"iris-server-0": ["iris-v1"], "iris-server-1": ["iris-v1"]}
    dep = {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {"model": "iris", "replicas": 2, "canary": {"version": "latest", "steps": steps}},
    }
    await cluster.create(dep)
    await wait_status(cluster, namespace, "stable iris-v1", stableVersion="iris-v1")
    await add_version(cluster, namespace, summaries[2], 2)
    await wait_status(cluster, namespace, "canary loading", canaryVersion="iris-v2", canaryWeight=0)


async def annotate(cluster: Cluster, namespace: str, action: str) -> None:
    body = {"metadata": {"annotations": {ACTION: action}}}
    await cluster.patch(API_VERSION, "Deployment", namespace, "iris", body)


def write_window(s3: S3Server, namespace: str, summary: dict[str, Any], n: int, pod: str) -> None:
    """What a serving pod flushes for iris-v2: a sketch of ``n`` rows like the training data."""
    store = s3.store()
    profile = json.loads(store.get(Location.parse(summary["profile"]["uri"])))
    frame = iris_frame()[FEATURES].to_numpy(np.float64)
    rows = frame[np.random.default_rng(len(pod)).integers(0, len(frame), n)]
    now = time.time()
    sketch = Sketch.empty(profile, start=now - 1, end=now)
    sketch.update(rows)
    window = sketch.to_dict() | {"requests": n, "errors": 0}
    key = f"{namespace}/sketches/iris/iris-v2/{int(now - 1)}-{pod}.json"
    store.put(Location("modelops", key), json.dumps(window).encode())


async def test_guard_that_cannot_evaluate_the_canary_holds_it_until_fixed(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
) -> None:
    """Row 5: before, the monitor raised every 60 s, its status stayed at "0 samples" while
    samples arrived, and the canary walked its 1 s steps to promotion unguarded."""
    steps = [{"weight": 20, "pause": "1s"}, {"weight": 50, "pause": "1s"}]
    monitor = {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": "iris-drift", "namespace": namespace},
        "spec": {"deployment": "iris", "action": "rollback", "interval": "1s", "minSamples": 100,
                 "features": ["sepal_length", "no_such_feature"]},
    }  # fmt: skip
    await cluster.create(monitor)
    await canary_loading(cluster, namespace, summaries, pods, steps)
    pods.loaded = {pod: ["iris-v1", "iris-v2"] for pod in pods.loaded}
    await wait_status(cluster, namespace, "canary at step 1", canaryWeight=20, step=0)
    for pod in ("iris-server-0", "iris-server-1"):
        write_window(s3, namespace, summaries[2], 200, pod)

    async def invalid_with_samples() -> dict[str, Any] | None:
        obj = await get(cluster, namespace, "DriftMonitor")
        status = obj.get("status", {})
        drifted = condition(obj, "Drifted")
        on_canary = status.get("version") == "iris-v2" and status.get("samples") == 400
        return obj if on_canary and drifted.get("reason") == "InvalidSpec" else None

    obj = await eventually(invalid_with_samples, what="InvalidSpec over 400 samples", timeout=30)
    drifted = condition(obj, "Drifted")
    assert drifted["status"] == "Unknown"
    assert "spec.features names no_such_feature" in drifted["message"]
    assert "petal_length, petal_width, sepal_length, sepal_width" in drifted["message"]

    async def held() -> dict[str, Any] | None:
        dep = await get(cluster, namespace)
        return dep if condition(dep, "Progressing").get("reason") == "GuardUnknown" else None

    dep = await eventually(held, what="Progressing=False reason GuardUnknown", timeout=30)
    progressing = condition(dep, "Progressing")
    assert progressing["status"] == "False"
    assert "iris-v2 held at step 1" in progressing["message"]
    assert "iris-drift: InvalidSpec" in progressing["message"]
    await asyncio.sleep(4)  # both pauses over twice: it would have been promoted by now
    status = (await get(cluster, namespace))["status"]
    assert (status["phase"], status["canaryWeight"], status["step"]) == ("Progressing", 20, 0)
    assert await routing(cluster, namespace) == {"iris-v1": 80, "iris-v2": 20}

    # Fixed, the monitor evaluates the canary (no drift) and the canary moves on at once.
    fixed = {"spec": {"features": ["sepal_length", "petal_length"]}}
    await cluster.patch(API_VERSION, "DriftMonitor", namespace, "iris-drift", fixed)
    dep = await wait_status(
        cluster, namespace, "promoted", phase="Promoted", stableVersion="iris-v2"
    )
    events = [h["event"] for h in dep["status"]["history"]]
    assert events == ["StableSelected", "CanaryStarted", "CanaryStep", "CanaryStep", "Promoted"]
    assert condition(await get(cluster, namespace, "DriftMonitor"), "Drifted")["reason"] != (
        "InvalidSpec"
    )


FROZEN = "routing table frozen by test_rollout_guards"


def freeze_routing(namespace: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (GA since Kubernetes 1.30, on by default) refusing every
    update of the namespace's ``iris-routing`` ConfigMap: the API error a pass meets after it
    has decided, when it applies the routing table."""
    name = f"freeze-routing-{namespace}"
    api = "admissionregistration.k8s.io/v1"
    rule = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
            "resources": ["configmaps"]}  # fmt: skip
    policy = {
        "apiVersion": api,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [rule]},
            "validations": [
                {"expression": "object.metadata.name != 'iris-routing'", "message": FROZEN}
            ],
        },
    }
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    binding = {
        "apiVersion": api,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": selector},
        },
    }
    return [policy, binding]


async def test_abort_during_failing_passes_is_kept_until_obeyed(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
    kubectl: Kubectl,
) -> None:
    """Row 9: every pass fails after it decides, when it applies the routing table, because an
    admission policy refuses the update (as a cluster's policy engine or a quota can). Before,
    the first failing pass removed the annotation and the abort never happened."""
    await canary_loading(cluster, namespace, summaries, pods, [{"weight": 20, "pause": "1h"}])
    pods.loaded = {pod: ["iris-v1", "iris-v2"] for pod in pods.loaded}
    await wait_status(cluster, namespace, "canary at step 1", canaryWeight=20, step=0)
    objects = freeze_routing(namespace)
    listed = {"apiVersion": "v1", "kind": "List", "items": objects}
    done = kubectl("apply", "--server-side", "-f", "-", input=json.dumps(listed))
    assert done.returncode == 0, done.stderr
    try:
        probes = 0

        async def enforced() -> bool:
            nonlocal probes
            probes += 1
            body = {"metadata": {"annotations": {"test/probe": str(probes)}}}
            try:
                await cluster.patch("v1", "ConfigMap", namespace, "iris-routing", body)
            except ApiError as exc:
                return FROZEN in exc.body
            return False

        await eventually(enforced, what="the admission policy enforced", timeout=30)
        logged = operator_without_pods.logs().count(FROZEN)
        await annotate(cluster, namespace, "abort")

        async def failed_twice() -> bool:
            return operator_without_pods.logs().count(FROZEN) >= logged + 2

        await eventually(failed_twice, what="two failed passes with the abort", timeout=TIMEOUT)
        dep = await get(cluster, namespace)
        assert dep["metadata"].get("annotations", {}).get(ACTION) == "abort"
        status = dep["status"]
        assert (status["phase"], status["canaryWeight"]) == ("Progressing", 20)
        assert await routing(cluster, namespace) == {"iris-v1": 80, "iris-v2": 20}
    finally:
        names = [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in reversed(objects)]
        done = kubectl("delete", "--ignore-not-found", "--wait=false", *names)
        assert done.returncode == 0, done.stderr

    dep = await wait_status(cluster, namespace, "aborted", phase="RolledBack")
    assert dep["status"]["history"][-1]["reason"] == "ManualAbort"
    assert dep["status"]["rejectedVersions"] == ["iris-v2"]
    assert await routing(cluster, namespace) == {"iris-v1": 100}

    async def consumed() -> bool:
        dep = await get(cluster, namespace)
        return ACTION not in dep["metadata"].get("annotations", {})

    await eventually(consumed, what="the abort annotation removed", timeout=30)
    assert (await get(cluster, namespace))["status"]["phase"] == "RolledBack"


async def test_promote_waits_for_every_pod_to_load_the_canary(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summaries: dict[int, dict[str, Any]],
    pods: Pods,
) -> None:
    """Row 10: before, the canary was promoted while pods had not loaded it, and those pods
    could then serve no stable version."""
    await canary_loading(cluster, namespace, summaries, pods, [{"weight": 10, "pause": "1h"}])
    pods.loaded["iris-server-0"] = ["iris-v1", "iris-v2"]  # iris-server-1 still loading it
    await annotate(cluster, namespace, "promote")

    async def pending() -> dict[str, Any] | None:
        dep = await get(cluster, namespace)
        return dep if condition(dep, "Progressing").get("reason") == "PromotePending" else None

    dep = await eventually(pending, what="Progressing reason PromotePending", timeout=30)
    assert dep["status"]["message"] == (
        "promotion requested: waiting for every serving pod to load iris-v2"
    )
    await asyncio.sleep(3)
    dep = await get(cluster, namespace)
    assert dep["metadata"].get("annotations", {}).get(ACTION) == "promote"
    status = dep["status"]
    assert (status["phase"], status["stableVersion"], status["canaryWeight"]) == (
        "Progressing", "iris-v1", 0,
    )  # fmt: skip
    assert await routing(cluster, namespace) == {"iris-v1": 100, "iris-v2": 0}

    pods.loaded["iris-server-1"] = ["iris-v1", "iris-v2"]
    dep = await wait_status(
        cluster, namespace, "promoted", phase="Promoted", stableVersion="iris-v2"
    )
    assert dep["status"]["history"][-1]["message"] == (
        "iris-v2 promoted to stable: promoted by modelops.dev/action=promote"
    )
    assert await routing(cluster, namespace) == {"iris-v2": 100}

    async def consumed() -> bool:
        dep = await get(cluster, namespace)
        return ACTION not in dep["metadata"].get("annotations", {})

    await eventually(consumed, what="the promote annotation removed", timeout=30)
