"""A DriftMonitor's live fairness step: gather the monitored version's joined labels per
sensitive group, decide ``spec.fairness`` (:mod:`modelops.fairness_rules`), report it
(condition ``FairnessViolated``, ``status.fairness``, phase, Events, gauges).

Called from the DriftMonitor controller after its quality step; never raises for what the
store does (``FairnessViolated=Unknown, reason=CheckFailed``), so the drift and quality
verdicts of the same pass stand.

Gauges: ``modelops_drift_fairness{namespace,name,metric}`` (the live metric, absent while it
has no value) and ``modelops_drift_fairness_violated{namespace,name}`` (1 while
``FairnessViolated`` is True).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from modelops.api.common import parse_duration
from modelops.api.driftmonitor import DriftMonitor
from modelops.controllers.main import get_settings, runtime
from modelops.controllers.metrics import FAIRNESS, FAIRNESS_VIOLATED, remove_series
from modelops.controllers.status import StatusWriter, report_verdict
from modelops.controllers.windows import merged_quality
from modelops.drift.fairness_live import RATES
from modelops.drift.quality import Task
from modelops.fairness_rules import (
    DETECTED_EVENT,
    FAIRNESS_CONDITION,
    RESTORED_EVENT,
    FairnessVerdict,
    evaluate,
)

CHECK_FAILED = "CheckFailed"


async def check_fairness(
    monitor: DriftMonitor,
    status: StatusWriter,
    version: str,
    mv: dict[str, Any] | None,
    logger: kopf.Logger,
) -> FairnessVerdict | None:
    """Decide ``spec.fairness`` for ``version`` (its ModelVersion ``mv``, None: not found)
    and report it; None when the monitor has no fairness rule (what an earlier rule left is
    removed)."""
    rule = monitor.spec.fairness
    namespace, name = monitor.metadata["namespace"], monitor.metadata["name"]
    if rule is None:
        forget_fairness(status, namespace, name)
        return None
    if mv is None:
        verdict = FairnessVerdict("Unknown", "NoTarget", f"ModelVersion {version} not found")
    else:
        try:
            verdict = await _verdict(monitor, version, mv)
        except Exception as exc:  # the store: the other verdicts of this pass stand
            logger.exception("DriftMonitor fairness check failed")
            verdict = FairnessVerdict("Unknown", CHECK_FAILED, f"{type(exc).__name__}: {exc}")
    _report(status, name, namespace, verdict)
    return verdict


async def _verdict(monitor: DriftMonitor, version: str, mv: dict[str, Any]) -> FairnessVerdict:
    spec, rule = monitor.spec, monitor.spec.fairness
    assert rule is not None
    mv_spec = mv.get("spec") or {}
    task: Task = mv_spec["signature"]["task"]
    classes = [str(c) for c in mv_spec["signature"].get("classes") or []]
    window = rule.window or (spec.quality.window if spec.quality else None) or spec.window
    prefix = f"{monitor.metadata['namespace']}/quality/{spec.deployment}/{version}/"
    live = await merged_quality(
        runtime.store, get_settings().bucket, prefix, parse_duration(window)
    )
    groups = live.groups.get(rule.sensitive_feature) if live else None
    labels = live.quality.labels if live and live.quality else 0
    positive = (mv_spec.get("fairness") or {}).get("positiveLabel")
    return evaluate(rule, task, version, classes, positive, groups, labels, window)


def _report(status: StatusWriter, name: str, namespace: str, verdict: FairnessVerdict) -> None:
    report_verdict(status, FAIRNESS_CONDITION, verdict, DETECTED_EVENT, RESTORED_EVENT)
    table = verdict.fairness
    # Every field written, None included: a merge patch would keep a stale sub-field.
    status.set(fairness=table.model_dump(by_alias=True, mode="json") if table else None)
    if verdict.fired and (status.patch.status.get("phase") or "") != "Underperforming":
        status.set(phase="FairnessViolated", message=verdict.message)
    for metric in RATES:
        if metric in verdict.gauges:
            FAIRNESS.labels(namespace, name, metric).set(verdict.gauges[metric])
        else:
            remove_series(FAIRNESS, namespace, name, metric)
    FAIRNESS_VIOLATED.labels(namespace, name).set(1 if verdict.fired else 0)


def fairness_unknown(
    body: Mapping[str, Any], status: StatusWriter, reason: str, message: str
) -> None:
    """``FairnessViolated=Unknown`` (no target, an invalid spec) when the monitor ``body``
    has a fairness rule; nothing otherwise."""
    if (body.get("spec") or {}).get("fairness") is None:
        return
    meta = body.get("metadata") or {}
    status.condition(FAIRNESS_CONDITION, "Unknown", reason, message)
    FAIRNESS_VIOLATED.labels(meta.get("namespace", ""), meta.get("name", "")).set(0)


def forget_fairness(status: StatusWriter, namespace: str, name: str) -> None:
    """A monitor whose fairness rule was removed: no condition, status or gauges left of it."""
    if "fairness" in (status.body.get("status") or {}):
        status.set(fairness=None)
    status.drop_condition(FAIRNESS_CONDITION)
    for metric in RATES:
        remove_series(FAIRNESS, namespace, name, metric)
    remove_series(FAIRNESS_VIOLATED, namespace, name)
