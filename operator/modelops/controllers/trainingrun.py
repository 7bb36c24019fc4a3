"""TrainingRun controller: one Job per run, followed to the end, then a ModelVersion."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
from minio.error import S3Error
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from modelops import API_VERSION, GROUP, VERSION
from modelops.api.common import now_iso
from modelops.api.trainingrun import TrainingRun
from modelops.controllers.cluster import ApiError
from modelops.controllers.main import get_settings, runtime
from modelops.controllers.metrics import JOBS_CREATED, RUNS_FINISHED, VERSIONS_REGISTERED
from modelops.controllers.status import StatusWriter, invalid_spec, reconciling
from modelops.insight.card import card_document, render_html
from modelops.resources import modelversion as mv_builder
from modelops.resources.common import RUN_UID_LABEL
from modelops.resources.training import (
    evaluation,
    failure,
    gate_failures,
    job_failure,
    job_outcome,
    metrics_summary,
    output_uri,
    training_job,
)
from modelops.storage import ArtifactError, ArtifactStore, Location

TERMINAL = ("Succeeded", "Failed")
REGISTER_ATTEMPTS = 20
"""Numbers tried, each after a fresh list, before a run gives up with NoFreeVersionNumber."""


class RegistrationError(Exception):
    """No ModelVersion could be created; ``reason`` is the Registered condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL


