"""Fairness on the held-out rows: our numbers against fairlearn's on the same data, per-group
values against hand-computed ones, the API's rules (CEL and model), and the trainer's path
(the sensitive column read, kept out of the features, missing -> SensitiveFeatureMissing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from pydantic import ValidationError

from modelops.api.modelversion import MAX_GROUPS, ModelVersionSpec
from modelops.api.trainingrun import TrainingRun, TrainingRunSpec
from modelops.resources.modelversion import model_version
from modelops.rollout import Facts, State, Version, plan
from modelops.storage import Location
from modelops.training import trainer
from modelops.training.fairness import MISSING_GROUP, assess
from modelops.training.metrics import FAIRNESS_SCALARS
from modelops.training.trainer import TrainingError, prepare, train
from support.crdschema import CrdValidator
from unit.test_trainer import MemoryStore, strict

CLASSIFIER_METRICS = [
    "demographic_parity_difference",
    "equalized_odds_difference",
    "accuracy",
    "recall",
]


def biased(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Labels, predictions favouring group ``a`` of ``g``, and two sensitive columns."""
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    h = rng.choice(["x", "y"], size=n)
    y = rng.integers(0, 2, size=n)
    flip = rng.random(n) < np.where(g == "a", 0.1, 0.35)
    pred = np.where(flip, 1 - y, y)
    pred = np.where((g == "a") & (rng.random(n) < 0.3), 1, pred)
    return y, pred, pd.DataFrame({"g": g, "h": h})


# -- the numbers ------------------------------------------------------------------------------


def test_demographic_parity_difference_is_fairlearns() -> None:
    y, pred, groups = biased()
    ours = assess(y, pred, groups[["g"]], CLASSIFIER_METRICS, classes=["0", "1"])
    theirs = demographic_parity_difference(y, pred, sensitive_features=groups["g"])
    assert ours.metrics["demographic_parity_difference"] == pytest.approx(theirs, abs=1e-6)


def test_equalized_odds_difference_is_fairlearns() -> None:
    y, pred, groups = biased()
    ours = assess(y, pred, groups[["g"]], CLASSIFIER_METRICS, classes=["0", "1"])
    theirs = equalized_odds_difference(y, pred, sensitive_features=groups["g"])
    assert ours.metrics["equalized_odds_difference"] == pytest.approx(theirs, abs=1e-6)


def test_per_group_values_are_the_hand_computed_ones() -> None:
    # group a: y 1 1 0 0, pred 1 0 0 1 -> selection 2/4, accuracy 2/4, TPR 1/2, FPR 1/2
    # group b: y 1 0 0,   pred 1 1 0   -> selection 2/3, accuracy 2/3, TPR 1,   FPR 1/2
    y = [1, 1, 0, 0, 1, 0, 0]
    pred = [1, 0, 0, 1, 1, 1, 0]
    groups = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 3})
    record = assess(y, pred, groups, CLASSIFIER_METRICS, classes=["0", "1"]).record
    rows = {r["value"]: r for r in record["features"][0]["groups"]}
    assert rows["a"] == {
        "value": "a",
        "count": 4,
        "metrics": {"selection_rate": 0.5, "accuracy": 0.5, "true_positive_rate": 0.5,
                    "false_positive_rate": 0.5, "recall": 0.5},
    }  # fmt: skip
    assert rows["b"]["count"] == 3
    assert rows["b"]["metrics"] == {
        "selection_rate": round(2 / 3, 6), "accuracy": round(2 / 3, 6),
        "true_positive_rate": 1.0, "false_positive_rate": 0.5, "recall": 1.0,
    }  # fmt: skip
    scalars = record["features"][0]["metrics"]
    assert scalars["demographic_parity_difference"] == round(2 / 3 - 1 / 2, 6)
    assert scalars["accuracy_difference"] == round(2 / 3 - 1 / 2, 6)
    assert scalars["accuracy_group_min"] == 0.5
    assert scalars["recall_group_min"] == 0.5


