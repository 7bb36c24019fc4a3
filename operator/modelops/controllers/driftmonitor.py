"""DriftMonitor controller: merge the live sketches of a version, test them, act on drift."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import kopf
from pydantic import ValidationError

from modelops import API_VERSION, GROUP, VERSION
from modelops.api.common import now_iso, parse_duration
from modelops.api.driftmonitor import DriftMonitor
from modelops.controllers.cluster import ApiError
from modelops.controllers.deployment import iso, parse_time
from modelops.controllers.main import get_settings, runtime
from modelops.controllers.metrics import DRIFT_DETECTED, DRIFT_SCORE, RETRAINS
from modelops.controllers.status import StatusWriter, invalid_spec, reconciling
from modelops.controllers.windows import merged_windows
from modelops.drift import DriftReport, Sketch, detect
from modelops.drift.detect import missing_features
from modelops.resources.training import retrain_run
from modelops.storage import ArtifactError, Location

_profiles: dict[str, dict[str, Any]] = {}
"""Reference profiles by sha256: verified once, immutable after."""
CHECK_FAILED = "CheckFailed"
"""Drifted=Unknown: the check raised; the message names the error. Retried next interval."""


# One level-triggered path per object: a timer fires at once for new and resumed objects,
# and event handlers stacked beside it would run concurrently with it on the same object.
@kopf.timer(GROUP, VERSION, "driftmonitors", interval=get_settings().drift_poll_seconds)
async def reconcile_drift_monitor(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    async with reconciling("DriftMonitor", body, patch):
        try:
            await _reconcile(body, patch, logger)
        except Exception as exc:
            # A failed check is the monitor's condition (a guarded canary holds on it), and
            # is tried again at the monitor's interval, not in Kopf's silent back-off loop.
            logger.exception("DriftMonitor check failed")
            meta = body["metadata"]
            status = StatusWriter(body, patch)
            status.set(lastCheckTime=now_iso())
            message = f"{type(exc).__name__}: {exc}"[:1000]
            _unknown(status, meta["name"], meta["namespace"], CHECK_FAILED, message)
            if isinstance(exc, ApiError):
                raise  # reconciling() decides between Stalled and a retry


async def _reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    status = StatusWriter(body, patch)
    current = dict(body.get("status", {}))
    # 1: load and validate
    try:
        monitor = DriftMonitor.model_validate(dict(body))
    except ValidationError as exc:
        message = invalid_spec(exc)
        status.set(phase="Pending", message=message)
        status.condition("Drifted", "Unknown", "InvalidSpec", message)
        return
    spec = monitor.spec
    generation_seen = current.get("observedGeneration") == body["metadata"].get("generation")
    last = current.get("lastCheckTime")
    if generation_seen and last and time.time() - parse_time(last) < parse_duration(spec.interval):
        return
    namespace, name = monitor.metadata["namespace"], monitor.metadata["name"]
    status.set(lastCheckTime=now_iso())

    # 2: which version's traffic, and its reference profile
    version, why = await _target_version(monitor)
    if version is None:
        _unknown(status, name, namespace, "NoTarget", why)
        return
    status.set(version=version)
    try:
        profile = await _profile(namespace, version)
    except (ArtifactError, LookupError) as exc:
        _unknown(status, name, namespace, getattr(exc, "reason", "ProfileMissing"), str(exc))
        return

    # 3: merge the pods' windows and test them
    window = parse_duration(spec.window)
    merged = await _merged_sketch(namespace, spec.deployment, version, profile, window)
    samples = merged.n_rows if merged else 0
    status.set(samples=samples)
    if problem := _spec_problem(monitor, profile, version):
        _unknown(status, name, namespace, "InvalidSpec", problem)
        return
    if merged is None or samples < spec.min_samples:
        _unknown(
            status,
            name,
            namespace,
            "InsufficientData",
            f"{samples} samples of {version} in the last {spec.window}, need {spec.min_samples}",
        )
        return
    try:
        report = detect(
            profile,
            merged,
            features=spec.features,
            method=spec.method,
            threshold=spec.threshold,
            per_feature={k: v.wire() for k, v in spec.per_feature.items()},
            drift_share=spec.drift_share,
            include_predictions=spec.prediction_drift and profile.get("predictions") is not None,
        )
    except ValueError as exc:  # the spec asks what this profile cannot answer (a method)
        _unknown(status, name, namespace, "InvalidSpec", f"{exc} (for {version})")
        return
    _report(status, name, namespace, version, report)

    # 4: act
    if report.dataset_drift and spec.action == "retrain":
        await _retrain(monitor, body, status, current)


def _spec_problem(monitor: DriftMonitor, profile: dict[str, Any], version: str) -> str:
    """What in the spec names features the version's profile lacks ("" when nothing does)."""
    spec = monitor.spec
    problems = [
        f"{field} names {', '.join(missing)}"
        for field, names in (
            ("spec.features", spec.features or []),
            ("spec.perFeature", spec.per_feature),
        )
        if (missing := missing_features(profile, names))
    ]
    if not problems:
        return ""
    known = ", ".join(sorted(profile["features"]))
    return f"{'; '.join(problems)}: not features of {version}, whose profile has {known}"


