"""The operator SIGKILLed at random moments of the whole loop, with real serving pods and clients.

The demo's story (:mod:`modelops.local.scenario`: train v1 -> register -> serve -> train v2 ->
canary steps -> drift rollback) runs with the operator as a process of this test, which a
killer task SIGKILLs and starts again once in each phase: while v1 trains, while v2 trains,
during the canary's first step and during its second (as the drift is detected). The story
must end as it does without kills (``tests/e2e/test_loop.py``): the same end state, one Job
per TrainingRun, one ModelVersion per run, each history step exactly once and in order, and
no failed client request. The seed, the kill moments and the traffic are printed (``-s``).
Seeds: ``MODELOPS_LOOP_KILL_SEEDS`` (comma-separated; 21 by default).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.cluster import NAMESPACE, LocalCluster
from modelops.local.s3server import S3Server
from modelops.local.scenario import Result, Scenario
from modelops.local.view import PlainView
from support.operator import OperatorProcess, eventually

pytestmark = pytest.mark.faults

Snapshot = dict[str, dict[str, dict[str, Any]]]  # kind -> name -> object, as the story sees it
# One story takes about 100 s on a 2-core machine: CI runs one seed; more with e.g.
# MODELOPS_LOOP_KILL_SEEDS=21,22 (README, Reliability).
SEEDS = [int(s) for s in os.environ.get("MODELOPS_LOOP_KILL_SEEDS", "21").split(",") if s]
ROLLBACK_HISTORY = ["StableSelected", "CanaryStarted", "CanaryStep", "CanaryStep", "DriftDetected"]


def _status(objects: Snapshot, kind: str, name: str) -> dict[str, Any]:
    return dict((objects.get(kind, {}).get(name) or {}).get("status") or {})


def kill_moments(model: str) -> list[tuple[str, Callable[[Snapshot], bool], float]]:
    """``(phase, reached(snapshot), longest random delay in s)``: one kill once each phase is
    reached, after a random delay up to that bound (within the phase as the story paces it:
    step 1 pauses 10 s, the drift of step 2 is found in 10-20 s)."""
    run1, run2 = f"{model}-logreg", f"{model}-forest"
    return [
        ("v1 training", lambda o: _status(o, "TrainingRun", run1).get("phase") == "Running", 2.0),
        ("v2 training", lambda o: run2 in o.get("TrainingRun", {}), 2.0),
        (
            "canary step 1",
            lambda o: _status(o, "Deployment", model).get("step") == 0,
            6.0,
        ),
        (
            "canary step 2",
            lambda o: _status(o, "Deployment", model).get("step") == 1,
            5.0,
        ),
    ]


@dataclass
class Killer:
    """SIGKILLs ``operator`` once at a random moment of each phase, then starts it again."""

    operator: OperatorProcess
    scenario: Scenario
    rng: random.Random
    # (phase, s after it began, the Deployment's phase at the kill)
    kills: list[tuple[str, float, str]] = field(default_factory=list)

    async def run(self, model: str) -> None:
        for phase, reached, longest in kill_moments(model):

            async def now_reached(test: Callable[[Snapshot], bool] = reached) -> bool:
                return test(self.scenario.objects)

            await eventually(now_reached, timeout=300, what=f"the story reaching {phase}")
            delay = round(self.rng.uniform(0.3, longest), 1)
            await asyncio.sleep(delay)
            process = self.operator.process
            assert process is not None
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            dep = _status(self.scenario.objects, "Deployment", model).get("phase")
            self.kills.append((phase, delay, str(dep)))
            self.operator.start()


@pytest.mark.timeout(480)
@pytest.mark.parametrize("seed", SEEDS)
async def test_the_whole_loop_ends_the_same_however_often_the_operator_is_killed(
    local_cluster: LocalCluster,
    operator_kubeconfig: Path,
    s3: S3Server,
    admin: Cluster,
    tmp_path: Path,
    seed: int,
) -> None:
    model = f"kill{seed}"
    operator = OperatorProcess(
        operator_kubeconfig, s3, tmp_path / "logs", MODELOPS_NAMESPACES=NAMESPACE
    )
    scenario = Scenario(local_cluster, PlainView(sys.stdout), outcome="rollback", model=model)
    killer = Killer(operator, scenario, random.Random(seed))
    operator.start()
    killing = asyncio.create_task(killer.run(model))
    try:
        result: Result = await scenario.run()
    finally:
        killing.cancel()  # done unless the story ended before the last phase (asserted below)
        await asyncio.gather(killing, return_exceptions=True)
        operator.stop()
    traffic = result.traffic
    print(
        f"\nseed {seed}: operator SIGKILLed in {killer.kills} "
        "(phase, s after it began, the Deployment's phase); "
        f"{operator.starts} starts; {len(traffic.answers) if traffic else 0} client requests, "
        f"{len(traffic.errors()) if traffic else 'n/a'} failed"
    )
    assert [phase for phase, _, _ in killer.kills] == [m[0] for m in kill_moments(model)]
    assert result.problems() == []

    dep = _status(result.objects, "Deployment", model)
    assert (dep["phase"], dep["stableVersion"], dep["canaryWeight"]) == (
        "RolledBack",
        f"{model}-v1",
        0,
    )
    assert dep["rejectedVersions"] == [f"{model}-v2"]
    assert [h["event"] for h in dep["history"]] == ROLLBACK_HISTORY
    weights = [re.search(r" at (\d+)% \(step", h["message"]) for h in dep["history"][2:4]]
    assert [m.group(1) if m else None for m in weights] == ["20", "50"], dep["history"]
    assert _status(result.objects, "DriftMonitor", f"{model}-drift")["firings"] == 1
    runs = (f"{model}-logreg", f"{model}-forest")
    for run, version in zip(runs, (f"{model}-v1", f"{model}-v2"), strict=True):
        assert _status(result.objects, "TrainingRun", run)["phase"] == "Succeeded"
        assert _status(result.objects, "TrainingRun", run)["modelVersion"] == version

    jobs = await admin.list("batch/v1", "Job", NAMESPACE, {})
    ours = sorted(j["metadata"]["name"] for j in jobs if j["metadata"]["name"].startswith(model))
    assert ours == sorted(f"{run}-train" for run in runs)
    versions = await admin.list(API_VERSION, "ModelVersion", NAMESPACE, {})
    assert sorted(v["metadata"]["name"] for v in versions if v["spec"].get("model") == model) == [
        f"{model}-v1",
        f"{model}-v2",
    ]
