"""The Deployment controller with the real operator: children, steps, promotion, rollbacks."""

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
from support.models import model_version, train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
NS = "default"


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2, 3)}


async def add_version(cluster: Cluster, summaries: dict[int, dict[str, Any]], n: int) -> None:
    await cluster.create(model_version(summaries[n], n))

    async def ready() -> bool:
        mv = await cluster.get(API_VERSION, "ModelVersion", NS, f"iris-v{n}")
        return bool(mv and mv.get("status", {}).get("phase") == "Ready")

    await eventually(ready, what=f"iris-v{n} Ready")


def deployment(steps: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "iris", "replicas": 1, **spec}
    if steps is not None:
        body["canary"] = {"version": "latest", "steps": steps}
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": body,
    }


async def get_dep(cluster: Cluster) -> dict[str, Any]:
    dep = await cluster.get(API_VERSION, "Deployment", NS, "iris")
    assert dep is not None
    return dep


async def wait_status(cluster: Cluster, what: str, **expected: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        dep = await get_dep(cluster)
        status = dep.get("status", {})
        return dep if all(status.get(k) == v for k, v in expected.items()) else None

    return await eventually(probe, what=what, timeout=45)


async def routing(cluster: Cluster) -> dict[str, int]:
    cm = await cluster.get("v1", "ConfigMap", NS, "iris-routing")
    assert cm is not None
    table = json.loads(cm["data"]["routing.json"])
    return {v["name"]: v["weight"] for v in table["versions"]}


def report_pods_loaded(
    s3: S3Server,
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
        Location("modelops", f"{NS}/serving/iris/pods/{pod}.json"), json.dumps(report).encode()
    )


async def start_canary(
    cluster: Cluster, s3: S3Server, summaries: dict[int, dict[str, Any]], steps: list[dict]
) -> None:
    await add_version(cluster, summaries, 1)
    await cluster.create(deployment(steps))
    await wait_status(cluster, "stable iris-v1", stableVersion="iris-v1")
    await add_version(cluster, summaries, 2)
    await wait_status(cluster, "canary loading", canaryVersion="iris-v2", canaryWeight=0)
    report_pods_loaded(s3, "iris-v1", "iris-v2")
    await wait_status(cluster, "canary at step 1", canaryWeight=steps[0]["weight"], step=0)


async def test_stable_version_gets_valid_children(
    cluster: Cluster, operator: OperatorProcess, summaries: dict[int, dict[str, Any]]
) -> None:
    await add_version(cluster, summaries, 1)
    await cluster.create(deployment())
    dep = await wait_status(cluster, "stable", phase="Stable", stableVersion="iris-v1")
    assert dep["status"]["url"] == "http://iris.default.svc:8080/v2/models/iris"
    assert await routing(cluster) == {"iris-v1": 100}

    children = [
        ("v1", "ServiceAccount", "iris-server"),
        ("rbac.authorization.k8s.io/v1", "Role", "iris-server"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", "iris-server"),
        ("v1", "ConfigMap", "iris-routing"),
        ("apps/v1", "Deployment", "iris-server"),
        ("v1", "Service", "iris"),
    ]
    for api_version, kind, name in children:
        obj = await cluster.get(api_version, kind, NS, name)
        assert obj is not None, f"{kind} {name} missing"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]
        clean = copy.deepcopy(obj)
        for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            clean["metadata"].pop(field, None)
        clean.pop("status", None)
        kubernetes_validate.validate(clean, "1.32", strict=True)
    role = await cluster.get("rbac.authorization.k8s.io/v1", "Role", NS, "iris-server")
    assert role is not None
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["iris-routing"],
            "verbs": ["get", "list", "watch"],
        }
    ]


async def test_canary_walks_its_steps_then_is_promoted(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server, summaries: dict
) -> None:
    steps = [{"weight": 10, "pause": "1s"}, {"weight": 50, "pause": "1s"}]
    await start_canary(cluster, s3, summaries, steps)
    assert await routing(cluster) == {"iris-v1": 90, "iris-v2": 10}
    await wait_status(cluster, "step 2", canaryWeight=50, step=1)
    dep = await wait_status(cluster, "promoted", phase="Promoted", stableVersion="iris-v2")
    assert dep["status"].get("canaryVersion") is None
    assert await routing(cluster) == {"iris-v2": 100}
    events = [h["event"] for h in dep["status"]["history"]]
    assert events == ["StableSelected", "CanaryStarted", "CanaryStep", "CanaryStep", "Promoted"]


