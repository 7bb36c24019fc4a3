"""The canary state machine of a modelops Deployment, as a pure function.

``plan(spec, state, facts, now)`` returns the next state and what happened; the controller
gathers the facts (versions, pod reports, monitors, error counts) and applies the result.
Everything here is deterministic, so restarts resume exactly where the status says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelops.api.common import parse_duration
from modelops.api.deployment import DeploymentSpec
from modelops.resources.training import gate_failures

HISTORY_LIMIT = 20
ACTIONS = ("promote", "abort")
"""Values of the modelops.dev/action annotation."""
GUARD_UNKNOWN = "GuardUnknown"
"""Progressing=False: a guarding DriftMonitor cannot evaluate the canary, which is held."""
PROMOTE_PENDING = "PromotePending"
"""Progressing=True: promotion was asked for; the serving pods have not all loaded the canary."""
EVALUATING_REASONS = frozenset({"InsufficientData"})
"""Drifted=Unknown reasons of a monitor that works and is waiting for samples: no hold."""


@dataclass(frozen=True)
class Version:
    name: str
    number: int
    ready: bool
    metrics: dict[str, float]


@dataclass(frozen=True)
class Facts:
    versions: list[Version]
    canary_loaded: bool = False
    """Every serving pod reports the canary loaded and verified."""
    canary_load_failures: list[str] = field(default_factory=list)
    """"pod: Reason: message" where a serving pod refused the canary's artifact for good
    (digest mismatch, missing, untrusted, not a model; not an unreachable store)."""
    firing_monitors: list[tuple[str, str]] = field(default_factory=list)
    """(monitor, message) of DriftMonitors that say the canary drifted."""
    unknown_guards: list[tuple[str, str]] = field(default_factory=list)
    """(monitor, why) of guarding DriftMonitors that cannot evaluate the canary: missing,
    never checked, behind their spec, or Drifted=Unknown for a reason other than too few
    samples. While there is one, the canary stays in its step (fail closed)."""
    canary_requests: int = 0
    canary_errors: int = 0
    action: str | None = None
    """``promote`` or ``abort`` from the modelops.dev/action annotation."""


@dataclass(frozen=True)
class State:
    phase: str = "Pending"
    stable: str | None = None
    canary: str | None = None
    weight: int | None = None
    step: int | None = None
    """None while the canary loads; then the index of the current step."""
    step_started: float | None = None
    rejected: tuple[str, ...] = ()

    @classmethod
    def from_status(cls, status: dict[str, Any], parse_time: Any) -> State:
        started = status.get("stepStartedAt")
        return cls(
            phase=status.get("phase") or "Pending",
            stable=status.get("stableVersion"),
            canary=status.get("canaryVersion"),
            weight=status.get("canaryWeight"),
            step=status.get("step"),
            step_started=parse_time(started) if started else None,
            rejected=tuple(status.get("rejectedVersions") or ()),
        )

    @property
    def canary_active(self) -> bool:
        return self.canary is not None and self.phase == "Progressing"


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    version: str | None
    warning: bool = False


@dataclass(frozen=True)
class Plan:
    state: State
    events: list[Event]
    waiting: str = ""
    """Why nothing moved, when something is awaited (for the Progressing condition)."""
    reason: str = ""
    """The Progressing reason while waiting, when not the plain CanaryProgressing:
    ``GUARD_UNKNOWN`` (held) or ``PROMOTE_PENDING``."""
    consume_action: bool = False
    """Remove the modelops.dev/action annotation: the status this pass started from already
    shows it obeyed (no canary in flight), or its value is not an action."""

    def routes(self) -> list[tuple[str, str, int]]:
        """(version, role, weight) to serve: the stable, and the canary while it is active."""
        s = self.state
        if s.stable is None:
            return []
        if not s.canary_active or s.canary is None:
            return [(s.stable, "stable", 100)]
        weight = s.weight or 0
        return [(s.stable, "stable", 100 - weight), (s.canary, "canary", weight)]


def _eligible(spec: DeploymentSpec, facts: Facts, rejected: tuple[str, ...]) -> list[Version]:
    return sorted(
        (
            v
            for v in facts.versions
            if v.ready and v.name not in rejected and not gate_failures(v.metrics, spec.gates)
        ),
        key=lambda v: v.number,
    )


def _find(facts: Facts, name: str | None) -> Version | None:
    return next((v for v in facts.versions if v.name == name), None)


def guard_verdict(monitor: Mapping[str, Any], canary: str) -> tuple[str, str] | None:
    """What a DriftMonitor guarding the canary says: ``("firing", message)`` when it found the
    canary drifted, ``("unknown", why)`` when it cannot evaluate it, else None (no drift, or
    too few samples yet: a working monitor)."""
    status = monitor.get("status") or {}
    drifted = next((c for c in status.get("conditions") or [] if c.get("type") == "Drifted"), None)
    if drifted is None:
        return "unknown", "not checked yet"
    if drifted.get("status") == "True":
        if status.get("version") == canary:
            return "firing", str(drifted.get("message", ""))
        return None
    generation = (monitor.get("metadata") or {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return "unknown", f"generation {generation} not checked yet"
    reason = drifted.get("reason")
    if drifted.get("status") == "Unknown" and reason not in EVALUATING_REASONS:
        return "unknown", f"{reason}: {drifted.get('message', '')}"
    return None


def plan(spec: DeploymentSpec, state: State, facts: Facts, now: float) -> Plan:
    """The next state from the last one written to status and this pass's facts.

    An action applies to the canary in flight in ``state``, the status of the last successful
    pass. With none in flight, an action still present was obeyed by an earlier pass (or had
    nothing to act on): it is consumed and does nothing, so it cannot touch a canary that
    starts later. Consumed only then, an action outlives any pass that fails before its effect
    is in the status.
    """
    if facts.action is not None and (not state.canary_active or facts.action not in ACTIONS):
        result = _plan(spec, state, dataclasses.replace(facts, action=None), now)
        if facts.action not in ACTIONS:
            why = f"modelops.dev/action={facts.action} ignored: not one of {', '.join(ACTIONS)}"
            result.events.append(Event("ActionIgnored", why, state.canary))
        return dataclasses.replace(result, consume_action=True)
    return _plan(spec, state, facts, now)


def _plan(spec: DeploymentSpec, state: State, facts: Facts, now: float) -> Plan:
    events: list[Event] = []
    eligible = _eligible(spec, facts, state.rejected)

    # 1: the stable version: pinned by name, or `latest` resolved once and then kept
    if spec.stable.version != "latest":
        pinned = _find(facts, spec.stable.version)
        stable = spec.stable.version if pinned and pinned.ready else state.stable
        if stable is None:
            return Plan(state, events, f"stable version {spec.stable.version} is not Ready")
    else:
        stable = state.stable or (eligible[-1].name if eligible else None)
        if stable is None:
            return Plan(state, events, "no Ready ModelVersion passes the gates yet")
    if stable != state.stable:
        events.append(Event("StableSelected", f"serving {stable} as stable", stable))
        state = dataclasses.replace(state, stable=stable, phase="Stable")
        if state.canary == stable:
            state = dataclasses.replace(state, canary=None, weight=None, step=None)

    # 2: a canary to start, when none is in flight
    if not state.canary_active:
        candidate = _candidate(spec, facts, state, eligible)
        if candidate is None:
            return Plan(state, events)
        state = dataclasses.replace(
            state, canary=candidate, weight=0, step=None, step_started=now, phase="Progressing"
        )
        events.append(Event("CanaryStarted", f"loading {candidate} for a canary", candidate))

    canary = state.canary
    assert canary is not None
    if spec.canary is None:
        return _end(state, events, "CanaryRemoved", "spec.canary was removed", reject=False)

    # 3: manual actions and rollback rules win over the timer and the guards; a promotion
    # still needs every serving pod that holds the canary to have loaded it
    if facts.action == "abort":
        return _end(state, events, "ManualAbort", "aborted by modelops.dev/action=abort")
    if facts.action == "promote" and facts.canary_loaded:
        return _promote(state, events, "promoted by modelops.dev/action=promote")
    if facts.canary_load_failures:
        return _end(state, events, "CanaryLoadFailed", "; ".join(facts.canary_load_failures))
    if facts.firing_monitors:
        detail = "; ".join(f"{m}: {msg}" for m, msg in facts.firing_monitors)
        return _end(state, events, "DriftDetected", detail)
    rollback = spec.rollback
    if (
        rollback.max_error_rate is not None
        and facts.canary_requests >= rollback.min_samples
        and facts.canary_errors / facts.canary_requests > rollback.max_error_rate
    ):
        rate = facts.canary_errors / facts.canary_requests
        return _end(
            state,
            events,
            "ErrorRateExceeded",
            f"error rate {rate:.3f} > {rollback.max_error_rate} over "
            f"{facts.canary_requests} requests",
        )
    if facts.action == "promote":
        why = f"promotion requested: waiting for every serving pod to load {canary}"
        return Plan(state, events, why, PROMOTE_PENDING)

    # 4: load, then walk the steps on their timers, then promote; a guard that cannot
    # evaluate the canary keeps it in its step (its time in the step still counts)
    steps = spec.canary.steps
    if state.step is None:
        if not facts.canary_loaded:
            return Plan(state, events, f"waiting for serving pods to load {canary}")
        state = dataclasses.replace(state, step=0, weight=steps[0].weight, step_started=now)
        events.append(Event("CanaryStep", f"{canary} at {steps[0].weight}% (step 1)", canary))
        return Plan(state, events)
    step = min(state.step, len(steps) - 1)
    if facts.unknown_guards:
        detail = "; ".join(f"{m}: {why}" for m, why in facts.unknown_guards)
        why = f"{canary} held at step {step + 1}: a guard cannot evaluate it: {detail}"
        return Plan(state, events, why, GUARD_UNKNOWN)
    elapsed = now - (state.step_started or now)
    pause = parse_duration(steps[step].pause)
    if elapsed < pause:
        return Plan(state, events, f"step {step + 1} for {pause - elapsed:.0f}s more")
    if step + 1 < len(steps):
        nxt = steps[step + 1]
        state = dataclasses.replace(state, step=step + 1, weight=nxt.weight, step_started=now)
        events.append(Event("CanaryStep", f"{canary} at {nxt.weight}% (step {step + 2})", canary))
        return Plan(state, events)
    return _promote(state, events, f"{canary} passed {len(steps)} steps")


def _candidate(
    spec: DeploymentSpec, facts: Facts, state: State, eligible: list[Version]
) -> str | None:
    if spec.canary is None:
        return None
    stable = _find(facts, state.stable)
    if spec.canary.version == "latest":
        floor = stable.number if stable else 0
        newer = [v for v in eligible if v.number > floor]
        return newer[-1].name if newer else None
    named = _find(facts, spec.canary.version)
    if named is None or not named.ready or named.name in state.rejected:
        return None
    return None if named.name == state.stable else named.name


def _promote(state: State, events: list[Event], why: str) -> Plan:
    canary = state.canary
    events.append(Event("Promoted", f"{canary} promoted to stable: {why}", canary))
    return Plan(
        dataclasses.replace(
            state, phase="Promoted", stable=canary, canary=None, weight=None, step=None
        ),
        events,
    )


def _end(state: State, events: list[Event], reason: str, why: str, *, reject: bool = True) -> Plan:
    canary = state.canary
    rejected = (*state.rejected, canary) if reject and canary else state.rejected
    events.append(Event(reason, f"rolled back {canary}: {why}", canary, warning=True))
    return Plan(
        dataclasses.replace(
            state, phase="RolledBack", weight=0, step=None, step_started=None, rejected=rejected
        ),
        events,
    )
