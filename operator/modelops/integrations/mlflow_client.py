"""The one module that talks to MLflow: blocking calls of ``mlflow.MlflowClient``.

Each method is idempotent (it looks for what an earlier call made before it makes anything),
so a sync interrupted anywhere (an operator killed, a server gone) is simply run again. Calls
block on HTTP: run them in a worker thread. ``mlflow`` is imported on first use only, so an
operator without the package starts, and says what is missing when a sync is attempted.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from modelops.integrations.mlflow import (
    ARTIFACT_PATH,
    TAG_ARTIFACT_LOGGED,
    TAG_MODEL_VERSION_UID,
    TAG_NAMESPACE,
    AliasChanges,
    RunRecord,
    VersionRecord,
    alias_changes,
    version_source,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel

HTTP_RETRIES = "2"
HTTP_TIMEOUT_SECONDS = "30"
"""MLflow's client retries a failed request 7 times over minutes by default; the sync has its
own backoff, so a call gives up sooner (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT`` set in
the operator's environment win)."""


class MlflowSyncError(Exception):
    """A sync step failed; ``reason`` (CamelCase) is the condition's and the Event's reason:
    MlflowNotInstalled, MlflowUnavailable (no answer), MlflowRefused (an error answer),
    MlflowNameConflict (the registered model belongs to another namespace)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


DESCRIPTION = "Registered by the ModelOps operator"


def _code(exc: Exception) -> str | None:
    """MLflow's error code of an answer (``RESOURCE_ALREADY_EXISTS``, ...), if any."""
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, str) else None


def _failure(exc: Exception) -> MlflowSyncError:
    """An exception of the client as a sync error: an answer the server refused with, or none."""
    if isinstance(exc, MlflowSyncError):
        return exc
    if isinstance(exc, ImportError):
        return MlflowSyncError("MlflowNotInstalled", f"the MLflow client is incomplete: {exc}")
    code = _code(exc)
    # RestException: the server answered with an error; anything else got no answer.
    refused = type(exc).__name__ == "RestException"
    reason = "MlflowRefused" if refused else "MlflowUnavailable"
    detail = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
    return MlflowSyncError(reason, f"{code}: {detail}" if refused and code else detail)


