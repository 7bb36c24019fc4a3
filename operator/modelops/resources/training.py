"""The batch/v1 Job that trains a TrainingRun's model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelops import API_VERSION, GROUP
from modelops.api.trainingrun import RetrainTrigger, TrainingRun
from modelops.resources.common import (
    RUN_UID_LABEL,
    TMP_VOLUME,
    child_name,
    container_security_context,
    labels,
    pod_security_context,
    store_env,
    with_defaults,
)
from modelops.settings import Settings
from modelops.storage import run_prefix
from modelops.training.metrics import (
    FAIRNESS_LOWER_IS_BETTER,
    FAIRNESS_SCALARS,
    is_finite,
    split_finite,
    unmeasured_message,
)


def job_name(run_name: str) -> str:
    return child_name(run_name, "train")


def output_uri(run: TrainingRun, settings: Settings) -> str:
    meta = run.metadata
    return run_prefix(settings.bucket, meta["namespace"], run.spec.model, meta["uid"]).uri


def training_job(run: TrainingRun, settings: Settings) -> dict[str, Any]:
    meta = run.metadata
    spec = run.spec
    name = job_name(meta["name"])
    pod_labels = {**labels("trainer", meta["name"], spec.model), RUN_UID_LABEL: meta["uid"]}
    container = {
        "name": "trainer",
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "modelops", "train"],
        "args": [
            "--spec",
            json.dumps(spec.wire(), sort_keys=True, separators=(",", ":")),
            "--output",
            output_uri(run, settings),
            "--termination-log",
            "/dev/termination-log",
        ],
        "env": [*store_env(settings), {"name": "HOME", "value": "/tmp"}],
        "resources": with_defaults(spec.resources.model_dump(), cpu="500m", memory="1Gi"),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": pod_labels},
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": dict(pod_labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }


TRIGGER_ANNOTATION = f"{GROUP}/trigger"
"""On a retraining TrainingRun: drift, quality, new-data or schedule (also a label)."""
TRIGGER_DETAIL_ANNOTATION = f"{GROUP}/trigger-detail"
"""On a retraining TrainingRun: why, in one line."""
MAX_DETAIL = 1024


def retrain_run(
    monitor: str,
    namespace: str,
    number: int,
    template: dict[str, Any],
    trigger: RetrainTrigger = "drift",
    detail: str = "",
) -> dict[str, Any]:
    """The TrainingRun a DriftMonitor creates: ``<monitor>-retrain-<number>``, so a name is
    fixed before creation (restart-safe), labelled with its monitor and trigger and
    annotated with the trigger (``drift`` by default, the first there was) and ``detail``
    (cut to 1024 characters)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {
            "name": child_name(monitor, f"retrain-{number}"),
            "namespace": namespace,
            "labels": {f"{GROUP}/drift-monitor": monitor, TRIGGER_ANNOTATION: trigger},
            "annotations": {
                TRIGGER_ANNOTATION: trigger,
                TRIGGER_DETAIL_ANNOTATION: detail[:MAX_DETAIL],
            },
        },
        "spec": template,
    }


LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "log_loss"}) | FAIRNESS_LOWER_IS_BETTER
"""Metrics a gate bounds from above (``at most``): errors, and the fairness differences
between groups (``demographic_parity_difference``, ``equalized_odds_difference``,
``accuracy_difference``, ``recall_difference``, ``mae_difference``) and ``mae_group_max``.
Every other gate is a lower bound (``at least``), ``accuracy_group_min`` included."""


def job_outcome(job: dict[str, Any]) -> tuple[str, str]:
    """(Pending|Running|Succeeded|Failed, reason) read off a Job's status."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "Succeeded", "JobComplete"
        if cond.get("type") == "Failed":
            return "Failed", cond.get("reason") or "JobFailed"
    if status.get("succeeded"):
        return "Succeeded", "JobComplete"
    if status.get("active"):
        return "Running", "JobRunning"
    return "Pending", "JobPending"


def job_failure(job: dict[str, Any]) -> str:
    """The message of a Job's ``Failed`` condition (e.g. "Job has reached the specified
    backoff limit"), or "" when it has none."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("message") or "")
    return ""


