"""Status: conditions into ``patch.status``, Events only on transitions, and the write itself."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import kopf
from pydantic import ValidationError

from modelops.api.common import ConditionStatus, get_condition, set_condition
from modelops.controllers.cluster import ApiError
from modelops.controllers.metrics import (
    STATUS_FIELDS_PRUNED,
    STATUS_VALUES_DROPPED,
    STATUS_WRITE_ERRORS,
    STATUS_WRITES_SKIPPED,
    observed,
)

logger = logging.getLogger(__name__)

WARNING_REASONS = frozenset(
    {
        "InvalidSpec",
        "TrainingFailed",
        "DatasetMissing",
        "MissingTarget",
        "MissingFeature",
        "SensitiveFeatureMissing",
        "UnknownPositiveLabel",
        "DatasetChanged",
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
        "Forbidden",
        "QuotaExceeded",
        "Invalid",
        "StatusRejected",
        "CheckFailed",
        "GuardUnknown",
        "NoFreeVersionNumber",
        "RegistrationRefused",
        "DeadlineExceeded",
        "BackoffLimitExceeded",
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
        # A second writer of the same pass starts from what the first one set.
        self.conditions: list[dict[str, Any]] = list(
            patch.status.get("conditions") or body.get("status", {}).get("conditions", [])
        )

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

    def drop_condition(self, type_: str) -> None:
        """Remove the condition of this type, if there is one (its rule was removed)."""
        if get_condition(self.conditions, type_):
            self.conditions = [c for c in self.conditions if c.get("type") != type_]
            self.patch.status["conditions"] = self.conditions

    def set(self, **fields: Any) -> None:
        for key, value in fields.items():
            self.patch.status[key] = value


class Verdict(Protocol):
    """A rule's decision as a condition (:class:`modelops.quality_rules.QualityVerdict`,
    :class:`modelops.fairness_rules.FairnessVerdict`)."""

    @property
    def status(self) -> ConditionStatus: ...
    @property
    def reason(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def fired(self) -> bool: ...


def report_verdict(
    status: StatusWriter, condition: str, verdict: Verdict, detected: str, recovered: str
) -> None:
    """Set ``condition`` from ``verdict``: a Warning ``detected`` Event when it turns True, a
    Normal ``recovered`` one when it turns from True to False, and (Unknown) an Event of its
    reason when that changes."""
    old = (get_condition(status.conditions, condition) or {}).get("status")
    unknown = verdict.status == "Unknown"
    status.condition(condition, verdict.status, verdict.reason, verdict.message, event=unknown)
    if verdict.fired and old != "True":
        kopf.warn(status.body, reason=detected, message=verdict.message)
    elif verdict.status == "False" and old == "True":
        kopf.info(status.body, reason=recovered, message=verdict.message)


def pruned_fields(written: Any, stored: Any, where: str = "status") -> list[str]:
    """Paths of fields in ``written`` (a merge patch) that ``stored`` lacks: pruned by the
    server because the CRD's structural schema does not declare them. Nulls delete (RFC 7396)
    and lists are replaced whole, so only objects are compared key by key."""
    if not isinstance(written, dict) or not isinstance(stored, dict):
        return []
    missing = []
    for key, value in written.items():
        if value is None:
            continue
        if key not in stored:
            missing.append(f"{where}.{key}")
        else:
            missing += pruned_fields(value, stored[key], f"{where}.{key}")
    return missing


def finite(value: Any) -> tuple[Any, int]:
    """``value`` with every non-finite float (NaN, +-Inf) replaced by None, and how many.

    JSON (RFC 8259, section 6) has no NaN or Infinity: the API server answers 400 to a body
    holding one, so such a number must never reach a write.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None, 1
    if isinstance(value, dict):
        pairs = [(k, finite(v)) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, sum(n for _, (_, n) in pairs)
    if isinstance(value, list):
        items = [finite(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    return value, 0


class Written:
    """What a pass's status write returned: the whole object as stored (None: nothing
    written, or the write failed)."""

    stored: dict[str, Any] | None = None


@asynccontextmanager
async def reconciling(kind: str, body: kopf.Body, patch: kopf.Patch) -> AsyncIterator[Written]:
    """One reconciliation of ``body``: counted, timed, and its status written by us.

    The handler fills ``patch.status`` (through :class:`StatusWriter`); at the end, even when it
    raised, that status is taken out of Kopf's patch and written here. Why: Kopf applies its
    patch outside the handler, and a refused status PATCH there ends the object's timer for
    good. Here a refusal is survived and shown:

    - non-finite numbers become null first (counted in ``modelops_status_values_dropped_total``);
    - 400/422 (the server refused the content): ``Ready=Unknown, reason=StatusRejected`` with the
      server's message is written instead;
    - no answer, 429 or 5xx after the client's retries: :class:`kopf.TemporaryError`, so the
      handler is retried on its next tick;
    - every refusal is counted in ``modelops_status_write_errors_total{kind,code}``.

    An API error of the handler itself that will not pass by waiting (403 Forbidden, e.g. a
    ResourceQuota; 422 Invalid) sets ``Stalled=True`` with the server's message, and a pass
    that completes sets ``Stalled=False``: kstatus and Argo CD read that condition.
    """
    written = Written()
    with observed(kind):
        try:
            yield written
        except ApiError as exc:
            if exc.status not in STALLING:
                raise
            message = _server_message(exc)
            reason = "QuotaExceeded" if "exceeded quota" in message else STALLING[exc.status]
            StatusWriter(body, patch).condition("Stalled", "True", reason, message)
            raise kopf.TemporaryError(f"{reason}: {message}", delay=10) from exc
        else:
            status = StatusWriter(body, patch)
            if (get_condition(status.conditions, "Stalled") or {}).get("status") == "True":
                status.condition("Stalled", "False", "Reconciled", "the last pass completed")
        finally:
            written.stored = await _write_status(kind, body, patch)


STALLING = {403: "Forbidden", 422: "Invalid"}


def _server_message(exc: ApiError) -> str:
    try:
        message = str(json.loads(exc.body).get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    return message or str(exc)


async def _write_status(kind: str, body: kopf.Body, patch: kopf.Patch) -> dict[str, Any] | None:
    pending = patch.pop("status", None)
    if not pending:
        return None
    clean, dropped = finite(dict(pending))
    if dropped:
        STATUS_VALUES_DROPPED.labels(kind).inc(dropped)
    stored_status = body.get("status") or {}
    if all(stored_status.get(k) == v for k, v in clean.items()):
        # Nothing changed: no write, and so no watch event for every watcher of the kind.
        STATUS_WRITES_SKIPPED.labels(kind).inc()
        return None
    meta = body.get("metadata", {})
    where = (body["apiVersion"], kind, meta.get("namespace"), meta["name"])
    from modelops.controllers.main import runtime  # main imports the controllers

    try:
        stored = await runtime.cluster.patch(*where, {"status": clean}, subresource="status")
    except ApiError as exc:
        STATUS_WRITE_ERRORS.labels(kind, str(exc.status)).inc()
        if exc.status == 404:
            return None  # deleted meanwhile
        if exc.status not in (400, 422):
            raise kopf.TemporaryError(f"status not written: {exc}", delay=2) from exc
        refused = _server_message(exc)
    else:
        if pruned := pruned_fields(clean, stored.get("status") or {}):
            # The CRD's schema lacks a field the controller writes: a bug, never silent.
            STATUS_FIELDS_PRUNED.labels(kind).inc(len(pruned))
            logger.error("%s status fields pruned by the server: %s", kind, ", ".join(pruned))
        return stored
    conditions, _ = set_condition(
        list(body.get("status", {}).get("conditions", [])),
        "Ready",
        "Unknown",
        "StatusRejected",
        f"the API server refused this status: {refused}"[:1000],
        meta.get("generation"),
    )
    try:
        await runtime.cluster.patch(
            *where, {"status": {"conditions": conditions}}, subresource="status"
        )
    except ApiError as exc:
        STATUS_WRITE_ERRORS.labels(kind, str(exc.status)).inc()
        raise kopf.TemporaryError(f"status not written: {exc}", delay=5) from exc
    return None
