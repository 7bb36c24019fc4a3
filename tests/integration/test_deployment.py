"""The Deployment controller with the real operator: children, steps, promotion, rollbacks.

Two kinds of test. Those about the real loop (children, a canary walked to promotion) take
the ``operator`` fixture: its serving pods run (image ``modelops-runtime:local``), load the
versions from the store and write their own reports. Those about the rollout's decisions on
given reports and windows (refusals, error rates, monitors, annotations, restarts) take
``operator_without_pods``: its serving pods name an image the process kubelet does not run,
so they wait in ErrImagePull and the test's simulated reports are the only ones.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import kubernetes_validate
import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.cluster_fixtures import add_version
from support.models import train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
ROLLOUT_TIMEOUT = 90.0  # real serving pods start, fetch and verify the versions first


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2, 3)}


def deployment(
    namespace: str, steps: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "iris", "replicas": 1, **spec}
    if steps is not None:
        body["canary"] = {"version": "latest", "steps": steps}
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": body,
    }


async def get_dep(cluster: Cluster, namespace: str) -> dict[str, Any]:
    dep = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
    assert dep is not None
    return dep


async def wait_status(
    cluster: Cluster, namespace: str, what: str, **expected: Any
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        dep = await get_dep(cluster, namespace)
        status = dep.get("status", {})
        return dep if all(status.get(k) == v for k, v in expected.items()) else None

    return await eventually(probe, what=what, timeout=ROLLOUT_TIMEOUT)


async def routing(cluster: Cluster, namespace: str) -> dict[str, int]:
    cm = await cluster.get("v1", "ConfigMap", namespace, "iris-routing")
    assert cm is not None
    table = json.loads(cm["data"]["routing.json"])
    return {v["name"]: v["weight"] for v in table["versions"]}


def report_pods_loaded(
    s3: S3Server,
    namespace: str,
    *versions: str,
    failed: dict[str, str] | None = None,
    pod: str = "iris-server-0",
    table: tuple[str, ...] | None = None,
) -> None:
    """What a serving pod writes: the versions its table holds, those it has loaded and
    verified, and those it could not load, with the reason."""
    failed = failed or {}
    report = {
        "pod": pod,
        "time": time.time(),
        "versions": sorted(table if table is not None else {*versions, *failed}),
        "loaded": list(versions),
        "failed": failed,
    }
    s3.store().put(
        Location("modelops", f"{namespace}/serving/iris/pods/{pod}.json"),
        json.dumps(report).encode(),
    )


async def start_canary(
    cluster: Cluster,
    namespace: str,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
    steps: list[dict],
    *,
    simulate: bool = True,
) -> None:
    """Stable iris-v1, then iris-v2 as a canary at its first step once the pods hold it:
    reported by the test (``simulate``) or by the real serving pods."""
    await add_version(cluster, namespace, summaries[1], 1)
    await cluster.create(deployment(namespace, steps))
    await wait_status(cluster, namespace, "stable iris-v1", stableVersion="iris-v1")
    await add_version(cluster, namespace, summaries[2], 2)
    await wait_status(cluster, namespace, "canary loading", canaryVersion="iris-v2", canaryWeight=0)
    if simulate:
        report_pods_loaded(s3, namespace, "iris-v1", "iris-v2")
    await wait_status(
        cluster, namespace, "canary at step 1", canaryWeight=steps[0]["weight"], step=0
    )


async def test_stable_version_gets_valid_children(
    cluster: Cluster, namespace: str, operator: OperatorProcess, summaries: dict
) -> None:
    """Real serving pods: the children are what the real controllers and kubelet run."""
    await add_version(cluster, namespace, summaries[1], 1)
    await cluster.create(deployment(namespace))
    dep = await wait_status(cluster, namespace, "stable", phase="Stable", stableVersion="iris-v1")
    assert dep["status"]["url"] == f"http://iris.{namespace}.svc:8080/v2/models/iris"
    assert await routing(cluster, namespace) == {"iris-v1": 100}

    children = [
        ("v1", "ServiceAccount", "iris-server"),
        ("rbac.authorization.k8s.io/v1", "Role", "iris-server"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", "iris-server"),
        ("v1", "ConfigMap", "iris-routing"),
        ("apps/v1", "Deployment", "iris-server"),
        ("v1", "Service", "iris"),
    ]
    for api_version, kind, name in children:
        obj = await cluster.get(api_version, kind, namespace, name)
        assert obj is not None, f"{kind} {name} missing"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]
        clean = copy.deepcopy(obj)
        for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            clean["metadata"].pop(field, None)
        clean.pop("status", None)
        kubernetes_validate.validate(clean, "1.32", strict=True)
    role = await cluster.get("rbac.authorization.k8s.io/v1", "Role", namespace, "iris-server")
    assert role is not None
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["iris-routing"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    # The serving pod really runs, loads iris-v1 and turns ready: the Deployment is Ready.
    dep = await wait_status(cluster, namespace, "a ready replica", readyReplicas=1)
    assert condition(dep, "Ready")["reason"] == "Serving"


async def test_canary_walks_its_steps_then_is_promoted(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server, summaries: dict
) -> None:
    """Real serving pods: the canary enters its first step on their own reports."""
    steps = [{"weight": 10, "pause": "1s"}, {"weight": 50, "pause": "1s"}]
    await start_canary(cluster, namespace, s3, summaries, steps, simulate=False)
    assert await routing(cluster, namespace) == {"iris-v1": 90, "iris-v2": 10}
    reports = s3.store().list(Location("modelops", f"{namespace}/serving/iris/pods/"))
    assert reports and all(key.startswith(f"{namespace}/serving/iris/pods/iris-server-")
                           for key in reports), reports  # fmt: skip
    await wait_status(cluster, namespace, "step 2", canaryWeight=50, step=1)
    dep = await wait_status(
        cluster, namespace, "promoted", phase="Promoted", stableVersion="iris-v2"
    )
    assert dep["status"].get("canaryVersion") is None
    assert await routing(cluster, namespace) == {"iris-v2": 100}
    events = [h["event"] for h in dep["status"]["history"]]
    assert events == ["StableSelected", "CanaryStarted", "CanaryStep", "CanaryStep", "Promoted"]


async def test_drifted_monitor_rolls_the_canary_back(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
) -> None:
    """Simulated pods: the monitor's verdict is written by hand, no traffic is needed."""
    await start_canary(cluster, namespace, s3, summaries, [{"weight": 20, "pause": "1h"}])
    monitor = {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": "iris-drift", "namespace": namespace},
        "spec": {"deployment": "iris", "action": "rollback", "interval": "1h"},
    }
    await cluster.create(monitor)

    async def checked_once() -> bool:
        obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, "iris-drift")
        return bool(obj and obj.get("status", {}).get("lastCheckTime"))

    # Its own first check would overwrite what we write; then interval 1h keeps it quiet.
    await eventually(checked_once, what="the monitor's first check", timeout=60)
    drifted = {
        "type": "Drifted",
        "status": "True",
        "reason": "DriftDetected",
        "message": "3/4 features drifted",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    await cluster.patch(
        API_VERSION,
        "DriftMonitor",
        namespace,
        "iris-drift",
        {"status": {"version": "iris-v2", "conditions": [drifted]}},
        subresource="status",
    )
    dep = await wait_status(cluster, namespace, "rolled back", phase="RolledBack")
    status = dep["status"]
    assert (status["canaryWeight"], status["rejectedVersions"]) == (0, ["iris-v2"])
    assert status["stableVersion"] == "iris-v1"
    assert await routing(cluster, namespace) == {"iris-v1": 100}
    last = status["history"][-1]
    assert (
        last["reason"] == "DriftDetected" and "iris-drift: 3/4 features drifted" in last["message"]
    )
    assert condition(dep, "Degraded")["status"] == "True"


async def test_canary_error_rate_over_the_limit_rolls_back(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
) -> None:
    """Simulated pods: the canary's requests and errors are one window written by hand."""
    await add_version(cluster, namespace, summaries[1], 1)
    spec = deployment(namespace, [{"weight": 30, "pause": "1h"}],
                      rollback={"maxErrorRate": 0.05, "minSamples": 50})  # fmt: skip
    await cluster.create(spec)
    await wait_status(cluster, namespace, "stable", stableVersion="iris-v1")
    await add_version(cluster, namespace, summaries[2], 2)
    await wait_status(cluster, namespace, "loading", canaryVersion="iris-v2", canaryWeight=0)
    report_pods_loaded(s3, namespace, "iris-v1", "iris-v2")
    await wait_status(cluster, namespace, "step 1", canaryWeight=30)
    now = time.time()
    window = {"start": now, "end": now + 1, "requests": 80, "errors": 12}
    s3.store().put(
        Location("modelops", f"{namespace}/sketches/iris/iris-v2/{int(now)}-iris-server-0.json"),
        json.dumps(window).encode(),
    )
    dep = await wait_status(cluster, namespace, "rolled back", phase="RolledBack")
    assert "error rate 0.150 > 0.05 over 80 requests" in dep["status"]["history"][-1]["message"]


async def test_canary_a_pod_refuses_is_rolled_back_but_not_for_an_unreachable_store(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
) -> None:
    """Simulated pods: a real pod would load these genuine artifacts; the refusals (and the
    unreachable store) are what this test gives the operator."""
    await add_version(cluster, namespace, summaries[1], 1)
    await cluster.create(deployment(namespace, [{"weight": 20, "pause": "1h"}]))
    await wait_status(cluster, namespace, "stable", stableVersion="iris-v1")
    await add_version(cluster, namespace, summaries[2], 2)
    await wait_status(cluster, namespace, "loading", canaryVersion="iris-v2", canaryWeight=0)
    # The store unreachable from a pod may pass: the canary waits, still at weight 0.
    report_pods_loaded(s3, namespace, "iris-v1", failed={"iris-v2": "StoreUnavailable"})
    await asyncio.sleep(3)
    dep = await get_dep(cluster, namespace)
    assert (dep["status"]["phase"], dep["status"]["canaryWeight"]) == ("Progressing", 0)
    report_pods_loaded(s3, namespace, "iris-v1", failed={"iris-v2": "DigestMismatch"})
    dep = await wait_status(cluster, namespace, "rolled back", phase="RolledBack")
    status = dep["status"]
    assert (status["canaryWeight"], status["rejectedVersions"]) == (0, ["iris-v2"])
    assert await routing(cluster, namespace) == {"iris-v1": 100}
    last = status["history"][-1]
    assert last["reason"] == "CanaryLoadFailed"
    assert "iris-server-0: DigestMismatch" in last["message"]
    # A newer version is a new canary: the pod's refusal of iris-v2 does not speak for it.
    await add_version(cluster, namespace, summaries[3], 3)
    await wait_status(
        cluster, namespace, "next canary", canaryVersion="iris-v3", phase="Progressing"
    )
    await asyncio.sleep(2)
    status = (await get_dep(cluster, namespace))["status"]
    assert (status["phase"], status["canaryVersion"]) == ("Progressing", "iris-v3")
    assert status["rejectedVersions"] == ["iris-v2"]
    report_pods_loaded(s3, namespace, "iris-v1", "iris-v3", failed={"iris-v2": "DigestMismatch"})
    await wait_status(cluster, namespace, "iris-v3 at step 1", canaryWeight=20, step=0)


async def test_gateway_routing_weights_an_httproute_and_waits_for_the_canary_pods_only(
    cluster: Cluster,
    namespace: str,
    gateway_api: None,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
) -> None:
    """Simulated pods: which pods' reports the canary waits for is the point, so the test
    decides when each version's pods report (real ones would load at once)."""
    await add_version(cluster, namespace, summaries[1], 1)
    gateway = {"parentRefs": [{"name": "public", "namespace": "gateways"}]}
    steps = [{"weight": 20, "pause": "1h"}]
    await cluster.create(deployment(namespace, steps, routing="gateway", gateway=gateway))
    await wait_status(cluster, namespace, "stable", phase="Stable", stableVersion="iris-v1")

    async def stable_pod() -> None:  # reports again and again, as a live pod does
        while True:
            report_pods_loaded(s3, namespace, "iris-v1", pod="iris-iris-v1-server-0")
            await asyncio.sleep(1)

    reporting = asyncio.create_task(stable_pod())
    try:
        await _gateway_canary(cluster, namespace, s3, summaries, gateway)
    finally:
        reporting.cancel()


async def _gateway_canary(
    cluster: Cluster, namespace: str, s3: S3Server, summaries: dict, gateway: dict[str, Any]
) -> None:
    await add_version(cluster, namespace, summaries[2], 2)
    await wait_status(cluster, namespace, "canary loading", canaryVersion="iris-v2", canaryWeight=0)
    for kind, name in (
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
    ):
        for version in ("iris-v1", "iris-v2"):
            suffix = {"Deployment": "-server", "ConfigMap": "-routing", "Service": ""}[name]
            obj = await cluster.get(kind, name, namespace, f"iris-{version}{suffix}")
            assert obj is not None, f"{name} for {version}"
    cm = await cluster.get("v1", "ConfigMap", namespace, "iris-iris-v2-routing")
    assert cm is not None
    table = json.loads(cm["data"]["routing.json"])
    assert [(v["name"], v["weight"]) for v in table["versions"]] == [("iris-v2", 100)]
    # The stable version's pods never hold the canary: only the canary's pods are waited for.
    await asyncio.sleep(2)
    assert (await get_dep(cluster, namespace))["status"]["canaryWeight"] == 0
    report_pods_loaded(s3, namespace, "iris-v2", pod="iris-iris-v2-server-0")
    await wait_status(cluster, namespace, "step 1", canaryWeight=20, step=0)

    async def weighted() -> dict[str, int] | None:
        route = await cluster.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "iris")
        if route is None:
            return None
        backends = route["spec"]["rules"][0]["backendRefs"]
        weights = {b["name"]: b["weight"] for b in backends}
        return weights if weights == {"iris-iris-v1": 80, "iris-iris-v2": 20} else None

    await eventually(weighted, what="HTTPRoute weights 80/20")
    route = await cluster.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "iris")
    assert route is not None and route["spec"]["parentRefs"] == gateway["parentRefs"]