class Tracking:
    """An MLflow tracking server and its model registry at ``tracking_uri``.

    Every public method raises :class:`MlflowSyncError` on failure, never another exception.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()

    def client(self) -> MlflowClient:
        """The client, made (and ``mlflow`` imported, a few seconds) on first use."""
        with self._lock:
            if self._client is None:
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_SECONDS)
                try:
                    from mlflow import MlflowClient
                except ImportError as exc:
                    raise MlflowSyncError(
                        "MlflowNotInstalled",
                        f"MODELOPS_MLFLOW_TRACKING_URI is set but the MLflow client cannot be "
                        f"imported ({exc}): install modelops-operator[mlflow]",
                    ) from None
                self._client = MlflowClient(self.tracking_uri, self.tracking_uri)
            return self._client

    def ensure_run(self, record: RunRecord, model: bytes | None) -> str:
        """The id of the finished run keyed by ``record.key``, logged now if there is none.

        A run with the key that never finished (an attempt cut short) is deleted first, so
        what is found later is always complete: params, metrics, tags, the dataset input,
        and ``model`` (the file's bytes; None: too large, referenced by tags only).
        """
        try:
            return self._ensure_run(record, model)
        except Exception as exc:
            raise _failure(exc) from exc

    def _ensure_run(self, record: RunRecord, model: bytes | None) -> str:
        client = self.client()  # first: it says when mlflow is not installed
        from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

        experiment_id = self._experiment(record.experiment)
        name, value = record.key
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{name}` = '{value}'", max_results=50
        )
        for run in found:
            if run.info.status == "FINISHED":
                return str(run.info.run_id)
        for run in found:
            client.delete_run(run.info.run_id)
        tags = {**record.tags, TAG_ARTIFACT_LOGGED: "true" if model is not None else "false"}
        run = client.create_run(
            experiment_id, start_time=record.start_ms, tags=tags, run_name=record.run_name
        )
        run_id = str(run.info.run_id)
        stamp = record.end_ms or record.start_ms or 0
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, stamp, 0) for k, v in sorted(record.metrics.items())],
            params=[Param(k, v) for k, v in sorted(record.params.items())],
        )
        if record.dataset is not None:
            data = record.dataset
            dataset = Dataset(
                name=data.name,
                digest=data.digest,
                source_type=data.source_type,
                source=data.source,
                profile=data.profile,
            )
            # The context tag MLflow's own mlflow.log_input writes for training data.
            context = InputTag("mlflow.data.context", "training")
            client.log_inputs(run_id, [DatasetInput(dataset, [context])])
        if model is not None:
            with tempfile.TemporaryDirectory(prefix="modelops-mlflow-") as tmp:
                path = Path(tmp) / record.artifact.uri.rsplit("/", 1)[-1]
                path.write_bytes(model)
                client.log_artifact(run_id, str(path), ARTIFACT_PATH)
        client.set_terminated(run_id, "FINISHED", end_time=record.end_ms)
        return run_id

    def _experiment(self, name: str) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(client.create_experiment(name))
        except Exception as exc:
            if _code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(name)  # made meanwhile
        if experiment is None:
            raise MlflowSyncError("MlflowRefused", f"experiment {name} exists but cannot be read")
        return str(experiment.experiment_id)

    def ensure_model_version(self, record: VersionRecord, run_id: str) -> str:
        """The number of the registered version made from run ``run_id`` for the ModelVersion
        ``record.uid``, registered now if there is none."""
        try:
            return self._ensure_model_version(record, run_id)
        except Exception as exc:
            raise _failure(exc) from exc

    def _ensure_model_version(self, record: VersionRecord, run_id: str) -> str:
        client = self.client()
        name = record.registered_model
        self._registered_model(name, record.namespace, create=True)
        for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            if version.tags.get(TAG_MODEL_VERSION_UID) == record.uid:
                return str(version.version)
        run = client.get_run(run_id)
        logged = run.data.tags.get(TAG_ARTIFACT_LOGGED) == "true"
        created = client.create_model_version(
            name,
            version_source(run.info.artifact_uri or "", logged, record.artifact),
            run_id=run_id,
            tags=record.tags,
            description=record.description,
            await_creation_for=0,
        )
        return str(created.version)

    def _registered_model(self, name: str, namespace: str, *, create: bool) -> RegisteredModel:
        """The registered model ``name`` (made for ``namespace`` when absent and ``create``);
        raises MlflowNameConflict when another namespace's models registered it first."""
        client = self.client()
        try:
            model = client.get_registered_model(name)
        except Exception as exc:
            if not create or _code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                model = client.create_registered_model(
                    name, tags={TAG_NAMESPACE: namespace}, description=DESCRIPTION
                )
            except Exception as again:
                if _code(again) != "RESOURCE_ALREADY_EXISTS":  # else made meanwhile: read it
                    raise
                model = client.get_registered_model(name)
        owner = model.tags.get(TAG_NAMESPACE)
        if owner is None:  # registered by hand: the operator's versions join it
            client.set_registered_model_tag(name, TAG_NAMESPACE, namespace)
        elif owner != namespace:
            raise MlflowSyncError(
                "MlflowNameConflict",
                f"registered model {name} belongs to namespace {owner}: set "
                "MODELOPS_MLFLOW_NAME to '{namespace}.{model}' to keep namespaces apart",
            )
        return model

    def _registered(self, name: str) -> bool:
        try:
            self.client().get_registered_model(name)
        except Exception as exc:
            if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def sync_aliases(
        self, name: str, namespace: str, desired: dict[str, str | None]
    ) -> AliasChanges:
        """Point the registered model's aliases at ``desired`` (alias -> version number; None
        deletes it); returns what was changed."""
        try:
            if not any(desired.values()) and not self._registered(name):
                return AliasChanges()  # nothing served yet, nothing registered: nothing to do
            model = self._registered_model(name, namespace, create=False)
            changes = alias_changes(dict(model.aliases or {}), desired)
            client = self.client()
            for alias, version in changes.set.items():
                client.set_registered_model_alias(name, alias, version)
            for alias in changes.delete:
                client.delete_registered_model_alias(name, alias)
            return changes
        except Exception as exc:
            raise _failure(exc) from exc
