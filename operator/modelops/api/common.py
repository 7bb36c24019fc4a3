"""Pieces shared by every kind: the base model, conditions, durations."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def parse_duration(text: str) -> float:
    """Seconds in a Kubernetes-style duration such as ``1m30s``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it is written to the API server: camelCase, no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """The standard Kubernetes condition shape read by kubectl wait, kstatus and Argo CD."""

    type: str
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str


CONDITIONS_FIELD: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Return the conditions with one set, and whether its status changed.

    ``lastTransitionTime`` moves only when the status changes, as the API conventions ask.
    """
    old = get_condition(conditions, type_)
    changed = old is None or old.get("status") != status
    new: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message}
    if generation is not None:
        new["observedGeneration"] = generation
    new["lastTransitionTime"] = now_iso() if changed or old is None else old["lastTransitionTime"]
    others = [c for c in conditions if c.get("type") != type_]
    if old is None:
        return [*others, new], True
    # Keep the condition where it was, so the list does not churn in `kubectl get -o yaml`.
    return [new if c is old else c for c in conditions], changed


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


class ResourceRequirements(Model):
    """Compute resources of a container, as in core/v1 (quantities as strings)."""

    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class ArtifactRef(Model):
    """An object in the artifact store and its digest."""

    uri: str = Field(pattern=r"^s3://[^/]+/.+$")
    """Location, ``s3://<bucket>/<key>``."""
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    size: int | None = Field(default=None, ge=0)