def test_per_group_mae_of_a_regressor_is_hand_computed() -> None:
    y = [1.0, 2.0, 3.0, 10.0, 20.0]
    pred = [1.5, 2.0, 2.0, 12.0, 20.0]
    groups = pd.DataFrame({"g": ["a", "a", "a", "b", "b"]})
    result = assess(y, pred, groups, ["mae"], classes=None)
    rows = {r["value"]: r["metrics"]["mae"] for r in result.record["features"][0]["groups"]}
    assert rows == {"a": 0.5, "b": 1.0}  # (0.5 + 0 + 1) / 3 and (2 + 0) / 2
    assert result.metrics == {"mae_difference": 0.5, "mae_group_max": 1.0}


def test_the_overall_value_is_the_worst_over_the_sensitive_columns() -> None:
    y, pred, groups = biased()
    both = assess(y, pred, groups, CLASSIFIER_METRICS, classes=["0", "1"])
    per = {f["name"]: f["metrics"] for f in both.record["features"]}  # each column on its own
    assert both.metrics["demographic_parity_difference"] == max(
        per["g"]["demographic_parity_difference"], per["h"]["demographic_parity_difference"]
    )
    assert both.metrics["accuracy_group_min"] == min(
        per["g"]["accuracy_group_min"], per["h"]["accuracy_group_min"]
    )


def test_every_scalar_is_one_the_operator_knows() -> None:
    y, pred, groups = biased()
    scalars = set(assess(y, pred, groups, CLASSIFIER_METRICS, classes=["0", "1"]).metrics)
    scalars |= set(assess([1.0, 2.0], [1.0, 3.0], groups.head(2), ["mae"], classes=None).metrics)
    assert scalars == FAIRNESS_SCALARS


def test_multiclass_without_a_positive_label_leaves_the_differences_unmeasured() -> None:
    y = ["setosa", "versicolor", "virginica"] * 4
    pred = ["setosa", "virginica", "virginica"] * 4
    groups = pd.DataFrame({"g": ["a", "b"] * 6})
    result = assess(y, pred, groups, CLASSIFIER_METRICS, classes=sorted(set(y)))
    assert set(result.unmeasured) == {"demographic_parity_difference", "equalized_odds_difference"}
    assert "set fairness.positiveLabel" in result.unmeasured["demographic_parity_difference"]
    assert "accuracy_difference" in result.metrics


def test_multiclass_with_a_positive_label_is_one_vs_rest() -> None:
    rng = np.random.default_rng(3)
    y = rng.choice(["setosa", "versicolor", "virginica"], size=90)
    pred = np.where(rng.random(90) < 0.3, "virginica", y)
    groups = pd.DataFrame({"g": rng.choice(["a", "b"], size=90)})
    result = assess(y, pred, groups, CLASSIFIER_METRICS, classes=sorted(set(y)),
                    positive_label="virginica")  # fmt: skip
    theirs = demographic_parity_difference(
        (y == "virginica").astype(int), (pred == "virginica").astype(int),
        sensitive_features=groups["g"],
    )  # fmt: skip
    assert result.metrics["demographic_parity_difference"] == pytest.approx(theirs, abs=1e-6)
    assert result.record["positiveLabel"] == "virginica"


def test_a_positive_label_that_is_no_class_is_refused() -> None:
    with pytest.raises(ValueError, match="'yes' is not a class"):
        assess([0, 1], [0, 1], pd.DataFrame({"g": ["a", "b"]}), ["accuracy"],
               classes=["0", "1"], positive_label="yes")  # fmt: skip


def test_groups_past_the_cap_are_counted_not_listed() -> None:
    n_groups = MAX_GROUPS + 10
    values = [f"g{i:03d}" for i in range(n_groups) for _ in range(1 + (i < 5))]
    y = [i % 2 for i in range(len(values))]
    result = assess(y, y, pd.DataFrame({"g": values}), ["accuracy"], classes=["0", "1"])
    feature = result.record["features"][0]
    assert len(feature["groups"]) == MAX_GROUPS
    assert feature["omittedGroups"] == 10
    assert [r["value"] for r in feature["groups"][:5]] == ["g000", "g001", "g002", "g003", "g004"]


