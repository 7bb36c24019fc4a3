"""What only a real kube-apiserver shows: CRD admission (schema, CEL, pruning), RBAC, versions.

Each test runs against the package's control plane (``local_cluster``) through kubectl or the
REST API, in a namespace of its own.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.api.crd import KINDS
from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.cluster import LocalCluster
from support.cluster_fixtures import SAMPLES, Kubectl, assert_refused_at_apply, sample

pytestmark = pytest.mark.integration

OPERATOR = "system:serviceaccount:modelops-system:modelops-operator"


def test_server_reports_a_real_kubernetes_version(local_cluster: LocalCluster) -> None:
    version = local_cluster.control_plane.version()
    assert version["gitVersion"].startswith("v1.36."), version
    assert version["major"] == "1" and version["minor"] == "36"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_crd_is_established_with_its_names_accepted(kubectl: Kubectl, kind: Any) -> None:
    done = kubectl("get", "crd", f"{kind.plural}.modelops.dev", "-o", "json")
    assert done.returncode == 0, done.stderr
    conditions = {c["type"]: c["status"] for c in json.loads(done.stdout)["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in SAMPLES.glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_every_sample_is_accepted_by_the_server(
    kubectl: Kubectl, namespace: str, name: str
) -> None:
    done = kubectl("apply", "-f", "-", input=yaml.safe_dump(sample(name, namespace)))
    assert done.returncode == 0, done.stderr


def _deployment_weight_101(doc: dict[str, Any]) -> None:
    doc["spec"]["canary"]["steps"][1]["weight"] = 101


def _deployment_steps_decrease(doc: dict[str, Any]) -> None:
    doc["spec"]["canary"]["steps"] = [{"weight": 50}, {"weight": 10}]


def _deployment_steps_repeat(doc: dict[str, Any]) -> None:
    doc["spec"]["canary"]["steps"] = [{"weight": 20}, {"weight": 20}]


def _deployment_gateway_without_parents(doc: dict[str, Any]) -> None:
    doc["spec"]["routing"] = "gateway"


def _monitor_retrain_without_template(doc: dict[str, Any]) -> None:
    doc["spec"]["action"] = "retrain"


def _run_unknown_estimator(doc: dict[str, Any]) -> None:
    doc["spec"]["estimator"]["name"] = "os.system"


def _run_misspelt_field(doc: dict[str, Any]) -> None:
    doc["spec"]["datset"] = doc["spec"].pop("dataset")


INVALID = [
    ("deployment-iris.yaml", _deployment_weight_101, "should be less than or equal to 100"),
    ("deployment-iris.yaml", _deployment_steps_decrease, "canary step weights must increase"),
    ("deployment-iris.yaml", _deployment_steps_repeat, "canary step weights must be distinct"),
    (
        "deployment-iris.yaml",
        _deployment_gateway_without_parents,
        "routing: gateway needs spec.gateway.parentRefs",
    ),
    (
        "driftmonitor-iris.yaml",
        _monitor_retrain_without_template,
        "action: retrain needs spec.retrain.template",
    ),
    ("trainingrun-iris.yaml", _run_unknown_estimator, 'Unsupported value: "os.system"'),
    ("trainingrun-iris.yaml", _run_misspelt_field, 'unknown field "spec.datset"'),
]


@pytest.mark.parametrize(
    ("name", "break_it", "message"), INVALID, ids=[f.__name__ for _, f, _ in INVALID]
)
def test_invalid_resource_is_refused_at_apply_with_the_schema_message(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    break_it: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    doc = sample(name, namespace)
    break_it(doc)
    assert_refused_at_apply(kubectl, doc, message)


async def test_modelversion_spec_cannot_change_once_created(
    cluster: Cluster, namespace: str
) -> None:
    version = sample("modelversion-iris-v1.yaml", namespace)
    await cluster.create(version)
    changed = copy.deepcopy(version["spec"])
    changed["artifact"]["sha256"] = "0" * 64
    with pytest.raises(ApiError) as refused:
        await cluster.patch(
            API_VERSION, "ModelVersion", namespace, version["metadata"]["name"], {"spec": changed}
        )
    assert refused.value.status == 422
    assert "ModelVersion spec is immutable" in str(refused.value)


async def test_unknown_status_fields_are_pruned_and_known_ones_kept(
    cluster: Cluster, namespace: str
) -> None:
    run = sample("trainingrun-iris.yaml", namespace)
    await cluster.create(run)
    name = run["metadata"]["name"]
    status = {"phase": "Running", "jobName": f"{name}-train", "notInTheSchema": 1}
    await cluster.patch(
        API_VERSION, "TrainingRun", namespace, name, {"status": status}, subresource="status"
    )
    stored = await cluster.get(API_VERSION, "TrainingRun", namespace, name)
    assert stored is not None
    assert stored["status"] == {"phase": "Running", "jobName": f"{name}-train"}


async def test_a_status_patch_with_nan_is_refused_by_the_server(
    cluster: Cluster, namespace: str
) -> None:
    """The fault the in-process stand-in hid: JSON has no NaN, and the server says so (400)."""
    run = sample("trainingrun-iris.yaml", namespace)
    await cluster.create(run)
    body = {"status": {"metrics": {"r2": float("nan")}}}  # sent as `NaN` by json.dumps
    name = run["metadata"]["name"]
    with pytest.raises(ApiError) as refused:
        await cluster.patch(API_VERSION, "TrainingRun", namespace, name, body, subresource="status")
    assert refused.value.status == 400, refused.value


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("create", "jobs.batch", "yes"),
        ("patch", "trainingruns.modelops.dev/status", "yes"),
        ("watch", "configmaps", "yes"),
        ("delete", "trainingruns.modelops.dev", "no"),
        ("get", "secrets", "no"),
        ("delete", "jobs.batch", "no"),
        ("create", "pods", "no"),
    ],
)
def test_operator_service_account_has_exactly_the_shipped_verbs(
    kubectl: Kubectl, namespace: str, verb: str, resource: str, allowed: str
) -> None:
    subresource = ""
    if "/" in resource:
        resource, subresource = resource.split("/")
    args = ["auth", "can-i", verb, resource, "-n", namespace, "--as", OPERATOR]
    if subresource:
        args += ["--subresource", subresource]
    done = kubectl(*args)
    assert done.stdout.strip() == allowed, (done.stdout, done.stderr)


async def test_operator_token_is_refused_a_verb_the_cluster_role_does_not_grant(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path, cluster: Cluster
) -> None:
    """Not impersonation: the operator's real token, as the operator process logs in."""
    import kopf

    run = sample("trainingrun-iris.yaml", namespace)
    await cluster.create(run)
    kubeconfig = local_cluster.operator_kubeconfig(tmp_path / "operator.kubeconfig")
    config = yaml.safe_load(kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    client = Cluster(
        kopf.ConnectionInfo(
            server=local_cluster.api_url,
            ca_path=str(local_cluster.control_plane.pki.ca_cert),
            scheme="Bearer",
            token=token,
        )
    )
    try:
        name = run["metadata"]["name"]
        assert await client.get(API_VERSION, "TrainingRun", namespace, name) is not None
        with pytest.raises(ApiError) as refused:
            await client.delete(API_VERSION, "TrainingRun", namespace, name)
        assert refused.value.status == 403
        assert OPERATOR in str(refused.value)
    finally:
        await client.close()


def test_a_quoted_float_param_reaches_the_trainer_as_a_float_through_the_server(
    kubectl: Kubectl, namespace: str
) -> None:
    """kubectl and the server re-encode ``1.0`` as ``1``; ``"1.0"`` survives and is a float."""
    from modelops.api.trainingrun import TrainingRunSpec
    from modelops.training.estimators import build

    text = (SAMPLES / "trainingrun-iris.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["metadata"] |= {"name": "floats", "namespace": namespace}
    doc["spec"]["estimator"] = {"name": "RandomForestClassifier", "params": {}}
    manifest = yaml.safe_dump(doc).replace(
        "params: {}", "params:\n      max_features: '1.0'\n      max_samples: 1.0"
    )
    done = kubectl("apply", "-f", "-", input=manifest)
    assert done.returncode == 0, done.stderr
    stored = json.loads(kubectl("get", "tr", "floats", "-n", namespace, "-o", "json").stdout)
    params = stored["spec"]["estimator"]["params"]
    assert params == {"max_features": "1.0", "max_samples": 1}  # the unquoted one lost its type
    spec = TrainingRunSpec.model_validate(stored["spec"])
    estimator = build(spec.estimator.name, dict(spec.estimator.params), spec.seed)
    assert estimator.get_params()["max_features"] == 1.0
    assert isinstance(estimator.get_params()["max_features"], float)
