"""``modelops reproduce`` as a user runs it, against the real control plane and operator.

The user is a ServiceAccount of the test's namespace holding only the verbs the command's
docstring lists (get modelversions; create and get trainingruns), so a command that needed
more would fail here. The reproduction trains in a real Job pod (the process kubelet).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.api.trainingrun import TrainingRun
from modelops.controllers.cluster import Cluster
from modelops.insight.reproduce import REPRODUCES
from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server
from modelops.resources.modelversion import model_version
from modelops.storage import Location
from modelops.training.trainer import train
from support.models import iris_frame
from support.operator import OperatorProcess, eventually

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
USER = "reproducer"
USER_RULES = [
    {"apiGroups": ["modelops.dev"], "resources": ["modelversions"], "verbs": ["get"]},
    {"apiGroups": ["modelops.dev"], "resources": ["trainingruns"], "verbs": ["create", "get"]},
]
TRAINING_TIMEOUT = 150.0


@pytest.fixture
async def user_env(
    cluster: Cluster, namespace: str, local_cluster: LocalCluster, s3: S3Server, tmp_path: Path
) -> dict[str, str]:
    """The user's environment: a kubeconfig holding only ``USER_RULES``, and the store."""
    rbac = "rbac.authorization.k8s.io/v1"
    meta = {"name": USER, "namespace": namespace}
    await cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    await cluster.create({"apiVersion": rbac, "kind": "Role", "metadata": meta,
                          "rules": USER_RULES})  # fmt: skip
    await cluster.create(
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": USER},
            "subjects": [{"kind": "ServiceAccount", "name": USER, "namespace": namespace}],
        }
    )
    kubeconfig = local_cluster.control_plane.write_service_account_kubeconfig(
        tmp_path / "user.kubeconfig", namespace, USER
    )
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MODELOPS_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }


async def reproduce(
    env: dict[str, str], namespace: str, *args: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelops", "reproduce", *args, "-n", namespace]
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=300
    )


def iris_dataset(s3: S3Server, namespace: str) -> str:
    """The iris CSV under a key of the test's own (the shared one must never change)."""
    key = f"datasets/{namespace}/iris.csv"
    s3.store().put(Location("modelops", key), iris_frame().to_csv(index=False).encode())
    return f"s3://modelops/{key}"


def iris_run(namespace: str, uri: str) -> dict[str, Any]:
    run = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    run["metadata"]["namespace"] = namespace
    run["spec"]["dataset"]["uri"] = uri
    run["spec"]["estimator"] = {"name": "RandomForestClassifier",
                                "params": {"n_estimators": 20, "max_depth": 3}}  # fmt: skip
    return run


async def ready_version(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        mv = await cluster.get(API_VERSION, "ModelVersion", namespace, name)
        return mv if mv and (mv.get("status") or {}).get("phase") == "Ready" else None

    return await eventually(probe, what=f"{name} Ready", timeout=TRAINING_TIMEOUT)


async def test_reproducing_a_version_gives_the_same_predictions(
    cluster: Cluster, namespace: str, operator: OperatorProcess, s3: S3Server,
    user_env: dict[str, str],
) -> None:  # fmt: skip
    await cluster.create(iris_run(namespace, iris_dataset(s3, namespace)))
    await ready_version(cluster, namespace, "iris-v1")

    done = await reproduce(user_env, namespace, "mv/iris-v1", "--wait", "--timeout", "240")
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = done.stdout.strip().splitlines()[-1]
    assert "same predictions:" in verdict and "(exact)" in verdict, done.stdout
    (run,) = await cluster.list(API_VERSION, "TrainingRun", namespace, {REPRODUCES: "iris-v1"})
    assert run["metadata"]["annotations"][REPRODUCES] == "iris-v1"
    assert run["spec"]["register"]["enabled"] is False
    assert (
        run["spec"]["dataset"]["sha256"]
        == (
            (await cluster.get(API_VERSION, "ModelVersion", namespace, "iris-v1"))["spec"][  # type: ignore[index]
                "lineage"
            ]["datasetSha256"]
        )
    )
    # Registration disabled: still one version.
    assert len(await cluster.list(API_VERSION, "ModelVersion", namespace, {})) == 1

    # Checked again later by name: the same verdict, no other run.
    again = await reproduce(user_env, namespace, "iris-v1", "--run", run["metadata"]["name"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == verdict
    assert len(await cluster.list(API_VERSION, "TrainingRun", namespace, {})) == 2


async def test_reproduce_refuses_once_the_dataset_was_overwritten(
    cluster: Cluster, namespace: str, s3: S3Server, user_env: dict[str, str]
) -> None:
    """No operator needed: the refusal comes before anything is created. The version is the
    one the operator would register for a run trained by the same trainer code."""
    uri = iris_dataset(s3, namespace)
    run = TrainingRun.model_validate(
        {**iris_run(namespace, uri), "metadata": {"name": "iris-logreg", "namespace": namespace,
                                                  "uid": "0b8f3c52"}}
    )  # fmt: skip
    summary = train(run.spec, s3.store(), Location("modelops", f"{namespace}/iris/0b8f3c52"))
    await cluster.create(model_version(run, summary, 1, "modelops-runtime:local"))
    changed = iris_frame()
    changed.loc[0, "sepal_length"] = 9.9
    s3.store().put(Location.parse(uri), changed.to_csv(index=False).encode())

    done = await reproduce(user_env, namespace, "mv/iris-v1", "--wait")
    assert done.returncode == 1
    assert done.stderr.startswith("refused: the dataset changed:"), done.stderr
    assert summary["dataset"]["sha256"] in done.stderr
    assert await cluster.list(API_VERSION, "TrainingRun", namespace, {}) == []
