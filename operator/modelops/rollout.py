"""The canary state machine of a modelops Deployment, as a pure function.

``plan(spec, state, facts, now)`` returns the next state and what happened; the controller
gathers the facts (versions, pod reports, monitors, error counts) and applies the result.
Everything here is deterministic, so restarts resume exactly where the status says.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from modelops.api.common import parse_duration
from modelops.api.deployment import (
    ABTest,
    Analysis,
    AnalysisDecision,
    AnalysisStatus,
    Canary,
    DeploymentSpec,
    Shadow,
)
from modelops.drift.quality import Agreement, Comparison, QualityCounts, Task, compare
from modelops.resources.training import gate_failures

HISTORY_LIMIT = 20
ACTIONS = ("promote", "abort", "approve")
"""Values of the modelops.dev/action annotation."""
AWAITING_APPROVAL = "AwaitingApproval"
"""Progressing=True: the canary passed everything that would promote it and, with
``canary.requireApproval``, waits for ``modelops.dev/action=approve``."""
APPROVED = "Approved"
"""The Event and history reason of a promotion by ``modelops.dev/action=approve``."""
GUARD_UNKNOWN = "GuardUnknown"
"""Progressing=False: a guarding DriftMonitor cannot evaluate the canary, which is held."""
PROMOTE_PENDING = "PromotePending"
"""Progressing=True: promotion was asked for; the serving pods have not all loaded the canary."""
EVALUATING_REASONS = frozenset({"InsufficientData"})
"""Drifted=Unknown reasons of a monitor that works and is waiting for samples: no hold."""
LABELS_EVALUATING_REASONS = frozenset({"InsufficientLabels"})
"""Underperforming=Unknown reasons of a monitor that works and is waiting for labels: no hold."""
AWAITING_ANALYSIS = "AwaitingAnalysis"
"""Progressing=True: the canary is held where it is until its quality analysis decides."""
ANALYSIS_UNKNOWN = "AnalysisUnknown"
"""Progressing=False: the canary's quality analysis cannot be evaluated (the store, malformed
counts, a metric of the other task); it is held (fail closed)."""
HELD_REASONS = frozenset({GUARD_UNKNOWN, ANALYSIS_UNKNOWN})
"""Progressing reasons that say the canary is held because something cannot be evaluated."""
DEFAULT_METRICS: dict[str, str] = {"classification": "accuracy", "regression": "mae"}
"""The quality metric of ``canary.analysis`` by the versions' task when it names none."""


@dataclass(frozen=True)
class Version:
    name: str
    number: int
    ready: bool
    metrics: dict[str, float]
    task: str | None = None
    """The signature's task: ``classification`` or ``regression``."""


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
    underperforming_monitors: list[tuple[str, str]] = field(default_factory=list)
    """(monitor, message) of guarding DriftMonitors that say the canary underperforms
    (``Underperforming=True`` for it)."""
    unknown_guards: list[tuple[str, str]] = field(default_factory=list)
    """(monitor, why) of guarding DriftMonitors that cannot evaluate the canary: missing,
    never checked, behind their spec, or Drifted=Unknown for a reason other than too few
    samples. While there is one, the canary stays in its step (fail closed)."""
    canary_requests: int = 0
    canary_errors: int = 0
    action: str | None = None
    """``promote``, ``abort`` or ``approve`` from the modelops.dev/action annotation."""
    approved_by: str | None = None
    """Who approved, from the modelops.dev/approved-by annotation (None: not named)."""
    canary_quality: QualityCounts | None = None
    """Labels joined for the canary over :func:`quality_window` (None: none)."""
    stable_quality: QualityCounts | None = None
    """Labels joined for the stable version over the same window (None: none)."""
    agreement: Agreement | None = None
    """Shadow mode: the canary's answers against stable's over the window (None: none)."""
    quality_error: str | None = None
    """Why the labels or agreement could not be read (store unreachable, malformed objects):
    the analysis cannot be evaluated and holds the canary."""


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
    analysis: AnalysisStatus | None = None
    """The numbers a quality decision was taken on."""
    approved_by: str | None = None
    """``Approved``: the approver the modelops.dev/approved-by annotation named."""


