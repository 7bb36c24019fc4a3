"""DriftMonitor: compare live traffic with the training data and act when it drifts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
from modelops.api.trainingrun import TrainingRunSpec

DriftMethod = Literal["wasserstein", "jensenshannon", "psi", "ks", "chisquare", "ztest"]


class FeatureRule(Model):
    method: DriftMethod | None = None
    threshold: float | None = Field(default=None, ge=0)


class Retrain(Model):
    template: TrainingRunSpec
    """Spec of the TrainingRun created when the monitor fires."""
    cooldown: str = Field(default="1h", pattern=DURATION_PATTERN)
    """At most one retraining per cooldown."""


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

    @model_validator(mode="after")
    def _retrain_has_template(self) -> DriftMonitorSpec:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        if self.action == "retrain" and self.retrain is None:
            raise ValueError("action: retrain needs spec.retrain.template")
        return self


DriftPhase = Literal["Pending", "Healthy", "Drifted", "InsufficientData"]


class FeatureScore(Model):
    name: str
    method: str
    score: float | None = None
    """None when either side has no values."""
    threshold: float
    drifted: bool


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
