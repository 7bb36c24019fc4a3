"""ModelVersion: an immutable, verified record of one trained model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelops.api.common import (
    CONDITIONS_FIELD,
    NAME_PATTERN,
    ArtifactRef,
    Condition,
    Model,
    NameRule,
    Resource,
)
from modelops.api.trainingrun import MAX_SENSITIVE_FEATURES, RetrainTrigger


class Feature(Model):
    name: str
    datatype: Literal["FP64", "INT64", "BYTES", "BOOL"]
    """Open Inference Protocol datatype the server accepts for this feature."""
    categories: list[str] | None = None


class Signature(Model):
    """What the model takes and gives."""

    task: Literal["classification", "regression"]
    inputs: list[Feature]
    classes: list[str] | None = None


class Lineage(Model):
    """Where the version came from."""

    training_run: str
    run_uid: str | None = None
    dataset_uri: str
    dataset_sha256: str | None = None
    estimator: str
    params: dict[str, int | float | str | bool | None] = Field(default_factory=dict)
    seed: int
    image: str | None = None
    trigger: RetrainTrigger | None = None
    """What started the run, when a DriftMonitor did (annotation ``modelops.dev/trigger``)."""
    trigger_detail: str | None = Field(default=None, max_length=1024)
    """Why, in one line (annotation ``modelops.dev/trigger-detail``)."""
    target: str | None = None
    """The target column (``dataset.target``); with ``testSize``, what ``reproduce`` needs."""
    test_size: float | None = Field(default=None, gt=0, lt=1)
    dataset_format: Literal["csv", "parquet"] | None = None
    """``dataset.format`` when the run named one (else inferred from the key)."""


MAX_GROUPS = 50
"""Groups listed per sensitive feature: the largest by held-out rows; the rest are counted in
``omittedGroups`` (and still measured: the differences are over every group)."""


class FairnessGroup(Model):
    """One value of a sensitive column on the held-out rows."""

    value: str = Field(max_length=256)
    """The column's value as text (``(missing)`` for a missing one), cut to 256 characters."""
    count: int = Field(ge=0)
    """Held-out rows in the group."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """``selection_rate``, ``true_positive_rate``, ``false_positive_rate``, ``accuracy``,
    ``recall`` or ``mae`` of the group, as the metrics asked need them; undefined ones
    (recall of a group without positives) are left out."""


class FeatureFairness(Model):
    """The fairness of the model across the groups of one sensitive column."""

    name: str
    metrics: dict[str, float] = Field(default_factory=dict)
    """This column's scalars: the differences (largest minus smallest group value), worst
    group values (``accuracy_group_min``, ``mae_group_max``, ...)."""
    groups: list[FairnessGroup] = Field(default_factory=list, max_length=MAX_GROUPS)
    omitted_groups: int = Field(default=0, ge=0)
    """Groups beyond the ``MAX_GROUPS`` largest, not listed."""


class FairnessRecord(Model):
    """Fairness on the held-out rows, as the trainer measured it with fairlearn."""

    sensitive_features: list[str] = Field(max_length=MAX_SENSITIVE_FEATURES)
    positive_label: str | None = None
    """The class demographic parity and equalized odds were computed for (one-vs-rest)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """The worst value of each scalar across the sensitive columns (also in ``spec.metrics``,
    where gates read them)."""
    unmeasured: dict[str, str] = Field(default_factory=dict)
    """Each scalar asked for that has no value, and why."""
    features: list[FeatureFairness] = Field(default_factory=list, max_length=MAX_SENSITIVE_FEATURES)


class CardRef(Model):
    """The model card beside the model: JSON (the data) and HTML (the page)."""

    json_: ArtifactRef = Field(alias="json")
    html: ArtifactRef


class ModelVersionSpec(Model):
    model: str = Field(pattern=NAME_PATTERN, max_length=40)
    version: int = Field(ge=1)
    artifact: ArtifactRef
    profile: ArtifactRef | None = None
    """Reference profile the drift monitors compare live traffic with."""
    signature: Signature
    metrics: dict[str, float] = Field(default_factory=dict)
    fairness: FairnessRecord | None = None
    """With the run's ``spec.fairness``: per sensitive column, per group."""
    probe: ArtifactRef | None = None
    """Held-out rows and the model's predictions on them (``reproduce`` compares them)."""
    card: CardRef | None = None
    """The model card written at registration (``modelops card`` draws it anew)."""
    lineage: Lineage
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    """Delete removes the artifacts from the store when the ModelVersion is deleted."""


ModelVersionPhase = Literal["Pending", "Ready", "Failed"]


class ModelVersionStatus(Model):
    phase: ModelVersionPhase | None = None
    verified_at: str | None = None
    metrics_summary: str | None = None
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD)


class ModelVersion(Resource):
    """A ModelVersion is the immutable record of a trained model and its verified artifact."""

    name_rule = NameRule(
        NAME_PATTERN,
        "a ModelVersion's name must be a DNS label of at most 63 characters (lowercase letters,"
        " digits and '-'): the serving objects of a Deployment carry it as a label value",
    )

    spec: ModelVersionSpec = Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "ModelVersion spec is immutable"}
            ]
        }
    )
    status: ModelVersionStatus = Field(default_factory=ModelVersionStatus)
