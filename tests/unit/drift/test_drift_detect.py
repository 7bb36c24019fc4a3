"""detect(): default methods, binned vs exact statistics, verdicts and the report."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial import distance

from modelops.drift import METHODS, PREDICTION, DriftReport, Sketch, build_profile, detect
from modelops.drift.detect import ks_test, missing_features


def _sketch(profile: dict[str, Any], frame: pd.DataFrame, **kwargs: Any) -> Sketch:
    sketch = Sketch.empty(profile)
    sketch.update(frame, **kwargs)
    return Sketch.from_dict(json.loads(json.dumps(sketch.to_dict())))  # as the monitor reads it


def _by_name(report: DriftReport) -> dict[str, Any]:
    return {f.name: f for f in report.features}


def _shapes(n: int, seed: int, shifted: bool) -> pd.DataFrame:
    """The benchmark's kinds of shapes: skewed, heavy tails, bounded, zero-inflated counts."""
    rng = np.random.default_rng(seed)
    s = 1.0 if shifted else 0.0
    return pd.DataFrame(
        {
            "normal": rng.normal(10.0 + 0.3 * s, 2.0, n),
            "lognormal": rng.lognormal(0.1 * s, 0.8, n),
            "t5": rng.standard_t(5, n) * (3.0 + s),
            "uniform": rng.uniform(0.0, 1.0 + 0.2 * s, n),
            "counts": rng.poisson(4.0 + s, n) * (rng.random(n) > 0.2).astype(float),
        }
    )


@pytest.fixture(scope="module")
def shapes() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], Sketch]:
    ref, cur = _shapes(40_000, 1, False), _shapes(30_000, 2, True)
    profile = build_profile(ref)
    return ref, cur, profile, _sketch(profile, cur)


def test_binned_wasserstein_agrees_with_exact_within_1e_3(shapes: Any) -> None:
    ref, cur, profile, sketch = shapes
    report = _by_name(detect(profile, sketch, method="wasserstein"))
    for name in ref.columns:
        r, c = ref[name].to_numpy(), cur[name].to_numpy()
        exact = sps.wasserstein_distance(r, c) / max(float(np.std(r)), 0.001)
        assert report[name].score == pytest.approx(exact, abs=1e-3), name


def test_binned_ks_statistic_agrees_with_exact_within_1e_3(shapes: Any) -> None:
    ref, cur, profile, sketch = shapes
    for name in ref.columns:
        statistic, _ = ks_test(profile["features"][name], sketch.features[name])
        assert statistic == pytest.approx(sps.ks_2samp(ref[name], cur[name]).statistic, abs=1e-3)


def test_large_reference_defaults_to_wasserstein_and_jensenshannon() -> None:
    rng = np.random.default_rng(5)
    ref = pd.DataFrame(
        {
            "x": rng.normal(size=5000),
            "few": rng.integers(0, 5, 5000),
            "c": rng.choice(["a", "b"], 5000),
        }
    )
    report = _by_name(detect(build_profile(ref), _sketch(build_profile(ref), ref.iloc[:500])))
    assert {n: (f.method, f.threshold) for n, f in report.items()} == {
        "x": ("wasserstein", 0.1),
        "few": ("jensenshannon", 0.1),
        "c": ("jensenshannon", 0.1),
    }


def test_small_reference_defaults_to_ks_chisquare_and_ztest() -> None:
    rng = np.random.default_rng(6)
    ref = pd.DataFrame(
        {
            "x": rng.normal(size=800),
            "c3": rng.choice(["a", "b", "c"], 800),
            "c2": rng.random(800) < 0.4,
        }
    )
    profile = build_profile(ref)
    report = _by_name(detect(profile, _sketch(profile, ref.iloc[:300])))
    assert {n: (f.method, f.threshold) for n, f in report.items()} == {
        "x": ("ks", 0.05),
        "c3": ("chisquare", 0.05),
        "c2": ("ztest", 0.05),
    }


def test_small_reference_ks_p_value_equals_scipy_on_the_raw_rows() -> None:
    rng = np.random.default_rng(7)
    ref, cur = rng.normal(size=900).round(3), rng.normal(0.15, 1.0, 700).round(2)
    profile = build_profile(pd.DataFrame({"x": ref}))
    feature = detect(profile, _sketch(profile, pd.DataFrame({"x": cur}))).features[0]
    assert feature.method == "ks"
    assert feature.score == pytest.approx(sps.ks_2samp(ref, cur).pvalue, rel=1e-9)


