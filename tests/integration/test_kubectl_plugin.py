"""``kubectl modelops`` as users run it: through kubectl itself, against the real control plane.

kubectl finds the plugin on PATH (the venv's ``bin`` first, where ``kubectl-modelops`` is
installed) and runs it as a subprocess; the plugin logs in with a kubeconfig of its own user, a
ServiceAccount of the test's namespace bound to a Role with only the verbs its docstring
lists, so a command that needed more would fail here. Serving pods are simulated
(``operator_without_pods``): the tests write the pods' reports and sketch windows, the real
operator acts on them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.drift import Sketch
from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server, free_port
from modelops.storage import Location
from support.cluster_fixtures import add_version
from support.models import iris_frame, model_version, train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
STEPS = [{"weight": 10, "pause": "1h"}, {"weight": 50, "pause": "1h"}]
TIMEOUT = 60.0
USER = "modelops-user"
# Exactly what the plugin's docstring says its commands need.
USER_RULES = [
    {"apiGroups": ["modelops.dev"], "resources": ["deployments"], "verbs": ["get", "patch"]},
    {"apiGroups": ["modelops.dev"], "resources": ["modelversions"], "verbs": ["get"]},
    {"apiGroups": ["modelops.dev"], "resources": ["driftmonitors"], "verbs": ["get", "list"]},
    {"apiGroups": ["modelops.dev"], "resources": ["trainingruns"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
]


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2)}


@pytest.fixture
async def user_kubeconfig(
    cluster: Cluster, namespace: str, local_cluster: LocalCluster, tmp_path: Path
) -> Path:
    """A kubeconfig of a ServiceAccount holding only ``USER_RULES`` in the namespace."""
    rbac = "rbac.authorization.k8s.io/v1"
    meta = {"name": USER, "namespace": namespace}
    await cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    await cluster.create(
        {"apiVersion": rbac, "kind": "Role", "metadata": meta, "rules": USER_RULES}
    )
    await cluster.create(
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": USER},
            "subjects": [{"kind": "ServiceAccount", "name": USER, "namespace": namespace}],
        }
    )
    path = tmp_path / "user.kubeconfig"
    return local_cluster.control_plane.write_service_account_kubeconfig(path, namespace, USER)


@pytest.fixture
def plugin_env(user_kubeconfig: Path, s3: S3Server) -> dict[str, str]:
    """The user's environment: the venv's bin first on PATH, their kubeconfig, the store."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(user_kubeconfig),
        "MODELOPS_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "MODELOPS_BUCKET": "modelops",
    }


