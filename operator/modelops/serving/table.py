"""The routing table: the contract between the operator (which writes it into the Deployment's
ConfigMap, key ``routing.json``) and every serving pod (which reads it).

    {"deployment": "iris", "namespace": "default", "model": "iris",
     "versions": [
       {"name": "iris-v1", "role": "stable", "weight": 90,
        "artifact": {"uri": "s3://modelops/default/iris/<uid>/model.skops", "sha256": "..."},
        "profile": {"uri": "s3://modelops/default/iris/<uid>/profile.json", "sha256": "..."},
        "signature": {"task": "classification", "inputs": [...], "classes": [...]},
        "sensitiveFeatures": ["sex"]},                # optional: for live fairness
       {"name": "iris-v2", "role": "canary", "weight": 10, ...}]}

Weights are integers that sum to 100; a version at weight 0 stays loaded and answers only
requests that name it.

``mode`` (default ``canary``) says how the canary is used, and ``stickyHeader`` (optional) names
a request header whose value routes instead of the request id:

- ``canary`` and ``abtest``: requests are split by weight (see :mod:`modelops.serving.router`).
  The routing key is the ``stickyHeader`` value when the request carries it (gRPC: that
  metadata key), else the request ``id``, else none (an exact per-worker round robin), so one
  user stays on one version as long as the split does not change.
- ``shadow``: the stable version answers every routed request, whatever the weights say (the
  operator writes the canary at weight 0); each canary also predicts a copy of each request
  stable answered, off the client's path: its inputs go into its own sketch window, its
  predictions are compared with stable's (agreement) and remembered with the request id, so
  labels join for it too. Requests naming a canary are still answered by it.

    {"deployment": "iris", ..., "mode": "abtest", "stickyHeader": "x-user-id", "versions": [...]}
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from modelops.api.common import ArtifactRef, Model
from modelops.api.modelversion import Signature

Mode = Literal["canary", "abtest", "shadow"]

CONFIGMAP_KEY = "routing.json"
TRANSIENT_REASON = "StoreUnavailable"
"""In a pod report's ``failed``, a load failure that may pass (the store unreachable): the
operator waits on it; any other reason is the artifact's own, and rolls a canary back."""
_NUMBER_SUFFIX = re.compile(r"-v([0-9]+)$")
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"
"""An HTTP header field name (an RFC 9110 token), at most 128 characters."""


class VersionEntry(Model):
    name: str = Field(min_length=1)
    """The ModelVersion's name, e.g. ``iris-v2``."""
    role: Literal["stable", "canary"] = "stable"
    weight: int = Field(ge=0, le=100)
    artifact: ArtifactRef
    profile: ArtifactRef | None = None
    signature: Signature
    number: int | None = Field(default=None, ge=1)
    """The version number; taken from a ``-v<N>`` name suffix when absent."""
    sensitive_features: list[str] = Field(default_factory=list)
    """The version's ``spec.fairness.sensitiveFeatures``: those that are model inputs are
    recorded per request id with its predictions, so joined labels count per group."""

    @property
    def version_number(self) -> int | None:
        if self.number is not None:
            return self.number
        match = _NUMBER_SUFFIX.search(self.name)
        return int(match.group(1)) if match else None


class RoutingTable(Model):
    deployment: str = Field(min_length=1)
    namespace: str = "default"
    model: str = Field(min_length=1)
    versions: list[VersionEntry] = Field(min_length=1)
    mode: Mode = "canary"
    """How canaries take traffic: a weighted split (``canary``, ``abtest``) or a copy of the
    requests stable answers (``shadow``)."""
    sticky_header: str | None = Field(default=None, pattern=HEADER_NAME)
    """A request header (gRPC: metadata key) whose value, when present, is the routing key
    instead of the request id; matched without regard to case."""

    @model_validator(mode="after")
    def _consistent(self) -> RoutingTable:
        names = [v.name for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"version names repeat: {names}")
        numbers = [v.version_number for v in self.versions if v.version_number is not None]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"version numbers repeat: {numbers}")
        total = sum(v.weight for v in self.versions)
        if total != 100:
            raise ValueError(f"weights must sum to 100, not {total}")
        return self

    def names(self) -> set[str]:
        """The names a client may use for this model."""
        return {self.model, self.deployment}
