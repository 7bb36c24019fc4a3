"""Operator start-up: settings, storage, metrics, and the Kopf run loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tracemalloc
from functools import cache
from typing import Any

import kopf
from prometheus_client import start_http_server

from modelops import GROUP
from modelops.controllers import leader
from modelops.controllers.cluster import Cluster
from modelops.settings import Settings
from modelops.storage import ArtifactStore


@cache
def get_settings() -> Settings:
    return Settings()


class Runtime:
    """What handlers share: the API client and the artifact store, made at start-up."""

    cluster: Cluster
    store: ArtifactStore


runtime = Runtime()


def operator_store(config: Settings) -> ArtifactStore:
    """The operator's own store client; its credentials come from its own environment."""
    try:
        access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    except KeyError as exc:
        raise kopf.PermanentError(f"object-store credentials missing: {exc} not set") from None
    return ArtifactStore(config.s3_endpoint, access, secret, secure=config.s3_secure)


KOPF_BACKOFFS = (1, 1, 2, 3, 5, 8, 13, 21, 30, 30, 30, 30, 30, 30, 30, 30, 30)
"""Seconds between Kopf's retries of a failed API request (about 5 minutes in all)."""


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    config = get_settings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 70
    settings.networking.request_timeout = 30
    # Kopf's own calls (watches, its patches) ride out an API outage of about 5 minutes before
    # giving up (its default is 1 minute, after which the operator exits).
    settings.networking.error_backoffs = KOPF_BACKOFFS
    if [n for n in config.namespaces.split(",") if n]:
        # Fixed namespaces: nothing to discover. Scanning would list Namespaces and CRDs
        # cluster-wide, which a namespace-scoped role does not allow.
        settings.scanning.disabled = True
    runtime.cluster = Cluster.login(settings)
    runtime.store = operator_store(config)
    try:
        await asyncio.to_thread(runtime.store.ensure_bucket, config.bucket)
    except Exception as exc:  # a store that refuses bucket creation may still serve objects
        logger.warning("could not ensure bucket %s exists: %s", config.bucket, exc)
    if config.metrics_port:
        start_http_server(config.metrics_port)
    logger.info(
        "modelops operator configured: store=%s bucket=%s metrics=:%s",
        config.s3_endpoint,
        config.bucket,
        config.metrics_port,
    )


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    if hasattr(runtime, "cluster"):
        await runtime.cluster.close()


def _log_allocations(*_: object) -> None:
    """SIGUSR1 with ``PYTHONTRACEMALLOC=N`` set: log where the most memory was allocated
    (the 25 largest sites, by N frames of traceback), to find what grows with the objects."""
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    lines = [f"traced {total / 2**20:.1f} MiB; largest allocation sites:"]
    for stat in snapshot.statistics("traceback")[:25]:
        lines.append(f"{stat.size / 2**20:8.1f} MiB {stat.count:9d} blocks")
        lines.extend(f"    {frame}" for frame in stat.traceback.format(limit=8))
    logging.getLogger(__name__).warning("\n".join(lines))


def _quiet_wakeups(record: logging.LogRecord) -> bool:
    """False for Kopf's "Handler 'wake_...' succeeded." (modelops.controllers.watches)."""
    message = record.getMessage()
    return not (message.startswith("Handler 'wake_") and message.endswith("' succeeded."))


def run_operator(*, verbose: bool = False) -> int:
    # Importing a controller registers its handlers.
    import modelops.controllers.deployment
    import modelops.controllers.driftmonitor
    import modelops.controllers.modelversion
    import modelops.controllers.trainingrun
    import modelops.controllers.watches

    config = get_settings()
    if config.mlflow_tracking_uri:  # off by default: without a URI, no MLflow handler exists
        import modelops.controllers.mlflow_sync  # noqa: F401
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if tracemalloc.is_tracing():
        signal.signal(signal.SIGUSR1, _log_allocations)
    # One line per watch event that wakes a loop would drown the log.
    logging.getLogger("kopf.objects").addFilter(_quiet_wakeups)
    namespaces = [n for n in config.namespaces.split(",") if n]
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None

    async def operate(stop: asyncio.Event) -> None:
        await kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop,
        )

    if not config.leader_election:  # the only replica: reconcile at once
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
        )
        return 0
    return asyncio.run(
        leader.run_as_leader(
            operate,
            namespace=config.pod_namespace,
            name=config.leader_election_id,
            pod_name=config.pod_name,
            health_port=config.health_port,
        )
    )
