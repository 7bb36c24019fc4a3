"""The demo's story on the local cluster, asserted: train, serve, canary, drift, rollback.

The rollback story runs once (module fixture); each test checks one promise of it. The
promotion story runs on a second model in the same cluster.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from modelops.local.cluster import LocalCluster
from modelops.local.scenario import Result, Scenario
from modelops.local.view import PlainView

pytestmark = pytest.mark.e2e
Kubectl = Callable[..., str]


def run_story(cluster: LocalCluster, outcome: Literal["rollback", "promote"], model: str) -> Result:
    # Plain progress lines on stdout: visible with -s, and in the report of a failed test.
    scenario = Scenario(cluster, PlainView(sys.stdout), outcome=outcome, model=model)
    return asyncio.run(scenario.run())


@pytest.fixture(scope="module")
def rollback(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Result:
    result = run_story(local_cluster, "rollback", "iris")
    seconds = result.drift_to_rollback
    report = tmp_path_factory.mktemp("timings") / "drift-to-rollback.txt"
    report.write_text(f"{seconds}\n")
    print(f"\nfirst drifted request -> rollback: {seconds:.1f}s (written to {report})")
    return result


def status(result: Result, kind: str, name: str) -> dict:
    return result.objects[kind][name].get("status", {})


def condition(obj_status: dict, type_: str) -> dict:
    return next((c for c in obj_status.get("conditions", []) if c["type"] == type_), {})


def test_every_kind_reached_the_expected_status(rollback: Result) -> None:
    for run, version in (("iris-logreg", "iris-v1"), ("iris-forest", "iris-v2")):
        run_status = status(rollback, "TrainingRun", run)
        assert run_status["phase"] == "Succeeded"
        assert run_status["modelVersion"] == version
        assert condition(run_status, "Registered")["status"] == "True"
        assert status(rollback, "ModelVersion", version)["phase"] == "Ready"

    dep = status(rollback, "Deployment", "iris")
    assert dep["phase"] == "RolledBack"
    assert dep["stableVersion"] == "iris-v1"
    assert dep["canaryWeight"] == 0
    assert dep["rejectedVersions"] == ["iris-v2"]
    assert dep["readyReplicas"] == 2
    assert condition(dep, "Degraded")["reason"] == "RolledBack"
    events = [h["event"] for h in dep["history"]]
    assert events == [
        "StableSelected",
        "CanaryStarted",
        "CanaryStep",
        "CanaryStep",
        "DriftDetected",
    ]

    monitor = status(rollback, "DriftMonitor", "iris-drift")
    assert monitor["firings"] == 1


def test_the_rollback_names_the_monitor_and_the_drifted_features(rollback: Result) -> None:
    assert rollback.reason.startswith("DriftDetected: rolled back iris-v2: iris-drift: ")
    assert re.search(r"\d/4 features drifted in iris-v2", rollback.reason)


def test_clients_saw_no_failed_request(rollback: Result) -> None:
    traffic = rollback.traffic
    assert traffic.errors() == []
    served = traffic.by_version()
    assert served["iris-v1"] > 0 and served["iris-v2"] > 0, served  # both served, through all


def test_after_the_rollback_every_answer_comes_from_the_stable_version(rollback: Result) -> None:
    assert len(rollback.after) == 200
    assert {a.version for a in rollback.after} == {"iris-v1"}
    assert all(a.status == 200 for a in rollback.after)


def test_drifted_requests_reached_the_canary_and_the_rollback_followed(rollback: Result) -> None:
    drifted = rollback.traffic.drifted()
    assert drifted, "no drifted request was sent"
    assert sum(a.version == "iris-v2" for a in drifted) >= 50  # the monitor's minSamples
    seconds = rollback.drift_to_rollback
    assert seconds is not None
    print(f"\nfirst drifted request -> rollback: {seconds:.1f}s")
    assert 0 < seconds < 60


def test_kubectl_prints_the_printer_columns(rollback: Result, kubectl: Kubectl) -> None:
    mdep = kubectl("get", "mdep")
    header, row = mdep.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "MODEL",
        "STABLE",
        "CANARY",
        "MODE",
        "WEIGHT",
        "PHASE",
        "READY",
        "DESIRED",
        "AGE",
    ]
    assert row.split()[:9] == [
        "iris",
        "iris",
        "iris-v1",
        "iris-v2",
        "canary",
        "0",
        "RolledBack",
        "2",
        "2",
    ]

    everything = kubectl("get", "modelops")
    for header in (
        "NAME DEPLOYMENT VERSION DRIFTED SHARE SAMPLES QUALITY LABELS ACTION AGE",
        "NAME MODEL STABLE CANARY MODE WEIGHT PHASE READY DESIRED AGE",
        "NAME MODEL VERSION PHASE METRICS RUN AGE",
        "NAME MODEL ESTIMATOR PHASE METRICS VERSION AGE",
    ):
        assert any(" ".join(line.split()) == header for line in everything.splitlines()), (
            header,
            everything,
        )
    assert "deployment.modelops.dev/iris" in everything
    assert "trainingrun.modelops.dev/iris-forest" in everything
    # The filter JSONPath column: .status.conditions[?(@.type=="Drifted")].status
    monitor = kubectl("get", "dm", "iris-drift").splitlines()[1].split()
    assert monitor[3] in ("True", "False", "Unknown")

    pods = kubectl("get", "pods", "-l", "modelops.dev/deployment=iris")
    assert [line.split()[1:3] for line in pods.splitlines()[1:]] == [["1/1", "Running"]] * 2


def test_a_healthy_canary_is_promoted(local_cluster: LocalCluster, tmp_path: Path) -> None:
    result = run_story(local_cluster, "promote", "iris-b")
    assert result.problems() == []
    dep = status(result, "Deployment", "iris-b")
    assert (dep["phase"], dep["stableVersion"], dep.get("canaryVersion")) == (
        "Promoted",
        "iris-b-v2",
        None,
    )
    assert result.traffic.errors() == []
    assert {a.version for a in result.after} == {"iris-b-v2"}
    assert status(result, "DriftMonitor", "iris-b-drift").get("firings", 0) == 0


def test_no_status_field_the_controllers_wrote_was_pruned_by_the_server(
    rollback: Result, local_cluster: LocalCluster
) -> None:
    """The operator counts status fields the server drops (the CRDs lack them): none."""
    import urllib.request

    url = local_cluster.service_url("modelops-operator-metrics", "modelops-system") + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    writes = [line for line in text.splitlines() if line.startswith("modelops_reconcile_total")]
    assert writes, "the operator's metrics show no reconciliation"
    pruned = [
        line
        for line in text.splitlines()
        if line.startswith("modelops_status_fields_pruned_total{") and float(line.split()[-1]) > 0
    ]
    assert pruned == []
