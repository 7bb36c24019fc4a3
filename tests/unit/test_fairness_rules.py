"""A DriftMonitor's fairness rule decided from per-group counts (modelops.fairness_rules)."""

from __future__ import annotations

from typing import Any

import pytest

from modelops.api.driftmonitor import FairnessRule
from modelops.drift.quality import QualityCounts
from modelops.fairness_rules import evaluate

CLASSES = ["no", "yes"]


def rule(**kw: Any) -> FairnessRule:
    return FairnessRule.model_validate({"sensitiveFeature": "sex", "threshold": 0.1, **kw})


def group(selected: int, n: int, correct: int | None = None) -> QualityCounts:
    """``n`` labels, ``selected`` predicted ``yes``; the first ``correct`` predictions right."""
    counts = QualityCounts.empty("classification", CLASSES)
    pred = ["yes"] * selected + ["no"] * (n - selected)
    right = n if correct is None else correct
    true = pred[:right] + ["no" if p == "yes" else "yes" for p in pred[right:]]
    counts.add_classification(true, pred)
    return counts


def check(r: FairnessRule, groups: dict[str, QualityCounts] | None, labels: int = 0, **kw: Any):  # type: ignore[no-untyped-def]
    total = labels or sum(c.labels for c in (groups or {}).values())
    return evaluate(
        r,
        kw.get("task", "classification"),
        "credit-v2",
        kw.get("classes", CLASSES),
        None,
        groups,
        total,
        "10m",
    )


def test_a_gap_shown_above_the_threshold_violates() -> None:
    verdict = check(rule(), {"F": group(100, 500), "M": group(300, 500)})
    assert (verdict.status, verdict.reason) == ("True", "FairnessThresholdExceeded")
    assert verdict.fairness is not None and verdict.fairness.decision == "Violated"
    assert "selection_rate M 0.4 above F" in verdict.message


def test_balanced_groups_are_within_the_threshold() -> None:
    verdict = check(rule(), {"F": group(200, 500), "M": group(205, 500)})
    assert (verdict.status, verdict.reason) == ("False", "FairnessWithinThreshold")


def test_the_status_table_lists_each_group_with_its_rate_and_the_metric() -> None:
    verdict = check(rule(), {"F": group(100, 500), "M": group(300, 500)})
    assert verdict.fairness is not None
    table = {g.group: (g.labels, g.rates["selection_rate"]) for g in verdict.fairness.groups}
    assert table == {"F": (500, 0.2), "M": (500, 0.6)}
    assert verdict.fairness.value == pytest.approx(0.4)
    assert verdict.gauges == {"demographic_parity_difference": pytest.approx(0.4)}


def test_a_group_with_too_few_labels_leaves_it_unknown() -> None:
    verdict = check(rule(), {"F": group(200, 500), "M": group(205, 500), "X": group(1, 5)})
    assert (verdict.status, verdict.reason) == ("Unknown", "InsufficientLabels")
    assert "X (5)" in verdict.message


def test_a_violation_between_big_groups_fires_despite_a_small_group() -> None:
    verdict = check(rule(), {"F": group(100, 500), "M": group(300, 500), "X": group(1, 5)})
    assert verdict.status == "True"


def test_one_group_only_is_insufficient() -> None:
    verdict = check(rule(), {"F": group(100, 500)})
    assert (verdict.status, verdict.reason) == ("Unknown", "InsufficientLabels")


def test_labels_without_groups_of_the_feature_are_no_group_labels() -> None:
    verdict = check(rule(), None, labels=300)
    assert (verdict.status, verdict.reason) == ("Unknown", "NoGroupLabels")


def test_no_labels_at_all_are_insufficient() -> None:
    verdict = check(rule(), None)
    assert (verdict.status, verdict.reason) == ("Unknown", "InsufficientLabels")


def test_demographic_parity_of_a_multiclass_model_without_positive_label_is_invalid() -> None:
    verdict = check(rule(), {"F": group(1, 2)}, classes=["a", "b", "c"])
    assert (verdict.status, verdict.reason) == ("Unknown", "InvalidSpec")


def test_mae_difference_of_a_classifier_is_invalid() -> None:
    verdict = check(rule(metric="mae_difference"), {"F": group(1, 2)})
    assert (verdict.status, verdict.reason) == ("Unknown", "InvalidSpec")


def test_accuracy_difference_compares_group_accuracies() -> None:
    verdict = check(
        rule(metric="accuracy_difference"),
        {"F": group(200, 500, correct=450), "M": group(200, 500, correct=250)},
    )
    assert verdict.status == "True" and verdict.fairness is not None
    assert verdict.fairness.value == pytest.approx(0.4)


def test_a_rate_threshold_above_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        rule(threshold=2)
