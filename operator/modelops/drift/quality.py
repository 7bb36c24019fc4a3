"""Live model quality from ground truth: the counts joined labels leave, metrics, and tests.

Serving pods join the true labels clients send back (by request id) with what each version
predicted, and add them to :class:`QualityCounts`, one per version and sketch window; the
operator merges the windows and decides with :func:`compare`. Counts are sufficient statistics:
merging is addition, associative and commutative, and memory does not grow with traffic.

JSON (``to_dict``; the ``quality`` key of a sketch window)::

    {"task": "classification", "classes": ["setosa", "versicolor"],
     "confusion": [[50, 2], [3, 45]]}           # rows: true label, columns: predicted
    {"task": "regression", "n": 120, "sumError": -3.2, "sumAbsError": 41.0,
     "sumSquaredError": 30.5, "absErrorCounts": [...]}   # counts per ABS_ERROR_EDGES bin

and, for a shadow version, :class:`Agreement` (key ``agreement``)::

    {"compared": 500, "agreed": 488, "sumAbsDifference": 0.0}

Errors are ``predicted - true``. ``absErrorCounts`` has ``len(ABS_ERROR_EDGES) + 1`` bins: bin 0
holds errors below the first edge, bin i errors in ``[edge[i-1], edge[i])``, the last those at
or above the last edge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

Task = Literal["classification", "regression"]
Metric = Literal["accuracy", "f1", "mae", "rmse"]
TESTED_METRICS: dict[str, Task] = {"accuracy": "classification", "mae": "regression"}
"""Metrics :func:`compare` can test, with the task they belong to."""
HIGHER_IS_BETTER = frozenset({"accuracy", "f1"})
ABS_ERROR_EDGES: npt.NDArray[np.float64] = 10.0 ** (np.arange(-24, 25) / 4.0)
"""Bin edges of absolute regression errors: 1e-6 to 1e6, four per decade."""
MAX_CLASSES = 1000
"""A confusion matrix grows with label values never predicted; past this many it refuses."""

IntArray = npt.NDArray[np.int64]


@dataclass
class QualityCounts:
    """Joined (true, predicted) pairs of one version, as counts.

    Classification keeps a confusion matrix over ``classes`` (rows true, columns predicted);
    regression keeps the count, the sums of errors, absolute and squared errors, and a
    histogram of absolute errors for quantiles.
    """

    task: Task
    classes: list[str] = field(default_factory=list)
    confusion: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    n_regression: int = 0
    sum_error: float = 0.0
    sum_abs_error: float = 0.0
    sum_squared_error: float = 0.0
    abs_error_counts: IntArray = field(
        default_factory=lambda: np.zeros(len(ABS_ERROR_EDGES) + 1, np.int64)
    )

    @classmethod
    def empty(cls, task: Task, classes: Sequence[str] = ()) -> QualityCounts:
        """No labels yet; ``classes`` (a classifier's, in signature order) fixes the order."""
        k = len(classes)
        return cls(task, list(classes), np.zeros((k, k), np.int64))

    @property
    def labels(self) -> int:
        """How many true labels were joined."""
        if self.task == "classification":
            return int(self.confusion.sum())
        return self.n_regression

    def _index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            if len(self.classes) >= MAX_CLASSES:
                raise ValueError(f"more than {MAX_CLASSES} distinct labels") from None
            self.classes.append(label)
            k = len(self.classes)
            grown = np.zeros((k, k), np.int64)
            grown[: k - 1, : k - 1] = self.confusion
            self.confusion = grown
            return k - 1

    def add_classification(self, true: Sequence[str], predicted: Sequence[str]) -> None:
        """Count pairs of class names (aligned sequences). Raises ValueError on a length
        mismatch, on a regression counter, or past ``MAX_CLASSES`` labels."""
        if self.task != "classification":
            raise ValueError("class labels given to a regression counter")
        if len(true) != len(predicted):
            raise ValueError(f"{len(true)} labels for {len(predicted)} predictions")
        for t, p in zip(true, predicted, strict=True):
            i, j = self._index(str(t)), self._index(str(p))
            self.confusion[i, j] += 1

    def add_regression(self, true: npt.ArrayLike, predicted: npt.ArrayLike) -> None:
        """Count pairs of target values (aligned, finite). Raises ValueError on a length
        mismatch, non-finite values, or on a classification counter."""
        if self.task != "regression":
            raise ValueError("target values given to a classification counter")
        t = np.asarray(true, dtype=np.float64).ravel()
        p = np.asarray(predicted, dtype=np.float64).ravel()
        if t.shape != p.shape:
            raise ValueError(f"{t.size} target values for {p.size} predictions")
        if not (np.isfinite(t).all() and np.isfinite(p).all()):
            raise ValueError("target values and predictions must be finite numbers")
        err = p - t
        abs_err = np.abs(err)
        self.n_regression += int(err.size)
        self.sum_error += float(err.sum())
        self.sum_abs_error += float(abs_err.sum())
        self.sum_squared_error += float(np.square(err).sum())
        bins = np.searchsorted(ABS_ERROR_EDGES, abs_err, side="right")
        self.abs_error_counts += np.bincount(bins, minlength=len(ABS_ERROR_EDGES) + 1)

    def merge(self, other: QualityCounts) -> QualityCounts:
        """The counts of both (a new object). Raises ValueError when the tasks differ."""
        if other.task != self.task:
            raise ValueError(f"cannot merge {self.task} counts with {other.task} counts")
        merged = QualityCounts.empty(self.task, self.classes)
        merged.confusion = self.confusion.copy()
        merged._add_confusion(other.classes, other.confusion)
        merged.n_regression = self.n_regression + other.n_regression
        merged.sum_error = self.sum_error + other.sum_error
        merged.sum_abs_error = self.sum_abs_error + other.sum_abs_error
        merged.sum_squared_error = self.sum_squared_error + other.sum_squared_error
        merged.abs_error_counts = self.abs_error_counts + other.abs_error_counts
        return merged

    def _add_confusion(self, classes: Sequence[str], confusion: IntArray) -> None:
        index = [self._index(c) for c in classes]
        rows, cols = np.nonzero(confusion)
        for r, c in zip(rows, cols, strict=True):
            self.confusion[index[r], index[c]] += confusion[r, c]

    def value(self, metric: str) -> float:
        """The metric on the joined labels (NaN without labels). ``accuracy`` and ``f1``
        (macro average over labels seen, as scikit-learn's ``f1_score(average="macro")``) for
        classifiers, ``mae`` and ``rmse`` for regressors. Raises ValueError for a metric of
        the other task or an unknown one."""
        if metric in ("accuracy", "f1") and self.task != "classification":
            raise ValueError(f"{metric} needs a classifier; this version is a regressor")
        if metric in ("mae", "rmse") and self.task != "regression":
            raise ValueError(f"{metric} needs a regressor; this version is a classifier")
        n = self.labels
        if n == 0:
            return math.nan
        if metric == "accuracy":
            return float(np.trace(self.confusion)) / n
        if metric == "f1":
            tp = np.diag(self.confusion).astype(np.float64)
            support = self.confusion.sum(axis=1) + self.confusion.sum(axis=0)
            present = support > 0
            return float(np.mean(2 * tp[present] / support[present]))
        if metric == "mae":
            return self.sum_abs_error / n
        if metric == "rmse":
            return math.sqrt(self.sum_squared_error / n)
        raise ValueError(f"unknown quality metric {metric!r}")

    def abs_error_quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of absolute errors from the histogram: the upper edge of
        the bin where the cumulative count reaches ``q`` (resolution: a quarter decade).
        NaN without labels."""
        if self.n_regression == 0:
            return math.nan
        cumulative = np.cumsum(self.abs_error_counts)
        i = int(np.searchsorted(cumulative, q * self.n_regression, side="left"))
        edges = (*ABS_ERROR_EDGES.tolist(), math.inf)
        return float(edges[min(i, len(edges) - 1)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the layout of the module docstring."""
        if self.task == "classification":
            return {
                "task": "classification",
                "classes": list(self.classes),
                "confusion": self.confusion.tolist(),
            }
        return {
            "task": "regression",
            "n": self.n_regression,
            "sumError": self.sum_error,
            "sumAbsError": self.sum_abs_error,
            "sumSquaredError": self.sum_squared_error,
            "absErrorCounts": self.abs_error_counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityCounts:
        """Parse ``to_dict`` output. Raises ValueError (or KeyError/TypeError) when malformed."""
        task = data["task"]
        if task == "classification":
            classes = [str(c) for c in data["classes"]]
            confusion = np.asarray(data["confusion"], dtype=np.int64).reshape(
                len(classes), len(classes)
            )
            if (confusion < 0).any():
                raise ValueError("negative confusion counts")
            return cls("classification", classes, confusion)
        if task == "regression":
            counts = np.asarray(data["absErrorCounts"], dtype=np.int64)
            if counts.shape != (len(ABS_ERROR_EDGES) + 1,):
                raise ValueError(f"absErrorCounts must have {len(ABS_ERROR_EDGES) + 1} bins")
            return cls(
                "regression",
                n_regression=int(data["n"]),
                sum_error=float(data["sumError"]),
                sum_abs_error=float(data["sumAbsError"]),
                sum_squared_error=float(data["sumSquaredError"]),
                abs_error_counts=counts,
            )
        raise ValueError(f"unknown task {task!r}")


@dataclass
class Agreement:
    """How often a shadow version's answers agreed with stable's on the same requests."""

    compared: int = 0
    agreed: int = 0
    """Classifiers: same predicted class."""
    sum_abs_difference: float = 0.0
    """Regressors: the sum of |shadow - stable| over compared rows."""

    def add(self, stable: Sequence[Any], shadow: Sequence[Any], task: Task) -> None:
        """Compare aligned predictions of one request. Raises ValueError on length mismatch."""
        if len(stable) != len(shadow):
            raise ValueError(f"{len(stable)} stable predictions for {len(shadow)} shadow ones")
        self.compared += len(stable)
        if task == "classification":
            self.agreed += sum(str(a) == str(b) for a, b in zip(stable, shadow, strict=True))
        else:
            diff = np.abs(np.asarray(shadow, np.float64) - np.asarray(stable, np.float64))
            self.sum_abs_difference += float(diff.sum())

    @property
    def rate(self) -> float:
        """Share of compared rows that agreed (NaN before any)."""
        return self.agreed / self.compared if self.compared else math.nan

    def merge(self, other: Agreement) -> Agreement:
        return Agreement(
            self.compared + other.compared,
            self.agreed + other.agreed,
            self.sum_abs_difference + other.sum_abs_difference,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "agreed": self.agreed,
            "sumAbsDifference": self.sum_abs_difference,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Agreement:
        return cls(int(data["compared"]), int(data["agreed"]), float(data["sumAbsDifference"]))


@dataclass(frozen=True)
class Comparison:
    """A candidate's live metric against a baseline (another version's counts or a number).

    ``difference`` is signed so that positive means the candidate is better (accuracy:
    candidate - baseline; MAE: baseline - candidate). ``z = (difference + margin) / se``.
    ``worse``: rejects, at ``confidence``, "the candidate is at most ``margin`` worse" — it is
    shown worse by more than the margin. ``not_worse``: rejects "the candidate is worse by the
    margin or more" (non-inferiority; with margin 0, superiority). Both are False while there
    are fewer than ``min_labels`` labels on a side that has counts (``enough`` is False).
    """

    metric: str
    value: float
    baseline: float
    labels: int
    baseline_labels: int | None
    """None when the baseline is a fixed number."""
    difference: float
    margin: float
    confidence: float
    z: float
    p_worse: float
    """One-sided p-value of H0 "difference >= -margin" (small: shown worse)."""
    p_not_worse: float
    """One-sided p-value of H0 "difference <= -margin" (small: shown not worse)."""
    enough: bool
    worse: bool
    not_worse: bool


def compare(
    candidate: QualityCounts,
    baseline: QualityCounts | float,
    metric: str,
    *,
    margin: float = 0.0,
    confidence: float = 0.95,
    min_labels: int = 100,
) -> Comparison:
    """Test the candidate's live ``metric`` (``accuracy`` or ``mae``) against a baseline.

    Accuracy against another version: the two-proportion Wald test with the Agresti-Caffo
    adjustment (one success and one failure added to each group; Agresti & Caffo 2000, "Simple
    and effective confidence intervals for proportions and differences of proportions"), as
    statsmodels' ``test_proportions_2indep(method="agresti-caffo", compare="diff")``.
    Accuracy against a number p0: the one-sample score test, variance under the null
    ``p0' (1 - p0') / n`` with ``p0' = p0 - margin`` kept within ``[0.5/n, 1 - 0.5/n]``, as
    statsmodels' ``proportions_ztest(prop_var=p0')`` for interior values.
    MAE against another version: Welch's z-test on the absolute errors (variances from the
    sums, ddof 1), as statsmodels' ``CompareMeans.ztest_ind(usevar="unequal")``; against a
    number: the one-sample z-test, as ``statsmodels.stats.weightstats.ztest``.

    Every check repeats the test on a growing sample, so a monitor that looks every interval
    has a somewhat higher false-alarm rate than ``1 - confidence``; ``min_labels`` bounds the
    earliest look. Raises ValueError for an untestable metric, a metric of the other task,
    ``confidence`` outside (0.5, 1), or a negative margin.
    """
    task = TESTED_METRICS.get(metric)
    if task is None:
        raise ValueError(f"quality tests support {sorted(TESTED_METRICS)}, not {metric!r}")
    if task != candidate.task:
        raise ValueError(f"{metric} needs a {task} model; this version is a {candidate.task}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), not {confidence}")
    if margin < 0:
        raise ValueError(f"margin must be at least 0, not {margin}")
    fixed = not isinstance(baseline, QualityCounts)
    n1 = candidate.labels
    n2 = None if isinstance(baseline, float | int) else baseline.labels
    value = candidate.value(metric)
    base = float(baseline) if isinstance(baseline, float | int) else baseline.value(metric)
    enough = n1 >= min_labels and (n2 is None or n2 >= min_labels)
    sign = 1.0 if metric in HIGHER_IS_BETTER else -1.0
    difference = sign * (value - base) if enough else math.nan
    z = math.nan
    if enough:
        if metric == "accuracy":
            z = _accuracy_z(candidate, baseline, margin)
        else:
            z = _mae_z(candidate, baseline, margin)
    z_crit = float(norm.ppf(confidence))
    p_worse = float(norm.cdf(z)) if enough else math.nan
    return Comparison(
        metric=metric,
        value=value,
        baseline=base,
        labels=n1,
        baseline_labels=None if fixed else n2,
        difference=difference,
        margin=margin,
        confidence=confidence,
        z=z,
        p_worse=p_worse,
        p_not_worse=1.0 - p_worse if enough else math.nan,
        enough=enough,
        worse=enough and z < -z_crit,
        not_worse=enough and z > z_crit,
    )


def _accuracy_z(candidate: QualityCounts, baseline: QualityCounts | float, margin: float) -> float:
    x1, n1 = float(np.trace(candidate.confusion)), candidate.labels
    if isinstance(baseline, QualityCounts):
        x2, n2 = float(np.trace(baseline.confusion)), baseline.labels
        p1, p2 = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
        se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
        return (p1 - p2 + margin) / se
    p0 = min(max(float(baseline) - margin, 0.5 / n1), 1 - 0.5 / n1)
    se = math.sqrt(p0 * (1 - p0) / n1)
    return (x1 / n1 - p0) / se


def _mae_z(candidate: QualityCounts, baseline: QualityCounts | float, margin: float) -> float:
    mean1, var1 = _abs_error_moments(candidate)
    n1 = candidate.labels
    if isinstance(baseline, QualityCounts):
        mean2, var2 = _abs_error_moments(baseline)
        se = math.sqrt(var1 / n1 + var2 / baseline.labels)
    else:
        mean2, se = float(baseline), math.sqrt(var1 / n1)
    if se == 0:  # every error identical: the sign of the gap decides, with certainty
        gap = mean2 - mean1 + margin
        return math.copysign(math.inf, gap) if gap else 0.0
    return (mean2 - mean1 + margin) / se


def _abs_error_moments(counts: QualityCounts) -> tuple[float, float]:
    """Mean and sample variance (ddof 1) of absolute errors, from the sums."""
    n = counts.n_regression
    mean = counts.sum_abs_error / n
    var = max(counts.sum_squared_error - n * mean * mean, 0.0) / max(n - 1, 1)
    return mean, var
