"""The ModelVersion a successful TrainingRun registers."""

from __future__ import annotations

from typing import Any

from modelops import API_VERSION
from modelops.api.modelversion import ModelVersionSpec
from modelops.api.trainingrun import TrainingRun
from modelops.resources.common import MODEL_LABEL, RUN_UID_LABEL, labels

VERSION_LABEL = "modelops.dev/version"


def version_name(model: str, number: int) -> str:
    return f"{model}-v{number}"


def next_number(existing: list[dict[str, Any]]) -> int:
    numbers = [int(mv.get("spec", {}).get("version", 0)) for mv in existing]
    return max(numbers, default=0) + 1


def model_version(
    run: TrainingRun, summary: dict[str, Any], number: int, image: str
) -> dict[str, Any]:
    meta = run.metadata
    spec = ModelVersionSpec.model_validate(
        {
            "model": run.spec.model,
            "version": number,
            "artifact": summary["artifact"],
            "profile": summary.get("profile"),
            "signature": summary["signature"],
            "metrics": summary["metrics"],
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
