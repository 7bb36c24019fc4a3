"""Live sketches: counting, unseen values, bounded memory, JSON, merging."""

from __future__ import annotations

import bisect
import copy
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelops.drift import Sketch, build_profile
from modelops.drift import sketch as sketch_module

_RNG = np.random.default_rng(0)
_REFERENCE = pd.DataFrame(
    {
        "x": _RNG.normal(0.0, 1.0, 2000),  # quantile bins (not exact)
        "d": _RNG.integers(0, 3, 2000).astype(float),  # three values: exact, unseen tracked
        "c": _RNG.choice(["a", "b", "c"], 2000),
    }
)
PROFILE = build_profile(_REFERENCE, bins=20)


def _batch(x: list[float], d: list[float], c: list[str]) -> dict[str, Any]:
    n = min(len(x), len(d), len(c))
    return {"x": np.array(x[:n]), "d": np.array(d[:n]), "c": np.array(c[:n], dtype=object)}


def _sketch(*batches: dict[str, Any]) -> Sketch:
    sketch = Sketch.empty(PROFILE)
    for batch in batches:
        sketch.update(batch)
    return sketch


def _assert_same(a: Sketch, b: Sketch) -> None:
    assert (a.n_rows, a.start, a.end) == (b.n_rows, b.start, b.end)
    for name, fa in a.features.items():
        fb = b.features[name]
        assert np.array_equal(fa.counts, fb.counts), name
        if fa.hits is not None or fb.hits is not None:
            assert fa.hits is not None and fb.hits is not None
            assert np.array_equal(fa.hits, fb.hits)
        if fa.offsets is not None or fb.offsets is not None:
            assert fa.offsets is not None and fb.offsets is not None
            assert np.allclose(fa.offsets, fb.offsets, rtol=1e-9, atol=1e-9)
        assert (fa.missing, fa.unseen, fa.unseen_other) == (fb.missing, fb.unseen, fb.unseen_other)


def test_update_counts_numeric_values_into_the_profile_bins() -> None:
    x = np.array([-10.0, 0.0, 0.0, 0.5, 10.0])
    sketch = _sketch({"x": x, "d": np.zeros(5), "c": np.array(["a"] * 5)})
    edges = np.asarray(PROFILE["features"]["x"]["edges"])
    expected = np.bincount(np.searchsorted(edges, x, side="right"), minlength=edges.size + 1)
    assert np.array_equal(sketch.features["x"].counts, expected)


def test_update_accepts_a_2d_array_in_signature_order() -> None:
    rows = np.array([[0.1, 1.0, "a"], [2.5, 2.0, "b"], [-1.0, 0.0, "zz"]], dtype=object)
    by_array = _sketch()
    by_array.update(rows)
    by_columns = _sketch({"x": rows[:, 0], "d": rows[:, 1], "c": rows[:, 2]})
    _assert_same(by_array, by_columns)


def test_update_rejects_a_batch_missing_a_column() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        _sketch({"x": np.zeros(2), "c": np.array(["a", "b"])})


def test_update_rejects_a_numeric_column_with_more_than_one_number_per_row() -> None:
    with pytest.raises(ValueError, match="one number per row"):
        _sketch({"x": np.zeros((2, 2)), "d": np.zeros(2), "c": np.array(["a", "b"])})


def test_unseen_category_is_counted_by_name() -> None:
    sketch = _sketch(_batch([0.0] * 4, [1.0] * 4, ["a", "oslo", "oslo", "rome"]))
    counts = sketch.features["c"]
    assert counts.unseen == {"oslo": 2, "rome": 1}
    assert counts.n == 4


def test_unseen_value_of_a_discrete_numeric_feature_is_counted_by_value() -> None:
    sketch = _sketch(_batch([0.0] * 3, [1.0, 7.0, 7.0], ["a"] * 3))
    assert sketch.features["d"].unseen == {"7.0": 2}


