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
from modelops.api.trainingrun import RetrainTrigger


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


class ModelVersionSpec(Model):
    model: str = Field(pattern=NAME_PATTERN, max_length=40)
    version: int = Field(ge=1)
    artifact: ArtifactRef
    profile: ArtifactRef | None = None
    """Reference profile the drift monitors compare live traffic with."""
    signature: Signature
    metrics: dict[str, float] = Field(default_factory=dict)
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
