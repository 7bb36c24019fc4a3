"""Live sketches: counts of incoming values in the reference profile's bins.

A sketch holds, per feature, fixed-size arrays aligned with the profile (bin counts and
per-bin offset sums for numeric features, category counts for categorical ones) plus at most
``MAX_UNSEEN`` values never seen in the reference, so its memory does not grow with traffic.
Merging adds the arrays; it is associative and commutative, and merging the sketches of two
batches gives the sketch of both. A time window is a sketch with ``start``/``end`` (epoch
seconds) set; merging keeps the earliest start and the latest end.

JSON (``to_dict``)::

    {"schemaVersion": 1, "profile": "<profile fingerprint>", "start": 1.7e9, "end": 1.7e9,
     "nRows": 5000,
     "features": {
       "age": {"counts": [...], "offsets": [...], "hits": [...],   # hits: exact features only
               "missing": 0, "unseen": {"7.0": 3}, "unseenOther": 0},
       "city": {"counts": [...], "missing": 0, "unseen": {"oslo": 12}, "unseenOther": 0}},
     "predictions": {"counts": [...], "missing": 0, "unseen": {}, "unseenOther": 0} | null}

``counts`` follow the profile's bins (numeric, m + 1) or categories (categorical; values
outside them are in ``unseen``). Numeric ``offsets`` are per-bin sums of (x - anchor), as in
the profile; ``hits`` count values equal to the bin's left edge, which tells exact features'
reference values from values between them. ``unseen`` is kept for categorical features and for
numeric ones with at most 5 reference values, where the number of distinct values picks the
test: the lexicographically smallest ``MAX_UNSEEN`` names, the rest summed in ``unseenOther``
(a rule that does not depend on arrival order, so merging stays associative).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from modelops.drift.profile import (
    SCHEMA_VERSION,
    FloatArray,
    IntArray,
    anchors,
    check_profile,
    compact,
    count_labels,
)

MAX_UNSEEN = 100
# Numeric features with this few reference values are tested like categories (as Evidently
# does), so new values must be told apart.
DISCRETE_MAX = 5


@dataclass
class FeatureCounts:
    """Live counts of one feature (or of the predictions)."""

    kind: str
    counts: IntArray
    offsets: FloatArray | None = None
    hits: IntArray | None = None
    missing: int = 0
    unseen: dict[str, int] = field(default_factory=dict)
    unseen_other: int = 0

    @property
    def n(self) -> int:
        """Non-missing values counted."""
        total = int(self.counts.sum())
        if self.kind == "categorical":  # numeric unseen values are also in their bins
            total += sum(self.unseen.values()) + self.unseen_other
        return total

    def merged(self, other: FeatureCounts) -> FeatureCounts:
        unseen, unseen_other = _capped(self.unseen, other.unseen)
        return FeatureCounts(
            kind=self.kind,
            counts=self.counts + other.counts,
            offsets=_add(self.offsets, other.offsets),
            hits=_add(self.hits, other.hits),
            missing=self.missing + other.missing,
            unseen=unseen,
            unseen_other=self.unseen_other + other.unseen_other + unseen_other,
        )

    def add_unseen(self, names: Sequence[str], counts: IntArray) -> None:
        if len(names) > MAX_UNSEEN:  # pre-trim a flood of new names with one vectorized sort
            keep = np.argsort(np.asarray(names, dtype=str), kind="stable")[:MAX_UNSEEN]
            self.unseen_other += int(counts.sum() - counts[keep].sum())
            names, counts = [names[i] for i in keep], counts[keep]
        batch = dict(zip(names, counts.tolist(), strict=True))
        self.unseen, overflow = _capped(self.unseen, batch)
        self.unseen_other += overflow

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"counts": self.counts.tolist()}
        if self.offsets is not None:
            data["offsets"] = compact(self.offsets)
        if self.hits is not None:
            data["hits"] = self.hits.tolist()
        return data | {
            "missing": self.missing,
            "unseen": dict(self.unseen),
            "unseenOther": self.unseen_other,
        }

    @classmethod
    def from_dict(cls, kind: str, data: Mapping[str, Any]) -> FeatureCounts:
        def ints(key: str) -> IntArray | None:
            return None if data.get(key) is None else np.asarray(data[key], dtype=np.int64)

        counts = ints("counts")
        if counts is None:
            raise ValueError("sketch feature without counts")
        offsets = data.get("offsets")
        return cls(
            kind=kind,
            counts=counts,
            offsets=None if offsets is None else np.asarray(offsets, dtype=np.float64),
            hits=ints("hits"),
            missing=int(data.get("missing", 0)),
            unseen={str(k): int(v) for k, v in data.get("unseen", {}).items()},
            unseen_other=int(data.get("unseenOther", 0)),
        )


@dataclass(frozen=True)
class _Layout:
    """What update() needs from the profile, precomputed once."""

    kind: str
    edges: FloatArray
    anchors: FloatArray
    exact: bool
    track_unseen: bool
    categories: dict[str, int]  # name -> position in counts

    @classmethod
    def of(cls, feature: Mapping[str, Any]) -> _Layout:
        if feature["kind"] == "categorical":
            empty = np.empty(0, dtype=np.float64)
            index = {name: i for i, name in enumerate(feature["categories"])}
            return cls("categorical", empty, empty, False, True, index)
        edges = np.asarray(feature["edges"], dtype=np.float64)
        exact = bool(feature["exact"])
        discrete = exact and feature["unique"] <= DISCRETE_MAX
        return cls("numeric", edges, anchors(edges), exact, discrete, {})

    def empty(self) -> FeatureCounts:
        if self.kind == "categorical":
            return FeatureCounts("categorical", np.zeros(len(self.categories), dtype=np.int64))
        m = self.edges.size + 1
        return FeatureCounts(
            "numeric",
            np.zeros(m, dtype=np.int64),
            offsets=np.zeros(m, dtype=np.float64),
            hits=np.zeros(m, dtype=np.int64) if self.exact else None,
        )

    def count(self, state: FeatureCounts, values: object) -> None:
        if self.kind == "categorical":
            self._count_labels(state, values)
        else:
            self._count_numbers(state, np.asarray(values, dtype=np.float64).ravel())

    def _count_numbers(self, state: FeatureCounts, x: FloatArray) -> None:
        finite = np.isfinite(x)
        if not finite.all():
            state.missing += int(x.size - np.count_nonzero(finite))
            x = x[finite]
        m = self.edges.size + 1
        idx = np.searchsorted(self.edges, x, side="right")
        offset = x - self.anchors[idx]
        state.counts += np.bincount(idx, minlength=m)
        assert state.offsets is not None
        state.offsets += np.bincount(idx, weights=offset, minlength=m)
        if state.hits is not None:
            on_edge = offset == 0.0
            state.hits += np.bincount(idx[on_edge], minlength=m)
            if self.track_unseen and not on_edge.all():
                names, counts, _ = count_labels(x[~on_edge])
                state.add_unseen(names, counts)

    def _count_labels(self, state: FeatureCounts, values: object) -> None:
        names, counts, missing = count_labels(values)
        state.missing += missing
        self.add_counts(state, names, counts)

    def add_counts(self, state: FeatureCounts, names: Sequence[str], counts: IntArray) -> None:
        # A dict beats pandas.Index.get_indexer on the few distinct names of a batch.
        idx = np.array([self.categories.get(name, -1) for name in names], dtype=np.int64)
        known = idx >= 0
        state.counts[idx[known]] += counts[known]
        if not known.all():
            state.add_unseen(
                [n for n, k in zip(names, known, strict=True) if not k], counts[~known]
            )


class _Packed:
    """All binned numeric features of a live sketch counted together.

    Their count and offset arrays are views of two shared buffers, so after one sort of the
    batch and one binary search per feature, the batch is counted with one ``bincount`` per
    buffer instead of several numpy calls per feature (the binary searches remain most of
    the cost). A deep copy or a pickle of the sketch would cut the views from the buffers:
    the live sketch is never copied (``merge`` and ``to_dict`` make new arrays).
    """

    def __init__(
        self,
        names: list[str],
        columns: npt.NDArray[np.intp],
        edges: list[FloatArray],
        anchors: FloatArray,
        bases: npt.NDArray[np.intp],
        counts: IntArray,
        offsets: FloatArray,
    ) -> None:
        self.names = frozenset(names)
        self.columns = columns
        self.edges = edges
        self.anchors = anchors
        self.bases = bases
        self.counts = counts
        self.offsets = offsets

    @classmethod
    def of(cls, layouts: dict[str, _Layout], features: dict[str, FeatureCounts]) -> _Packed | None:
        chosen = [
            (j, name, layout)
            for j, (name, layout) in enumerate(layouts.items())
            if layout.kind == "numeric" and not layout.exact
        ]
        if not chosen:
            return None
        sizes = [layout.edges.size + 1 for _, _, layout in chosen]
        bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        counts = np.zeros(sum(sizes), dtype=np.int64)
        offsets = np.zeros(sum(sizes), dtype=np.float64)
        for (_, name, _), base, size in zip(chosen, bases, sizes, strict=True):
            features[name].counts = counts[base : base + size]
            features[name].offsets = offsets[base : base + size]
        return cls(
            [name for _, name, _ in chosen],
            np.array([j for j, _, _ in chosen], dtype=np.intp),
            [layout.edges for _, _, layout in chosen],
            np.concatenate([layout.anchors for _, _, layout in chosen]),
            bases[:, None],
            counts,
            offsets,
        )

    def count(self, matrix: npt.NDArray[Any]) -> bool:
        """Count the packed features' columns of ``matrix``; False (nothing counted) when
        they hold missing values, which the per-feature path accounts for."""
        # Sorted keys make numpy's binary search reuse its last bounds: about twice as fast.
        values = np.sort(matrix.T[self.columns].astype(np.float64, copy=False), axis=1)
        if values.shape[1] == 0:
            return True
        if not np.isfinite(values[:, [0, -1]]).all():  # sorted: -inf first, inf and NaN last
            return False
        idx = np.empty(values.shape, dtype=np.intp)
        for j, edges in enumerate(self.edges):
            idx[j] = np.searchsorted(edges, values[j], side="right")
        idx += self.bases
        flat = idx.ravel()
        size = self.counts.size
        self.counts += np.bincount(flat, minlength=size)
        offsets = (values - self.anchors[idx]).ravel()
        self.offsets += np.bincount(flat, weights=offsets, minlength=size)
        return True


class Sketch:
    """Bounded live counts for one profile; see the module docstring.

    Not thread-safe: a server updating one sketch from several threads must hold a lock.
    """

    def __init__(
        self,
        fingerprint: str,
        features: dict[str, FeatureCounts],
        predictions: FeatureCounts | None = None,
        *,
        n_rows: int = 0,
        start: float | None = None,
        end: float | None = None,
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.features = features
        self.predictions = predictions
        self.n_rows = n_rows
        self.start = start
        self.end = end
        self._layouts: dict[str, _Layout] | None = None
        self._prediction_layout: _Layout | None = None
        self._packed: _Packed | None = None
        if profile is not None:
            self._bind(profile)

    @classmethod
    def empty(
        cls, profile: Mapping[str, Any], *, start: float | None = None, end: float | None = None
    ) -> Sketch:
        sketch = cls(profile["fingerprint"], {}, start=start, end=end, profile=profile)
        assert sketch._layouts is not None and sketch._prediction_layout is not None
        sketch.features = {name: lay.empty() for name, lay in sketch._layouts.items()}
        sketch.predictions = sketch._prediction_layout.empty()
        sketch._packed = _Packed.of(sketch._layouts, sketch.features)
        return sketch

    def _bind(self, profile: Mapping[str, Any]) -> None:
        check_profile(dict(profile))
        if profile["fingerprint"] != self.fingerprint:
            raise ValueError("sketch and profile fingerprints differ")
        features = profile["features"]
        self._layouts = {s["name"]: _Layout.of(features[s["name"]]) for s in profile["signature"]}
        # Without reference predictions every class is unseen, still counted by name.
        no_classes = {"kind": "categorical", "categories": []}
        self._prediction_layout = _Layout.of(profile.get("predictions") or no_classes)

    def update(
        self,
        columns: Mapping[str, Any] | pd.DataFrame | npt.NDArray[Any],
        predictions: Sequence[object] | npt.NDArray[Any] | None = None,
    ) -> None:
        """Count one batch: a mapping of columns, or a 2-D array in signature order."""
        if self._layouts is None or self._prediction_layout is None:
            raise RuntimeError("sketch was loaded without its profile; pass profile= to update")
        names = list(self._layouts)
        if isinstance(columns, np.ndarray):
            if columns.ndim != 2 or columns.shape[1] != len(names):
                raise ValueError(f"expected a 2-D array with {len(names)} columns")
            n = columns.shape[0]
            batch: dict[str, Any] = {name: columns[:, j] for j, name in enumerate(names)}
            if self._packed is not None and self._packed.count(columns):
                batch = {k: v for k, v in batch.items() if k not in self._packed.names}
        else:
            if missing := [name for name in names if name not in columns]:
                raise ValueError(f"batch lacks columns {missing}")
            batch = {name: columns[name] for name in names}
            rows = {len(v) for v in batch.values()}
            if len(rows) > 1:
                raise ValueError(f"columns differ in length: {sorted(rows)}")
            n = rows.pop() if rows else 0
        for name, values in batch.items():
            self._layouts[name].count(self.features[name], values)
        if predictions is not None:
            assert self.predictions is not None
            self._prediction_layout.count(self.predictions, predictions)
        self.n_rows += n

    def count_predictions(self, names: Sequence[str], counts: IntArray) -> None:
        """Predictions already counted by class: ``counts[i]`` of ``names[i]``."""
        if self._prediction_layout is None or self.predictions is None:
            raise RuntimeError("sketch was loaded without its profile; pass profile= to update")
        seen = counts > 0  # a class never predicted is not an unseen value
        self._prediction_layout.add_counts(
            self.predictions, [c for c, k in zip(names, seen, strict=True) if k], counts[seen]
        )

    def merge(self, other: Sketch) -> Sketch:
        """A new sketch counting both; neither operand changes."""
        if other.fingerprint != self.fingerprint:
            raise ValueError("cannot merge sketches of different profiles")
        if self.features.keys() != other.features.keys():
            raise ValueError("cannot merge sketches with different features")
        predictions = self.predictions
        if predictions is None or other.predictions is None:
            predictions = predictions or other.predictions
        else:
            predictions = predictions.merged(other.predictions)
        merged = Sketch(
            self.fingerprint,
            {name: counts.merged(other.features[name]) for name, counts in self.features.items()},
            predictions,
            n_rows=self.n_rows + other.n_rows,
            start=_pick(min, self.start, other.start),
            end=_pick(max, self.end, other.end),
        )
        merged._layouts = self._layouts or other._layouts
        merged._prediction_layout = self._prediction_layout or other._prediction_layout
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "profile": self.fingerprint,
            "start": self.start,
            "end": self.end,
            "nRows": self.n_rows,
            "features": {name: counts.to_dict() for name, counts in self.features.items()},
            "predictions": None if self.predictions is None else self.predictions.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], profile: Mapping[str, Any] | None = None) -> Sketch:
        """Load a sketch; with its ``profile`` it can also be updated further."""
        if data.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError(f"unsupported sketch schemaVersion {data.get('schemaVersion')!r}")
        features = {
            # Only numeric features carry offsets.
            name: FeatureCounts.from_dict("numeric" if "offsets" in f else "categorical", f)
            for name, f in data["features"].items()
        }
        predictions = data.get("predictions")
        return cls(
            str(data["profile"]),
            features,
            None if predictions is None else FeatureCounts.from_dict("categorical", predictions),
            n_rows=int(data.get("nRows", 0)),
            start=data.get("start"),
            end=data.get("end"),
            profile=profile,
        )

    def __repr__(self) -> str:
        features = len(self.features)
        return f"Sketch(profile={self.fingerprint!r}, n_rows={self.n_rows}, features={features})"


def _capped(a: Mapping[str, int], b: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """Union of two unseen-name counts, keeping the MAX_UNSEEN smallest names; + overflow."""
    total = dict(a)
    for name, count in b.items():
        total[name] = total.get(name, 0) + count
    if len(total) <= MAX_UNSEEN:
        return total, 0
    names = sorted(total)
    return {n: total[n] for n in names[:MAX_UNSEEN]}, sum(total[n] for n in names[MAX_UNSEEN:])


def _add(a: npt.NDArray[Any] | None, b: npt.NDArray[Any] | None) -> Any:
    return None if a is None or b is None else a + b


def _pick(choose: Any, a: float | None, b: float | None) -> float | None:
    present = [t for t in (a, b) if t is not None]
    return choose(present) if present else None
