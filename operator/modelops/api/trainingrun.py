"""TrainingRun: fit one estimator on one dataset, and register the result."""

from __future__ import annotations

from typing import Annotated, Literal, Self, get_args

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    model_validator,
)

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
REGRESSORS: tuple[str, ...] = (
    "LinearRegression",
    "Ridge",
    "Lasso",
    "RandomForestRegressor",
    "GradientBoostingRegressor",
    "HistGradientBoostingRegressor",
    "DecisionTreeRegressor",
)
"""The estimators of the allow-list that are regressors; the others are classifiers."""

ParamValue = int | float | str | bool | None

RetrainTrigger = Literal["drift", "quality", "new-data", "schedule"]
"""What made a DriftMonitor start a retraining run: its drift check fired, a quality rule
fired, new data arrived under its dataset URI, or a slot of its cron schedule came."""


OBJECT_URI_MESSAGE = (
    "spec.dataset.uri must name one object, s3://<bucket>/<key>, not a prefix ending in '/'"
    " (a prefix is allowed only in a DriftMonitor's spec.retrain.template with onNewData)"
)


FairnessMetric = Literal[
    "demographic_parity_difference", "equalized_odds_difference", "accuracy", "recall", "mae"
]
"""What the trainer measures per sensitive group (fairlearn's names): the two differences
of classifiers (demographic parity, equalized odds), and per-group accuracy and recall
(classifiers) or MAE (regressors)."""
CLASSIFICATION_FAIRNESS: tuple[str, ...] = (
    "demographic_parity_difference",
    "equalized_odds_difference",
    "accuracy",
    "recall",
)
"""The default metrics of a classifier, and the only ones it may name."""
REGRESSION_FAIRNESS: tuple[str, ...] = ("mae",)
"""The default metrics of a regressor, and the only ones it may name."""
MAX_SENSITIVE_FEATURES = 5


def _label_as_text(value: object) -> object:
    # YAML's `positiveLabel: 1` arrives as an integer; class labels are compared as text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ClassLabel = Annotated[
    str,
    BeforeValidator(_label_as_text),
    Field(min_length=1, max_length=253),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]
"""A class label as written in YAML: text (``">50K"``) or a whole number (``1``)."""


class Fairness(Model):
    """Fairness measured on the held-out rows, per group of each sensitive column."""

    sensitive_features: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        min_length=1,
        max_length=MAX_SENSITIVE_FEATURES,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Columns of the dataset (1 to 5); each is read for grouping and is a model input only
    when ``dataset.features`` names it."""
    metrics: list[FairnessMetric] | None = Field(
        default=None,
        min_length=1,
        max_length=len(get_args(FairnessMetric)),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Default by task: all four classifier metrics, or ``mae`` for a regressor."""
    positive_label: ClassLabel | None = None
    """The favourable class that demographic parity and equalized odds are computed on
    (one-vs-rest); default for two classes: the second of the sorted classes (``1`` of 0/1)."""

    def metrics_for(self, estimator: str) -> tuple[str, ...]:
        """The metrics to measure for ``estimator``: the named ones, else the task's default."""
        if self.metrics:
            return tuple(self.metrics)
        return REGRESSION_FAIRNESS if estimator in REGRESSORS else CLASSIFICATION_FAIRNESS


FAIRNESS_TASK_MESSAGE = (
    "spec.fairness.metrics must fit the estimator's task: a regressor takes only mae, a"
    " classifier demographic_parity_difference, equalized_odds_difference, accuracy, recall"
)
SENSITIVE_TARGET_MESSAGE = "spec.fairness.sensitiveFeatures must not name the target column"
_REGRESSOR_LIST = ", ".join(f"'{name}'" for name in REGRESSORS)
TEMPLATE_RULES: list[JsonValue] = [
    {
        "rule": "!has(self.fairness) || !has(self.fairness.metrics) || "
        f"(self.estimator.name in [{_REGRESSOR_LIST}] ? "
        "self.fairness.metrics.all(m, m == 'mae') : self.fairness.metrics.all(m, m != 'mae'))",
        "message": FAIRNESS_TASK_MESSAGE,
        "fieldPath": ".fairness.metrics",
    },
    {
        "rule": "!has(self.fairness) || !(self.dataset.target in self.fairness.sensitiveFeatures)",
        "message": SENSITIVE_TARGET_MESSAGE,
        "fieldPath": ".fairness.sensitiveFeatures",
    },
]
"""CEL rules of a TrainingRun spec (and a retrain template); the models check the same."""


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
    sha256: str | None = Field(default=None, pattern=r"^[a-f0-9]{64}$")
    """The digest the object's bytes must have: another fails the run (``DatasetChanged``).
    ``modelops reproduce`` sets it; a retrain template should not (new data differs)."""


class Estimator(Model):
    """A scikit-learn estimator from the allow-list, with its constructor parameters."""

    name: EstimatorName
    params: dict[str, ParamValue] = Field(default_factory=dict)


class Register(Model):
    """Whether and when a successful run becomes a ModelVersion."""

    enabled: bool = True
    min_metrics: dict[str, float] = Field(default_factory=dict)
    """Gates: each named metric must be at least this value; a lower-is-better one (MAE,
    the fairness differences) at most this value."""
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    """Passed to the ModelVersion: Delete removes its artifacts when it is deleted."""


class TrainingRunTemplate(Model):
    """The fields of a TrainingRun's spec, as a DriftMonitor's retrain template holds them."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": TEMPLATE_RULES})

    model: str = Field(pattern=NAME_PATTERN, max_length=40)
    """Model name; ModelVersions are named ``<model>-v<N>``."""
    dataset: Dataset
    estimator: Estimator
    seed: int = Field(default=0, ge=0)
    test_size: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of rows held out for evaluation."""
    registration: Register = Field(default_factory=Register, alias="register")
    fairness: Fairness | None = None
    """Sensitive columns and fairness metrics, measured on the held-out rows."""
    image: str | None = None
    """Trainer image; the operator's default runtime image when omitted."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    backoff_limit: int = Field(default=0, ge=0, le=10)
    active_deadline_seconds: int = Field(default=3600, ge=1)
    ttl_seconds_after_finished: int = Field(default=86400, ge=0)

    @model_validator(mode="after")
    def _fairness_fits(self) -> Self:
        # The CRD's CEL rules say the same; this catches objects that bypassed admission.
        fairness = self.fairness
        if fairness is None:
            return self
        if fairness.metrics:
            allowed = (
                REGRESSION_FAIRNESS
                if self.estimator.name in REGRESSORS
                else CLASSIFICATION_FAIRNESS
            )
            if any(m not in allowed for m in fairness.metrics):
                raise ValueError(FAIRNESS_TASK_MESSAGE)
        if self.dataset.target in fairness.sensitive_features:
            raise ValueError(SENSITIVE_TARGET_MESSAGE)
        for name, values in (
            ("sensitiveFeatures", fairness.sensitive_features),
            ("metrics", fairness.metrics or []),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"spec.fairness.{name} names a column or metric twice")
        return self


class TrainingRunSpec(TrainingRunTemplate):
    """A TrainingRun's spec: a template whose dataset is one object, never a prefix."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                *TEMPLATE_RULES,
                {
                    "rule": "!self.dataset.uri.endsWith('/')",
                    "message": OBJECT_URI_MESSAGE,
                    "fieldPath": ".dataset.uri",
                },
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
