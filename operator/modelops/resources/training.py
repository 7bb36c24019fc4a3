"""The batch/v1 Job that trains a TrainingRun's model."""

from __future__ import annotations

import json
from typing import Any

from modelops import API_VERSION, GROUP
from modelops.api.trainingrun import TrainingRun
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


def retrain_run(
    monitor: str, namespace: str, number: int, template: dict[str, Any]
) -> dict[str, Any]:
    """The TrainingRun a DriftMonitor creates; its name is fixed by the retrain's number."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {
            "name": child_name(monitor, f"retrain-{number}"),
            "namespace": namespace,
            "labels": {f"{GROUP}/drift-monitor": monitor},
        },
        "spec": template,
    }


LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "log_loss"})


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


def gate_failures(metrics: dict[str, float], gates: dict[str, float]) -> list[str]:
    """Why the metrics miss the gates, one phrase per gate; empty when all pass."""
    failures = []
    for name, bound in sorted(gates.items()):
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} was not measured")
        elif name in LOWER_IS_BETTER and value > bound:
            failures.append(f"{name} {value:g} > {bound:g}")
        elif name not in LOWER_IS_BETTER and value < bound:
            failures.append(f"{name} {value:g} < {bound:g}")
    return failures


def metrics_summary(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