def test_unseen_names_beyond_the_cap_are_summed_in_other() -> None:
    names = [f"n{i:04d}" for i in range(sketch_module.MAX_UNSEEN + 30)]
    sketch = _sketch(_batch([0.0] * len(names), [0.0] * len(names), names))
    counts = sketch.features["c"]
    assert sorted(counts.unseen) == names[: sketch_module.MAX_UNSEEN]
    assert counts.unseen_other == 30


def test_sketch_size_is_bounded_whatever_the_traffic() -> None:
    sketch = _sketch()
    sizes = []
    for round_ in range(5):
        names = [f"r{round_}-{i}" for i in range(5000)]
        sketch.update(_batch(list(_RNG.normal(size=5000)), [9.5] * 5000, names))
        sizes.append(len(json.dumps(sketch.to_dict())))
    assert max(sizes) - min(sizes) < 0.05 * max(sizes)


def test_missing_values_are_counted_apart() -> None:
    sketch = _sketch(_batch([np.nan, 1.0, np.inf], [1.0, np.nan, 2.0], ["a", None, "b"]))  # type: ignore[list-item]
    assert [sketch.features[n].missing for n in ("x", "d", "c")] == [2, 1, 1]
    assert [sketch.features[n].n for n in ("x", "d", "c")] == [1, 2, 2]


def test_sketch_round_trips_through_json() -> None:
    sketch = _sketch(_batch([0.3, 9.0], [1.0, 5.0], ["a", "new"]))
    sketch.start, sketch.end = 100.0, 160.0
    loaded = Sketch.from_dict(json.loads(json.dumps(sketch.to_dict())), PROFILE)
    _assert_same(loaded, sketch)
    loaded.update(_batch([1.0], [1.0], ["b"]))
    assert loaded.n_rows == 3


def test_sketch_loaded_without_its_profile_cannot_update() -> None:
    loaded = Sketch.from_dict(_sketch().to_dict())
    with pytest.raises(RuntimeError, match="profile"):
        loaded.update(_batch([1.0], [1.0], ["b"]))


def test_merge_equals_the_sketch_of_both_batches() -> None:
    a = _batch([0.1, 5.0], [1.0, 4.0], ["a", "x"])
    b = _batch([-3.0, 0.2], [2.0, 4.0], ["x", "y"])
    _assert_same(_sketch(a).merge(_sketch(b)), _sketch(a, b))


def test_merge_takes_the_earliest_start_and_latest_end() -> None:
    a, b = Sketch.empty(PROFILE, start=10.0, end=20.0), Sketch.empty(PROFILE, start=5.0, end=15.0)
    merged = a.merge(b)
    assert (merged.start, merged.end) == (5.0, 20.0)


def test_merge_rejects_a_sketch_of_another_profile() -> None:
    other = build_profile(_REFERENCE, bins=30)
    with pytest.raises(ValueError, match="different profiles"):
        _sketch().merge(Sketch.empty(other))


def test_predictions_are_counted_by_class() -> None:
    profile = build_profile(_REFERENCE, predictions=_RNG.integers(0, 2, 2000), bins=20)
    sketch = Sketch.empty(profile)
    sketch.update(_REFERENCE.iloc[:4], predictions=[1, 1, 0, 2])
    assert sketch.predictions is not None
    classes, counts = profile["predictions"]["categories"], sketch.predictions.counts.tolist()
    by_class = dict(zip(classes, counts, strict=True))
    assert by_class == {"0": 1, "1": 2}
    assert sketch.predictions.unseen == {"2": 1}


_values = st.lists(st.floats(-5.0, 5.0, allow_nan=False), max_size=12)
_discrete = st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0, 9.0, 0.5]), max_size=12)
_names = st.lists(st.sampled_from(["a", "b", "c", "p", "q", "r", "s", "t"]), max_size=12)
_batches = st.builds(_batch, _values, _discrete, _names)
_windows = st.tuples(_batches, st.one_of(st.none(), st.floats(0.0, 1e9)))