@pytest.mark.parametrize(("action", "phase"), [("promote", "Promoted"), ("abort", "RolledBack")])
async def test_manual_action_annotation_is_obeyed_and_cleared(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
    action: str,
    phase: str,
) -> None:
    """Simulated pods: the annotation is the point, not the pods."""
    await start_canary(cluster, namespace, s3, summaries, [{"weight": 10, "pause": "1h"}])
    await cluster.patch(
        API_VERSION,
        "Deployment",
        namespace,
        "iris",
        {"metadata": {"annotations": {"modelops.dev/action": action}}},
    )
    await wait_status(cluster, namespace, phase, phase=phase)

    async def cleared() -> dict[str, Any] | None:
        # Removed by a later pass than the one that obeyed it: once the status shows it.
        dep = await get_dep(cluster, namespace)
        return None if "modelops.dev/action" in dep["metadata"].get("annotations", {}) else dep

    dep = await eventually(cleared, what="the action annotation removed", timeout=30)
    assert dep["status"]["phase"] == phase


async def test_restart_mid_step_resumes_without_skipping_or_repeating(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
) -> None:
    """Simulated pods: the operator's restart is the point; one report holds the canary."""
    operator = operator_without_pods
    steps = [{"weight": 10, "pause": "4s"}, {"weight": 40, "pause": "1h"}]
    await start_canary(cluster, namespace, s3, summaries, steps)
    before = (await get_dep(cluster, namespace))["status"]
    operator.stop()
    operator.start()
    dep = await wait_status(cluster, namespace, "step 2 after restart", step=1, canaryWeight=40)
    history = [h["event"] for h in dep["status"]["history"]]
    assert history.count("CanaryStep") == 2
    started = time.mktime(time.strptime(before["stepStartedAt"], "%Y-%m-%dT%H:%M:%SZ"))
    advanced = time.mktime(time.strptime(dep["status"]["stepStartedAt"], "%Y-%m-%dT%H:%M:%SZ"))
    assert advanced - started >= 4
