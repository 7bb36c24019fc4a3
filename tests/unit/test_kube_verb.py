"""The counting proxy names requests by Kubernetes verb and resource (``support.faultproxy``)."""

from __future__ import annotations

import pytest

from support.faultproxy import kube_verb

MDEP = "/apis/modelops.dev/v1alpha1/namespaces/b/deployments"


@pytest.mark.parametrize(
    ("method", "path", "watch", "expected"),
    [
        ("GET", MDEP, False, ("list", "deployments")),
        ("GET", MDEP, True, ("watch", "deployments")),
        ("GET", "/apis/apps/v1/namespaces/b/deployments/x", False, ("get", "deployments")),
        ("PATCH", f"{MDEP}/x/status", False, ("patch", "deployments/status")),
        ("POST", "/api/v1/namespaces/b/events", False, ("create", "events")),
        ("PUT", "/api/v1/namespaces/b/configmaps/x", False, ("update", "configmaps")),
        ("DELETE", "/api/v1/namespaces/b/pods/x", False, ("delete", "pods")),
        ("DELETE", "/api/v1/namespaces/b/pods", False, ("deletecollection", "pods")),
        ("GET", "/api/v1/namespaces/b", False, ("get", "namespaces")),
        ("GET", "/api/v1/namespaces", False, ("list", "namespaces")),
        ("GET", "/version", False, ("get", "")),
    ],
)
def test_a_request_is_named_by_its_verb_and_resource(
    method: str, path: str, watch: bool, expected: tuple[str, str]
) -> None:
    assert kube_verb(method, path, watch) == expected
