"""MLflow sync: TrainingRuns as MLflow runs, ModelVersions as registered model versions, and
the registered model's aliases ``stable``/``canary`` following each Deployment.

Loaded by controllers/main.py only when ``MODELOPS_MLFLOW_TRACKING_URI`` is set, so an operator
without it has none of these handlers. They stay out of the main reconcilers' way:

- they start on what those leave alone: a TrainingRun once Succeeded, a ModelVersion once
  Ready (both terminal: their own timers have stopped), a Deployment's status as read;
- they write an annotation (``modelops.dev/mlflow-run-id``, ``modelops.dev/mlflow-model-version``:
  what makes a restart skip the object) and one condition, ``MlflowSynced``, with the
  object's resourceVersion as precondition; on a Deployment, Events only;
- MLflow calls block: they run in two threads of their own, so a slow or absent server ties
  up those and nothing else. A failure is retried with backoff (1 s doubling to 5 min),
  posted as a Warning Event once per streak, and counted in
  ``modelops_mlflow_sync_errors_total{kind,reason}``; training and rollout never wait on it.

Each step is idempotent (integrations/mlflow_client.py looks before it makes), and the
annotation is written last: an operator killed in between finds the run by its tag.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf
from prometheus_client import Counter

from modelops import API_VERSION, GROUP, VERSION
from modelops.api.common import ConditionStatus, get_condition, set_condition
from modelops.api.modelversion import ModelVersion
from modelops.api.trainingrun import TrainingRun
from modelops.controllers.cluster import ApiError
from modelops.controllers.main import get_settings, runtime
from modelops.integrations.mlflow import (
    ALIASES,
    MODEL_VERSION_ANNOTATION,
    RUN_ID_ANNOTATION,
    ArtifactRecord,
    backoff_seconds,
    mlflow_name,
    run_from_model_version,
    run_from_training_run,
    should_upload,
    version_from_model_version,
)
from modelops.integrations.mlflow_client import MlflowSyncError, Tracking
from modelops.resources.training import output_uri
from modelops.storage import ArtifactError, Location

logger = logging.getLogger(__name__)
T = TypeVar("T")

CONDITION = "MlflowSynced"
THREADS = 2
"""Worker threads for MLflow calls: one object's sync may wait on another's, nothing else."""
SERVICE = "mlflow"
"""Key of the :class:`MlflowSync` in Kopf's memo."""
ALIASES_SYNCED = "mlflow_aliases_synced"
"""Key, in a Deployment's memo, of the (stable, canary) versions its aliases were set for."""
ATTEMPTS = "mlflow_attempts"
"""Key, in an object's memo, of its :class:`Attempts`."""

SYNCED = Counter("modelops_mlflow_synced_total", "Objects synced to MLflow", ["kind"])
SYNC_ERRORS = Counter(
    "modelops_mlflow_sync_errors_total",
    "Failed attempts to sync an object to MLflow (retried with backoff)",
    ["kind", "reason"],
)


@dataclass
class Attempts:
    """One object's failed attempts in a row, and when the next one is due (monotonic s)."""

    failures: int = 0
    due: float = 0.0
    message: str = ""


class MlflowSync:
    """The MLflow server and the threads its calls run in, made at start-up (Kopf's memo)."""

    def __init__(self, tracking_uri: str, name_template: str, max_artifact_bytes: int) -> None:
        self.tracking = Tracking(tracking_uri)
        self.name_template = name_template
        self.max_artifact_bytes = max_artifact_bytes
        self.executor = ThreadPoolExecutor(THREADS, thread_name_prefix="mlflow")
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}

    def name(self, namespace: str, model: str) -> str:
        """The experiment and registered model of ``model`` in ``namespace``."""
        return mlflow_name(self.name_template, namespace, model)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the MLflow threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        """One lock per run key: a run is never logged twice by two handlers at once."""
        return self.locks.setdefault(key, asyncio.Lock())


