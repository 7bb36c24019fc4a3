"""ModelVersion controller: Ready only once the artifact exists and its sha256 matches."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from pydantic import ValidationError

from modelops import GROUP, VERSION
from modelops.api.common import now_iso
from modelops.api.modelversion import ModelVersion
from modelops.controllers.main import runtime
from modelops.controllers.status import StatusWriter, invalid_spec, reconciling
from modelops.resources.training import metrics_summary
from modelops.storage import ArtifactError, Location

REVERIFY_SECONDS = 30.0
"""How often a version that is not Ready is checked again (the artifact may appear)."""


def _not_ready(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") != "Ready"


def _deletes_artifacts(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("deletionPolicy") == "Delete"


# One level-triggered path per object: a timer fires at once for new and resumed objects,
# and event handlers stacked beside it would run concurrently with it on the same object.
@kopf.timer(GROUP, VERSION, "modelversions", interval=REVERIFY_SECONDS, when=_not_ready)
async def reconcile_model_version(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    async with reconciling("ModelVersion", body, patch):
        status = StatusWriter(body, patch)
        try:
            version = ModelVersion.model_validate(dict(body))
        except ValidationError as exc:
            status.set(phase="Failed", message=invalid_spec(exc))
            status.condition("Ready", "False", "InvalidSpec", invalid_spec(exc))
            return
        artifact = version.spec.artifact
        try:
            loc = Location.parse(artifact.uri)
            await asyncio.to_thread(runtime.store.get_verified, loc, artifact.sha256)
        except ArtifactError as exc:
            status.set(phase="Failed", message=str(exc))
            status.condition("Ready", "False", exc.reason, str(exc))
            return
        status.set(
            phase="Ready",
            verifiedAt=now_iso(),
            message=f"sha256 {artifact.sha256[:12]} verified",
            metricsSummary=metrics_summary(version.spec.metrics),
        )
        status.condition("Ready", "True", "Verified", f"artifact {artifact.uri} verified")


@kopf.on.delete(GROUP, VERSION, "modelversions", when=_deletes_artifacts)
async def delete_artifacts(spec: kopf.Spec, logger: kopf.Logger, **_: Any) -> None:
    """deletionPolicy Delete: remove the run's objects; Retain keeps them (and no finalizer)."""
    loc = Location.parse(spec["artifact"]["uri"])
    prefix = Location(loc.bucket, loc.key.rsplit("/", 1)[0] + "/")
    removed = await asyncio.to_thread(runtime.store.delete_prefix, prefix)
    logger.info("deleted %d objects under %s", removed, prefix.uri)
