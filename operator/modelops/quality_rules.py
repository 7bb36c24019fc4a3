"""A DriftMonitor's quality rules, decided: pure, from counts + spec + baseline to a verdict.

The controller gathers the facts (the monitored version's joined-label counts, the baseline,
the feedback counters) and writes what :func:`evaluate` returns: condition ``Underperforming``
and ``status.quality``. Nothing here does I/O, so every decision is unit-tested.

Condition ``Underperforming``:

- ``True``: a rule is shown broken, reason ``QualityBelowThreshold`` (the threshold rule; for
  MAE, above it) or ``WorseThanBaseline`` (the ``maxDegradation`` rule); the threshold's
  reason wins when both fire, the message names both;
- ``False``, ``QualityHealthy``: every rule was tested and none is shown broken (which is not
  proof of quality: a rule fires only at the stated confidence);
- ``Unknown``: ``InvalidSpec`` (the version cannot answer the metric), ``NoBaseline`` (no
  stable version, the monitored version is the stable one, no held-out metric of that name:
  what waiting does not mend), ``InsufficientLabels`` (fewer than ``minLabels`` on the version
  or on a live baseline, none included: labels are awaited), ``LabelsMismatch`` (the counts
  are of the other task), and, set by the controller, ``NoTarget`` and ``CheckFailed``.

A Deployment guarded by the monitor holds its canary on any Unknown but InsufficientLabels
(``rollout.guard_verdict``), so only a state that labels will end may be InsufficientLabels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from modelops.api.common import ConditionStatus
from modelops.api.driftmonitor import (
    FeedbackCounts,
    QualityDecision,
    QualityMetric,
    QualityRule,
    QualityStatus,
    QualityTest,
)
from modelops.drift.quality import TESTED_METRICS, Comparison, QualityCounts, Task, compare

QUALITY_CONDITION = "Underperforming"
BELOW_THRESHOLD = "QualityBelowThreshold"
WORSE_THAN_BASELINE = "WorseThanBaseline"
HEALTHY = "QualityHealthy"
INSUFFICIENT_LABELS = "InsufficientLabels"
NO_BASELINE = "NoBaseline"
INVALID_SPEC = "InvalidSpec"
LABELS_MISMATCH = "LabelsMismatch"
DETECTED_EVENT = "UnderperformanceDetected"
"""Event (Warning) when ``Underperforming`` turns True."""
RECOVERED_EVENT = "QualityRecovered"
"""Event (Normal) when ``Underperforming`` turns from True to False."""

DEFAULT_METRIC: dict[Task, QualityMetric] = {"classification": "accuracy", "regression": "mae"}
DISPLAYED: dict[Task, tuple[str, ...]] = {
    "classification": ("accuracy", "f1"),
    "regression": ("mae", "rmse"),
}
"""Metrics shown in ``status.quality`` and exported as gauges, per task."""
TASK_NAMES: dict[Task, str] = {"classification": "a classifier", "regression": "a regressor"}
BaselineKind = Literal["stable", "training"]


@dataclass(frozen=True)
class Baseline:
    """What ``maxDegradation`` compares with, as the controller found it.

    ``stable``: ``counts`` are the stable version's live labels over the same window (None:
    none); ``training``: ``value`` is the version's held-out metric (None: not recorded).
    ``problem`` says why no baseline could be had at all (e.g. no stable version).
    """

    kind: BaselineKind
    version: str | None = None
    counts: QualityCounts | None = None
    value: float | None = None
    problem: str = ""


@dataclass(frozen=True)
class QualityVerdict:
    """The ``Underperforming`` condition and ``status.quality`` (None for an invalid spec)."""

    status: ConditionStatus
    reason: str
    message: str
    quality: QualityStatus | None = None
    gauges: dict[str, float] = field(default_factory=dict)
    """The displayed metrics with a value: ``{"accuracy": 0.93, "f1": 0.91}``."""

    @property
    def fired(self) -> bool:
        return self.status == "True"


def metric_for(rule: QualityRule, task: Task) -> QualityMetric:
    """The metric a rule tests: ``spec.quality.metric``, else accuracy for classifiers and
    MAE for regressors."""
    return rule.metric or DEFAULT_METRIC[task]


def baseline_kind(rule: QualityRule, monitored_is_canary: bool) -> BaselineKind:
    """``auto`` is the stable version while the monitored version is the canary, else the
    version's own held-out metrics."""
    if rule.baseline == "auto":
        return "stable" if monitored_is_canary else "training"
    return rule.baseline


