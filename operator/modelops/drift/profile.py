"""Reference profiles: what the training data looked like, as a small JSON document.

The trainer writes one profile per model version; serving pods count live traffic into the
profile's bins (:mod:`modelops.drift.sketch`) and the DriftMonitor compares the two
(:mod:`modelops.drift.stats`). Schema, ``schemaVersion`` 1::

    {
      "schemaVersion": 1,
      "fingerprint": "3f2a9c0e5b7d1a46",   # sha256 of signature + bin layout; sketches carry it
      "nRows": 100000,                     # rows in the reference frame
      "signature": [                       # the model's input, in column order
        {"name": "age", "type": "numeric", "dtype": "float64"},
        {"name": "city", "type": "categorical", "dtype": "object"}
      ],
      "features": {
        "age": {
          "kind": "numeric",
          "n": 99990, "missing": 10,       # finite values / NaN, None or +-inf (ignored)
          "mean": 41.2, "std": 12.9,       # population std (ddof=0), as Evidently normalizes by
          "unique": 73, "min": 18.0, "max": 90.0,
          "exact": true,                   # edges are every distinct value (see below)
          "edges": [18.0, 19.0, ...],      # m strictly increasing cut points
          "counts": [0, 1204, ..., 310],   # m + 1 bins: x < e[0] | e[k-1] <= x < e[k] | x >= e[m-1]
          "offsets": [...]                 # only when not exact: per bin, sum of (x - anchor)
        },                                 #   where anchor = e[max(k - 1, 0)]
        "city": {
          "kind": "categorical",
          "n": 100000, "missing": 0, "unique": 12,
          "categories": ["paris", "lyon", ...],   # str(value), by descending count, <= 1000
          "counts": [40210, 17002, ...],
          "other": 0                       # rows of categories beyond the first 1000
        }
      },
      "predictions": {"kind": "categorical", ...} | null   # class distribution, same shape
    }

Numeric bins. When a feature has at most ``bins`` distinct values, or the reference has at most
1000 rows, the edges are all of its distinct values and ``exact`` is true: edges plus counts are
then the raw sample itself (as a multiset, which is all any of the statistics needs), so the
small-reference tests (KS, chi-squared, Z) are exact, in less space than a list of rows.
Otherwise the edges are ``bins`` reference quantiles (min and max included, rounded to a tenth
of the smallest gap between them, deduplicated) and the per-bin ``offsets`` place each bin's
mass at its mean, which keeps the Wasserstein distance accurate, including for live values
beyond the reference range, in the two open-ended tail bins. Offsets are relative to the
bin's anchor so that six significant digits are enough.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

SCHEMA_VERSION = 1
# Evidently switches from statistical tests to distances above this many reference rows;
# profiles of smaller references keep every distinct value.
SMALL_REFERENCE = 1000
MAX_CATEGORIES = 1000
MIN_BINS = 10

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def build_profile(
    frame: pd.DataFrame,
    *,
    categorical: Collection[str] | None = None,
    predictions: Sequence[object] | npt.NDArray[Any] | None = None,
    bins: int = 1000,
) -> dict[str, Any]:
    """Profile ``frame`` (one column per model input, in input order).

    Non-numeric columns (object, string, category, bool, datetime) are categorical, and so is
    every column named in ``categorical`` (use it for integer codes).
    """
    if bins < MIN_BINS:
        raise ValueError(f"bins must be at least {MIN_BINS}, got {bins}")
    if predictions is not None and len(predictions) != len(frame):
        raise ValueError(f"{len(predictions)} predictions for {len(frame)} rows")
    named = set(categorical or ())
    if unknown := named - {str(c) for c in frame.columns}:
        raise ValueError(f"categorical names unknown columns: {sorted(unknown)}")
    signature: list[dict[str, str]] = []
    features: dict[str, dict[str, Any]] = {}
    for name in frame.columns:
        if not isinstance(name, str):
            raise TypeError(f"feature names must be strings, got {name!r}")
        column = frame[name]
        if name in named or not _is_numeric(column.dtype):
            features[name] = profile_labels(column)
        else:
            features[name] = _profile_numeric(column.to_numpy(np.float64, na_value=np.nan), bins)
        signature.append({"name": name, "type": features[name]["kind"], "dtype": str(column.dtype)})
    profile: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "fingerprint": "",
        "nRows": len(frame),
        "signature": signature,
        "features": features,
        "predictions": None if predictions is None else profile_labels(np.asarray(predictions)),
    }
    profile["fingerprint"] = fingerprint(profile)
    return profile


def fingerprint(profile: dict[str, Any]) -> str:
    """Digest of what a sketch's arrays are aligned to: the signature and the bin layout."""
    layout = {
        "signature": profile["signature"],
        "features": {
            name: f.get("edges", f.get("categories")) for name, f in profile["features"].items()
        },
        "predictions": (profile.get("predictions") or {}).get("categories"),
    }
    blob = json.dumps(layout, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_profile(profile: dict[str, Any]) -> None:
    if profile.get("schemaVersion") != SCHEMA_VERSION:
        raise ValueError(f"unsupported profile schemaVersion {profile.get('schemaVersion')!r}")


def count_labels(values: object) -> tuple[list[str], IntArray, int]:
    """Distinct labels (as ``str``), their counts, and the number of missing values.

    Hashing (pandas.factorize) then converting only the distinct values keeps this vectorized.
    """
    # pandas columns factorize natively (arrow strings without a copy to Python objects).
    data = values if isinstance(values, pd.Series) else np.asarray(values).ravel()
    codes, uniques = pd.factorize(data, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    present = codes >= 0
    missing = int(codes.size - np.count_nonzero(present))
    counts = np.bincount(codes[present], minlength=len(uniques)).astype(np.int64)
    labels = [str(u) for u in uniques]
    if len(set(labels)) < len(labels):  # e.g. 1 and "1" in one object column
        merged: dict[str, int] = {}
        for label, count in zip(labels, counts.tolist(), strict=True):
            merged[label] = merged.get(label, 0) + count
        labels, counts = list(merged), np.array(list(merged.values()), dtype=np.int64)
    return labels, counts, missing


def profile_labels(values: object) -> dict[str, Any]:
    labels, counts, missing = count_labels(values)
    order = sorted(range(len(labels)), key=lambda i: (-int(counts[i]), labels[i]))
    kept, rest = order[:MAX_CATEGORIES], order[MAX_CATEGORIES:]
    return {
        "kind": "categorical",
        "n": int(counts.sum()),
        "missing": missing,
        "unique": len(labels),
        "categories": [labels[i] for i in kept],
        "counts": [int(counts[i]) for i in kept],
        "other": int(counts[rest].sum()),
    }


def anchors(edges: FloatArray) -> FloatArray:
    """Per bin, the finite edge its offsets are measured from."""
    return edges[np.maximum(np.arange(edges.size + 1) - 1, 0)]


def compact(values: FloatArray) -> list[float]:
    """Six significant digits: offsets are small relative to their bin, so this loses nothing."""
    return [float(f"{v:.6g}") if v else 0 for v in values.tolist()]


def _is_numeric(dtype: Any) -> bool:
    return bool(pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype))


def _profile_numeric(x: FloatArray, bins: int) -> dict[str, Any]:
    finite = np.isfinite(x)
    s = np.sort(x[finite])
    n = int(s.size)
    feature: dict[str, Any] = {"kind": "numeric", "n": n, "missing": int(x.size - n)}
    if n == 0:
        return feature | {"mean": 0.0, "std": 0.0, "unique": 0, "min": 0.0, "max": 0.0,
                          "exact": True, "edges": [0.0], "counts": [0, 0]}  # fmt: skip
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    unique = int(np.count_nonzero(first))
    exact = n <= SMALL_REFERENCE or unique <= bins
    edges = s[first] if exact else np.unique(_rounded(_quantiles(s, bins)))
    left = np.searchsorted(s, edges, side="left")
    counts = np.diff(np.concatenate(([0], left, [n]))).astype(np.int64)
    feature |= {
        "mean": float(s.mean()),
        "std": float(s.std()),
        "unique": unique,
        "min": float(s[0]),
        "max": float(s[-1]),
        "exact": exact,
        "edges": edges.tolist(),
        "counts": counts.tolist(),
    }
    if not exact:
        # Per-bin sums of the sorted sample; rounding error is relative to one bin's sum only.
        filled = counts > 0
        sums = np.zeros(counts.size, dtype=np.float64)
        sums[filled] = np.add.reduceat(s, np.concatenate(([0], left))[filled])
        feature["offsets"] = compact(sums - counts * anchors(edges))
    return feature


def _quantiles(s: FloatArray, bins: int) -> FloatArray:
    # Linear interpolation, as numpy.quantile's default, on the already sorted sample.
    pos = np.linspace(0.0, s.size - 1.0, bins)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, s.size - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _rounded(edges: FloatArray) -> FloatArray:
    # Cut points need not be data values: rounding to a tenth of the smallest gap keeps every
    # edge distinct and in order while making the JSON much shorter.
    gaps = np.diff(edges)
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return edges
    decimals = math.ceil(-math.log10(float(gaps.min()) / 10.0))
    return edges if decimals > 12 else np.round(edges, decimals)
