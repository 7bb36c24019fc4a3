"""The fast paths give exactly what ``predict``/``predict_proba`` give, or are not used."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from modelops.api.modelversion import Signature
from modelops.serving.predictors import ForestFast, LogisticFast, Predictor, build, probe_rows
from modelops.serving.protocol import Layout


def layout(width: int) -> Layout:
    return Layout.of(
        Signature.model_validate(
            {
                "task": "classification",
                "inputs": [{"name": f"f{i}", "datatype": "FP64"} for i in range(width)],
            }
        )
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=600, n_features=6, n_informative=4, n_classes=3, random_state=1
    )
    return X, y, np.where(y == 0, "no", "yes")


@pytest.mark.parametrize("labels", ["multiclass", "binary-str"])
def test_logistic_fast_path_is_identical(data: tuple[np.ndarray, ...], labels: str) -> None:
    X, y, y_bin = data
    target = y if labels == "multiclass" else y_bin
    model = LogisticRegression(max_iter=500).fit(X, target)
    predictor = build(model, layout(6), None)
    assert isinstance(predictor, LogisticFast)
    rows = np.random.default_rng(0).normal(0, 3, (2000, 6))
    got = predictor.classes[predictor.predict(rows)]  # type: ignore[index]
    np.testing.assert_array_equal(got, model.predict(rows))
    np.testing.assert_array_equal(predictor.predict_proba(rows), model.predict_proba(rows))


def test_forest_fast_path_is_identical(data: tuple[np.ndarray, ...]) -> None:
    X, y, _ = data
    model = RandomForestClassifier(n_estimators=15, random_state=0).fit(X, y)
    predictor = build(model, layout(6), None)
    assert isinstance(predictor, ForestFast)
    rows = np.random.default_rng(1).normal(0, 2, (2000, 6))
    np.testing.assert_array_equal(
        predictor.predict(rows), np.searchsorted(model.classes_, model.predict(rows))
    )
    np.testing.assert_array_equal(predictor.predict_proba(rows), model.predict_proba(rows))


def test_other_estimators_use_plain_predict(data: tuple[np.ndarray, ...]) -> None:
    X, y, _ = data
    gb = GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X, y)
    assert type(build(gb, layout(6), None)) is Predictor
    reg = build(LinearRegression().fit(X, X[:, 0] * 2.0), layout(6), None)
    assert type(reg) is Predictor and reg.classes is None
    np.testing.assert_allclose(reg.predict(X[:3]), X[:3, 0] * 2.0)


def test_a_fast_path_that_disagrees_is_dropped(
    data: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y, _ = data
    model = LogisticRegression(max_iter=500).fit(X, y)
    monkeypatch.setattr(LogisticFast, "predict", lambda self, rows: np.zeros(len(rows), np.intp))
    assert type(build(model, layout(6), None)) is Predictor


def test_probe_rows_follow_the_profile() -> None:
    profile = {"features": {"f0": {"edges": [10.0, 20.0, 30.0]}}}
    rows = probe_rows(layout(2), profile, n=400)
    assert rows.shape == (400, 2)
    assert rows[:, 0].min() >= 8.0 and rows[:, 0].max() <= 32.0
    assert set(np.round(rows[:, 0], 9)) & {10.0, 20.0, 30.0}
