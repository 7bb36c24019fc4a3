"""DriftMonitor controller: merge the live sketches and joined labels of a version, test them
(input drift, live quality), act when either fires."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from modelops import GROUP, VERSION
from modelops.api.common import now_iso, parse_duration
from modelops.api.driftmonitor import DriftMonitor, QualityRule
from modelops.controllers import loop
from modelops.controllers.cluster import ApiError
from modelops.controllers.deployment import parse_time
from modelops.controllers.fairness import check_fairness, fairness_unknown
from modelops.controllers.loop import snapshot
from modelops.controllers.main import get_settings, runtime
from modelops.controllers.metrics import (
    DRIFT_DETECTED,
    DRIFT_SCORE,
    MODEL_QUALITY,
    QUALITY_LABELS,
    UNDERPERFORMING,
    remove_series,
)
from modelops.controllers.status import StatusWriter, invalid_spec, reconciling, report_verdict
from modelops.controllers.triggers import check_triggers, start_retrain
from modelops.controllers.watches import Key, first, monitor_key
from modelops.controllers.windows import LiveQuality, merged_quality, merged_windows
from modelops.drift import DriftReport, Sketch, detect
from modelops.drift.detect import missing_features
from modelops.drift.quality import Task
from modelops.quality_rules import (
    DETECTED_EVENT,
    DISPLAYED,
    QUALITY_CONDITION,
    RECOVERED_EVENT,
    Baseline,
    QualityVerdict,
    baseline_kind,
    evaluate,
    metric_for,
    spec_problem,
)
from modelops.storage import ArtifactError, Location

_profiles: dict[str, dict[str, Any]] = {}
"""Reference profiles by sha256: verified once, immutable after."""
CHECK_FAILED = "CheckFailed"
"""Drifted=Unknown (and Underperforming=Unknown): the check raised; the message names the
error. Retried next interval."""
FEEDBACK_PREFIX = "-"
"""The pseudo-version under which serving pods write a Deployment's feedback counters."""
ALL_DISPLAYED = tuple(m for task in DISPLAYED.values() for m in task)
MIN_WAIT_SECONDS = 0.5
RESYNC_SECONDS = 300.0
PASSES = asyncio.Semaphore(get_settings().max_concurrent_passes)
"""Passes of this kind running at once (``Settings.max_concurrent_passes``)."""


# One loop per object (a daemon, modelops.controllers.loop): it checks when the monitor's
# interval has passed since its last check, or at once when its spec changes.
@kopf.daemon(GROUP, VERSION, "driftmonitors", cancellation_timeout=30)
async def drift_monitor_loop(
    body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger, **kwargs: Any
) -> None:
    # the indexes of modelops.controllers.watches, by their functions' names; the same
    # objects for the operator's whole life
    lookups.versions = kwargs["versions_by_name"]
    lookups.deployments = kwargs["deployment_statuses"]
    written: dict[str, Any] | None = None
    key = monitor_key(body["metadata"]["namespace"], body["metadata"]["name"])

    async def one_pass() -> float:
        nonlocal written
        current = snapshot(body, written)
        patch = kopf.Patch()
        try:
            async with reconciling("DriftMonitor", current, patch) as done:
                await _check(current, patch, logger)
        finally:
            written = done.stored or written
        return next_check(written or dict(current), time.time())

    await loop.run(key, stopped, one_pass, logger, PASSES)


@dataclass
class Lookups:
    """What a check reads from Kopf's indexes (:mod:`modelops.controllers.watches`) instead of
    the API: ModelVersions and Deployments' status, by (namespace, name)."""

    versions: kopf.Index[Key, dict[str, Any]] | None = None
    deployments: kopf.Index[Key, dict[str, Any]] | None = None


lookups = Lookups()


def next_check(monitor: dict[str, Any], now: float) -> float:
    """Seconds until the monitor's next check: its interval after ``status.lastCheckTime``
    (at least :data:`MIN_WAIT_SECONDS`); an invalid interval waits for a spec change."""
    last = (monitor.get("status") or {}).get("lastCheckTime")
    try:
        interval = parse_duration(str((monitor.get("spec") or {}).get("interval", "1m")))
    except ValueError:
        return RESYNC_SECONDS
    if not last:
        return interval
    return max(MIN_WAIT_SECONDS, parse_time(last) + interval - now)


