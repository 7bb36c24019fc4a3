"""A pod's environment as the kubelet builds it: env, envFrom, the downward API, ``$(VAR)``.

Pure helpers plus the two reads of the Secrets and ConfigMaps a container refers to; the
process kubelet (:mod:`modelops.local.kubelet`) turns the result into a local process.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from modelops.controllers.cluster import Cluster


class PodSpecError(Exception):
    """The pod cannot start here (for example a secret it needs does not exist)."""


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes a ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def field_value(path: str, fields: Mapping[str, Any]) -> str:
    """A ``fieldRef`` of the downward API, from the pod's metadata, spec and status."""
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path):
        return str((fields.get("metadata", {}).get(m[1]) or {}).get(m[2], ""))
    node: Any = fields
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is None:
        raise PodSpecError(f"fieldRef {path!r} is not supported here")
    return str(node)


def container_env(
    container: Mapping[str, Any],
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env in order.

    ``fields`` is the pod for ``fieldRef`` (omit it and a fieldRef is an error).
    """
    config_maps = config_maps or {}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            ref, found = source["secretRef"], secrets
        else:
            ref, found = source.get("configMapRef", {}), config_maps
        if ref.get("name") not in found and not ref.get("optional"):
            raise PodSpecError(f"envFrom: {ref.get('name')} not found")
        env.update({prefix + k: v for k, v in found.get(ref.get("name", ""), {}).items()})
    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            if fields is None:
                raise PodSpecError(f"env {name}: fieldRef is not supported here")
            env[name] = field_value(source["fieldRef"]["fieldPath"], fields)
            continue
        if "secretKeyRef" in source:
            ref, found, what = source["secretKeyRef"], secrets, "secret"
        elif "configMapKeyRef" in source:
            ref, found, what = source["configMapKeyRef"], config_maps, "configmap"
        else:
            raise PodSpecError(f"env {name}: only values, fieldRef and key references work here")
        value = found.get(ref["name"], {}).get(ref["key"])
        if value is not None:
            env[name] = value
        elif not ref.get("optional"):
            raise PodSpecError(f"env {name}: {what} {ref['name']} has no key {ref['key']}")
    return env


def _referenced(container: Mapping[str, Any], ref_key: str, from_key: str) -> set[str]:
    names = {
        var["valueFrom"][ref_key]["name"]
        for var in container.get("env", [])
        if ref_key in var.get("valueFrom", {})
    }
    return names | {s[from_key]["name"] for s in container.get("envFrom", []) if from_key in s}


async def referenced_secrets(
    cluster: Cluster, namespace: str, container: Mapping[str, Any]
) -> dict[str, dict[str, str]]:
    """The Secrets a container's env refers to, decoded (``data`` is base64, ``stringData`` not).

    A missing Secret is left out: ``container_env`` decides whether that is fatal (optional).
    """
    found: dict[str, dict[str, str]] = {}
    for name in sorted(_referenced(container, "secretKeyRef", "secretRef")):
        secret = await cluster.get("v1", "Secret", namespace, name)
        if secret is None:
            continue
        values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        found[name] = {**values, **(secret.get("stringData") or {})}
    return found


async def referenced_config_maps(
    cluster: Cluster, namespace: str, container: Mapping[str, Any]
) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name in sorted(_referenced(container, "configMapKeyRef", "configMapRef")):
        cm = await cluster.get("v1", "ConfigMap", namespace, name)
        if cm is not None:
            found[name] = dict(cm.get("data") or {})
    return found


def local_command(container: Mapping[str, Any], entrypoint: Sequence[str] = ()) -> list[str]:
    """The container's argv on this machine: ``command`` (else the image's entrypoint) + args.

    ``python`` is this interpreter, which has the runtime image's packages.
    """
    command = [*(container.get("command") or entrypoint), *container.get("args", [])]
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command
