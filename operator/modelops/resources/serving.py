"""Children of a modelops Deployment: serving pods, Service, routing table, RBAC, HTTPRoute.

Model routing (default): one apps/v1 Deployment whose pods hold every version in the
routing table and split requests in-process by weight. Gateway routing: one apps/v1
Deployment + Service per version, weighted by a Gateway API HTTPRoute (REST) and a GRPCRoute
(the same protocol over gRPC, port ``grpc``) with the same weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelops.api.deployment import Deployment
from modelops.resources.common import (
    TMP_VOLUME,
    child_name,
    container_security_context,
    labels,
    pod_security_context,
    store_env,
    with_defaults,
)
from modelops.settings import Settings

PORT = 8080
GRPC_PORT = 8001
GRPC_SERVICE = "inference.GRPCInferenceService"
DEPLOYMENT_LABEL = "modelops.dev/deployment"
ROLE_LABEL = "modelops.dev/serving-version"
ROUTING_KEY = "routing.json"


@dataclass(frozen=True)
class Route:
    """One version in the routing table."""

    name: str
    role: str  # stable | canary
    weight: int
    spec: dict[str, Any]  # the ModelVersion's spec


def table_mode(dep: Deployment, routes: list[Route]) -> tuple[str, str | None]:
    """The table's ``mode`` and ``stickyHeader`` (see :mod:`modelops.serving.table`): the
    canary's mode while a canary is in the table beside stable, else ``canary`` (plain
    weights). In ``shadow`` the canary's weight is 0 and pods predict it on a copy of each
    request; in ``abtest`` requests stick to a version by request id, or by the value of the
    ``stickyHeader`` header when set. A one-version table (gateway routing) is plain."""
    canary = dep.spec.canary
    if canary is None or len(routes) < 2 or not any(r.role == "canary" for r in routes):
        return "canary", None
    if canary.mode == "abtest":
        return "abtest", canary.abtest.sticky_header if canary.abtest else None
    return canary.mode, None


def routing_table(dep: Deployment, routes: list[Route]) -> dict[str, Any]:
    """The table serving pods read from their ConfigMap (see modelops.serving)."""
    mode, sticky_header = table_mode(dep, routes)
    return {
        "deployment": dep.metadata["name"],
        "namespace": dep.metadata["namespace"],
        "model": dep.spec.model,
        "mode": mode,
        "stickyHeader": sticky_header,
        "versions": [
            {
                "name": r.name,
                "role": r.role,
                "weight": r.weight,
                "artifact": {k: r.spec["artifact"][k] for k in ("uri", "sha256")},
                **(
                    {"profile": {k: r.spec["profile"][k] for k in ("uri", "sha256")}}
                    if r.spec.get("profile")
                    else {}
                ),
                "signature": r.spec["signature"],
                **(
                    {"sensitiveFeatures": r.spec["fairness"]["sensitiveFeatures"]}
                    if (r.spec.get("fairness") or {}).get("sensitiveFeatures")
                    else {}
                ),
            }
            for r in routes
        ],
    }


def _meta(dep: Deployment, name: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    meta = dep.metadata
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {
            **labels("server", meta["name"], dep.spec.model),
            DEPLOYMENT_LABEL: meta["name"],
            **(extra or {}),
        },
    }


def server_name(dep_name: str, version: str | None = None) -> str:
    return child_name(dep_name, f"{version}-server" if version else "server")


def routing_name(dep_name: str, version: str | None = None) -> str:
    return child_name(dep_name, f"{version}-routing" if version else "routing")


def routing_config_map(dep: Deployment, table: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(dep, name),
        "data": {ROUTING_KEY: json.dumps(table, sort_keys=True, indent=1)},
    }


def server_rbac(dep: Deployment, config_maps: list[str]) -> list[dict[str, Any]]:
    """A ServiceAccount that may read its own routing ConfigMap(s) and nothing else."""
    name = server_name(dep.metadata["name"])
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(dep, name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(dep, name),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": sorted(config_maps),
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(dep, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {"kind": "ServiceAccount", "name": name, "namespace": dep.metadata["namespace"]}
            ],
        },
    ]


def server_deployment(
    dep: Deployment, settings: Settings, name: str, config_map: str, version: str | None = None
) -> dict[str, Any]:
    extra = {ROLE_LABEL: version} if version else {}
    meta = _meta(dep, name, extra)
    selector = {DEPLOYMENT_LABEL: dep.metadata["name"], "app.kubernetes.io/component": "server"}
    selector |= extra
    container = {
        "name": "server",
        "image": dep.spec.image or settings.runtime_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "modelops", "serve"],
        "args": ["--port", str(PORT), "--grpc-port", str(GRPC_PORT)],
        "ports": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "env": [
            *store_env(settings),
            {"name": "MODELOPS_BUCKET", "value": settings.bucket},
            {"name": "MODELOPS_ROUTING_CONFIGMAP", "value": config_map},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": with_defaults(dep.spec.resources.model_dump(), cpu="250m", memory="512Mi"),
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        # Loading a large model, or a starved node, can take minutes: liveness starts only
        # once the server has answered once, so a slow start is never a restart loop.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 5,
            "failureThreshold": 150,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": dep.spec.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": dict(meta["labels"]),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(PORT),
                    },
                },
                "spec": {
                    "serviceAccountName": server_name(dep.metadata["name"]),
                    "automountServiceAccountToken": True,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}}],
                },
            },
        },
    }


def service(dep: Deployment, name: str, version: str | None = None) -> dict[str, Any]:
    selector = {DEPLOYMENT_LABEL: dep.metadata["name"], "app.kubernetes.io/component": "server"}
    if version:
        selector[ROLE_LABEL] = version
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(dep, name, {ROLE_LABEL: version} if version else None),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def http_route(dep: Deployment, backends: list[tuple[str, int]]) -> dict[str, Any]:
    """The HTTPRoute of gateway routing: ``/v2`` to each version's Service, by weight."""
    match = {"path": {"type": "PathPrefix", "value": "/v2"}}
    return _route(dep, "HTTPRoute", match, PORT, backends)


