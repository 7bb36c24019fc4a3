"""The MLflow sync's mapping: objects to MLflow runs, registered versions and aliases (pure
functions of integrations/mlflow.py), its name setting, and how client failures are reported.
The calls themselves run against a real ``mlflow server`` in tests/integration/test_mlflow.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelops.api.modelversion import ModelVersion
from modelops.api.trainingrun import TrainingRun
from modelops.integrations.mlflow import (
    DIGEST_LENGTH,
    MAX_PARAM_LENGTH,
    TAG_ARTIFACT_SHA256,
    TAG_DATASET_SHA256,
    TAG_MODEL_VERSION,
    TAG_MODEL_VERSION_UID,
    TAG_NAMESPACE,
    TAG_RUN_UID,
    TAG_TRAINING_RUN,
    AliasChanges,
    ArtifactRecord,
    alias_changes,
    backoff_seconds,
    dataset_record,
    epoch_ms,
    finite_metrics,
    mlflow_name,
    param_value,
    run_from_model_version,
    run_from_training_run,
    run_params,
    should_upload,
    version_from_model_version,
    version_source,
)
from modelops.integrations.mlflow_client import MlflowSyncError, Tracking, _failure
from modelops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RUN_UID = "0b8f3c52-6c1e-4a57-9d0e-2f3c1d2e4a11"
MV_UID = "5d1e7a40-2b9c-4f8e-8a3d-6c2b1e0f9a77"
DATASET_SHA = "3f" * 32
MODEL_SHA = "9f2c4e1b7a3d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
ARTIFACT_URI = f"s3://modelops/ml/iris/{RUN_UID}/model.skops"


def succeeded_run() -> TrainingRun:
    doc = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    doc["metadata"] |= {"namespace": "ml", "uid": RUN_UID}
    doc["status"] = {
        "phase": "Succeeded",
        "startTime": "2024-05-01T12:00:00Z",
        "completionTime": "2024-05-01T12:01:30Z",
        "metrics": {"accuracy": 0.97, "f1": 0.96},
        "artifact": {"uri": ARTIFACT_URI, "sha256": MODEL_SHA, "size": 4321},
        "modelVersion": "iris-v1",
    }
    return TrainingRun.model_validate(doc)


SUMMARY: dict[str, Any] = {
    "ok": True,
    "metrics": {"accuracy": 0.97, "f1": 0.96},
    "dataset": {"uri": "s3://modelops/datasets/iris.csv", "sha256": DATASET_SHA, "rows": 150},
}


def sample_version(run_uid: str | None = RUN_UID) -> ModelVersion:
    doc = yaml.safe_load((ROOT / "manifests/samples/modelversion-iris-v1.yaml").read_text())
    doc["metadata"] |= {
        "namespace": "ml",
        "uid": MV_UID,
        "creationTimestamp": "2024-05-01T12:02:00Z",
    }
    doc["spec"]["lineage"]["datasetSha256"] = DATASET_SHA
    if run_uid is None:
        del doc["spec"]["lineage"]["runUid"]
    return ModelVersion.model_validate(doc)


# -- names and settings -------------------------------------------------------------------------


def test_the_default_name_is_the_model_name() -> None:
    assert mlflow_name(Settings().mlflow_name, "ml", "iris") == "iris"


def test_a_name_template_can_keep_namespaces_apart() -> None:
    assert mlflow_name("{namespace}.{model}", "ml", "iris") == "ml.iris"


def test_the_sync_is_off_by_default() -> None:
    assert Settings().mlflow_tracking_uri == ""


@pytest.mark.parametrize(
    "template", ["{namespace}", "{model}/{namespace}", "{model}:{namespace}", "{model}-{user}", ""]
)
def test_a_name_template_mlflow_would_refuse_is_refused_at_start(template: str) -> None:
    with pytest.raises(ValidationError, match="mlflow_name"):
        Settings(mlflow_name=template)


# -- params, metrics, dataset ---------------------------------------------------------------------


def test_params_are_the_estimators_under_their_names_with_estimator_seed_and_test_size() -> None:
    params = run_params("LogisticRegression", {"C": 1.0, "max_iter": 500}, 42, 0.25)
    assert params == {
        "C": "1.0",
        "max_iter": "500",
        "estimator": "LogisticRegression",
        "seed": "42",
        "test_size": "0.25",
    }


def test_an_unknown_test_size_is_not_logged() -> None:
    assert "test_size" not in run_params("Ridge", {}, 0, None)


@pytest.mark.parametrize(("value", "text"), [(None, "None"), (True, "True"), ("sqrt", "sqrt")])
def test_a_param_is_logged_as_str_of_its_value(value: Any, text: str) -> None:
    assert param_value(value) == text


def test_a_param_longer_than_mlflow_allows_is_cut_to_its_limit() -> None:
    assert len(param_value("x" * (MAX_PARAM_LENGTH + 10))) == MAX_PARAM_LENGTH


def test_only_finite_numeric_metrics_are_logged() -> None:
    metrics = {"accuracy": 0.9, "r2": math.nan, "mae": math.inf, "flag": True, "note": "x", "n": 3}
    assert finite_metrics(metrics) == {"accuracy": 0.9, "n": 3.0}


def test_the_dataset_digest_fits_mlflow_and_the_profile_keeps_the_whole_sha256() -> None:
    record = dataset_record("s3://modelops/datasets/iris.csv", DATASET_SHA, 150)
    assert record is not None
    assert record.digest == DATASET_SHA[:DIGEST_LENGTH]
    assert json.loads(record.profile) == {"sha256": DATASET_SHA, "num_rows": 150}
    assert (record.name, record.source_type) == ("iris.csv", "s3")
    assert json.loads(record.source) == {"uri": "s3://modelops/datasets/iris.csv"}


def test_a_dataset_without_a_digest_is_no_dataset_input() -> None:
    assert dataset_record("s3://modelops/datasets/iris.csv", None) is None


def test_kubernetes_timestamps_become_epoch_milliseconds() -> None:
    assert epoch_ms("1970-01-01T00:01:00Z") == 60_000
    assert epoch_ms(None) is None


# -- TrainingRun -> run --------------------------------------------------------------------------


def test_a_training_run_is_keyed_by_its_uid_in_its_models_experiment() -> None:
    record = run_from_training_run(succeeded_run(), SUMMARY, "iris")
    assert (record.experiment, record.run_name, record.key) == (
        "iris",
        "iris-logreg",
        (TAG_RUN_UID, RUN_UID),
    )


def test_a_training_run_logs_its_spec_params_and_status_metrics() -> None:
    record = run_from_training_run(succeeded_run(), SUMMARY, "iris")
    assert record.params == run_params("LogisticRegression", {"max_iter": 500, "C": 1.0}, 42, 0.25)
    assert record.metrics == {"accuracy": 0.97, "f1": 0.96}


def test_a_training_run_is_tagged_with_where_it_ran_and_the_digests() -> None:
    tags = run_from_training_run(succeeded_run(), SUMMARY, "iris").tags
    assert tags[TAG_NAMESPACE] == "ml"
    assert tags[TAG_TRAINING_RUN] == "iris-logreg"
    assert tags[TAG_DATASET_SHA256] == DATASET_SHA
    assert tags[TAG_ARTIFACT_SHA256] == MODEL_SHA
    assert tags[TAG_MODEL_VERSION] == "iris-v1"


def test_a_training_run_keeps_its_start_and_completion_times() -> None:
    record = run_from_training_run(succeeded_run(), SUMMARY, "iris")
    assert record.end_ms is not None and record.start_ms is not None
    assert record.end_ms - record.start_ms == 90_000


def test_a_training_run_carries_its_dataset_input_and_artifact() -> None:
    record = run_from_training_run(succeeded_run(), SUMMARY, "iris")
    assert record.dataset == dataset_record("s3://modelops/datasets/iris.csv", DATASET_SHA, 150)
    assert record.artifact == ArtifactRecord(ARTIFACT_URI, MODEL_SHA, 4321)


def test_a_training_run_without_an_artifact_is_refused() -> None:
    run = succeeded_run()
    run.status.artifact = None
    with pytest.raises(ValueError, match="no artifact"):
        run_from_training_run(run, SUMMARY, "iris")


# -- ModelVersion -> run and registered version ---------------------------------------------------


def test_a_version_of_a_gone_run_is_keyed_by_that_runs_uid() -> None:
    """The key of the TrainingRun's own run: one logged before the run went is found."""
    assert run_from_model_version(sample_version(), "iris").key == (TAG_RUN_UID, RUN_UID)