async def test_drifted_monitor_rolls_the_canary_back(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server, summaries: dict
) -> None:
    await start_canary(cluster, s3, summaries, [{"weight": 20, "pause": "1h"}])
    monitor = {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": "iris-drift", "namespace": NS},
        "spec": {"deployment": "iris", "action": "rollback", "interval": "1h"},
    }
    await cluster.create(monitor)

    async def checked_once() -> bool:
        obj = await cluster.get(API_VERSION, "DriftMonitor", NS, "iris-drift")
        return bool(obj and obj.get("status", {}).get("lastCheckTime"))

    # Its own first check would overwrite what we write; then interval 1h keeps it quiet.
    await eventually(checked_once, what="the monitor's first check")
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
        NS,
        "iris-drift",
        {"status": {"version": "iris-v2", "conditions": [drifted]}},
        subresource="status",
    )
    dep = await wait_status(cluster, "rolled back", phase="RolledBack")
    status = dep["status"]
    assert (status["canaryWeight"], status["rejectedVersions"]) == (0, ["iris-v2"])
    assert status["stableVersion"] == "iris-v1"
    assert await routing(cluster) == {"iris-v1": 100}
    last = status["history"][-1]
    assert (
        last["reason"] == "DriftDetected" and "iris-drift: 3/4 features drifted" in last["message"]
    )
    assert condition(dep, "Degraded")["status"] == "True"


async def test_canary_error_rate_over_the_limit_rolls_back(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server, summaries: dict
) -> None:
    await add_version(cluster, summaries, 1)
    spec = deployment([{"weight": 30, "pause": "1h"}], rollback={"maxErrorRate": 0.05,
                                                                  "minSamples": 50})  # fmt: skip
    await cluster.create(spec)
    await wait_status(cluster, "stable", stableVersion="iris-v1")
    await add_version(cluster, summaries, 2)
    await wait_status(cluster, "loading", canaryVersion="iris-v2", canaryWeight=0)
    report_pods_loaded(s3, "iris-v1", "iris-v2")
    await wait_status(cluster, "step 1", canaryWeight=30)
    now = time.time()
    window = {"start": now, "end": now + 1, "requests": 80, "errors": 12}
    s3.store().put(
        Location("modelops", f"{NS}/sketches/iris/iris-v2/{int(now)}-iris-server-0.json"),
        json.dumps(window).encode(),
    )
    dep = await wait_status(cluster, "rolled back", phase="RolledBack")
    assert "error rate 0.150 > 0.05 over 80 requests" in dep["status"]["history"][-1]["message"]


async def test_canary_a_pod_refuses_is_rolled_back_but_not_for_an_unreachable_store(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server, summaries: dict
) -> None:
    await add_version(cluster, summaries, 1)
    await cluster.create(deployment([{"weight": 20, "pause": "1h"}]))
    await wait_status(cluster, "stable", stableVersion="iris-v1")
    await add_version(cluster, summaries, 2)
    await wait_status(cluster, "loading", canaryVersion="iris-v2", canaryWeight=0)
    # The store unreachable from a pod may pass: the canary waits, still at weight 0.
    report_pods_loaded(s3, "iris-v1", failed={"iris-v2": "StoreUnavailable"})
    await asyncio.sleep(3)
    dep = await get_dep(cluster)
    assert (dep["status"]["phase"], dep["status"]["canaryWeight"]) == ("Progressing", 0)
    report_pods_loaded(s3, "iris-v1", failed={"iris-v2": "DigestMismatch"})
    dep = await wait_status(cluster, "rolled back", phase="RolledBack")
    status = dep["status"]
    assert (status["canaryWeight"], status["rejectedVersions"]) == (0, ["iris-v2"])
    assert await routing(cluster) == {"iris-v1": 100}
    last = status["history"][-1]
    assert last["reason"] == "CanaryLoadFailed"
    assert "iris-server-0: DigestMismatch" in last["message"]
    # A newer version is a new canary: the pod's refusal of iris-v2 does not speak for it.
    await add_version(cluster, summaries, 3)
    await wait_status(cluster, "next canary", canaryVersion="iris-v3", phase="Progressing")
    await asyncio.sleep(2)
    status = (await get_dep(cluster))["status"]
    assert (status["phase"], status["canaryVersion"]) == ("Progressing", "iris-v3")
    assert status["rejectedVersions"] == ["iris-v2"]
    report_pods_loaded(s3, "iris-v1", "iris-v3", failed={"iris-v2": "DigestMismatch"})
    await wait_status(cluster, "iris-v3 at step 1", canaryWeight=20, step=0)


