"""The ModelVersion a successful TrainingRun registers."""

from __future__ import annotations

import re
from typing import Any, get_args

from modelops import API_VERSION
from modelops.api.modelversion import ModelVersionSpec
from modelops.api.trainingrun import RetrainTrigger, TrainingRun
from modelops.resources.common import MODEL_LABEL, RUN_UID_LABEL, labels
from modelops.resources.training import (
    MAX_DETAIL,
    TRIGGER_ANNOTATION,
    TRIGGER_DETAIL_ANNOTATION,
)
from modelops.training.metrics import split_finite

VERSION_LABEL = "modelops.dev/version"


def version_name(model: str, number: int) -> str:
    return f"{model}-v{number}"


def taken_numbers(existing: list[dict[str, Any]], model: str | None = None) -> set[int]:
    """The version numbers of ``model`` that ``existing`` ModelVersions hold.

    A number is taken by the name ``<model>-v<N>`` whatever its labels and spec say (a
    version applied by hand has no labels), and by ``spec.version`` of a version of
    ``model`` whatever its name. ``model=None``: every ``spec.version``.
    """
    pattern = re.compile(rf"{re.escape(model)}-v([0-9]+)") if model else None
    taken: set[int] = set()
    for mv in existing:
        spec = mv.get("spec") or {}
        name = str((mv.get("metadata") or {}).get("name", ""))
        match = pattern.fullmatch(name) if pattern else None
        if match:
            taken.add(int(match.group(1)))
        version = spec.get("version")
        if (model is None or spec.get("model") == model) and isinstance(version, int):
            taken.add(version)
    return taken


def next_number(existing: list[dict[str, Any]], model: str | None = None) -> int:
    """One above the highest number taken, so numbers only grow: ``iris-v3`` after a
    hand-made ``iris-v2``, even when ``iris-v1`` is free (newest is always highest)."""
    return max(taken_numbers(existing, model), default=0) + 1


def model_version(
    run: TrainingRun,
    summary: dict[str, Any],
    number: int,
    image: str,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ModelVersion ``<model>-v<number>`` of a run's trainer ``summary``: artifact,
    profile, probe, signature, finite metrics (the fairness scalars among them), the fairness
    table, and the lineage (the run, its dataset and digest, estimator, params, seed, target,
    test size, ``image``); ``card`` is ``spec.card`` (``{json, html}`` refs) when written."""
    meta = run.metadata
    annotations = meta.get("annotations") or {}
    trigger = annotations.get(TRIGGER_ANNOTATION)
    # A trigger written by hand that is none of ours is left out, not refused.
    known = trigger in get_args(RetrainTrigger)
    detail = str(annotations.get(TRIGGER_DETAIL_ANNOTATION) or "")[:MAX_DETAIL] if known else ""
    spec = ModelVersionSpec.model_validate(
        {
            "model": run.spec.model,
            "version": number,
            "artifact": summary["artifact"],
            "profile": summary.get("profile"),
            "probe": summary.get("probe"),
            "fairness": summary.get("fairness"),
            "card": card,
            "signature": summary["signature"],
            # Finite numbers only: the API server refuses NaN, and it is no measurement.
            "metrics": split_finite(summary.get("metrics") or {})[0],
            "deletionPolicy": run.spec.registration.deletion_policy,
            "lineage": {
                "trainingRun": meta["name"],
                "runUid": meta["uid"],
                "datasetUri": summary["dataset"]["uri"],
                "datasetSha256": summary["dataset"].get("sha256"),
                "estimator": run.spec.estimator.name,
                "params": run.spec.estimator.params,
                "seed": run.spec.seed,
                "image": image,
                "trigger": trigger if known else None,
                "triggerDetail": detail or None,
                "target": run.spec.dataset.target,
                "testSize": run.spec.test_size,
                "datasetFormat": run.spec.dataset.format,
            },
        }
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": version_name(run.spec.model, number),
            "namespace": meta["namespace"],
            "labels": {
                **labels("model", meta["name"], run.spec.model),
                MODEL_LABEL: run.spec.model,
                RUN_UID_LABEL: meta["uid"],
                VERSION_LABEL: str(number),
            },
        },
        "spec": spec.wire(),
    }