def spec_problem(rule: QualityRule, task: Task, version: str) -> str:
    """What in ``rule`` the version (of ``task``) cannot answer; "" when nothing."""
    metric = metric_for(rule, task)
    if TESTED_METRICS[metric] != task:
        other = DEFAULT_METRIC[task]
        return (
            f"spec.quality.metric {metric} needs {TASK_NAMES[TESTED_METRICS[metric]]}, but"
            f" {version} is {TASK_NAMES[task]} (use {other})"
        )
    if metric == "accuracy":
        for name, bound in (
            ("threshold", rule.threshold),
            ("maxDegradation", rule.max_degradation),
        ):
            if bound is not None and bound > 1:
                return (
                    f"spec.quality.{name} {bound:g} is above 1, but {version}'s accuracy is a share"
                )
    return ""


def evaluate(
    rule: QualityRule,
    task: Task,
    version: str,
    live: QualityCounts | None,
    baseline: Baseline | None,
    window: str,
    feedback: dict[str, int] | None = None,
) -> QualityVerdict:
    """Decide ``rule`` for ``version`` (of ``task``) from its joined-label counts ``live``
    (None: no labels in ``window``) and ``baseline`` (needed only with ``maxDegradation``).

    Each rule is a one-sided z-test by :func:`modelops.drift.quality.compare` at
    ``rule.confidence`` with ``rule.min_labels``: the threshold rule against the bound with no
    margin, the ``maxDegradation`` rule against the baseline with that margin. ``feedback``
    holds the feedback counters shown in status (``FeedbackCounts``' keys; others ignored).
    ``window`` (a duration such as ``10m``) is only reported. Never raises for what the spec
    or the data say: those are Unknown verdicts.
    """
    if problem := spec_problem(rule, task, version):
        return QualityVerdict("Unknown", INVALID_SPEC, problem)
    metric = metric_for(rule, task)
    if live is not None and live.task != task:
        message = f"the joined labels of {version} are {live.task} counts, but it is {task}"
        return QualityVerdict("Unknown", LABELS_MISMATCH, message)
    counts = live or QualityCounts.empty(task)
    shown = {m: _number(counts.value(m)) for m in DISPLAYED[task]}
    head = f"{metric} {_fmt(counts.value(metric))} of {version} over {counts.labels} labels"
    if counts.labels == 0:
        head = f"no labels joined for {version} in the last {window}"

    threshold_test = None
    fired: list[tuple[str, str]] = []
    pending: list[tuple[str, str]] = []
    if rule.threshold is not None:
        c = _compare(counts, rule.threshold, metric, rule, 0.0)
        threshold_test = _test(c, "threshold", None)
        side = "below" if metric == "accuracy" else "above"
        said = f"{side} the threshold {rule.threshold:g}"
        _sort(c, said, BELOW_THRESHOLD, fired, pending, rule, version, None)
    baseline_test = None
    if rule.max_degradation is not None:
        margin = rule.max_degradation
        missing = _baseline_problem(baseline, metric)
        if missing:
            pending.insert(0, (NO_BASELINE, missing))
        else:
            assert baseline is not None
            against: QualityCounts | float
            if baseline.kind == "stable":
                against = baseline.counts or QualityCounts.empty(task)
            else:
                against = float(baseline.value or 0.0)
            c = _compare(counts, against, metric, rule, margin)
            baseline_test = _test(c, baseline.kind, baseline.version)
            said = f"worse than {_describe(baseline, c)} by more than {margin:g}"
            name = f"stable {baseline.version}"
            _sort(c, said, WORSE_THAN_BASELINE, fired, pending, rule, version, name)

    status: ConditionStatus
    decision: QualityDecision
    if fired:
        status, reason, decision = "True", fired[0][0], "Underperforming"
        message = f"{head}: shown " + "; and ".join(m for _, m in fired)
    elif pending:
        status, reason = "Unknown", pending[0][0]
        decision = "InsufficientLabels" if reason == INSUFFICIENT_LABELS else "Unknown"
        message = "; ".join(m for _, m in pending)
    else:
        status, reason, decision = "False", HEALTHY, "Healthy"
        message = f"{head}: not shown " + " nor ".join(
            _healthy(t) for t in (threshold_test, baseline_test) if t is not None
        )
    quality = QualityStatus(
        metric=metric,
        value=_number(counts.value(metric)),
        labels=counts.labels,
        window=window,
        confidence=rule.confidence,
        decision=decision,
        threshold=threshold_test,
        baseline=baseline_test,
        feedback=FeedbackCounts.model_validate(feedback) if feedback else None,
        **shown,
    )
    gauges = {m: v for m, v in shown.items() if v is not None}
    return QualityVerdict(status, reason, message, quality, gauges)


