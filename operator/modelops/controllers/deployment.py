"""Deployment controller: serve the stable version, walk a canary through its steps (or an A/B
test, or a shadow), decide on live quality, roll back."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from modelops import API_VERSION, GROUP, VERSION
from modelops.api.common import now_iso
from modelops.api.deployment import Deployment
from modelops.controllers.main import get_settings, runtime
from modelops.controllers.metrics import CANARY_WEIGHT, ROLLBACKS
from modelops.controllers.status import StatusWriter, invalid_spec, reconciling
from modelops.controllers.windows import merged_quality
from modelops.drift.quality import Agreement, QualityCounts
from modelops.resources import autoscaling, serving
from modelops.rollout import (
    AWAITING_APPROVAL,
    HELD_REASONS,
    HISTORY_LIMIT,
    Event,
    Facts,
    Plan,
    State,
    Version,
    guard_verdict,
    plan,
    quality_window,
)
from modelops.serving.table import TRANSIENT_REASON
from modelops.storage import Location

ACTION_ANNOTATION = f"{GROUP}/action"
APPROVED_BY_ANNOTATION = f"{GROUP}/approved-by"
"""Who set ``action=approve``; the ValidatingAdmissionPolicy ``modelops-approvals`` only lets
a user with the approve verb set it, to their own name."""
REPORT_FRESH_SECONDS = 30.0
"""A serving pod's report older than this is ignored (the pod is gone or stuck)."""


def _version(mv: dict[str, Any]) -> Version:
    spec = mv["spec"]
    ready = mv.get("status", {}).get("phase") == "Ready"
    task = (spec.get("signature") or {}).get("task")
    return Version(
        mv["metadata"]["name"], int(spec["version"]), ready, spec.get("metrics", {}), task
    )


