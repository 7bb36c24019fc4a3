"""Drift detection: a reference profile against a live sketch, feature by feature.

Default methods follow Evidently 0.7's DataDriftPreset, so verdicts agree with it. "Values" is
the number of distinct values in reference and current data together; "rows" the reference's
non-missing values of the feature.

=============================  ===========  =================  ===========  ==================
feature                        rows         method             threshold    drift when
=============================  ===========  =================  ===========  ==================
numeric, > 5 values            > 1000       wasserstein        0.1          score >= threshold
numeric <= 5 values, or cat.   > 1000       jensenshannon      0.1          score >= threshold
numeric, > 5 values            <= 1000      ks (p-value)       0.05         p <= threshold
numeric <= 5 values, or cat.   <= 1000      chisquare (p)      0.05         p < threshold
  ... with <= 2 values         <= 1000      ztest (p)          0.05         p < threshold
=============================  ===========  =================  ===========  ==================

Wasserstein is divided by the reference's population std (floored at 0.001). Jensen-Shannon
uses the natural log. Dataset drift: share of drifted features >= ``drift_share`` (0.5).

Also available by name: ``psi`` (default threshold 0.1, drift when >= threshold; empty cells
count as proportion 1e-4). Categorical-style methods (jensenshannon, psi, chisquare, ztest) on a
numeric feature compare value by value when the reference has at most 20 distinct values, else
ten groups of bins of about equal reference frequency (Evidently bins such features by equal
width over both samples instead). ``ztest`` tests the share of the reference's most frequent
value, which for two values is Evidently's test. ``method="ks"`` for the whole set applies a
Bonferroni correction (threshold / number of features tested with KS): with many features and
large windows, uncorrected KS raises false alarms. A global ``method`` that does not apply to a
feature's kind (wasserstein or ks on a categorical feature) leaves that feature on its default.

Numeric values are counted in the profile's bins: KS compares the CDFs at the bin edges and
Wasserstein places each bin's mass at its mean, both exact when the profile kept every distinct
value and the live values fall on them. With more than 1000 reference categories, categories
beyond the profile's 1000 and unseen ones are compared as one "other" cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from modelops.drift import stats
from modelops.drift.profile import SMALL_REFERENCE, FloatArray, anchors, check_profile
from modelops.drift.sketch import DISCRETE_MAX, FeatureCounts, Sketch

PREDICTION = "__prediction__"
COARSE_BINS = 10
# Up to this many distinct reference values, categorical-style tests compare numeric values one
# by one (Evidently's limit too); beyond it, ten groups of bins.
VALUE_CELLS_MAX = 20


@dataclass(frozen=True)
class Method:
    name: str
    threshold: float
    p_value: bool  # the score is a p-value: small means drift
    inclusive: bool  # a score equal to the threshold is drift
    kinds: frozenset[str]


_BOTH = frozenset({"numeric", "categorical"})
_NUMERIC = frozenset({"numeric"})
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("wasserstein", 0.1, p_value=False, inclusive=True, kinds=_NUMERIC),
        Method("jensenshannon", 0.1, p_value=False, inclusive=True, kinds=_BOTH),
        Method("psi", 0.1, p_value=False, inclusive=True, kinds=_BOTH),
        Method("ks", 0.05, p_value=True, inclusive=True, kinds=_NUMERIC),
        Method("chisquare", 0.05, p_value=True, inclusive=False, kinds=_BOTH),
        Method("ztest", 0.05, p_value=True, inclusive=False, kinds=_BOTH),
    )
}


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    method: str
    score: float  # nan when either side has no values
    threshold: float
    drifted: bool
    kind: str

    @property
    def severity(self) -> float:
        """How far past (> 1) or short of (< 1) its threshold the score is."""
        if math.isnan(self.score):
            return -1.0
        if METHODS[self.method].p_value:
            return math.inf if self.score == 0 else self.threshold / self.score
        return self.score / self.threshold


@dataclass(frozen=True)
class DriftReport:
    features: list[FeatureDrift]
    drifted_share: float
    dataset_drift: bool
    n_reference: int
    n_current: int

    def worst(self, k: int = 5) -> list[FeatureDrift]:
        """The k features closest to (or furthest past) their thresholds, drifted first."""
        return sorted(self.features, key=lambda f: (f.drifted, f.severity), reverse=True)[:k]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN scores become null), camelCase keys, for status and storage."""
        features = [
            asdict(f) | {"score": None if math.isnan(f.score) else f.score} for f in self.features
        ]
        return {
            "features": features,
            "driftedShare": self.drifted_share,
            "datasetDrift": self.dataset_drift,
            "nReference": self.n_reference,
            "nCurrent": self.n_current,
        }


