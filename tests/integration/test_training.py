"""TrainingRun -> Job -> ModelVersion with the real operator, a real S3 server and real sklearn."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.kubelet import run_job
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NS = "default"


def sample_run(**spec_changes: Any) -> dict[str, Any]:
    run = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    run["metadata"]["namespace"] = NS
    run["spec"].update(spec_changes)
    return run


async def get_run(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return await cluster.get(API_VERSION, "TrainingRun", NS, name)


async def wait_job(cluster: Cluster, name: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        return await cluster.get("batch/v1", "Job", NS, f"{name}-train")

    return await eventually(probe, what=f"Job {name}-train")


async def wait_phase(cluster: Cluster, kind: str, name: str, *phases: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.get(API_VERSION, kind, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None

    return await eventually(probe, what=f"{kind} {name} phase in {phases}")


async def train(cluster: Cluster, run: dict[str, Any], tmp_path: Path) -> tuple[dict, int]:
    await cluster.create(run)
    job = await wait_job(cluster, run["metadata"]["name"])
    code = await run_job(cluster, job, workdir=tmp_path / run["metadata"]["name"])
    return job, code


async def test_iris_run_trains_and_registers_a_ready_version(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server, tmp_path: Path
) -> None:
    run = sample_run()
    await cluster.create(run)
    job = await wait_job(cluster, "iris-logreg")

    created = await get_run(cluster, "iris-logreg")
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

    assert await run_job(cluster, job, workdir=tmp_path / "pod") == 0
    done = await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["metrics"]["accuracy"] >= 0.8
    assert status["modelVersion"] == "iris-v1"
    assert condition(done, "Registered")["status"] == "True"
    assert condition(done, "Ready")["reason"] == "Succeeded"
    assert status["observedGeneration"] == done["metadata"]["generation"]

    version = await wait_phase(cluster, "ModelVersion", "iris-v1", "Ready", "Failed")
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


async def test_every_job_validates_against_the_kubernetes_schema(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    await cluster.create(sample_run())
    job = await wait_job(cluster, "iris-logreg")
    clean = copy.deepcopy(job)
    for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        clean["metadata"].pop(field, None)
    clean.pop("status", None)
    for version in ("1.29", "1.32"):
        kubernetes_validate.validate(clean, version, strict=True)


async def test_missing_target_fails_the_run_with_the_trainers_reason(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    run = sample_run(dataset={"uri": "s3://modelops/datasets/iris.csv", "target": "colour"})
    _, code = await train(cluster, run, tmp_path)
    assert code == 2
    done = await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Failed"
    ready = condition(done, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "MissingTarget")
    assert "'colour'" in ready["message"]
    assert await cluster.list(API_VERSION, "ModelVersion", NS, {}) == []


async def test_missing_dataset_fails_with_dataset_missing(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    run = sample_run(dataset={"uri": "s3://modelops/datasets/nope.csv", "target": "species"})
    _, code = await train(cluster, run, tmp_path)
    assert code == 2
    done = await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    assert condition(done, "Ready")["reason"] == "DatasetMissing"


async def test_gates_not_met_succeeds_without_registering(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    run = sample_run(register={"minMetrics": {"accuracy": 0.999}})
    run["spec"]["estimator"] = {"name": "DecisionTreeClassifier", "params": {"max_depth": 1}}
    await train(cluster, run, tmp_path)
    done = await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    registered = condition(done, "Registered")
    assert (registered["status"], registered["reason"]) == ("False", "GatesNotMet")
    assert "accuracy" in registered["message"] and "< 0.999" in registered["message"]
    assert "modelVersion" not in done["status"]


async def test_invalid_spec_is_reported_and_other_runs_still_train(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    bad = sample_run(estimator={"name": "os.system"})
    bad["metadata"]["name"] = "bad-run"
    await cluster.create(bad)  # this API server does not enforce the CRD schema
    await cluster.create(sample_run())

    done = await wait_phase(cluster, "TrainingRun", "bad-run", "Failed")
    ready = condition(done, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "estimator.name" in ready["message"]
    await wait_job(cluster, "iris-logreg")
    assert await cluster.get("batch/v1", "Job", NS, "bad-run-train") is None
    assert operator.alive()


async def test_second_run_of_a_model_registers_the_next_version(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    await train(cluster, sample_run(), tmp_path)
    await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded")
    second = sample_run(seed=7)
    second["metadata"]["name"] = "iris-again"
    await train(cluster, second, tmp_path)
    done = await wait_phase(cluster, "TrainingRun", "iris-again", "Succeeded")
    assert done["status"]["modelVersion"] == "iris-v2"
    versions = await cluster.list(API_VERSION, "ModelVersion", NS, {"modelops.dev/model": "iris"})
    assert sorted(v["spec"]["version"] for v in versions) == [1, 2]


async def test_operator_restart_mid_run_keeps_one_job_and_one_version(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    await cluster.create(sample_run())
    job = await wait_job(cluster, "iris-logreg")
    operator.stop()
    operator.start()
    assert await run_job(cluster, job, workdir=tmp_path / "pod") == 0
    done = await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded")
    assert done["status"]["modelVersion"] == "iris-v1"

    # A status write lost after the version was created: the run is reconciled again.
    operator.stop()
    await cluster.patch(
        API_VERSION,
        "TrainingRun",
        NS,
        "iris-logreg",
        {"status": {"phase": "Running", "modelVersion": None}},
        subresource="status",
    )
    operator.start()
    again = await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded")
    assert again["status"]["modelVersion"] == "iris-v1"
    assert len(await cluster.list("batch/v1", "Job", NS, {})) == 1
    assert len(await cluster.list(API_VERSION, "ModelVersion", NS, {})) == 1


def _version(sha256: str, key: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "manifests/samples/modelversion-iris-v1.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    doc["spec"]["artifact"] = {"uri": f"s3://modelops/{key}", "sha256": sha256}
    return doc


async def test_tampered_artifact_is_refused_with_digest_mismatch(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server
) -> None:
    s3.store().put(Location("modelops", "tamper/model.skops"), b"not the model we trained")
    await cluster.create(_version("a" * 64, "tamper/model.skops"))
    done = await wait_phase(cluster, "ModelVersion", "iris-v1", "Ready", "Failed")
    ready = condition(done, "Ready")
    assert (done["status"]["phase"], ready["reason"]) == ("Failed", "DigestMismatch")
    assert "expected " + "a" * 64 in ready["message"]


async def test_missing_artifact_is_reported_as_artifact_missing(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    await cluster.create(_version("b" * 64, "nowhere/model.skops"))
    done = await wait_phase(cluster, "ModelVersion", "iris-v1", "Ready", "Failed")
    assert condition(done, "Ready")["reason"] == "ArtifactMissing"


async def test_delete_policy_removes_artifacts_and_retain_keeps_them(
    cluster: Cluster, operator: OperatorProcess, s3: S3Server
) -> None:
    store = s3.store()
    for name, policy in (("keep", "Retain"), ("drop", "Delete")):
        sha = store.put(Location("modelops", f"{name}/run/model.skops"), name.encode())
        doc = _version(sha, f"{name}/run/model.skops")
        doc["metadata"]["name"] = f"iris-{name}"
        doc["spec"]["deletionPolicy"] = policy
        await cluster.create(doc)
        await wait_phase(cluster, "ModelVersion", f"iris-{name}", "Ready")

    keep = await cluster.get(API_VERSION, "ModelVersion", NS, "iris-keep")
    assert keep is not None and not keep["metadata"].get("finalizers")
    for name in ("keep", "drop"):
        await cluster.delete(API_VERSION, "ModelVersion", NS, f"iris-{name}")

    async def gone() -> bool:
        return await cluster.get(API_VERSION, "ModelVersion", NS, "iris-drop") is None

    await eventually(gone, what="iris-drop deleted")
    assert store.list(Location("modelops", "drop/")) == []
    assert store.list(Location("modelops", "keep/")) == ["keep/run/model.skops"]


async def test_metrics_endpoint_counts_jobs_and_versions(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    await train(cluster, sample_run(), tmp_path)
    await wait_phase(cluster, "TrainingRun", "iris-logreg", "Succeeded")
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    assert "modelops_jobs_created_total 1.0" in text
    assert 'modelops_model_versions_registered_total{model="iris"} 1.0' in text
    assert 'modelops_training_runs_finished_total{outcome="succeeded"} 1.0' in text
    assert 'modelops_reconcile_total{kind="TrainingRun"}' in text
