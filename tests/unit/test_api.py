"""The API models refuse what the CRD's CEL rules refuse, for objects that bypassed admission."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelops.api import DeploymentSpec, DriftMonitorSpec, parse_duration


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
