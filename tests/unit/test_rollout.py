"""The canary state machine: steps on timers, promotion, rollbacks, manual actions."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modelops.api.deployment import DeploymentSpec
from modelops.rollout import (
    GUARD_UNKNOWN,
    PROMOTE_PENDING,
    Facts,
    Plan,
    State,
    Version,
    guard_verdict,
    plan,
)


def spec(**changes: Any) -> DeploymentSpec:
    base: dict[str, Any] = {
        "model": "iris",
        "canary": {"version": "latest", "steps": [{"weight": 10, "pause": "30s"},
                                                  {"weight": 50, "pause": "1m"}]},
        "rollback": {"maxErrorRate": 0.1, "minSamples": 20},
    }  # fmt: skip
    return DeploymentSpec.model_validate(base | changes)


V1 = Version("iris-v1", 1, True, {"accuracy": 0.95})
V2 = Version("iris-v2", 2, True, {"accuracy": 0.97})


def facts(*versions: Version, **changes: Any) -> Facts:
    return Facts(versions=list(versions) or [V1], **changes)


def run(state: State, f: Facts, now: float, s: DeploymentSpec | None = None) -> Plan:
    return plan(s or spec(), state, f, now)


def progressing_at_step(step: int, started: float = 100.0) -> State:
    return State(
        phase="Progressing",
        stable="iris-v1",
        canary="iris-v2",
        weight=[10, 50][step],
        step=step,
        step_started=started,
    )


def test_latest_stable_resolves_to_newest_ready_version() -> None:
    result = run(State(), facts(V1), 0)
    assert (result.state.phase, result.state.stable) == ("Stable", "iris-v1")
    assert result.routes() == [("iris-v1", "stable", 100)]


def test_no_ready_version_waits_without_serving() -> None:
    result = run(State(), facts(dataclasses.replace(V1, ready=False)), 0)
    assert result.state.stable is None and result.routes() == []
    assert "no Ready ModelVersion" in result.waiting


def test_gates_exclude_versions_below_the_bar() -> None:
    result = run(State(), facts(V1), 0, spec(gates={"accuracy": 0.99}))
    assert result.state.stable is None


def test_newer_version_enters_as_canary_at_weight_zero_until_loaded() -> None:
    result = run(State(phase="Stable", stable="iris-v1"), facts(V1, V2), 10)
    s = result.state
    assert (s.phase, s.canary, s.weight, s.step) == ("Progressing", "iris-v2", 0, None)
    assert result.routes() == [("iris-v1", "stable", 100), ("iris-v2", "canary", 0)]
    assert "load" in run(s, facts(V1, V2), 11).waiting


def test_loaded_canary_takes_step_one_weight() -> None:
    loading = State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0)
    result = run(loading, facts(V1, V2, canary_loaded=True), 50)
    assert (result.state.step, result.state.weight, result.state.step_started) == (0, 10, 50)
    assert result.routes() == [("iris-v1", "stable", 90), ("iris-v2", "canary", 10)]


def test_step_holds_until_its_pause_has_passed() -> None:
    result = run(progressing_at_step(0), facts(V1, V2, canary_loaded=True), 129)
    assert (result.state.step, result.state.weight) == (0, 10)
    assert result.events == []


def test_step_advances_after_its_pause() -> None:
    result = run(progressing_at_step(0), facts(V1, V2, canary_loaded=True), 130)
    assert (result.state.step, result.state.weight, result.state.step_started) == (1, 50, 130)


def test_last_step_promotes_canary_to_stable() -> None:
    result = run(progressing_at_step(1), facts(V1, V2, canary_loaded=True), 160)
    s = result.state
    assert (s.phase, s.stable, s.canary, s.weight) == ("Promoted", "iris-v2", None, None)
    assert result.routes() == [("iris-v2", "stable", 100)]
    assert [e.reason for e in result.events] == ["Promoted"]


def test_restart_mid_step_neither_skips_nor_repeats() -> None:
    state = progressing_at_step(0, started=100)
    early = run(state, facts(V1, V2, canary_loaded=True), 110)
    assert early.state == state
    later = run(early.state, facts(V1, V2, canary_loaded=True), 131)
    assert later.state.step == 1


def test_drift_monitor_firing_rolls_back_and_rejects() -> None:
    f = facts(V1, V2, canary_loaded=True, firing_monitors=[("iris-drift", "share 0.75")])
    result = run(progressing_at_step(1), f, 105)
    s = result.state
    assert (s.phase, s.weight, s.stable, s.rejected) == ("RolledBack", 0, "iris-v1", ("iris-v2",))
    assert result.routes() == [("iris-v1", "stable", 100)]
    assert result.events[-1].reason == "DriftDetected" and "share 0.75" in result.events[-1].message


@pytest.mark.parametrize("step", [None, 1])
def test_canary_a_pod_refuses_rolls_back_while_loading_or_later(step: int | None) -> None:
    state = (
        State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0)
        if step is None
        else progressing_at_step(step)
    )
    f = facts(V1, V2, canary_load_failures=["iris-server-0: DigestMismatch"])
    result = run(state, f, 105)
    s = result.state
    assert (s.phase, s.weight, s.stable, s.rejected) == ("RolledBack", 0, "iris-v1", ("iris-v2",))
    assert result.routes() == [("iris-v1", "stable", 100)]
    event = result.events[-1]
    assert event.reason == "CanaryLoadFailed" and "iris-server-0: DigestMismatch" in event.message


def test_rejected_version_is_never_retried() -> None:
    rolled = State(phase="RolledBack", stable="iris-v1", canary="iris-v2", weight=0,
                   rejected=("iris-v2",))  # fmt: skip
    result = run(rolled, facts(V1, V2), 500)
    assert result.state == rolled and result.routes() == [("iris-v1", "stable", 100)]


def test_even_newer_version_starts_after_a_rollback() -> None:
    rolled = State(phase="RolledBack", stable="iris-v1", canary="iris-v2", weight=0,
                   rejected=("iris-v2",))  # fmt: skip
    v3 = Version("iris-v3", 3, True, {"accuracy": 0.98})
    result = run(rolled, facts(V1, V2, v3), 500)
    assert (result.state.phase, result.state.canary) == ("Progressing", "iris-v3")


def test_error_rate_over_limit_with_enough_samples_rolls_back() -> None:
    f = facts(V1, V2, canary_loaded=True, canary_requests=40, canary_errors=5)
    result = run(progressing_at_step(0), f, 101)
    assert result.state.phase == "RolledBack"
    assert "error rate 0.125 > 0.1 over 40 requests" in result.events[-1].message


def test_error_rate_with_too_few_samples_does_not_roll_back() -> None:
    f = facts(V1, V2, canary_loaded=True, canary_requests=10, canary_errors=5)
    assert run(progressing_at_step(0), f, 101).state.phase == "Progressing"


def test_manual_promote_skips_remaining_steps() -> None:
    result = run(progressing_at_step(0), facts(V1, V2, canary_loaded=True, action="promote"), 101)
    assert (result.state.phase, result.state.stable) == ("Promoted", "iris-v2")


def test_manual_abort_rolls_back() -> None:
    result = run(progressing_at_step(0), facts(V1, V2, action="abort"), 101)
    assert result.state.phase == "RolledBack" and result.state.rejected == ("iris-v2",)
    assert result.events[-1].reason == "ManualAbort"


def test_pinned_stable_version_is_served_even_if_newer_exist() -> None:
    result = run(State(), facts(V1, V2), 0, spec(stable={"version": "iris-v1"}, canary=None))
    assert result.routes() == [("iris-v1", "stable", 100)]


def test_named_canary_equal_to_stable_is_ignored() -> None:
    s = spec(stable={"version": "iris-v1"}, canary={"version": "iris-v1"})
    result = run(State(phase="Stable", stable="iris-v1"), facts(V1, V2), 0, s)
    assert result.state.canary is None


# --- guards that cannot evaluate the canary hold it (issue row 5) --------------------------

BROKEN = [("iris-drift", "InvalidSpec: spec.features names no_such_feature")]


@pytest.mark.parametrize("step", [0, 1])
def test_guard_that_cannot_evaluate_holds_the_canary_in_its_step(step: int) -> None:
    """Past the pause of step 1 (would advance) or of the last step (would promote)."""
    state = progressing_at_step(step)
    result = run(state, facts(V1, V2, canary_loaded=True, unknown_guards=BROKEN), 1000)
    assert result.state == state and result.events == []
    assert result.reason == GUARD_UNKNOWN
    assert "iris-drift: InvalidSpec: spec.features names no_such_feature" in result.waiting
    weight = [10, 50][step]
    assert result.routes() == [("iris-v1", "stable", 100 - weight), ("iris-v2", "canary", weight)]


def test_guard_that_cannot_evaluate_does_not_keep_a_loaded_canary_from_step_one() -> None:
    """Step 1 gives the canary the traffic a guard needs to evaluate it."""
    loading = State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0)
    result = run(loading, facts(V1, V2, canary_loaded=True, unknown_guards=BROKEN), 50)
    assert (result.state.step, result.state.weight) == (0, 10)


def test_held_canary_advances_at_once_when_its_guard_can_evaluate_again() -> None:
    state = progressing_at_step(0, started=100)
    held = run(state, facts(V1, V2, canary_loaded=True, unknown_guards=BROKEN), 500)
    result = run(held.state, facts(V1, V2, canary_loaded=True), 501)
    assert (result.state.step, result.state.weight, result.state.step_started) == (1, 50, 501)


def test_drifted_guard_still_rolls_back_a_held_canary() -> None:
    f = facts(V1, V2, canary_loaded=True, unknown_guards=BROKEN,
              firing_monitors=[("other", "share 0.75")])  # fmt: skip
    assert run(progressing_at_step(0), f, 500).state.phase == "RolledBack"


def monitor_obj(
    drifted: dict[str, Any] | None, version: str = "iris-v2", generation: int = 1, seen: int = 1
) -> dict[str, Any]:
    conditions = [] if drifted is None else [{"type": "Drifted", **drifted}]
    return {
        "metadata": {"name": "iris-drift", "generation": generation},
        "status": {"version": version, "observedGeneration": seen, "conditions": conditions},
    }


@pytest.mark.parametrize(
    ("monitor", "verdict"),
    [
        (monitor_obj(None), ("unknown", "not checked yet")),
        (
            monitor_obj({"status": "Unknown", "reason": "InvalidSpec", "message": "no_such"}),
            ("unknown", "InvalidSpec: no_such"),
        ),
        (
            monitor_obj({"status": "Unknown", "reason": "CheckFailed", "message": "boom"}),
            ("unknown", "CheckFailed: boom"),
        ),
        (
            monitor_obj({"status": "False", "reason": "NoDrift"}, generation=2, seen=1),
            ("unknown", "generation 2 not checked yet"),
        ),
        (monitor_obj({"status": "Unknown", "reason": "InsufficientData"}), None),
        (monitor_obj({"status": "False", "reason": "NoDrift"}), None),
        (monitor_obj({"status": "True", "message": "3/4 drifted"}), ("firing", "3/4 drifted")),
        (monitor_obj({"status": "True", "message": "3/4"}, version="iris-v1"), None),
    ],
    ids=["never-checked", "invalid-spec", "check-failed", "behind-its-spec",
         "too-few-samples", "no-drift", "drifted", "drifted-other-version"],
)  # fmt: skip
def test_guard_verdict(monitor: dict[str, Any], verdict: tuple[str, str] | None) -> None:
    assert guard_verdict(monitor, "iris-v2") == verdict


# --- a manual promotion waits for the pods to load the canary (issue row 10) ---------------


@pytest.mark.parametrize("step", [None, 0])
def test_manual_promote_waits_until_every_pod_has_loaded_the_canary(step: int | None) -> None:
    state = (
        State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0, step_started=90)
        if step is None
        else progressing_at_step(step)
    )
    result = run(state, facts(V1, V2, canary_loaded=False, action="promote"), 1000)
    assert result.state == state and result.events == []  # nor does the step timer move it
    assert result.reason == PROMOTE_PENDING and not result.consume_action
    assert result.waiting == "promotion requested: waiting for every serving pod to load iris-v2"
    loaded = run(state, facts(V1, V2, canary_loaded=True, action="promote"), 1001)
    assert (loaded.state.phase, loaded.state.stable) == ("Promoted", "iris-v2")
    assert [e.reason for e in loaded.events] == ["Promoted"]


def test_pending_promote_yields_to_a_pod_refusing_the_canary() -> None:
    f = facts(V1, V2, action="promote", canary_load_failures=["iris-server-0: DigestMismatch"])
    result = run(progressing_at_step(0), f, 101)
    assert result.state.phase == "RolledBack" and result.events[-1].reason == "CanaryLoadFailed"


# --- an action is consumed only once its effect is in the status (issue row 9) -------------


@pytest.mark.parametrize("action", ["abort", "promote"])
def test_pass_that_obeys_an_action_does_not_consume_it(action: str) -> None:
    """Removing the annotation waits for a pass that starts from the written status."""
    result = run(progressing_at_step(0), facts(V1, V2, canary_loaded=True, action=action), 101)
    assert result.state.phase in ("RolledBack", "Promoted")
    assert not result.consume_action


def test_action_is_consumed_once_the_status_shows_no_canary_in_flight() -> None:
    aborted = run(progressing_at_step(0), facts(V1, V2, action="abort"), 101).state
    again = run(aborted, facts(V1, V2, action="abort"), 102)
    assert again.consume_action and again.state == aborted and again.events == []


def test_consumed_action_does_not_touch_a_canary_started_in_the_same_pass() -> None:
    aborted = run(progressing_at_step(0), facts(V1, V2, action="abort"), 101).state
    v3 = Version("iris-v3", 3, True, {"accuracy": 0.98})
    result = run(aborted, facts(V1, V2, v3, action="abort"), 102)
    assert result.consume_action
    assert (result.state.phase, result.state.canary) == ("Progressing", "iris-v3")
    assert [e.reason for e in result.events] == ["CanaryStarted"]


def test_action_without_a_canary_in_flight_is_consumed_and_does_nothing() -> None:
    stable = State(phase="Stable", stable="iris-v1")
    result = run(stable, facts(V1, action="abort"), 10)
    assert result.consume_action and result.state == stable and result.events == []


def test_unknown_action_is_consumed_and_ignored() -> None:
    state = progressing_at_step(0)
    result = run(state, facts(V1, V2, canary_loaded=True, action="pause"), 101)
    assert result.consume_action and result.state == state
    assert [e.reason for e in result.events] == ["ActionIgnored"]
