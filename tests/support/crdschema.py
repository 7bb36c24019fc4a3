"""Validate custom resources the way the API server would: CRD schema, defaults, CEL rules.

``jsonschema`` checks the openAPIV3Schema (after the small conversion Kubernetes' dialect
needs) and ``cel-python`` evaluates ``x-kubernetes-validations`` with ``self`` (and, for
updates, ``oldSelf``) bound to the node the rule sits on.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def _is_sorted(values: Any) -> celpy.celtypes.BoolType:
    items = list(values)
    return celpy.celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


# cel-python lacks the Kubernetes CEL list library; stand-ins for what our rules use.
CEL_FUNCTIONS = {"isSorted": _is_sorted}


def to_jsonschema(node: Any) -> Any:
    """Kubernetes' OpenAPI dialect to plain JSON Schema; unknown fields are errors (Strict)."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: to_jsonschema(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    for bound in ("minimum", "maximum"):
        exclusive = f"exclusive{bound.capitalize()}"
        if node.get(exclusive) is True:  # OpenAPI v3.0 -> JSON Schema 2020-12
            out[exclusive] = out.pop(bound)
        elif node.get(exclusive) is False:
            out.pop(exclusive)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def apply_defaults(schema: dict[str, Any], data: Any) -> Any:
    """Structural defaulting, as the API server does before validation."""
    if isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in data and "default" in sub:
                data[key] = copy.deepcopy(sub["default"])
            if key in data:
                data[key] = apply_defaults(sub, data[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in data:
                data[key] = apply_defaults(extra, data[key])
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in data]
    return data


def cel_errors(schema: dict[str, Any], data: Any, old: Any = None, where: str = "") -> list[str]:
    errors: list[str] = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue  # transition rules apply only on update
        program = env.program(env.compile(rule["rule"]), functions=CEL_FUNCTIONS)
        bindings = {"self": celpy.json_to_cel(data)}
        if uses_old:
            bindings["oldSelf"] = celpy.json_to_cel(old)
        if not bool(program.evaluate(bindings)):
            errors.append(f"{where or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in data:
                old_sub = old.get(key) if isinstance(old, dict) else None
                errors += cel_errors(sub, data[key], old_sub, f"{where}.{key}")
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(data):
            errors += cel_errors(schema["items"], item, None, f"{where}[{i}]")
    return errors


class CrdValidator:
    """Validates our custom resources against the CRDs in ``crds/``."""

    def __init__(self, crd_dir: Path = CRD_DIR) -> None:
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if crd.get("kind") != "CustomResourceDefinition":
                continue  # crds/kustomization.yaml
            for version in crd["spec"]["versions"]:
                api_version = f"{crd['spec']['group']}/{version['name']}"
                key = (api_version, crd["spec"]["names"]["kind"])
                self.schemas[key] = version["schema"]["openAPIV3Schema"]

    def knows(self, obj: dict[str, Any]) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in self.schemas

    def errors(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
        schema = self.schemas[(obj["apiVersion"], obj["kind"])]
        data = apply_defaults(schema, copy.deepcopy(obj))
        old_data = apply_defaults(schema, copy.deepcopy(old)) if old is not None else None
        validator = jsonschema.Draft202012Validator(to_jsonschema(schema))
        found = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(data)
        ]
        if found:
            return found
        return cel_errors(schema, data, old_data)
