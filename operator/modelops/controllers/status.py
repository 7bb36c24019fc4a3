"""Writing conditions into ``patch.status`` and posting Events only on transitions."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from modelops.api.common import ConditionStatus, get_condition, set_condition

WARNING_REASONS = frozenset(
    {
        "InvalidSpec",
        "TrainingFailed",
        "DatasetMissing",
        "MissingTarget",
        "MissingFeature",
        "EstimatorNotAllowed",
        "UnencodableData",
        "InvalidDataset",
        "InvalidParams",
        "JobFailed",
        "ArtifactMissing",
        "DigestMismatch",
        "GatesNotMet",
        "RolledBack",
        "Drifted",
    }
)
"""Reasons posted as Warning events; every other transition is Normal."""


def invalid_spec(exc: ValidationError) -> str:
    """One line naming every invalid field, for an InvalidSpec condition."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


class StatusWriter:
    """Accumulates one reconciliation's status changes into Kopf's patch."""

    def __init__(self, body: kopf.Body, patch: kopf.Patch) -> None:
        self.body = body
        self.patch = patch
        self.generation: int | None = body.get("metadata", {}).get("generation")
        self.conditions: list[dict[str, Any]] = list(body.get("status", {}).get("conditions", []))

    def condition(
        self,
        type_: str,
        status: ConditionStatus,
        reason: str,
        message: str = "",
        *,
        event: bool = True,
    ) -> bool:
        """Set a condition; post an Event when its status or reason changed (and say so)."""
        old = get_condition(self.conditions, type_) or {}
        self.conditions, _ = set_condition(
            self.conditions, type_, status, reason, message, self.generation
        )
        self.patch.status["conditions"] = self.conditions
        self.patch.status["observedGeneration"] = self.generation
        changed = (old.get("status"), old.get("reason")) != (status, reason)
        if changed and event:
            if reason in WARNING_REASONS:
                kopf.warn(self.body, reason=reason, message=message)
            else:
                kopf.info(self.body, reason=reason, message=message)
        return changed

    def set(self, **fields: Any) -> None:
        for key, value in fields.items():
            self.patch.status[key] = value
