"""TrainingRun -> Job -> ModelVersion with the real operator on a real control plane.

The Job controller creates each training pod, the process kubelet runs it (this checkout's
Python, real sklearn, the real S3 server), and the operator follows the Job's real status.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.operator import (
    OperatorProcess,
    condition,
    eventually,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOB_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods
TRAINING_TIMEOUT = 120.0  # a pod start plus a training, on a busy 2-core machine

Kubectl = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]


@pytest.fixture
def kubectl(local_cluster: LocalCluster, tmp_path: Path) -> Kubectl:
    """``await kubectl(*args)``: kubectl as cluster admin, off the event loop."""
    binary = shutil.which("kubectl")
    assert binary is not None, "kubectl is needed by the local cluster itself"

    async def run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        command = [binary, "--kubeconfig", str(local_cluster.kubeconfig)]
        command += ["--cache-dir", str(tmp_path / "kubectl-cache"), *args]
        return await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=timeout, check=False
        )

    return run


def sample_run(namespace: str, **spec_changes: Any) -> dict[str, Any]:
    run = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    run["metadata"]["namespace"] = namespace
    run["spec"].update(spec_changes)
    return run


async def get_run(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    return await cluster.get(API_VERSION, "TrainingRun", namespace, name)


async def wait_job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        return await cluster.get("batch/v1", "Job", namespace, f"{name}-train")

    return await eventually(probe, what=f"Job {name}-train")


def job_finished(job: dict[str, Any] | None) -> str | None:
    """``Complete`` or ``Failed`` once the Job controller says so, else None."""
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


async def wait_job_finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The run's Job once the real Job controller marked it Complete or Failed."""

    async def probe() -> dict[str, Any] | None:
        job = await cluster.get("batch/v1", "Job", namespace, f"{name}-train")
        return job if job_finished(job) else None

    return await eventually(probe, what=f"Job {name}-train finished", timeout=TRAINING_TIMEOUT)


async def job_pods(cluster: Cluster, namespace: str, job_name: str) -> list[dict[str, Any]]:
    return await cluster.list("v1", "Pod", namespace, {JOB_LABEL: job_name})


