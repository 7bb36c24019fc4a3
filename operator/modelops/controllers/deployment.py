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
from modelops.controllers import loop
from modelops.controllers.loop import snapshot
from modelops.controllers.main import get_settings, runtime
from modelops.controllers.metrics import CANARY_WEIGHT, ROLLBACKS
from modelops.controllers.status import StatusWriter, invalid_spec, reconciling
from modelops.controllers.storereads import pod_reports
from modelops.controllers.watches import Key, deployment_key, first, values
from modelops.controllers.windows import canary_counts, merged_quality
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
    next_due,
    plan,
    quality_window,
)

ACTION_ANNOTATION = f"{GROUP}/action"
APPROVED_BY_ANNOTATION = f"{GROUP}/approved-by"
"""Who set ``action=approve``; the ValidatingAdmissionPolicy ``modelops-approvals`` only lets
a user with the approve verb set it, to their own name."""


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


RESYNC_SECONDS = 300.0
PASSES = asyncio.Semaphore(get_settings().max_concurrent_passes)
"""Passes of this kind running at once (``Settings.max_concurrent_passes``)."""
"""A Deployment nothing wakes is reconciled again after this long: its children are applied
and pruned even if unchanged (one deleted by hand comes back), as controller-runtime's resync."""
LOADING_POLL_SECONDS = get_settings().rollout_poll_seconds
"""How often a canary still loading looks for its pods' reports (the store sends no events)."""
PROGRESS_POLL_SECONDS = 5.0
"""How often a canary in flight re-reads what only the store says (error counts, pods that
refused it, joined labels); its steps' ends are woken for exactly, not polled."""


@dataclass
class Memory:
    """What one Deployment's loop remembers between passes: the object its last write
    returned (:func:`modelops.controllers.loop.fresher`), and its children as last applied."""

    written: dict[str, Any] | None = None
    applied: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, name) -> the applied manifest's JSON, to skip applying it unchanged."""
    pruned: frozenset[tuple[str, str]] | None = None
    synced: float = 0.0
    """When every child was last applied and pruned regardless of changes."""


@dataclass(frozen=True)
class Caches:
    """The Kopf indexes a pass reads (see :mod:`modelops.controllers.watches`)."""

    versions: kopf.Index[Key, dict[str, Any]]
    monitors_by_name: kopf.Index[Key, dict[str, Any]]
    monitors_by_deployment: kopf.Index[Key, dict[str, Any]]
    serving: kopf.Index[Key, dict[str, Any]]


# One loop per object (a daemon), woken by the watch events that matter to it and by the
# times its rollout falls due (modelops.controllers.loop): never two passes of one object
# at once, and no pass when nothing changed.
@kopf.daemon(GROUP, VERSION, "deployments", cancellation_timeout=30)
async def deployment_loop(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    # the indexes of modelops.controllers.watches, by their functions' names
    caches = Caches(
        kwargs["versions_by_model"],
        kwargs["monitors_by_name"],
        kwargs["monitors_by_deployment"],
        kwargs["serving_deployments"],
    )
    memory = Memory()
    key = deployment_key(body["metadata"]["namespace"], body["metadata"]["name"])

    async def one_pass() -> float:
        current = snapshot(body, memory.written)
        patch = kopf.Patch()
        async with reconciling("Deployment", current, patch) as done:
            delay = await _reconcile(current, patch, logger, caches, memory)
        memory.written = done.stored or memory.written
        if patch.get("metadata"):
            memory.written = await _patch_metadata(current, patch)
        return delay

    await loop.run(key, stopped, one_pass, logger, PASSES)


async def _patch_metadata(body: kopf.Body, patch: kopf.Patch) -> dict[str, Any]:
    """Write what the pass left in ``patch`` outside status (a consumed action annotation)."""
    meta = body["metadata"]
    return await runtime.cluster.patch(
        API_VERSION, "Deployment", meta["namespace"], meta["name"], dict(patch)
    )


async def _reconcile(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, caches: Caches, memory: Memory
) -> float:
    """One pass; returns the seconds until the next one is due (its requeue-after)."""
    status = StatusWriter(body, patch)
    # 1: load and validate
    try:
        dep = Deployment.model_validate(dict(body))
    except ValidationError as exc:
        message = invalid_spec(exc)
        status.set(phase="Degraded", message=message)
        status.condition("Ready", "False", "InvalidSpec", message)
        return RESYNC_SECONDS
    name, namespace = dep.metadata["name"], dep.metadata["namespace"]
    current = dict(body.get("status", {}))
    state = State.from_status(current, parse_time)

    # 2: the facts the rollout depends on
    annotations = body.get("metadata", {}).get("annotations") or {}
    specs = _version_specs(caches, namespace, dep.spec.model)
    # Only about the canary in flight: a rolled-back one's reports and monitors must not
    # speak for the next canary the plan may start in this same pass.
    canary = state.canary if state.canary_active else None
    bucket = get_settings().bucket
    loaded, failures = await pod_reports(
        runtime.store, bucket, namespace, name, canary, every_pod=dep.spec.routing == "model"
    )
    guards = _guards(caches, dep, canary) if canary else Guards()
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
        **await canary_counts(runtime.store, bucket, namespace, name, state),
    )

    # 3: decide
    now = time.time()
    result = plan(dep.spec, state, facts, now)
    new = result.state

    # 4: own and apply the children
    routes = [serving.Route(v, role, w, specs[v]["spec"]) for v, role, w in result.routes()]
    replicas = Replicas()
    if routes:
        # with spec.autoscaling, replicas are left to an autoscaler per serving Deployment
        wanted = autoscaling.autoscaled(dep, serving.children(dep, routes, get_settings()))
        resync = now - memory.synced >= RESYNC_SECONDS
        for child in wanted:
            kopf.adopt(child, owner=body)
            # replicas given to the autoscaler at their value, not reset to 1 by their drop
            last = memory.applied.get((child["kind"], child["metadata"]["name"]))
            await autoscaling.hand_over_replicas(runtime.cluster, child, last)
            await _apply(child, memory, caches, force=resync)
        keep = frozenset((c["kind"], c["metadata"]["name"]) for c in wanted)
        if resync or keep != memory.pruned:
            await _prune(dep, keep)
            memory.pruned = keep
        if resync:
            memory.synced = now
        replicas = _replicas(dep, [v for v, _, _ in result.routes()], caches)
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
    if annotations.get(ACTION_ANNOTATION) and result.events and not result.consume_action:
        return 0.0  # obeyed: the next pass, from this status, removes it
    if result.events:
        # a transition: one more pass soon, as the next state may move on at once
        return min(LOADING_POLL_SECONDS, requeue_after(dep, new, now))
    return requeue_after(dep, new, now)