def detect(
    profile: dict[str, Any],
    sketch: Sketch,
    *,
    features: Sequence[str] | None = None,
    method: str | None = None,
    threshold: float | None = None,
    per_feature: Mapping[str, Mapping[str, Any]] | None = None,
    drift_share: float = 0.5,
    include_predictions: bool = False,
) -> DriftReport:
    """Per-feature drift of ``sketch`` against ``profile``; see the module docstring.

    ``per_feature`` maps a feature name to ``{"method": ..., "threshold": ...}`` (either key
    optional); it wins over ``method``/``threshold``, which win over the defaults.
    """
    check_profile(profile)
    if sketch.fingerprint != profile["fingerprint"]:
        raise ValueError("the sketch was not counted against this profile")
    names = list(features) if features is not None else [s["name"] for s in profile["signature"]]
    pairs = [
        (name, profile["features"][name], sketch.features[name]) for name in _known(names, profile)
    ]
    if include_predictions:
        if profile.get("predictions") is None or sketch.predictions is None:
            raise ValueError("include_predictions needs predictions in the profile and sketch")
        pairs.append((PREDICTION, profile["predictions"], sketch.predictions))
    overrides = dict(per_feature or {})
    if unknown := set(overrides) - {name for name, _, _ in pairs}:
        raise ValueError(f"per_feature names unknown features: {sorted(unknown)}")
    if method is not None:
        _method(method)

    plans = [
        _plan(name, ref, cur, overrides.get(name, {}), method, threshold)
        for name, ref, cur in pairs
    ]
    corrected = sum(1 for plan in plans if plan[2])  # Bonferroni: global KS over k features
    results = [
        _feature_drift(name, ref, cur, chosen, level / corrected if bonferroni else level)
        for (name, ref, cur), (chosen, level, bonferroni) in zip(pairs, plans, strict=True)
    ]
    share = sum(f.drifted for f in results) / len(results) if results else 0.0
    return DriftReport(
        features=results,
        drifted_share=share,
        dataset_drift=bool(results) and share >= drift_share,
        n_reference=int(profile["nRows"]),
        n_current=sketch.n_rows,
    )


def default_method(ref: Mapping[str, Any], cur: FeatureCounts) -> str:
    """Evidently's choice, from reference size, feature kind and distinct values."""
    distinct = ref["unique"] + len(cur.unseen) + (1 if cur.unseen_other else 0)
    continuous = ref["kind"] == "numeric" and distinct > DISCRETE_MAX
    if ref["n"] > SMALL_REFERENCE:
        return "wasserstein" if continuous else "jensenshannon"
    if continuous:
        return "ks"
    return "chisquare" if distinct > 2 else "ztest"


def _plan(
    name: str,
    ref: Mapping[str, Any],
    cur: FeatureCounts,
    override: Mapping[str, Any],
    method: str | None,
    threshold: float | None,
) -> tuple[str, float, bool]:
    """(method, threshold, whether the threshold takes the Bonferroni correction)."""
    chosen = override.get("method")
    bonferroni = False
    if chosen is not None:
        if ref["kind"] not in _method(chosen).kinds:
            raise ValueError(f"{chosen} does not apply to {ref['kind']} feature {name!r}")
    elif method is not None and ref["kind"] in METHODS[method].kinds:
        chosen = method
        bonferroni = method == "ks" and "threshold" not in override
    else:
        chosen = default_method(ref, cur)
    level = override.get("threshold", threshold)
    return chosen, METHODS[chosen].threshold if level is None else float(level), bonferroni


def _feature_drift(
    name: str, ref: dict[str, Any], cur: FeatureCounts, method: str, threshold: float
) -> FeatureDrift:
    spec = METHODS[method]
    if ref["n"] == 0 or cur.n == 0:
        return FeatureDrift(name, method, math.nan, threshold, False, ref["kind"])
    score = _SCORES[method](ref, cur)
    if spec.p_value:
        drifted = score <= threshold if spec.inclusive else score < threshold
    else:
        drifted = score >= threshold
    return FeatureDrift(name, method, score, threshold, bool(drifted), ref["kind"])


@dataclass(frozen=True)
class _Bins:
    """A numeric profile feature's lists as arrays."""

    edges: FloatArray
    anchors: FloatArray
    counts: FloatArray
    offsets: FloatArray | None


# Parsing the profile's JSON lists is most of a detect() call's cost, and profiles are not
# edited, so parsed arrays are kept per list object (the lists are held, so ids stay unique).
_PARSED: dict[tuple[int, ...], tuple[tuple[Any, ...], _Bins]] = {}
_PARSED_MAX = 128


def _bins(ref: Mapping[str, Any]) -> _Bins:
    lists = (ref["edges"], ref["counts"], ref.get("offsets"))
    key = tuple(map(id, lists))
    cached = _PARSED.get(key)
    if cached is not None and all(a is b for a, b in zip(cached[0], lists, strict=True)):
        return cached[1]
    edges = np.asarray(ref["edges"], dtype=np.float64)
    offsets = None if lists[2] is None else np.asarray(lists[2], dtype=np.float64)
    bins = _Bins(edges, anchors(edges), np.asarray(ref["counts"], dtype=np.float64), offsets)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.pop(next(iter(_PARSED)))
    _PARSED[key] = (lists, bins)
    return bins


