"""The allow-list of estimators, and the types skops may load back."""

from __future__ import annotations

import re
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from modelops.api.trainingrun import ESTIMATORS

ALLOWED: dict[str, type[BaseEstimator]] = {
    cls.__name__: cls
    for cls in (
        LogisticRegression,
        RandomForestClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        DecisionTreeClassifier,
        KNeighborsClassifier,
        LinearRegression,
        Ridge,
        Lasso,
        RandomForestRegressor,
        GradientBoostingRegressor,
        HistGradientBoostingRegressor,
        DecisionTreeRegressor,
    )
}
assert set(ALLOWED) == set(ESTIMATORS), "the API's allow-list and the trainer's must agree"


class EstimatorError(ValueError):
    pass


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def typed_param(value: Any) -> Any:
    """A constructor parameter as scikit-learn must see it.

    A number written as a string is that number: ``"1.0"`` -> ``1.0`` (float), ``"3"`` -> ``3``
    (int), ``"1e-3"`` -> ``0.001``; every other value is returned as is (``"sqrt"`` stays a
    string). Why: kubectl, Argo CD and the API server decode JSON numbers into Go's float64
    and encode one with no fraction as an integer, so ``max_features: 1.0`` (all features)
    arrives as ``1`` (one feature). Only a quoted ``"1.0"`` survives as a float.
    """
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if _INTEGER.fullmatch(text) else float(text)
    return value


def build(name: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """An unfitted estimator; only names on the allow-list, only parameters it declares."""
    cls = ALLOWED.get(name)
    if cls is None:
        raise EstimatorError(
            f"estimator {name!r} is not allowed; choose one of {', '.join(sorted(ALLOWED))}"
        )
    known = cls().get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise EstimatorError(f"{name} has no parameter(s) {', '.join(unknown)}")
    params = {key: typed_param(value) for key, value in params.items()}
    if "random_state" in known and "random_state" not in params:
        params = {**params, "random_state": seed}
    return cls(**params)


def trusted_types(data: bytes) -> list[str]:
    """The types in a skops file that we trust: sklearn and numpy internals only.

    Anything else (a pickled function, an arbitrary class) makes loading fail.
    """
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=data)
    allowed_prefixes = ("sklearn.", "numpy.", "scipy.")
    bad = [t for t in untrusted if not t.startswith(allowed_prefixes)]
    if bad:
        raise EstimatorError(f"model file holds untrusted types: {', '.join(bad)}")
    return list(untrusted)