def test_small_reference_chisquare_p_value_equals_scipy_on_the_raw_rows() -> None:
    rng = np.random.default_rng(8)
    ref = rng.choice(["a", "b", "c", "d"], 600, p=[0.4, 0.3, 0.2, 0.1])
    cur = rng.choice(["a", "b", "c", "d"], 250, p=[0.3, 0.3, 0.2, 0.2])
    profile = build_profile(pd.DataFrame({"c": ref}))
    feature = detect(profile, _sketch(profile, pd.DataFrame({"c": cur}))).features[0]
    r = pd.Series(ref).value_counts().sort_index().to_numpy()
    o = pd.Series(cur).value_counts().sort_index().to_numpy()
    assert feature.score == pytest.approx(sps.chisquare(o, r * o.sum() / r.sum()).pvalue, rel=1e-9)


def test_jensenshannon_equals_scipy_over_the_union_of_categories() -> None:
    rng = np.random.default_rng(9)
    ref = rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2])
    cur = np.concatenate([rng.choice(["a", "b"], 900), ["new"] * 80, ["newer"] * 20])
    profile = build_profile(pd.DataFrame({"c": ref}))
    feature = detect(profile, _sketch(profile, pd.DataFrame({"c": cur}))).features[0]
    keys = ["a", "b", "c", "new", "newer"]
    p = pd.Series(ref).value_counts().reindex(keys, fill_value=0).to_numpy()
    q = pd.Series(cur).value_counts().reindex(keys, fill_value=0).to_numpy()
    assert feature.score == pytest.approx(distance.jensenshannon(p, q), rel=1e-12)


def test_unseen_category_in_the_live_window_drifts() -> None:
    ref = pd.DataFrame({"c": ["a", "b"] * 1000})
    profile = build_profile(ref)
    live = pd.DataFrame({"c": ["a", "b"] * 400 + ["brand-new"] * 200})
    feature = detect(profile, _sketch(profile, live)).features[0]
    assert feature.drifted
    expected = distance.jensenshannon([0.5, 0.5, 0.0], [0.4, 0.4, 0.2])
    assert feature.score == pytest.approx(expected, rel=1e-9)


def test_new_values_of_a_discrete_feature_count_towards_its_distinct_values() -> None:
    ref = pd.DataFrame({"x": np.tile([1.0, 2.0, 3.0], 400)})
    profile = build_profile(ref)
    live = pd.DataFrame({"x": np.arange(300.0) / 10})
    assert detect(profile, _sketch(profile, live)).features[0].method == "wasserstein"


def test_shifted_feature_drifts_and_stable_one_does_not(shapes: Any) -> None:
    _, _, profile, _ = shapes
    ref2 = _shapes(20_000, 3, False)
    ref2["t5"] = ref2["t5"] + 1.5
    report = _by_name(detect(profile, _sketch(profile, ref2)))
    assert report["t5"].drifted
    assert not any(f.drifted for n, f in report.items() if n != "t5")


def test_dataset_drift_when_drifted_share_reaches_drift_share(shapes: Any) -> None:
    _, _, profile, sketch = shapes
    report = detect(profile, sketch)
    share = sum(f.drifted for f in report.features) / len(report.features)
    assert report.drifted_share == share
    assert detect(profile, sketch, drift_share=share).dataset_drift
    assert not detect(profile, sketch, drift_share=share + 0.01).dataset_drift


def test_global_ks_applies_a_bonferroni_correction(shapes: Any) -> None:
    _, _, profile, sketch = shapes
    report = detect(profile, sketch, method="ks")
    assert {f.threshold for f in report.features} == {0.05 / 5}


def test_per_feature_settings_override_method_and_threshold(shapes: Any) -> None:
    _, _, profile, sketch = shapes
    report = detect(
        profile, sketch, threshold=0.5, per_feature={"normal": {"method": "psi", "threshold": 0.2}}
    )
    chosen = {f.name: (f.method, f.threshold) for f in report.features}
    assert chosen["normal"] == ("psi", 0.2)
    assert chosen["uniform"] == ("wasserstein", 0.5)