def test_a_missing_value_is_a_group_of_its_own() -> None:
    groups = pd.DataFrame({"g": ["a", None, "a", None]})
    record = assess([1, 0, 1, 0], [1, 1, 1, 0], groups, ["accuracy"], classes=["0", "1"]).record
    rows = {r["value"]: r["metrics"]["accuracy"] for r in record["features"][0]["groups"]}
    assert rows == {"a": 1.0, MISSING_GROUP: 0.5}


# -- the API ----------------------------------------------------------------------------------


def run_doc(**fairness: object) -> dict[str, object]:
    return {
        "apiVersion": "modelops.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "fair", "namespace": "ml"},
        "spec": {
            "model": "m",
            "dataset": {"uri": "s3://b/d.csv", "target": "y"},
            "estimator": {"name": "LogisticRegression"},
            "fairness": fairness,
        },
    }


@pytest.fixture(scope="module")
def validator() -> CrdValidator:
    return CrdValidator()


def test_a_classifier_asked_for_mae_is_refused_at_admission(validator: CrdValidator) -> None:
    doc = run_doc(sensitiveFeatures=["g"], metrics=["mae"])
    assert any("must fit the estimator's task" in e for e in validator.errors(doc))


def test_a_classifier_asked_for_mae_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError, match="must fit the estimator's task"):
        TrainingRun.model_validate(run_doc(sensitiveFeatures=["g"], metrics=["mae"]))


def test_the_target_cannot_be_a_sensitive_feature(validator: CrdValidator) -> None:
    doc = run_doc(sensitiveFeatures=["y"])
    assert any("must not name the target" in e for e in validator.errors(doc))
    with pytest.raises(ValidationError, match="must not name the target"):
        TrainingRun.model_validate(doc)


def test_more_than_five_sensitive_features_are_refused(validator: CrdValidator) -> None:
    doc = run_doc(sensitiveFeatures=[f"c{i}" for i in range(6)])
    assert validator.errors(doc) != []


def test_a_valid_fairness_spec_is_accepted_with_an_integer_positive_label(
    validator: CrdValidator,
) -> None:
    doc = run_doc(sensitiveFeatures=["sex", "race"], positiveLabel=1)
    assert validator.errors(doc) == []
    fairness = TrainingRun.model_validate(doc).spec.fairness
    assert fairness is not None and fairness.positive_label == "1"


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [("LogisticRegression", tuple(CLASSIFIER_METRICS)), ("Ridge", ("mae",))],
)
def test_default_metrics_follow_the_task(estimator: str, expected: tuple[str, ...]) -> None:
    doc = run_doc(sensitiveFeatures=["g"])
    doc["spec"]["estimator"] = {"name": estimator}  # type: ignore[index]
    fairness = TrainingRun.model_validate(doc).spec.fairness
    assert fairness is not None and fairness.metrics_for(estimator) == expected


# -- the trainer ------------------------------------------------------------------------------


def dataset(n: int = 400) -> pd.DataFrame:
    """``x`` shifted for group ``a``, so a model on ``x`` selects ``a`` more often."""
    rng = np.random.default_rng(0)
    group = rng.choice(["a", "b"], size=n)
    x = rng.normal(size=n) + (group == "a") * 1.5
    y = (x + rng.normal(scale=0.5, size=n) > 0.75).astype(int)
    return pd.DataFrame({"x": x, "z": rng.normal(size=n), "group": group, "y": y})


def fair_spec(**fairness: object) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {
            "model": "m",
            "dataset": {"uri": "s3://b/d.csv", "target": "y"},
            "estimator": {"name": "LogisticRegression"},
            "fairness": {"sensitiveFeatures": ["group"], **fairness},
        }
    )


def trained(spec: TrainingRunSpec) -> tuple[MemoryStore, dict[str, object]]:
    store = MemoryStore()
    store.put(Location("b", "d.csv"), dataset().to_csv(index=False).encode())
    return store, train(spec, store, Location("b", "out"))