def parse_time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# One level-triggered path per object: a timer fires at once for new and resumed objects,
# and event handlers stacked beside it would run concurrently with it on the same object.
@kopf.timer(GROUP, VERSION, "deployments", interval=get_settings().rollout_poll_seconds)
async def reconcile_deployment(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    async with reconciling("Deployment", body, patch):
        await _reconcile(body, patch, logger)


async def _reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    status = StatusWriter(body, patch)
    # 1: load and validate
    try:
        dep = Deployment.model_validate(dict(body))
    except ValidationError as exc:
        message = invalid_spec(exc)
        status.set(phase="Degraded", message=message)
        status.condition("Ready", "False", "InvalidSpec", message)
        return
    name, namespace = dep.metadata["name"], dep.metadata["namespace"]
    current = dict(body.get("status", {}))
    state = State.from_status(current, parse_time)

    # 2: the facts the rollout depends on
    annotations = body.get("metadata", {}).get("annotations") or {}
    specs = await _version_specs(namespace, dep.spec.model)
    # Only about the canary in flight: a rolled-back one's reports and monitors must not
    # speak for the next canary the plan may start in this same pass.
    canary = state.canary if state.canary_active else None
    loaded, failures = await _pod_reports(
        namespace, name, canary, every_pod=dep.spec.routing == "model"
    )
    guards = await _guards(dep, canary) if canary else Guards()
    quality = await _quality(dep, state, canary, logger)
    facts = Facts(
        versions=[_version(mv) for mv in specs.values()],
        canary_loaded=loaded,
        canary_load_failures=failures,
        firing_monitors=guards.firing,
        underperforming_monitors=guards.underperforming,
        unknown_guards=guards.unknown,
        action=annotations.get(ACTION_ANNOTATION),
        approved_by=annotations.get(APPROVED_BY_ANNOTATION) or None,
        canary_quality=quality.canary,
        stable_quality=quality.stable,
        agreement=quality.agreement,
        quality_error=quality.error,
        **await _canary_counts(namespace, name, state),
    )

    # 3: decide
    result = plan(dep.spec, state, facts, time.time())
    new = result.state

    # 4: own and apply the children
    routes = [serving.Route(v, role, w, specs[v]["spec"]) for v, role, w in result.routes()]
    replicas = Replicas()
    if routes:
        # with spec.autoscaling, replicas are left to an autoscaler per serving Deployment
        wanted = autoscaling.autoscaled(dep, serving.children(dep, routes, get_settings()))
        for child in wanted:
            kopf.adopt(child, owner=body)
            await runtime.cluster.apply(child)
        await _prune(dep, {(c["kind"], c["metadata"]["name"]) for c in wanted})
        replicas = await _replicas(dep, [v for v, _, _ in result.routes()])
    ready_replicas = replicas.ready

    # 5: report
    for event in result.events:
        _record(status, current, event)
        if event.warning:  # every warning the plan raises is a rollback
            ROLLBACKS.labels(namespace, name, event.reason).inc()
    for version, _, weight in result.routes():
        CANARY_WEIGHT.labels(namespace, name, version).set(weight)
    if new.canary and not new.canary_active:
        CANARY_WEIGHT.labels(namespace, name, new.canary).set(0)
    status.set(
        phase=new.phase,
        stableVersion=new.stable,
        canaryVersion=new.canary,
        canaryWeight=new.weight,
        step=new.step,
        stepStartedAt=iso(new.step_started) if new.step_started else None,
        rejectedVersions=list(new.rejected),
        readyReplicas=ready_replicas,
        replicas=replicas.current,
        desiredReplicas=replicas.desired,
        url=serving.url(dep) if dep.spec.routing == "model" else None,
        message=result.waiting or (result.events[-1].message if result.events else None),
    )
    if result.analysis is not None:
        # every field, nulls too: a merge patch keeps the keys it does not name
        status.set(analysis=result.analysis.model_dump(by_alias=True, mode="json"))
    _conditions(status, dep, result, ready_replicas)
    # 6: an action is removed only once the status this pass started from shows it obeyed
    # (rollout.plan): a pass that fails before its status is written cannot lose it
    if result.consume_action:
        consumed = patch.metadata.setdefault("annotations", {})
        consumed[ACTION_ANNOTATION] = None
        if APPROVED_BY_ANNOTATION in annotations:  # a name goes with the action it came with
            consumed[APPROVED_BY_ANNOTATION] = None


def _record(status: StatusWriter, current: dict[str, Any], event: Event) -> None:
    history = list(status.patch.status.get("history") or current.get("history") or [])
    history.append(
        {
            "time": now_iso(),
            "event": event.reason,
            "version": event.version,
            "reason": event.reason,
            "message": event.message,
            **({"analysis": event.analysis.wire()} if event.analysis else {}),
            **({"approvedBy": event.approved_by} if event.approved_by else {}),
        }
    )
    status.set(history=history[-HISTORY_LIMIT:])
    if event.warning:
        kopf.warn(status.body, reason="RolledBack", message=event.message)
    else:
        kopf.info(status.body, reason=event.reason, message=event.message)


def _conditions(status: StatusWriter, dep: Deployment, result: Plan, ready: int | None) -> None:
    phase, waiting, stable = result.state.phase, result.waiting, result.state.stable
    if stable is None:
        status.condition("Ready", "False", "NoReadyVersion", waiting, event=False)
        status.condition("Progressing", "True", "WaitingForVersion", waiting, event=False)
        status.condition("Degraded", "False", "NoReadyVersion", waiting, event=False)
        return
    scaling = dep.spec.autoscaling
    wanted = scaling.min_replicas if scaling else dep.spec.replicas
    if ready is not None and ready >= wanted:
        status.condition("Ready", "True", "Serving", f"{stable} served", event=False)
    else:
        status.condition(
            "Ready", "False", "PodsNotReady", f"{ready or 0}/{wanted} ready", event=False
        )
    if phase == "Progressing" and result.reason in HELD_REASONS:
        changed = status.condition("Progressing", "False", result.reason, waiting, event=False)
        if changed:  # held: a Warning, once
            kopf.warn(status.body, reason=result.reason, message=waiting)
    elif phase == "Progressing":
        reason = result.reason or "CanaryProgressing"
        # an Event once it starts awaiting approval: approvers watch Events, not conditions
        awaiting = reason == AWAITING_APPROVAL
        status.condition("Progressing", "True", reason, waiting, event=awaiting)
    else:
        status.condition("Progressing", "False", phase, "", event=False)
    if phase == "RolledBack":
        status.condition("Degraded", "True", "RolledBack", "canary rolled back", event=False)
    else:
        status.condition("Degraded", "False", "AsExpected", "", event=False)


async def _version_specs(namespace: str, model: str) -> dict[str, dict[str, Any]]:
    """The model's ModelVersions by name (those made by hand carry no label: filter on spec)."""
    items = await runtime.cluster.list(API_VERSION, "ModelVersion", namespace, {})
    return {mv["metadata"]["name"]: mv for mv in items if mv.get("spec", {}).get("model") == model}


async def _pod_reports(
    namespace: str, deployment: str, version: str | None, *, every_pod: bool
) -> tuple[bool, list[str]]:
    """Whether the serving pods that should hold the version report it loaded (and there is
    one), and the pods that refused it for good ("pod: Reason"). In model routing every pod
    holds every version; in gateway routing only the pods whose table lists it."""
    if version is None:
        return False, []
    bucket = get_settings().bucket
    prefix = Location(bucket, f"{namespace}/serving/{deployment}/pods/")
    keys = await asyncio.to_thread(runtime.store.list, prefix)
    fresh = []
    for key in keys:
        report = json.loads(await asyncio.to_thread(runtime.store.get, Location(bucket, key)))
        if time.time() - float(report.get("time", 0)) < REPORT_FRESH_SECONDS and (
            every_pod or version in report.get("versions", [])
        ):
            fresh.append(report)
    failures = [
        f"{r.get('pod', '?')}: {reason}"
        for r in fresh
        if (reason := r.get("failed", {}).get(version)) and reason != TRANSIENT_REASON
    ]
    return bool(fresh) and all(version in r.get("loaded", []) for r in fresh), failures


@dataclass
class Guards:
    """(monitor, message) of the canary's guards that say it drifted, that say it
    underperforms, and that cannot evaluate it."""

    firing: list[tuple[str, str]] = field(default_factory=list)
    underperforming: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)


