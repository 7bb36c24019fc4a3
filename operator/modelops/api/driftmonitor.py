"""DriftMonitor: compare live traffic with the training data and act when it drifts."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from modelops.api.common import (
    CONDITIONS_FIELD,
    DNS_1035_PATTERN,
    DURATION_PATTERN,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    Condition,
    Model,
    NameRule,
    Resource,
)
from modelops.api.trainingrun import RetrainTrigger, TrainingRunTemplate

DriftMethod = Literal["wasserstein", "jensenshannon", "psi", "ks", "chisquare", "ztest"]


class FeatureRule(Model):
    method: DriftMethod | None = None
    threshold: float | None = Field(default=None, ge=0)


CRON_PATTERN = r"^[0-9A-Za-z*?/,#-]+( +[0-9A-Za-z*?/,#-]+){4}$"
"""Five cron fields (minute hour day-of-month month day-of-week): the shape the CRD checks;
the operator checks their values (``Retraining=False, reason=InvalidSpec``)."""
PREFIX_NEEDS_NEW_DATA = (
    "spec.retrain.template.dataset.uri ends in '/', a prefix: that needs onNewData: true"
    " (each run then trains on the newest object under it)"
)


class Retrain(Model):
    """When to retrain (drift, new data, a schedule) and how; one cooldown for all triggers."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.template.dataset.uri.endsWith('/')"
                    " || (has(self.onNewData) && self.onNewData)",
                    "message": PREFIX_NEEDS_NEW_DATA,
                    "fieldPath": ".template.dataset.uri",
                }
            ]
        }
    )

    template: TrainingRunTemplate
    """Spec of the TrainingRun created; with onNewData its dataset.uri may end in '/'."""
    cooldown: str = Field(default="1h", pattern=DURATION_PATTERN)
    """At most one retraining per cooldown, whatever the trigger."""
    schedule: str | None = Field(default=None, json_schema_extra={"pattern": CRON_PATTERN})
    """Also retrain on this cron schedule (five fields, UTC), e.g. ``0 3 * * 1``."""
    on_new_data: bool = False
    """Also retrain on new data: a new ETag of the object, a new object under the prefix."""

    @model_validator(mode="after")
    def _prefix_needs_new_data(self) -> Retrain:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        if self.template.dataset.uri.endswith("/") and not self.on_new_data:
            raise ValueError(PREFIX_NEEDS_NEW_DATA)
        return self


QualityMetric = Literal["accuracy", "mae"]
QUALITY_NEEDS_A_RULE = "spec.quality needs threshold or maxDegradation (or both)"
ACCURACY_BOUNDS = "spec.quality: an accuracy threshold or maxDegradation must be at most 1"