def test_a_version_applied_by_hand_is_keyed_by_its_own_uid() -> None:
    record = run_from_model_version(sample_version(run_uid=None), "iris")
    assert record.key == (TAG_MODEL_VERSION_UID, MV_UID)


def test_a_versions_run_is_made_from_its_lineage_and_metrics() -> None:
    record = run_from_model_version(sample_version(), "iris")
    assert record.params == run_params("LogisticRegression", {"max_iter": 500, "C": 1.0}, 42, None)
    assert record.metrics == {"accuracy": 0.973684, "f1": 0.973323}
    assert record.tags[TAG_DATASET_SHA256] == DATASET_SHA
    assert record.run_name == "iris-logreg"


def test_a_registered_version_is_tagged_with_its_model_version() -> None:
    record = version_from_model_version(sample_version(), "iris")
    assert (record.registered_model, record.namespace, record.uid) == ("iris", "ml", MV_UID)
    assert record.tags[TAG_MODEL_VERSION] == "iris-v1"
    assert record.tags[TAG_MODEL_VERSION_UID] == MV_UID


def test_an_uploaded_model_is_registered_from_the_runs_artifacts() -> None:
    artifact = ArtifactRecord(ARTIFACT_URI, MODEL_SHA)
    source = version_source("mlflow-artifacts:/1/abc/artifacts", True, artifact)
    assert source == "mlflow-artifacts:/1/abc/artifacts/model"