def _unknown(status: StatusWriter, name: str, namespace: str, reason: str, message: str) -> None:
    status.set(phase="InsufficientData" if reason == "InsufficientData" else "Pending")
    status.set(message=message)
    status.condition("Drifted", "Unknown", reason, message)
    DRIFT_DETECTED.labels(namespace, name).set(0)


def _report(
    status: StatusWriter, name: str, namespace: str, version: str, report: DriftReport
) -> None:
    features = []
    for f in report.features:
        score = None if math.isnan(f.score) else round(f.score, 6)
        features.append(
            {
                "name": f.name,
                "method": f.method,
                "score": score,
                "threshold": f.threshold,
                "drifted": f.drifted,
            }
        )
        if score is not None:
            DRIFT_SCORE.labels(namespace, name, f.name, f.method).set(score)
    drifted = [f for f in report.features if f.drifted]
    worst = ", ".join(
        f"{f.name} {f.method}={f.score:.3g} (threshold {f.threshold:g})" for f in report.worst(3)
    )
    message = (
        f"{len(drifted)}/{len(report.features)} features drifted in {version} "
        f"(share {report.drifted_share:.2f}, {report.n_current} samples); worst: {worst}"
    )
    status.set(
        phase="Drifted" if report.dataset_drift else "Healthy",
        driftedShare=round(report.drifted_share, 4),
        features=features,
        message=message,
    )
    if report.dataset_drift:
        if status.condition("Drifted", "True", "DriftDetected", message):
            firings = int(status.body.get("status", {}).get("firings") or 0) + 1
            status.set(firings=firings, lastFiredTime=now_iso())
    else:
        status.condition("Drifted", "False", "NoDrift", message)
    DRIFT_DETECTED.labels(namespace, name).set(1 if report.dataset_drift else 0)


async def _target_version(monitor: DriftMonitor) -> tuple[str | None, str]:
    spec = monitor.spec
    if spec.version:
        return spec.version, ""
    dep = await runtime.cluster.get(
        API_VERSION, "Deployment", monitor.metadata["namespace"], spec.deployment
    )
    if dep is None:
        return None, f"Deployment {spec.deployment} not found"
    dstatus = dep.get("status", {})
    canary_live = dstatus.get("phase") == "Progressing" and (dstatus.get("canaryWeight") or 0) > 0
    if spec.traffic == "canary" or (spec.traffic == "auto" and canary_live):
        if not canary_live:
            return None, f"Deployment {spec.deployment} has no canary taking traffic"
        return dstatus.get("canaryVersion"), ""
    stable = dstatus.get("stableVersion")
    return stable, "" if stable else f"Deployment {spec.deployment} serves no version yet"


async def _profile(namespace: str, version: str) -> dict[str, Any]:
    mv = await runtime.cluster.get(API_VERSION, "ModelVersion", namespace, version)
    ref = (mv or {}).get("spec", {}).get("profile")
    if not ref:
        raise LookupError(f"ModelVersion {version} has no reference profile")
    if ref["sha256"] not in _profiles:
        data = await asyncio.to_thread(
            runtime.store.get_verified, Location.parse(ref["uri"]), ref["sha256"]
        )
        _profiles[ref["sha256"]] = json.loads(data)
    return _profiles[ref["sha256"]]


async def _merged_sketch(
    namespace: str, deployment: str, version: str, profile: dict[str, Any], window: float
) -> Sketch | None:
    """All pods' sketch windows of the version in the last ``window`` seconds, added up."""
    prefix = f"{namespace}/sketches/{deployment}/{version}/"
    bucket = get_settings().bucket
    return await merged_windows(runtime.store, bucket, prefix, profile["fingerprint"], window)


async def _retrain(
    monitor: DriftMonitor, body: kopf.Body, status: StatusWriter, current: dict[str, Any]
) -> None:
    """Create one TrainingRun per cooldown; its name is fixed before creation (restart-safe)."""
    spec = monitor.spec
    assert spec.retrain is not None, "the CRD requires retrain with action: retrain"
    last = current.get("lastRetrainTime")
    cooldown = parse_duration(spec.retrain.cooldown)
    if last and time.time() - parse_time(last) < cooldown:
        return
    number = int(current.get("retrains") or 0) + 1
    run = retrain_run(
        monitor.metadata["name"],
        monitor.metadata["namespace"],
        number,
        spec.retrain.template.wire(),
    )
    name = run["metadata"]["name"]
    kopf.adopt(run, owner=body)
    _, created = await runtime.cluster.create(run)
    if created:
        RETRAINS.labels(monitor.metadata["namespace"], monitor.metadata["name"]).inc()
        kopf.info(body, reason="RetrainStarted", message=f"created TrainingRun {name}")
    status.set(retrains=number, lastRetrain=name, lastRetrainTime=iso(time.time()))
