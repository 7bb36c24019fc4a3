"""Fairness of a fitted model on its held-out rows, per group of each sensitive column.

Computed with fairlearn (https://fairlearn.org, ``fairlearn.metrics``), so the numbers are
fairlearn's:

- ``demographic_parity_difference``: the largest minus the smallest group selection rate,
  P(ŷ = positive | group) (``fairlearn.metrics.demographic_parity_difference``);
- ``equalized_odds_difference``: the larger of the true-positive-rate and false-positive-rate
  differences between groups (``fairlearn.metrics.equalized_odds_difference``, worst case);
- per-group ``accuracy``, ``recall`` (classifiers) and ``mae`` (regressors), from a
  ``MetricFrame``; their scalars are ``<metric>_difference`` (``MetricFrame.difference()``,
  largest minus smallest group) and the worst group (``accuracy_group_min``,
  ``recall_group_min``, ``mae_group_max``).

Demographic parity and equalized odds need one favourable class: ``positive_label``, or for
two classes the second of the sorted classes (scikit-learn's ``classes_[1]``, ``1`` of 0/1).
A multiclass model is reduced one-vs-rest to that class; without one, both are unmeasured
(with the reason). ``recall`` is the recall of that class when there is one, else macro
recall. A group's recall without positives is undefined and left out of its row (fairlearn's
``true_positive_rate`` counts that group as 0, and so does the equalized odds difference).

Each sensitive column is assessed on its own (not their intersection, whose groups multiply);
the scalar gates read is the worst over the columns. Values are grouped as text, a missing
value as ``(missing)``. Every scalar is rounded to 6 digits, as the trainer's other metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from fairlearn.metrics import (  # type: ignore[import-untyped]
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, mean_absolute_error, recall_score

from modelops.api.modelversion import MAX_GROUPS
from modelops.training.metrics import FAIRNESS_LOWER_IS_BETTER as LOWER_IS_BETTER

MISSING_GROUP = "(missing)"
MAX_VALUE_LENGTH = 256
DIFFERENCES = ("demographic_parity_difference", "equalized_odds_difference")

Metric = Callable[[Any, Any], float]


@dataclass
class Assessment:
    """What the trainer reports: scalars for ``metrics`` (finite, worst over the columns),
    reasons for those it could not measure, and the table for ``ModelVersion.spec.fairness``."""

    metrics: dict[str, float] = field(default_factory=dict)
    unmeasured: dict[str, str] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def scalar_names(metric: str) -> tuple[str, ...]:
    """The scalars a requested metric yields (``accuracy`` -> ``accuracy_difference``,
    ``accuracy_group_min``)."""
    if metric in DIFFERENCES:
        return (metric,)
    worst = "group_max" if metric == "mae" else "group_min"
    return (f"{metric}_difference", f"{metric}_{worst}")


def positive_class(classes: Sequence[str], positive_label: str | None) -> str | None:
    """The favourable class, or None when there is none to take (more than two classes and
    no ``positive_label``). Raises ValueError naming the classes when ``positive_label`` is
    not one of them."""
    if positive_label is not None:
        if positive_label not in classes:
            raise ValueError(
                f"fairness.positiveLabel {positive_label!r} is not a class of the model "
                f"(classes: {', '.join(classes[:20])})"
            )
        return positive_label
    return classes[1] if len(classes) == 2 else None


def groups_of(column: pd.Series) -> npt.NDArray[np.object_]:
    """The column's values as group names: text, a missing value ``(missing)``."""
    text = column.astype("string").fillna(MISSING_GROUP).astype(str)
    groups: npt.NDArray[np.object_] = text.to_numpy(dtype=object)
    return groups


def assess(
    y_true: Any,
    y_pred: Any,
    sensitive: pd.DataFrame,
    metrics: Sequence[str],
    *,
    classes: Sequence[str] | None,
    positive_label: str | None = None,
) -> Assessment:
    """Fairness of ``y_pred`` against ``y_true`` over each column of ``sensitive`` (aligned
    rows). ``classes`` are the classifier's classes as text (None for a regressor);
    ``metrics`` are API names (:data:`modelops.api.trainingrun.FairnessMetric`).

    Raises ValueError when ``positive_label`` is not a class.
    """
    classifier = classes is not None
    positive = positive_class(list(classes), positive_label) if classes is not None else None
    if classifier:
        y_true = np.asarray([str(v) for v in y_true], dtype=object)
        y_pred = np.asarray([str(v) for v in y_pred], dtype=object)
    else:
        y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    result = Assessment()
    features = []
    for name in sensitive.columns:
        groups = groups_of(sensitive[name])
        scalars, rows, unmeasured = _one_column(y_true, y_pred, groups, metrics, positive)
        result.unmeasured.update(unmeasured)
        features.append(_feature_record(str(name), scalars, rows))
        for key, value in scalars.items():
            worse = max if key in LOWER_IS_BETTER else min
            known = result.metrics.get(key)
            result.metrics[key] = value if known is None else worse(known, value)
    for key in list(result.unmeasured):
        if key in result.metrics:  # measured on another column: the worst known stands
            del result.unmeasured[key]
    result.record = {
        "sensitiveFeatures": [str(c) for c in sensitive.columns],
        **({"positiveLabel": positive} if positive is not None else {}),
        "metrics": dict(sorted(result.metrics.items())),
        **({"unmeasured": dict(sorted(result.unmeasured.items()))} if result.unmeasured else {}),
        "features": features,
    }
    return result