def test_a_model_too_large_to_upload_is_registered_from_the_store() -> None:
    artifact = ArtifactRecord(ARTIFACT_URI, MODEL_SHA)
    assert version_source("mlflow-artifacts:/1/abc/artifacts", False, artifact) == ARTIFACT_URI


@pytest.mark.parametrize(
    ("size", "limit", "upload"),
    [(10, 100, True), (100, 100, True), (101, 100, False), (10, 0, False), (None, 100, False)],
)
def test_a_model_is_uploaded_only_up_to_the_limit(
    size: int | None, limit: int, upload: bool
) -> None:
    assert should_upload(size, limit) is upload


# -- aliases ---------------------------------------------------------------------------------


def test_aliases_are_set_where_they_differ() -> None:
    changes = alias_changes({"stable": "1"}, {"stable": "1", "canary": "2"})
    assert changes == AliasChanges({"canary": "2"}, ())


def test_a_promotion_moves_stable_and_deletes_canary() -> None:
    changes = alias_changes({"stable": "1", "canary": "2"}, {"stable": "2", "canary": None})
    assert changes == AliasChanges({"stable": "2"}, ("canary",))
    assert changes.describe() == "stable -> 2, canary deleted"


def test_aliases_already_right_need_no_change() -> None:
    assert not alias_changes({"stable": "1", "canary": "2"}, {"stable": "1", "canary": "2"})


def test_an_absent_alias_is_not_deleted() -> None:
    assert alias_changes({"stable": "1"}, {"stable": "1", "canary": None}) == AliasChanges()


def test_aliases_someone_else_set_are_left_alone() -> None:
    changes = alias_changes({"champion": "1", "stable": "1"}, {"stable": "3", "canary": None})
    assert changes == AliasChanges({"stable": "3"}, ())


# -- failures ------------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_up_to_five_minutes() -> None:
    assert [backoff_seconds(n) for n in (0, 1, 2, 3, 4)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff_seconds(10) == 300.0
    assert backoff_seconds(100_000) == 300.0  # a long outage must not overflow


def test_an_error_answer_of_the_server_is_reported_as_refused() -> None:
    from mlflow.exceptions import RestException

    error = _failure(RestException({"error_code": "PERMISSION_DENIED", "message": "no"}))
    assert error.reason == "MlflowRefused"
    assert str(error).startswith("PERMISSION_DENIED")


def test_no_answer_is_reported_as_unavailable() -> None:
    error = _failure(ConnectionError("connection refused"))
    assert (error.reason, str(error)) == ("MlflowUnavailable", "connection refused")


def test_a_missing_client_package_is_reported_not_raised_as_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` sees uninstalled
    with pytest.raises(MlflowSyncError, match=r"modelops-operator\[mlflow\]") as caught:
        Tracking("http://127.0.0.1:1").client()
    assert caught.value.reason == "MlflowNotInstalled"


def test_a_client_package_that_cannot_be_imported_is_reported_as_not_installed() -> None:
    error = _failure(ImportError("No module named 'mlflow.entities'"))
    assert error.reason == "MlflowNotInstalled"
