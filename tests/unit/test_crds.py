"""The CRDs are generated from the API models, and every sample passes them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from modelops.api.crd import KINDS, KUSTOMIZATION, crd, render, render_kustomization
from support.crdschema import CRD_DIR, CrdValidator

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> CrdValidator:
    return CrdValidator()


def _sample(name: str) -> dict:
    return yaml.safe_load((ROOT / "manifests" / "samples" / name).read_text())


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_committed_crd_matches_the_models(kind) -> None:
    path = CRD_DIR / f"modelops.dev_{kind.plural}.yaml"
    assert path.read_text() == render(kind), f"{path.name} is stale: run `make crds`"


def test_every_kind_has_a_crd_and_nothing_else_is_there() -> None:
    assert {p.name for p in CRD_DIR.glob("*.yaml")} == {
        f"modelops.dev_{k.plural}.yaml" for k in KINDS
    } | {KUSTOMIZATION}


def test_committed_crd_kustomization_lists_every_crd() -> None:
    path = CRD_DIR / KUSTOMIZATION
    assert path.read_text() == render_kustomization(), f"{path.name} is stale: run `make crds`"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_has_status_subresource_short_name_and_category(kind) -> None:
    spec = crd(kind)["spec"]
    assert spec["versions"][0]["subresources"] == {"status": {}}
    assert spec["names"]["shortNames"] == [kind.short_name]
    assert spec["names"]["categories"] == ["modelops"]
    columns = [c["name"] for c in spec["versions"][0]["additionalPrinterColumns"]]
    assert "Age" in columns and len(columns) >= 4


def _walk(node, path="") -> list[str]:
    """Paths in a schema that are not structural (no type and no escape hatch)."""
    bad = []
    if isinstance(node, dict):
        if "$ref" in node or ("anyOf" in node and "type" not in node):
            bad.append(path)
        for key in ("properties",):
            for name, sub in node.get(key, {}).items():
                bad += _walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            bad += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            bad += _walk(node["additionalProperties"], f"{path}{{}}")
        if not any(
            k in node
            for k in ("type", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")
        ):
            bad.append(path)
    return bad


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_is_valid_against_its_crd(path: Path, validator: CrdValidator) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc.get("kind") == "Kustomization":
            continue
        assert validator.knows(doc), f"{path.name}: no CRD for {doc.get('kind')}"
        assert validator.errors(doc) == []


def test_modelversion_spec_is_immutable(validator: CrdValidator) -> None:
    old = _sample("modelversion-iris-v1.yaml")
    new = copy.deepcopy(old)
    new["spec"]["artifact"]["sha256"] = "0" * 64
    assert validator.errors(new, old=old) == [".spec: ModelVersion spec is immutable"]
    assert validator.errors(copy.deepcopy(old), old=old) == []


def test_canary_weight_above_100_is_refused(validator: CrdValidator) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["spec"]["canary"]["steps"][1]["weight"] = 101
    assert any("101 is greater than the maximum of 100" in e for e in validator.errors(dep))


def test_canary_steps_must_increase(validator: CrdValidator) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["spec"]["canary"]["steps"] = [{"weight": 50}, {"weight": 10}]
    assert validator.errors(dep) == [".spec.canary.steps: canary step weights must increase"]


def test_canary_steps_must_be_distinct(validator: CrdValidator) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["spec"]["canary"]["steps"] = [{"weight": 20}, {"weight": 20}]
    assert validator.errors(dep) == [".spec.canary.steps: canary step weights must be distinct"]


def test_gateway_routing_needs_parent_refs(validator: CrdValidator) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["spec"]["routing"] = "gateway"
    assert validator.errors(dep) == [".spec: routing: gateway needs spec.gateway.parentRefs"]
    dep["spec"]["gateway"] = {"parentRefs": [{"name": "public"}]}
    assert validator.errors(dep) == []


def test_retrain_action_needs_a_template(validator: CrdValidator) -> None:
    monitor = _sample("driftmonitor-iris.yaml")
    monitor["spec"]["action"] = "retrain"
    assert validator.errors(monitor) == [".spec: action: retrain needs spec.retrain.template"]


def test_unknown_estimator_is_refused(validator: CrdValidator) -> None:
    run = _sample("trainingrun-iris.yaml")
    run["spec"]["estimator"]["name"] = "os.system"
    assert any("is not one of" in e for e in validator.errors(run))


def test_unknown_field_is_refused(validator: CrdValidator) -> None:
    run = _sample("trainingrun-iris.yaml")
    run["spec"]["datset"] = run["spec"].pop("dataset")
    errors = validator.errors(run)
    assert any("'datset' was unexpected" in e for e in errors)
    assert any("'dataset' is a required property" in e for e in errors)


DEPLOYMENT_NAME = (
    "metadata: a Deployment's name must be a DNS-1035 label of at most 63 characters"
    " (lowercase letters, digits and '-', starting with a letter): its Service is named after it"
)


@pytest.mark.parametrize("name", ["2024-iris", "a" * 64, "iris.prod", "Iris"])
def test_deployment_name_that_cannot_name_its_service_is_refused(
    validator: CrdValidator, name: str
) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["metadata"]["name"] = name
    assert validator.errors(dep) == [f"<root>: {DEPLOYMENT_NAME.removeprefix('metadata: ')}"]


@pytest.mark.parametrize(
    ("sample", "kind"),
    [
        ("trainingrun-iris.yaml", "TrainingRun"),
        ("modelversion-iris-v1.yaml", "ModelVersion"),
        ("driftmonitor-iris.yaml", "DriftMonitor"),
    ],
)
def test_names_past_63_characters_are_refused_and_63_are_not(
    validator: CrdValidator, sample: str, kind: str
) -> None:
    doc = _sample(sample)
    doc["metadata"]["name"] = "2" + "a" * 62  # a DNS label may start with a digit
    assert validator.errors(doc) == []
    doc["metadata"]["name"] += "a"
    [error] = validator.errors(doc)
    assert f"a {kind}'s name must be a DNS label of at most 63 characters" in error


def test_longest_deployment_name_is_accepted(validator: CrdValidator) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["metadata"]["name"] = "a" * 63
    assert validator.errors(dep) == []


def test_malformed_quantity_is_refused(validator: CrdValidator) -> None:
    run = _sample("trainingrun-iris.yaml")
    run["spec"]["resources"] = {"limits": {"memory": "lots"}}
    [error] = validator.errors(run)
    assert error.startswith("spec.resources.limits.memory: 'lots' does not match")


def test_quantities_may_be_whole_numbers_or_strings(validator: CrdValidator) -> None:
    dep = _sample("deployment-iris.yaml")
    # No resource both requested and limited: cel-python has no Kubernetes quantity library to
    # run the requests-within-limits rule (the real server runs it: tests/integration).
    dep["spec"]["resources"] = {"requests": {"cpu": 1}, "limits": {"memory": "512Mi", "gpu": 2}}
    assert validator.errors(dep) == []
    dep["spec"]["resources"]["requests"]["cpu"] = 0.5  # as the server: write "0.5" or 500m
    assert validator.errors(dep) != []


def test_autoscaling_with_max_below_min_is_refused(validator: CrdValidator) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["spec"]["autoscaling"] = {"minReplicas": 3, "maxReplicas": 2}
    assert validator.errors(dep) == [
        ".spec.autoscaling: autoscaling.maxReplicas must be at least minReplicas"
    ]
    dep["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 2, "targetCPUUtilization": 50}
    assert validator.errors(dep) == []


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ({"minReplicas": 0, "maxReplicas": 2}, "0 is less than the minimum of 1"),
        ({"maxReplicas": 2, "targetCPUUtilization": 0}, "0 is less than the minimum of 1"),
        ({"maxReplicas": 2, "targetCPUUtilization": 101}, "101 is greater than the maximum of 100"),
        ({"minReplicas": 1}, "'maxReplicas' is a required property"),
    ],
)
def test_autoscaling_out_of_bounds_is_refused(
    validator: CrdValidator, autoscaling: dict, message: str
) -> None:
    dep = _sample("deployment-iris.yaml")
    dep["spec"]["autoscaling"] = autoscaling
    assert any(message in e for e in validator.errors(dep)), validator.errors(dep)


def test_deployment_prints_its_desired_replicas() -> None:
    [deployments] = [k for k in KINDS if k.kind == "Deployment"]
    columns = crd(deployments)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"} in columns
