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


HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
"""An HTTP field name: a ``token`` of RFC 9110, section 5.1."""
ABTEST_NEEDS_ANALYSIS = "canary.mode: abtest needs canary.analysis: the quality test decides"
ABTEST_BLOCK_NEEDS_MODE = "canary.abtest is only read with canary.mode: abtest"
SHADOW_BLOCK_NEEDS_MODE = "canary.shadow is only read with canary.mode: shadow"
ABTEST_NO_TIMEOUT = (
    "canary.analysis.timeout is not used with canary.mode: abtest (abtest.maxDuration ends the"
    " test)"
)
SHADOW_NEEDS_MODEL_ROUTING = (
    "canary.mode: shadow needs routing: model (the serving pods of both versions answer each"
    " request and compare); a Gateway cannot mirror traffic and measure agreement"
)
STICKY_HEADER_NEEDS_MODEL_ROUTING = (
    "canary.abtest.stickyHeader needs routing: model (a Gateway splits by weight per request)"
)


class Analysis(Model):
    """Live quality of the canary against stable, from the true labels clients send back to
    the serving pods, tested by :func:`modelops.drift.quality.compare`."""

    metric: Literal["accuracy", "mae"] | None = None
    """``accuracy`` (classifiers) or ``mae`` (regressors); by the versions' task when omitted."""
    margin: float = Field(default=0.0, ge=0)
    """Non-inferiority margin in the metric's units: the canary passes when shown no worse
    than stable by this much (0.02: two accuracy points; 0: shown better)."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    """Of each one-sided test."""
    min_labels: int = Field(default=100, ge=1)
    """Joined labels each version needs in the window before anything is decided."""
    window: str = Field(default="10m", pattern=DURATION_PATTERN)
    """Labels joined over this long count, for both versions (and a shadow's agreement)."""
    timeout: str | None = Field(default=None, pattern=DURATION_PATTERN)
    """No decision this long after the step's pause (or the shadow's duration) ended: roll back,
    reason ``AnalysisInconclusive``. Omitted: hold the canary for as long as it takes."""


class ABTest(Model):
    """A fixed split until the quality test decides (``canary.mode: abtest``)."""

    weight: int = Field(default=50, ge=1, le=99)
    """Percent of requests the candidate answers for the whole test."""
    sticky_header: str | None = Field(
        default=None, pattern=HEADER_NAME_PATTERN, min_length=1, max_length=128
    )
    """Route by this request header's value (e.g. a user id) instead of the request id."""
    max_duration: str = Field(default="24h", pattern=DURATION_PATTERN)
    """Undecided this long after the test started: keep stable, roll the candidate back."""


class Shadow(Model):
    """The candidate answers a copy of every request; clients get stable's answer only
    (``canary.mode: shadow``)."""

    duration: str = Field(default="10m", pattern=DURATION_PATTERN)
    """How long to shadow before the gates decide."""
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Classifiers: the share of compared rows where the candidate predicted stable's class
    must be at least this."""
    max_mean_abs_difference: float | None = Field(default=None, ge=0)
    """Regressors: the mean of |candidate - stable| over compared rows must be at most this
    (in the target's units)."""
    min_compared: int = Field(default=100, ge=1)
    """Rows compared with stable (over ``analysis.window``, default 10m) before an agreement
    gate decides."""


class Canary(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.mode != 'abtest' || has(self.analysis)",
                    "message": ABTEST_NEEDS_ANALYSIS,
                },
                {
                    "rule": "!has(self.abtest) || self.mode == 'abtest'",
                    "message": ABTEST_BLOCK_NEEDS_MODE,
                },
                {
                    "rule": "!has(self.shadow) || self.mode == 'shadow'",
                    "message": SHADOW_BLOCK_NEEDS_MODE,
                },
                {
                    "rule": "self.mode != 'abtest' || !has(self.analysis)"
                    " || !has(self.analysis.timeout)",
                    "message": ABTEST_NO_TIMEOUT,
                },
            ]
        }
    )

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
    mode: Literal["canary", "abtest", "shadow"] = "canary"
    """``canary``: walk ``steps``; ``abtest``: a fixed split until the quality test decides;
    ``shadow``: the candidate answers copies of requests, never clients. ``steps`` are read
    only in ``canary`` mode."""
    analysis: Analysis | None = None
    """Require the canary to be shown not worse than stable on live quality."""
    abtest: ABTest | None = None
    shadow: Shadow | None = None
    require_approval: bool = False
    """Hold the canary where it would be promoted (after the last step's pause, a won A/B
    test, passed shadow gates; every analysis passed) until ``modelops.dev/action=approve``;
    ``promote`` is then ignored. Who may approve: the ``approve`` verb on
    ``deployments.modelops.dev`` (ClusterRole ``modelops-approver``), enforced by the
    ValidatingAdmissionPolicy ``modelops-approvals``."""

    @model_validator(mode="after")
    def _combinations(self) -> Canary:
        # The CRD's CEL rules say the same; this catches objects that bypassed admission.
        if self.mode == "abtest" and self.analysis is None:
            raise ValueError(ABTEST_NEEDS_ANALYSIS)
        if self.abtest is not None and self.mode != "abtest":
            raise ValueError(ABTEST_BLOCK_NEEDS_MODE)
        if self.shadow is not None and self.mode != "shadow":
            raise ValueError(SHADOW_BLOCK_NEEDS_MODE)
        if self.mode == "abtest" and self.analysis and self.analysis.timeout is not None:
            raise ValueError(ABTEST_NO_TIMEOUT)
        return self


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
    def _routing_combinations(self) -> DeploymentSpec:
        # The CRD's CEL rules say the same; this catches objects that bypassed admission.
        if self.routing == "gateway" and self.gateway is None:
            raise ValueError("routing: gateway needs spec.gateway.parentRefs")
        if self.routing == "gateway" and self.canary is not None:
            if self.canary.mode == "shadow":
                raise ValueError(SHADOW_NEEDS_MODEL_ROUTING)
            if self.canary.abtest is not None and self.canary.abtest.sticky_header is not None:
                raise ValueError(STICKY_HEADER_NEEDS_MODEL_ROUTING)
        return self


