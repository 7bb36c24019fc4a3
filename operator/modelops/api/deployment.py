"""Deployment (deployments.modelops.dev): serve a model, canary a new version, roll back."""

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
    ResourceRequirements,
)

VERSION_REF_PATTERN = r"^(latest|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"


class Step(Model):
    weight: int = Field(ge=0, le=100)
    """Percent of requests the canary answers during this step."""
    pause: str = Field(default="30s", pattern=DURATION_PATTERN)
    """How long the step lasts before the next one (or promotion after the last)."""


class Stable(Model):
    version: str = Field(default="latest", pattern=VERSION_REF_PATTERN, max_length=MAX_NAME_LENGTH)
    """A ModelVersion name, or ``latest``: the newest Ready version passing ``gates``."""


class Canary(Model):
    version: str = Field(pattern=VERSION_REF_PATTERN, max_length=MAX_NAME_LENGTH)
    """A ModelVersion name, or ``latest``."""
    steps: list[Step] = Field(
        default_factory=lambda: [Step(weight=10), Step(weight=50)],
        min_length=1,
        max_length=20,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(a, self.exists_one(b, b.weight == a.weight))",
                    "message": "canary step weights must be distinct",
                },
                {
                    "rule": "self.map(s, s.weight).isSorted()",
                    "message": "canary step weights must increase",
                },
            ]
        },
    )


class Rollback(Model):
    """When a canary is rolled back by itself."""

    drift_monitors: list[str] = Field(default_factory=list)
    """DriftMonitors whose ``Drifted=True`` rolls the canary back."""
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    """Roll back when the canary's error rate exceeds this (needs ``minSamples`` requests)."""
    min_samples: int = Field(default=50, ge=1)


class ParentRef(Model):
    name: str
    namespace: str | None = None
    section_name: str | None = None


class Gateway(Model):
    parent_refs: list[ParentRef] = Field(min_length=1)


AUTOSCALING_BOUNDS = "autoscaling.maxReplicas must be at least minReplicas"


class Autoscaling(Model):
    """A HorizontalPodAutoscaler on CPU per serving Deployment; it then owns their replicas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.maxReplicas >= self.minReplicas", "message": AUTOSCALING_BOUNDS}
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=100)
    """Fewest serving pods (per version in ``gateway`` routing)."""
    max_replicas: int = Field(ge=1, le=100)
    """Most serving pods (per version in ``gateway`` routing); at least ``minReplicas``."""
    target_cpu_utilization: int = Field(default=80, ge=1, le=100, alias="targetCPUUtilization")
    """Average CPU use, in percent of the pods' CPU request, the autoscaler aims at."""

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Autoscaling:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"{AUTOSCALING_BOUNDS}: {self.max_replicas} < {self.min_replicas}")
        return self


class DeploymentSpec(Model):
    model: str = Field(pattern=NAME_PATTERN, max_length=40)
    stable: Stable = Field(default_factory=Stable)
    canary: Canary | None = None
    gates: dict[str, float] = Field(default_factory=dict)
    """Minimum metrics a version needs to be chosen as ``latest``."""
    rollback: Rollback = Field(default_factory=Rollback)
    replicas: int = Field(default=1, ge=0, le=100)
    """Serving pods (per version in ``gateway`` routing); ignored with ``autoscaling``."""
    autoscaling: Autoscaling | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    image: str | None = None
    """Server image; the operator's default runtime image when omitted."""
    routing: Literal["model", "gateway"] = "model"
    gateway: Gateway | None = None

    @model_validator(mode="after")
    def _gateway_has_parents(self) -> DeploymentSpec:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        if self.routing == "gateway" and self.gateway is None:
            raise ValueError("routing: gateway needs spec.gateway.parentRefs")
        return self


DeploymentPhase = Literal["Pending", "Stable", "Progressing", "Promoted", "RolledBack", "Degraded"]


class HistoryEntry(Model):
    time: str
    event: str
    version: str | None = None
    reason: str
    message: str = ""


class DeploymentStatus(Model):
    phase: DeploymentPhase | None = None
    stable_version: str | None = None
    canary_version: str | None = None
    canary_weight: int | None = None
    step: int | None = None
    step_started_at: str | None = None
    rejected_versions: list[str] = Field(default_factory=list)
    ready_replicas: int | None = None
    replicas: int | None = None
    """Serving pods now: the autoscaler's currentReplicas, else the apps Deployment's."""
    desired_replicas: int | None = None
    """Serving pods wanted: the autoscaler's desiredReplicas, else the apps Deployment's."""
    url: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD)


class Deployment(Resource):
    """A Deployment serves a model's stable version and canaries new ones."""

    name_rule = NameRule(
        DNS_1035_PATTERN,
        "a Deployment's name must be a DNS-1035 label of at most 63 characters (lowercase"
        " letters, digits and '-', starting with a letter): its Service is named after it",
    )

    spec: DeploymentSpec = Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.routing != 'gateway' || has(self.gateway)",
                    "message": "routing: gateway needs spec.gateway.parentRefs",
                }
            ]
        }
    )
    status: DeploymentStatus = Field(default_factory=DeploymentStatus)
