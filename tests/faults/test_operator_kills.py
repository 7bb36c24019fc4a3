"""The operator SIGKILLed at random moments of a run and started again, several seeds.

Each restart resumes from what the API server holds: a TrainingRun still ends Succeeded with
exactly one Job and exactly one ModelVersion. The kill times are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.s3server import S3Server
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_a_run_ends_exactly_once_however_often_the_operator_is_killed(
    cluster: Cluster,
    operator_kubeconfig: Path,
    s3: S3Server,
    namespace: str,
    tmp_path: Path,
    seed: int,
) -> None:
    rng = random.Random(seed)
    operator = OperatorProcess(
        operator_kubeconfig, s3, tmp_path / "logs", MODELOPS_NAMESPACES=namespace
    )
    run: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests/samples/trainingrun-iris.yaml").read_text()
    )
    run["metadata"]["namespace"] = namespace
    operator.start()
    await cluster.create(run)
    kills: list[float] = []  # seconds after the previous start
    try:
        for _ in range(4):  # killed at a random moment, then started again
            kills.append(round(rng.uniform(0.5, 4.0), 1))
            await asyncio.sleep(kills[-1])
            assert operator.process is not None
            operator.process.send_signal(signal.SIGKILL)
            operator.process.wait()
            operator.start()

        async def finished() -> dict[str, Any] | None:
            found = await cluster.get(API_VERSION, "TrainingRun", namespace, "iris-logreg")
            phase = (found or {}).get("status", {}).get("phase")
            return found if phase in ("Succeeded", "Failed") else None

        done = await eventually(finished, timeout=180, what="the TrainingRun finished")
    finally:
        operator.stop()
    print(f"\nseed {seed}: operator SIGKILLed {kills} s after each start; {operator.starts} starts")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert condition(done, "Registered")["status"] == "True"
    jobs = await cluster.list("batch/v1", "Job", namespace, {})
    versions = await cluster.list(API_VERSION, "ModelVersion", namespace, {})
    assert [j["metadata"]["name"] for j in jobs] == ["iris-logreg-train"]
    assert [v["metadata"]["name"] for v in versions] == ["iris-v1"]
