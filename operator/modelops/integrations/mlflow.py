"""The operator's objects in MLflow's vocabulary: pure mapping, no I/O, no ``mlflow`` import.

A TrainingRun becomes an MLflow *run* (params, metrics, tags, a dataset input, the model file
as an artifact) in the *experiment* of its model; a ModelVersion becomes a *model version* of
the *registered model* of the same name, made from that run; a Deployment's stable and canary
versions become the registered model's *aliases* ``stable`` and ``canary``. The concepts are
MLflow Tracking's and the MLflow Model Registry's (https://mlflow.org/docs/latest/ml/tracking/,
https://mlflow.org/docs/latest/ml/model-registry/); the limits quoted below are those of
``mlflow/utils/validation.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelops import GROUP
from modelops.api.modelversion import ModelVersion
from modelops.api.trainingrun import TrainingRun

RUN_ID_ANNOTATION = f"{GROUP}/mlflow-run-id"
"""On a TrainingRun (and a ModelVersion): the MLflow run it was logged as."""
MODEL_VERSION_ANNOTATION = f"{GROUP}/mlflow-model-version"
"""On a ModelVersion: its version number in the MLflow Model Registry."""

ARTIFACT_PATH = "model"
"""Directory of the model file among the run's artifacts."""
ALIASES = ("stable", "canary")
"""Registered-model aliases that follow a Deployment's ``status.stableVersion`` and
``status.canaryVersion``."""

TAG_NAMESPACE = "modelops.namespace"
TAG_RUN_UID = "modelops.run_uid"
"""The TrainingRun's uid: finds a run logged before a restart lost its annotation."""
TAG_MODEL_VERSION_UID = "modelops.model_version_uid"
"""A ModelVersion's uid: finds its run (when no TrainingRun made it) and its version."""
TAG_TRAINING_RUN = "modelops.training_run"
TAG_MODEL_VERSION = "modelops.model_version"
TAG_DATASET_URI = "modelops.dataset.uri"
TAG_DATASET_SHA256 = "modelops.dataset.sha256"
TAG_ARTIFACT_URI = "modelops.artifact.uri"
TAG_ARTIFACT_SHA256 = "modelops.artifact.sha256"
TAG_ARTIFACT_LOGGED = "modelops.artifact.logged"
"""``true`` when the model file was uploaded to the run, ``false`` when it was too large."""
TAG_TRIGGER = "modelops.trigger"
TAG_IMAGE = "modelops.image"
TAG_VERSION = "modelops.version"
TAG_SOURCE_TYPE = "mlflow.source.type"
"""MLflow's own tag for what produced a run (NOTEBOOK, JOB, PROJECT, LOCAL, UNKNOWN)."""
TAG_NOTE = "mlflow.note.content"
"""MLflow's own tag for a run's description, shown in its UI."""

DIGEST_LENGTH = 36
"""MLflow keeps a dataset's digest in 36 characters (MAX_DATASET_DIGEST_SIZE)."""
MAX_PARAM_LENGTH = 6000
"""MLflow's limit on a param value (MAX_PARAM_VAL_LENGTH); longer values are cut."""
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class DatasetRecord:
    """An MLflow dataset input (``mlflow.entities.Dataset``): the training data by reference.

    ``digest`` is the dataset's sha256 cut to MLflow's 36 characters; the whole digest is in
    ``profile`` (JSON: ``sha256``, ``num_rows``) and in the run's tag ``modelops.dataset.sha256``.
    """

    name: str
    digest: str
    source_type: str
    source: str
    profile: str


@dataclass(frozen=True)
class ArtifactRecord:
    """The model file in the object store: ``s3://`` URI, sha256 (hex), size in bytes."""

    uri: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class RunRecord:
    """Everything one MLflow run is made of.

    ``key`` is the tag (name, value) that identifies the run whatever its id: a second sync of
    the same object finds the run by it instead of logging another. Times are milliseconds
    since the epoch (MLflow's unit); None lets the server use its clock.
    """

    experiment: str
    run_name: str
    key: tuple[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact: ArtifactRecord
    dataset: DatasetRecord | None = None
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True)
class VersionRecord:
    """One model version of ``registered_model``, identified by the ModelVersion's ``uid``."""

    registered_model: str
    namespace: str
    uid: str
    artifact: ArtifactRecord
    tags: dict[str, str]
    description: str


@dataclass(frozen=True)
class AliasChanges:
    """Aliases to point (alias -> MLflow version number) and aliases to delete."""

    set: dict[str, str] = field(default_factory=dict)
    delete: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.delete)

    def describe(self) -> str:
        """One line: ``stable -> 2, canary deleted``."""
        parts = [f"{a} -> {v}" for a, v in self.set.items()]
        return ", ".join(parts + [f"{a} deleted" for a in self.delete]) or "unchanged"