def test_a_sensitive_column_is_read_but_not_a_feature_by_default() -> None:
    prepared = prepare(dataset(), fair_spec())
    assert prepared.features == ["x", "z"]
    assert prepared.sensitive is not None and list(prepared.sensitive.columns) == ["group"]


def test_a_sensitive_column_named_as_a_feature_is_both() -> None:
    spec = fair_spec()
    spec.dataset.features = ["x", "group"]
    prepared = prepare(dataset(), spec)
    assert prepared.features == ["x", "group"] and prepared.categorical == ["group"]


def test_a_missing_sensitive_column_fails_with_sensitive_feature_missing() -> None:
    spec = fair_spec()
    spec.fairness.sensitive_features = ["gender"]  # type: ignore[union-attr]
    with pytest.raises(TrainingError) as err:
        prepare(dataset(), spec)
    assert err.value.reason == "SensitiveFeatureMissing"
    assert "'gender'" in str(err.value) and "group" in str(err.value)


def test_the_missing_column_reason_reaches_the_summary_and_termination_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = MemoryStore()
    store.put(Location("b", "d.csv"), dataset().to_csv(index=False).encode())
    monkeypatch.setattr(trainer.ArtifactStore, "from_env", classmethod(lambda cls: store))
    spec = fair_spec(sensitiveFeatures=["gender"])
    log = tmp_path / "termination-log"
    assert trainer.main(spec.model_dump_json(by_alias=True), "s3://b/out", log) == 2
    stored = strict(store.objects["s3://b/out/summary.json"])
    assert stored["reason"] == "SensitiveFeatureMissing"
    assert json.loads(log.read_text())["reason"] == "SensitiveFeatureMissing"


def test_the_trainer_adds_the_scalars_to_the_metrics_and_the_table_to_the_summary() -> None:
    _, summary = trained(fair_spec())
    metrics = summary["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["demographic_parity_difference"] > 0.3  # x is shifted for group a
    fairness = summary["fairness"]
    assert isinstance(fairness, dict)
    assert (
        fairness["metrics"]["demographic_parity_difference"]
        == (metrics["demographic_parity_difference"])
    )
    assert {g["value"] for g in fairness["features"][0]["groups"]} == {"a", "b"}
    assert sum(g["count"] for g in fairness["features"][0]["groups"]) == summary["rows"]["test"]  # type: ignore[index]


def test_the_model_version_records_the_fairness_table_and_gates_read_it() -> None:
    _, summary = trained(fair_spec())
    run = TrainingRun.model_validate(
        {"metadata": {"name": "fair", "namespace": "ml", "uid": "u-1"}, "spec": fair_spec().wire()}
    )
    mv = model_version(run, summary, 1, "runtime:1")  # type: ignore[arg-type]
    spec = ModelVersionSpec.model_validate(mv["spec"])
    assert spec.fairness is not None
    assert spec.fairness.features[0].name == "group"
    assert (
        spec.metrics["demographic_parity_difference"]
        == (spec.fairness.metrics["demographic_parity_difference"])
    )
    assert (spec.lineage.target, spec.lineage.test_size) == ("y", 0.2)


def test_a_changed_dataset_digest_fails_with_dataset_changed() -> None:
    spec = fair_spec()
    spec.dataset.sha256 = "0" * 64
    with pytest.raises(TrainingError) as err:
        trained(spec)
    assert err.value.reason == "DatasetChanged"
    assert "0" * 64 in str(err.value)


# -- the Deployment's `latest` gates ----------------------------------------------------------


def test_a_deployment_gate_on_demographic_parity_skips_the_biased_version() -> None:
    from modelops.api.deployment import DeploymentSpec

    fair = Version("m-v1", 1, True, {"accuracy": 0.9, "demographic_parity_difference": 0.05})
    unfair = Version("m-v2", 2, True, {"accuracy": 0.95, "demographic_parity_difference": 0.4})
    spec = DeploymentSpec.model_validate(
        {"model": "m", "gates": {"demographic_parity_difference": 0.1}}
    )
    result = plan(spec, State(), Facts(versions=[fair, unfair]), 0)
    assert result.state.stable == "m-v1"
