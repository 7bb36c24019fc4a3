"""The floor of ``bench_operator.py``: a Kopf operator that does nothing but write one field.

It watches the modelops operator's four kinds with the same timers, intervals and filters as
``modelops.controllers`` (TrainingRuns while not finished, every ``MODELOPS_JOB_POLL_SECONDS``;
ModelVersions while not Ready, every 30 s) and the same Kopf settings; Deployments every
``MODELOPS_ROLLOUT_POLL_SECONDS`` and DriftMonitors every second, each checking at its
``spec.interval`` only, as the operator's Kopf timers did before it reconciled by events
(``modelops.controllers.loop``). Each pass writes
``status.observedGeneration`` (a DriftMonitor's check also ``lastCheckTime``) and nothing else:
no reads, no children, no store. What the real operator costs above this is its own work.

Run: ``kopf run --standalone --namespace NS tests/bench/noop_operator.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

import kopf

from modelops.api.common import parse_duration

GROUP, VERSION = "modelops.dev", "v1alpha1"
JOB_POLL = float(os.environ.get("MODELOPS_JOB_POLL_SECONDS", "5"))
ROLLOUT_POLL = float(os.environ.get("MODELOPS_ROLLOUT_POLL_SECONDS", "2"))
DRIFT_POLL = 1.0
REVERIFY = 30.0  # modelops.controllers.modelversion.REVERIFY_SECONDS (importing it registers it)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # As modelops.controllers.main.configure, for what bears on the API traffic.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 70
    settings.networking.request_timeout = 30
    settings.scanning.disabled = True  # fixed namespaces (--namespace), as the real one's


def _observed(body: kopf.Body, patch: kopf.Patch) -> None:
    patch.status["observedGeneration"] = body.get("metadata", {}).get("generation")


def _active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in ("Succeeded", "Failed")


def _not_ready(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") != "Ready"


@kopf.timer(GROUP, VERSION, "trainingruns", interval=JOB_POLL, when=_active)
async def training_run(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _observed(body, patch)


@kopf.timer(GROUP, VERSION, "modelversions", interval=REVERIFY, when=_not_ready)
async def model_version(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _observed(body, patch)


@kopf.timer(GROUP, VERSION, "deployments", interval=ROLLOUT_POLL)
async def deployment(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _observed(body, patch)


@kopf.timer(GROUP, VERSION, "driftmonitors", interval=DRIFT_POLL)
async def drift_monitor(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    status = body.get("status") or {}
    last = status.get("lastCheckTime")
    seen = status.get("observedGeneration") == body.get("metadata", {}).get("generation")
    now = dt.datetime.now(dt.UTC)
    if seen and last:
        checked = dt.datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        interval = parse_duration(str((body.get("spec") or {}).get("interval", "30s")))
        if (now - checked).total_seconds() < interval:
            return
    patch.status["lastCheckTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    _observed(body, patch)