def _wasserstein(ref: Mapping[str, Any], cur: FeatureCounts) -> float:
    bins = _bins(ref)
    if bins.offsets is None:  # exact: the reference sits on the edges
        ref_values, ref_weights = bins.edges, bins.counts[1:]
    else:
        ref_values, ref_weights = _bin_means(bins.anchors, bins.counts, bins.offsets)
    hits = _hits(cur)
    off_values, off_weights = _bin_means(bins.anchors, cur.counts - hits, _offsets(cur))
    distance = stats.wasserstein(
        ref_values,
        np.concatenate([bins.edges, off_values]),
        ref_weights,
        np.concatenate([hits[1:], off_weights]),
    )
    return distance / max(float(ref["std"]), 0.001)


def ks_test(ref: Mapping[str, Any], cur: FeatureCounts) -> tuple[float, float]:
    """KS (statistic, p-value) of a numeric feature's live counts against its profile."""
    # KS only needs the order of values. Ranks: bin k's values equal to its left edge at 2k-1,
    # the others at 2k; without exact edges both samples' bin k sits at 2k (CDFs at the edges).
    ref_counts = _bins(ref).counts
    rank = 2.0 * np.arange(ref_counts.size)
    hits = _hits(cur)
    return stats.ks_2samp(
        rank - 1.0 if ref["exact"] else rank,
        np.concatenate([rank - 1.0, rank]),
        ref_counts,
        np.concatenate([hits, cur.counts - hits]),
    )


def _cells(ref: Mapping[str, Any], cur: FeatureCounts) -> tuple[FloatArray, FloatArray]:
    """Reference and current counts over the same cells, as the categorical tests take them."""
    counts = cur.counts.astype(np.float64)
    if ref["kind"] == "categorical":
        ref_counts = np.asarray(ref["counts"], dtype=np.float64)
        # Unseen names all have zero reference mass; as one cell they give the same statistics.
        unseen = sum(cur.unseen.values()) + cur.unseen_other
        r, c = np.append(ref_counts, ref["other"]), np.append(counts, unseen)
    elif ref["exact"] and ref["unique"] <= VALUE_CELLS_MAX:
        ref_counts = _bins(ref).counts
        hits = _hits(cur)
        r = np.append(ref_counts[1:], 0.0)
        c = np.append(hits[1:], counts.sum() - hits.sum())
    else:
        ref_counts = _bins(ref).counts
        group = _coarse_groups(ref_counts)
        r = np.bincount(group, weights=ref_counts)
        c = np.bincount(group, weights=counts, minlength=r.size)
    present = (r > 0) | (c > 0)
    return r[present], c[present]


def _coarse_groups(ref_counts: FloatArray) -> Any:
    """Bin -> one of COARSE_BINS groups of about equal reference mass."""
    before = np.cumsum(ref_counts) - ref_counts
    middle = (before + ref_counts / 2.0) / ref_counts.sum()
    return np.minimum((middle * COARSE_BINS).astype(np.int64), COARSE_BINS - 1)


def _bin_means(anchor: FloatArray, counts: Any, offsets: Any) -> tuple[FloatArray, FloatArray]:
    counts = np.asarray(counts, dtype=np.float64)
    filled = counts > 0
    return anchor[filled] + np.asarray(offsets)[filled] / counts[filled], counts[filled]


def _hits(cur: FeatureCounts) -> FloatArray:
    if cur.hits is None:
        return np.zeros(cur.counts.size, dtype=np.float64)
    return cur.hits.astype(np.float64)


def _offsets(cur: FeatureCounts) -> FloatArray:
    if cur.offsets is None:
        raise ValueError("numeric sketch feature without offsets")
    return cur.offsets


def _on_cells(statistic: Callable[[FloatArray, FloatArray], float]) -> Callable[..., float]:
    return lambda ref, cur: statistic(*_cells(ref, cur))


_SCORES: dict[str, Callable[[Mapping[str, Any], FeatureCounts], float]] = {
    "wasserstein": _wasserstein,
    "ks": lambda ref, cur: ks_test(ref, cur)[1],
    "jensenshannon": _on_cells(stats.jensenshannon),
    "psi": _on_cells(stats.psi),
    "chisquare": _on_cells(stats.chisquare),
    "ztest": _on_cells(stats.ztest),
}


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown drift method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def missing_features(profile: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """The names that are not features of ``profile``, in order, once each."""
    return [name for name in dict.fromkeys(names) if name not in profile["features"]]


def _known(names: Sequence[str], profile: Mapping[str, Any]) -> list[str]:
    if unknown := missing_features(profile, names):
        raise ValueError(f"features not in the profile: {unknown}")
    return list(names)
