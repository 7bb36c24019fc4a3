"""The canary state machine: steps on timers, quality analysis, A/B tests, shadows,
promotion, rollbacks, manual actions."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from modelops.api.deployment import DeploymentSpec
from modelops.drift.quality import Agreement, QualityCounts
from modelops.rollout import (
    ANALYSIS_UNKNOWN,
    AWAITING_ANALYSIS,
    AWAITING_APPROVAL,
    GUARD_UNKNOWN,
    PROMOTE_PENDING,
    Facts,
    Plan,
    State,
    Version,
    guard_verdict,
    plan,
    quality_window,
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


# --- canary analysis on live quality, A/B tests and shadows (issue 13, parts 3 and 4) ---------

C1 = Version("iris-v1", 1, True, {"accuracy": 0.95}, "classification")
C2 = Version("iris-v2", 2, True, {"accuracy": 0.97}, "classification")
R1 = Version("iris-v1", 1, True, {"mae": 0.3}, "regression")
R2 = Version("iris-v2", 2, True, {"mae": 0.2}, "regression")


def labels(correct: int, total: int) -> QualityCounts:
    """Classifier counts: ``correct`` of ``total`` labels predicted right."""
    counts = QualityCounts.empty("classification", ["setosa", "virginica"])
    counts.add_classification(
        ["setosa"] * total, ["setosa"] * correct + ["virginica"] * (total - correct)
    )
    return counts


def errors(values: list[float]) -> QualityCounts:
    """Regressor counts of these (signed) errors against a target of 0."""
    counts = QualityCounts.empty("regression")
    counts.add_regression([0.0] * len(values), values)
    return counts


GOOD = {"canary_quality": labels(380, 400), "stable_quality": labels(380, 400)}
"""Canary as good as stable: not worse at a 0.05 margin, not shown better."""
BETTER = {"canary_quality": labels(395, 400), "stable_quality": labels(360, 400)}
WORSE = {"canary_quality": labels(300, 400), "stable_quality": labels(380, 400)}
FEW = {"canary_quality": labels(30, 30), "stable_quality": labels(380, 400)}


def analysed(**analysis: Any) -> DeploymentSpec:
    canary = {"version": "latest", "steps": [{"weight": 10, "pause": "30s"},
                                             {"weight": 50, "pause": "1m"}],
              "analysis": {"margin": 0.05} | analysis}  # fmt: skip
    return spec(canary=canary)


def cfacts(**changes: Any) -> Facts:
    return Facts(versions=[C1, C2], canary_loaded=True, **changes)


@pytest.mark.parametrize("step", [0, 1])
def test_analysis_holds_the_step_past_its_pause_until_the_canary_is_shown_not_worse(
    step: int,
) -> None:
    """Past the pause of step 1 (would advance) or of the last step (would promote)."""
    state = progressing_at_step(step)
    result = run(state, cfacts(**FEW), 1000, analysed())
    assert result.state == state and result.events == []
    assert result.reason == AWAITING_ANALYSIS
    assert "accuracy iris-v2 1.0000 (30 labels) vs iris-v1 0.9500 (400 labels)" in result.waiting
    assert result.analysis is not None and result.analysis.decision == "Undecided"


def test_analysis_shown_not_worse_moves_the_canary_on_with_its_numbers() -> None:
    result = run(progressing_at_step(0), cfacts(**GOOD), 130, analysed())
    assert (result.state.step, result.state.weight) == (1, 50)
    [event] = result.events
    assert event.reason == "CanaryStep" and "margin 0.05" in event.message
    assert event.analysis is not None and event.analysis.decision == "Passed"


def test_analysis_shown_not_worse_after_the_last_step_promotes() -> None:
    result = run(progressing_at_step(1), cfacts(**GOOD), 160, analysed())
    assert (result.state.phase, result.state.stable) == ("Promoted", "iris-v2")
    assert "passed 2 steps: accuracy" in result.events[-1].message


def test_analysis_does_not_advance_a_step_before_its_pause() -> None:
    result = run(progressing_at_step(0), cfacts(**GOOD), 110, analysed())
    assert result.state == progressing_at_step(0) and result.events == []


def test_canary_shown_worse_is_rolled_back_as_underperforming_with_its_numbers() -> None:
    """During the pause too: clients are answered by it meanwhile."""
    result = run(progressing_at_step(0), cfacts(**WORSE), 101, analysed())
    s = result.state
    assert (s.phase, s.weight, s.rejected) == ("RolledBack", 0, ("iris-v2",))
    event = result.events[-1]
    assert event.reason == "Underperforming" and event.warning
    assert "accuracy iris-v2 0.7500 (400 labels) vs iris-v1 0.9500 (400 labels)" in event.message
    report = event.analysis
    assert report is not None and report.decision == "Failed"
    assert (report.canary_labels, report.stable_labels) == (400, 400)
    assert report.canary_value == 0.75 and report.stable_value == 0.95
    assert report.z is not None and report.z < -1.645 and report.p_worse is not None
    assert result.analysis == report


def test_undecided_analysis_rolls_back_once_its_timeout_has_passed_after_the_pause() -> None:
    s = analysed(timeout="5m")
    state = progressing_at_step(0, started=100)  # pause 30s: ends at 130
    assert run(state, cfacts(**FEW), 429, s).state == state
    result = run(state, cfacts(**FEW), 430, s)
    assert result.state.phase == "RolledBack"
    assert result.events[-1].reason == "AnalysisInconclusive"
    assert result.analysis is not None and result.analysis.decision == "Inconclusive"


def test_analysis_without_timeout_holds_as_long_as_it_takes() -> None:
    state = progressing_at_step(0)
    assert run(state, cfacts(**FEW), 10**6, analysed()).state == state


@pytest.mark.parametrize("step", [0, 1])
def test_analysis_that_cannot_be_read_holds_the_canary_and_never_promotes(step: int) -> None:
    state = progressing_at_step(step)
    result = run(state, cfacts(quality_error="ArtifactError: store unreachable"), 1000, analysed())
    assert result.state == state and result.reason == ANALYSIS_UNKNOWN
    assert "store unreachable" in result.waiting


def test_analysis_with_a_metric_of_the_other_task_holds_the_canary() -> None:
    f = Facts(versions=[R1, R2], canary_loaded=True, canary_quality=errors([0.1] * 200),
              stable_quality=errors([0.1] * 200))  # fmt: skip
    result = run(progressing_at_step(0), f, 1000, analysed(metric="accuracy"))
    assert result.reason == ANALYSIS_UNKNOWN and "accuracy needs a classification" in result.waiting


def test_analysis_picks_mae_for_regressors() -> None:
    f = Facts(versions=[R1, R2], canary_loaded=True, canary_quality=errors([0.5, -0.5] * 200),
              stable_quality=errors([0.1, -0.1] * 200))  # fmt: skip
    result = run(progressing_at_step(0), f, 101, analysed())
    event = result.events[-1]
    assert event.reason == "Underperforming"
    assert "mae iris-v2 0.5000 (400 labels) vs iris-v1 0.1000 (400 labels)" in event.message


def test_manual_promote_overrides_an_undecided_analysis() -> None:
    result = run(progressing_at_step(0), cfacts(action="promote", **FEW), 101, analysed())
    assert (result.state.phase, result.state.stable) == ("Promoted", "iris-v2")


def abtest(**test: Any) -> DeploymentSpec:
    return spec(canary={"version": "latest", "mode": "abtest", "analysis": {"margin": 0.05},
                        "abtest": {"weight": 30, "maxDuration": "1h"} | test})  # fmt: skip


def in_abtest(started: float = 100.0) -> State:
    return State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=30, step=0,
                 step_started=started)  # fmt: skip


def test_abtest_starts_at_its_fixed_weight_once_loaded() -> None:
    loading = State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0)
    result = run(loading, cfacts(), 50, abtest())
    assert (result.state.step, result.state.weight, result.state.step_started) == (0, 30, 50)
    assert result.routes() == [("iris-v1", "stable", 70), ("iris-v2", "canary", 30)]
    assert [e.reason for e in result.events] == ["ABTestStarted"]


def test_abtest_winner_is_promoted_and_the_decision_recorded_with_its_numbers() -> None:
    result = run(in_abtest(), cfacts(**BETTER), 200, abtest())
    assert (result.state.phase, result.state.stable) == ("Promoted", "iris-v2")
    event = result.events[-1]
    assert event.reason == "ABTestWon" and "accuracy iris-v2 0.9875" in event.message
    assert event.analysis is not None and event.analysis.mode == "abtest"
    assert event.analysis.margin == 0.0 and event.analysis.decision == "Passed"


def test_abtest_loser_is_rolled_back() -> None:
    result = run(in_abtest(), cfacts(**WORSE), 200, abtest())
    assert result.state.phase == "RolledBack" and result.state.rejected == ("iris-v2",)
    assert result.events[-1].reason == "ABTestLost"


def test_abtest_promotes_only_a_canary_shown_better_whatever_the_margin() -> None:
    """As good as stable is not-worse at analysis.margin 0.05, but no A/B win."""
    result = run(in_abtest(), cfacts(**GOOD), 200, abtest())
    assert result.state == in_abtest() and result.reason == AWAITING_ANALYSIS
    # 3500 s left: its end time, absolute (a message that stays the same from pass to pass)
    assert "A/B test of iris-v2 (30%) against iris-v1, until 1970-01-01T01:01:40Z" in result.waiting


def test_abtest_undecided_at_max_duration_keeps_stable_and_rolls_the_candidate_back() -> None:
    result = run(in_abtest(started=100), cfacts(**GOOD), 3700, abtest())
    s = result.state
    assert (s.phase, s.stable, s.rejected) == ("RolledBack", "iris-v1", ("iris-v2",))
    event = result.events[-1]
    assert event.reason == "ABTestInconclusive" and "iris-v1 stays" in event.message
    assert event.analysis is not None and event.analysis.decision == "Inconclusive"


def test_abtest_win_waits_for_a_guard_that_cannot_evaluate_the_canary() -> None:
    result = run(in_abtest(), cfacts(unknown_guards=BROKEN, **BETTER), 200, abtest())
    assert result.state == in_abtest() and result.reason == GUARD_UNKNOWN


def test_abort_overrides_an_abtest() -> None:
    result = run(in_abtest(), cfacts(action="abort", **BETTER), 200, abtest())
    assert result.state.phase == "RolledBack" and result.events[-1].reason == "ManualAbort"


def shadow(analysis: dict[str, Any] | None = None, **gates: Any) -> DeploymentSpec:
    gated = {"duration": "10m", "minCompared": 100} | gates
    canary: dict[str, Any] = {"version": "latest", "mode": "shadow", "shadow": gated}
    if analysis is not None:
        canary["analysis"] = analysis
    return spec(canary=canary)


def shadowing(started: float = 100.0) -> State:
    return State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0, step=0,
                 step_started=started)  # fmt: skip


AFTER = 100 + 600  # the shadow's duration has passed


def test_shadow_starts_with_the_canary_at_weight_zero() -> None:
    loading = State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0)
    result = run(loading, cfacts(), 50, shadow(minAgreement=0.9))
    assert (result.state.step, result.state.weight) == (0, 0)
    assert result.routes() == [("iris-v1", "stable", 100), ("iris-v2", "canary", 0)]
    assert [e.reason for e in result.events] == ["ShadowStarted"]


def test_shadow_decides_nothing_before_its_duration() -> None:
    f = cfacts(agreement=Agreement(compared=500, agreed=100))
    result = run(shadowing(), f, AFTER - 1, shadow(minAgreement=0.9))
    assert result.state == shadowing() and result.events == []
    end = dt.datetime.fromtimestamp(AFTER, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"shadowing iris-v2 until {end}" in result.waiting


def test_shadow_that_agrees_with_stable_is_promoted() -> None:
    f = cfacts(agreement=Agreement(compared=500, agreed=490))
    result = run(shadowing(), f, AFTER, shadow(minAgreement=0.95))
    assert (result.state.phase, result.state.stable) == ("Promoted", "iris-v2")
    assert "agreement with iris-v1 0.9800 over 500 rows >= 0.95" in result.events[-1].message
    report = result.events[-1].analysis
    assert report is not None and (report.agreement, report.compared) == (0.98, 500)


def test_shadow_that_disagrees_with_stable_is_rolled_back() -> None:
    f = cfacts(agreement=Agreement(compared=500, agreed=400))
    result = run(shadowing(), f, AFTER, shadow(minAgreement=0.95))
    assert result.state.phase == "RolledBack"
    event = result.events[-1]
    assert event.reason == "ShadowDisagrees" and "0.8000 over 500 rows < 0.95" in event.message


def test_shadow_with_too_few_compared_rows_is_held() -> None:
    f = cfacts(agreement=Agreement(compared=50, agreed=50))
    result = run(shadowing(), f, AFTER + 10**5, shadow(minAgreement=0.95))
    assert result.state == shadowing() and result.reason == AWAITING_ANALYSIS
    assert "50 rows compared with iris-v1, 100 needed" in result.waiting


def test_shadow_undecided_past_the_analysis_timeout_is_rolled_back() -> None:
    f = cfacts(agreement=Agreement(compared=50, agreed=50))
    s = shadow({"timeout": "1m"}, minAgreement=0.95)
    assert run(shadowing(), f, AFTER + 59, s).state == shadowing()
    assert run(shadowing(), f, AFTER + 60, s).events[-1].reason == "AnalysisInconclusive"


def test_shadow_regressor_is_gated_on_mean_absolute_difference() -> None:
    far = Facts(versions=[R1, R2], canary_loaded=True,
                agreement=Agreement(compared=200, sum_abs_difference=100.0))  # fmt: skip
    result = run(shadowing(), far, AFTER, shadow(maxMeanAbsDifference=0.25))
    assert result.events[-1].reason == "ShadowDisagrees"
    assert "mean |iris-v2 - iris-v1| 0.5 over 200 rows > 0.25" in result.events[-1].message
    near = dataclasses.replace(far, agreement=Agreement(compared=200, sum_abs_difference=20.0))
    assert run(shadowing(), near, AFTER, shadow(maxMeanAbsDifference=0.25)).state.phase == (
        "Promoted"
    )


def test_shadow_agreement_gate_of_the_other_task_holds_the_canary() -> None:
    f = cfacts(agreement=Agreement(compared=500, agreed=500))
    result = run(shadowing(), f, AFTER, shadow(maxMeanAbsDifference=0.25))
    assert result.reason == ANALYSIS_UNKNOWN and "set minAgreement" in result.waiting


def test_shadow_with_analysis_needs_labels_too() -> None:
    agrees = {"agreement": Agreement(compared=500, agreed=500)}
    s = shadow({"margin": 0.05}, minAgreement=0.95)
    held = run(shadowing(), cfacts(**agrees, **FEW), AFTER, s)
    assert held.reason == AWAITING_ANALYSIS and held.state == shadowing()
    worse = run(shadowing(), cfacts(**agrees, **WORSE), AFTER, s)
    assert worse.events[-1].reason == "Underperforming"
    good = run(shadowing(), cfacts(**agrees, **GOOD), AFTER, s)
    assert good.state.phase == "Promoted"


def test_shadow_without_gates_is_promoted_after_its_duration() -> None:
    result = run(shadowing(), cfacts(), AFTER, shadow())
    assert result.state.phase == "Promoted" and "no gates" in result.events[-1].message


def test_manual_promote_overrides_a_shadow_in_progress() -> None:
    result = run(shadowing(), cfacts(action="promote"), 150, shadow(minAgreement=0.95))
    assert result.state.phase == "Promoted"


def test_underperforming_guard_rolls_the_canary_back() -> None:
    f = cfacts(underperforming_monitors=[("iris-quality", "accuracy 0.71 < 0.9")])
    result = run(progressing_at_step(0), f, 101)
    assert result.state.phase == "RolledBack"
    event = result.events[-1]
    assert (
        event.reason == "Underperforming" and "iris-quality: accuracy 0.71 < 0.9" in event.message
    )


def quality_monitor(under: dict[str, Any] | None, version: str = "iris-v2") -> dict[str, Any]:
    monitor = monitor_obj({"status": "False", "reason": "NoDrift"}, version=version)
    if under is not None:
        monitor["status"]["conditions"].append({"type": "Underperforming", **under})
    return monitor


@pytest.mark.parametrize(
    ("monitor", "verdict"),
    [
        (quality_monitor(None), None),
        (quality_monitor({"status": "False", "reason": "Healthy"}), None),
        (quality_monitor({"status": "Unknown", "reason": "InsufficientLabels"}), None),
        (
            quality_monitor({"status": "True", "message": "accuracy 0.71"}),
            ("underperforming", "accuracy 0.71"),
        ),
        (quality_monitor({"status": "True", "message": "0.71"}, version="iris-v1"), None),
        (
            quality_monitor({"status": "Unknown", "reason": "CheckFailed", "message": "boom"}),
            ("unknown", "Underperforming CheckFailed: boom"),
        ),
    ],
    ids=["no-quality-rule", "healthy", "too-few-labels", "underperforming",
         "underperforming-other-version", "quality-check-failed"],
)  # fmt: skip
def test_guard_verdict_on_quality(monitor: dict[str, Any], verdict: tuple[str, str] | None) -> None:
    assert guard_verdict(monitor, "iris-v2") == verdict


def test_drift_wins_over_underperforming_in_a_guards_verdict() -> None:
    monitor = monitor_obj({"status": "True", "message": "3/4 drifted"})
    monitor["status"]["conditions"].append({"type": "Underperforming", "status": "True"})
    assert guard_verdict(monitor, "iris-v2") == ("firing", "3/4 drifted")


def test_quality_window_is_read_only_when_a_gate_needs_labels_or_agreement() -> None:
    assert quality_window(spec()) is None
    assert quality_window(analysed(window="2m")) == 120
    assert quality_window(shadow(minAgreement=0.9, duration="5s")) == 600  # analysis' default
    assert quality_window(shadow()) is None


def test_analysis_report_leaves_out_numbers_that_do_not_exist_yet() -> None:
    """No labels for the canary: no value, no z, no p-values (JSON has no NaN)."""
    f = cfacts(stable_quality=labels(1, 2))
    report = run(progressing_at_step(0), f, 101, analysed()).analysis
    assert report is not None and report.decision == "Undecided"
    assert report.canary_labels == 0
    assert [report.canary_value, report.z, report.p_worse, report.p_not_worse] == [None] * 4


# --- approvals: canary.requireApproval and modelops.dev/action=approve (issue 14, part 5) ------


def approval(**canary: Any) -> DeploymentSpec:
    steps = [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "1m"}]
    return spec(canary={"version": "latest", "steps": steps, "requireApproval": True} | canary)


def requiring_approval(s: DeploymentSpec) -> DeploymentSpec:
    assert s.canary is not None
    return s.model_copy(update={"canary": s.canary.model_copy(update={"require_approval": True})})


DONE = 160
"""The last step (started at 100) has paused for its minute."""


def approve(**changes: Any) -> Facts:
    given: dict[str, Any] = {"canary_loaded": True, "action": "approve", "approved_by": "alice"}
    return facts(V1, V2, **(given | changes))


def test_canary_requiring_approval_holds_at_its_last_weight_after_the_last_step() -> None:
    result = run(progressing_at_step(1), facts(V1, V2, canary_loaded=True), DONE + 600, approval())
    assert result.state == progressing_at_step(1) and result.events == []
    assert result.reason == AWAITING_APPROVAL
    assert result.routes() == [("iris-v1", "stable", 50), ("iris-v2", "canary", 50)]
    assert result.waiting.startswith("iris-v2 awaits approval (iris-v2 passed 2 steps)")
    assert "kubectl modelops approve" in result.waiting


def test_canary_requiring_approval_walks_its_steps_as_any_other() -> None:
    result = run(progressing_at_step(0), facts(V1, V2, canary_loaded=True), 130, approval())
    assert (result.state.step, result.state.weight) == (1, 50)
    assert [e.reason for e in result.events] == ["CanaryStep"]


def test_approve_promotes_a_canary_awaiting_approval_and_names_the_approver() -> None:
    result = run(progressing_at_step(1), approve(), DONE, approval())
    assert (result.state.phase, result.state.stable, result.state.canary) == (
        "Promoted",
        "iris-v2",
        None,
    )
    [event] = result.events
    assert (event.reason, event.version, event.approved_by) == ("Approved", "iris-v2", "alice")
    assert event.message == "iris-v2 promoted to stable: approved by alice: iris-v2 passed 2 steps"


def test_approval_naming_no_one_promotes_and_says_so() -> None:
    result = run(progressing_at_step(1), approve(approved_by=None), DONE, approval())
    [event] = result.events
    assert event.reason == "Approved" and event.approved_by is None
    assert "approved (the approver named no one)" in event.message


def test_approve_that_promoted_is_consumed_by_the_next_pass_only() -> None:
    promoted = run(progressing_at_step(1), approve(), DONE, approval())
    assert not promoted.consume_action
    again = run(promoted.state, approve(), DONE + 1, approval())
    assert again.consume_action and again.events == [] and again.state == promoted.state


@pytest.mark.parametrize("step,now", [(0, 101), (1, DONE - 1)])
def test_approve_before_the_canary_awaits_approval_is_consumed_and_ignored(
    step: int, now: float
) -> None:
    result = run(progressing_at_step(step), approve(), now, approval())
    assert result.state == progressing_at_step(step) and result.consume_action
    [event] = result.events
    assert event.reason == "ActionIgnored"
    assert event.message.startswith(
        "modelops.dev/action=approve ignored: iris-v2 is not awaiting approval: step"
    )


def test_approve_without_require_approval_is_consumed_and_ignored() -> None:
    result = run(progressing_at_step(1), approve(), DONE - 1)
    assert result.state == progressing_at_step(1) and result.consume_action
    assert [(e.reason, e.message) for e in result.events] == [
        (
            "ActionIgnored",
            "modelops.dev/action=approve ignored: spec.canary.requireApproval is not set",
        )
    ]


@pytest.mark.parametrize("step,now", [(0, 101), (1, DONE)])
def test_promote_is_refused_when_approval_is_required(step: int, now: float) -> None:
    f = facts(V1, V2, canary_loaded=True, action="promote")
    result = run(progressing_at_step(step), f, now, approval())
    assert result.state.phase == "Progressing" and result.state.canary == "iris-v2"
    assert result.consume_action
    ignored = [e for e in result.events if e.reason == "ActionIgnored"]
    assert len(ignored) == 1 and "spec.canary.requireApproval is set" in ignored[0].message


def test_abort_rolls_back_a_canary_awaiting_approval() -> None:
    f = facts(V1, V2, canary_loaded=True, action="abort")
    result = run(progressing_at_step(1), f, DONE, approval())
    assert (result.state.phase, result.state.rejected) == ("RolledBack", ("iris-v2",))
    assert result.events[-1].reason == "ManualAbort"


def test_firing_guard_rolls_back_a_canary_awaiting_approval() -> None:
    f = facts(V1, V2, canary_loaded=True, firing_monitors=[("iris-drift", "share 0.75")])
    result = run(progressing_at_step(1), f, DONE, approval())
    assert result.state.phase == "RolledBack" and result.events[-1].reason == "DriftDetected"


def test_error_rate_rolls_back_a_canary_awaiting_approval_even_as_it_is_approved() -> None:
    result = run(progressing_at_step(1), approve(canary_requests=100, canary_errors=50), DONE,
                 approval())  # fmt: skip
    assert result.state.phase == "RolledBack" and result.events[-1].reason == "ErrorRateExceeded"


def test_guard_that_cannot_evaluate_holds_the_canary_before_it_awaits_approval() -> None:
    f = facts(V1, V2, canary_loaded=True, unknown_guards=BROKEN)
    result = run(progressing_at_step(1), f, DONE, approval())
    assert result.state == progressing_at_step(1) and result.reason == GUARD_UNKNOWN


def test_approval_waits_for_the_quality_analysis_to_pass_first() -> None:
    result = run(progressing_at_step(1), cfacts(**FEW), DONE, approval(analysis={"margin": 0.05}))
    assert result.reason == AWAITING_ANALYSIS
    passed = run(progressing_at_step(1), cfacts(**GOOD), DONE, approval(analysis={"margin": 0.05}))
    assert passed.reason == AWAITING_APPROVAL and passed.state == progressing_at_step(1)


def test_abtest_winner_awaits_approval_at_its_split_then_is_approved() -> None:
    s = requiring_approval(abtest())
    won = run(in_abtest(), cfacts(**BETTER), 200, s)
    assert won.state == in_abtest() and won.reason == AWAITING_APPROVAL
    assert "won the A/B test against iris-v1" in won.waiting
    approved = run(in_abtest(), cfacts(action="approve", approved_by="bob", **BETTER), 201, s)
    assert (approved.state.phase, approved.events[-1].reason) == ("Promoted", "Approved")


def test_shadow_that_passed_its_gates_awaits_approval() -> None:
    s = requiring_approval(shadow(minAgreement=0.95))
    result = run(shadowing(), cfacts(agreement=Agreement(compared=500, agreed=490)), AFTER, s)
    assert result.state == shadowing() and result.reason == AWAITING_APPROVAL


def fairness_monitor(unfair: dict[str, Any], version: str = "iris-v2") -> dict[str, Any]:
    """A monitor of ``version`` without drift, with a ``FairnessViolated`` condition."""
    monitor = quality_monitor(None, version=version)
    monitor["status"]["conditions"].append({"type": "FairnessViolated", **unfair})
    return monitor


@pytest.mark.parametrize(
    ("monitor", "verdict"),
    [
        (fairness_monitor({"status": "False", "reason": "FairnessWithinThreshold"}), None),
        (fairness_monitor({"status": "Unknown", "reason": "InsufficientLabels"}), None),
        (
            fairness_monitor({"status": "True", "message": "dp 0.4"}),
            ("underperforming", "FairnessViolated: dp 0.4"),
        ),
        (fairness_monitor({"status": "True", "message": "dp 0.4"}, version="iris-v1"), None),
        (
            fairness_monitor({"status": "Unknown", "reason": "NoGroupLabels", "message": "none"}),
            ("unknown", "FairnessViolated NoGroupLabels: none"),
        ),
    ],
    ids=["fair", "too-few-labels", "violated", "violated-other-version", "no-group-labels"],
)
def test_guard_verdict_on_fairness(
    monitor: dict[str, Any], verdict: tuple[str, str] | None
) -> None:
    assert guard_verdict(monitor, "iris-v2") == verdict
