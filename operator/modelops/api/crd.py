"""CRD generation: the pydantic models are the source of truth, ``crds/*.yaml`` is derived."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelops import GROUP, VERSION
from modelops.api.common import Resource
from modelops.api.deployment import Deployment
from modelops.api.driftmonitor import DriftMonitor
from modelops.api.modelversion import ModelVersion
from modelops.api.trainingrun import TrainingRun


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_name: str
    model: type[Resource]
    columns: tuple[tuple[str, str, str], ...]
    """(name, type, jsonPath) of each printer column before Age."""

    @property
    def singular(self) -> str:
        return self.kind.lower()


def _condition(type_: str) -> str:
    return f'.status.conditions[?(@.type=="{type_}")].status'


KINDS: tuple[Kind, ...] = (
    Kind(
        "TrainingRun",
        "trainingruns",
        "tr",
        TrainingRun,
        (
            ("Model", "string", ".spec.model"),
            ("Estimator", "string", ".spec.estimator.name"),
            ("Phase", "string", ".status.phase"),
            ("Metrics", "string", ".status.metricsSummary"),
            ("Version", "string", ".status.modelVersion"),
        ),
    ),
    Kind(
        "ModelVersion",
        "modelversions",
        "mv",
        ModelVersion,
        (
            ("Model", "string", ".spec.model"),
            ("Version", "integer", ".spec.version"),
            ("Phase", "string", ".status.phase"),
            ("Metrics", "string", ".status.metricsSummary"),
            ("Run", "string", ".spec.lineage.trainingRun"),
        ),
    ),
    Kind(
        "Deployment",
        "deployments",
        "mdep",
        Deployment,
        (
            ("Model", "string", ".spec.model"),
            ("Stable", "string", ".status.stableVersion"),
            ("Canary", "string", ".status.canaryVersion"),
            ("Mode", "string", ".spec.canary.mode"),
            ("Weight", "integer", ".status.canaryWeight"),
            ("Phase", "string", ".status.phase"),
            ("Ready", "integer", ".status.readyReplicas"),
            ("Desired", "integer", ".status.desiredReplicas"),
        ),
    ),
    Kind(
        "DriftMonitor",
        "driftmonitors",
        "dm",
        DriftMonitor,
        (
            ("Deployment", "string", ".spec.deployment"),
            ("Version", "string", ".status.version"),
            ("Drifted", "string", _condition("Drifted")),
            ("Share", "number", ".status.driftedShare"),
            ("Samples", "integer", ".status.samples"),
            ("Quality", "number", ".status.quality.value"),
            ("Labels", "integer", ".status.quality.labels"),
            ("Action", "string", ".spec.action"),
        ),
    ),
)

KINDS_BY_PLURAL = {k.plural: k for k in KINDS}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON schema into a structural OpenAPI v3 schema.

    Kubernetes wants every type spelled out in place: no $ref, no anyOf-with-null (it uses
    ``nullable``), no ``const``, no titles.
    """
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[1]])
        node = {**target, **node}
    node.pop("title", None)
    node.pop("$defs", None)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) == 1:
            node = {**_structural(non_null[0], defs), **node}
            if len(non_null) < len(any_of):
                node["nullable"] = True
        else:
            # Only the scalar union of estimator params reaches here: let it be any scalar.
            node["x-kubernetes-int-or-string"] = True
            node.pop("type", None)
            node = {k: v for k, v in node.items() if k == "description"}
            node["x-kubernetes-preserve-unknown-fields"] = True
            return node
    if "const" in node:
        node["enum"] = [node.pop("const")]
    # OpenAPI v3.0 (what the API server reads): exclusive bounds are booleans beside
    # minimum/maximum, not numbers as in JSON Schema 2020-12 (a number is refused).
    for bound in ("minimum", "maximum"):
        exclusive = f"exclusive{bound.capitalize()}"
        if exclusive in node and not isinstance(node[exclusive], bool):
            node[bound] = node.pop(exclusive)
            node[exclusive] = True
    if node.get("default", 0) is None:
        del node["default"]
    if (
        node.get("type") == "object"
        and "properties" not in node
        and (node.get("additionalProperties") in (None, True, {}))
    ):
        node.pop("additionalProperties", None)
        node["x-kubernetes-preserve-unknown-fields"] = True
    return {k: _structural(v, defs) for k, v in node.items()}


def _schema(model: type[Resource]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    props = schema["properties"]
    props.pop("metadata", None)
    # The status default would make every new object carry an empty status; leave it out.
    props["status"].pop("default", None)
    return {
        "type": "object",
        "description": schema.get("description", ""),
        "required": ["spec"],
        # The schema cannot constrain metadata.name without closing metadata: a CEL rule can.
        "x-kubernetes-validations": [model.name_rule.cel()],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": props["spec"],
            "status": props["status"],
        },
    }


def crd(kind: Kind) -> dict[str, Any]:
    columns = [{"name": n, "type": t, "jsonPath": p} for n, t, p in kind.columns]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short_name],
                "categories": ["modelops"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _schema(kind.model)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def render(kind: Kind) -> str:
    header = "# Generated from operator/modelops/api by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


KUSTOMIZATION = "kustomization.yaml"


def render_kustomization() -> str:
    """crds/kustomization.yaml: lets manifests/base include the CRDs as ``../../crds``."""
    header = (
        "# Generated from operator/modelops/api by `make crds`. Do not edit.\n"
        "# Lets manifests/base include the CRDs as `../../crds` (kustomize loads plain files only\n"
        "# from inside a kustomization's own directory, but other kustomizations from anywhere).\n"
    )
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(f"{GROUP}_{kind.plural}.yaml" for kind in KINDS),
    }
    return header + yaml.safe_dump(body, sort_keys=False)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = directory / f"{GROUP}_{kind.plural}.yaml"
        path.write_text(render(kind))
        paths.append(path)
    (directory / KUSTOMIZATION).write_text(render_kustomization())
    paths.append(directory / KUSTOMIZATION)
    return paths


def load_all(directory: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(directory.glob(f"{GROUP}_*.yaml"))]
