"""``kubectl modelops`` without a cluster: the Deployment tree, names, errors (the kubeconfig:
``tests/unit/test_cluster_client.py``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops.api.driftmonitor import DriftMonitorSpec
from modelops.insight import plugin
from modelops.insight.plugin import MONITOR_KINDS, UserError, object_name, target_version
from modelops.insight.tree import Snapshot, render_text

NOW = 1_750_000_000.0


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history(n: int) -> list[dict[str, Any]]:
    return [
        {"time": iso(NOW - 100 + i), "event": f"Event{i}", "version": "iris-v2",
         "reason": "R", "message": f"message {i}"}
        for i in range(n)
    ]  # fmt: skip


def deployment(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "iris", "namespace": "shop"},
        "spec": {
            "model": "iris",
            "replicas": 2,
            "canary": {
                "version": "latest",
                "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "1m"}],
            },
            "rollback": {"driftMonitors": ["iris-drift"]},
        },
        "status": status,
    }


def canary_in_step(**extra: Any) -> dict[str, Any]:
    status = {
        "phase": "Progressing",
        "stableVersion": "iris-v1",
        "canaryVersion": "iris-v2",
        "canaryWeight": 10,
        "step": 0,
        "stepStartedAt": iso(NOW - 5),
        "history": history(3),
    }
    return deployment(**status | extra)


def version(name: str, accuracy: float) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"metrics": {"accuracy": accuracy}},
        "status": {"phase": "Ready", "metricsSummary": f"accuracy={accuracy}"},
    }


def pod(name: str, ready: bool) -> dict[str, Any]:
    waiting = {} if ready else {"waiting": {"reason": "CrashLoopBackOff"}}
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"restartCount": 0 if ready else 3, "state": waiting}],
        },
    }


MONITOR = {
    "metadata": {"name": "iris-drift"},
    "spec": {"deployment": "iris", "action": "alert"},
    "status": {
        "phase": "Drifted",
        "version": "iris-v2",
        "samples": 600,
        "driftedShare": 0.5,
        "features": [
            {"name": "sepal_width", "method": "ks", "score": 0.4, "threshold": 0.05,
             "drifted": False},
            {"name": "petal_length", "method": "ks", "score": 1e-9, "threshold": 0.05,
             "drifted": True},
        ],
        "conditions": [{"type": "Drifted", "status": "True", "reason": "DriftDetected"}],
    },
}  # fmt: skip


def text(dep: dict[str, Any], history_shown: int = 5) -> str:
    shot = Snapshot(
        dep,
        {"iris-v1": version("iris-v1", 0.96), "iris-v2": version("iris-v2", 0.97)},
        [pod("iris-server-a", True), pod("iris-server-b", False)],
        [MONITOR],
        NOW,
    )
    return render_text(shot, width=160, history=history_shown)


def test_tree_shows_stable_and_canary_with_their_weights() -> None:
    shown = text(canary_in_step())
    assert "stable iris-v1  90%  Ready  accuracy=0.96" in shown
    assert "canary iris-v2  10%" in shown


def test_tree_shows_the_step_and_the_pause_left() -> None:
    assert "step 1/2, 25s of 30s left" in text(canary_in_step())


def test_tree_counts_ready_pods_and_names_why_one_waits() -> None:
    shown = text(canary_in_step())
    assert "pods 1/2 ready" in shown
    assert "iris-server-b  Running  not ready  restarts 3  CrashLoopBackOff" in shown


def test_tree_gives_monitor_verdicts_drifted_features_first() -> None:
    shown = text(canary_in_step())
    assert "iris-drift  Drifted" in shown and "(guards the canary)" in shown
    assert shown.index("petal_length") < shown.index("sepal_width")
    assert "petal_length  ks 1e-09 (threshold 0.05)  drifted" in shown


def test_tree_keeps_only_the_last_history_entries() -> None:
    shown = text(canary_in_step(history=history(7)), history_shown=5)
    assert "history (last 5 of 7)" in shown
    assert "Event1" not in shown and "Event2" in shown and "Event6" in shown


def test_tree_of_a_rolled_back_canary_gives_stable_all_traffic() -> None:
    dep = deployment(
        phase="RolledBack",
        stableVersion="iris-v1",
        canaryVersion="iris-v2",
        canaryWeight=0,
        rejectedVersions=["iris-v2"],
    )
    shown = text(dep)
    assert "stable iris-v1  100%" in shown
    assert "canary iris-v2 rolled back" in shown and "rejected iris-v2" in shown


def test_tree_says_when_a_canary_is_held_by_a_guard() -> None:
    held = {"type": "Progressing", "status": "False", "reason": "GuardUnknown",
            "message": "iris-v2 held at step 1"}  # fmt: skip
    assert "GuardUnknown: iris-v2 held at step 1" in text(canary_in_step(conditions=[held]))


def test_object_names_take_an_optional_kind() -> None:
    assert object_name("dm/iris-drift", MONITOR_KINDS, "DriftMonitor") == "iris-drift"
    assert object_name("iris-drift", MONITOR_KINDS, "DriftMonitor") == "iris-drift"
    with pytest.raises(UserError, match="not a DriftMonitor"):
        object_name("mdep/iris", MONITOR_KINDS, "DriftMonitor")


def test_target_version_follows_the_canary_while_it_takes_traffic() -> None:
    spec = DriftMonitorSpec.model_validate({"deployment": "iris"})
    live = {"phase": "Progressing", "canaryVersion": "iris-v2", "canaryWeight": 10,
            "stableVersion": "iris-v1"}  # fmt: skip
    assert target_version(spec, live) == "iris-v2"
    assert target_version(spec, live | {"phase": "Stable"}) == "iris-v1"


def test_a_user_error_is_one_line_and_exit_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent"
    assert plugin.main(["status", "iris", "--kubeconfig", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: no kubeconfig at {missing}\n"


def test_an_unknown_context_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://c:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "a",
            }
        )
    )
    argv = ["status", "iris", "--kubeconfig", str(config), "--context", "nope"]
    assert plugin.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"error: context 'nope' is not in kubeconfig {config} (its contexts: a)\n"
