"""The routing table's ``mode`` and ``stickyHeader``: parsed from the operator's camelCase,
shadow mode routes every request to stable whatever the weights, gRPC reads the sticky header
from the call's metadata."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelops.serving.grpc_server import _sticky_key
from modelops.serving.metrics import ServerMetrics
from modelops.serving.state import LOADING, ServedVersion, build_state
from modelops.serving.table import RoutingTable

ENTRY = {
    "artifact": {"uri": "s3://b/m.skops", "sha256": "0" * 64},
    "signature": {"task": "classification", "inputs": [{"name": "x", "datatype": "FP64"}]},
}


def table(**extra: Any) -> RoutingTable:
    return RoutingTable.model_validate(
        {
            "deployment": "iris",
            "model": "iris",
            "versions": [
                {**ENTRY, "name": "iris-v1", "role": "stable", "weight": 50},
                {**ENTRY, "name": "iris-v2", "role": "canary", "weight": 50},
            ],
            **extra,
        }
    )


def servable(t: RoutingTable) -> list[ServedVersion]:
    """Every version as if loaded (routing only looks at ``model is not None``)."""
    metrics = ServerMetrics()
    return [
        ServedVersion(e, LOADING, object(), metrics.stats(t.model, e.name), None)  # type: ignore[arg-type]
        for e in t.versions
    ]


def test_mode_and_sticky_header_come_in_camel_case_and_default_to_a_plain_canary() -> None:
    assert (table().mode, table().sticky_header) == ("canary", None)
    parsed = table(mode="abtest", stickyHeader="X-User-Id")
    assert (parsed.mode, parsed.sticky_header) == ("abtest", "X-User-Id")
    assert parsed.wire()["stickyHeader"] == "X-User-Id"


@pytest.mark.parametrize("extra", [{"mode": "mirror"}, {"stickyHeader": "x user"}])
def test_an_unknown_mode_or_an_invalid_header_name_is_refused(extra: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        table(**extra)


def test_shadow_mode_routes_every_request_to_stable_and_names_the_shadow() -> None:
    t = table(mode="shadow")
    state = build_state(t, servable(t))
    picks = {state.route(key).name for key in [None, *(f"id-{i}" for i in range(200))]}
    assert picks == {"iris-v1"}
    stable, canary = state.versions["iris-v1"], state.versions["iris-v2"]
    assert state.shadows_of(stable) == (canary,) and state.shadows_of(canary) == ()


def test_canary_mode_has_no_shadows() -> None:
    t = table()
    state = build_state(t, servable(t))
    assert state.shadows_of(state.versions["iris-v1"]) == ()
    assert {state.route(f"id-{i}").name for i in range(200)} == {"iris-v1", "iris-v2"}


def test_grpc_reads_the_sticky_header_from_metadata_without_regard_to_case() -> None:
    t = table(stickyHeader="X-User")
    state = build_state(t, servable(t))
    assert _sticky_key(state, (("user-agent", "grpc"), ("x-user", "alice"))) == "alice"
    assert _sticky_key(state, (("x-other", "bob"),)) is None
