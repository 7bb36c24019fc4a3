"""The local cluster is a real Kubernetes cluster: real server, the operator as its Deployment.

These run before the demo's story (``test_loop.py``) on the same package cluster; the story
then also proves the loop survives an operator that was killed and replaced.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelops.local.cluster import OPERATOR, SYSTEM_NAMESPACE, LocalCluster

pytestmark = pytest.mark.e2e
Kubectl = Callable[..., str]
SELECTOR = "app.kubernetes.io/name=modelops-operator"


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


def operator_pods(kubectl: Kubectl) -> list[dict[str, Any]]:
    found = json.loads(kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-l", SELECTOR, "-o", "json"))
    return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_kubectl_version_reports_a_real_server(kubectl: Kubectl) -> None:
    server = json.loads(kubectl("version", "-o", "json"))["serverVersion"]
    assert server["gitVersion"].startswith("v1.36."), server
    assert server["platform"] == "linux/amd64"


def test_the_operator_runs_as_its_deployment_with_its_own_service_account(
    kubectl: Kubectl,
) -> None:
    deployment = json.loads(
        kubectl("-n", SYSTEM_NAMESPACE, "get", "deployment", OPERATOR, "-o", "json")
    )
    assert deployment["status"]["availableReplicas"] == 1
    (pod,) = operator_pods(kubectl)
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    assert pod["spec"]["nodeName"] == "local"
    assert ready(pod)
    logs = kubectl("-n", SYSTEM_NAMESPACE, "logs", pod["metadata"]["name"])
    assert "modelops operator configured" in logs


def _pid_in(workdir: Path) -> int:
    """The operator's process: the one whose working directory is its pod's directory."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (
                Path(os.readlink(entry / "cwd")) == workdir
                and b"modelops" in (entry / "cmdline").read_bytes()
            ):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no operator process runs in {workdir}")


def test_a_killed_operator_is_restarted_in_its_pod(
    kubectl: Kubectl, local_cluster: LocalCluster
) -> None:
    (pod,) = operator_pods(kubectl)
    name = pod["metadata"]["name"]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    os.kill(_pid_in(local_cluster.state_dir / "pods" / SYSTEM_NAMESPACE / name), signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        (now,) = operator_pods(kubectl)
        status = now["status"]["containerStatuses"][0]
        return now if status["restartCount"] > restarts and ready(now) else None

    now = wait_for(restarted, "the operator's container restarted and ready")
    assert now["metadata"]["name"] == name  # the same pod: the kubelet restarted its container
    last = now["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137 and last["reason"] == "Error"


def test_a_deleted_operator_pod_is_replaced_by_its_replica_set(kubectl: Kubectl) -> None:
    (pod,) = operator_pods(kubectl)
    kubectl("-n", SYSTEM_NAMESPACE, "delete", "pod", pod["metadata"]["name"], "--wait=true")

    def replaced() -> dict[str, Any] | None:
        pods = operator_pods(kubectl)
        fresh = [p for p in pods if p["metadata"]["uid"] != pod["metadata"]["uid"]]
        return fresh[0] if len(pods) == 1 and fresh and ready(fresh[0]) else None

    fresh = wait_for(replaced, "a new, ready operator pod")
    owner = fresh["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet"