class QualityRule(Model):
    """Live model quality (concept drift): the monitored version's metric on the true labels
    clients sent back, tested against a bound and/or a baseline.

    Each rule fires only when a one-sided z-test shows it broken at ``confidence`` (see
    :func:`modelops.drift.quality.compare`), over at least ``minLabels`` labels on each side
    that has counts."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.threshold) || has(self.maxDegradation)",
                    "message": QUALITY_NEEDS_A_RULE,
                },
                {
                    "rule": "!has(self.metric) || self.metric != 'accuracy'"
                    " || ((!has(self.threshold) || self.threshold <= 1.0)"
                    " && (!has(self.maxDegradation) || self.maxDegradation <= 1.0))",
                    "message": ACCURACY_BOUNDS,
                },
            ]
        }
    )

    metric: QualityMetric | None = None
    """``accuracy`` (classifiers) or ``mae`` (regressors); by the version's task when omitted."""
    threshold: float | None = Field(default=None, ge=0)
    """Accuracy must stay at least, MAE at most, this: fires when the live value is shown
    beyond it."""
    max_degradation: float | None = Field(default=None, ge=0)
    """Fires when the live value is shown worse than the baseline by more than this (in the
    metric's units: 0.05 is five accuracy points)."""
    baseline: Literal["auto", "stable", "training"] = "auto"
    """What ``maxDegradation`` compares with: ``stable`` the Deployment's stable version's live
    quality over the same window; ``training`` the version's own held-out ``spec.metrics``;
    ``auto`` stable while the monitored version is the canary, else training."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    """Of each one-sided test (0.95: a 5% false-alarm rate per look)."""
    min_labels: int = Field(default=100, ge=1)
    """Fewer joined labels than this (on the version, or on a live baseline) decide nothing."""
    window: str | None = Field(default=None, pattern=DURATION_PATTERN)
    """Labels joined over this long count (default: the monitor's ``window``); labels arrive
    late, so a longer one is often wanted."""

    @model_validator(mode="after")
    def _has_a_rule(self) -> QualityRule:
        # The CRD's CEL rules say the same; this catches objects that bypassed admission.
        if self.threshold is None and self.max_degradation is None:
            raise ValueError(QUALITY_NEEDS_A_RULE)
        if self.metric == "accuracy" and max(self.threshold or 0, self.max_degradation or 0) > 1:
            raise ValueError(ACCURACY_BOUNDS)
        return self


FairnessMetricName = Literal[
    "demographic_parity_difference",
    "equalized_odds_difference",
    "accuracy_difference",
    "mae_difference",
]
FAIRNESS_RATE_BOUND = (
    "spec.fairness.threshold: a difference of rates must be at most 1"
    " (a larger MAE gap needs metric: mae_difference)"
)


class FairnessRule(Model):
    """Live fairness across the groups of one sensitive feature, from joined labels counted
    per group (groups from the feedback items' ``groups``, or from the model input of that
    name when the version's ``spec.fairness`` lists it).

    Fires only when a one-sided test between the extreme groups shows the metric above
    ``threshold`` at ``confidence`` (see :mod:`modelops.drift.fairness_live`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.metric) && self.metric == 'mae_difference')"
                    " || self.threshold <= 1.0",
                    "message": FAIRNESS_RATE_BOUND,
                }
            ]
        }
    )

    sensitive_feature: str = Field(min_length=1, max_length=256)
    """The feature whose groups are compared, e.g. ``sex``."""
    metric: FairnessMetricName | None = None
    """fairlearn's name: ``demographic_parity_difference``, ``equalized_odds_difference``,
    ``accuracy_difference`` (classifiers), ``mae_difference`` (regressors); by the version's
    task when omitted (demographic parity, MAE)."""
    threshold: float = Field(ge=0)
    """The largest difference between groups tolerated (a share for rates, the target's unit
    for MAE): fires when the live metric is shown above it."""
    positive_label: str | None = Field(default=None, max_length=256)
    """The favourable class of demographic parity and equalized odds (one-vs-rest); the
    version's ``spec.fairness.positiveLabel``, else the second of two classes, when omitted."""
    min_labels: int = Field(default=100, ge=1)
    """Joined labels a group needs to be tested; a group with fewer (and labels) leaves the
    verdict Unknown unless the others already show a violation."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    """Of the test (Bonferroni-corrected for the pairs of groups that could be the extremes)."""
    window: str | None = Field(default=None, pattern=DURATION_PATTERN)
    """Labels joined over this long count (default: ``spec.quality.window``, else the
    monitor's ``window``)."""

    @model_validator(mode="after")
    def _rate_bound(self) -> FairnessRule:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        if self.metric != "mae_difference" and self.threshold > 1:
            raise ValueError(FAIRNESS_RATE_BOUND)
        return self


class DriftMonitorSpec(Model):
    deployment: str = Field(pattern=DNS_1035_PATTERN, max_length=MAX_NAME_LENGTH)
    """The modelops Deployment whose traffic is watched."""
    traffic: Literal["auto", "canary", "stable"] = "auto"
    """``auto``: the canary while one takes traffic, else the stable version."""
    version: str | None = None
    """Watch this ModelVersion instead of the traffic role."""
    features: list[str] | None = None
    """Features to test; all in the signature when omitted."""
    method: DriftMethod | None = None
    """Method for every feature; Evidently's defaults by type and size when omitted."""
    threshold: float | None = Field(default=None, ge=0)
    per_feature: dict[str, FeatureRule] = Field(default_factory=dict)
    drift_share: float = Field(default=0.5, gt=0, le=1)
    """Dataset drift when at least this share of features drift."""
    prediction_drift: bool = False
    """Also test the predicted class distribution."""
    window: str = Field(default="5m", pattern=DURATION_PATTERN)
    interval: str = Field(default="30s", pattern=DURATION_PATTERN)
    min_samples: int = Field(default=100, ge=1)
    action: Literal["rollback", "alert", "retrain"] = "alert"
    retrain: Retrain | None = None
    quality: QualityRule | None = None
    """Also watch live quality from joined labels (condition ``Underperforming``); input drift
    is checked as always."""
    fairness: FairnessRule | None = None
    """Also watch live fairness per group from joined labels (condition ``FairnessViolated``)."""

    @model_validator(mode="after")
    def _retrain_has_template(self) -> DriftMonitorSpec:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        if self.action == "retrain" and self.retrain is None:
            raise ValueError("action: retrain needs spec.retrain.template")
        return self


DriftPhase = Literal[
    "Pending", "Healthy", "Drifted", "Underperforming", "FairnessViolated", "InsufficientData"
]
"""``Underperforming`` (a quality rule fires) wins over the input-drift phases, ``Drifted``
included: measured harm is the stronger finding; ``FairnessViolated`` (the fairness rule
fires) wins over the input-drift phases, not over ``Underperforming``. The conditions say what
each check found."""


class FeatureScore(Model):
    name: str
    method: str
    score: float | None = None
    """None when either side has no values."""
    threshold: float
    drifted: bool


QualityDecision = Literal["Healthy", "Underperforming", "InsufficientLabels", "Unknown"]


class QualityTest(Model):
    """One quality rule's one-sided z-test (:class:`modelops.drift.quality.Comparison`).

    Numbers are None while there are too few labels to test."""

    kind: Literal["threshold", "stable", "training"]
    """``threshold``, or the baseline: another version's live quality, or held-out metrics."""
    against: float | None = None
    """The bound (``threshold``) or the baseline's value (``maxDegradation``)."""
    version: str | None = None
    """The version whose quality is the baseline (None for a threshold)."""
    labels: int | None = None
    """Labels of a live baseline (None for a number)."""
    margin: float = 0.0
    difference: float | None = None
    """Signed so that positive is better: accuracy - against, or against - MAE."""
    z: float | None = None
    p_value: float | None = None
    """One-sided p-value of "not worse than ``against`` by more than ``margin``": small means
    shown worse (fires below ``1 - confidence``)."""
    worse: bool = False
    """Shown worse at the rule's confidence: the rule fires."""


class FeedbackCounts(Model):
    """Feedback items the serving pods counted over the quality window: those of the monitored
    version, plus the Deployment's items no version could be found for (``unknown``,
    ``expired``; written under the pseudo-version ``-``)."""

    received: int = 0
    joined: int = 0
    """Labels joined with a prediction of the version (the ``labels`` tested)."""
    duplicate: int = 0
    """A second label for a request id already joined."""
    mismatched: int = 0
    """A label that does not fit the prediction (a target for a classifier, or the reverse),
    or sent for a version that did not answer the id."""
    unknown: int = 0
    """Request ids no pod remembered answering."""
    expired: int = 0
    """Request ids answered too long ago to be remembered."""


class QualityStatus(Model):
    """What the last quality check measured on the monitored version (``status.version``)."""

    metric: QualityMetric
    value: float | None = None
    """The metric on the joined labels (None without labels)."""
    labels: int = 0
    accuracy: float | None = None
    f1: float | None = None
    """Macro-averaged over the labels seen, as scikit-learn's ``f1_score(average="macro")``."""
    mae: float | None = None
    rmse: float | None = None
    window: str
    confidence: float
    decision: QualityDecision
    threshold: QualityTest | None = None
    """With ``spec.quality.threshold``."""
    baseline: QualityTest | None = None
    """With ``spec.quality.maxDegradation``."""
    feedback: FeedbackCounts | None = None


FairnessDecision = Literal["Fair", "Violated", "InsufficientLabels", "Unknown"]


class FairnessGroupStatus(Model):
    """One group's joined labels and rates (fairlearn's names: ``selection_rate``,
    ``true_positive_rate``, ``false_positive_rate``, ``accuracy``, ``mae``)."""

    group: str
    labels: int = 0
    rates: dict[str, float] = Field(default_factory=dict)
    """Undefined rates (a true-positive rate without positives) are left out."""
    tested: bool = False
    """At least ``minLabels`` labels: taken into the test."""


class FairnessRateTest(Model):
    """One rate's one-sided test between the tested groups with the highest and lowest rate
    (:class:`modelops.drift.fairness_live.RateTest`); numbers None when it could not run."""

    rate: str
    high: str | None = None
    low: str | None = None
    difference: float | None = None
    z: float | None = None
    p_value: float | None = None
    """One-sided p-value of "the difference is at most the threshold", before the Bonferroni
    correction (fires when ``z`` exceeds ``criticalZ``)."""
    critical_z: float | None = None
    violated: bool = False


class FairnessStatus(Model):
    """What the last fairness check measured on the monitored version (``status.version``)."""

    sensitive_feature: str
    metric: FairnessMetricName
    value: float | None = None
    """fairlearn's value of the metric over the groups with labels (None without two)."""
    threshold: float
    positive_label: str | None = None
    labels: int = 0
    """Labels joined with a group of the feature, all groups together."""
    window: str
    confidence: float
    decision: FairnessDecision
    groups: list[FairnessGroupStatus] = Field(default_factory=list)
    tests: list[FairnessRateTest] = Field(default_factory=list)


class DataVersion(Model):
    """The dataset object the monitor last trained on, or first found (the baseline)."""

    uri: str
    """The object, or the prefix when nothing was under it."""
    etag: str | None = None
    """Absent when nothing was under the prefix."""
    last_modified: str | None = None
    size: int | None = None


class DriftMonitorStatus(Model):
    phase: DriftPhase | None = None
    version: str | None = None
    last_check_time: str | None = None
    samples: int | None = None
    drifted_share: float | None = None
    features: list[FeatureScore] = Field(default_factory=list)
    firings: int = 0
    last_fired_time: str | None = None
    retrains: int = 0
    last_retrain: str | None = None
    last_retrain_time: str | None = None
    last_trigger: RetrainTrigger | None = None
    """What started the last retraining run."""
    last_schedule_time: str | None = None
    """The last slot of the schedule handled: run, skipped in a cooldown, or the baseline."""
    next_schedule_time: str | None = None
    data_version: DataVersion | None = None
    """With onNewData: the dataset object last accounted for; a newer one is new data."""
    quality: QualityStatus | None = None
    """With ``spec.quality``: live quality, the tests and their decision."""
    fairness: FairnessStatus | None = None
    """With ``spec.fairness``: the groups, their rates, the test and its decision."""
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD)


class DriftMonitor(Resource):
    """A DriftMonitor watches live data for drift and rolls back, alerts or retrains."""

    name_rule = NameRule(
        NAME_PATTERN,
        "a DriftMonitor's name must be a DNS label of at most 63 characters (lowercase letters,"
        " digits and '-'): the TrainingRuns it creates carry it as a label value",
    )

    spec: DriftMonitorSpec = Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.action != 'retrain' || has(self.retrain)",
                    "message": "action: retrain needs spec.retrain.template",
                }
            ]
        }
    )
    status: DriftMonitorStatus = Field(default_factory=DriftMonitorStatus)
