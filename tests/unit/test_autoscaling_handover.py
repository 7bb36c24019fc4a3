"""Handing a serving Deployment's spec.replicas to its autoscaler (resources/autoscaling.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelops.resources.autoscaling import (
    HANDOVER_MANAGER,
    hand_over_replicas,
    owns_replicas,
    replicas_handover,
)


def child(**spec: Any) -> dict[str, Any]:
    """The operator's next configuration of the serving Deployment."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-server", "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app": "iris"}}, **spec},
    }


def live(replicas: int, managers: tuple[str, ...] = ("modelops",), rv: str = "7") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "iris-server",
            "namespace": "ns",
            "resourceVersion": rv,
            "managedFields": [
                {"manager": m, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for m in managers
            ],
        },
        "spec": {"replicas": replicas},
    }


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class FakeCluster:
    """Answers GETs from a list of objects in turn; records PATCHes, failing the first
    ``conflicts`` of them with 409."""

    def __init__(self, *objects: dict[str, Any] | None, conflicts: int = 0) -> None:
        self.objects = list(objects)
        self.conflicts = conflicts
        self.patches: list[tuple[str, Any, str | None]] = []

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        return self.objects.pop(0) if len(self.objects) > 1 else self.objects[0]

    async def request(
        self, method: str, url: str, *, json: Any = None, content_type: str | None = None
    ) -> dict[str, Any]:
        self.patches.append((url, json, content_type))
        if self.conflicts:
            self.conflicts -= 1
            raise ApiError(409)
        return {}


def test_owned_replicas_are_handed_over_at_their_current_value() -> None:
    handover = replicas_handover(child(), live(4))
    assert handover == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-server", "namespace": "ns"},
        "spec": {"replicas": 4},
    }


def test_no_handover_when_the_operator_does_not_own_replicas() -> None:
    assert replicas_handover(child(), live(4, managers=("kube-controller-manager",))) is None


def test_no_handover_for_a_deployment_not_created_yet() -> None:
    assert replicas_handover(child(), None) is None


def test_no_handover_while_the_operator_still_sets_replicas() -> None:
    assert replicas_handover(child(replicas=4), live(4)) is None


def test_owns_replicas_reads_managed_fields() -> None:
    assert owns_replicas(live(2), "modelops") and not owns_replicas(live(2), HANDOVER_MANAGER)


async def test_hand_over_applies_as_the_handover_manager() -> None:
    cluster = FakeCluster(live(4))
    assert await hand_over_replicas(cluster, child()) == 4
    [(url, body, content_type)] = cluster.patches
    assert url == (
        f"/apis/apps/v1/namespaces/ns/deployments/iris-server?fieldManager={HANDOVER_MANAGER}"
    )
    assert content_type == "application/apply-patch+yaml" and body["spec"] == {"replicas": 4}


async def test_hand_over_reads_again_after_a_conflict() -> None:
    cluster = FakeCluster(live(4, rv="7"), live(5, rv="8"), conflicts=1)
    assert await hand_over_replicas(cluster, child()) == 5
    assert [b["spec"]["replicas"] for _, b, _ in cluster.patches] == [4, 5]


async def test_hand_over_gives_up_after_repeated_conflicts() -> None:
    cluster = FakeCluster(live(4), conflicts=10)
    with pytest.raises(ApiError):
        await hand_over_replicas(cluster, child())


async def test_no_request_once_the_last_apply_left_replicas_out() -> None:
    cluster = FakeCluster(live(4))
    assert await hand_over_replicas(cluster, child(), json.dumps(child())) is None
    assert cluster.patches == []
