"""Pure builders and planners: golden objects, schema validity, decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelops.api.common import get_condition, set_condition
from modelops.api.trainingrun import TrainingRun
from modelops.resources.common import child_name
from modelops.resources.modelversion import model_version, next_number
from modelops.resources.training import gate_failures, job_outcome, training_job
from modelops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data"
SETTINGS = Settings(runtime_image="registry.example/modelops-runtime:1.0", s3_endpoint="s3:9000")


def iris_run() -> TrainingRun:
    doc = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    doc["metadata"] |= {"namespace": "ml", "uid": "0b8f3c52-6c1e-4a57-9d0e-2f3c1d2e4a11"}
    return TrainingRun.model_validate(doc)


def test_training_job_matches_golden_file() -> None:
    job = training_job(iris_run(), SETTINGS)
    golden = GOLDEN / "training-job.yaml"
    assert job == yaml.safe_load(golden.read_text()), f"update {golden} if this change is wanted"


@pytest.mark.parametrize("version", ["1.28", "1.32", "1.35"])
def test_training_job_is_valid_kubernetes(version: str) -> None:
    kubernetes_validate.validate(training_job(iris_run(), SETTINGS), version, strict=True)


def test_training_job_never_carries_secret_values() -> None:
    job = training_job(iris_run(), SETTINGS)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    secret_vars = [v for v in env if v["name"].startswith("AWS_")]
    assert secret_vars and all("value" not in v and "valueFrom" in v for v in secret_vars)


def test_training_job_meets_restricted_pod_security() -> None:
    pod = training_job(iris_run(), SETTINGS)["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def test_child_names_stay_within_63_characters_and_distinct() -> None:
    a, b = child_name("x" * 70 + "a", "train"), child_name("x" * 70 + "b", "train")
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-train")
    assert child_name("iris", "train") == "iris-train"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, ("Pending", "JobPending")),
        ({"active": 1}, ("Running", "JobRunning")),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, ("Succeeded", "JobComplete")),
        (
            {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]},
            ("Failed", "DeadlineExceeded"),
        ),
        (
            {"conditions": [{"type": "Failed", "status": "False"}], "active": 1},
            ("Running", "JobRunning"),
        ),
    ],
)
def test_job_outcome_reads_job_status(status: dict[str, Any], expected: tuple[str, str]) -> None:
    assert job_outcome({"status": status}) == expected


def test_gates_pass_when_every_metric_reaches_its_bound() -> None:
    assert gate_failures({"accuracy": 0.95, "f1": 0.9}, {"accuracy": 0.9, "f1": 0.9}) == []


def test_gates_name_each_failure_and_treat_errors_as_upper_bounds() -> None:
    failures = gate_failures({"accuracy": 0.5, "mae": 3.0}, {"accuracy": 0.9, "mae": 2.0, "r2": 0})
    assert failures == ["accuracy 0.5 < 0.9", "mae 3 > 2", "r2 was not measured"]


def test_next_version_number_is_highest_plus_one() -> None:
    assert next_number([]) == 1
    assert next_number([{"spec": {"version": 3}}, {"spec": {"version": 1}}]) == 4


def test_model_version_object_carries_lineage_and_labels() -> None:
    run = iris_run()
    summary = {
        "artifact": {"uri": "s3://modelops/ml/iris/u/model.skops", "sha256": "c" * 64},
        "profile": {"uri": "s3://modelops/ml/iris/u/profile.json", "sha256": "d" * 64},
        "signature": {"task": "classification", "inputs": [{"name": "a", "datatype": "FP64"}]},
        "metrics": {"accuracy": 0.97},
        "dataset": {"uri": "s3://modelops/datasets/iris.csv", "sha256": "e" * 64},
    }
    mv = model_version(run, summary, 3, "img:1")
    assert mv["metadata"]["name"] == "iris-v3"
    assert mv["metadata"]["labels"]["modelops.dev/training-run-uid"] == run.metadata["uid"]
    assert mv["spec"]["lineage"]["datasetSha256"] == "e" * 64
    assert mv["spec"]["lineage"]["params"] == {"max_iter": 500, "C": 1.0}


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    conds, changed = set_condition([], "Ready", "False", "JobPending", "", 1)
    assert changed
    first = get_condition(conds, "Ready")
    assert first is not None
    first["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    conds, changed = set_condition(conds, "Ready", "False", "JobRunning", "running", 1)
    same = get_condition(conds, "Ready")
    assert not changed and same is not None
    assert same["lastTransitionTime"] == "2020-01-01T00:00:00Z" and same["reason"] == "JobRunning"
    conds, changed = set_condition(conds, "Ready", "True", "Succeeded", "", 2)
    done = get_condition(conds, "Ready")
    assert changed and done is not None and done["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert done["observedGeneration"] == 2
