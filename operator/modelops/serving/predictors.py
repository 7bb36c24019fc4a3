"""Batch prediction, with exact fast paths for the two estimators that dominate serving cost.

scikit-learn's ``predict`` re-validates its input on every call (hundreds of microseconds in
1.9, and a joblib dispatch per call for forests), which on the serving hot path costs more than
the model itself. For LogisticRegression and RandomForestClassifier we call the same numpy and
Cython routines ``predict`` ends in, on input the protocol layer has already validated; a
fast path is kept only if it gives bit-identical results to ``predict`` on a probe batch drawn
from the version's reference profile, else the version falls back to plain ``predict``.

Classifiers predict class *indices* into ``classes`` (what counting and JSON need).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import is_classifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from modelops.serving.protocol import Layout, Rows

logger = logging.getLogger(__name__)
IndexArray = npt.NDArray[np.intp]


class Predictor:
    """Plain ``estimator.predict`` on a batch."""

    kind = "predict"

    def __init__(self, estimator: Any, layout: Layout) -> None:
        self.estimator = estimator
        self.layout = layout
        self.classifier = bool(is_classifier(estimator))
        classes = getattr(estimator, "classes_", None) if self.classifier else None
        self.classes: npt.NDArray[Any] | None = None if classes is None else np.asarray(classes)
        # A numeric model fitted on a DataFrame warns (per call) when given a bare array.
        self._frame = not layout.numeric_only or hasattr(estimator, "feature_names_in_")

    def frame(self, rows: Rows) -> Any:
        if not self._frame:
            return rows
        return pd.DataFrame(rows, columns=list(self.layout.names))

    def predict(self, rows: Rows) -> npt.NDArray[Any]:
        """Class indices for classifiers, float64 values for regressors."""
        out = self.estimator.predict(self.frame(rows))
        if self.classes is None:
            return np.asarray(out, dtype=np.float64)
        return self.indices(np.asarray(out))

    def indices(self, labels: npt.NDArray[Any]) -> IndexArray:
        assert self.classes is not None
        # classes_ comes from np.unique, so it is sorted.
        return np.searchsorted(self.classes, labels).astype(np.intp)

    def predict_proba(self, rows: Rows) -> npt.NDArray[np.float64]:
        return np.asarray(self.estimator.predict_proba(self.frame(rows)), dtype=np.float64)

    @property
    def has_proba(self) -> bool:
        return self.classifier and hasattr(self.estimator, "predict_proba")


class LogisticFast(Predictor):
    """``LogisticRegression.predict``: argmax (or sign) of ``X @ coef_.T + intercept_``."""

    kind = "logistic-fast"

    def __init__(self, estimator: LogisticRegression, layout: Layout) -> None:
        super().__init__(estimator, layout)
        self._coef_t = estimator.coef_.T  # the same transposed view sklearn multiplies by
        self._intercept = estimator.intercept_

    def predict(self, rows: Rows) -> npt.NDArray[Any]:
        assert isinstance(rows, np.ndarray)
        scores = rows @ self._coef_t + self._intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            indices: IndexArray = (scores.reshape(-1) > 0).astype(np.intp)
        else:
            indices = np.argmax(scores, axis=1).astype(np.intp)
        return indices


class ForestFast(Predictor):
    """``RandomForestClassifier.predict_proba``: the mean of the trees' leaf values, summed in
    tree order as joblib's sequential backend does, without per-call validation."""

    kind = "forest-fast"

    def __init__(self, estimator: RandomForestClassifier, layout: Layout) -> None:
        super().__init__(estimator, layout)
        self._trees = [(e.tree_, int(e.n_classes_)) for e in estimator.estimators_]
        self._n_classes = int(estimator.n_classes_)

    def predict_proba(self, rows: Rows) -> npt.NDArray[np.float64]:
        assert isinstance(rows, np.ndarray)
        x32 = np.asarray(rows, dtype=np.float32)
        proba = np.zeros((x32.shape[0], self._n_classes), dtype=np.float64)
        for tree, n_classes in self._trees:
            proba += tree.predict(x32)[:, :n_classes]
        proba /= len(self._trees)
        return proba

    def predict(self, rows: Rows) -> npt.NDArray[Any]:
        indices: IndexArray = np.argmax(self.predict_proba(rows), axis=1).astype(np.intp)
        return indices


def build(estimator: Any, layout: Layout, profile: Mapping[str, Any] | None) -> Predictor:
    """The fastest predictor that agrees exactly with ``estimator.predict``."""
    plain = Predictor(estimator, layout)
    fast = _fast_candidate(estimator, layout)
    if fast is None:
        return plain
    probe = probe_rows(layout, profile)
    try:
        same = np.array_equal(fast.predict(probe), plain.predict(probe))
        if same and isinstance(fast, ForestFast):
            same = np.array_equal(fast.predict_proba(probe), plain.predict_proba(probe))
    except Exception as exc:  # any surprise in the fast path means: do not use it
        logger.warning("fast path %s failed its probe (%s); using predict()", fast.kind, exc)
        return plain
    if not same:
        logger.warning("fast path %s differs from predict(); using predict()", fast.kind)
        return plain
    return fast


def _fast_candidate(estimator: Any, layout: Layout) -> Predictor | None:
    if not layout.numeric_only or getattr(estimator, "n_features_in_", None) != layout.width:
        return None
    if type(estimator) is LogisticRegression and isinstance(estimator.coef_, np.ndarray):
        return LogisticFast(estimator, layout)
    if type(estimator) is RandomForestClassifier and estimator.n_outputs_ == 1:
        return ForestFast(estimator, layout)
    return None


def probe_rows(
    layout: Layout, profile: Mapping[str, Any] | None, n: int = 512, seed: int = 0
) -> npt.NDArray[np.float64]:
    """Numeric rows like the reference data (its bin edges, and points between them)."""
    rng = np.random.default_rng(seed)
    columns = []
    features = (profile or {}).get("features", {})
    for name in layout.names:
        edges = np.asarray(features.get(name, {}).get("edges") or [], dtype=np.float64)
        if edges.size >= 2:
            lo, hi = edges[0], edges[-1]
            span = hi - lo
            values = np.where(
                rng.random(n) < 0.5,
                rng.choice(edges, n),
                rng.uniform(lo - 0.1 * span, hi + 0.1 * span, n),
            )
        else:
            values = rng.normal(0.0, 1.0, n) * rng.choice([1.0, 10.0, 100.0], n)
        columns.append(values)
    return np.ascontiguousarray(np.column_stack(columns), dtype=np.float64)
