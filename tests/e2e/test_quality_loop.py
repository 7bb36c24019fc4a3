"""The demo's second act on the local cluster, asserted: after the drift rollback the concept
drifts, stable's live accuracy falls on the labels clients send back, the quality monitor
retrains on the fresh data, and the new version is canaried with quality analysis and promoted.

The whole demo story (both acts) runs once (module fixture), on its own model so it shares
the package's cluster with ``test_loop.py``; each test checks one promise of act 2.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from modelops.local.cluster import LocalCluster
from modelops.local.scenario import MAX_DEGRADATION, Result, Scenario, SecondAct
from modelops.local.view import PlainView

pytestmark = pytest.mark.e2e
MODEL = "iris-q"


@pytest.fixture(scope="module")
def story(local_cluster: LocalCluster) -> Result:
    # Plain progress lines on stdout: visible with -s, and in the report of a failed test.
    scenario = Scenario(local_cluster, PlainView(sys.stdout), model=MODEL, quality_act=True)
    result = asyncio.run(scenario.run())
    act = result.second
    assert act is not None
    print(f"\nlabels change -> promotion: {act.fall_to_promotion:.1f}s")
    return result


@pytest.fixture(scope="module")
def act(story: Result) -> SecondAct:
    assert story.second is not None
    return story.second


def status(result: Result, kind: str, name: str) -> dict:
    return result.objects[kind][name].get("status", {})


def test_stable_live_accuracy_was_shown_below_its_held_out_accuracy(act: SecondAct) -> None:
    fell = act.fell
    baseline = fell["baseline"]
    assert (fell["metric"], baseline["kind"], baseline["worse"]) == ("accuracy", "training", True)
    assert fell["labels"] >= 60  # the rule's minLabels
    # Fired only when shown worse than held-out by more than maxDegradation, at 95%.
    assert fell["value"] < baseline["against"] - MAX_DEGRADATION
    assert baseline["pValue"] < 0.05
    assert act.fell["decision"] == "Underperforming"


def test_the_monitor_measured_what_the_clients_saw(act: SecondAct) -> None:
    """The operator's accuracy of stable (labels joined in the pods) agrees with the clients'
    own tally of the answers they got (a different sample: the window against everything)."""
    seen, judged = act.client_accuracy
    assert seen is not None and judged >= act.fell["labels"] / 2
    assert abs(act.fell["value"] - seen) < 0.15, (act.fell, act.client_accuracy)


def test_the_new_version_records_the_quality_trigger_and_the_fresh_data(
    story: Result, act: SecondAct
) -> None:
    run = story.objects["TrainingRun"][act.retrain]
    assert run["metadata"]["annotations"]["modelops.dev/trigger"] == "quality"
    assert status(story, "TrainingRun", act.retrain)["modelVersion"] == act.version == "iris-q-v3"
    lineage = story.objects["ModelVersion"][act.version]["spec"]["lineage"]
    assert lineage["trigger"] == "quality"
    assert lineage["triggerDetail"].startswith("accuracy ")  # the monitor's verdict
    assert lineage["trainingRun"] == act.retrain
    assert lineage["datasetUri"] == act.dataset_uri  # the newest object under the prefix
    assert len(lineage["datasetSha256"]) == 64
    monitor = status(story, "DriftMonitor", f"{MODEL}-quality")
    assert (monitor["retrains"], monitor["lastTrigger"]) == (1, "quality")  # one run, no repeat


def test_each_canary_step_and_the_promotion_were_taken_on_a_passed_analysis(
    story: Result, act: SecondAct
) -> None:
    history = status(story, "Deployment", MODEL)["history"]
    mine = [h for h in history if h.get("version") == act.version]
    assert [h["event"] for h in mine] == ["CanaryStarted", "CanaryStep", "CanaryStep", "Promoted"]
    for entry in mine[2:]:  # step 2 and the promotion: after an analysis each
        analysis = entry["analysis"]
        assert analysis["decision"] == "Passed", entry
        assert (analysis["canaryVersion"], analysis["stableVersion"]) == (act.version, act.stable)
        assert analysis["canaryLabels"] >= 40 and analysis["stableLabels"] >= 40  # minLabels
        assert analysis["canaryValue"] > analysis["stableValue"]
        assert analysis["pNotWorse"] < 1 - analysis["confidence"]
        assert f"accuracy {act.version} " in entry["message"]  # the numbers in the message
    assert act.promotion == mine[-1]


def test_the_new_version_was_promoted_and_answers_everything(story: Result, act: SecondAct) -> None:
    dep = status(story, "Deployment", MODEL)
    assert (dep["phase"], dep["stableVersion"], dep.get("canaryVersion")) == (
        "Promoted",
        act.version,
        None,
    )
    assert dep["rejectedVersions"] == [f"{MODEL}-v2"]  # act 1's, still rejected
    assert len(act.after) == 200
    assert {a.version for a in act.after} == {act.version}
    assert all(a.status == 200 for a in act.after)


def test_quality_is_back_once_the_new_version_is_stable(act: SecondAct) -> None:
    recovered = act.recovered
    assert recovered["decision"] == "Healthy"
    assert recovered["value"] >= act.fell["value"] + MAX_DEGRADATION


def test_no_client_saw_an_error_and_no_feedback_call_failed(story: Result) -> None:
    traffic = story.traffic
    assert traffic.errors() == []
    assert traffic.feedback_errors() == []
    assert traffic.labels_sent() > 0
    counts = traffic.feedback_counts()
    assert counts["received"] == traffic.labels_sent()
    # Labels for ids answered by another pod wait (pending) for its prediction log; none of
    # the ids sent was unknown to the server at once.
    assert counts["joined"] + counts["pending"] == counts["received"]
    assert story.problems() == []


def test_every_label_found_the_prediction_it_was_for(act: SecondAct) -> None:
    """The pods' own counts over the quality window at the end: every label sent joined
    (those that reached a pod other than the one that answered, through its prediction
    log), none unknown, expired, duplicated or mismatched."""
    pods = act.recovered["feedback"]
    assert pods["received"] > 0
    assert pods["joined"] == pods["received"], pods
    assert pods["unknown"] == pods["expired"] == pods["duplicate"] == pods["mismatched"] == 0
