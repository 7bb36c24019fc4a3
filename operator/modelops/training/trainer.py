"""Fit, evaluate and store one model: the body of a TrainingRun's Job.

Every expected failure (missing dataset, missing target, estimator not allowed, data that
cannot be encoded) ends with exit code 2 and a one-line reason, written to stderr, to the
termination log and to ``summary.json`` in the store, so the operator can report it. An
unexpected exception ends with exit code 1 and is reported the same way, with reason
``TrainingFailed``.

A metric that cannot be measured (R² on one test row is NaN) is not written as if it had a
value: ``metrics`` holds finite numbers only, and ``unmeasured`` says why each other one is
missing. Every JSON the trainer writes is strict JSON (no NaN, no Infinity).

With ``spec.fairness``, the sensitive columns are read from the dataset (a missing one fails
the run, ``SensitiveFeatureMissing``), split with the same rows as the features, and assessed
on the held-out rows (:mod:`modelops.training.fairness`); their scalars join ``metrics`` (so
gates read them) and the table goes to ``summary["fairness"]``. A sensitive column is not a
model input unless ``dataset.features`` names it: by default the features are every column
but the target and the sensitive ones.

``probe.json`` keeps up to ``PROBE_ROWS`` held-out rows (inputs only, as the model took them)
and the model's predictions on them: ``modelops reproduce`` predicts them again with a model
trained anew and compares. Layout::

    {"schemaVersion": 1, "task": "classification", "features": ["a", "colour"],
     "categorical": ["colour"], "inputs": {"a": [0.1, ...], "colour": ["red", ...]},
     "predictions": ["1", ...]}      # classes as text; a regressor's as numbers
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from pydantic import ValidationError
from sklearn.base import BaseEstimator, is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from modelops.api.trainingrun import TrainingRunSpec
from modelops.drift.profile import build_profile
from modelops.storage import ArtifactError, ArtifactStore, Location, sha256_hex
from modelops.training import fairness
from modelops.training.estimators import EstimatorError, build
from modelops.training.metrics import split_finite

MAX_CATEGORIES = 100
"""A text column with more distinct values than this is not treated as categorical."""
PROBE_ROWS = 50
"""Held-out rows kept in ``probe.json`` with the model's predictions on them."""
PROBE_SCHEMA = 1


