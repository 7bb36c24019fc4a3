"""A DriftMonitor's fairness rule, decided: pure, from per-group counts + spec to a verdict.

The controller (:mod:`modelops.controllers.fairness`) gathers the monitored version's joined
labels per group of ``spec.fairness.sensitiveFeature`` and writes what :func:`evaluate`
returns: condition ``FairnessViolated`` and ``status.fairness``. The math is
:mod:`modelops.drift.fairness_live`.

Condition ``FairnessViolated``:

- ``True``, ``FairnessThresholdExceeded``: the metric is shown above the threshold between
  two groups with at least ``minLabels`` labels each (whatever the other groups hold);
- ``False``, ``FairnessWithinThreshold``: every group with labels has at least ``minLabels``
  and no rate difference is shown above the threshold (which is not proof of fairness: a rule
  fires only at the stated confidence);
- ``Unknown``: ``InvalidSpec`` (the version cannot answer the metric: the other task, no
  positive class), ``LabelsMismatch`` (the counts are of the other task), ``NoGroupLabels``
  (labels are joined, none with a group of the feature: clients send no ``groups`` for it and
  it is no input the version records: waiting does not mend it), ``InsufficientLabels``
  (no labels yet, fewer than two groups, or a group with fewer than ``minLabels``: labels are
  awaited), and, set by the controller, ``NoTarget`` and ``CheckFailed``.

A Deployment guarded by the monitor rolls its canary back on True and holds it on any Unknown
but InsufficientLabels (``rollout.guard_verdict``), as for ``Underperforming``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modelops.api.common import ConditionStatus
from modelops.api.driftmonitor import (
    FairnessDecision,
    FairnessGroupStatus,
    FairnessMetricName,
    FairnessRateTest,
    FairnessRule,
    FairnessStatus,
)
from modelops.drift.fairness_live import (
    METRIC_TASK,
    NEEDS_POSITIVE,
    FairnessTest,
    assess_fairness,
    positive_class,
    rates_by_group,
)
from modelops.drift.quality import QualityCounts, Task

FAIRNESS_CONDITION = "FairnessViolated"
EXCEEDED = "FairnessThresholdExceeded"
WITHIN = "FairnessWithinThreshold"
INSUFFICIENT_LABELS = "InsufficientLabels"
NO_GROUP_LABELS = "NoGroupLabels"
INVALID_SPEC = "InvalidSpec"
LABELS_MISMATCH = "LabelsMismatch"
DETECTED_EVENT = "FairnessViolationDetected"
"""Event (Warning) when ``FairnessViolated`` turns True."""
RESTORED_EVENT = "FairnessRestored"
"""Event (Normal) when ``FairnessViolated`` turns from True to False."""
DEFAULT_METRIC: dict[Task, FairnessMetricName] = {
    "classification": "demographic_parity_difference",
    "regression": "mae_difference",
}


@dataclass(frozen=True)
class FairnessVerdict:
    """The ``FairnessViolated`` condition and ``status.fairness`` (None when the spec is
    invalid for the version)."""

    status: ConditionStatus
    reason: str
    message: str
    fairness: FairnessStatus | None = None
    gauges: dict[str, float] = field(default_factory=dict)
    """``{metric: value}`` when the value is defined."""

    @property
    def fired(self) -> bool:
        return self.status == "True"


def metric_for(rule: FairnessRule, task: Task) -> FairnessMetricName:
    """``spec.fairness.metric``, else demographic parity (classifiers) or MAE (regressors)."""
    return rule.metric or DEFAULT_METRIC[task]


def evaluate(
    rule: FairnessRule,
    task: Task,
    version: str,
    classes: Sequence[str],
    version_positive: str | None,
    groups: Mapping[str, QualityCounts] | None,
    labels: int,
    window: str,
) -> FairnessVerdict:
    """Decide ``rule`` for ``version`` (of ``task``, with ``classes``; ``version_positive``
    its ``spec.fairness.positiveLabel``) from its joined labels per group of the rule's
    feature (``groups``, None: none) and ``labels``, all labels joined for it in ``window``
    (a duration such as ``10m``, only reported). Never raises for what the spec or the data
    say: those are Unknown verdicts."""
    metric = metric_for(rule, task)
    feature = rule.sensitive_feature
    if METRIC_TASK[metric] != task:
        other = DEFAULT_METRIC[task]
        message = (
            f"spec.fairness.metric {metric} needs a {METRIC_TASK[metric]} model, but {version}"
            f" is a {task} model (use {other})"
        )
        return FairnessVerdict("Unknown", INVALID_SPEC, message)
    positive = positive_class(classes, rule.positive_label or version_positive)
    if metric in NEEDS_POSITIVE:
        if positive is None:
            message = (
                f"{metric} needs a positive class: {version} has {len(classes)} classes; set"
                " spec.fairness.positiveLabel"
            )
            return FairnessVerdict("Unknown", INVALID_SPEC, message)
        if classes and positive not in classes:
            message = (
                f"spec.fairness.positiveLabel {positive!r} is not a class of {version}"
                f" (classes: {', '.join(classes[:20])})"
            )
            return FairnessVerdict("Unknown", INVALID_SPEC, message)
    else:
        positive = None
    found = dict(groups or {})
    if any(c.task != task for c in found.values()):
        message = f"the joined labels per group of {version} are not {task} counts"
        return FairnessVerdict("Unknown", LABELS_MISMATCH, message)
    rates = rates_by_group(found, metric, positive)
    test = assess_fairness(
        rates, metric, rule.threshold, confidence=rule.confidence, min_labels=rule.min_labels
    )
    with_labels = [r for r in rates if r.labels > 0]
    status, reason, decision, message = _decide(
        test, rule, version, feature, len(with_labels), labels, window
    )
    table = FairnessStatus(
        sensitive_feature=feature,
        metric=metric,
        value=_number(test.value),
        threshold=rule.threshold,
        positive_label=positive,
        labels=sum(r.labels for r in rates),
        window=window,
        confidence=rule.confidence,
        decision=decision,
        groups=[
            FairnessGroupStatus(
                group=r.group,
                labels=r.labels,
                rates={k: round(v, 6) for k, v in r.rates.items()},
                tested=r.group in test.tested,
            )
            for r in rates
        ],
        tests=[
            FairnessRateTest(
                rate=t.rate,
                high=t.high,
                low=t.low,
                difference=_number(t.difference),
                z=_number(t.z, 4),
                p_value=float(f"{t.p_value:.4g}") if math.isfinite(t.p_value) else None,
                critical_z=_number(t.critical_z, 4),
                violated=t.violated,
            )
            for t in test.tests
        ],
    )
    gauges: dict[str, float] = {metric: test.value} if math.isfinite(test.value) else {}
    return FairnessVerdict(status, reason, message, table, gauges)


def _decide(
    test: FairnessTest,
    rule: FairnessRule,
    version: str,
    feature: str,
    groups_with_labels: int,
    labels: int,
    window: str,
) -> tuple[ConditionStatus, str, FairnessDecision, str]:
    metric = test.metric
    head = f"{metric} {_fmt(test.value)} of {version} across {feature} groups"
    if test.violated:
        shown = "; ".join(
            f"{t.rate} {t.high} {_fmt(t.difference)} above {t.low} (z={t.z:.3g} >"
            f" {t.critical_z:.3g})"
            for t in test.tests
            if t.violated
        )
        message = f"{head}: shown above the threshold {rule.threshold:g}: {shown}"
        return "True", EXCEEDED, "Violated", message
    if groups_with_labels == 0:
        if labels == 0:
            message = f"no labels joined for {version} in the last {window}"
            return "Unknown", INSUFFICIENT_LABELS, "InsufficientLabels", message
        message = (
            f"{labels} labels joined for {version} in the last {window}, none with a group of"
            f" {feature}: send it in the feedback items' groups, or list it in the version's"
            " spec.fairness.sensitiveFeatures when it is a model input"
        )
        return "Unknown", NO_GROUP_LABELS, "Unknown", message
    if groups_with_labels < 2:
        message = f"only one group of {feature} has labels for {version}: need two to compare"
        return "Unknown", INSUFFICIENT_LABELS, "InsufficientLabels", message
    if test.short:
        short = ", ".join(f"{g} ({n})" for g, n in test.short[:10])
        message = (
            f"{head}: groups with fewer than {rule.min_labels} labels: {short}; not shown"
            f" above the threshold {rule.threshold:g} between the others"
        )
        return "Unknown", INSUFFICIENT_LABELS, "InsufficientLabels", message
    untested = [t.rate for t in test.tests if t.high is None]
    if untested:
        message = (
            f"{head}: {', '.join(untested)} defined for fewer than two groups with"
            f" {rule.min_labels} labels (a true-positive rate needs positives)"
        )
        return "Unknown", INSUFFICIENT_LABELS, "InsufficientLabels", message
    pvalues = ", ".join(f"{t.rate} p={_fmt(t.p_value)}" for t in test.tests)
    message = f"{head}: not shown above the threshold {rule.threshold:g} ({pvalues})"
    return "False", WITHIN, "Fair", message


def _number(x: float, digits: int = 6) -> float | None:
    """A status number: rounded, None when not finite (JSON has no NaN or Infinity)."""
    return round(x, digits) if math.isfinite(x) else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"