def grpc_route(dep: Deployment, backends: list[tuple[str, int]]) -> dict[str, Any]:
    """The gRPC twin of :func:`http_route`: same parents, same backends and weights."""
    match = {"method": {"type": "Exact", "service": GRPC_SERVICE}}
    return _route(dep, "GRPCRoute", match, GRPC_PORT, backends)


def _route(
    dep: Deployment,
    kind: str,
    match: dict[str, Any],
    port: int,
    backends: list[tuple[str, int]],
) -> dict[str, Any]:
    assert dep.spec.gateway is not None, "the CRD requires gateway with routing: gateway"
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(dep, dep.metadata["name"]),
        "spec": {
            "parentRefs": [p.wire() for p in dep.spec.gateway.parent_refs],
            "rules": [
                {
                    "matches": [match],
                    "backendRefs": [
                        {"name": name, "port": port, "weight": weight} for name, weight in backends
                    ],
                }
            ],
        },
    }


def children(dep: Deployment, routes: list[Route], settings: Settings) -> list[dict[str, Any]]:
    """Every object the Deployment should own, given the versions and weights to serve."""
    name = dep.metadata["name"]
    if dep.spec.routing == "model":
        table = routing_table(dep, routes)
        cm = routing_name(name)
        return [
            *server_rbac(dep, [cm]),
            routing_config_map(dep, table, cm),
            server_deployment(dep, settings, server_name(name), cm),
            service(dep, name),
        ]
    objects: list[dict[str, Any]] = []
    config_maps = [routing_name(name, r.name) for r in routes]
    objects += server_rbac(dep, config_maps)
    backends = []
    for route, cm in zip(routes, config_maps, strict=True):
        single = Route(route.name, route.role, 100, route.spec)
        svc = child_name(name, route.name)
        objects += [
            routing_config_map(dep, routing_table(dep, [single]), cm),
            server_deployment(dep, settings, server_name(name, route.name), cm, route.name),
            service(dep, svc, route.name),
        ]
        backends.append((svc, route.weight))
    objects += [http_route(dep, backends), grpc_route(dep, backends)]
    return objects


def url(dep: Deployment) -> str:
    meta = dep.metadata
    return f"http://{meta['name']}.{meta['namespace']}.svc:{PORT}/v2/models/{dep.spec.model}"