def failure(job_reason: str, job_message: str, summary: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, message) of a run whose Job failed.

    The trainer's own reason and message when it wrote them (MissingTarget, ...); else the
    Job controller's (BackoffLimitExceeded, DeadlineExceeded, ...): a trainer killed by the
    deadline, or one that never started, writes nothing.
    """
    reason = summary.get("reason")
    if isinstance(reason, str) and reason and not summary.get("ok"):
        return reason, str(summary.get("message") or f"training failed ({reason})")
    message = f"training Job failed ({job_reason})"
    return job_reason, f"{message}: {job_message}" if job_message else message


def gate_failures(
    metrics: Mapping[str, float],
    gates: Mapping[str, float],
    unmeasured: Mapping[str, str] | None = None,
) -> list[str]:
    """Why the metrics miss the gates, one phrase per gate; empty when all pass.

    A gate is a lower bound, or an upper bound for a name in :data:`LOWER_IS_BETTER`
    (``demographic_parity_difference 0.31 > 0.1``). A gate on a metric that could not be
    measured (absent, NaN, ±Infinity) fails: a guard that cannot be evaluated fails closed.
    ``unmeasured`` gives the reason when it is known.
    """
    unmeasured = unmeasured or {}
    failures = []
    for name, bound in sorted(gates.items()):
        value = metrics.get(name)
        if name in unmeasured:
            failures.append(unmeasured[name])
        elif value is None:
            failures.append(f"{name} was not measured")
        elif not is_finite(value):
            failures.append(unmeasured_message(name, value, None))
        elif name in LOWER_IS_BETTER and value > bound:
            failures.append(f"{name} {value:g} > {bound:g}")
        elif name not in LOWER_IS_BETTER and value < bound:
            failures.append(f"{name} {value:g} < {bound:g}")
    return failures


def metrics_summary(metrics: Mapping[str, float]) -> str:
    """The finite metrics on one line, e.g. ``accuracy=0.974 f1=0.973``; the fairness
    scalars are left to ``status.metrics`` (the line is a ``kubectl get`` column)."""
    return " ".join(
        f"{k}={v:.3f}"
        for k, v in sorted(metrics.items())
        if is_finite(v) and k not in FAIRNESS_SCALARS
    )


@dataclass(frozen=True)
class Evaluation:
    """A finished trainer's metrics as the operator reports them: finite numbers only."""

    metrics: dict[str, float] = field(default_factory=dict)
    """What was measured; what goes into ``status.metrics`` and the ModelVersion."""
    unmeasured: dict[str, str] = field(default_factory=dict)
    """Each metric that has no value, and why (``r2 could not be measured (1 test row)``)."""

    @property
    def summary(self) -> str:
        """One line for ``status.message`` and the Ready condition."""
        parts = [metrics_summary(self.metrics) or "no metric measured"]
        return "; ".join(parts + [self.unmeasured[k] for k in sorted(self.unmeasured)])


def evaluation(summary: Mapping[str, Any]) -> Evaluation:
    """The metrics of a trainer's summary, without NaN or ±Infinity whoever wrote them.

    A current trainer writes finite ``metrics`` plus ``unmeasured`` reasons; an older one
    wrote ``NaN`` into ``metrics`` (which ``json.loads`` accepts): both read the same.
    """
    rows = (summary.get("rows") or {}).get("test")
    test_rows = rows if isinstance(rows, int) and not isinstance(rows, bool) else None
    metrics, unmeasured = split_finite(summary.get("metrics") or {}, test_rows)
    for name, why in (summary.get("unmeasured") or {}).items():
        if str(name) not in metrics:
            unmeasured[str(name)] = str(why)
    return Evaluation(metrics, unmeasured)