def mlflow_name(template: str, namespace: str, model: str) -> str:
    """The experiment and registered-model name of ``model`` in ``namespace``, from the
    ``MODELOPS_MLFLOW_NAME`` template (``{model}``, ``{namespace}``; checked by Settings)."""
    return template.format(model=model, namespace=namespace)


def param_value(value: Any) -> str:
    """A param as MLflow stores it: text (``str()`` of the value, as MLflow's sklearn
    autologging logs estimator params), cut to MLflow's 6000 characters."""
    return str(value)[:MAX_PARAM_LENGTH]


def run_params(
    estimator: str, params: Mapping[str, Any], seed: int, test_size: float | None
) -> dict[str, str]:
    """The run's params: the estimator's constructor params under their scikit-learn names,
    with ``estimator`` (its class), ``seed`` and ``test_size`` (when known) beside them."""
    logged = {name: param_value(value) for name, value in params.items()}
    logged |= {"estimator": estimator, "seed": str(seed)}
    if test_size is not None:
        logged["test_size"] = param_value(test_size)
    return logged


def finite_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric, finite metrics: MLflow stores NaN, but such a metric measured nothing."""
    return {
        name: float(value)
        for name, value in (metrics or {}).items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }


def dataset_record(uri: str, sha256: str | None, rows: int | None = None) -> DatasetRecord | None:
    """The dataset input of a run trained on the object at ``uri`` with digest ``sha256``;
    None when the digest is unknown (MLflow needs one)."""
    if not sha256:
        return None
    profile: dict[str, Any] = {"sha256": sha256}
    if rows is not None:
        profile["num_rows"] = rows
    return DatasetRecord(
        name=uri.rsplit("/", 1)[-1],
        digest=sha256[:DIGEST_LENGTH],
        source_type="s3",
        source=json.dumps({"uri": uri}),
        profile=json.dumps(profile),
    )


def epoch_ms(timestamp: str | None) -> int | None:
    """Milliseconds since the epoch of a Kubernetes timestamp (``2024-05-01T12:00:00Z``)."""
    if not timestamp:
        return None
    parsed = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _artifact_tags(artifact: ArtifactRecord) -> dict[str, str]:
    return {TAG_ARTIFACT_URI: artifact.uri, TAG_ARTIFACT_SHA256: artifact.sha256}


def _dataset_tags(uri: str, sha256: str | None) -> dict[str, str]:
    return {TAG_DATASET_URI: uri, **({TAG_DATASET_SHA256: sha256} if sha256 else {})}


def run_from_training_run(
    run: TrainingRun, summary: Mapping[str, Any], experiment: str
) -> RunRecord:
    """The MLflow run of a Succeeded TrainingRun; ``summary`` is the trainer's summary.json
    (its ``dataset``: ``uri``, ``sha256``, ``rows``). Raises ValueError when the run has no
    artifact in its status (it did not succeed)."""
    meta, status = run.metadata, run.status
    if status.artifact is None:
        raise ValueError(f"TrainingRun {meta['name']} has no artifact in its status")
    dataset = summary.get("dataset") or {}
    uri = str(dataset.get("uri") or run.spec.dataset.uri)
    sha256 = dataset.get("sha256")
    artifact = ArtifactRecord(status.artifact.uri, status.artifact.sha256, status.artifact.size)
    trigger = (meta.get("annotations") or {}).get(f"{GROUP}/trigger")
    tags = {
        TAG_NAMESPACE: meta["namespace"],
        TAG_TRAINING_RUN: meta["name"],
        TAG_RUN_UID: meta["uid"],
        **_dataset_tags(uri, sha256),
        **_artifact_tags(artifact),
        **({TAG_MODEL_VERSION: status.model_version} if status.model_version else {}),
        **({TAG_TRIGGER: str(trigger)} if trigger else {}),
        TAG_SOURCE_TYPE: "JOB",
        TAG_NOTE: f"TrainingRun {meta['namespace']}/{meta['name']}, logged by the ModelOps "
        "operator",
    }
    return RunRecord(
        experiment=experiment,
        run_name=meta["name"],
        key=(TAG_RUN_UID, meta["uid"]),
        params=run_params(
            run.spec.estimator.name, run.spec.estimator.params, run.spec.seed, run.spec.test_size
        ),
        metrics=finite_metrics(status.metrics or summary.get("metrics")),
        tags=tags,
        artifact=artifact,
        dataset=dataset_record(uri, sha256, dataset.get("rows")),
        start_ms=epoch_ms(status.start_time),
        end_ms=epoch_ms(status.completion_time),
    )


def run_from_model_version(version: ModelVersion, experiment: str) -> RunRecord:
    """The MLflow run of a ModelVersion whose TrainingRun is not there to be logged (deleted,
    or the version was applied by hand): made from its lineage, metrics and artifact.

    Its key is the lineage's run uid when there is one (the same key the TrainingRun's own
    run carries, so a run logged before the TrainingRun went is found), else the version's uid.
    """
    meta, spec = version.metadata, version.spec
    lineage = spec.lineage
    artifact = ArtifactRecord(spec.artifact.uri, spec.artifact.sha256, spec.artifact.size)
    key = (
        (TAG_RUN_UID, lineage.run_uid) if lineage.run_uid else (TAG_MODEL_VERSION_UID, meta["uid"])
    )
    tags = {
        TAG_NAMESPACE: meta["namespace"],
        TAG_TRAINING_RUN: lineage.training_run,
        TAG_MODEL_VERSION: meta["name"],
        TAG_MODEL_VERSION_UID: meta["uid"],
        **({TAG_RUN_UID: lineage.run_uid} if lineage.run_uid else {}),
        **_dataset_tags(lineage.dataset_uri, lineage.dataset_sha256),
        **_artifact_tags(artifact),
        **({TAG_TRIGGER: lineage.trigger} if lineage.trigger else {}),
        **({TAG_IMAGE: lineage.image} if lineage.image else {}),
        TAG_SOURCE_TYPE: "JOB",
        TAG_NOTE: f"ModelVersion {meta['namespace']}/{meta['name']} (lineage: TrainingRun "
        f"{lineage.training_run}), logged by the ModelOps operator",
    }
    return RunRecord(
        experiment=experiment,
        run_name=lineage.training_run,
        key=key,
        params=run_params(lineage.estimator, lineage.params, lineage.seed, None),
        metrics=finite_metrics(spec.metrics),
        tags=tags,
        artifact=artifact,
        dataset=dataset_record(lineage.dataset_uri, lineage.dataset_sha256),
        start_ms=epoch_ms(meta.get("creationTimestamp")),
    )


def version_from_model_version(version: ModelVersion, registered_model: str) -> VersionRecord:
    """The registered model version of a Ready ModelVersion."""
    meta, spec = version.metadata, version.spec
    artifact = ArtifactRecord(spec.artifact.uri, spec.artifact.sha256, spec.artifact.size)
    return VersionRecord(
        registered_model=registered_model,
        namespace=meta["namespace"],
        uid=meta["uid"],
        artifact=artifact,
        tags={
            TAG_NAMESPACE: meta["namespace"],
            TAG_MODEL_VERSION: meta["name"],
            TAG_MODEL_VERSION_UID: meta["uid"],
            TAG_VERSION: str(spec.version),
            **_artifact_tags(artifact),
        },
        description=f"ModelVersion {meta['namespace']}/{meta['name']}: {artifact.uri} "
        f"(sha256 {artifact.sha256})",
    )


def version_source(run_artifact_uri: str, logged: bool, artifact: ArtifactRecord) -> str:
    """Where the registered version's files are: the model directory among the run's
    artifacts when the file was uploaded there, else the file in the object store."""
    return f"{run_artifact_uri.rstrip('/')}/{ARTIFACT_PATH}" if logged else artifact.uri


def should_upload(size: int | None, limit: int) -> bool:
    """Whether a model of ``size`` bytes is uploaded to its run (``limit`` 0: never);
    an unknown size is looked up first, so None here means no."""
    return size is not None and 0 < size <= limit


def alias_changes(current: Mapping[str, str], desired: Mapping[str, str | None]) -> AliasChanges:
    """What turns the registered model's ``current`` aliases (alias -> version number, as
    ``RegisteredModel.aliases`` holds them) into ``desired`` (None: no such alias). Aliases
    not named in ``desired`` are someone else's and left alone."""
    to_set = {a: v for a, v in desired.items() if v is not None and current.get(a) != v}
    to_delete = tuple(a for a, v in desired.items() if v is None and a in current)
    return AliasChanges(to_set, to_delete)


def backoff_seconds(failures: int) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: 1, 2, 4, ... 300."""
    if failures <= 0:
        return 0.0
    # The exponent is capped so that a long outage cannot overflow the float.
    return min(BACKOFF_BASE_SECONDS * (1 << min(failures - 1, 20)), BACKOFF_MAX_SECONDS)