@dataclass(frozen=True)
class Plan:
    state: State
    events: list[Event]
    waiting: str = ""
    """Why nothing moved, when something is awaited (for the Progressing condition)."""
    reason: str = ""
    """The Progressing reason while waiting, when not the plain CanaryProgressing:
    ``GUARD_UNKNOWN`` or ``ANALYSIS_UNKNOWN`` (held), ``AWAITING_ANALYSIS``,
    ``AWAITING_APPROVAL`` or ``PROMOTE_PENDING``."""
    consume_action: bool = False
    """Remove the modelops.dev/action annotation: the status this pass started from already
    shows it obeyed (no canary in flight), or it is ignored (Event ``ActionIgnored``): not an
    action, ``approve`` of a canary not awaiting approval, ``promote`` of one requiring it."""
    analysis: AnalysisStatus | None = None
    """This pass's quality analysis of the canary, when one ran (for ``status.analysis``)."""

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
    canary drifted, ``("underperforming", message)`` when its quality rule found the canary
    underperforming or its fairness rule found it unfair (``FairnessViolated``),
    ``("unknown", why)`` when it cannot evaluate it, else None (no drift, or too few samples
    or labels yet: a working monitor).

    ``status.version`` names the version the monitor judged: a True condition speaks for the
    canary only when that is the canary. A monitor without a quality rule has no
    ``Underperforming`` condition, which is not a reason to hold."""
    status = monitor.get("status") or {}
    conditions = status.get("conditions") or []
    drifted = next((c for c in conditions if c.get("type") == "Drifted"), None)
    under = next((c for c in conditions if c.get("type") == "Underperforming"), None)
    unfair = next((c for c in conditions if c.get("type") == "FairnessViolated"), None)
    if drifted is None:
        return "unknown", "not checked yet"
    judged_canary = status.get("version") == canary
    if drifted.get("status") == "True" and judged_canary:
        return "firing", str(drifted.get("message", ""))
    if under is not None and under.get("status") == "True" and judged_canary:
        return "underperforming", str(under.get("message", ""))
    if unfair is not None and unfair.get("status") == "True" and judged_canary:
        return "underperforming", f"FairnessViolated: {unfair.get('message', '')}"
    if drifted.get("status") == "True":
        return None
    generation = (monitor.get("metadata") or {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return "unknown", f"generation {generation} not checked yet"
    reason = drifted.get("reason")
    if drifted.get("status") == "Unknown" and reason not in EVALUATING_REASONS:
        return "unknown", f"{reason}: {drifted.get('message', '')}"
    if under is not None and under.get("status") == "Unknown":
        reason = under.get("reason")
        if reason not in LABELS_EVALUATING_REASONS:
            return "unknown", f"Underperforming {reason}: {under.get('message', '')}"
    if unfair is not None and unfair.get("status") == "Unknown":
        reason = unfair.get("reason")
        if reason not in LABELS_EVALUATING_REASONS:
            return "unknown", f"FairnessViolated {reason}: {unfair.get('message', '')}"
    return None


def quality_window(spec: DeploymentSpec) -> float | None:
    """Seconds of joined labels (and shadow agreement) the plan reads for a canary that takes
    traffic: ``canary.analysis.window`` (its default without an ``analysis`` block, for a
    shadow's agreement gate); None when the plan needs none (nothing to read from the store).

    Not the shadow's ``duration``: the pods write an object per sketch interval, keyed by its
    start, and a window shorter than that would count none of them."""
    canary = spec.canary
    if canary is None:
        return None
    if canary.analysis is None and not (
        canary.mode == "shadow" and _agreement_gated(canary.shadow or Shadow())
    ):
        return None
    return parse_duration((canary.analysis or Analysis()).window)


def plan(spec: DeploymentSpec, state: State, facts: Facts, now: float) -> Plan:
    """The next state from the last one written to status and this pass's facts.

    An action applies to the canary in flight in ``state``, the status of the last successful
    pass. With none in flight, an action still present was obeyed by an earlier pass (or had
    nothing to act on): it is consumed and does nothing, so it cannot touch a canary that
    starts later. Consumed only then, an action outlives any pass that fails before its effect
    is in the status.

    With ``canary.requireApproval`` only ``approve`` promotes, and only a canary awaiting
    approval in this pass (:data:`AWAITING_APPROVAL`); ``promote`` is consumed and ignored,
    as is ``approve`` at any other time (Event ``ActionIgnored`` for both).
    """
    action = facts.action
    if action is not None and (not state.canary_active or action not in ACTIONS):
        result = _plan(spec, state, dataclasses.replace(facts, action=None), now)
        if action not in ACTIONS:
            why = f"modelops.dev/action={action} ignored: not one of {', '.join(ACTIONS)}"
            result.events.append(Event("ActionIgnored", why, state.canary))
        return dataclasses.replace(result, consume_action=True)
    if action == "promote" and spec.canary is not None and spec.canary.require_approval:
        result = _plan(spec, state, dataclasses.replace(facts, action=None), now)
        why = (
            "modelops.dev/action=promote ignored: spec.canary.requireApproval is set, so only "
            "modelops.dev/action=approve promotes, once the canary awaits approval"
        )
        result.events.append(Event("ActionIgnored", why, state.canary))
        return dataclasses.replace(result, consume_action=True)
    result = _plan(spec, state, facts, now)
    approved = any(e.reason == APPROVED for e in result.events)
    # Not obeyed while the canary stays in flight: it did not await approval. (Rolled back in
    # this pass, the next pass consumes it as it does any action.)
    if action == "approve" and not approved and result.state.canary_active:
        return _approve_ignored(spec, result, state)
    return result


def _approve_ignored(spec: DeploymentSpec, result: Plan, state: State) -> Plan:
    if spec.canary is None or not spec.canary.require_approval:
        now_doing = "spec.canary.requireApproval is not set"
    else:
        doing = result.waiting or (result.events[-1].message if result.events else "")
        now_doing = f"{state.canary} is not awaiting approval: {doing}"
    why = f"modelops.dev/action=approve ignored: {now_doing}"
    events = [*result.events, Event("ActionIgnored", why, state.canary)]
    return dataclasses.replace(result, events=events, consume_action=True)


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
    if facts.underperforming_monitors:
        detail = "; ".join(f"{m}: {msg}" for m, msg in facts.underperforming_monitors)
        return _end(state, events, "Underperforming", detail)
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

    # 4: load, then the mode decides: walk the steps (canary), wait for the test's verdict
    # (abtest), or shadow for a while and check the gates (shadow)
    mode = spec.canary.mode
    if state.step is None:
        if not facts.canary_loaded:
            return Plan(state, events, f"waiting for serving pods to load {canary}")
        weight = _mode_weight(spec.canary)
        state = dataclasses.replace(state, step=0, weight=weight, step_started=now)
        events.append(_started(spec.canary, state))
        return Plan(state, events)
    if mode == "abtest":
        return _abtest(spec.canary, state, facts, now, events)
    if mode == "shadow":
        return _shadow(spec.canary, state, facts, now, events)
    return _walk(spec.canary, state, facts, now, events)


def _mode_weight(canary: Canary) -> int:
    if canary.mode == "abtest":
        return (canary.abtest or ABTest()).weight
    if canary.mode == "shadow":
        return 0  # the candidate answers copies of requests, never a client
    return canary.steps[0].weight


def _started(canary: Canary, state: State) -> Event:
    name, stable, weight = state.canary, state.stable, state.weight
    if canary.mode == "abtest":
        why = f"A/B test: {name} answers {weight}% of requests against {stable}"
        return Event("ABTestStarted", why, name)
    if canary.mode == "shadow":
        why = f"{name} answers a copy of every request; clients get {stable}'s answers"
        return Event("ShadowStarted", why, name)
    return Event("CanaryStep", f"{name} at {weight}% (step 1)", name)


def _walk(spec: Canary, state: State, facts: Facts, now: float, events: list[Event]) -> Plan:
    """Canary mode: each step lasts its pause; with ``analysis``, the canary moves on (or is
    promoted after the last step) only once shown not worse than stable; shown worse at any
    time, it is rolled back. A guard that cannot evaluate the canary keeps it in its step
    (its time in the step still counts)."""
    canary, steps = state.canary, spec.steps
    step = min(state.step or 0, len(steps) - 1)
    elapsed = now - (state.step_started or now)
    pause = parse_duration(steps[step].pause)
    analysis = spec.analysis
    outcome = _quality(analysis, analysis.margin, state, facts) if analysis else None
    report = _report("canary", state, now, [outcome]) if outcome else None
    if outcome is not None and outcome.decision == "Failed":
        why = f"shown worse than {state.stable}: {outcome.text}"
        return _end(state, events, "Underperforming", why, analysis=report)
    if outcome is not None and outcome.decision != "Passed" and _timed_out(spec, elapsed - pause):
        report = _report("canary", state, now, [outcome], "Inconclusive")
        why = f"no quality decision within {_timeout(spec)} of step {step + 1}'s pause: "
        return _end(state, events, "AnalysisInconclusive", why + outcome.text, analysis=report)
    if facts.unknown_guards:
        return _guard_hold(state, events, f"step {step + 1}", facts, report)
    if elapsed < pause:
        return Plan(
            state, events, f"step {step + 1} until {_at(now - elapsed + pause)}", analysis=report
        )
    if outcome is not None and outcome.decision != "Passed":
        where = f"step {step + 1}"
        return _analysis_hold(state, events, where, outcome, report)
    passed = f": {outcome.text}" if outcome else ""
    if step + 1 < len(steps):
        nxt = steps[step + 1]
        state = dataclasses.replace(state, step=step + 1, weight=nxt.weight, step_started=now)
        why = f"{canary} at {nxt.weight}% (step {step + 2}){passed}"
        events.append(Event("CanaryStep", why, canary, analysis=report))
        return Plan(state, events, analysis=report)
    why = f"{canary} passed {len(steps)} steps{passed}"
    return _promote_if_approved(spec, state, facts, events, why, analysis=report)


def _abtest(spec: Canary, state: State, facts: Facts, now: float, events: list[Event]) -> Plan:
    """A/B mode: a fixed split; each pass tests superiority both ways (margin 0). Shown
    better, the candidate is promoted (``ABTestWon``); shown worse, rolled back
    (``ABTestLost``); undecided after ``maxDuration``, rolled back and stable kept
    (``ABTestInconclusive``)."""
    test = spec.abtest or ABTest()
    analysis = spec.analysis or Analysis()  # the CRD and the model require one
    if state.weight != test.weight:  # the spec's weight changed during the test
        state = dataclasses.replace(state, weight=test.weight)
    stable = state.stable
    outcome = _quality(analysis, 0.0, state, facts)
    report = _report("abtest", state, now, [outcome])
    elapsed = now - (state.step_started or now)
    limit = parse_duration(test.max_duration)
    if outcome.decision == "Failed":
        why = f"lost the A/B test against {stable}: {outcome.text}"
        return _end(state, events, "ABTestLost", why, analysis=report)
    if outcome.decision == "Passed" and not facts.unknown_guards:
        why = f"won the A/B test against {stable}: {outcome.text}"
        return _promote_if_approved(
            spec, state, facts, events, why, reason="ABTestWon", analysis=report
        )
    if elapsed >= limit:
        report = _report("abtest", state, now, [outcome], "Inconclusive")
        why = f"no decision within {test.max_duration}, {stable} stays: {outcome.text}"
        return _end(state, events, "ABTestInconclusive", why, analysis=report)
    if facts.unknown_guards:
        return _guard_hold(state, events, "its A/B test", facts, report)
    if outcome.decision == "Unknown":
        return _analysis_hold(state, events, "its A/B test", outcome, report)
    why = (
        f"A/B test of {state.canary} ({state.weight}%) against {stable}, "
        f"until {_at(now - elapsed + limit)}: {outcome.text}"
    )
    return Plan(state, events, why, AWAITING_ANALYSIS, analysis=report)


def _shadow(spec: Canary, state: State, facts: Facts, now: float, events: list[Event]) -> Plan:
    """Shadow mode: the candidate answers copies of requests for ``duration``; then its gates
    (agreement with stable, and with ``analysis`` non-inferiority on labels) decide: all
    passed, it is promoted; one shown failed, rolled back (``ShadowDisagrees``,
    ``Underperforming``); otherwise held, as long as ``analysis.timeout`` allows. Nothing is
    decided before ``duration`` has passed: no client sees the candidate's answers."""
    shadow = spec.shadow or Shadow()
    if state.weight != 0:
        state = dataclasses.replace(state, weight=0)
    outcomes: list[_Outcome] = []
    if _agreement_gated(shadow):
        outcomes.append(_agreement(shadow, state, facts))
    if spec.analysis is not None:
        outcomes.append(_quality(spec.analysis, spec.analysis.margin, state, facts))
    decision = _overall(outcomes)
    text = "; ".join(o.text for o in outcomes) or "no gates"
    report = _report("shadow", state, now, outcomes) if outcomes else None
    elapsed = now - (state.step_started or now)
    duration = parse_duration(shadow.duration)
    if elapsed < duration:
        why = f"shadowing {state.canary} until {_at(now - elapsed + duration)}"
        return Plan(state, events, why, analysis=report)
    failed = [o for o in outcomes if o.decision == "Failed"]
    if failed:
        reason = "ShadowDisagrees" if failed[0].gate == "agreement" else "Underperforming"
        why = f"failed its shadow gates against {state.stable}: {text}"
        return _end(state, events, reason, why, analysis=report)
    if decision != "Passed" and _timed_out(spec, elapsed - duration):
        report = _report("shadow", state, now, outcomes, "Inconclusive")
        why = f"no decision within {_timeout(spec)} of {shadow.duration} of shadowing: {text}"
        return _end(state, events, "AnalysisInconclusive", why, analysis=report)
    where = f"its shadow gates after {shadow.duration}"
    if facts.unknown_guards:
        return _guard_hold(state, events, where, facts, report)
    if decision in ("Unknown", "Undecided"):
        undecided = next(o for o in outcomes if o.decision == decision)
        held = dataclasses.replace(undecided, text=text)
        return _analysis_hold(state, events, where, held, report, "they decide")
    why = f"{state.canary} passed {shadow.duration} of shadowing: {text}"
    return _promote_if_approved(spec, state, facts, events, why, analysis=report)


def _guard_hold(
    state: State, events: list[Event], where: str, facts: Facts, report: AnalysisStatus | None
) -> Plan:
    detail = "; ".join(f"{m}: {why}" for m, why in facts.unknown_guards)
    why = f"{state.canary} held at {where}: a guard cannot evaluate it: {detail}"
    return Plan(state, events, why, GUARD_UNKNOWN, analysis=report)


def _analysis_hold(
    state: State,
    events: list[Event],
    where: str,
    outcome: _Outcome,
    report: AnalysisStatus | None,
    until: str = "",
) -> Plan:
    if outcome.decision == "Unknown":
        why = f"{state.canary} held at {where}: its analysis cannot be evaluated: {outcome.text}"
        return Plan(state, events, why, ANALYSIS_UNKNOWN, analysis=report)
    until = until or f"it is shown not worse than {state.stable}"
    why = f"{state.canary} held at {where} until {until}: {outcome.text}"
    return Plan(state, events, why, AWAITING_ANALYSIS, analysis=report)


def _at(ts: float) -> str:
    """An end time in a waiting message: absolute (RFC 3339, UTC), so the message, and the
    status holding it, stay the same from one pass to the next."""
    return dt.datetime.fromtimestamp(round(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_due(spec: DeploymentSpec, state: State, now: float) -> float | None:
    """When, after ``now``, the canary in flight next falls due by the clock alone, epoch
    seconds: the end of its step's pause (canary mode), of ``shadow.duration`` or of
    ``abtest.maxDuration``, or, once that has passed, of ``analysis.timeout`` after it. None
    while it loads (no step yet), with no canary in flight, or when nothing more is timed."""
    canary = spec.canary
    started = state.step_started
    if canary is None or not state.canary_active or state.step is None or started is None:
        return None
    if canary.mode == "abtest":
        return started + parse_duration((canary.abtest or ABTest()).max_duration)
    if canary.mode == "shadow":
        end = started + parse_duration((canary.shadow or Shadow()).duration)
    else:
        steps = canary.steps
        end = started + parse_duration(steps[min(state.step, len(steps) - 1)].pause)
    timeout = _timeout(canary)
    for due in (end, None if timeout is None else end + parse_duration(timeout)):
        if due is not None and due > now:
            return due
    return None


def _timeout(spec: Canary) -> str | None:
    return spec.analysis.timeout if spec.analysis is not None else None


def _timed_out(spec: Canary, waited: float) -> bool:
    """Whether the analysis has been undecided past ``analysis.timeout`` (never without one)."""
    timeout = _timeout(spec)
    return timeout is not None and waited >= parse_duration(timeout)


# --- quality: what the labels and the shadow's agreement say --------------------------------


@dataclass(frozen=True)
class _Outcome:
    """One gate's state: Passed, Failed (shown), Undecided (too little data) or Unknown
    (cannot be evaluated); ``text`` gives its numbers or why."""

    gate: str  # quality | agreement
    decision: AnalysisDecision
    text: str
    comparison: Comparison | None = None
    agreement: Agreement | None = None
    task: str | None = None


def _task(facts: Facts, version: str | None) -> Task | None:
    found = _find(facts, version)
    task = found.task if found else None
    if task == "classification":
        return "classification"
    if task == "regression":
        return "regression"
    return None


def _quality(analysis: Analysis, margin: float, state: State, facts: Facts) -> _Outcome:
    """The canary's labels against stable's: shown worse by more than ``margin`` (Failed),
    shown not worse by that much (Passed), or neither yet (Undecided)."""
    canary, stable = state.canary, state.stable
    if facts.quality_error is not None:
        return _Outcome("quality", "Unknown", f"labels not read: {facts.quality_error}")
    task = _task(facts, canary)
    if task is None:
        return _Outcome("quality", "Unknown", f"{canary} names no known task in its signature")
    metric = analysis.metric or DEFAULT_METRICS[task]
    counts = facts.canary_quality or QualityCounts.empty(task)
    baseline = facts.stable_quality or QualityCounts.empty(task)
    if baseline.task != counts.task:
        why = f"{stable}'s labels are {baseline.task} counts, {canary}'s {counts.task} counts"
        return _Outcome("quality", "Unknown", why)
    try:
        c = compare(
            counts,
            baseline,
            metric,
            margin=margin,
            confidence=analysis.confidence,
            min_labels=analysis.min_labels,
        )
    except ValueError as exc:  # a metric of the other task, counts of the other kind
        return _Outcome("quality", "Unknown", str(exc))
    decision: AnalysisDecision = "Failed" if c.worse else "Passed" if c.not_worse else "Undecided"
    return _Outcome("quality", decision, _describe(c, analysis, state), comparison=c)


def _describe(c: Comparison, analysis: Analysis, state: State) -> str:
    """The numbers of a comparison, for messages and history."""
    head = (
        f"{c.metric} {state.canary} {_fmt(c.value)} ({c.labels} labels) vs {state.stable} "
        f"{_fmt(c.baseline)} ({c.baseline_labels} labels)"
    )
    if not c.enough:
        return f"{head}, {analysis.min_labels} labels needed on each"
    return (
        f"{head}: difference {c.difference:+.4f}, margin {c.margin:g}, z {c.z:.2f}, "
        f"p(worse) {c.p_worse:.3g}, p(not worse) {c.p_not_worse:.3g}, "
        f"confidence {c.confidence:g}"
    )


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def _agreement_gated(shadow: Shadow) -> bool:
    return shadow.min_agreement is not None or shadow.max_mean_abs_difference is not None


def _agreement(shadow: Shadow, state: State, facts: Facts) -> _Outcome:
    """The shadow's answers against stable's on the same requests: classifiers by the share
    of identical classes (``minAgreement``), regressors by the mean absolute difference
    (``maxMeanAbsDifference``), once ``minCompared`` rows were compared."""
    task = _task(facts, state.canary)
    if facts.quality_error is not None:
        return _Outcome("agreement", "Unknown", f"agreement not read: {facts.quality_error}")
    if task == "classification" and shadow.min_agreement is None:
        why = (
            f"{state.canary} is a classifier: maxMeanAbsDifference does not apply, set minAgreement"
        )
        return _Outcome("agreement", "Unknown", why, task=task)
    if task == "regression" and shadow.max_mean_abs_difference is None:
        why = (
            f"{state.canary} is a regressor: minAgreement does not apply, set maxMeanAbsDifference"
        )
        return _Outcome("agreement", "Unknown", why, task=task)
    if task is None:
        why = f"{state.canary} names no known task in its signature"
        return _Outcome("agreement", "Unknown", why)
    seen = facts.agreement or Agreement()
    if seen.compared < shadow.min_compared:
        why = f"{seen.compared} rows compared with {state.stable}, {shadow.min_compared} needed"
        return _Outcome("agreement", "Undecided", why, agreement=seen, task=task)
    if task == "classification":
        bound = shadow.min_agreement
        assert bound is not None
        ok = seen.rate >= bound
        why = (
            f"agreement with {state.stable} {seen.rate:.4f} over {seen.compared} rows "
            f"{'>=' if ok else '<'} {bound:g}"
        )
    else:
        bound = shadow.max_mean_abs_difference
        assert bound is not None
        mean = seen.sum_abs_difference / seen.compared
        ok = mean <= bound
        why = (
            f"mean |{state.canary} - {state.stable}| {mean:.4g} over {seen.compared} rows "
            f"{'<=' if ok else '>'} {bound:g}"
        )
    return _Outcome("agreement", "Passed" if ok else "Failed", why, agreement=seen, task=task)


def _overall(outcomes: list[_Outcome]) -> AnalysisDecision:
    for decision in ("Failed", "Unknown", "Undecided"):
        if any(o.decision == decision for o in outcomes):
            return decision
    return "Passed"


def _report(
    mode: Literal["canary", "abtest", "shadow"],
    state: State,
    now: float,
    outcomes: list[_Outcome],
    decision: AnalysisDecision | None = None,
) -> AnalysisStatus:
    """``status.analysis`` from this pass's gates."""
    c = next((o.comparison for o in outcomes if o.comparison is not None), None)
    shadow = next((o for o in outcomes if o.agreement is not None), None)
    fields: dict[str, Any] = {}
    if c is not None:
        fields = {
            "metric": c.metric,
            "canary_value": _finite(c.value),
            "canary_labels": c.labels,
            "stable_value": _finite(c.baseline),
            "stable_labels": c.baseline_labels,
            "difference": _finite(c.difference),
            "margin": c.margin,
            "confidence": c.confidence,
            "z": _finite(c.z),
            "p_worse": _finite(c.p_worse),
            "p_not_worse": _finite(c.p_not_worse),
        }
    if shadow is not None and shadow.agreement is not None:
        seen = shadow.agreement
        fields["compared"] = seen.compared
        if seen.compared and shadow.task == "classification":
            fields["agreement"] = seen.rate
        if seen.compared and shadow.task == "regression":
            fields["mean_abs_difference"] = seen.sum_abs_difference / seen.compared
    assert state.canary is not None and state.stable is not None
    return AnalysisStatus(
        mode=mode,
        canary_version=state.canary,
        stable_version=state.stable,
        decision=decision or _overall(outcomes),
        message="; ".join(o.text for o in outcomes),
        time=dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **fields,
    )


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: a number that does not exist (yet) is left out."""
    return value if math.isfinite(value) else None


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


def _promote_if_approved(
    spec: Canary,
    state: State,
    facts: Facts,
    events: list[Event],
    why: str,
    *,
    reason: str = "Promoted",
    analysis: AnalysisStatus | None = None,
) -> Plan:
    """Promote a canary that passed everything (``why``), unless ``requireApproval`` holds it
    at its weight until ``approve``: then it is promoted as ``Approved``, naming the approver."""
    if not spec.require_approval:
        return _promote(state, events, why, reason=reason, analysis=analysis)
    if facts.action == "approve":
        who = facts.approved_by
        by = f"approved by {who}" if who else "approved (the approver named no one)"
        return _promote(
            state, events, f"{by}: {why}", reason=APPROVED, analysis=analysis, approved_by=who
        )
    waiting = (
        f"{state.canary} awaits approval ({why}): approve with `kubectl modelops approve`, or "
        "annotate modelops.dev/action=approve (needs the approve verb on deployments.modelops.dev)"
    )
    return Plan(state, events, waiting, AWAITING_APPROVAL, analysis=analysis)


def _promote(
    state: State,
    events: list[Event],
    why: str,
    *,
    reason: str = "Promoted",
    analysis: AnalysisStatus | None = None,
    approved_by: str | None = None,
) -> Plan:
    canary = state.canary
    message = f"{canary} promoted to stable: {why}"
    events.append(Event(reason, message, canary, analysis=analysis, approved_by=approved_by))
    return Plan(
        dataclasses.replace(
            state, phase="Promoted", stable=canary, canary=None, weight=None, step=None
        ),
        events,
        analysis=analysis,
    )


def _end(
    state: State,
    events: list[Event],
    reason: str,
    why: str,
    *,
    reject: bool = True,
    analysis: AnalysisStatus | None = None,
) -> Plan:
    canary = state.canary
    rejected = (*state.rejected, canary) if reject and canary else state.rejected
    message = f"rolled back {canary}: {why}"
    events.append(Event(reason, message, canary, warning=True, analysis=analysis))
    return Plan(
        dataclasses.replace(
            state, phase="RolledBack", weight=0, step=None, step_started=None, rejected=rejected
        ),
        events,
        analysis=analysis,
    )
