"""Pieces shared by every kind: the base model, conditions, durations."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1123 label (RFC 1123): what most object names and every label value may be."""
DNS_1035_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1035 label (RFC 1035): a Service's name, which must start with a letter."""
MAX_NAME_LENGTH = 63
"""The limit of a DNS label, and of a label value."""


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


QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A non-negative Kubernetes quantity: ``500m``, ``1.5``, ``512Mi``, ``1e3``."""
_QUANTITY_PARTS = re.compile(r"([0-9.]+)(.*)")
_BINARY_SUFFIXES = {f"{p}i": Decimal(1024) ** (i + 1) for i, p in enumerate("KMGTPE")}
_DECIMAL_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity: ``parse_quantity("512Mi") == 512 * 2**20``."""
    parts = _QUANTITY_PARTS.fullmatch(text) if re.fullmatch(QUANTITY_PATTERN, text) else None
    if parts is None:
        raise ValueError(f"invalid quantity {text!r}: use e.g. 500m, 2, 512Mi, 1Gi")
    number, suffix = parts.groups()
    if suffix in _BINARY_SUFFIXES:
        return Decimal(number) * _BINARY_SUFFIXES[suffix]
    if suffix in _DECIMAL_SUFFIXES:
        return Decimal(number) * _DECIMAL_SUFFIXES[suffix]
    return Decimal(number + suffix)  # an exponent: 1e3, 2E-3


def _integer_as_text(value: object) -> object:
    # YAML's `cpu: 2` arrives as an integer, which the schema allows (int-or-string).
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Quantity = Annotated[
    str,
    BeforeValidator(_integer_as_text),
    Field(pattern=QUANTITY_PATTERN, max_length=64),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
            "minimum": 0,
        }
    ),
]
"""A quantity as written in YAML: a string (``512Mi``, ``500m``) or a whole number (``2``)."""

REQUESTS_WITHIN_LIMITS = "resource requests must not exceed limits"
_REQUESTS_WITHIN_LIMITS_RULE = (
    "!has(self.requests) || !has(self.limits) || self.limits.all(k, !(k in self.requests)"
    " || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)"
)


class ResourceRequirements(Model):
    """Compute resources of a container, as in core/v1; no request may exceed its limit."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": _REQUESTS_WITHIN_LIMITS_RULE, "message": REQUESTS_WITHIN_LIMITS}
            ]
        }
    )

    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=16)
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Self:
        # The CRD's CEL rule says the same; this catches objects that bypassed admission.
        over = [
            f"{name} {self.requests[name]} > {limit}"
            for name, limit in self.limits.items()
            if name in self.requests and parse_quantity(self.requests[name]) > parse_quantity(limit)
        ]
        if over:
            raise ValueError(f"{REQUESTS_WITHIN_LIMITS}: {', '.join(over)}")
        return self


@dataclass(frozen=True)
class NameRule:
    """What a kind's ``metadata.name`` may be, given the names and labels derived from it.

    CRDs cannot constrain ``metadata.name`` in the schema without closing ``metadata``, so the
    rule is a CEL rule at the root of the schema; the model checks the same on load.
    """

    pattern: str
    message: str
    max_length: int = MAX_NAME_LENGTH

    def cel(self) -> dict[str, str]:
        return {
            "rule": (
                f"self.metadata.name.size() <= {self.max_length}"
                f" && self.metadata.name.matches('{self.pattern}')"
            ),
            "message": self.message,
            "fieldPath": ".metadata",
            "reason": "FieldValueInvalid",
        }

    def check(self, name: str) -> None:
        if len(name) > self.max_length or not re.fullmatch(self.pattern, name):
            raise ValueError(f"metadata.name {name!r}: {self.message}")


class Resource(Model):
    """Base of the four kinds: a spec, a status, and a name rule."""

    name_rule: ClassVar[NameRule]
    metadata: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="after")
    def _name_fits(self) -> Self:
        # The CRD's CEL rule says the same; this catches objects stored before it existed.
        name = self.metadata.get("name")
        if isinstance(name, str):
            self.name_rule.check(name)
        return self


class ArtifactRef(Model):
    """An object in the artifact store and its digest."""

    uri: str = Field(pattern=r"^s3://[^/]+/.+$")
    """Location, ``s3://<bucket>/<key>``."""
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    size: int | None = Field(default=None, ge=0)
