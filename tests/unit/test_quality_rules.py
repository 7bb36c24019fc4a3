"""A DriftMonitor's quality rules, decided by the pure ``quality_rules.evaluate``: each decision
and reason, both metrics, both baselines, too few labels; and the spec's own checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from statsmodels.stats.proportion import proportions_ztest

from modelops.api.driftmonitor import QualityRule
from modelops.drift.quality import QualityCounts
from modelops.quality_rules import (
    Baseline,
    QualityVerdict,
    baseline_kind,
    evaluate,
    metric_for,
)
from support.crdschema import CrdValidator

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "driftmonitor-iris.yaml"


def rule(**fields: Any) -> QualityRule:
    return QualityRule.model_validate(fields)


def classifier(right: int, wrong: int) -> QualityCounts:
    """``right`` correct and ``wrong`` incorrect predictions of two classes."""
    counts = QualityCounts.empty("classification", ["a", "b"])
    counts.add_classification(["a"] * (right + wrong), ["a"] * right + ["b"] * wrong)
    return counts


def regressor(errors: list[float]) -> QualityCounts:
    counts = QualityCounts.empty("regression")
    counts.add_regression(np.zeros(len(errors)), np.asarray(errors))
    return counts


def check(
    spec: QualityRule,
    live: QualityCounts | None,
    baseline: Baseline | None = None,
    task: str = "classification",
    feedback: dict[str, int] | None = None,
) -> QualityVerdict:
    return evaluate(spec, task, "iris-v2", live, baseline, "10m", feedback)  # type: ignore[arg-type]


TRAINING = Baseline("training", "iris-v2", value=0.96)


# -- the threshold rule ---------------------------------------------------------------------


def test_accuracy_shown_below_the_threshold_underperforms() -> None:
    verdict = check(rule(threshold=0.9), classifier(280, 120))  # 0.70 over 400

    assert (verdict.status, verdict.reason) == ("True", "QualityBelowThreshold")
    assert verdict.quality is not None and verdict.quality.decision == "Underperforming"
    assert "accuracy 0.7 of iris-v2 over 400 labels: shown below the threshold 0.9" in (
        verdict.message
    )


def test_threshold_p_value_is_statsmodels_one_sided_score_test() -> None:
    verdict = check(rule(threshold=0.9), classifier(340, 60))  # 0.85 over 400
    assert verdict.quality is not None and verdict.quality.threshold is not None

    _, p = proportions_ztest(340, 400, value=0.9, alternative="smaller", prop_var=0.9)
    assert verdict.quality.threshold.p_value == pytest.approx(p, rel=1e-3)


def test_accuracy_above_the_threshold_is_healthy() -> None:
    verdict = check(rule(threshold=0.9), classifier(380, 20))  # 0.95

    assert (verdict.status, verdict.reason) == ("False", "QualityHealthy")
    assert verdict.quality is not None and verdict.quality.decision == "Healthy"
    assert verdict.quality.threshold is not None and not verdict.quality.threshold.worse


def test_accuracy_just_below_the_threshold_is_not_shown_below_it() -> None:
    verdict = check(rule(threshold=0.9), classifier(178, 22))  # 0.89 over 200: within noise

    assert verdict.status == "False"


def test_mae_shown_above_the_threshold_underperforms() -> None:
    errors = [2.0 + 0.1 * (i % 5) for i in range(200)]  # MAE 2.2
    verdict = check(rule(threshold=1.0), regressor(errors), task="regression")

    assert (verdict.status, verdict.reason) == ("True", "QualityBelowThreshold")
    assert "mae 2.2 of iris-v2 over 200 labels: shown above the threshold 1" in verdict.message
    assert verdict.quality is not None and verdict.quality.metric == "mae"


def test_mae_below_the_threshold_is_healthy() -> None:
    errors = [0.5 + 0.1 * (i % 5) for i in range(200)]  # MAE 0.7
    verdict = check(rule(threshold=1.0), regressor(errors), task="regression")

    assert (verdict.status, verdict.reason) == ("False", "QualityHealthy")


# -- too few labels -------------------------------------------------------------------------


def test_too_few_labels_decide_nothing_but_show_the_value() -> None:
    verdict = check(rule(threshold=0.9, minLabels=100), classifier(10, 40))  # 0.2 over 50

    assert (verdict.status, verdict.reason) == ("Unknown", "InsufficientLabels")
    assert "50 labels of iris-v2, need 100" in verdict.message
    assert verdict.quality is not None
    assert verdict.quality.decision == "InsufficientLabels"
    assert (verdict.quality.value, verdict.quality.labels) == (0.2, 50)


def test_no_labels_at_all_are_insufficient_with_no_value() -> None:
    verdict = check(rule(threshold=0.9), None)

    assert (verdict.status, verdict.reason) == ("Unknown", "InsufficientLabels")
    assert verdict.quality is not None
    assert (verdict.quality.value, verdict.quality.labels) == (None, 0)
    assert verdict.gauges == {}


# -- the maxDegradation rule against the training baseline ------------------------------------


def test_live_accuracy_far_below_held_out_is_worse_than_baseline() -> None:
    verdict = check(rule(maxDegradation=0.05), classifier(280, 120), TRAINING)

    assert (verdict.status, verdict.reason) == ("True", "WorseThanBaseline")
    assert "worse than the held-out 0.96 of iris-v2 by more than 0.05" in verdict.message
    test = verdict.quality.baseline if verdict.quality else None
    assert test is not None
    assert (test.kind, test.against, test.labels, test.margin) == ("training", 0.96, None, 0.05)
    assert test.difference == pytest.approx(0.70 - 0.96)


def test_live_accuracy_within_the_margin_of_held_out_is_healthy() -> None:
    verdict = check(rule(maxDegradation=0.05), classifier(376, 24), TRAINING)  # 0.94

    assert (verdict.status, verdict.reason) == ("False", "QualityHealthy")


def test_missing_held_out_metric_is_no_baseline() -> None:
    baseline = Baseline("training", "iris-v2", value=None)
    verdict = check(rule(maxDegradation=0.05), classifier(280, 120), baseline)

    assert (verdict.status, verdict.reason) == ("Unknown", "NoBaseline")
    assert "iris-v2 has no held-out accuracy in spec.metrics" in verdict.message
    assert verdict.quality is not None and verdict.quality.decision == "Unknown"


def test_mae_worse_than_held_out_by_more_than_the_margin() -> None:
    errors = [1.0 + 0.1 * (i % 5) for i in range(300)]  # MAE 1.2
    baseline = Baseline("training", "iris-v2", value=0.5)
    verdict = check(rule(maxDegradation=0.2), regressor(errors), baseline, task="regression")

    assert (verdict.status, verdict.reason) == ("True", "WorseThanBaseline")


# -- the maxDegradation rule against the stable version's live quality ----------------------


def test_canary_worse_than_stable_by_more_than_the_margin() -> None:
    stable = Baseline("stable", "iris-v1", counts=classifier(380, 20))  # 0.95
    verdict = check(rule(maxDegradation=0.05), classifier(300, 100), stable)  # 0.75

    assert (verdict.status, verdict.reason) == ("True", "WorseThanBaseline")
    assert "worse than stable iris-v1's 0.95 (400 labels) by more than 0.05" in verdict.message
    test = verdict.quality.baseline if verdict.quality else None
    assert test is not None and (test.kind, test.version, test.labels) == ("stable", "iris-v1", 400)


def test_canary_as_good_as_stable_is_healthy() -> None:
    stable = Baseline("stable", "iris-v1", counts=classifier(380, 20))
    verdict = check(rule(maxDegradation=0.05), classifier(378, 22), stable)

    assert (verdict.status, verdict.reason) == ("False", "QualityHealthy")


def test_stable_with_too_few_labels_is_insufficient() -> None:
    stable = Baseline("stable", "iris-v1", counts=classifier(40, 2))
    verdict = check(rule(maxDegradation=0.05), classifier(300, 100), stable)

    assert (verdict.status, verdict.reason) == ("Unknown", "InsufficientLabels")
    assert "42 labels of stable iris-v1, need 100" in verdict.message


def test_stable_with_no_labels_yet_is_waiting_for_labels() -> None:
    stable = Baseline("stable", "iris-v1", counts=None)
    verdict = check(rule(maxDegradation=0.05), classifier(300, 100), stable)

    assert (verdict.status, verdict.reason) == ("Unknown", "InsufficientLabels")
    assert "0 labels of stable iris-v1, need 100" in verdict.message


def test_a_baseline_that_cannot_be_had_says_why() -> None:
    missing = Baseline("stable", problem="Deployment iris serves no stable version yet")
    verdict = check(rule(maxDegradation=0.05), classifier(300, 100), missing)

    assert (verdict.status, verdict.reason) == ("Unknown", "NoBaseline")
    assert verdict.message == "Deployment iris serves no stable version yet"


def test_mae_of_canary_worse_than_stable() -> None:
    stable = Baseline(
        "stable", "iris-v1", counts=regressor([0.4 + 0.1 * (i % 3) for i in range(300)])
    )
    live = regressor([1.0 + 0.1 * (i % 3) for i in range(300)])
    verdict = check(rule(maxDegradation=0.1), live, stable, task="regression")

    assert (verdict.status, verdict.reason) == ("True", "WorseThanBaseline")


# -- both rules -------------------------------------------------------------------------------


def test_both_rules_firing_name_the_threshold_first_and_say_both() -> None:
    verdict = check(rule(threshold=0.9, maxDegradation=0.05), classifier(280, 120), TRAINING)

    assert (verdict.status, verdict.reason) == ("True", "QualityBelowThreshold")
    assert "below the threshold 0.9" in verdict.message
    assert "worse than the held-out 0.96" in verdict.message


def test_threshold_fires_even_without_a_baseline() -> None:
    missing = Baseline("stable", problem="no stable version")
    verdict = check(rule(threshold=0.9, maxDegradation=0.05), classifier(280, 120), missing)

    assert (verdict.status, verdict.reason) == ("True", "QualityBelowThreshold")


def test_passing_threshold_without_a_baseline_is_still_no_baseline() -> None:
    missing = Baseline("stable", problem="no stable version")
    verdict = check(rule(threshold=0.9, maxDegradation=0.05), classifier(390, 10), missing)

    assert (verdict.status, verdict.reason) == ("Unknown", "NoBaseline")


# -- specs the version cannot answer ----------------------------------------------------------


def test_accuracy_on_a_regressor_is_an_invalid_spec() -> None:
    verdict = check(rule(metric="accuracy", threshold=0.9), None, task="regression")

    assert (verdict.status, verdict.reason) == ("Unknown", "InvalidSpec")
    assert verdict.message == (
        "spec.quality.metric accuracy needs a classifier, but iris-v2 is a regressor (use mae)"
    )
    assert verdict.quality is None


def test_mae_on_a_classifier_is_an_invalid_spec() -> None:
    verdict = check(rule(metric="mae", threshold=1.0), classifier(90, 10))

    assert (verdict.status, verdict.reason) == ("Unknown", "InvalidSpec")
    assert "needs a regressor, but iris-v2 is a classifier (use accuracy)" in verdict.message


def test_default_metric_accuracy_with_a_threshold_above_one_is_an_invalid_spec() -> None:
    verdict = check(rule(threshold=2.5), classifier(90, 10))

    assert (verdict.status, verdict.reason) == ("Unknown", "InvalidSpec")
    assert "spec.quality.threshold 2.5 is above 1" in verdict.message


def test_counts_of_the_other_task_are_a_mismatch_not_a_crash() -> None:
    verdict = check(rule(threshold=0.9), regressor([1.0] * 200))

    assert (verdict.status, verdict.reason) == ("Unknown", "LabelsMismatch")


# -- what status shows ------------------------------------------------------------------------


def test_classifier_status_shows_accuracy_and_f1_and_the_feedback_counters() -> None:
    feedback = {"received": 500, "joined": 400, "unknown": 70, "expired": 30}
    verdict = check(rule(threshold=0.9), classifier(380, 20), feedback=feedback)

    quality = verdict.quality
    assert quality is not None
    assert (quality.accuracy, quality.mae, quality.window) == (0.95, None, "10m")
    assert quality.f1 is not None and 0 < quality.f1 <= 1
    assert quality.feedback is not None
    assert (quality.feedback.unknown, quality.feedback.expired) == (70, 30)
    assert set(verdict.gauges) == {"accuracy", "f1"}


def test_regressor_status_shows_mae_and_rmse() -> None:
    verdict = check(rule(threshold=5.0), regressor([3.0, -4.0] * 100), task="regression")

    quality = verdict.quality
    assert quality is not None
    assert (quality.mae, quality.rmse, quality.accuracy) == (3.5, pytest.approx(12.5**0.5), None)


def test_status_numbers_are_finite_or_null() -> None:
    # Identical errors: zero variance gives an infinite z, which JSON cannot carry.
    verdict = check(rule(threshold=1.0), regressor([2.0] * 200), task="regression")

    assert verdict.status == "True"
    assert verdict.quality is not None and verdict.quality.threshold is not None
    assert verdict.quality.threshold.z is None
    assert verdict.quality.threshold.p_value == 0.0


# -- defaults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "metric"), [("classification", "accuracy"), ("regression", "mae")]
)
def test_metric_defaults_by_task(task: Any, metric: str) -> None:
    assert metric_for(rule(threshold=0.5), task) == metric


@pytest.mark.parametrize(
    ("setting", "canary", "kind"),
    [
        ("auto", True, "stable"),
        ("auto", False, "training"),
        ("stable", False, "stable"),
        ("training", True, "training"),
    ],
)
def test_auto_baseline_is_stable_for_a_canary_else_training(
    setting: str, canary: bool, kind: str
) -> None:
    assert baseline_kind(rule(maxDegradation=0.1, baseline=setting), canary) == kind


# -- the spec ---------------------------------------------------------------------------------


def test_a_quality_rule_without_threshold_or_degradation_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs threshold or maxDegradation"):
        rule(metric="accuracy")


def test_an_accuracy_bound_above_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be at most 1"):
        rule(metric="accuracy", maxDegradation=1.5)


@pytest.mark.parametrize("confidence", [0.5, 1.0])
def test_confidence_must_be_strictly_between_a_half_and_one(confidence: float) -> None:
    with pytest.raises(ValidationError, match="confidence"):
        rule(threshold=0.9, confidence=confidence)


def monitor_with(quality: dict[str, Any]) -> dict[str, Any]:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["spec"]["quality"] = copy.deepcopy(quality)
    return doc


def test_crd_refuses_a_quality_rule_without_threshold_or_degradation() -> None:
    errors = CrdValidator().errors(monitor_with({"metric": "accuracy"}))

    assert errors == [".spec.quality: spec.quality needs threshold or maxDegradation (or both)"]


def test_crd_refuses_an_accuracy_threshold_above_one() -> None:
    errors = CrdValidator().errors(monitor_with({"metric": "accuracy", "threshold": 1.5}))

    assert errors == [
        ".spec.quality: spec.quality: an accuracy threshold or maxDegradation must be at most 1"
    ]


def test_crd_accepts_a_quality_rule_with_a_regressor_threshold_above_one() -> None:
    assert CrdValidator().errors(monitor_with({"metric": "mae", "threshold": 3.0})) == []
