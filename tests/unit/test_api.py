"""The API models refuse what the CRD's CEL rules refuse, for objects that bypassed admission."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from modelops.api import Deployment, DeploymentSpec, DriftMonitorSpec, TrainingRun, parse_duration
from modelops.api.common import ResourceRequirements, parse_quantity


def test_gateway_routing_without_parent_refs_is_invalid() -> None:
    with pytest.raises(ValidationError, match=r"gateway needs spec\.gateway\.parentRefs"):
        DeploymentSpec.model_validate({"model": "iris", "routing": "gateway"})


def test_retrain_action_without_template_is_invalid() -> None:
    with pytest.raises(ValidationError, match=r"retrain needs spec\.retrain\.template"):
        DriftMonitorSpec.model_validate({"deployment": "iris", "action": "retrain"})


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1h30m", 5400), ("250ms", 0.25)])
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_malformed_duration_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match=r"use e\.g\. 30s"):
        parse_duration("5 minutes")


@pytest.mark.parametrize(
    ("text", "value"),
    [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("500m", Decimal("0.5")), ("2", 2), ("1e3", 1000)],
)
def test_quantities_parse_as_kubernetes_reads_them(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_a_whole_number_quantity_is_kept_as_text() -> None:
    resources = ResourceRequirements.model_validate({"requests": {"cpu": 2}})
    assert resources.requests == {"cpu": "2"}


@pytest.mark.parametrize("value", ["lots", "-1Gi", "1.5 Gi", -1, True])
def test_a_malformed_quantity_is_invalid(value: object) -> None:
    with pytest.raises(ValidationError):
        ResourceRequirements.model_validate({"limits": {"memory": value}})


def test_a_request_above_its_limit_is_invalid() -> None:
    with pytest.raises(ValidationError, match=r"requests must not exceed limits: memory 2Gi > 1Gi"):
        ResourceRequirements.model_validate(
            {"requests": {"memory": "2Gi", "cpu": "1"}, "limits": {"memory": "1Gi", "cpu": "2"}}
        )
    equal = {"requests": {"memory": "1Gi"}, "limits": {"memory": "1024Mi"}}
    assert ResourceRequirements.model_validate(equal).limits == {"memory": "1024Mi"}


def _deployment(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"model": "iris"}}


def test_a_deployment_name_must_start_with_a_letter_and_fit_63_characters() -> None:
    with pytest.raises(ValidationError, match=r"'2024-iris'.*DNS-1035 label"):
        Deployment.model_validate(_deployment("2024-iris"))
    with pytest.raises(ValidationError, match=r"at most 63 characters"):
        Deployment.model_validate(_deployment("a" * 64))
    assert Deployment.model_validate(_deployment("a" * 63)).metadata["name"] == "a" * 63


def test_a_training_run_name_may_start_with_a_digit_but_not_exceed_63_characters() -> None:
    spec = {
        "model": "iris",
        "dataset": {"uri": "s3://b/iris.csv", "target": "species"},
        "estimator": {"name": "Ridge"},
    }
    assert TrainingRun.model_validate({"metadata": {"name": "2024-iris"}, "spec": spec})
    for bad in ("i" * 64, "iris.logreg"):
        with pytest.raises(ValidationError, match=r"DNS label of at most 63"):
            TrainingRun.model_validate({"metadata": {"name": bad}, "spec": spec})


def test_autoscaling_with_max_below_min_is_invalid() -> None:
    spec = {"model": "iris", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}}
    with pytest.raises(ValidationError, match=r"maxReplicas must be at least minReplicas: 2 < 3"):
        DeploymentSpec.model_validate(spec)


def test_autoscaling_defaults_to_one_pod_at_least_and_80_percent_cpu() -> None:
    spec = DeploymentSpec.model_validate({"model": "iris", "autoscaling": {"maxReplicas": 4}})
    assert spec.autoscaling is not None
    assert spec.autoscaling.wire() == {
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetCPUUtilization": 80,
    }


@pytest.mark.parametrize(
    "autoscaling",
    [
        {"minReplicas": 0, "maxReplicas": 2},
        {"maxReplicas": 2, "targetCPUUtilization": 0},
        {"maxReplicas": 2, "targetCPUUtilization": 101},
        {"minReplicas": 2},
    ],
)
def test_autoscaling_out_of_bounds_is_invalid(autoscaling: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate({"model": "iris", "autoscaling": autoscaling})
