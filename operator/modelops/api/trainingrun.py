"""TrainingRun: fit one estimator on one dataset, and register the result."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import ConfigDict, Field, model_validator

from modelops.api.common import (
    CONDITIONS_FIELD,
    NAME_PATTERN,
    ArtifactRef,
    Condition,
    Model,
    NameRule,
    Resource,
    ResourceRequirements,
)

EstimatorName = Literal[
    "LogisticRegression",
    "RandomForestClassifier",
    "GradientBoostingClassifier",
    "HistGradientBoostingClassifier",
    "DecisionTreeClassifier",
    "KNeighborsClassifier",
    "LinearRegression",
    "Ridge",
    "Lasso",
    "RandomForestRegressor",
    "GradientBoostingRegressor",
    "HistGradientBoostingRegressor",
    "DecisionTreeRegressor",
]

ESTIMATORS: tuple[str, ...] = get_args(EstimatorName)
"""The estimators a TrainingRun may name; arbitrary import paths are never accepted."""

ParamValue = int | float | str | bool | None

RetrainTrigger = Literal["drift", "quality", "new-data", "schedule"]
"""What made a DriftMonitor start a retraining run: its drift check fired, a quality rule
fired, new data arrived under its dataset URI, or a slot of its cron schedule came."""


OBJECT_URI_MESSAGE = (
    "spec.dataset.uri must name one object, s3://<bucket>/<key>, not a prefix ending in '/'"
    " (a prefix is allowed only in a DriftMonitor's spec.retrain.template with onNewData)"
)


class Dataset(Model):
    """Where the training data lives and which column is the target."""

    uri: str = Field(pattern=r"^s3://[^/]+/.+$")
    """``s3://<bucket>/<key>`` of a CSV or Parquet file; a prefix only in a retrain template."""
    format: Literal["csv", "parquet"] | None = None
    """File format; inferred from the key's extension when omitted."""
    target: str = Field(min_length=1)
    """The column to predict."""
    features: list[str] | None = None
    """Feature columns, in order; all other columns when omitted."""
    categorical: list[str] | None = None
    """Columns to treat as categorical even when numeric."""


class Estimator(Model):
    """A scikit-learn estimator from the allow-list, with its constructor parameters."""

    name: EstimatorName
    params: dict[str, ParamValue] = Field(default_factory=dict)


class Register(Model):
    """Whether and when a successful run becomes a ModelVersion."""

    enabled: bool = True
    min_metrics: dict[str, float] = Field(default_factory=dict)
    """Gates: each named metric must be at least this value (MAE: at most)."""
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    """Passed to the ModelVersion: Delete removes its artifacts when it is deleted."""


class TrainingRunTemplate(Model):
    """The fields of a TrainingRun's spec, as a DriftMonitor's retrain template holds them."""

    model: str = Field(pattern=NAME_PATTERN, max_length=40)
    """Model name; ModelVersions are named ``<model>-v<N>``."""
    dataset: Dataset
    estimator: Estimator
    seed: int = Field(default=0, ge=0)
    test_size: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of rows held out for evaluation."""
    registration: Register = Field(default_factory=Register, alias="register")
    image: str | None = None
    """Trainer image; the operator's default runtime image when omitted."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    backoff_limit: int = Field(default=0, ge=0, le=10)
    active_deadline_seconds: int = Field(default=3600, ge=1)
    ttl_seconds_after_finished: int = Field(default=86400, ge=0)


class TrainingRunSpec(TrainingRunTemplate):
    """A TrainingRun's spec: a template whose dataset is one object, never a prefix."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.dataset.uri.endsWith('/')",
                    "message": OBJECT_URI_MESSAGE,
                    "fieldPath": ".dataset.uri",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _dataset_is_an_object(self) -> TrainingRunSpec:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        if self.dataset.uri.endswith("/"):
            raise ValueError(OBJECT_URI_MESSAGE)
        return self


TrainingPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class TrainingRunStatus(Model):
    phase: TrainingPhase | None = None
    job_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    metrics: dict[str, float] | None = None
    metrics_summary: str | None = None
    """Metrics as one short line, for ``kubectl get``."""
    artifact: ArtifactRef | None = None
    profile_uri: str | None = None
    model_version: str | None = None
    """The ModelVersion this run registered, if any."""
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD)


class TrainingRun(Resource):
    """A TrainingRun trains a model in a Job and registers it as a ModelVersion."""

    name_rule = NameRule(
        NAME_PATTERN,
        "a TrainingRun's name must be a DNS label of at most 63 characters (lowercase letters,"
        " digits and '-'): its Job and pods carry it as a label value",
    )

    spec: TrainingRunSpec
    status: TrainingRunStatus = Field(default_factory=TrainingRunStatus)