DeploymentPhase = Literal["Pending", "Stable", "Progressing", "Promoted", "RolledBack", "Degraded"]


AnalysisDecision = Literal["Passed", "Failed", "Undecided", "Unknown", "Inconclusive"]


class AnalysisStatus(Model):
    """The numbers of the last quality analysis of a canary (or A/B test, or shadow).

    ``difference`` is signed so that positive means the canary is better (accuracy: canary -
    stable; MAE: stable - canary); ``z = (difference + margin) / se``; ``pWorse`` is the
    one-sided p-value of "the canary is at most ``margin`` worse" (small: shown worse),
    ``pNotWorse`` that of "it is worse by ``margin`` or more" (small: shown not worse).
    Numbers that do not exist yet (too few labels) are left out.
    """

    mode: Literal["canary", "abtest", "shadow"]
    canary_version: str
    stable_version: str
    decision: AnalysisDecision
    """Passed (not worse / won / every shadow gate), Failed (shown worse / lost / disagrees),
    Undecided (too little evidence yet), Unknown (could not be evaluated), Inconclusive
    (timed out undecided)."""
    message: str = ""
    metric: str | None = None
    canary_value: float | None = None
    canary_labels: int | None = None
    stable_value: float | None = None
    stable_labels: int | None = None
    difference: float | None = None
    margin: float | None = None
    confidence: float | None = None
    z: float | None = None
    p_worse: float | None = None
    p_not_worse: float | None = None
    agreement: float | None = None
    """Shadow of a classifier: the share of compared rows where the canary agreed."""
    mean_abs_difference: float | None = None
    """Shadow of a regressor: the mean of |canary - stable| over compared rows."""
    compared: int | None = None
    """Shadow: rows the canary answered beside stable."""
    time: str


class HistoryEntry(Model):
    time: str
    event: str
    version: str | None = None
    reason: str
    message: str = ""
    analysis: AnalysisStatus | None = None
    """The numbers a quality decision was taken on."""
    approved_by: str | None = None
    """``Approved`` entries: the user named by the ``modelops.dev/approved-by`` annotation set
    with the approval (the admission policy checks it is the user who set it); absent when the
    approval named no one (the API server's audit log then says who set the annotation)."""


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
    """Serving pods now: the apps Deployment's status.replicas."""
    desired_replicas: int | None = None
    """Serving pods wanted: the apps Deployment's spec.replicas (the autoscaler's decision with
    spec.autoscaling)."""
    url: str | None = None
    analysis: AnalysisStatus | None = None
    """The last quality analysis of the canary in flight (or of the last one)."""
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
                },
                {
                    "rule": "self.routing != 'gateway' || !has(self.canary)"
                    " || self.canary.mode != 'shadow'",
                    "message": SHADOW_NEEDS_MODEL_ROUTING,
                },
                {
                    "rule": "self.routing != 'gateway' || !has(self.canary)"
                    " || !has(self.canary.abtest) || !has(self.canary.abtest.stickyHeader)",
                    "message": STICKY_HEADER_NEEDS_MODEL_ROUTING,
                },
            ]
        }
    )
    status: DeploymentStatus = Field(default_factory=DeploymentStatus)