def _window(batch: dict[str, Any], start: float | None) -> Sketch:
    sketch = Sketch.empty(PROFILE, start=start, end=None if start is None else start + 60.0)
    sketch.update(batch)
    return sketch


@settings(max_examples=40, deadline=None)
@given(_windows, _windows, _windows)
def test_merge_is_associative(
    a: tuple[dict[str, Any], float | None],
    b: tuple[dict[str, Any], float | None],
    c: tuple[dict[str, Any], float | None],
) -> None:
    with mock.patch.object(sketch_module, "MAX_UNSEEN", 3):  # make the cap bite
        x, y, z = _window(*a), _window(*b), _window(*c)
        _assert_same(x.merge(y).merge(z), x.merge(y.merge(z)))


@settings(max_examples=40, deadline=None)
@given(_windows, _windows)
def test_merge_is_commutative(
    a: tuple[dict[str, Any], float | None], b: tuple[dict[str, Any], float | None]
) -> None:
    with mock.patch.object(sketch_module, "MAX_UNSEEN", 3):
        x, y = _window(*a), _window(*b)
        _assert_same(x.merge(y), y.merge(x))


@settings(max_examples=40, deadline=None)
@given(st.lists(_batches, min_size=1, max_size=4))
def test_merged_windows_equal_one_sketch_of_all_their_rows(batches: list[dict[str, Any]]) -> None:
    with mock.patch.object(sketch_module, "MAX_UNSEEN", 3):
        merged = _sketch(batches[0])
        for batch in batches[1:]:
            merged = merged.merge(_sketch(batch))
        _assert_same(merged, _sketch(*batches))


_NUMERIC = pd.DataFrame(
    {
        "a": _RNG.normal(0.0, 1.0, 3000),
        "b": _RNG.lognormal(0.0, 2.0, 3000),  # skewed: narrow and wide bins
        "k": _RNG.integers(0, 3, 3000).astype(float),  # exact: counted apart
        "e": _RNG.uniform(-5.0, 5.0, 3000),
    }
)
NUMERIC_PROFILE = build_profile(_NUMERIC, bins=50)


@pytest.mark.parametrize(
    "case", ["reference rows", "values on the edges", "far outside", "with NaN and inf", "none"]
)
def test_a_matrix_counts_as_the_reference_implementation(case: str) -> None:
    rows = _NUMERIC.to_numpy()[:500].copy()
    if case == "values on the edges":
        for j, name in enumerate(_NUMERIC.columns):
            edges = np.asarray(NUMERIC_PROFILE["features"][name]["edges"])
            rows[: edges.size, j] = edges[: len(rows)]
    elif case == "far outside":
        rows[::3] *= 1e6
    elif case == "with NaN and inf":
        rows[3, 0], rows[7, 1], rows[9, 3], rows[11, 2] = np.nan, np.inf, -np.inf, np.nan
    elif case == "none":
        rows = rows[:0]
    sketch = Sketch.empty(NUMERIC_PROFILE)
    sketch.update(rows)
    _assert_counts(sketch, reference_counts(NUMERIC_PROFILE, [_named(rows, _NUMERIC.columns)]))


def test_a_merge_sees_what_update_counted() -> None:
    # The features' arrays share buffers with the counting code; merge reads the arrays.
    rows = _NUMERIC.to_numpy()[:300]
    sketch = Sketch.empty(NUMERIC_PROFILE)
    sketch.update(rows)
    merged = Sketch.empty(NUMERIC_PROFILE).merge(sketch)
    _assert_counts(merged, reference_counts(NUMERIC_PROFILE, [_named(rows, _NUMERIC.columns)]))