@kopf.on.startup()
async def start_sync(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    config = get_settings()
    memo[SERVICE] = MlflowSync(
        config.mlflow_tracking_uri, config.mlflow_name, config.mlflow_max_artifact_bytes
    )
    # Look, do not import: importing mlflow takes seconds, and start-up must not wait on it.
    if importlib.util.find_spec("mlflow") is None:
        logger.error(
            "MODELOPS_MLFLOW_TRACKING_URI is set but the MLflow client is not installed "
            "(pip install 'modelops-operator[mlflow]'): nothing will be synced, and each "
            "TrainingRun and ModelVersion says so in its MlflowSynced condition"
        )
    logger.info("MLflow sync on: %s", config.mlflow_tracking_uri)


@kopf.on.cleanup()
async def stop_sync(memo: kopf.Memo, **_: Any) -> None:
    sync = memo.get(SERVICE)
    if isinstance(sync, MlflowSync):
        sync.executor.shutdown(wait=False, cancel_futures=True)


def _succeeded(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == "Succeeded"


def _ready(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == "Ready"


POLL = get_settings().mlflow_poll_seconds


@kopf.timer(
    GROUP,
    VERSION,
    "trainingruns",
    interval=POLL,
    annotations={RUN_ID_ANNOTATION: kopf.ABSENT},
    when=_succeeded,
)
async def log_training_run(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Succeeded TrainingRun without an MLflow run: log it, then annotate it."""
    await _attempt(body, memo, "TrainingRun", _log_training_run)


@kopf.timer(
    GROUP,
    VERSION,
    "modelversions",
    interval=POLL,
    annotations={MODEL_VERSION_ANNOTATION: kopf.ABSENT},
    when=_ready,
)
async def register_model_version(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Ready ModelVersion not in the MLflow Model Registry: register it, then annotate it."""
    await _attempt(body, memo, "ModelVersion", _register_model_version)


@kopf.timer(GROUP, VERSION, "deployments", interval=POLL)
async def follow_deployment(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Point the aliases ``stable``/``canary`` at the Deployment's versions when they moved.

    What was last set is remembered per Deployment, so a pass with nothing new makes no call;
    after a restart the first pass reads the aliases once and changes only what differs.
    """
    status = body.get("status") or {}
    wanted = (status.get("stableVersion"), status.get("canaryVersion"))
    if memo.get(ALIASES_SYNCED) == wanted:
        return
    await _attempt(body, memo, "Deployment", functools.partial(_sync_aliases, wanted=wanted))


Step = Callable[[kopf.Body, MlflowSync, kopf.Memo], Awaitable[None]]


async def _attempt(body: kopf.Body, memo: kopf.Memo, kind: str, step: Step) -> None:
    """Run ``step`` when the object's backoff allows; a failure is logged, counted, posted
    once per streak as a Warning Event and, but on a Deployment, set as the condition."""
    attempts: Attempts = memo.setdefault(ATTEMPTS, Attempts())
    if time.monotonic() < attempts.due:
        return
    sync: MlflowSync = memo[SERVICE]
    try:
        await step(body, sync, memo)
    except (MlflowSyncError, ArtifactError) as exc:
        await _failed(body, kind, attempts, exc.reason, str(exc))
    except ApiError as exc:  # the Kubernetes API, for our annotation or condition
        await _failed(body, kind, attempts, exc.reason, str(exc))
    except Exception as exc:  # a bug must not end the timer: reported and retried like others
        logger.exception("MLflow sync of %s %s failed", kind, body["metadata"]["name"])
        await _failed(body, kind, attempts, "MlflowSyncFailed", f"{type(exc).__name__}: {exc}")
    else:
        if attempts.failures:
            kopf.info(body, reason="MlflowSyncRecovered", message="synced to MLflow again")
        memo[ATTEMPTS] = Attempts()


async def _failed(
    body: kopf.Body, kind: str, attempts: Attempts, reason: str, message: str
) -> None:
    attempts.failures += 1
    delay = backoff_seconds(attempts.failures)
    attempts.due = time.monotonic() + delay
    SYNC_ERRORS.labels(kind, reason).inc()
    name = body["metadata"]["name"]
    logger.warning(
        "MLflow sync of %s %s failed (%s), again in %.0fs: %s", kind, name, reason, delay, message
    )
    if attempts.failures == 1 or message != attempts.message:
        kopf.warn(body, reason=reason, message=f"MLflow sync failed: {message}"[:1024])
    attempts.message = message
    if kind != "Deployment":
        try:
            await _condition(body, kind, "False", reason, message)
        except ApiError as exc:
            logger.warning("could not set %s on %s %s: %s", CONDITION, kind, name, exc)


# --- TrainingRun -> MLflow run -------------------------------------------------------------------


async def _log_training_run(body: kopf.Body, sync: MlflowSync, memo: kopf.Memo) -> None:
    run = TrainingRun.model_validate(dict(body))
    meta = run.metadata
    summary = await _summary(run)
    record = run_from_training_run(run, summary, sync.name(meta["namespace"], run.spec.model))
    async with sync.lock(record.key):
        model = await _model_bytes(record.artifact, sync.max_artifact_bytes)
        run_id = await sync.call(sync.tracking.ensure_run, record, model)
    message = f"MLflow run {run_id} in experiment {record.experiment}"
    await _condition(body, "TrainingRun", "True", "Synced", message)
    await _annotate(body, "TrainingRun", {RUN_ID_ANNOTATION: run_id})
    SYNCED.labels("TrainingRun").inc()


async def _summary(run: TrainingRun) -> dict[str, Any]:
    """The trainer's summary.json (it holds the dataset's sha256, which the status does not)."""
    prefix = Location.parse(output_uri(run, get_settings()))
    loc = Location(prefix.bucket, f"{prefix.key}/summary.json")
    data = await asyncio.to_thread(runtime.store.get, loc)
    summary: dict[str, Any] = json.loads(data)
    return summary


async def _model_bytes(artifact: ArtifactRecord, limit: int) -> bytes | None:
    """The model file, verified against its sha256, when it is small enough to upload."""
    loc = Location.parse(artifact.uri)
    size = artifact.size
    if size is None and limit > 0:
        info = await asyncio.to_thread(runtime.store.stat, loc)
        size = info.size if info is not None else None
    if not should_upload(size, limit):
        return None
    return await asyncio.to_thread(runtime.store.get_verified, loc, artifact.sha256)


# --- ModelVersion -> registered model version ----------------------------------------------------


async def _register_model_version(body: kopf.Body, sync: MlflowSync, memo: kopf.Memo) -> None:
    version = ModelVersion.model_validate(dict(body))
    meta, lineage = version.metadata, version.spec.lineage
    name = sync.name(meta["namespace"], version.spec.model)
    run_id = await _training_run_id(version)
    if run_id == "":
        await _condition(
            body,
            "ModelVersion",
            "False",
            "WaitingForRun",
            f"waiting for TrainingRun {lineage.training_run} to be logged to MLflow",
        )
        return
    if run_id is None:  # no TrainingRun to wait for: the run is made from the lineage
        record = run_from_model_version(version, name)
        async with sync.lock(record.key):
            model = await _model_bytes(record.artifact, sync.max_artifact_bytes)
            run_id = await sync.call(sync.tracking.ensure_run, record, model)
    number = await sync.call(
        sync.tracking.ensure_model_version, version_from_model_version(version, name), run_id
    )
    message = f"registered model {name} version {number} (MLflow run {run_id})"
    await _condition(body, "ModelVersion", "True", "Synced", message)
    await _annotate(
        body, "ModelVersion", {MODEL_VERSION_ANNOTATION: number, RUN_ID_ANNOTATION: run_id}
    )
    SYNCED.labels("ModelVersion").inc()


async def _training_run_id(version: ModelVersion) -> str | None:
    """The MLflow run of the version's TrainingRun: its id; "" while that run is not logged
    yet; None when there is no TrainingRun of this lineage (gone, or never there)."""
    lineage = version.spec.lineage
    if not lineage.run_uid:
        return None
    run = await runtime.cluster.get(
        API_VERSION, "TrainingRun", version.metadata["namespace"], lineage.training_run
    )
    if run is None or run["metadata"].get("uid") != lineage.run_uid:
        return None
    return str((run["metadata"].get("annotations") or {}).get(RUN_ID_ANNOTATION, ""))


# --- Deployment -> aliases -----------------------------------------------------------------------


async def _sync_aliases(
    body: kopf.Body, sync: MlflowSync, memo: kopf.Memo, *, wanted: tuple[str | None, ...]
) -> None:
    namespace = body["metadata"]["namespace"]
    desired: dict[str, str | None] = {}
    for alias, version_name in zip(ALIASES, wanted, strict=True):
        desired[alias] = None
        if version_name is not None:
            mv = await runtime.cluster.get(API_VERSION, "ModelVersion", namespace, version_name)
            number = ((mv or {}).get("metadata", {}).get("annotations") or {}).get(
                MODEL_VERSION_ANNOTATION
            )
            if number is None:
                return  # not registered in MLflow yet: the next pass looks again
            desired[alias] = str(number)
    name = sync.name(namespace, body["spec"]["model"])
    changes = await sync.call(sync.tracking.sync_aliases, name, namespace, desired)
    memo[ALIASES_SYNCED] = wanted
    if changes:
        kopf.info(body, reason="MlflowAliasesSet", message=f"{name}: {changes.describe()}")


# --- writes to the Kubernetes API ----------------------------------------------------------------


async def _condition(
    body: kopf.Body, kind: str, status: ConditionStatus, reason: str, message: str
) -> None:
    """Set the MlflowSynced condition from the object as stored now, unless it says so
    already; the resourceVersion makes a concurrent writer's change win (409, tried again)."""
    meta = body["metadata"]
    for _ in range(3):
        current = await runtime.cluster.get(API_VERSION, kind, meta["namespace"], meta["name"])
        if current is None:
            return
        conditions = list((current.get("status") or {}).get("conditions") or [])
        old = get_condition(conditions, CONDITION) or {}
        if (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
            return
        generation = current["metadata"].get("generation")
        conditions, _ = set_condition(conditions, CONDITION, status, reason, message, generation)
        patch = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "status": {"conditions": conditions},
        }
        try:
            await runtime.cluster.patch(
                API_VERSION, kind, meta["namespace"], meta["name"], patch, subresource="status"
            )
            return
        except ApiError as exc:
            if exc.status != 409:
                raise
    raise ApiError(409, f"{kind} {meta['name']} kept changing while {CONDITION} was set")


async def _annotate(body: kopf.Body, kind: str, annotations: dict[str, str]) -> None:
    meta = body["metadata"]
    await runtime.cluster.patch(
        API_VERSION,
        kind,
        meta["namespace"],
        meta["name"],
        {"metadata": {"annotations": annotations}},
    )
