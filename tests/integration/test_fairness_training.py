"""Fairness and model cards with the real operator on the real control plane: the trainer
runs in a Job pod (the process kubelet, real sklearn and fairlearn, the real S3 server), the
ModelVersion records the fairness table, a gate on demographic parity refuses a biased model,
a missing sensitive column fails the run with its reason, and the card the operator wrote
is in the store with the digests the version records."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
TRAINING_TIMEOUT = 150.0  # a pod start plus a training, on a busy 2-core machine


def credit_frame(n: int = 600) -> pd.DataFrame:
    """Loan defaults where ``income`` is shifted for group ``a`` of ``sex``: a model on income
    approves group ``a`` far more often (demographic parity difference ~0.5)."""
    rng = np.random.default_rng(0)
    sex = rng.choice(["a", "b"], size=n)
    income = rng.normal(size=n) + (sex == "a") * 1.5
    repaid = (income + rng.normal(scale=0.5, size=n) > 0.75).astype(int)
    return pd.DataFrame(
        {"income": income, "debt": rng.normal(size=n), "sex": sex, "repaid": repaid}
    )


def credit_run(namespace: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": "credit-logreg", "namespace": namespace},
        "spec": {
            "model": "credit",
            "dataset": {"uri": uri, "target": "repaid"},
            "estimator": {"name": "LogisticRegression"},
            "seed": 1,
            "fairness": {"sensitiveFeatures": ["sex"]},
            "activeDeadlineSeconds": 600,
            **spec,
        },
    }


def upload(s3: S3Server, namespace: str) -> str:
    key = f"datasets/{namespace}/credit.csv"
    s3.store().put(Location("modelops", key), credit_frame().to_csv(index=False).encode())
    return f"s3://modelops/{key}"


async def finished(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    phases = ("Succeeded", "Failed") if kind == "TrainingRun" else ("Ready", "Failed")

    async def probe() -> dict[str, Any] | None:
        obj = await cluster.get(API_VERSION, kind, namespace, name)
        return obj if obj and (obj.get("status") or {}).get("phase") in phases else None

    return await eventually(probe, what=f"{kind} {name} finished", timeout=TRAINING_TIMEOUT)


async def test_a_run_with_a_sensitive_feature_registers_its_fairness_table(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    await cluster.create(credit_run(namespace, upload(s3, namespace)))
    run = await finished(cluster, namespace, "TrainingRun", "credit-logreg")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert run["status"]["modelVersion"] == "credit-v1"
    version = await finished(cluster, namespace, "ModelVersion", "credit-v1")
    spec = version["spec"]
    fairness = spec["fairness"]
    assert fairness["sensitiveFeatures"] == ["sex"] and fairness["positiveLabel"] == "1"
    (feature,) = fairness["features"]
    assert {g["value"] for g in feature["groups"]} == {"a", "b"}
    assert sum(g["count"] for g in feature["groups"]) == 120  # testSize 0.2 of 600 rows
    rates = {g["value"]: g["metrics"]["selection_rate"] for g in feature["groups"]}
    dp = fairness["metrics"]["demographic_parity_difference"]
    assert dp == pytest.approx(abs(rates["a"] - rates["b"]), abs=2e-6)
    assert spec["metrics"]["demographic_parity_difference"] == dp  # where gates read it
    assert run["status"]["metrics"]["demographic_parity_difference"] == dp
    assert [f["name"] for f in spec["signature"]["inputs"]] == ["income", "debt"]  # not sex


async def test_a_gate_on_demographic_parity_refuses_the_biased_model(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    gated = credit_run(
        namespace, upload(s3, namespace),
        register={"minMetrics": {"demographic_parity_difference": 0.1}},
    )  # fmt: skip
    await cluster.create(gated)
    run = await finished(cluster, namespace, "TrainingRun", "credit-logreg")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    registered = condition(run, "Registered")
    assert (registered["status"], registered["reason"]) == ("False", "GatesNotMet")
    assert registered["message"].startswith("demographic_parity_difference 0.")
    assert registered["message"].endswith(" > 0.1")
    assert await cluster.list(API_VERSION, "ModelVersion", namespace, {}) == []


async def test_a_missing_sensitive_column_fails_the_run_with_its_reason(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server
) -> None:
    run = credit_run(namespace, upload(s3, namespace))
    run["spec"]["fairness"] = {"sensitiveFeatures": ["gender"]}
    await cluster.create(run)
    done = await finished(cluster, namespace, "TrainingRun", "credit-logreg")
    ready = condition(done, "Ready")
    assert (done["status"]["phase"], ready["reason"]) == ("Failed", "SensitiveFeatureMissing")
    assert "'gender'" in ready["message"]
    pods = await cluster.list(
        "v1", "Pod", namespace, {"batch.kubernetes.io/job-name": "credit-logreg-train"}
    )
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert json.loads(terminated["message"])["reason"] == "SensitiveFeatureMissing"


async def test_the_card_is_in_the_store_with_the_digests_the_version_records(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    s3: S3Server,
    local_cluster: LocalCluster,
    tmp_path: Path,
) -> None:
    await cluster.create(credit_run(namespace, upload(s3, namespace)))
    version = await finished(cluster, namespace, "ModelVersion", "credit-v1")
    card = version["spec"]["card"]
    model_dir = version["spec"]["artifact"]["uri"].rsplit("/", 1)[0]
    store = s3.store()
    for key, name in (("json", "card.json"), ("html", "card.html")):
        assert card[key]["uri"] == f"{model_dir}/{name}"
        data = store.get(Location.parse(card[key]["uri"]))
        assert hashlib.sha256(data).hexdigest() == card[key]["sha256"]
    stored = json.loads(store.get(Location.parse(card["json"]["uri"])))
    assert stored["modelVersion"]["name"] == "credit-v1"
    assert stored["lineage"]["trainingRun"] == "credit-logreg"
    assert stored["fairness"] == version["spec"]["fairness"]
    assert [f["name"] for f in stored["profile"]["features"]] == ["income", "debt"]

    # `modelops card` draws it again from the API and the store, as a user runs it.
    out = tmp_path / "card.json"
    env = {
        **os.environ,
        "KUBECONFIG": str(local_cluster.kubeconfig),
        "MODELOPS_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    command = [sys.executable, "-m", "modelops", "card", "mv/credit-v1", "-n", namespace,
               "-o", str(out)]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    drawn = json.loads(out.read_text())
    assert drawn["profile"] == stored["profile"]
    assert drawn["modelVersion"]["phase"] == "Ready"