def test_method_that_does_not_apply_to_a_categorical_feature_is_rejected_per_feature() -> None:
    profile = build_profile(pd.DataFrame({"c": ["a", "b"] * 10}))
    with pytest.raises(ValueError, match="does not apply"):
        detect(profile, Sketch.empty(profile), per_feature={"c": {"method": "ks"}})


def test_psi_on_categories_equals_the_direct_formula() -> None:
    ref = pd.DataFrame({"c": ["a"] * 600 + ["b"] * 400})
    live = pd.DataFrame({"c": ["a"] * 300 + ["b"] * 500 + ["z"] * 200})
    profile = build_profile(ref)
    feature = detect(profile, _sketch(profile, live), method="psi").features[0]
    p, q = np.array([0.6, 0.4, 1e-4]), np.array([0.3, 0.5, 0.2])
    assert feature.score == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=1e-12)


def test_psi_on_a_continuous_feature_uses_ten_equal_frequency_groups(shapes: Any) -> None:
    ref, cur, profile, sketch = shapes
    feature = _by_name(detect(profile, sketch, method="psi"))["uniform"]
    cuts = np.quantile(ref["uniform"], np.linspace(0, 1, 11)[1:-1])
    p = np.bincount(np.searchsorted(cuts, ref["uniform"]), minlength=10) / len(ref)
    q = np.bincount(np.searchsorted(cuts, cur["uniform"]), minlength=10) / len(cur)
    assert feature.score == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=0.02)


def test_include_predictions_adds_the_prediction_distribution() -> None:
    ref = pd.DataFrame({"x": np.arange(2000.0)})
    profile = build_profile(ref, predictions=[0, 1] * 1000)
    sketch = _sketch(profile, ref.iloc[:100], predictions=[1] * 100)
    feature = _by_name(detect(profile, sketch, include_predictions=True))[PREDICTION]
    assert feature.drifted and feature.method == "jensenshannon"


def test_feature_without_live_values_has_no_score_and_does_not_drift() -> None:
    profile = build_profile(pd.DataFrame({"x": np.arange(2000.0)}))
    report = detect(profile, _sketch(profile, pd.DataFrame({"x": [np.nan, np.nan]})))
    assert math.isnan(report.features[0].score) and not report.features[0].drifted
    assert report.to_dict()["features"][0]["score"] is None


def test_worst_lists_drifted_features_first_by_severity(shapes: Any) -> None:
    _, _, profile, sketch = shapes
    report = detect(profile, sketch)
    worst = report.worst(2)
    assert all(f.drifted for f in worst)
    assert worst[0].score / worst[0].threshold >= worst[1].score / worst[1].threshold


def test_report_serializes_to_json(shapes: Any) -> None:
    _, _, profile, sketch = shapes
    data = detect(profile, sketch).to_dict()
    assert json.loads(json.dumps(data, allow_nan=False))["nCurrent"] == 30_000


def test_detect_rejects_a_sketch_of_another_profile(shapes: Any) -> None:
    ref, _, profile, _ = shapes
    other = build_profile(ref.iloc[:3000])
    with pytest.raises(ValueError, match="not counted against this profile"):
        detect(profile, Sketch.empty(other))


_samples = st.one_of(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=2500),
    st.lists(st.integers(0, 4).map(float), min_size=1, max_size=2500),
    st.integers(1, 2500).flatmap(
        lambda n: st.just(np.random.default_rng(n).lognormal(size=n).tolist())
    ),
)


@settings(max_examples=25, deadline=None)
@given(_samples, st.integers(0, 2**32 - 1))
def test_identical_distributions_never_drift(values: list[float], seed: int) -> None:
    labels = np.random.default_rng(seed).choice(["a", "b", "c"], len(values))
    frame = pd.DataFrame({"x": values, "c": labels})
    profile = build_profile(frame, bins=100)
    sketch = _sketch(profile, frame)
    for method in [None, *METHODS]:
        report = detect(profile, sketch, method=method)
        assert not any(f.drifted for f in report.features), (method, report.features)
        assert not report.dataset_drift


def test_missing_features_names_each_unknown_feature_once_in_order() -> None:
    profile = build_profile(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "x"]}))
    assert missing_features(profile, ["a", "zz", "b", "yy", "zz"]) == ["zz", "yy"]
    assert missing_features(profile, []) == []
    with pytest.raises(ValueError, match=r"features not in the profile: \['zz'\]"):
        detect(profile, Sketch.empty(profile), features=["a", "zz"])