async def _check(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    try:
        await _reconcile(body, patch, logger)
    except Exception as exc:
        # A failed check is the monitor's condition (a guarded canary holds on it), and
        # is tried again at the monitor's interval, not in a silent back-off loop.
        logger.exception("DriftMonitor check failed")
        meta = body["metadata"]
        status = StatusWriter(body, patch)
        status.set(lastCheckTime=now_iso())
        message = f"{type(exc).__name__}: {exc}"[:1000]
        _unknown(status, meta["name"], meta["namespace"], CHECK_FAILED, message)
        if (body.get("spec") or {}).get("quality") is not None:
            _quality_unknown(status, meta["name"], meta["namespace"], CHECK_FAILED, message)
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
        if (body.get("spec") or {}).get("quality") is not None:
            status.condition(QUALITY_CONDITION, "Unknown", "InvalidSpec", message)
        fairness_unknown(body, status, "InvalidSpec", message)
        return
    spec = monitor.spec
    generation_seen = current.get("observedGeneration") == body["metadata"].get("generation")
    last = current.get("lastCheckTime")
    if generation_seen and last and time.time() - parse_time(last) < parse_duration(spec.interval):
        return
    namespace, name = monitor.metadata["namespace"], monitor.metadata["name"]
    status.set(lastCheckTime=now_iso())
    await check_triggers(monitor, body, status, current)  # new data, schedule: no traffic needed

    # 2: which version's traffic
    target = await _target_version(monitor)
    if target.version is None:
        _unknown(status, name, namespace, "NoTarget", target.why)
        if spec.quality is not None:
            _quality_unknown(status, name, namespace, "NoTarget", target.why)
        fairness_unknown(body, status, "NoTarget", target.why)
        return
    version = target.version
    status.set(version=version)
    assert lookups.versions is not None, "set by the monitor's loop"
    mv = first(lookups.versions, (namespace, version))

    # 3: input drift, from the pods' sketch windows
    report = await _check_drift(monitor, status, version, mv)

    # 4: live quality, from the joined labels (whatever the input sample count)
    try:
        verdict = await _check_quality(monitor, status, target, mv)
    except ApiError:
        raise
    except Exception as exc:
        # The store failing under the quality check leaves the drift verdict standing.
        logger.exception("DriftMonitor quality check failed")
        message = f"{type(exc).__name__}: {exc}"[:1000]
        _quality_unknown(status, name, namespace, CHECK_FAILED, message)
        verdict = None

    # 4b: live fairness per sensitive group (modelops.controllers.fairness; never raises)
    fairness = await check_fairness(monitor, status, version, mv, logger)

    # 5: act
    if report is not None and report.dataset_drift and spec.action == "retrain":
        await start_retrain(
            monitor,
            body,
            status,
            current,
            "drift",
            f"dataset drift in {version}, share {report.drifted_share:.2f}",
        )
    if verdict is not None and verdict.fired and spec.action == "retrain":
        await start_retrain(monitor, body, status, current, "quality", verdict.message)
    if fairness is not None and fairness.fired and spec.action == "retrain":
        await start_retrain(
            monitor, body, status, current, "quality", f"fairness: {fairness.message}"
        )


async def _check_drift(
    monitor: DriftMonitor, status: StatusWriter, version: str, mv: dict[str, Any] | None
) -> DriftReport | None:
    """Test the version's merged sketches against its reference profile and report it
    (``Drifted``, phase, scores, gauges); None when no test could run (reported too)."""
    spec = monitor.spec
    namespace, name = monitor.metadata["namespace"], monitor.metadata["name"]
    try:
        profile = await _profile(version, mv)
    except (ArtifactError, LookupError) as exc:
        _unknown(status, name, namespace, getattr(exc, "reason", "ProfileMissing"), str(exc))
        return None

    window = parse_duration(spec.window)
    merged = await _merged_sketch(namespace, spec.deployment, version, profile, window)
    samples = merged.n_rows if merged else 0
    status.set(samples=samples)
    if problem := _spec_problem(monitor, profile, version):
        _unknown(status, name, namespace, "InvalidSpec", problem)
        return None
    if merged is None or samples < spec.min_samples:
        _unknown(
            status,
            name,
            namespace,
            "InsufficientData",
            f"{samples} samples of {version} in the last {spec.window}, need {spec.min_samples}",
        )
        return None
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
        return None
    _report(status, name, namespace, version, report)
    return report


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


@dataclass(frozen=True)
class Target:
    """The version a check watches, or why there is none; and the Deployment's status when
    it was read to find it."""

    version: str | None
    why: str = ""
    deployment: dict[str, Any] | None = None


async def _target_version(monitor: DriftMonitor) -> Target:
    spec = monitor.spec
    if spec.version:
        return Target(spec.version)
    dstatus = _deployment_status(monitor)
    if dstatus is None:
        return Target(None, f"Deployment {spec.deployment} not found")
    canary_live = dstatus.get("phase") == "Progressing" and (dstatus.get("canaryWeight") or 0) > 0
    if spec.traffic == "canary" or (spec.traffic == "auto" and canary_live):
        if not canary_live:
            return Target(None, f"Deployment {spec.deployment} has no canary taking traffic")
        return Target(dstatus.get("canaryVersion"), "", dstatus)
    stable = dstatus.get("stableVersion")
    why = "" if stable else f"Deployment {spec.deployment} serves no version yet"
    return Target(stable, why, dstatus)


def _deployment_status(monitor: DriftMonitor) -> dict[str, Any] | None:
    """The watched Deployment's status ({} before its first), None when it does not exist."""
    assert lookups.deployments is not None, "set by the monitor's loop"
    found = first(lookups.deployments, (monitor.metadata["namespace"], monitor.spec.deployment))
    return None if found is None else dict(found)


async def _profile(version: str, mv: dict[str, Any] | None) -> dict[str, Any]:
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


# -- live quality ------------------------------------------------------------------------------


async def _check_quality(
    monitor: DriftMonitor, status: StatusWriter, target: Target, mv: dict[str, Any] | None
) -> QualityVerdict | None:
    """Decide ``spec.quality`` for the target version and report it (``Underperforming``,
    ``status.quality``, phase, gauges, Events); None when the monitor has no quality rule."""
    spec, rule = monitor.spec, monitor.spec.quality
    namespace, name = monitor.metadata["namespace"], monitor.metadata["name"]
    if rule is None:
        _forget_quality(status, namespace, name)
        return None
    version = target.version
    assert version is not None, "checked by the caller"
    if mv is None:
        verdict = QualityVerdict("Unknown", "NoTarget", f"ModelVersion {version} not found")
    else:
        task: Task = mv["spec"]["signature"]["task"]
        window = rule.window or spec.window
        seconds = parse_duration(window)
        live = await _live_quality(namespace, spec.deployment, version, seconds)
        feedback = await _live_quality(namespace, spec.deployment, FEEDBACK_PREFIX, seconds)
        baseline = None
        if rule.max_degradation is not None and not spec_problem(rule, task, version):
            baseline = await _baseline(monitor, rule, task, target, mv, seconds)
        verdict = evaluate(
            rule,
            task,
            version,
            live.quality if live else None,
            baseline,
            window,
            (live or LiveQuality()).merge(feedback or LiveQuality()).feedback,
        )
    _report_quality(status, name, namespace, verdict)
    return verdict


async def _baseline(
    monitor: DriftMonitor,
    rule: QualityRule,
    task: Task,
    target: Target,
    mv: dict[str, Any],
    seconds: float,
) -> Baseline:
    """What ``maxDegradation`` compares the target version with (see ``QualityRule``)."""
    version = target.version
    deployment = monitor.spec.deployment
    dstatus: dict[str, Any] | None = None
    if rule.baseline != "training":
        dstatus = target.deployment
        if dstatus is None:
            dstatus = _deployment_status(monitor)
    stable = (dstatus or {}).get("stableVersion")
    canary = (dstatus or {}).get("canaryVersion")
    kind = baseline_kind(rule, version == canary and stable is not None and stable != version)
    if kind == "training":
        value = (mv["spec"].get("metrics") or {}).get(metric_for(rule, task))
        return Baseline("training", version, value=None if value is None else float(value))
    if dstatus is None:
        return Baseline("stable", problem=f"baseline stable: Deployment {deployment} not found")
    if not stable:
        return Baseline("stable", problem=f"Deployment {deployment} serves no stable version yet")
    if stable == version:
        problem = (
            f"{version} is {deployment}'s stable version: baseline stable compares another"
            " version with it (use baseline training)"
        )
        return Baseline("stable", stable, problem=problem)
    live = await _live_quality(monitor.metadata["namespace"], deployment, stable, seconds)
    return Baseline("stable", stable, counts=live.quality if live else None)


async def _live_quality(
    namespace: str, deployment: str, version: str, window: float
) -> LiveQuality | None:
    """All pods' quality objects of the version (or ``-``: feedback counters) in the last
    ``window`` seconds, added up."""
    prefix = f"{namespace}/quality/{deployment}/{version}/"
    return await merged_quality(runtime.store, get_settings().bucket, prefix, window)


def _report_quality(
    status: StatusWriter, name: str, namespace: str, verdict: QualityVerdict
) -> None:
    report_verdict(status, QUALITY_CONDITION, verdict, DETECTED_EVENT, RECOVERED_EVENT)
    quality = verdict.quality
    # Every field written, None included: a merge patch would keep a stale sub-field.
    status.set(quality=quality.model_dump(by_alias=True, mode="json") if quality else None)
    if verdict.fired:
        status.set(phase="Underperforming", message=verdict.message)
    for metric in ALL_DISPLAYED:
        if metric in verdict.gauges:
            MODEL_QUALITY.labels(namespace, name, metric).set(verdict.gauges[metric])
        else:
            remove_series(MODEL_QUALITY, namespace, name, metric)
    if quality is not None:
        QUALITY_LABELS.labels(namespace, name).set(quality.labels)
    else:
        remove_series(QUALITY_LABELS, namespace, name)
    UNDERPERFORMING.labels(namespace, name).set(1 if verdict.fired else 0)


def _quality_unknown(
    status: StatusWriter, name: str, namespace: str, reason: str, message: str
) -> None:
    status.condition(QUALITY_CONDITION, "Unknown", reason, message)
    UNDERPERFORMING.labels(namespace, name).set(0)


def _forget_quality(status: StatusWriter, namespace: str, name: str) -> None:
    """A monitor whose quality rule was removed: no condition, status or gauges left of it."""
    if "quality" in (status.body.get("status") or {}):
        status.set(quality=None)
    status.drop_condition(QUALITY_CONDITION)
    for metric in ALL_DISPLAYED:
        remove_series(MODEL_QUALITY, namespace, name, metric)
    remove_series(QUALITY_LABELS, namespace, name)
    remove_series(UNDERPERFORMING, namespace, name)
