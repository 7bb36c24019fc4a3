"""Live fairness from per-group counts (modelops.drift.fairness_live): the metrics equal
fairlearn's on the same rows, the tests equal statsmodels' statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fairlearn.metrics import (  # type: ignore[import-untyped]
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
)
from scipy.stats import norm
from sklearn.metrics import accuracy_score, mean_absolute_error
from statsmodels.stats import proportion  # type: ignore[import-untyped]
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW  # type: ignore[import-untyped]

from modelops.drift.fairness_live import (
    GroupRates,
    assess_fairness,
    group_rates,
    metric_value,
    rates_by_group,
    two_proportion_z,
    welch_z,
)
from modelops.drift.quality import QualityCounts

CLASSES = ["no", "yes"]


def rows(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True labels, predictions and a group per row (groups a, b, c with different rates)."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    bias = np.select([group == "a", group == "b"], [0.2, 0.5], 0.7)
    true = np.where(rng.random(n) < 0.4, "yes", "no")
    pred = np.where(rng.random(n) < bias, "yes", "no")
    return true, pred, group


def counts_by_group(
    true: np.ndarray, pred: np.ndarray, group: np.ndarray
) -> dict[str, QualityCounts]:
    found = {}
    for g in np.unique(group):
        counts = QualityCounts.empty("classification", CLASSES)
        counts.add_classification(list(true[group == g]), list(pred[group == g]))
        found[str(g)] = counts
    return found


def live(metric: str, true: np.ndarray, pred: np.ndarray, group: np.ndarray) -> float:
    return metric_value(rates_by_group(counts_by_group(true, pred, group), metric, "yes"), metric)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_demographic_parity_difference_equals_fairlearns(seed: int) -> None:
    true, pred, group = rows(seed)
    expected = demographic_parity_difference(true == "yes", pred == "yes", sensitive_features=group)
    assert live("demographic_parity_difference", true, pred, group) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equalized_odds_difference_equals_fairlearns(seed: int) -> None:
    true, pred, group = rows(seed)
    expected = equalized_odds_difference(true == "yes", pred == "yes", sensitive_features=group)
    assert live("equalized_odds_difference", true, pred, group) == pytest.approx(expected)


def test_equalized_odds_counts_a_group_without_positives_as_fairlearn_does() -> None:
    true, pred, group = rows(4)
    true = np.where(group == "c", "no", true)  # group c has no positives: its TPR is 0
    expected = equalized_odds_difference(true == "yes", pred == "yes", sensitive_features=group)
    assert live("equalized_odds_difference", true, pred, group) == pytest.approx(expected)


def test_accuracy_difference_equals_fairlearns_metric_frame() -> None:
    true, pred, group = rows(5)
    frame = MetricFrame(metrics=accuracy_score, y_true=true, y_pred=pred, sensitive_features=group)
    assert live("accuracy_difference", true, pred, group) == pytest.approx(frame.difference())


def test_mae_difference_equals_fairlearns_metric_frame() -> None:
    rng = np.random.default_rng(6)
    group = rng.choice(["a", "b"], size=400)
    true = rng.normal(10, 2, size=400)
    pred = true + rng.normal(0, np.where(group == "a", 1.0, 3.0))
    found = {}
    for g in ("a", "b"):
        counts = QualityCounts.empty("regression")
        counts.add_regression(true[group == g], pred[group == g])
        found[g] = counts
    frame = MetricFrame(
        metrics=mean_absolute_error, y_true=true, y_pred=pred, sensitive_features=group
    )
    value = metric_value(rates_by_group(found, "mae_difference", None), "mae_difference")
    assert value == pytest.approx(frame.difference())


def test_a_metric_needing_a_positive_class_refuses_none() -> None:
    with pytest.raises(ValueError, match="positive class"):
        group_rates(
            "a",
            QualityCounts.empty("classification", CLASSES),
            "demographic_parity_difference",
            None,
        )


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "value"), [(60, 100, 20, 100, 0.1), (30, 80, 25, 90, 0.05)]
)
def test_two_proportion_z_is_statsmodels_agresti_caffo(
    x1: int, n1: int, x2: int, n2: int, value: float
) -> None:
    result = proportion.test_proportions_2indep(
        x1, n1, x2, n2, value=value, method="agresti-caffo", compare="diff", alternative="larger"
    )
    assert two_proportion_z(x1, n1, x2, n2, value) == pytest.approx(result.statistic)


def test_welch_z_is_statsmodels_ztest_ind_unequal() -> None:
    rng = np.random.default_rng(8)
    hi, lo = np.abs(rng.normal(0, 3, 300)), np.abs(rng.normal(0, 1, 250))
    groups = []
    for name, errors in (("hi", hi), ("lo", lo)):
        counts = QualityCounts.empty("regression")
        counts.add_regression(np.zeros_like(errors), errors)
        groups.append(group_rates(name, counts, "mae_difference", None))
    z, _ = CompareMeans(DescrStatsW(hi), DescrStatsW(lo)).ztest_ind(
        usevar="unequal", value=0.5, alternative="larger"
    )
    assert welch_z(groups[0], groups[1], 0.5) == pytest.approx(z)


def proportion_group(name: str, selected: int, n: int) -> GroupRates:
    counts = QualityCounts.empty("classification", CLASSES)
    counts.add_classification(["no"] * n, ["yes"] * selected + ["no"] * (n - selected))
    return group_rates(name, counts, "demographic_parity_difference", "yes")


def test_a_large_gap_between_big_groups_is_shown_above_the_threshold() -> None:
    test = assess_fairness(
        [proportion_group("a", 300, 500), proportion_group("b", 100, 500)],
        "demographic_parity_difference",
        0.1,
    )
    assert test.violated and (test.tests[0].high, test.tests[0].low) == ("a", "b")


def test_a_gap_barely_above_the_threshold_is_not_shown() -> None:
    test = assess_fairness(
        [proportion_group("a", 62, 200), proportion_group("b", 40, 200)],  # 0.31 vs 0.20
        "demographic_parity_difference",
        0.1,
    )
    assert test.value == pytest.approx(0.11) and not test.violated


def test_the_critical_value_is_bonferroni_corrected_for_every_pair() -> None:
    groups = [proportion_group(g, 100, 400) for g in "abcd"]  # 6 pairs
    test = assess_fairness(groups, "demographic_parity_difference", 0.1, confidence=0.95)
    assert test.tests[0].critical_z == pytest.approx(norm.ppf(1 - 0.05 / 6))


def test_groups_below_min_labels_are_not_tested_but_reported() -> None:
    test = assess_fairness(
        [
            proportion_group("a", 300, 500),
            proportion_group("b", 100, 500),
            proportion_group("c", 1, 5),
        ],
        "demographic_parity_difference",
        0.1,
        min_labels=100,
    )
    assert test.tested == ["a", "b"] and test.short == [("c", 5)]


def test_with_fewer_than_two_tested_groups_nothing_is_tested() -> None:
    test = assess_fairness([proportion_group("a", 300, 500)], "demographic_parity_difference", 0.1)
    assert not test.violated and math.isnan(test.tests[0].z)