def test_a_copy_counts_apart_from_its_original() -> None:
    sketch = Sketch.empty(PROFILE)
    sketch.update(_batch([0.1], [1.0], ["a"]))
    twin = copy.deepcopy(sketch)
    twin.update(_batch([0.2, 0.3], [2.0, 2.0], ["b", "b"]))
    assert sketch.n_rows == 1 and sum(int(f.counts.sum()) for f in sketch.features.values()) == 3
    assert twin.n_rows == 3 and sum(int(f.counts.sum()) for f in twin.features.values()) == 9


def test_a_matrix_of_binned_features_only_counts_its_rows() -> None:
    binned = build_profile(_NUMERIC[["a", "b", "e"]], bins=50)
    rows = _NUMERIC[["a", "b", "e"]].to_numpy()[:70]
    sketch = Sketch.empty(binned)
    sketch.update(rows)
    sketch.update(rows[:5])
    assert sketch.n_rows == 75
    assert all(int(f.counts.sum()) == 75 for f in sketch.features.values())


def test_classes_never_predicted_are_not_unseen_values() -> None:
    profile = build_profile(_NUMERIC[["a", "b"]], predictions=np.array(["x", "y"] * 1500))
    sketch = Sketch.empty(profile)
    sketch.count_predictions(["x", "y", "z"], np.array([3, 0, 0]))
    sketch.count_predictions(["x", "y", "z"], np.array([0, 1, 2]))
    predictions = sketch.predictions
    assert predictions is not None
    assert predictions.counts.tolist() == [3, 1] and predictions.unseen == {"z": 2}


# A slow, obviously right implementation of the counting rules (module docstring of
# modelops.drift.sketch), one value at a time, to hold the vectorized paths to.


def reference_counts(
    profile: dict[str, Any], batches: Iterable[Mapping[str, Sequence[Any]]]
) -> dict[str, dict[str, Any]]:
    """Per feature: counts, offsets (numeric), hits (exact), missing, unseen, unseenOther."""
    rows = list(batches)
    out = {}
    for name, feature in profile["features"].items():
        values = [v for batch in rows for v in batch[name]]
        if feature["kind"] == "categorical":
            out[name] = _reference_labels(feature["categories"], values)
        else:
            out[name] = _reference_numbers(feature, values)
    return out


def _reference_labels(categories: list[str], values: list[Any]) -> dict[str, Any]:
    counts, unseen, missing = [0] * len(categories), Counter[str](), 0
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            missing += 1
        elif str(v) in categories:
            counts[categories.index(str(v))] += 1
        else:
            unseen[str(v)] += 1
    return {"counts": counts, "missing": missing} | _capped_reference(unseen)


