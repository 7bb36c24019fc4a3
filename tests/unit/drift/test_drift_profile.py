"""Reference profiles: schema, feature kinds, bins and categories."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelops.drift import SCHEMA_VERSION, build_profile
from modelops.drift.profile import MAX_CATEGORIES, anchors


def _frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(5.0, 2.0, n),
            "k": rng.integers(0, 4, n),
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "flag": rng.random(n) < 0.3,
            "tier": pd.Categorical(rng.choice(["gold", "silver"], n)),
        }
    )


def test_profile_round_trips_through_json_with_schema_version() -> None:
    profile = build_profile(_frame())
    assert profile["schemaVersion"] == SCHEMA_VERSION == 1
    assert json.loads(json.dumps(profile, allow_nan=False)) == profile


def test_signature_lists_features_in_column_order_with_types() -> None:
    profile = build_profile(_frame())
    assert [(s["name"], s["type"]) for s in profile["signature"]] == [
        ("x", "numeric"),
        ("k", "numeric"),
        ("city", "categorical"),
        ("flag", "categorical"),
        ("tier", "categorical"),
    ]


def test_columns_named_categorical_are_categorical() -> None:
    feature = build_profile(_frame(), categorical=["k"])["features"]["k"]
    assert feature["kind"] == "categorical"
    assert sorted(feature["categories"]) == ["0", "1", "2", "3"]


def test_unknown_categorical_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown columns"):
        build_profile(_frame(), categorical=["nope"])


def test_numeric_summary_uses_population_std() -> None:
    frame = _frame()
    feature = build_profile(frame)["features"]["x"]
    assert feature["mean"] == pytest.approx(frame["x"].mean())
    assert feature["std"] == pytest.approx(float(np.std(frame["x"].to_numpy())))
    assert feature["unique"] == frame["x"].nunique()


def test_small_reference_keeps_every_value_as_edges_and_counts() -> None:
    values = np.random.default_rng(2).normal(size=800).round(2)
    feature = build_profile(pd.DataFrame({"x": values}), bins=50)["features"]["x"]
    assert feature["exact"]
    rebuilt = np.repeat(feature["edges"], feature["counts"][1:])
    assert np.array_equal(rebuilt, np.sort(values))


def test_large_reference_has_about_bins_quantile_edges() -> None:
    values = np.random.default_rng(3).lognormal(size=50_000)
    feature = build_profile(pd.DataFrame({"x": values}), bins=200)["features"]["x"]
    assert not feature["exact"]
    assert 190 <= len(feature["edges"]) <= 200
    assert np.all(np.diff(feature["edges"]) > 0)
    share = np.asarray(feature["counts"][1:-1]) / values.size
    assert share.max() < 2.0 / 200


def test_bin_counts_and_offsets_add_up_to_the_sample() -> None:
    values = np.random.default_rng(4).standard_t(3, size=20_000)
    feature = build_profile(pd.DataFrame({"x": values}), bins=100)["features"]["x"]
    counts = np.asarray(feature["counts"])
    total = np.sum(anchors(np.asarray(feature["edges"])) * counts + feature["offsets"])
    assert counts.sum() == values.size
    assert total == pytest.approx(values.sum(), abs=1e-6 * np.abs(values).sum())


def test_missing_and_infinite_values_are_counted_apart() -> None:
    frame = pd.DataFrame({"x": [1.0, np.nan, np.inf, 2.0], "c": ["a", None, "b", "a"]})
    features = build_profile(frame)["features"]
    assert (features["x"]["n"], features["x"]["missing"]) == (2, 2)
    assert (features["c"]["n"], features["c"]["missing"]) == (3, 1)


def test_categories_beyond_the_cap_go_to_other() -> None:
    names = [f"id{i:05d}" for i in range(MAX_CATEGORIES + 50)]
    feature = build_profile(pd.DataFrame({"c": [*names, "id00007"]}))["features"]["c"]
    assert len(feature["categories"]) == MAX_CATEGORIES
    assert feature["categories"][0] == "id00007"
    assert feature["other"] == 50
    assert feature["unique"] == MAX_CATEGORIES + 50


def test_predictions_give_a_class_distribution() -> None:
    profile = build_profile(_frame(4), predictions=[1, 0, 1, 1])
    assert profile["predictions"]["categories"] == ["1", "0"]
    assert profile["predictions"]["counts"] == [3, 1]


def test_fingerprint_changes_with_the_bin_layout() -> None:
    frame = _frame()
    assert build_profile(frame)["fingerprint"] != build_profile(frame, bins=100)["fingerprint"]


def test_fewer_bins_than_the_minimum_are_rejected() -> None:
    with pytest.raises(ValueError, match="bins"):
        build_profile(_frame(), bins=3)