async def _guards(dep: Deployment, canary: str) -> Guards:
    """The canary's guards (DriftMonitors named in the spec, or aimed here with rollback), by
    what they say of it (:func:`modelops.rollout.guard_verdict`); a named one missing cannot
    evaluate it."""
    named = set(dep.spec.rollback.drift_monitors)
    monitors = await runtime.cluster.list(
        API_VERSION, "DriftMonitor", dep.metadata["namespace"], {}
    )
    found = {m["metadata"]["name"] for m in monitors}
    guards = Guards(unknown=[(m, "DriftMonitor not found") for m in sorted(named - found)])
    lists = {"firing": guards.firing, "underperforming": guards.underperforming}
    for monitor in sorted(monitors, key=lambda m: str(m["metadata"]["name"])):
        name, spec = monitor["metadata"]["name"], monitor.get("spec", {})
        aimed = spec.get("deployment") == dep.metadata["name"] and spec.get("action") == "rollback"
        if name not in named and not aimed:
            continue
        verdict = guard_verdict(monitor, canary)
        if verdict is not None:
            lists.get(verdict[0], guards.unknown).append((name, verdict[1]))
    return guards


@dataclass(frozen=True)
class Quality:
    """Labels joined for the canary and the stable version, the canary's agreement with
    stable (None: nothing written), or why they could not be read."""

    canary: QualityCounts | None = None
    stable: QualityCounts | None = None
    agreement: Agreement | None = None
    error: str | None = None


async def _quality(
    dep: Deployment, state: State, canary: str | None, logger: kopf.Logger
) -> Quality:
    """Facts of the canary's quality analysis: the labels joined for the canary and for the
    stable version, and the canary's agreement with stable, over the window the plan reads
    (:func:`modelops.rollout.quality_window`); nothing while the canary loads or when the
    spec asks for no analysis. A failure to read them is a fact too (``quality_error``): the
    analysis cannot be evaluated and holds the canary (fail closed), while actions, guards
    and the other rollback rules still apply."""
    window = quality_window(dep.spec)
    if canary is None or state.step is None or state.stable is None or window is None:
        return Quality()
    bucket = get_settings().bucket
    namespace, name = dep.metadata["namespace"], dep.metadata["name"]
    try:
        found = [
            await merged_quality(runtime.store, bucket, f"{namespace}/quality/{name}/{v}/", window)
            for v in (canary, state.stable)
        ]
    except Exception as exc:  # any failure (store, unparsable object) is one that holds
        logger.warning(f"quality of {canary} not read: {type(exc).__name__}: {exc}")
        return Quality(error=f"{type(exc).__name__}: {exc}")
    mine, stable = found
    return Quality(
        mine.quality if mine else None,
        stable.quality if stable else None,
        mine.agreement if mine else None,
    )