# One level-triggered path per object: a timer fires at once for new and resumed objects,
# and event handlers stacked beside it would run concurrently with it on the same object.
@kopf.timer(GROUP, VERSION, "trainingruns", interval=get_settings().job_poll_seconds, when=_active)
async def reconcile_training_run(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    async with reconciling("TrainingRun", body, patch):
        await _reconcile(body, patch, logger)


async def _reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    status = StatusWriter(body, patch)
    if body.get("status", {}).get("phase") in TERMINAL:
        return
    # 1: load and validate; a bad spec is reported, never retried
    try:
        run = TrainingRun.model_validate(dict(body))
    except ValidationError as exc:
        message = invalid_spec(exc)
        status.set(phase="Failed", message=message)
        status.condition("Ready", "False", "InvalidSpec", message)
        return
    config = get_settings()
    # 2: the Job, created once (its name is deterministic, so a restart finds it again)
    job = training_job(run, config)
    kopf.adopt(job, owner=body)
    observed_job, created = await runtime.cluster.create(job)
    if created:
        JOBS_CREATED.inc()
        logger.info("created Job %s", job["metadata"]["name"])
    status.set(jobName=job["metadata"]["name"])
    if not body.get("status", {}).get("startTime"):
        status.set(startTime=now_iso())
    # 3: follow it
    phase, reason = job_outcome(observed_job)
    if phase in ("Pending", "Running"):
        status.set(phase=phase)
        status.condition("Ready", "False", reason, f"training Job is {phase.lower()}")
        return
    summary = await _summary(run)
    if phase == "Failed":
        _failed(status, *failure(reason, job_failure(observed_job), summary))
        return
    if not summary.get("ok"):
        raise kopf.TemporaryError("the Job succeeded but its summary is not readable yet", delay=5)
    # 4: report (finite numbers only: the server refuses NaN), and register when the gates pass
    result = evaluation(summary)
    status.set(
        metrics=result.metrics,
        metricsSummary=metrics_summary(result.metrics),
        artifact=summary["artifact"],
        profileUri=(summary.get("profile") or {}).get("uri"),
    )
    registration = run.spec.registration
    failures = gate_failures(result.metrics, registration.min_metrics, result.unmeasured)
    if not registration.enabled:
        status.condition("Registered", "False", "RegistrationDisabled", "register.enabled is false")
    elif failures:
        status.condition("Registered", "False", "GatesNotMet", "; ".join(failures))
    else:
        try:
            name = await _register(run, summary, job)
        except RegistrationError as exc:
            status.condition("Registered", "False", exc.reason, str(exc))
        else:
            status.set(modelVersion=name)
            status.condition("Registered", "True", "Registered", f"registered as {name}")
    status.set(phase="Succeeded", completionTime=now_iso(), message=result.summary)
    status.condition("Ready", "True", "Succeeded", f"trained: {result.summary}")
    RUNS_FINISHED.labels("succeeded").inc()


def _failed(status: StatusWriter, reason: str, message: str) -> None:
    status.set(phase="Failed", completionTime=now_iso(), message=message)
    status.condition("Ready", "False", reason, message)
    RUNS_FINISHED.labels("failed").inc()


async def _summary(run: TrainingRun) -> dict[str, Any]:
    """The trainer's summary.json, or {} when it wrote none (e.g. killed by the deadline)."""
    prefix = Location.parse(output_uri(run, get_settings()))
    loc = Location(prefix.bucket, f"{prefix.key}/summary.json")
    try:
        data = await asyncio.to_thread(runtime.store.get, loc)
    except ArtifactError:
        return {}
    result: dict[str, Any] = json.loads(data)
    return result


async def _register(run: TrainingRun, summary: dict[str, Any], job: dict[str, Any]) -> str:
    """Create the next ModelVersion, exactly once per run.

    The run's uid label finds a version made before a restart. Numbering reads every
    ModelVersion of the namespace, labelled or not (one applied by hand holds its name too);
    the API server's name uniqueness settles races between runs of the same model (the
    loser takes the next number). Raises RegistrationError when no version can be made.
    """
    namespace = run.metadata["namespace"]
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    tried: list[str] = []
    for _attempt in range(REGISTER_ATTEMPTS):
        existing = await runtime.cluster.list(API_VERSION, "ModelVersion", namespace, {})
        mine = [
            mv
            for mv in existing
            if (mv["metadata"].get("labels") or {}).get(RUN_UID_LABEL) == run.metadata["uid"]
        ]
        if mine:
            return str(mine[0]["metadata"]["name"])
        number = mv_builder.next_number(existing, run.spec.model)
        obj = mv_builder.model_version(run, summary, number, image)
        # Written before each attempt: the card names the number this attempt creates.
        obj["spec"]["card"] = await _card(obj)
        try:
            created = await runtime.cluster.create_new(obj)
        except ApiError as exc:
            if exc.status not in (400, 422):
                raise  # the world (a timeout, a 5xx): Kopf tries again
            raise RegistrationError("RegistrationRefused", str(exc)) from None
        if created is not None:
            VERSIONS_REGISTERED.labels(run.spec.model).inc()
            return str(obj["metadata"]["name"])
        tried.append(obj["metadata"]["name"])
    raise RegistrationError(
        "NoFreeVersionNumber",
        f"no free ModelVersion name for model {run.spec.model} after {len(tried)} attempts "
        f"(taken: {', '.join(dict.fromkeys(tried))})",
    )


async def _card(version: dict[str, Any]) -> dict[str, Any]:
    """Write the version's model card beside its model; return ``spec.card``. A store that
    does not answer is waited out (the run's timer tries again)."""
    try:
        return await asyncio.to_thread(write_card, runtime.store, version)
    except (S3Error, HTTPError, OSError) as exc:
        raise kopf.TemporaryError(f"model card not written: {exc}", delay=10) from exc


def write_card(store: ArtifactStore, version: dict[str, Any]) -> dict[str, Any]:
    """``card.json`` and ``card.html`` of ``version`` (a ModelVersion object) beside its
    ``model.skops``; returns ``{json, html}``, each ``{uri, sha256, size}``.

    The profile is read digest-verified; a missing or altered one is named in the card
    (``profileProblem``) instead of drawn. Raises the store's errors when it cannot write.
    """
    spec = version["spec"]
    profile, problem = None, None
    if ref := spec.get("profile"):
        try:
            data = store.get_verified(Location.parse(ref["uri"]), ref["sha256"])
            profile = json.loads(data)
        except ArtifactError as exc:
            problem = f"reference profile unavailable: {exc}"
    card = card_document(version, profile, profile_problem=problem)
    model = Location.parse(spec["artifact"]["uri"])
    folder = model.key.rpartition("/")[0]
    refs = {}
    for key, name, data, kind in (
        ("json", "card.json", json.dumps(card, allow_nan=False).encode(), "application/json"),
        ("html", "card.html", render_html(card).encode(), "text/html; charset=utf-8"),
    ):
        loc = Location(model.bucket, f"{folder}/{name}" if folder else name)
        refs[key] = {"uri": loc.uri, "sha256": store.put(loc, data, kind), "size": len(data)}
    return refs