def _one_column(
    y_true: Any, y_pred: Any, groups: Any, metrics: Sequence[str], positive: str | None
) -> tuple[dict[str, float], pd.DataFrame, dict[str, str]]:
    """(scalars, per-group table with a ``count`` column, unmeasured reasons) of one column.

    Two MetricFrames over the same groups: one on the labels (or values) as they are, one on
    the one-vs-rest 0/1 labels of the positive class (rates and recall of that class).
    """
    scalars: dict[str, float] = {}
    unmeasured: dict[str, str] = {}
    plain: dict[str, Metric] = {"count": lambda t, p: float(len(t))}
    binary: dict[str, Metric] = {}
    truth = predicted = None
    if positive is not None:
        truth, predicted = (y_true == positive).astype(int), (y_pred == positive).astype(int)
    for metric in metrics:
        if metric in DIFFERENCES and truth is None:
            unmeasured[metric] = (
                f"{metric} could not be measured (more than two classes: set "
                "fairness.positiveLabel)"
            )
        elif metric == "demographic_parity_difference":
            binary["selection_rate"] = selection_rate
            value = demographic_parity_difference(truth, predicted, sensitive_features=groups)
            _put(scalars, unmeasured, metric, value)
        elif metric == "equalized_odds_difference":
            binary["true_positive_rate"] = true_positive_rate
            binary["false_positive_rate"] = false_positive_rate
            with warnings.catch_warnings():  # a group without positives: fairlearn's 0
                warnings.simplefilter("ignore")
                value = equalized_odds_difference(truth, predicted, sensitive_features=groups)
            _put(scalars, unmeasured, metric, value)
        elif metric == "accuracy":
            plain["accuracy"] = lambda t, p: float(accuracy_score(list(t), list(p)))
        elif metric == "recall" and truth is not None:
            binary["recall"] = lambda t, p: float(recall_score(t, p, zero_division=np.nan))
        elif metric == "recall":
            plain["recall"] = lambda t, p: float(
                recall_score(list(t), list(p), average="macro", zero_division=np.nan)
            )
        elif metric == "mae":
            plain["mae"] = lambda t, p: float(
                mean_absolute_error(np.asarray(t, float), np.asarray(p, float))
            )
    with warnings.catch_warnings():  # undefined recall is NaN on purpose
        warnings.simplefilter("ignore")
        frames = [
            MetricFrame(metrics=plain, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
        ]
        if binary:
            frames.append(
                MetricFrame(
                    metrics=binary, y_true=truth, y_pred=predicted, sensitive_features=groups
                )
            )
        table = pd.concat([f.by_group for f in frames], axis=1)
        differences = pd.concat([f.difference() for f in frames])
    for metric in metrics:
        if metric in DIFFERENCES or metric not in table.columns:
            continue
        difference, worst = scalar_names(metric)
        _put(scalars, unmeasured, difference, differences[metric])
        column = table[metric]
        _put(scalars, unmeasured, worst, column.max() if metric == "mae" else column.min())
    return scalars, table, unmeasured


def _put(scalars: dict[str, float], unmeasured: dict[str, str], name: str, value: Any) -> None:
    number = float(value)
    if math.isfinite(number):
        scalars[name] = round(number, 6)
    else:
        unmeasured[name] = f"{name} could not be measured (no group has a value)"


def _feature_record(name: str, scalars: dict[str, float], table: pd.DataFrame) -> dict[str, Any]:
    """One column's entry of ``spec.fairness.features``: its scalars and its largest groups."""
    rows: list[dict[str, Any]] = []
    for value, row in table.iterrows():
        metrics = {
            str(k): round(float(v), 6)
            for k, v in row.items()
            if k != "count" and math.isfinite(float(v))
        }
        text = str(value)[:MAX_VALUE_LENGTH]
        rows.append({"value": text, "count": int(row["count"]), "metrics": metrics})
    rows.sort(key=lambda r: (-r["count"], r["value"]))
    return {
        "name": name,
        "metrics": dict(sorted(scalars.items())),
        "groups": rows[:MAX_GROUPS],
        **({"omittedGroups": len(rows) - MAX_GROUPS} if len(rows) > MAX_GROUPS else {}),
    }