def kubectl_modelops(
    env: dict[str, str], namespace: str, cwd: Path, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """``kubectl modelops <args> -n <namespace>`` as a user runs it."""
    return subprocess.run(
        ["kubectl", "modelops", *args, "-n", namespace],
        env={**env, **extra_env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


# -- a canary at its first step, with simulated pods (as tests/integration/test_deployment.py)


def deployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {"model": "iris", "replicas": 1, "canary": {"version": "latest", "steps": STEPS}},
    }


async def wait_status(cluster: Cluster, namespace: str, what: str, **expected: Any) -> dict:
    async def probe() -> dict[str, Any] | None:
        dep = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
        status = (dep or {}).get("status", {})
        return dep if all(status.get(k) == v for k, v in expected.items()) else None

    return await eventually(probe, what=what, timeout=TIMEOUT)


def report_pods_loaded(s3: S3Server, namespace: str, *versions: str) -> None:
    """What a serving pod writes once it holds and has verified the versions."""
    report = {"pod": "iris-server-0", "time": time.time(), "versions": sorted(versions),
              "loaded": list(versions), "failed": {}}  # fmt: skip
    key = f"{namespace}/serving/iris/pods/iris-server-0.json"
    s3.store().put(Location("modelops", key), json.dumps(report).encode())


async def start_canary(
    cluster: Cluster, namespace: str, s3: S3Server, summaries: dict[int, dict[str, Any]]
) -> None:
    """Stable iris-v1 at 90%, iris-v2 the canary at 10% (step 1 of 2, an hour's pause)."""
    await add_version(cluster, namespace, summaries[1], 1)
    await cluster.create(deployment(namespace))
    await wait_status(cluster, namespace, "stable iris-v1", stableVersion="iris-v1")
    await add_version(cluster, namespace, summaries[2], 2)
    await wait_status(cluster, namespace, "canary loading", canaryVersion="iris-v2", canaryWeight=0)
    report_pods_loaded(s3, namespace, "iris-v1", "iris-v2")
    await wait_status(cluster, namespace, "canary at step 1", canaryWeight=10, step=0)


# -- status, promote, abort, watch ------------------------------------------------------------


async def test_status_shows_stable_and_canary_with_weights(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
    plugin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await start_canary(cluster, namespace, s3, summaries)
    done = kubectl_modelops(plugin_env, namespace, tmp_path, "status", "iris")
    assert done.returncode == 0, done.stderr
    assert f"Deployment iris (namespace {namespace}): Progressing" in done.stdout
    assert "stable iris-v1  90%  Ready" in done.stdout
    assert "canary iris-v2  10%  step 1/2, " in done.stdout
    assert "history (last 3 of 3)" in done.stdout  # StableSelected, CanaryStarted, CanaryStep


async def test_promote_sets_the_action_and_the_operator_promotes(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
    plugin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await start_canary(cluster, namespace, s3, summaries)
    done = kubectl_modelops(plugin_env, namespace, tmp_path, "promote", "mdep/iris")
    assert done.returncode == 0, done.stderr
    assert "annotated modelops.dev/action=promote (canary iris-v2)" in done.stdout
    dep = await wait_status(cluster, namespace, "promoted", phase="Promoted")
    assert dep["status"]["stableVersion"] == "iris-v2"
    last = dep["status"]["history"][-1]
    assert (last["event"], last["message"]) == (
        "Promoted",
        "iris-v2 promoted to stable: promoted by modelops.dev/action=promote",
    )


async def test_abort_sets_the_action_and_the_operator_rolls_back(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
    plugin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await start_canary(cluster, namespace, s3, summaries)
    done = kubectl_modelops(plugin_env, namespace, tmp_path, "abort", "iris")
    assert done.returncode == 0, done.stderr
    dep = await wait_status(cluster, namespace, "rolled back", phase="RolledBack")
    assert (dep["status"]["stableVersion"], dep["status"]["rejectedVersions"]) == (
        "iris-v1",
        ["iris-v2"],
    )
    assert dep["status"]["history"][-1]["reason"] == "ManualAbort"


async def test_promote_without_a_canary_in_flight_is_refused(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summaries: dict,
    plugin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await add_version(cluster, namespace, summaries[1], 1)
    await cluster.create(deployment(namespace))
    await wait_status(cluster, namespace, "stable", stableVersion="iris-v1", phase="Stable")
    done = kubectl_modelops(plugin_env, namespace, tmp_path, "promote", "iris")
    assert done.returncode == 1
    assert done.stderr == (
        "error: Deployment iris has no canary in flight (phase Stable): nothing to promote\n"
    )
    dep = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
    assert "modelops.dev/action" not in ((dep or {})["metadata"].get("annotations") or {})


async def test_watch_prints_the_tree_again_when_the_rollout_moves(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
    plugin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await start_canary(cluster, namespace, s3, summaries)
    watch = await asyncio.create_subprocess_exec(
        "kubectl", "modelops", "status", "iris", "--watch", "--interval", "0.5", "-n", namespace,
        env=plugin_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    seen: list[str] = []

    async def printed(text: str) -> bool:
        assert watch.stdout is not None
        while not any(text in line for line in seen):
            line = await asyncio.wait_for(watch.stdout.readline(), TIMEOUT)
            if not line:
                return False
            seen.append(line.decode())
        return True

    try:
        assert await printed("canary iris-v2  10%"), "".join(seen)
        frames = sum(line.startswith("--- ") for line in seen)
        done = kubectl_modelops(plugin_env, namespace, tmp_path, "promote", "iris")
        assert done.returncode == 0, done.stderr
        assert await printed(f"Deployment iris (namespace {namespace}): Promoted"), "".join(seen)
        assert await printed("stable iris-v2  100%"), "".join(seen)
        assert sum(line.startswith("--- ") for line in seen) > frames
    finally:
        watch.terminate()
        await watch.wait()


async def test_an_unknown_deployment_is_one_line_and_exit_1(
    namespace: str, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    done = kubectl_modelops(plugin_env, namespace, tmp_path, "status", "nope")
    assert done.returncode == 1
    assert done.stderr == f"error: Deployment nope not found in namespace {namespace}\n"


# -- report and retrain of a DriftMonitor -----------------------------------------------------


def monitor(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": "iris-drift", "namespace": namespace},
        "spec": {"deployment": "iris", "version": "iris-v1", "interval": "1s", "window": "5m",
                 "minSamples": 100, **spec},
    }  # fmt: skip


def write_window(
    s3: S3Server, namespace: str, summary: dict[str, Any], rows: np.ndarray, pod: str
) -> None:
    """What a serving pod flushes: its sketch of the rows it served."""
    store = s3.store()
    profile = json.loads(store.get(Location.parse(summary["profile"]["uri"])))
    now = time.time()
    sketch = Sketch.empty(profile, start=now - 1, end=now)
    sketch.update(rows)
    key = f"{namespace}/sketches/iris/iris-v1/{int(now - 1)}-{pod}.json"
    store.put(Location("modelops", key), json.dumps(sketch.to_dict()).encode())


def petals_shifted(n: int, seed: int) -> np.ndarray:
    frame = iris_frame()[FEATURES].to_numpy(np.float64)
    rows = frame[np.random.default_rng(seed).integers(0, len(frame), n)]
    rows[:, 2:] += 3.0  # petal length and width
    return rows


class Sections(HTMLParser):
    """Feature sections of the report in page order: (name, drifted flag, svgs, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self.inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.inside = found.get("data-feature") is not None
            if self.inside:
                self.found.append({"name": found["data-feature"], "drifted": found["data-drifted"],
                                   "svgs": 0, "text": ""})  # fmt: skip
        elif tag == "svg" and self.inside:
            self.found[-1]["svgs"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.found[-1]["text"] += data


async def test_report_writes_the_monitors_drift_report(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict,
    plugin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await add_version(cluster, namespace, summaries[1], 1)
    for pod, seed in (("pod-a", 1), ("pod-b", 2)):
        write_window(s3, namespace, summaries[1], petals_shifted(150, seed), pod)
    await cluster.create(monitor(namespace))

    async def drifted() -> dict[str, Any] | None:
        obj = await cluster.get(API_VERSION, "DriftMonitor", namespace, "iris-drift")
        return obj if condition(obj, "Drifted").get("status") == "True" else None

    checked = await eventually(drifted, what="Drifted=True", timeout=TIMEOUT)
    done = kubectl_modelops(
        plugin_env, namespace, tmp_path, "report", "dm/iris-drift", "-o", "report.html"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "wrote report.html: iris-v1, last 5m, 300 samples\n"
    parser = Sections()
    parser.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert sorted(s["name"] for s in parser.found[:2]) == ["petal_length", "petal_width"]
    assert [s["drifted"] for s in parser.found] == ["true", "true", "false", "false"]
    assert [s["svgs"] for s in parser.found] == [1, 1, 1, 1]
    # The report's scores are the operator's: the same windows, the same test (the status
    # keeps six decimals, the report four significant digits).
    by_name = {s["name"]: s["text"] for s in parser.found}
    for feature in checked["status"]["features"]:
        text = by_name[feature["name"]]
        assert f"method {feature['method']}" in text
        shown = re.search(r"score (\S+), threshold", text)
        assert shown is not None, text
        assert float(shown[1]) == pytest.approx(feature["score"], rel=1e-3, abs=1e-6)


async def test_report_says_when_the_store_does_not_answer(
    cluster: Cluster,
    namespace: str,
    summaries: dict,
    plugin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await cluster.create(model_version(summaries[1], 1, namespace))
    await cluster.create(monitor(namespace))
    closed = f"127.0.0.1:{free_port()}"
    done = kubectl_modelops(
        plugin_env, namespace, tmp_path, "report", "iris-drift", MODELOPS_S3_ENDPOINT=closed
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: the object store at {closed} is unreachable: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


async def test_retrain_creates_a_run_from_the_monitors_template(
    cluster: Cluster, namespace: str, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    template = {
        "model": "iris",
        "dataset": {"uri": "s3://modelops/datasets/iris.csv", "target": "species"},
        "estimator": {"name": "LogisticRegression", "params": {"max_iter": 300}},
    }
    await cluster.create(monitor(namespace, retrain={"template": template}))
    done = kubectl_modelops(plugin_env, namespace, tmp_path, "retrain", "dm/iris-drift")
    assert done.returncode == 0, done.stderr
    runs = await cluster.list(
        API_VERSION, "TrainingRun", namespace, {"modelops.dev/drift-monitor": "iris-drift"}
    )
    assert len(runs) == 1
    run = runs[0]
    assert run["metadata"]["name"].startswith("iris-drift-manual-")
    assert run["metadata"]["labels"]["modelops.dev/trigger"] == "manual"
    assert run["metadata"]["ownerReferences"][0]["kind"] == "DriftMonitor"
    assert {k: run["spec"][k] for k in template} == template
    assert f"trainingrun.modelops.dev/{run['metadata']['name']} created" in done.stdout
