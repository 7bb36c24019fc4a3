"""canary.mode, analysis, abtest and shadow: what the CRD (schema + CEL) and the models refuse."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelops.api.crd import KINDS, crd
from modelops.api.deployment import (
    ABTEST_BLOCK_NEEDS_MODE,
    ABTEST_NEEDS_ANALYSIS,
    ABTEST_NO_TIMEOUT,
    SHADOW_BLOCK_NEEDS_MODE,
    SHADOW_NEEDS_MODEL_ROUTING,
    STICKY_HEADER_NEEDS_MODEL_ROUTING,
    Deployment,
)
from support.crdschema import CrdValidator

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = {"routing": "gateway", "gateway": {"parentRefs": [{"name": "public"}]}}


@pytest.fixture(scope="module")
def validator() -> CrdValidator:
    return CrdValidator()


def deployment(canary: dict[str, Any], **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests/samples/deployment-iris.yaml").read_text()
    )
    doc["metadata"]["namespace"] = "ml"
    doc["spec"]["canary"] = {"version": "latest"} | canary
    doc["spec"] |= spec
    return doc


REFUSED = [
    ({"mode": "abtest"}, {}, ".spec.canary", ABTEST_NEEDS_ANALYSIS),
    ({"abtest": {"weight": 20}}, {}, ".spec.canary", ABTEST_BLOCK_NEEDS_MODE),
    ({"mode": "abtest", "analysis": {}, "shadow": {}}, {}, ".spec.canary", SHADOW_BLOCK_NEEDS_MODE),
    ({"mode": "abtest", "analysis": {"timeout": "1h"}}, {}, ".spec.canary", ABTEST_NO_TIMEOUT),
    ({"mode": "shadow"}, GATEWAY, ".spec", SHADOW_NEEDS_MODEL_ROUTING),
    (
        {"mode": "abtest", "analysis": {}, "abtest": {"stickyHeader": "x-user"}},
        GATEWAY,
        ".spec",
        STICKY_HEADER_NEEDS_MODEL_ROUTING,
    ),
]
IDS = ["abtest-without-analysis", "abtest-block-without-mode", "shadow-block-in-abtest",
       "timeout-in-abtest", "shadow-through-a-gateway", "sticky-through-a-gateway"]  # fmt: skip


@pytest.mark.parametrize(("canary", "spec", "where", "message"), REFUSED, ids=IDS)
def test_combination_is_refused_at_admission(
    validator: CrdValidator, canary: dict[str, Any], spec: dict[str, Any], where: str, message: str
) -> None:
    assert validator.errors(deployment(canary, **spec)) == [f"{where}: {message}"]


@pytest.mark.parametrize(("canary", "spec", "where", "message"), REFUSED, ids=IDS)
def test_combination_is_refused_by_the_model(
    canary: dict[str, Any], spec: dict[str, Any], where: str, message: str
) -> None:
    """For objects that bypassed admission: the operator reports InvalidSpec."""
    with pytest.raises(ValidationError, match=message.split(":")[0]):
        Deployment.model_validate(deployment(canary, **spec))


@pytest.mark.parametrize(
    "canary",
    [
        {"mode": "abtest", "analysis": {"margin": 0.01},
         "abtest": {"weight": 20, "stickyHeader": "X-User-Id", "maxDuration": "2h"}},
        {"mode": "shadow", "analysis": {"timeout": "30m"},
         "shadow": {"duration": "5m", "minAgreement": 0.95, "minCompared": 200}},
        {"mode": "canary", "analysis": {"metric": "accuracy", "margin": 0.02, "confidence": 0.99,
                                        "minLabels": 500, "window": "30m", "timeout": "1h"}},
    ],
    ids=["abtest", "shadow", "canary-with-analysis"],
)  # fmt: skip
def test_well_formed_modes_are_accepted(validator: CrdValidator, canary: dict[str, Any]) -> None:
    doc = deployment(canary)
    assert validator.errors(doc) == []
    Deployment.model_validate(copy.deepcopy(doc))


@pytest.mark.parametrize(
    ("canary", "fragment"),
    [
        ({"mode": "abtest", "analysis": {}, "abtest": {"weight": 100}}, "maximum of 99"),
        ({"mode": "abtest", "analysis": {}, "abtest": {"stickyHeader": "x y"}}, "does not match"),
        ({"analysis": {"margin": -0.01}}, "minimum of 0"),
        ({"analysis": {"confidence": 1}}, "greater than or equal to the maximum of 1"),
        ({"analysis": {"metric": "f1"}}, "is not one of"),
        ({"mode": "shadow", "shadow": {"minAgreement": 1.5}}, "maximum of 1"),
        ({"mode": "blue-green"}, "is not one of"),
    ],
    ids=["weight-100", "header-with-a-space", "negative-margin", "confidence-1", "untested-metric",
         "agreement-above-1", "unknown-mode"],
)  # fmt: skip
def test_out_of_bounds_fields_are_refused(
    validator: CrdValidator, canary: dict[str, Any], fragment: str
) -> None:
    found = validator.errors(deployment(canary))
    assert any(fragment in e for e in found), found


def test_mode_defaults_to_canary_and_its_steps() -> None:
    dep = Deployment.model_validate(deployment({}))
    assert dep.spec.canary is not None and dep.spec.canary.mode == "canary"


def test_deployments_print_their_canary_mode() -> None:
    [deployments] = [k for k in KINDS if k.kind == "Deployment"]
    columns = crd(deployments)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert {"name": "Mode", "type": "string", "jsonPath": ".spec.canary.mode"} in columns
