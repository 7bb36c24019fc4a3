"""Live quality counts and tests, against scikit-learn and statsmodels on known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error
from statsmodels.stats import proportion as smp
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ztest

from modelops.drift.quality import ABS_ERROR_EDGES, Agreement, QualityCounts, compare

CLASSES = ["a", "b", "c"]


def classification(true: list[str], predicted: list[str]) -> QualityCounts:
    counts = QualityCounts.empty("classification", CLASSES)
    counts.add_classification(true, predicted)
    return counts


def with_accuracy(correct: int, n: int) -> QualityCounts:
    return classification(["a"] * n, ["a"] * correct + ["b"] * (n - correct))


def regression(true: np.ndarray, predicted: np.ndarray) -> QualityCounts:
    counts = QualityCounts.empty("regression")
    counts.add_regression(true, predicted)
    return counts


def test_classification_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    true = rng.choice(CLASSES, 500).tolist()
    predicted = [t if rng.random() < 0.7 else str(rng.choice(CLASSES)) for t in true]
    counts = classification(true, predicted)
    assert counts.labels == 500
    assert counts.value("accuracy") == pytest.approx(accuracy_score(true, predicted))
    assert counts.value("f1") == pytest.approx(f1_score(true, predicted, average="macro"))


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    true = rng.normal(10, 3, 400)
    predicted = true + rng.normal(0.5, 1, 400)
    counts = regression(true, predicted)
    assert counts.value("mae") == pytest.approx(mean_absolute_error(true, predicted))
    assert counts.value("rmse") == pytest.approx(math.sqrt(mean_squared_error(true, predicted)))
    assert counts.sum_error == pytest.approx(float(np.sum(predicted - true)))


def test_abs_error_quantile_is_within_one_bin_of_numpy() -> None:
    rng = np.random.default_rng(3)
    true = np.zeros(5000)
    predicted = rng.exponential(2.0, 5000)
    counts = regression(true, predicted)
    exact = float(np.quantile(predicted, 0.9))
    estimate = counts.abs_error_quantile(0.9)
    step = ABS_ERROR_EDGES[1] / ABS_ERROR_EDGES[0]
    assert exact <= estimate <= exact * step


def test_merge_of_windows_equals_counting_everything_at_once() -> None:
    left = classification(["a", "b"], ["a", "a"])
    right = QualityCounts.empty("classification", ["c", "a"])
    right.add_classification(["c", "a", "d"], ["c", "c", "d"])
    merged = left.merge(right)
    direct = classification(["a", "b", "c", "a", "d"], ["a", "a", "c", "c", "d"])
    assert merged.labels == 5
    assert merged.value("accuracy") == direct.value("accuracy") == pytest.approx(3 / 5)
    assert merged.value("f1") == pytest.approx(direct.value("f1"))


def test_counts_survive_json_round_trip() -> None:
    c = classification(["a", "b", "c"], ["a", "c", "c"])
    assert QualityCounts.from_dict(c.to_dict()).to_dict() == c.to_dict()
    r = regression(np.array([1.0, 2.0]), np.array([1.5, 1.0]))
    assert QualityCounts.from_dict(r.to_dict()).to_dict() == r.to_dict()


def test_malformed_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        QualityCounts.from_dict({"task": "classification", "classes": ["a"], "confusion": [[-1]]})
    with pytest.raises(ValueError):
        QualityCounts.from_dict({"task": "ranking"})
    with pytest.raises(ValueError, match="finite"):
        regression(np.array([1.0]), np.array([math.nan]))
    with pytest.raises(ValueError, match="labels for"):
        classification(["a"], ["a", "b"])


def test_accuracy_against_another_version_matches_statsmodels_agresti_caffo() -> None:
    candidate, baseline = with_accuracy(430, 500), with_accuracy(900, 1000)
    result = compare(candidate, baseline, "accuracy", margin=0.02, min_labels=100)
    stat, p = smp.test_proportions_2indep(
        430,
        500,
        900,
        1000,
        value=-0.02,
        method="agresti-caffo",
        compare="diff",
        alternative="smaller",
    )
    assert result.z == pytest.approx(stat)
    assert result.p_worse == pytest.approx(p)


def test_accuracy_against_a_number_matches_statsmodels_score_test() -> None:
    candidate = with_accuracy(170, 200)
    result = compare(candidate, 0.9, "accuracy", margin=0.01, min_labels=50)
    stat, p = smp.proportions_ztest(170, 200, value=0.89, alternative="smaller", prop_var=0.89)
    assert result.z == pytest.approx(stat)
    assert result.p_worse == pytest.approx(p)
    assert result.baseline_labels is None


def test_mae_against_another_version_matches_statsmodels_welch_z() -> None:
    rng = np.random.default_rng(4)
    t1, t2 = rng.normal(0, 1, 300), rng.normal(0, 1, 400)
    p1, p2 = t1 + rng.normal(0, 1.3, 300), t2 + rng.normal(0, 1.0, 400)
    result = compare(regression(t1, p1), regression(t2, p2), "mae", margin=0.05, min_labels=100)
    # The candidate is better when its MAE is lower: z of (baseline - candidate + margin).
    cm = CompareMeans(DescrStatsW(np.abs(p2 - t2)), DescrStatsW(np.abs(p1 - t1)))
    stat, p = cm.ztest_ind(usevar="unequal", value=-0.05, alternative="smaller")
    assert result.z == pytest.approx(stat)
    assert result.p_worse == pytest.approx(p)


def test_mae_against_a_number_matches_statsmodels_ztest() -> None:
    rng = np.random.default_rng(5)
    true = rng.normal(0, 1, 250)
    predicted = true + rng.normal(0, 1, 250)
    result = compare(regression(true, predicted), 0.7, "mae", min_labels=100)
    stat, p = ztest(np.abs(predicted - true), value=0.7, alternative="larger")
    # H0 "MAE <= 0.7" rejected when the candidate's MAE is larger: our z is the negation.
    assert result.z == pytest.approx(-stat)
    assert result.p_worse == pytest.approx(p)


def test_clearly_worse_candidate_is_shown_worse() -> None:
    result = compare(with_accuracy(700, 1000), with_accuracy(950, 1000), "accuracy", margin=0.02)
    assert result.worse and not result.not_worse
    assert result.difference == pytest.approx(-0.25)


def test_equal_candidate_is_shown_not_worse_within_the_margin() -> None:
    result = compare(with_accuracy(950, 1000), with_accuracy(950, 1000), "accuracy", margin=0.05)
    assert result.not_worse and not result.worse


def test_small_gap_on_few_labels_is_undecided() -> None:
    result = compare(with_accuracy(88, 100), with_accuracy(90, 100), "accuracy", margin=0.0)
    assert result.enough and not result.worse and not result.not_worse


def test_too_few_labels_decides_nothing() -> None:
    result = compare(with_accuracy(10, 40), with_accuracy(950, 1000), "accuracy", min_labels=50)
    assert not result.enough and not result.worse and not result.not_worse
    assert math.isnan(result.z)


def test_decision_threshold_is_the_one_sided_normal_quantile() -> None:
    result = compare(with_accuracy(940, 1000), 0.95, "accuracy", confidence=0.9)
    assert result.worse == (result.z < -norm.ppf(0.9))


def test_untestable_metric_or_wrong_task_is_refused() -> None:
    counts = with_accuracy(90, 100)
    with pytest.raises(ValueError, match="quality tests support"):
        compare(counts, 0.9, "f1")
    with pytest.raises(ValueError, match="regression"):
        compare(counts, 0.5, "mae")
    with pytest.raises(ValueError, match="confidence"):
        compare(counts, 0.9, "accuracy", confidence=1.0)


def test_mae_with_identical_errors_decides_by_the_sign_of_the_gap() -> None:
    counts = regression(np.zeros(200), np.full(200, 2.0))
    assert compare(counts, 1.0, "mae").worse
    assert compare(counts, 3.0, "mae").not_worse


def test_agreement_counts_and_merges() -> None:
    a = Agreement()
    a.add(["x", "y", "x"], ["x", "x", "x"], "classification")
    b = Agreement()
    b.add([1.0, 2.0], [1.5, 2.0], "regression")
    merged = a.merge(b)
    assert (a.compared, a.agreed) == (3, 2)
    assert a.rate == pytest.approx(2 / 3)
    assert merged.compared == 5 and merged.sum_abs_difference == pytest.approx(0.5)
    assert Agreement.from_dict(merged.to_dict()) == merged