def _compare(
    counts: QualityCounts,
    against: QualityCounts | float,
    metric: str,
    rule: QualityRule,
    margin: float,
) -> Comparison:
    return compare(
        counts,
        against,
        metric,
        margin=margin,
        confidence=rule.confidence,
        min_labels=rule.min_labels,
    )


def _baseline_problem(baseline: Baseline | None, metric: str) -> str:
    if baseline is None:
        return "no baseline for spec.quality.maxDegradation"
    if baseline.problem:
        return baseline.problem
    if baseline.kind == "training" and (
        baseline.value is None or not math.isfinite(baseline.value)
    ):
        return f"{baseline.version} has no held-out {metric} in spec.metrics"
    return ""  # a stable version without labels yet is waiting for them: InsufficientLabels


def _sort(
    c: Comparison,
    said: str,
    reason: str,
    fired: list[tuple[str, str]],
    pending: list[tuple[str, str]],
    rule: QualityRule,
    version: str,
    baseline: str | None,
) -> None:
    """File one test's outcome: fired, too few labels, or (neither) passed; ``baseline``
    names a live baseline."""
    if c.worse:
        fired.append(
            (reason, f"{said} (z={c.z:.3g}, p={c.p_worse:.3g} < {1 - rule.confidence:.3g})")
        )
    elif not c.enough:
        need = rule.min_labels
        if c.labels < need:
            why = f"{c.labels} labels of {version}, need {need}"
        else:
            why = f"{c.baseline_labels} labels of {baseline}, need {need}"
        pending.append((INSUFFICIENT_LABELS, f"{why} to test whether {c.metric} is {said}"))


def _describe(baseline: Baseline, c: Comparison) -> str:
    if baseline.kind == "stable":
        return f"stable {baseline.version}'s {_fmt(c.baseline)} ({c.baseline_labels} labels)"
    return f"the held-out {_fmt(c.baseline)} of {baseline.version}"


def _healthy(test: QualityTest) -> str:
    if test.kind == "threshold":
        what = f"beyond the threshold {_fmt(test.against)}"
    else:
        what = (
            f"worse than the {test.kind} baseline {_fmt(test.against)} by more than {test.margin:g}"
        )
    return f"{what} (p={_fmt(test.p_value)})"


def _test(
    c: Comparison, kind: Literal["threshold", "stable", "training"], version: str | None
) -> QualityTest:
    return QualityTest(
        kind=kind,
        against=_number(c.baseline),
        version=version,
        labels=c.baseline_labels,
        margin=c.margin,
        difference=_number(c.difference),
        z=_number(c.z, 4),
        p_value=_significant(c.p_worse),
        worse=c.worse,
    )


def _number(x: float, digits: int = 6) -> float | None:
    """A status number: rounded, None when not finite (JSON has no NaN or Infinity)."""
    return round(x, digits) if math.isfinite(x) else None


def _significant(p: float) -> float | None:
    """A p-value to 4 significant digits (tiny ones stay readable, not 0)."""
    return float(f"{p:.4g}") if math.isfinite(p) else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"
