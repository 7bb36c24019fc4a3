"""Retraining triggers: schedule slots, new-data decisions, cooldown, names, validation."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelops.api.driftmonitor import DataVersion, DriftMonitorSpec
from modelops.api.trainingrun import TrainingRun, TrainingRunSpec
from modelops.controllers.triggers import (
    cooldown_left,
    data_change,
    data_version,
    last_slot,
    newest,
    next_slot,
    run_number,
    schedule_decision,
    schedule_error,
)
from modelops.resources.modelversion import model_version
from modelops.resources.training import retrain_run
from modelops.storage import Location, ObjectInfo
from support.crdschema import CrdValidator

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC
PREFIX = "s3://data/iris/"
TEMPLATE: dict[str, Any] = {
    "model": "iris",
    "dataset": {"uri": "s3://data/iris/", "target": "species"},
    "estimator": {"name": "LogisticRegression"},
}


def at(hour: int, minute: int, second: int = 0) -> dt.datetime:
    return dt.datetime(2025, 3, 10, hour, minute, second, tzinfo=UTC)


def obj(key: str, etag: str, modified: dt.datetime, size: int = 10) -> ObjectInfo:
    return ObjectInfo(Location("data", key), etag, modified, size)


# -- schedule ---------------------------------------------------------------------------------


def test_last_slot_is_the_slot_itself_when_now_is_exactly_on_it() -> None:
    assert last_slot("*/15 * * * *", at(12, 30)) == at(12, 30)


def test_last_slot_between_slots_is_the_one_before() -> None:
    assert last_slot("*/15 * * * *", at(12, 44, 59)) == at(12, 30)


def test_next_slot_is_strictly_after_now() -> None:
    assert next_slot("*/15 * * * *", at(12, 30)) == at(12, 45)


def test_slots_are_computed_in_utc_whatever_the_zone_of_now() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    now = dt.datetime(2025, 3, 10, 4, 30, tzinfo=berlin)  # 03:30 UTC
    assert last_slot("0 3 * * *", now) == at(3, 0)


def test_first_look_at_the_schedule_is_a_baseline_not_a_run() -> None:
    decision = schedule_decision("0 * * * *", None, at(12, 30))
    assert (decision.due, decision.handled, decision.next) == (None, at(12, 0), at(13, 0))


def test_a_slot_after_the_last_handled_is_due() -> None:
    decision = schedule_decision("0 * * * *", at(12, 0), at(13, 0, 20))
    assert (decision.due, decision.handled) == (at(13, 0), at(13, 0))


def test_many_missed_slots_give_one_due_slot_the_latest() -> None:
    down_since = at(2, 0)  # the operator was down for ten hourly slots
    decision = schedule_decision("0 * * * *", down_since, at(12, 10))
    assert decision.due == at(12, 0)
    # carried out, the next pass finds nothing more due
    assert schedule_decision("0 * * * *", decision.handled, at(12, 11)).due is None


def test_no_slot_since_the_last_handled_is_nothing_due() -> None:
    decision = schedule_decision("0 * * * *", at(12, 0), at(12, 59, 59))
    assert (decision.due, decision.handled) == (None, at(12, 0))


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("61 * * * *", "Bad minute"),
        ("* * * *", "five fields"),
        ("0 0 30 2 *", "Bad day-of-month"),
        ("every minute", "five fields"),
    ],
)
def test_invalid_cron_expression_is_named_with_the_reason(expr: str, says: str) -> None:
    problem = schedule_error(expr)
    assert repr(expr) in problem and says in problem


def test_valid_cron_expression_has_no_error() -> None:
    assert schedule_error("0 3 * * MON-FRI") == ""


def test_slot_of_an_invalid_expression_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Bad minute"):
        last_slot("61 * * * *", at(12, 0))


# -- new data ---------------------------------------------------------------------------------


def test_newest_object_under_a_prefix_is_chosen_by_last_modified() -> None:
    objects = [obj("iris/b.csv", "1", at(9, 0)), obj("iris/a.csv", "2", at(10, 0))]
    found = newest(objects)
    assert found is not None and found.location.key == "iris/a.csv"


def test_newest_ignores_objects_the_trainer_cannot_read() -> None:
    objects = [obj("iris/a.parquet", "1", at(9, 0)), obj("iris/_SUCCESS", "2", at(10, 0))]
    found = newest(objects)
    assert found is not None and found.location.key == "iris/a.parquet"


def test_newest_of_markers_only_is_none() -> None:
    assert newest([obj("iris/_SUCCESS", "2", at(10, 0))]) is None


def test_first_look_at_the_data_is_a_baseline() -> None:
    assert data_change(None, obj("iris/a.csv", "1", at(9, 0)), PREFIX) == "baseline"


def test_a_changed_dataset_uri_is_a_new_baseline() -> None:
    seen = DataVersion(uri="s3://data/old/a.csv", etag="1", last_modified="2025-03-10T09:00:00Z")
    assert data_change(seen, obj("iris/a.csv", "1", at(9, 0)), PREFIX) == "baseline"


def test_same_object_same_etag_is_unchanged() -> None:
    found = obj("iris/a.csv", "1", at(9, 0))
    assert data_change(data_version(found, PREFIX), found, PREFIX) == "unchanged"


def test_changed_etag_of_one_object_is_new_data() -> None:
    source = "s3://data/iris/a.csv"
    seen = data_version(obj("iris/a.csv", "1", at(9, 0)), source)
    assert data_change(seen, obj("iris/a.csv", "2", at(9, 5)), source) == "new"


def test_new_object_under_the_prefix_is_new_data() -> None:
    seen = data_version(obj("iris/a.csv", "1", at(9, 0)), PREFIX)
    assert data_change(seen, obj("iris/b.csv", "7", at(9, 30)), PREFIX) == "new"


def test_an_older_object_becoming_the_newest_is_not_new_data() -> None:
    seen = data_version(obj("iris/b.csv", "7", at(9, 30)), PREFIX)  # b deleted since
    assert data_change(seen, obj("iris/a.csv", "1", at(9, 0)), PREFIX) == "unchanged"


def test_first_object_under_a_prefix_that_was_empty_is_new_data() -> None:
    seen = data_version(None, PREFIX)
    assert data_change(seen, obj("iris/a.csv", "1", at(9, 0)), PREFIX) == "new"


def test_nothing_there_now_is_unchanged() -> None:
    seen = data_version(obj("iris/a.csv", "1", at(9, 0)), PREFIX)
    assert data_change(seen, None, PREFIX) == "unchanged"


def test_data_version_records_uri_etag_time_and_size() -> None:
    version = data_version(obj("iris/a.csv", "abc", at(9, 0), size=42), PREFIX)
    assert version.wire() == {
        "uri": "s3://data/iris/a.csv",
        "etag": "abc",
        "lastModified": "2025-03-10T09:00:00Z",
        "size": 42,
    }


# -- cooldown and names -----------------------------------------------------------------------


def test_no_retrain_yet_leaves_no_cooldown() -> None:
    assert cooldown_left(None, "1h", at(12, 0).timestamp()) == 0


def test_cooldown_left_counts_from_the_last_retrain() -> None:
    assert cooldown_left("2025-03-10T12:00:00Z", "1h", at(12, 45).timestamp()) == 15 * 60


def test_cooldown_is_over_after_its_duration() -> None:
    assert cooldown_left("2025-03-10T12:00:00Z", "1h", at(13, 0, 1).timestamp()) == 0


def test_run_number_follows_the_retrains_in_status() -> None:
    assert (run_number(None), run_number(4)) == (1, 5)


def test_retrain_run_name_is_fixed_by_monitor_and_number() -> None:
    one = retrain_run("iris-drift", "ml", 3, TEMPLATE, "schedule", "slot a")
    two = retrain_run("iris-drift", "ml", 3, TEMPLATE, "new-data", "object b")
    assert one["metadata"]["name"] == two["metadata"]["name"] == "iris-drift-retrain-3"


def test_retrain_run_is_annotated_and_labelled_with_its_trigger() -> None:
    run = retrain_run("iris-drift", "ml", 1, TEMPLATE, "new-data", "x" * 2000)
    meta = run["metadata"]
    assert meta["annotations"]["modelops.dev/trigger"] == "new-data"
    assert meta["annotations"]["modelops.dev/trigger-detail"] == "x" * 1024
    assert meta["labels"]["modelops.dev/trigger"] == "new-data"


SUMMARY = {
    "artifact": {"uri": "s3://modelops/ml/iris/u/model.skops", "sha256": "c" * 64},
    "signature": {"task": "classification", "inputs": [{"name": "a", "datatype": "FP64"}]},
    "dataset": {"uri": "s3://data/iris/b.csv", "sha256": "e" * 64},
}


def _run(annotations: dict[str, str]) -> TrainingRun:
    doc = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    doc["metadata"] |= {"namespace": "ml", "uid": "u-1", "annotations": annotations}
    return TrainingRun.model_validate(doc)


def test_model_version_lineage_names_the_trigger_of_its_run() -> None:
    run = _run({"modelops.dev/trigger": "new-data", "modelops.dev/trigger-detail": "new b.csv"})
    lineage = model_version(run, SUMMARY, 1, "img")["spec"]["lineage"]
    assert (lineage["trigger"], lineage["triggerDetail"]) == ("new-data", "new b.csv")


def test_model_version_lineage_leaves_out_a_trigger_that_is_none_of_ours() -> None:
    run = _run({"modelops.dev/trigger": "cron", "modelops.dev/trigger-detail": "by hand"})
    lineage = model_version(run, SUMMARY, 1, "img")["spec"]["lineage"]
    assert "trigger" not in lineage and "triggerDetail" not in lineage


# -- validation: the models and the CRDs ------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> CrdValidator:
    return CrdValidator()


def monitor(**retrain: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1",
        "kind": "DriftMonitor",
        "metadata": {"name": "iris-drift", "namespace": "ml"},
        "spec": {"deployment": "iris", "retrain": {"template": copy.deepcopy(TEMPLATE), **retrain}},
    }


def test_prefix_template_with_on_new_data_is_valid(validator: CrdValidator) -> None:
    doc = monitor(onNewData=True, schedule="0 3 * * *")
    assert validator.errors(doc) == []
    assert DriftMonitorSpec.model_validate(doc["spec"]).retrain is not None


def test_prefix_template_without_on_new_data_is_refused_by_the_crd(
    validator: CrdValidator,
) -> None:
    errors = validator.errors(monitor())
    assert len(errors) == 1 and "that needs onNewData: true" in errors[0]


def test_prefix_template_without_on_new_data_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError, match="that needs onNewData: true"):
        DriftMonitorSpec.model_validate(monitor()["spec"])


def test_schedule_not_of_five_fields_is_refused_by_the_crd(validator: CrdValidator) -> None:
    errors = validator.errors(monitor(onNewData=True, schedule="every minute"))
    assert len(errors) == 1 and "schedule" in errors[0]


def test_training_run_with_a_prefix_is_refused_by_the_crd(validator: CrdValidator) -> None:
    run = {
        "apiVersion": "modelops.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "ml"},
        "spec": copy.deepcopy(TEMPLATE),
    }
    errors = validator.errors(run)
    assert len(errors) == 1 and "must name one object" in errors[0]


def test_training_run_with_a_prefix_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError, match="must name one object"):
        TrainingRunSpec.model_validate(TEMPLATE)
