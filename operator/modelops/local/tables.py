"""Server-side printing: ``meta.k8s.io/v1`` Tables, which ``kubectl get`` asks for and prints.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...`` and prints
whatever columns the server chose. For custom resources those are the CRD's
``additionalPrinterColumns`` (simple JSONPaths, evaluated here) after ``Name``; for the
built-in kinds a few familiar columns, like the real API server's, and ``Age``.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Obj = Mapping[str, Any]
Cell = str | int | float | bool | None

TABLE_MEDIA = re.compile(r"as=Table\b")


def wants_table(accept: str) -> bool:
    """Whether an Accept header prefers a meta.k8s.io Table (kubectl lists it first)."""
    first = accept.split(",")[0]
    return bool(TABLE_MEDIA.search(first)) and "g=meta.k8s.io" in first


# -- JSONPath -------------------------------------------------------------------------------------

_STEP = re.compile(
    r"""
      \.(?P<field>[^.\[\]]+)
    | \[(?P<index>-?\d+|\*)\]
    | \[(?P<quote>['"])(?P<key>.*?)(?P=quote)\]
    | \[\?\(@(?P<fpath>(?:\.[^.=!<>\s)]+)+)\s*
        (?:(?P<op>==|!=)\s*(?P<value>"[^"]*"|'[^']*'|[^)\s]+))?\s*\)\]
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class JsonPath:
    """The subset of Kubernetes JSONPath that printer columns use.

    ``.a.b``, ``['a.b/c']``, ``[0]``, ``[-1]``, ``[*]`` and filters ``[?(@.x.y=="v")]``,
    ``[?(@.x!="v")]``, ``[?(@.x)]``; an optional ``{...}`` around the whole.
    """

    text: str
    steps: tuple[tuple[str, Any], ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        body = text.strip()
        if body.startswith("{") and body.endswith("}"):
            body = body[1:-1].strip()
        body = body.removeprefix("$")
        steps: list[tuple[str, Any]] = []
        pos = 0
        while pos < len(body):
            m = _STEP.match(body, pos)
            if m is None:
                raise ValueError(f"unsupported JSONPath {text!r} at {body[pos:]!r}")
            pos = m.end()
            if m["field"] is not None:
                steps.append(("key", m["field"]))
            elif m["key"] is not None:
                steps.append(("key", m["key"]))
            elif m["index"] is not None:
                steps.append(("all", None) if m["index"] == "*" else ("index", int(m["index"])))
            else:
                fpath = tuple(m["fpath"].lstrip(".").split("."))
                value = m["value"]
                literal = _literal(value) if value is not None else None
                steps.append(("filter", (fpath, m["op"], literal)))
        return cls(text, tuple(steps))

    def find(self, obj: Any) -> list[Any]:
        """Every match, in document order (Kubernetes prints the first)."""
        nodes = [obj]
        for kind, arg in self.steps:
            found: list[Any] = []
            for node in nodes:
                keyed = kind == "key" and isinstance(node, Mapping) and arg in node
                indexed = (
                    kind == "index" and isinstance(node, list) and -len(node) <= arg < len(node)
                )
                if keyed or indexed:
                    found.append(node[arg])
                elif kind == "all":
                    found.extend(node.values() if isinstance(node, Mapping) else node or [])
                elif kind == "filter" and isinstance(node, list):
                    found.extend(item for item in node if _keep(item, *arg))
            nodes = found
        return nodes


def _literal(text: str) -> Any:
    if text[:1] in ("'", '"'):
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


def _keep(item: Any, path: tuple[str, ...], op: str | None, value: Any) -> bool:
    for part in path:
        if not isinstance(item, Mapping) or part not in item:
            return op == "!="
        item = item[part]
    if op is None:
        return True
    return bool(item == value) == (op == "==")


# -- cells ----------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def human_duration(seconds: float) -> str:
    """Kubernetes' ``duration.HumanDuration``: ``45s``, ``3m12s``, ``25m``, ``5h3m``, ``3d``."""
    if seconds < -1:
        return "<invalid>"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years, days = hours // (24 * 365), (hours // 24) % 365
    return f"{years}y{days}d" if days and years < 8 else f"{years}y"


def age(timestamp: Any, now: datetime.datetime | None = None) -> str | None:
    when = parse_time(timestamp) if isinstance(timestamp, str) else None
    if when is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    return human_duration((now - when).total_seconds())


def typed_cell(value: Any, type_: str) -> Cell:
    """A JSONPath result as the API server renders it for the column's type."""
    if value is None:
        return None
    if type_ == "date":
        return age(value)
    if type_ == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if type_ == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if type_ == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


# -- columns --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    cell: Callable[[Obj], Cell]
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


NAME = Column(
    "Name",
    "string",
    lambda o: o.get("metadata", {}).get("name"),
    format="name",
    description="Name must be unique within a namespace.",
)
AGE = Column(
    "Age",
    "date",
    lambda o: age(o.get("metadata", {}).get("creationTimestamp")),
    description="CreationTimestamp is the time the object was created.",
)


def printer_columns(specs: Iterable[Mapping[str, Any]]) -> list[Column]:
    """A CRD version's ``additionalPrinterColumns``, after Name; Age only if none are given."""
    columns = [NAME]
    for spec in specs:
        path = JsonPath.parse(spec["jsonPath"])
        type_ = spec.get("type", "string")

        def cell(obj: Obj, path: JsonPath = path, type_: str = type_) -> Cell:
            found = path.find(obj)
            return typed_cell(found[0], type_) if found else None

        columns.append(
            Column(
                spec["name"],
                type_,
                cell,
                format=spec.get("format", ""),
                description=spec.get("description", ""),
                priority=int(spec.get("priority", 0)),
            )
        )
    return columns if len(columns) > 1 else [NAME, AGE]


def _get(obj: Any, *path: str | int) -> Any:
    for part in path:
        if isinstance(part, int):
            obj = obj[part] if isinstance(obj, list) and len(obj) > part else None
        else:
            obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


def _pod_status(pod: Obj) -> str:
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    if meta.get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase") or "Pending"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state", {})
        if waiting := state.get("waiting"):
            reason = waiting.get("reason") or reason
        elif done := state.get("terminated"):
            reason = done.get("reason") or ("Completed" if done.get("exitCode") == 0 else "Error")
    return str(reason)


def _pod_ready(pod: Obj) -> str:
    statuses = _get(pod, "status", "containerStatuses") or []
    total = len(_get(pod, "spec", "containers") or []) or len(statuses)
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _job_status(job: Obj) -> str:
    for cond in _get(job, "status", "conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return "Running" if _get(job, "status", "active") else "Pending"


def _job_duration(job: Obj) -> str | None:
    start = parse_time(_get(job, "status", "startTime") or "")
    if start is None:
        return None
    end = parse_time(_get(job, "status", "completionTime") or "")
    end = end or datetime.datetime.now(datetime.UTC)
    return human_duration((end - start).total_seconds())


def _ports(svc: Obj) -> str:
    ports = _get(svc, "spec", "ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _event_object(ev: Obj) -> str:
    ref = ev.get("involvedObject") or ev.get("regarding") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


def _event_seen(ev: Obj) -> str | None:
    meta = ev.get("metadata", {})
    return age(ev.get("lastTimestamp") or ev.get("eventTime") or meta.get("creationTimestamp"))


def _restarts(pod: Obj) -> int:
    return sum(
        int(s.get("restartCount", 0)) for s in _get(pod, "status", "containerStatuses") or []
    )


def _replicas_ready(dep: Obj) -> str:
    return f"{_get(dep, 'status', 'readyReplicas') or 0}/{_get(dep, 'spec', 'replicas') or 0}"


def _containers(dep: Obj, field: str) -> str:
    containers = _get(dep, "spec", "template", "spec", "containers") or []
    return ",".join(str(c.get(field, "")) for c in containers)


def _completions(job: Obj) -> str:
    return f"{_get(job, 'status', 'succeeded') or 0}/{_get(job, 'spec', 'completions') or 1}"


def _secret_keys(secret: Obj) -> int:
    return len(secret.get("data") or {}) + len(secret.get("stringData") or {})


def _col(
    name: str, cell: Callable[[Obj], Cell], type_: str = "string", priority: int = 0
) -> Column:
    return Column(name, type_, cell, priority=priority)


BUILTIN_COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "pods"): [
        NAME,
        _col("Ready", _pod_ready),
        _col("Status", _pod_status),
        _col("Restarts", _restarts, "integer"),
        AGE,
        _col("IP", lambda p: _get(p, "status", "podIP"), priority=1),
        _col("Node", lambda p: _get(p, "spec", "nodeName"), priority=1),
    ],
    ("apps", "deployments"): [
        NAME,
        _col("Ready", _replicas_ready),
        _col("Up-to-date", lambda d: _get(d, "status", "updatedReplicas") or 0, "integer"),
        _col("Available", lambda d: _get(d, "status", "availableReplicas") or 0, "integer"),
        AGE,
        _col("Containers", lambda d: _containers(d, "name"), priority=1),
        _col("Images", lambda d: _containers(d, "image"), priority=1),
    ],
    ("batch", "jobs"): [
        NAME,
        _col("Status", _job_status),
        _col("Completions", _completions),
        _col("Duration", _job_duration),
        AGE,
    ],
    ("", "services"): [
        NAME,
        _col("Type", lambda s: _get(s, "spec", "type") or "ClusterIP"),
        _col("Cluster-IP", lambda s: _get(s, "spec", "clusterIP") or "<none>"),
        _col("External-IP", lambda s: "<none>"),
        _col("Port(s)", _ports),
        AGE,
    ],
    ("", "namespaces"): [NAME, _col("Status", lambda n: _get(n, "status", "phase")), AGE],
    ("", "configmaps"): [NAME, _col("Data", lambda c: len(c.get("data") or {}), "integer"), AGE],
    ("", "secrets"): [
        NAME,
        _col("Type", lambda s: s.get("type") or "Opaque"),
        _col("Data", _secret_keys, "integer"),
        AGE,
    ],
    ("", "events"): [
        _col("Last Seen", _event_seen),
        _col("Type", lambda e: e.get("type")),
        _col("Reason", lambda e: e.get("reason")),
        _col("Object", _event_object),
        _col("Message", lambda e: e.get("message") or e.get("note")),
    ],
}


def builtin_columns(group: str, plural: str) -> list[Column]:
    return BUILTIN_COLUMNS.get((group, plural), [NAME, AGE])


# -- the Table ------------------------------------------------------------------------------------


def _row_object(obj: Obj, include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return dict(obj)
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": dict(obj.get("metadata", {})),
    }


def table(
    columns: Sequence[Column],
    objects: Iterable[Obj],
    *,
    resource_version: str = "",
    include_object: str = "Metadata",
    headers: bool = True,
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of the objects; ``include_object`` as the query parameter."""
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [_safe(col, obj) for col in columns]}
        if (embedded := _row_object(obj, include_object)) is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [c.definition() for c in columns] if headers else [],
        "rows": rows,
    }


def _safe(column: Column, obj: Obj) -> Cell:
    # A printer column must never fail a `kubectl get`: a cell that cannot be computed is empty.
    try:
        return column.cell(obj)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