class TrainingError(Exception):
    """An expected failure; ``reason`` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Prepared:
    frame: pd.DataFrame
    target: pd.Series
    features: list[str]
    categorical: list[str]
    sensitive: pd.DataFrame | None = None
    """The sensitive columns as read (``spec.fairness``), row for row with ``frame``."""


def read_dataset(data: bytes, uri: str, fmt: str | None) -> pd.DataFrame:
    fmt = fmt or ("parquet" if uri.endswith((".parquet", ".pq")) else "csv")
    try:
        if fmt == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data))
    except Exception as exc:
        raise TrainingError("InvalidDataset", f"cannot read {uri} as {fmt}: {exc}") from None


def prepare(frame: pd.DataFrame, spec: TrainingRunSpec) -> Prepared:
    ds = spec.dataset
    if ds.target not in frame.columns:
        raise TrainingError(
            "MissingTarget",
            f"target column {ds.target!r} is not in the dataset (columns: "
            f"{', '.join(map(str, frame.columns[:20]))})",
        )
    sensitive = list(spec.fairness.sensitive_features) if spec.fairness else []
    if absent := [c for c in sensitive if c not in frame.columns]:
        raise TrainingError(
            "SensitiveFeatureMissing",
            f"sensitive feature column(s) not in the dataset: {absent} (columns: "
            f"{', '.join(map(str, frame.columns[:20]))})",
        )
    features = ds.features or [
        str(c) for c in frame.columns if c != ds.target and c not in sensitive
    ]
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise TrainingError("MissingFeature", f"feature column(s) not in dataset: {missing}")
    if not features:
        raise TrainingError("InvalidDataset", "the dataset has no feature columns")
    forced = set(ds.categorical or [])
    categorical: list[str] = []
    X = frame[features].copy()
    for name in features:
        col = X[name]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if numeric and name not in forced:
            if col.isna().any():
                raise TrainingError(
                    "UnencodableData", f"numeric column {name!r} has missing values"
                )
            continue
        distinct = col.nunique(dropna=False)
        if distinct > MAX_CATEGORIES:
            raise TrainingError(
                "UnencodableData",
                f"column {name!r} is non-numeric with {distinct} distinct values "
                f"(at most {MAX_CATEGORIES} can be encoded as categories)",
            )
        X[name] = col.astype(str)
        categorical.append(name)
    if len(frame) < 10:
        raise TrainingError("InvalidDataset", f"the dataset has only {len(frame)} rows")
    groups = frame[sensitive].copy() if sensitive else None
    return Prepared(X, frame[ds.target], features, categorical, groups)


def model_input(frame: pd.DataFrame, categorical: list[str]) -> Any:
    """What the estimator takes: the frame when a column is categorical (the pipeline
    encodes it by name), else a float64 matrix."""
    return frame if categorical else frame.to_numpy(np.float64)


def make_model(spec: TrainingRunSpec, prepared: Prepared) -> BaseEstimator:
    estimator = build(spec.estimator.name, dict(spec.estimator.params), spec.seed)
    if not prepared.categorical:
        return estimator
    encode = ColumnTransformer(
        [("categories", OneHotEncoder(handle_unknown="ignore"), prepared.categorical)],
        remainder="passthrough",
    )
    return Pipeline([("encode", encode), ("estimator", estimator)])


def evaluate(model: Any, classifier: bool, X: Any, y: Any) -> dict[str, float]:
    """The raw scores on the held-out rows; a score that is undefined comes out NaN."""
    predicted = model.predict(X)
    if classifier:
        return {
            "accuracy": round(float(accuracy_score(y, predicted)), 6),
            "f1": round(float(f1_score(y, predicted, average="macro")), 6),
        }
    return {
        "r2": round(float(r2_score(y, predicted)), 6),
        "mae": round(float(mean_absolute_error(y, predicted)), 6),
    }


def datatype(series: pd.Series, categorical: bool) -> str:
    if categorical:
        return "BYTES"
    return "INT64" if pd.api.types.is_integer_dtype(series) else "FP64"


def train(spec: TrainingRunSpec, store: ArtifactStore, output: Location) -> dict[str, Any]:
    """Run the whole training; return the summary that was stored."""
    source = Location.parse(spec.dataset.uri)
    try:
        raw = store.get(source)
    except ArtifactError as exc:
        raise TrainingError("DatasetMissing", str(exc)) from None
    digest = sha256_hex(raw)
    if spec.dataset.sha256 and digest != spec.dataset.sha256:
        raise TrainingError(
            "DatasetChanged",
            f"{spec.dataset.uri} has sha256 {digest}, dataset.sha256 asks for "
            f"{spec.dataset.sha256}",
        )
    prepared = prepare(read_dataset(raw, spec.dataset.uri, spec.dataset.format), spec)
    try:
        model = make_model(spec, prepared)
    except EstimatorError as exc:
        raise TrainingError("EstimatorNotAllowed", str(exc)) from None
    classifier = is_classifier(model)
    X: Any = model_input(prepared.frame, prepared.categorical)
    y = prepared.target.to_numpy()
    stratify = y if classifier and pd.Series(y).value_counts().min() >= 2 else None
    # Row numbers split with the data (the split depends on the row count alone), so the
    # sensitive columns follow the held-out rows.
    rows = np.arange(len(y))
    try:
        X_train, X_test, y_train, y_test, _, test_rows = train_test_split(
            X, y, rows, test_size=spec.test_size, random_state=spec.seed, stratify=stratify
        )
    except ValueError as exc:
        raise TrainingError(
            "InvalidDataset", f"cannot hold out testSize {spec.test_size} of {len(y)} rows: {exc}"
        ) from None
    try:
        model.fit(X_train, y_train)
    except (TypeError, ValueError) as exc:
        raise TrainingError("InvalidParams", f"fit failed: {exc}") from None
    with warnings.catch_warnings():  # an undefined score is reported below, not warned about
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        scores = evaluate(model, classifier, X_test, y_test)
    metrics, unmeasured = split_finite(scores, len(y_test))
    classes = [str(c) for c in getattr(model, "classes_", [])] if classifier else None
    predicted = model.predict(X_test)
    assessment = _assess_fairness(spec, prepared, test_rows, y_test, predicted, classes)
    if assessment is not None:
        metrics.update(assessment.metrics)
        unmeasured.update(assessment.unmeasured)

    reference = pd.DataFrame(X_train, columns=prepared.features)
    profile = build_profile(
        reference,
        categorical=prepared.categorical,
        predictions=[str(p) for p in model.predict(X_train)] if classifier else None,
    )
    model_bytes = sio.dumps(model)
    profile_bytes = json.dumps(profile, separators=(",", ":")).encode()
    artifact = _put(store, output, "model.skops", model_bytes)
    profile_ref = _put(store, output, "profile.json", profile_bytes)
    probe = probe_document(prepared, X_test, predicted, classifier)
    probe_ref = _put(store, output, "probe.json", _json(probe))
    store.put(Location(output.bucket, f"{output.key}/metrics.json"), _json(metrics))
    summary: dict[str, Any] = {
        "ok": True,
        "task": "classification" if classifier else "regression",
        "metrics": metrics,
        **({"unmeasured": unmeasured} if unmeasured else {}),
        "artifact": artifact,
        "profile": profile_ref,
        "probe": probe_ref,
        **({"fairness": assessment.record} if assessment is not None else {}),
        "signature": {
            "task": "classification" if classifier else "regression",
            "inputs": [
                _feature(name, prepared.frame[name], name in prepared.categorical)
                for name in prepared.features
            ],
            **({"classes": classes} if classes is not None else {}),
        },
        "dataset": {"uri": spec.dataset.uri, "sha256": digest, "rows": len(y)},
        "rows": {"train": len(y_train), "test": len(y_test)},
    }
    store.put(Location(output.bucket, f"{output.key}/summary.json"), _json(summary))
    return summary


def _assess_fairness(
    spec: TrainingRunSpec,
    prepared: Prepared,
    test_rows: Any,
    y_test: Any,
    predicted: Any,
    classes: list[str] | None,
) -> fairness.Assessment | None:
    """The fairness of the held-out predictions, when the spec asks for it."""
    if spec.fairness is None or prepared.sensitive is None:
        return None
    groups = prepared.sensitive.iloc[test_rows].reset_index(drop=True)
    try:
        return fairness.assess(
            y_test,
            predicted,
            groups,
            spec.fairness.metrics_for(spec.estimator.name),
            classes=classes,
            positive_label=spec.fairness.positive_label,
        )
    except ValueError as exc:
        raise TrainingError("UnknownPositiveLabel", str(exc)) from None


def probe_document(
    prepared: Prepared, X_test: Any, predicted: Any, classifier: bool
) -> dict[str, Any]:
    """The first ``PROBE_ROWS`` held-out rows with finite values and the model's predictions
    on them (see the module docstring for the layout)."""
    frame = pd.DataFrame(X_test, columns=prepared.features).reset_index(drop=True)
    answers = pd.Series(list(predicted))
    keep = np.ones(len(frame), dtype=bool)
    for name in prepared.features:  # strict JSON: an infinite input cannot be written
        if name not in prepared.categorical:
            keep &= np.isfinite(frame[name].to_numpy(np.float64))
    if not classifier:
        keep &= np.isfinite(answers.to_numpy(np.float64))
    frame, answers = frame[keep].head(PROBE_ROWS), answers[keep].head(PROBE_ROWS)
    inputs = {
        name: (
            frame[name].astype(str).tolist()
            if name in prepared.categorical
            else frame[name].tolist()
        )
        for name in prepared.features
    }
    return {
        "schemaVersion": PROBE_SCHEMA,
        "task": "classification" if classifier else "regression",
        "features": prepared.features,
        "categorical": prepared.categorical,
        "inputs": inputs,
        "predictions": [str(p) for p in answers] if classifier else [float(p) for p in answers],
    }


def _json(data: Any) -> bytes:
    """Strict JSON: a NaN or an Infinity is a bug here, never a value to store."""
    return json.dumps(data, allow_nan=False).encode()


def _feature(name: str, series: pd.Series, categorical: bool) -> dict[str, Any]:
    feature: dict[str, Any] = {"name": name, "datatype": datatype(series, categorical)}
    if categorical:
        feature["categories"] = sorted(series.astype(str).unique().tolist())
    return feature


def _put(store: ArtifactStore, prefix: Location, name: str, data: bytes) -> dict[str, Any]:
    loc = Location(prefix.bucket, f"{prefix.key}/{name}")
    return {"uri": loc.uri, "sha256": store.put(loc, data), "size": len(data)}


def _write_termination(path: Path | None, summary: dict[str, Any]) -> None:
    if path is None:
        return
    # Kubernetes keeps at most 4096 bytes of a termination message: keep the small parts.
    keys = ("ok", "reason", "message", "metrics", "unmeasured", "artifact")
    small = {k: summary[k] for k in keys if k in summary}
    # Outside a pod the path may not exist; the store has the summary anyway.
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(small)[:4096])


def main(spec_json: str, output_uri: str, termination_log: Path | None) -> int:
    output = Location.parse(output_uri.rstrip("/"))
    store: ArtifactStore | None = None
    try:
        try:
            spec = TrainingRunSpec.model_validate_json(spec_json)
        except ValidationError as exc:
            raise TrainingError("InvalidSpec", str(exc).replace("\n", "; ")) from None
        store = ArtifactStore.from_env()
        summary = train(spec, store, output)
    except (TrainingError, ArtifactError) as exc:
        print(f"training failed: {exc.reason}: {exc}", file=sys.stderr)
        _report_failure(store, output, termination_log, exc.reason, str(exc))
        return 2
    except Exception as exc:  # a bug or a surprise: still say what happened, then fail
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}".replace("\n", "; ")[:1000]
        _report_failure(store, output, termination_log, "TrainingFailed", message)
        return 1
    _write_termination(termination_log, summary)
    print(json.dumps({k: summary[k] for k in ("metrics", "artifact")}))
    return 0


def _report_failure(
    store: ArtifactStore | None,
    output: Location,
    termination_log: Path | None,
    reason: str,
    message: str,
) -> None:
    """The failure, to the store's ``summary.json`` (where the operator reads it) and the
    termination log (where ``kubectl describe pod`` shows it)."""
    failure = {"ok": False, "reason": reason, "message": message}
    if store is not None:
        try:
            store.put(Location(output.bucket, f"{output.key}/summary.json"), _json(failure))
        except Exception as put_exc:
            print(f"could not store the failure summary: {put_exc}", file=sys.stderr)
    _write_termination(termination_log, failure)
