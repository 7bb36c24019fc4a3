"""Gates fail closed on metrics that cannot be measured; no NaN or Infinity reaches an API
object; version numbers never collide with an existing ModelVersion; a failed Job is
reported with the trainer's reason, else the Job controller's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops.api.trainingrun import TrainingRun
from modelops.controllers import trainingrun
from modelops.controllers.cluster import ApiError
from modelops.controllers.main import runtime
from modelops.resources.modelversion import model_version, next_number, taken_numbers
from modelops.resources.training import (
    evaluation,
    failure,
    gate_failures,
    job_failure,
    metrics_summary,
)
from modelops.storage import sha256_hex
from modelops.training.metrics import is_finite, split_finite
from unit.test_trainer import MemoryStore

NAN = float("nan")
INF = float("inf")
ROOT = Path(__file__).resolve().parents[2]


def iris_run() -> TrainingRun:
    doc = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    doc["metadata"] |= {"namespace": "ml", "uid": "0b8f3c52-6c1e-4a57-9d0e-2f3c1d2e4a11"}
    return TrainingRun.model_validate(doc)


def strict_json(data: Any) -> str:
    """What the API server accepts: JSON without NaN or Infinity."""
    return json.dumps(data, allow_nan=False)


# -- gates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_a_gate_on_a_metric_that_is_not_finite_fails_closed(value: float) -> None:
    (message,) = gate_failures({"r2": value}, {"r2": 0.9})
    assert message.startswith("r2 could not be measured")


@pytest.mark.parametrize("value", [NAN, INF])
def test_an_upper_bound_gate_on_a_metric_that_is_not_finite_fails_closed(value: float) -> None:
    assert gate_failures({"mae": value}, {"mae": 2.0}) != []


def test_a_gate_on_an_unmeasured_metric_gives_the_reason() -> None:
    failures = gate_failures(
        {"mae": 0.1}, {"r2": 0.9, "mae": 1.0}, {"r2": "r2 could not be measured (1 test row)"}
    )
    assert failures == ["r2 could not be measured (1 test row)"]


def test_a_metric_without_a_gate_that_is_not_measured_blocks_nothing() -> None:
    assert gate_failures({"mae": 0.1}, {"mae": 1.0}, {"r2": "r2 could not be measured"}) == []


def test_finite_metrics_are_still_compared_with_their_bounds() -> None:
    assert gate_failures({"r2": 0.95, "mae": 0.5}, {"r2": 0.9, "mae": 1.0}) == []
    assert gate_failures({"r2": 0.5}, {"r2": 0.9}) == ["r2 0.5 < 0.9"]


# -- fairness names: differences and the worst group's error are bounded from above ---------


@pytest.mark.parametrize(
    "name",
    ["demographic_parity_difference", "equalized_odds_difference", "accuracy_difference",
     "recall_difference", "mae_difference", "mae_group_max"],
)  # fmt: skip
def test_a_fairness_difference_gate_is_an_upper_bound(name: str) -> None:
    assert gate_failures({name: 0.05}, {name: 0.1}) == []
    assert gate_failures({name: 0.31}, {name: 0.1}) == [f"{name} 0.31 > 0.1"]


@pytest.mark.parametrize("name", ["accuracy_group_min", "recall_group_min"])
def test_a_worst_group_score_gate_is_a_lower_bound(name: str) -> None:
    assert gate_failures({name: 0.9}, {name: 0.8}) == []
    assert gate_failures({name: 0.7}, {name: 0.8}) == [f"{name} 0.7 < 0.8"]


def test_a_fairness_gate_on_an_unmeasured_difference_fails_closed() -> None:
    why = "demographic_parity_difference could not be measured (more than two classes: ...)"
    failures = gate_failures(
        {"accuracy": 0.9},
        {"demographic_parity_difference": 0.1},
        {"demographic_parity_difference": why},
    )
    assert failures == [why]


def test_metrics_summary_leaves_the_fairness_scalars_to_status_metrics() -> None:
    line = metrics_summary({"accuracy": 0.9, "demographic_parity_difference": 0.2,
                            "accuracy_group_min": 0.8})  # fmt: skip
    assert line == "accuracy=0.900"


# -- sanitizing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "finite"),
    [(0.5, True), (1, True), (NAN, False), (INF, False), (-INF, False), (True, False), ("1", False),
     (None, False)],
)  # fmt: skip
def test_only_real_finite_numbers_count_as_measured(value: object, finite: bool) -> None:
    assert is_finite(value) is finite


def test_split_finite_keeps_numbers_and_explains_the_rest() -> None:
    metrics, unmeasured = split_finite({"r2": NAN, "mae": 0.25}, test_rows=1)
    assert metrics == {"mae": 0.25}
    assert unmeasured == {"r2": "r2 could not be measured (1 test row)"}
    _, with_rows = split_finite({"mse": INF}, test_rows=30)
    assert with_rows == {"mse": "mse could not be measured (it came out inf)"}


def test_a_summary_with_nan_from_an_older_trainer_is_reported_without_it() -> None:
    """``json.loads`` accepts the NaN an older trainer wrote; the report does not carry it."""
    summary = json.loads('{"ok": true, "metrics": {"r2": NaN, "mae": 0.3}, "rows": {"test": 1}}')
    result = evaluation(summary)
    assert result.metrics == {"mae": 0.3}
    assert result.unmeasured == {"r2": "r2 could not be measured (1 test row)"}
    assert result.summary == "mae=0.300; r2 could not be measured (1 test row)"
    strict_json({"metrics": result.metrics, "message": result.summary})


def test_a_summary_of_the_current_trainer_keeps_its_reasons() -> None:
    summary = {
        "metrics": {"mae": 0.3},
        "unmeasured": {"r2": "r2 could not be measured (1 test row)"},
        "rows": {"test": 1},
    }
    result = evaluation(summary)
    assert (result.metrics, result.unmeasured) == (
        {"mae": 0.3},
        {"r2": "r2 could not be measured (1 test row)"},
    )
    assert gate_failures(result.metrics, {"r2": 0.9}, result.unmeasured) == [
        "r2 could not be measured (1 test row)"
    ]


def test_a_summary_with_no_finite_metric_says_so() -> None:
    assert evaluation({"metrics": {"r2": INF}}).summary.startswith("no metric measured; r2 ")


def test_metrics_summary_leaves_out_what_is_not_finite() -> None:
    assert metrics_summary({"r2": NAN, "mae": 0.1234, "mse": INF}) == "mae=0.123"


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "artifact": {"uri": "s3://modelops/ml/iris/u/model.skops", "sha256": "c" * 64},
        "signature": {"task": "regression", "inputs": [{"name": "a", "datatype": "FP64"}]},
        "metrics": metrics,
        "dataset": {"uri": "s3://modelops/datasets/tiny.csv"},
    }


def test_a_model_version_carries_finite_metrics_only() -> None:
    mv = model_version(iris_run(), _summary({"r2": NAN, "mae": 0.3, "mse": -INF}), 1, "img:1")
    assert mv["spec"]["metrics"] == {"mae": 0.3}
    strict_json(mv)


# -- numbering -----------------------------------------------------------------------------


def _mv(name: str, model: str | None = None, version: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if model is not None:
        spec["model"] = model
    if version is not None:
        spec["version"] = version
    return {"metadata": {"name": name}, "spec": spec}


def test_a_hand_made_version_without_labels_takes_its_number() -> None:
    assert next_number([_mv("iris-v2", "iris", 2)], "iris") == 3


def test_the_name_takes_the_number_whatever_the_spec_says() -> None:
    assert next_number([_mv("iris-v7", "other", 1)], "iris") == 8


def test_the_spec_takes_the_number_whatever_the_name_says() -> None:
    assert next_number([_mv("iris-keep", "iris", 4)], "iris") == 5


def test_versions_of_other_models_take_no_number() -> None:
    existing = [_mv("iris-v2-old", "iris-v2", 9), _mv("irises-v5", "irises", 5), _mv("iris-vx")]
    assert taken_numbers(existing, "iris") == set()
    assert next_number(existing, "iris") == 1


def test_numbers_only_grow_past_gaps() -> None:
    assert next_number([_mv("iris-v1", "iris", 1), _mv("iris-v4", "iris", 4)], "iris") == 5


# -- registering -------------------------------------------------------------------------


class FakeCluster:
    """``list`` and ``create_new`` of controllers/cluster.py over a dict of ModelVersions."""

    def __init__(self, existing: list[dict[str, Any]], *, refuse: int | None = None) -> None:
        self.objects = {mv["metadata"]["name"]: mv for mv in existing}
        self.hidden: set[str] = set()  # names taken that a list does not show
        self.refuse = refuse

    async def list(self, *_: Any) -> list[dict[str, Any]]:
        return [mv for name, mv in self.objects.items() if name not in self.hidden]

    async def create_new(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if self.refuse:
            raise ApiError(self.refuse, "ModelVersion.modelops.dev is invalid")
        name = obj["metadata"]["name"]
        if name in self.objects:
            return None
        self.objects[name] = obj
        return obj


def _job() -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"image": "img:1"}]}}}}


async def _register(
    monkeypatch: pytest.MonkeyPatch, fake: FakeCluster, store: MemoryStore | None = None
) -> str:
    monkeypatch.setattr(runtime, "cluster", fake, raising=False)
    monkeypatch.setattr(runtime, "store", store or MemoryStore(), raising=False)
    return await trainingrun._register(iris_run(), _summary({"accuracy": 0.9}), _job())


async def test_registering_writes_the_card_beside_the_model_with_its_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, fake = MemoryStore(), FakeCluster([])
    name = await _register(monkeypatch, fake, store)
    card = fake.objects[name]["spec"]["card"]
    for key, file in (("json", "card.json"), ("html", "card.html")):
        assert card[key]["uri"] == f"s3://modelops/ml/iris/u/{file}"
        assert sha256_hex(store.objects[card[key]["uri"]]) == card[key]["sha256"]
    written = json.loads(store.objects[card["json"]["uri"]])
    assert written["modelVersion"]["name"] == name == "iris-v1"
    assert written["lineage"]["trainingRun"] == "iris-logreg"


async def test_registering_after_a_hand_made_version_takes_the_next_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeCluster([_mv("iris-v2", "iris", 2)])
    assert await _register(monkeypatch, fake) == "iris-v3"
    assert fake.objects["iris-v3"]["spec"]["version"] == 3


async def test_registering_again_finds_the_version_this_run_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = model_version(iris_run(), _summary({"accuracy": 0.9}), 1, "img:1")
    fake = FakeCluster([mine])
    assert await _register(monkeypatch, fake) == "iris-v1"
    assert list(fake.objects) == ["iris-v1"]


async def test_no_free_number_after_every_attempt_is_a_registration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeCluster([_mv(f"iris-v{n}", "iris", n) for n in range(1, 40)])
    fake.hidden = set(fake.objects)  # every name is taken, and no list shows it
    with pytest.raises(trainingrun.RegistrationError) as error:
        await _register(monkeypatch, fake)
    assert error.value.reason == "NoFreeVersionNumber"
    assert "iris-v1" in str(error.value)


async def test_a_version_the_server_refuses_is_a_registration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(trainingrun.RegistrationError) as error:
        await _register(monkeypatch, FakeCluster([], refuse=422))
    assert error.value.reason == "RegistrationRefused"


async def test_a_server_error_while_registering_is_left_to_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ApiError):
        await _register(monkeypatch, FakeCluster([], refuse=503))


# -- failed Jobs ---------------------------------------------------------------------------


def _failed_job(reason: str, message: str) -> dict[str, Any]:
    conditions = [
        {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
        {"type": "Failed", "status": "True", "reason": reason, "message": message},
    ]
    return {"status": {"conditions": conditions, "failed": 1}}


def test_the_trainers_reason_and_message_win() -> None:
    summary = {"ok": False, "reason": "MissingTarget", "message": "target column 'colour' ..."}
    limit = "Job has reached the specified backoff limit"
    assert failure("BackoffLimitExceeded", limit, summary) == (
        "MissingTarget",
        "target column 'colour' ...",
    )


def test_a_job_killed_by_its_deadline_is_reported_with_the_job_controllers_reason() -> None:
    job = _failed_job("DeadlineExceeded", "Job was active longer than specified deadline")
    assert failure("DeadlineExceeded", job_failure(job), {}) == (
        "DeadlineExceeded",
        "training Job failed (DeadlineExceeded): Job was active longer than specified deadline",
    )


def test_a_successful_summary_of_a_failed_job_does_not_hide_the_jobs_reason() -> None:
    """The trainer finished, then the deadline struck before the pod exited."""
    reason, message = failure("DeadlineExceeded", "", {"ok": True, "metrics": {"r2": 1.0}})
    assert (reason, message) == ("DeadlineExceeded", "training Job failed (DeadlineExceeded)")


def test_job_failure_reads_only_a_true_failed_condition() -> None:
    assert job_failure({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}) == ""
    assert job_failure({}) == ""
