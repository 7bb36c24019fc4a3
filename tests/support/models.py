"""Real models for controller tests: trained by the real trainer code, stored in real S3."""

from __future__ import annotations

from functools import cache
from typing import Any

import pandas as pd
from sklearn.datasets import load_iris

from modelops import API_VERSION
from modelops.api.trainingrun import TrainingRunSpec
from modelops.storage import ArtifactStore, Location
from modelops.training.trainer import train


def iris_frame() -> pd.DataFrame:
    """sklearn's bundled iris, with plain column names and species as text."""
    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = [data.target_names[i] for i in frame.pop("target")]
    return frame


@cache
def _spec(seed: int) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {
            "model": "iris",
            "dataset": {"uri": "s3://modelops/datasets/iris.csv", "target": "species"},
            "estimator": {"name": "LogisticRegression", "params": {"max_iter": 300}},
            "seed": seed,
        }
    )


def train_version(store: ArtifactStore, number: int) -> dict[str, Any]:
    """Train iris with a seed per version; return the trainer's summary.

    Trained once per test module and shared by its tests, each in a namespace of its own, so
    the artifacts live under a prefix of no namespace (``fixtures/``).
    """
    out = Location("modelops", f"fixtures/iris/test-run-{number}")
    return train(_spec(number), store, out)


def model_version(
    summary: dict[str, Any], number: int, namespace: str, model: str = "iris"
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": f"{model}-v{number}",
            "namespace": namespace,
            "labels": {"modelops.dev/model": model},
        },
        "spec": {
            "model": model,
            "version": number,
            "artifact": summary["artifact"],
            "profile": summary["profile"],
            "signature": summary["signature"],
            "metrics": summary["metrics"],
            "lineage": {
                "trainingRun": f"test-run-{number}",
                "datasetUri": summary["dataset"]["uri"],
                "estimator": "LogisticRegression",
                "seed": number,
            },
        },
    }
