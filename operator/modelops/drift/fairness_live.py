"""Live fairness from joined labels: per-group rates, fairlearn's differences, and a test.

Serving pods count joined labels per sensitive group (one :class:`QualityCounts` per group of
each sensitive feature, see :mod:`modelops.serving.feedback`); the operator merges them and
computes here the metric a DriftMonitor's ``spec.fairness`` names, with fairlearn's
definitions (https://fairlearn.org, ``fairlearn.metrics``, version 0.15), from counts only:

- ``demographic_parity_difference``: the largest minus the smallest group selection rate,
  ``P(ŷ = positive | group)`` (``demographic_parity_difference``);
- ``equalized_odds_difference``: the larger of the true-positive-rate and the false-positive-
  rate differences between groups (``equalized_odds_difference(agg="worst_case")``); a group
  without positives (negatives) has a true (false) positive rate of 0, as fairlearn's
  ``true_positive_rate`` / ``false_positive_rate`` give it;
- ``accuracy_difference``: the largest minus the smallest group accuracy
  (``MetricFrame(metrics=accuracy_score).difference()``);
- ``mae_difference`` (regressors): the same with the mean absolute error.

Demographic parity and equalized odds are one-vs-rest for the ``positive`` class. Only joined
rows count: the live selection rate is over the predictions that received a label.

**The test.** A metric above the threshold is a violation only when shown at ``confidence``.
For each rate the metric takes the difference of (one for demographic parity, accuracy and
MAE; two for equalized odds), the groups with the highest and the lowest rate among those with
at least ``min_labels`` labels (and a defined rate: a true-positive rate needs positives) are
compared with a one-sided test of H0 ``rate_hi - rate_lo <= threshold``:

- rates (proportions): the two-proportion Wald test with the Agresti-Caffo adjustment, one
  success and one failure added to each group, ``p~ = (x + 1) / (n + 2)``,
  ``z = (p~_hi - p~_lo - threshold) / sqrt(p~_hi (1 - p~_hi) / (n_hi + 2) + p~_lo (1 - p~_lo)
  / (n_lo + 2))`` (Agresti & Caffo 2000; statsmodels' ``test_proportions_2indep(
  method="agresti-caffo", compare="diff", value=threshold, alternative="larger")``);
- MAE: Welch's z-test on the absolute errors, ``z = (mae_hi - mae_lo - threshold) /
  sqrt(s²_hi / n_hi + s²_lo / n_lo)`` (statsmodels' ``CompareMeans.ztest_ind(
  usevar="unequal", value=threshold, alternative="larger")``).

The pair is chosen by the data, so the critical value is Bonferroni-corrected for every pair
that could have been chosen: ``z > Φ⁻¹(1 - (1 - confidence) / m)`` with ``m = rates * k(k-1)/2``
for ``k`` tested groups. Like every monitor check, it repeats on a growing sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import norm

from modelops.drift.quality import QualityCounts, Task

FairnessMetric = Literal[
    "demographic_parity_difference",
    "equalized_odds_difference",
    "accuracy_difference",
    "mae_difference",
]
RATES: dict[str, tuple[str, ...]] = {
    "demographic_parity_difference": ("selection_rate",),
    "equalized_odds_difference": ("true_positive_rate", "false_positive_rate"),
    "accuracy_difference": ("accuracy",),
    "mae_difference": ("mae",),
}
"""The per-group rates (fairlearn's names) each metric is the largest difference of."""
METRIC_TASK: dict[str, Task] = {
    "demographic_parity_difference": "classification",
    "equalized_odds_difference": "classification",
    "accuracy_difference": "classification",
    "mae_difference": "regression",
}
NEEDS_POSITIVE = frozenset({"demographic_parity_difference", "equalized_odds_difference"})
OTHER_GROUP = "(other)"
"""Where groups past ``MAX_GROUPS`` of a feature are counted."""
MISSING_GROUP = "(missing)"
"""The group of a missing value (as the trainer names it)."""


@dataclass(frozen=True)
class GroupRates:
    """One group's rates from its counts: ``rates[name] = successes / trials`` (MAE: the mean
    absolute error, ``trials`` the labels); a rate with no trials is absent."""

    group: str
    labels: int
    rates: dict[str, float] = field(default_factory=dict)
    successes: dict[str, float] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    abs_error_variance: float = 0.0
    """Regressors: sample variance (ddof 1) of the absolute errors."""


def positive_class(classes: Sequence[str], positive_label: str | None) -> str | None:
    """The favourable class: ``positive_label``, else the second of two classes
    (scikit-learn's ``classes_[1]``, as the trainer takes it), else None."""
    if positive_label is not None:
        return positive_label
    return classes[1] if len(classes) == 2 else None


def group_rates(group: str, counts: QualityCounts, metric: str, positive: str | None) -> GroupRates:
    """The rates ``metric`` needs (see :data:`RATES`) of one group's joined labels. Raises
    ValueError when ``metric`` needs a positive class and ``positive`` is None, or when the
    counts are of the other task."""
    if counts.task != METRIC_TASK[metric]:
        raise ValueError(f"{metric} needs {METRIC_TASK[metric]} counts, not {counts.task}")
    n = counts.labels
    found: dict[str, tuple[float, int]] = {}
    variance = 0.0
    if metric == "mae_difference":
        if n:
            mean = counts.sum_abs_error / n
            found["mae"] = (counts.sum_abs_error, n)
            variance = max(counts.sum_squared_error - n * mean * mean, 0.0) / max(n - 1, 1)
    elif metric == "accuracy_difference":
        found["accuracy"] = (float(np.trace(counts.confusion)), n)
    else:
        if positive is None:
            raise ValueError(f"{metric} needs a positive class")
        c = counts.confusion
        i = counts.classes.index(positive) if positive in counts.classes else None
        tp = int(c[i, i]) if i is not None else 0
        predicted_pos = int(c[:, i].sum()) if i is not None else 0
        actual_pos = int(c[i, :].sum()) if i is not None else 0
        fp = predicted_pos - tp
        if metric == "demographic_parity_difference":
            found["selection_rate"] = (float(predicted_pos), n)
        else:
            found["true_positive_rate"] = (float(tp), actual_pos)
            found["false_positive_rate"] = (float(fp), n - actual_pos)
    return GroupRates(
        group,
        n,
        {k: s / t for k, (s, t) in found.items() if t > 0},
        {k: s for k, (s, _) in found.items()},
        {k: t for k, (_, t) in found.items()},
        variance,
    )


def metric_value(groups: Sequence[GroupRates], metric: str) -> float:
    """fairlearn's value of ``metric`` over ``groups`` (with labels): per rate, the largest
    minus the smallest group value, the largest of those for equalized odds. An undefined
    true/false positive rate counts as 0, as in fairlearn. NaN with no group."""
    present = [g for g in groups if g.labels > 0]
    if not present:
        return math.nan
    differences = []
    for rate in RATES[metric]:
        values = [g.rates.get(rate, 0.0) for g in present]
        differences.append(max(values) - min(values))
    return max(differences)


@dataclass(frozen=True)
class RateTest:
    """One rate's test between its extreme groups (numbers NaN when it could not run)."""

    rate: str
    high: str | None
    low: str | None
    difference: float
    z: float
    p_value: float
    """One-sided p-value of H0 ``rate_hi - rate_lo <= threshold`` (before the correction)."""
    critical_z: float
    violated: bool


@dataclass(frozen=True)
class FairnessTest:
    """The metric's tests: ``tested`` the groups with at least ``min_labels`` labels,
    ``short`` those with fewer (name, labels)."""

    metric: str
    value: float
    tests: list[RateTest]
    tested: list[str]
    short: list[tuple[str, int]]

    @property
    def violated(self) -> bool:
        return any(t.violated for t in self.tests)


def assess_fairness(
    groups: Sequence[GroupRates],
    metric: str,
    threshold: float,
    *,
    confidence: float = 0.95,
    min_labels: int = 100,
) -> FairnessTest:
    """Test whether ``metric`` exceeds ``threshold`` at ``confidence`` (see the module
    docstring). Raises ValueError for ``confidence`` outside (0.5, 1) or a negative
    threshold."""
    if not 0.5 < confidence < 1:
        raise ValueError("confidence must be in (0.5, 1)")
    if threshold < 0:
        raise ValueError("threshold must be at least 0")
    eligible = [g for g in groups if g.labels >= min_labels]
    short = [(g.group, g.labels) for g in groups if 0 < g.labels < min_labels]
    k = len(eligible)
    rates = RATES[metric]
    m = max(1, len(rates) * k * (k - 1) // 2)
    z_crit = float(norm.ppf(1 - (1 - confidence) / m))
    tests = []
    for rate in rates:
        defined = [g for g in eligible if rate in g.rates]
        if len(defined) < 2:
            tests.append(RateTest(rate, None, None, math.nan, math.nan, math.nan, z_crit, False))
            continue
        high = max(defined, key=lambda g: (g.rates[rate], g.group))
        low = min(defined, key=lambda g: (g.rates[rate], g.group))
        if rate == "mae":
            z = welch_z(high, low, threshold)
        else:
            z = two_proportion_z(
                high.successes[rate],
                high.trials[rate],
                low.successes[rate],
                low.trials[rate],
                threshold,
            )
        p = float(norm.sf(z))
        difference = high.rates[rate] - low.rates[rate]
        tests.append(RateTest(rate, high.group, low.group, difference, z, p, z_crit, z > z_crit))
    return FairnessTest(
        metric, metric_value(groups, metric), tests, [g.group for g in eligible], short
    )


def two_proportion_z(x1: float, n1: int, x2: float, n2: int, value: float) -> float:
    """Agresti-Caffo z statistic of H0 ``p1 - p2 <= value`` (see the module docstring)."""
    p1, p2 = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
    return (p1 - p2 - value) / se


def welch_z(high: GroupRates, low: GroupRates, value: float) -> float:
    """Welch z statistic of H0 ``mae_high - mae_low <= value`` from the groups' moments."""
    se = math.sqrt(
        high.abs_error_variance / high.trials["mae"] + low.abs_error_variance / low.trials["mae"]
    )
    gap = high.rates["mae"] - low.rates["mae"] - value
    if se == 0:  # every error identical in both groups: the sign of the gap decides
        return math.copysign(math.inf, gap) if gap else 0.0
    return gap / se


def rates_by_group(
    groups: Mapping[str, QualityCounts], metric: str, positive: str | None
) -> list[GroupRates]:
    """:func:`group_rates` of every group, sorted by group name."""
    return [group_rates(g, groups[g], metric, positive) for g in sorted(groups)]