async def test_gateway_routing_weights_an_httproute_and_waits_for_the_canary_pods_only(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server, summaries: dict
) -> None:
    await add_version(cluster, summaries, 1)
    gateway = {"parentRefs": [{"name": "public", "namespace": "gateways"}]}
    steps = [{"weight": 20, "pause": "1h"}]
    await cluster.create(deployment(steps, routing="gateway", gateway=gateway))
    await wait_status(cluster, "stable", phase="Stable", stableVersion="iris-v1")

    async def stable_pod() -> None:  # reports again and again, as a live pod does
        while True:
            report_pods_loaded(s3, "iris-v1", pod="iris-iris-v1-server-0")
            await asyncio.sleep(1)

    reporting = asyncio.create_task(stable_pod())
    try:
        await _gateway_canary(cluster, s3, summaries, gateway)
    finally:
        reporting.cancel()


async def _gateway_canary(
    cluster: Cluster, s3: S3Server, summaries: dict, gateway: dict[str, Any]
) -> None:
    await add_version(cluster, summaries, 2)
    await wait_status(cluster, "canary loading", canaryVersion="iris-v2", canaryWeight=0)
    for kind, name in (
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
    ):
        for version in ("iris-v1", "iris-v2"):
            suffix = {"Deployment": "-server", "ConfigMap": "-routing", "Service": ""}[name]
            obj = await cluster.get(kind, name, NS, f"iris-{version}{suffix}")
            assert obj is not None, f"{name} for {version}"
    cm = await cluster.get("v1", "ConfigMap", NS, "iris-iris-v2-routing")
    assert cm is not None
    table = json.loads(cm["data"]["routing.json"])
    assert [(v["name"], v["weight"]) for v in table["versions"]] == [("iris-v2", 100)]
    # The stable version's pods never hold the canary: only the canary's pods are waited for.
    await asyncio.sleep(2)
    assert (await get_dep(cluster))["status"]["canaryWeight"] == 0
    report_pods_loaded(s3, "iris-v2", pod="iris-iris-v2-server-0")
    await wait_status(cluster, "step 1", canaryWeight=20, step=0)

    async def weighted() -> dict[str, int] | None:
        route = await cluster.get("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "iris")
        if route is None:
            return None
        backends = route["spec"]["rules"][0]["backendRefs"]
        weights = {b["name"]: b["weight"] for b in backends}
        return weights if weights == {"iris-iris-v1": 80, "iris-iris-v2": 20} else None

    await eventually(weighted, what="HTTPRoute weights 80/20")
    route = await cluster.get("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "iris")
    assert route is not None and route["spec"]["parentRefs"] == gateway["parentRefs"]


@pytest.mark.parametrize(("action", "phase"), [("promote", "Promoted"), ("abort", "RolledBack")])
async def test_manual_action_annotation_is_obeyed_and_cleared(
    cluster: Cluster,
    operator: OperatorProcess,
    s3: S3Server,
    summaries: dict,
    action: str,
    phase: str,
) -> None:
    await start_canary(cluster, s3, summaries, [{"weight": 10, "pause": "1h"}])
    await cluster.patch(
        API_VERSION,
        "Deployment",
        NS,
        "iris",
        {"metadata": {"annotations": {"modelops.dev/action": action}}},
    )
    dep = await wait_status(cluster, phase, phase=phase)
    assert "modelops.dev/action" not in dep["metadata"].get("annotations", {})


async def test_restart_mid_step_resumes_without_skipping_or_repeating(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server, summaries: dict
) -> None:
    steps = [{"weight": 10, "pause": "4s"}, {"weight": 40, "pause": "1h"}]
    await start_canary(cluster, s3, summaries, steps)
    before = (await get_dep(cluster))["status"]
    operator.stop()
    operator.start()
    dep = await wait_status(cluster, "step 2 after restart", step=1, canaryWeight=40)
    history = [h["event"] for h in dep["status"]["history"]]
    assert history.count("CanaryStep") == 2
    started = time.mktime(time.strptime(before["stepStartedAt"], "%Y-%m-%dT%H:%M:%SZ"))
    advanced = time.mktime(time.strptime(dep["status"]["stepStartedAt"], "%Y-%m-%dT%H:%M:%SZ"))
    assert advanced - started >= 4
