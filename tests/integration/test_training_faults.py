"""TrainingRuns that go wrong, on the real control plane: metrics that cannot be measured,
version numbers taken by hand, and Jobs the real Job controller fails.

Each input is an issue row: a 10-row regression with ``testSize: 0.1`` (one test row, so R²
is NaN, which once passed its gate and was registered; issue row 2), a ModelVersion applied
by hand with no labels (which once left the run retrying forever; issue row 4), a Job killed
by its deadline and one whose trainer refuses the split.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.operator import UNRUNNABLE_IMAGE, OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRAINING_TIMEOUT = 120.0  # a pod start plus a training, on a busy 2-core machine
JOB_LABEL = "batch.kubernetes.io/job-name"


def tiny_dataset(s3: S3Server, namespace: str, rows: int = 10) -> str:
    """A regression CSV of ``rows`` rows (y = 2x + 1 + noise) under a key of its own."""
    lines = ["x,y"] + [f"{x},{2 * x + 1 + (0.5 if x % 2 else -0.5)}" for x in range(rows)]
    key = f"datasets/{namespace}/tiny-{uuid.uuid4().hex[:8]}.csv"
    s3.store().put(Location("modelops", key), ("\n".join(lines) + "\n").encode())
    return f"s3://modelops/{key}"


def tiny_run(namespace: str, name: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": name,
            "dataset": {"uri": uri, "target": "y"},
            "estimator": {"name": "LinearRegression"},
            "testSize": 0.1,
            **spec,
        },
    }


def iris_run(namespace: str, **spec: Any) -> dict[str, Any]:
    run = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    run["metadata"]["namespace"] = namespace
    run["spec"].update(spec)
    return run


async def wait_phase(
    cluster: Cluster, namespace: str, kind: str, name: str, *phases: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.get(API_VERSION, kind, namespace, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None

    return await eventually(
        probe, what=f"{kind} {name} phase in {phases}", timeout=TRAINING_TIMEOUT
    )


def job_failed(job: dict[str, Any] | None) -> dict[str, Any]:
    return condition(job, "Failed") if condition(job, "Failed").get("status") == "True" else {}


async def test_r2_on_one_test_row_fails_its_gate_and_no_nan_reaches_the_server(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    """Issue row 2. Beside it, the same data without a gate registers a version without R²."""
    uri = tiny_dataset(s3, namespace)
    await cluster.create(tiny_run(namespace, "tiny", uri, register={"minMetrics": {"r2": 0.9}}))
    await cluster.create(tiny_run(namespace, "open", uri))

    gated = await wait_phase(cluster, namespace, "TrainingRun", "tiny", "Succeeded", "Failed")
    status = gated["status"]
    assert status["phase"] == "Succeeded", status
    assert "r2" not in status["metrics"] and set(status["metrics"]) == {"mae"}
    registered = condition(gated, "Registered")
    assert (registered["status"], registered["reason"]) == ("False", "GatesNotMet")
    assert registered["message"] == "r2 could not be measured (1 test row)"
    assert "r2 could not be measured (1 test row)" in condition(gated, "Ready")["message"]
    assert status["metricsSummary"].startswith("mae=") and "nan" not in status["metricsSummary"]
    assert "modelVersion" not in status
    assert await cluster.get(API_VERSION, "ModelVersion", namespace, "tiny-v1") is None

    opened = await wait_phase(cluster, namespace, "TrainingRun", "open", "Succeeded", "Failed")
    assert opened["status"]["phase"] == "Succeeded", opened["status"]
    assert opened["status"]["modelVersion"] == "open-v1"
    version = await wait_phase(cluster, namespace, "ModelVersion", "open-v1", "Ready", "Failed")
    assert set(version["spec"]["metrics"]) == {"mae"}
    assert version["status"]["phase"] == "Ready", version["status"]

    # What the trainer stored is strict JSON: no NaN written as if it were a value.
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in the trainer's summary")

    summary_uri = gated["status"]["artifact"]["uri"].rsplit("/", 1)[0] + "/summary.json"
    summary = json.loads(s3.store().get(Location.parse(summary_uri)), parse_constant=refuse)
    assert summary["unmeasured"] == {"r2": "r2 could not be measured (1 test row)"}
    assert "Bad Request" not in operator.logs() and "NaN" not in operator.logs()


@pytest.mark.parametrize(
    ("hand_made", "registered"),
    [
        # Issue row 4 as filed: numbers only grow, so iris-v3 although iris-v1 is free (the
        # operator before the fix took iris-v1, and the next run then retried iris-v2 forever).
        (2, 3),
        # The sample manifest applied as is: the operator before the fix retried the taken
        # iris-v1 every 2 s for ever ("could not pick a free ModelVersion number").
        (1, 2),
    ],
)
async def test_a_hand_made_version_without_labels_is_skipped_by_numbering(
    cluster: Cluster, namespace: str, operator: OperatorProcess, hand_made: int, registered: int
) -> None:
    """Issue row 4: a ModelVersion applied by hand (no labels) holds its number."""
    manual = yaml.safe_load((ROOT / "manifests/samples/modelversion-iris-v1.yaml").read_text())
    manual["metadata"] = {"name": f"iris-v{hand_made}", "namespace": namespace}
    manual["spec"]["version"] = hand_made
    await cluster.create(manual)
    await cluster.create(iris_run(namespace))

    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    ours = f"iris-v{registered}"
    assert condition(done, "Registered") | {"lastTransitionTime": None} == {
        "type": "Registered",
        "status": "True",
        "reason": "Registered",
        "message": f"registered as {ours}",
        "observedGeneration": 1,
        "lastTransitionTime": None,
    }
    assert done["status"]["modelVersion"] == ours
    version = await wait_phase(cluster, namespace, "ModelVersion", ours, "Ready", "Failed")
    assert version["spec"]["version"] == registered
    assert version["spec"]["lineage"]["runUid"] == done["metadata"]["uid"]
    versions = await cluster.list(API_VERSION, "ModelVersion", namespace, {})
    assert sorted(v["metadata"]["name"] for v in versions) == sorted([f"iris-v{hand_made}", ours])
    assert "could not pick a free ModelVersion number" not in operator.logs()


async def test_a_job_past_its_deadline_fails_the_run_with_deadline_exceeded(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """The trainer never starts (an image the kubelet cannot pull) and writes nothing: the
    reason and message are the real Job controller's."""
    await cluster.create(iris_run(namespace, image=UNRUNNABLE_IMAGE, activeDeadlineSeconds=3))

    async def failed_job() -> dict[str, Any] | None:
        job = await cluster.get("batch/v1", "Job", namespace, "iris-logreg-train")
        return job if job_failed(job) else None

    job = await eventually(failed_job, what="the Job failed", timeout=TRAINING_TIMEOUT)
    failed = job_failed(job)
    assert failed["reason"] == "DeadlineExceeded", failed
    done = await wait_phase(cluster, namespace, "TrainingRun", "iris-logreg", "Failed")
    ready = condition(done, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DeadlineExceeded")
    assert ready["message"] == f"training Job failed (DeadlineExceeded): {failed['message']}"
    assert done["status"]["message"] == ready["message"]
    assert await cluster.list(API_VERSION, "ModelVersion", namespace, {}) == []


async def test_a_split_with_no_training_rows_fails_with_the_trainers_reason(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    """testSize 0.95 of 10 rows leaves no training row: the trainer once crashed with a
    traceback (the run said only "JobFailed"); now it names the problem, and the Job
    controller's BackoffLimitExceeded gives way to it."""
    uri = tiny_dataset(s3, namespace)
    await cluster.create(tiny_run(namespace, "tiny", uri, testSize=0.95))

    async def failed_job() -> dict[str, Any] | None:
        job = await cluster.get("batch/v1", "Job", namespace, "tiny-train")
        return job if job_failed(job) else None

    job = await eventually(failed_job, what="the Job failed", timeout=TRAINING_TIMEOUT)
    assert job_failed(job)["reason"] == "BackoffLimitExceeded"
    (pod,) = await cluster.list("v1", "Pod", namespace, {JOB_LABEL: "tiny-train"})
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 2
    assert json.loads(terminated["message"])["reason"] == "InvalidDataset"
    done = await wait_phase(cluster, namespace, "TrainingRun", "tiny", "Failed")
    ready = condition(done, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidDataset")
    assert "cannot hold out testSize 0.95 of 10 rows" in ready["message"]
    assert ready["message"] == json.loads(terminated["message"])["message"]