def requeue_after(dep: Deployment, state: State, now: float) -> float:
    """Seconds until the Deployment's next pass is due without any watch event: when its
    canary's step (test, shadowing) ends, and meanwhile as often as the store's facts need
    (:data:`LOADING_POLL_SECONDS` while loading, :data:`PROGRESS_POLL_SECONDS` after);
    :data:`RESYNC_SECONDS` with no canary in flight."""
    if not state.canary_active:
        return RESYNC_SECONDS
    poll = LOADING_POLL_SECONDS if state.step is None else PROGRESS_POLL_SECONDS
    due = next_due(dep.spec, state, now)
    if due is None:
        return poll
    # a hair after the end: the plan moves on once the whole pause has passed
    return min(poll, due - now + 0.05)


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


def _version_specs(caches: Caches, namespace: str, model: str) -> dict[str, dict[str, Any]]:
    """The model's ModelVersions by name, from the index (those made by hand carry no label:
    indexed by spec.model)."""
    return {mv["metadata"]["name"]: mv for mv in values(caches.versions, (namespace, model))}


@dataclass
class Guards:
    """(monitor, message) of the canary's guards that say it drifted, that say it
    underperforms, and that cannot evaluate it."""

    firing: list[tuple[str, str]] = field(default_factory=list)
    underperforming: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)


def _guards(caches: Caches, dep: Deployment, canary: str) -> Guards:
    """The canary's guards (DriftMonitors named in the spec, or aimed here with rollback), by
    what they say of it (:func:`modelops.rollout.guard_verdict`); a named one missing cannot
    evaluate it."""
    namespace, name = dep.metadata["namespace"], dep.metadata["name"]
    named = set(dep.spec.rollback.drift_monitors)
    monitors = {
        m["metadata"]["name"]: m
        for m in values(caches.monitors_by_deployment, (namespace, name))
        if m.get("spec", {}).get("action") == "rollback"
    }
    for wanted in named:
        if (found := first(caches.monitors_by_name, (namespace, wanted))) is not None:
            monitors[wanted] = found
    guards = Guards(unknown=[(m, "DriftMonitor not found") for m in sorted(named - set(monitors))])
    lists = {"firing": guards.firing, "underperforming": guards.underperforming}
    for monitor_name in sorted(monitors):
        verdict = guard_verdict(monitors[monitor_name], canary)
        if verdict is not None:
            lists.get(verdict[0], guards.unknown).append((monitor_name, verdict[1]))
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


@dataclass(frozen=True)
class Replicas:
    """Serving pods ready, there now and wanted (None: no serving Deployment yet)."""

    ready: int | None = None
    current: int | None = None
    desired: int | None = None


def _replicas(dep: Deployment, versions: list[str], caches: Caches) -> Replicas:
    """Serving pods of the one server (model routing) or the fewest of any version, from the
    apps Deployments' index: ready and current from their status, desired from their
    ``spec.replicas`` (set by the autoscaler, with ``spec.autoscaling``: its decision, as
    soon as it is taken, and with a watch event to wake the Deployment)."""
    name, namespace = dep.metadata["name"], dep.metadata["namespace"]
    names = (
        [serving.server_name(name)]
        if dep.spec.routing == "model"
        else [serving.server_name(name, v) for v in versions]
    )
    ready, current, desired = [], [], []
    for server in names:
        obj = first(caches.serving, (namespace, server)) or {}
        ready.append(int(obj.get("status", {}).get("readyReplicas") or 0))
        current.append(int(obj.get("status", {}).get("replicas") or 0))
        desired.append(int(obj.get("spec", {}).get("replicas") or 0))
    if not names:
        return Replicas(ready=0)
    return Replicas(min(ready), min(current), min(desired))


async def _apply(
    child: dict[str, Any], memory: Memory, caches: Caches, *, force: bool = False
) -> None:
    """Server-side apply ``child`` unless it is what was last applied (and, for a serving
    Deployment, still exists); ``force`` applies it regardless."""
    meta = child["metadata"]
    key = (child["kind"], meta["name"])
    manifest = json.dumps(child, sort_keys=True)
    gone = key[0] == "Deployment" and first(caches.serving, (meta["namespace"], key[1])) is None
    if not force and not gone and memory.applied.get(key) == manifest:
        return
    memory.applied.pop(key, None)  # a failed apply is tried again next pass
    await runtime.cluster.apply(child)
    memory.applied[key] = manifest


async def _prune(dep: Deployment, keep: frozenset[tuple[str, str]]) -> None:
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