def _reference_numbers(feature: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    edges = feature["edges"]
    m = len(edges) + 1
    counts, hits, missing = [0] * m, [0] * m, 0
    offsets: list[list[float]] = [[] for _ in range(m)]
    unseen = Counter[str]()
    discrete = feature["exact"] and feature["unique"] <= sketch_module.DISCRETE_MAX
    for v in values:
        x = float(v)
        if not math.isfinite(x):
            missing += 1
            continue
        k = bisect.bisect_right(edges, x)  # x < e[0] | e[k-1] <= x < e[k] | x >= e[m-1]
        counts[k] += 1
        offsets[k].append(x - edges[max(k - 1, 0)])
        if k > 0 and x == edges[k - 1]:
            hits[k] += 1
        elif discrete:
            unseen[str(x)] += 1
    entry: dict[str, Any] = {"counts": counts, "offsets": [math.fsum(o) for o in offsets]}
    if feature["exact"]:
        entry["hits"] = hits
    return entry | {"missing": missing} | _capped_reference(unseen)


def _capped_reference(unseen: Counter[str]) -> dict[str, Any]:
    names = sorted(unseen)
    cap = sketch_module.MAX_UNSEEN
    return {
        "unseen": {n: unseen[n] for n in names[:cap]},
        "unseenOther": sum(unseen[n] for n in names[cap:]),
    }


def _assert_counts(sketch: Sketch, expected: dict[str, dict[str, Any]]) -> None:
    assert sketch.features.keys() == expected.keys()
    for name, want in expected.items():
        got = sketch.features[name]
        assert got.counts.tolist() == want["counts"], name
        assert got.missing == want["missing"], name
        assert (got.unseen, got.unseen_other) == (want["unseen"], want["unseenOther"]), name
        assert (got.hits is None) == ("hits" not in want), name
        if got.hits is not None:
            assert got.hits.tolist() == want["hits"], name
        assert (got.offsets is None) == ("offsets" not in want), name
        if got.offsets is not None:
            np.testing.assert_allclose(got.offsets, want["offsets"], rtol=1e-9, atol=1e-9)


def _named(rows: np.ndarray, names: Iterable[str]) -> dict[str, list[Any]]:
    return {name: rows[:, j].tolist() for j, name in enumerate(names)}


_MIXED_REFERENCE = pd.DataFrame(
    {
        "c": _RNG.choice(["a", "b", "c"], 2000),
        "x": _RNG.normal(0.0, 1.0, 2000),  # quantile bins
        "yes": np.ones(2000, dtype=bool),  # categorical: "True" only, "False" is unseen
        "k": _RNG.integers(0, 8, 2000).astype(float),  # exact, too many values to name new ones
        "d": _RNG.integers(0, 3, 2000).astype(float),  # exact and discrete: new values named
    }
)
MIXED_PROFILE = build_profile(_MIXED_REFERENCE, bins=20)
_X_EDGES = MIXED_PROFILE["features"]["x"]["edges"]
_SPECIAL = [np.nan, np.inf, -np.inf]
_mixed_rows = st.fixed_dictionaries(
    {
        "c": st.sampled_from(["a", "b", "c", "p", "q", "r", "s", "1", None, np.nan, 1]),
        "x": st.one_of(st.floats(-4.0, 4.0), st.sampled_from(_X_EDGES + _SPECIAL + [1e9, -1e9])),
        "yes": st.booleans(),
        "k": st.sampled_from([0.0, 3.0, 7.0, 2.5, 12.0, np.nan]),
        "d": st.sampled_from([0.0, -0.0, 1.0, 2.0, 0.5, 9.0, -3.25, 1e20, *_SPECIAL]),
    }
)


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Columns as the server decodes them: float64 numbers, objects (or bools) for labels."""
    columns: dict[str, np.ndarray] = {}
    for name in MIXED_PROFILE["features"]:
        values = [row[name] for row in rows]
        kind = MIXED_PROFILE["features"][name]["kind"]
        dtype = bool if name == "yes" else object if kind == "categorical" else np.float64
        columns[name] = np.array(values, dtype=dtype)
    return columns


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_mixed_rows, max_size=40), min_size=1, max_size=4),
    as_matrix=st.booleans(),
    lookup=st.booleans(),
)
def test_counts_equal_the_reference_implementation(
    batches: list[list[dict[str, Any]]], as_matrix: bool, lookup: bool
) -> None:
    columns = [_columns(rows) for rows in batches]
    names = list(MIXED_PROFILE["features"])
    sketch = Sketch.empty(MIXED_PROFILE)
    with (
        mock.patch.object(sketch_module, "MAX_UNSEEN", 3),  # make the cap bite
        mock.patch.object(sketch_module, "LOOKUP_MAX", 10_000 if lookup else 0),
    ):
        for batch in columns:
            if as_matrix:  # one object matrix in signature order, as a mixed 2-D input
                sketch.update(np.column_stack([batch[n].astype(object) for n in names]))
            else:
                sketch.update(batch)
        expected = reference_counts(
            MIXED_PROFILE, [{n: c.tolist() for n, c in b.items()} for b in columns]
        )
    _assert_counts(sketch, expected)
    assert sketch.n_rows == sum(len(rows) for rows in batches)