async def wait_phase(
    cluster: Cluster, namespace: str, kind: str, name: str, *phases: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.get(API_VERSION, kind, namespace, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None

    return await eventually(
        probe, what=f"{kind} {name} phase in {phases}", timeout=TRAINING_TIMEOUT
    )


async def train(cluster: Cluster, run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create the run; return its finished Job and the Job's (one) terminated pod."""
    namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
    await cluster.create(run)
    job = await wait_job_finished(cluster, namespace, name)
    pods = await job_pods(cluster, namespace, job["metadata"]["name"])
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return job, pods[0]


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    """The trainer container's ``state.terminated`` as the kubelet reported it."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    assert statuses, pod.get("status")
    state: dict[str, Any] = statuses[0]["state"]
    assert "terminated" in state, state
    return dict(state["terminated"])


async def test_iris_run_trains_and_registers_a_ready_version(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    run = sample_run(namespace)
    await cluster.create(run)
    job = await wait_job(cluster, namespace, "iris-logreg")

    created = await get_run(cluster, namespace, "iris-logreg")
    assert created is not None
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TrainingRun",
        "iris-logreg",
        created["metadata"]["uid"],
        True,
    )
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}

    finished = await wait_job_finished(cluster, namespace, "iris-logreg")
    assert job_finished(finished) == "Complete", finished.get("status")
    assert finished["status"]["succeeded"] == 1
    (trainer,) = await job_pods(cluster, namespace, "iris-logreg-train")
    assert trainer["status"]["phase"] == "Succeeded"
    assert terminated(trainer)["exitCode"] == 0
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["metrics"]["accuracy"] >= 0.8
    assert status["modelVersion"] == "iris-v1"
    assert condition(done, "Registered")["status"] == "True"
    assert condition(done, "Ready")["reason"] == "Succeeded"
    assert status["observedGeneration"] == done["metadata"]["generation"]

    version = await wait_phase(cluster, namespace, "ModelVersion", "iris-v1", "Ready", "Failed")
    assert version["status"]["phase"] == "Ready", version["status"]
    spec = version["spec"]
    assert (spec["model"], spec["version"]) == ("iris", 1)
    assert spec["lineage"]["trainingRun"] == "iris-logreg"
    assert spec["lineage"]["estimator"] == "LogisticRegression"
    assert spec["signature"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert [f["name"] for f in spec["signature"]["inputs"]] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    stored = s3.store().get(Location.parse(spec["artifact"]["uri"]))
    assert hashlib.sha256(stored).hexdigest() == spec["artifact"]["sha256"]
    assert spec["artifact"]["uri"].startswith(f"s3://modelops/{namespace}/iris/")


async def test_every_job_validates_against_the_kubernetes_schema(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await cluster.create(sample_run(namespace))
    job = await wait_job(cluster, namespace, "iris-logreg")
    clean = copy.deepcopy(job)
    for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        clean["metadata"].pop(field, None)
    clean.pop("status", None)
    for version in ("1.29", "1.32"):
        kubernetes_validate.validate(clean, version, strict=True)


async def test_missing_target_fails_the_run_with_the_trainers_reason(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    run = sample_run(
        namespace, dataset={"uri": "s3://modelops/datasets/iris.csv", "target": "colour"}
    )
    job, pod = await train(cluster, run)
    assert terminated(pod)["exitCode"] == 2
    failed = condition(job, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "BackoffLimitExceeded")
    assert json.loads(terminated(pod)["message"])["reason"] == "MissingTarget"
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Failed"
    ready = condition(done, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "MissingTarget")
    assert "'colour'" in ready["message"]
    assert await cluster.list(API_VERSION, "ModelVersion", namespace, {}) == []


async def test_missing_dataset_fails_with_dataset_missing(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    run = sample_run(
        namespace, dataset={"uri": "s3://modelops/datasets/nope.csv", "target": "species"}
    )
    job, pod = await train(cluster, run)
    assert terminated(pod)["exitCode"] == 2
    assert condition(job, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "DatasetMissing" in terminated(pod)["message"]
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    assert condition(done, "Ready")["reason"] == "DatasetMissing"


async def test_gates_not_met_succeeds_without_registering(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    run = sample_run(namespace, register={"minMetrics": {"accuracy": 0.999}})
    run["spec"]["estimator"] = {"name": "DecisionTreeClassifier", "params": {"max_depth": 1}}
    job, _ = await train(cluster, run)
    assert job_finished(job) == "Complete"
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    registered = condition(done, "Registered")
    assert (registered["status"], registered["reason"]) == ("False", "GatesNotMet")
    assert "accuracy" in registered["message"] and "< 0.999" in registered["message"]
    assert "modelVersion" not in done["status"]


async def test_invalid_spec_is_reported_and_other_runs_still_train(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """The real server refuses what its schema can say (an estimator off the allow-list);
    what only the operator's models can say (a parameter that is not a scalar: the schema
    leaves ``params`` values open) reaches the operator, which reports InvalidSpec."""
    refused = sample_run(namespace, estimator={"name": "os.system"})
    refused["metadata"]["name"] = "refused-run"
    with pytest.raises(ApiError) as error:
        await cluster.create(refused)
    assert error.value.status == 422
    bad = sample_run(namespace, estimator={"name": "LogisticRegression", "params": {"C": [1, 2]}})
    bad["metadata"]["name"] = "bad-run"
    await cluster.create(bad)
    await cluster.create(sample_run(namespace))

    done = await wait_phase(cluster, namespace, "TrainingRun", "bad-run", "Failed")
    ready = condition(done, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "estimator.params" in ready["message"]
    await wait_job(cluster, namespace, "iris-logreg")
    assert await cluster.get("batch/v1", "Job", namespace, "bad-run-train") is None
    assert operator.alive()


async def test_second_run_of_a_model_registers_the_next_version(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await train(cluster, sample_run(namespace))
    await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded")
    second = sample_run(namespace, seed=7)
    second["metadata"]["name"] = "iris-again"
    await train(cluster, second)
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-again", "Succeeded")
    assert done["status"]["modelVersion"] == "iris-v2"
    versions = await cluster.list(
        API_VERSION, "ModelVersion", namespace, {"modelops.dev/model": "iris"}
    )
    assert sorted(v["spec"]["version"] for v in versions) == [1, 2]


async def test_operator_restart_mid_run_keeps_one_job_and_one_version(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await cluster.create(sample_run(namespace))
    await wait_job(cluster, namespace, "iris-logreg")
    operator.stop()
    operator.start()
    job = await wait_job_finished(cluster, namespace, "iris-logreg")
    assert job_finished(job) == "Complete"
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded")
    assert done["status"]["modelVersion"] == "iris-v1"

    # A status write lost after the version was created: the run is reconciled again.
    operator.stop()
    await cluster.patch(
        API_VERSION,
        "TrainingRun",
        namespace,
        "iris-logreg",
        {"status": {"phase": "Running", "modelVersion": None}},
        subresource="status",
    )
    operator.start()
    again = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded")
    assert again["status"]["modelVersion"] == "iris-v1"
    assert len(await cluster.list("batch/v1", "Job", namespace, {})) == 1
    assert len(await cluster.list(API_VERSION, "ModelVersion", namespace, {})) == 1


def _version(namespace: str, sha256: str, key: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "manifests/samples/modelversion-iris-v1.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["artifact"] = {"uri": f"s3://modelops/{key}", "sha256": sha256}
    return doc


async def test_tampered_artifact_is_refused_with_digest_mismatch(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    key = f"{namespace}/tamper/model.skops"
    s3.store().put(Location("modelops", key), b"not the model we trained")
    await cluster.create(_version(namespace, "a" * 64, key))
    done = await wait_phase(cluster, namespace, "ModelVersion", "iris-v1", "Ready", "Failed")
    ready = condition(done, "Ready")
    assert (done["status"]["phase"], ready["reason"]) == ("Failed", "DigestMismatch")
    assert "expected " + "a" * 64 in ready["message"]


async def test_missing_artifact_is_reported_as_artifact_missing(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await cluster.create(_version(namespace, "b" * 64, f"{namespace}/nowhere/model.skops"))
    done = await wait_phase(cluster, namespace, "ModelVersion", "iris-v1", "Ready", "Failed")
    assert condition(done, "Ready")["reason"] == "ArtifactMissing"


async def test_delete_policy_removes_artifacts_and_retain_keeps_them(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    store = s3.store()
    for name, policy in (("keep", "Retain"), ("drop", "Delete")):
        key = f"{namespace}/{name}/run/model.skops"
        sha = store.put(Location("modelops", key), name.encode())
        doc = _version(namespace, sha, key)
        doc["metadata"]["name"] = f"iris-{name}"
        doc["spec"]["deletionPolicy"] = policy
        await cluster.create(doc)
        await wait_phase(cluster, namespace, "ModelVersion", f"iris-{name}", "Ready")

    keep = await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-keep")
    assert keep is not None and not keep["metadata"].get("finalizers")
    for name in ("keep", "drop"):
        await cluster.delete(API_VERSION, "ModelVersion", namespace, f"iris-{name}")

    async def gone() -> bool:
        return await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-drop") is None

    await eventually(gone, what="iris-drop deleted")
    assert store.list(Location("modelops", f"{namespace}/drop/")) == []
    assert store.list(Location("modelops", f"{namespace}/keep/")) == [
        f"{namespace}/keep/run/model.skops"
    ]


async def test_metrics_endpoint_counts_jobs_and_versions(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await train(cluster, sample_run(namespace))
    await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded")
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    assert "modelops_jobs_created_total 1.0" in text
    assert 'modelops_model_versions_registered_total{model="iris"} 1.0' in text
    assert 'modelops_training_runs_finished_total{outcome="succeeded"} 1.0' in text
    assert 'modelops_reconcile_total{kind="TrainingRun"}' in text


# -- what only a real control plane shows --


async def test_kubectl_logs_of_the_training_pod_show_the_trainers_output(
    cluster: Cluster, namespace: str, operator: OperatorProcess, kubectl: Kubectl
) -> None:
    """Through the API server's pods/log, which asks the kubelet's /containerLogs."""
    _, pod = await train(cluster, sample_run(namespace))
    done = await kubectl("logs", "-n", namespace, pod["metadata"]["name"])
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])  # the trainer's closing line
    assert set(last) == {"metrics", "artifact"}
    assert last["metrics"]["accuracy"] >= 0.8
    by_job = await kubectl("logs", "-n", namespace, "job/iris-logreg-train")
    assert by_job.returncode == 0, by_job.stderr
    assert by_job.stdout == done.stdout


async def test_kubectl_wait_for_ready_returns_once_the_run_succeeded(
    cluster: Cluster, namespace: str, operator: OperatorProcess, kubectl: Kubectl
) -> None:
    await cluster.create(sample_run(namespace))
    done = await kubectl(
        "wait", "-n", namespace, "--for=condition=Ready", "trainingrun/iris-logreg",
        "--timeout=120s",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "trainingrun.modelops.dev/iris-logreg condition met" in done.stdout
    run = await get_run(cluster, namespace, "iris-logreg")
    assert run is not None and run["status"]["phase"] == "Succeeded"


async def test_kubectl_get_prints_the_crds_printer_columns(
    cluster: Cluster, namespace: str, operator: OperatorProcess, kubectl: Kubectl
) -> None:
    await cluster.create(sample_run(namespace))
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded")
    table = await kubectl("get", "tr", "-n", namespace)
    assert table.returncode == 0, table.stderr
    header, row, *rest = table.stdout.splitlines()
    assert rest == []
    assert header.split() == ["NAME", "MODEL", "ESTIMATOR", "PHASE", "METRICS", "VERSION", "AGE"]
    assert row.split()[:4] == ["iris-logreg", "iris", "LogisticRegression", "Succeeded"]
    assert row.split()[-2] == "iris-v1"
    assert done["status"]["metricsSummary"].split()[0] in row  # "accuracy=0.974"
    # The server's Table for the category, as `kubectl get modelops` asks for it.
    everything = await kubectl("get", "modelops", "-n", namespace, "-o", "name")
    assert everything.returncode == 0, everything.stderr
    assert set(everything.stdout.split()) == {
        "trainingrun.modelops.dev/iris-logreg",
        "modelversion.modelops.dev/iris-v1",
    }


async def test_deleting_a_run_garbage_collects_its_job_and_pods(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """The real garbage collector, asynchronously: run -> Job (owner) -> pods (owner)."""
    job, pod = await train(cluster, sample_run(namespace))
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded")
    await cluster.delete(API_VERSION, "TrainingRun", namespace, "iris-logreg")

    async def collected() -> bool:
        jobs = await cluster.list("batch/v1", "Job", namespace, {})
        pods = await job_pods(cluster, namespace, "iris-logreg-train")
        return not jobs and not pods

    await eventually(collected, what="the Job and its pods collected", timeout=60)
    assert await get_run(cluster, namespace, "iris-logreg") is None
    # The ModelVersion is not owned by the run: it stays.
    assert await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-v1") is not None


async def test_a_namespaced_operator_with_an_inline_ca_reconciles_within_seconds(
    cluster: Cluster, namespace: str, operator_kubeconfig: Path, operator: OperatorProcess
) -> None:
    """Logged in as kind, k3d or a cloud CLI write kubeconfigs (the CA inline, base64), and
    scoped to one namespace by a role that may not list Namespaces: no slow start (kopf's
    retries of a forbidden Namespace listing took ~54 s) and no failed login."""
    assert "certificate-authority-data" in operator_kubeconfig.read_text()
    await cluster.create(sample_run(namespace))

    async def job() -> dict[str, Any] | None:
        failed = [line for line in operator.logs().splitlines() if "failed with an" in line]
        assert not failed, failed[0]
        return await cluster.get("batch/v1", "Job", namespace, "iris-logreg-train")

    await eventually(job, what="the run's Job", timeout=20)