_window_counts: dict[str, tuple[float, int, int]] = {}
"""End, requests and errors of each sketch window read (a window is written once)."""
WINDOW_COUNTS_KEPT = 50_000


async def _canary_counts(namespace: str, deployment: str, state: State) -> dict[str, int]:
    """Requests and errors the canary answered since its current step began."""
    if not state.canary_active or state.step is None or state.step_started is None:
        return {"canary_requests": 0, "canary_errors": 0}
    bucket = get_settings().bucket
    prefix = Location(bucket, f"{namespace}/sketches/{deployment}/{state.canary}/")
    requests = errors = 0
    for key in await asyncio.to_thread(runtime.store.list, prefix):
        start = key.rsplit("/", 1)[-1].split("-", 1)[0]
        if not start.isdigit() or int(start) + 60 < state.step_started:
            continue
        counts = _window_counts.get(key)
        if counts is None:
            window = json.loads(await asyncio.to_thread(runtime.store.get, Location(bucket, key)))
            counts = (
                float(window.get("end", 0)),
                int(window.get("requests", 0)),
                int(window.get("errors", 0)),
            )
            _window_counts[key] = counts
            while len(_window_counts) > WINDOW_COUNTS_KEPT:
                del _window_counts[next(iter(_window_counts))]  # the oldest read
        end, n, failed = counts
        if end >= state.step_started:
            requests += n
            errors += failed
    return {"canary_requests": requests, "canary_errors": errors}


@dataclass(frozen=True)
class Replicas:
    """Serving pods ready, there now and wanted (None: no serving Deployment yet)."""

    ready: int | None = None
    current: int | None = None
    desired: int | None = None


async def _replicas(dep: Deployment, versions: list[str]) -> Replicas:
    """Serving pods of the one server (model routing) or the fewest of any version: ready ones
    from the apps Deployment; current and desired from its autoscaler once that has a status,
    else from the apps Deployment (its status, and its spec)."""
    name, namespace = dep.metadata["name"], dep.metadata["namespace"]
    names = (
        [serving.server_name(name)]
        if dep.spec.routing == "model"
        else [serving.server_name(name, v) for v in versions]
    )
    ready, current, desired = [], [], []
    for server in names:
        obj = await runtime.cluster.get("apps/v1", "Deployment", namespace, server) or {}
        hpa = None
        if dep.spec.autoscaling is not None:
            hpa = await runtime.cluster.get(
                "autoscaling/v2", "HorizontalPodAutoscaler", namespace, server
            )
        scaled = (hpa or {}).get("status") or {}
        ready.append(int(obj.get("status", {}).get("readyReplicas") or 0))
        # An autoscaler that has never rescaled reports desiredReplicas 0: its target's
        # replicas are then what it wants.
        current.append(int(scaled.get("currentReplicas", obj.get("status", {}).get("replicas", 0))))
        desired.append(int(scaled.get("desiredReplicas") or obj.get("spec", {}).get("replicas", 0)))
    if not names:
        return Replicas(ready=0)
    return Replicas(min(ready), min(current), min(desired))


async def _prune(dep: Deployment, keep: set[tuple[str, str]]) -> None:
    """Delete owned children no longer wanted (a gateway-mode version that left the table, an
    autoscaler once ``spec.autoscaling`` is removed); ``keep`` holds (kind, name) pairs."""
    namespace = dep.metadata["namespace"]
    selector = {serving.DEPLOYMENT_LABEL: dep.metadata["name"]}
    for api_version, kind in (
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1", "GRPCRoute"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ):
        # Gateway API kinds may not exist on a cluster routing in-process: not listed there.
        if kind in ("HTTPRoute", "GRPCRoute") and dep.spec.routing != "gateway":
            continue
        for obj in await runtime.cluster.list(api_version, kind, namespace, selector):
            if (kind, obj["metadata"]["name"]) not in keep:
                await runtime.cluster.delete(api_version, kind, namespace, obj["metadata"]["name"])
