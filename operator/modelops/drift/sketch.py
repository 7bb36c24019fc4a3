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

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
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
LOOKUP_MAX = 512
"""Label columns up to this long are counted with one dict lookup per value; longer ones are
hashed by ``pandas.factorize``, which costs more per call but less per value."""


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
    """What counting needs from one feature of the profile, precomputed once."""

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

    @property
    def size(self) -> int:
        """Length of the feature's count array."""
        return len(self.categories) if self.kind == "categorical" else self.edges.size + 1

    def empty(self) -> FeatureCounts:
        if self.kind == "categorical":
            return FeatureCounts("categorical", np.zeros(self.size, dtype=np.int64))
        return FeatureCounts(
            "numeric",
            np.zeros(self.size, dtype=np.int64),
            offsets=np.zeros(self.size, dtype=np.float64),
            hits=np.zeros(self.size, dtype=np.int64) if self.exact else None,
        )

    def count_labels(self, state: FeatureCounts, values: object) -> None:
        """Count categorical ``values`` (any 1-D sequence; labels are compared as ``str``)."""
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


@dataclass(frozen=True)
class _Labels:
    """One categorical feature of a packed sketch: where its labels go in the shared counts."""

    layout: _Layout
    state: FeatureCounts
    slots: dict[str, int]  # category -> index in the shared counts buffer
    true_false: tuple[int, int]  # slots of "True" and "False", for boolean columns

    def slots_of(self, values: object, spare: int) -> npt.NDArray[np.intp] | None:
        """Shared-buffer slots of ``values``: ``spare`` for values counted here instead
        (missing, unseen, or labels only ``str()`` turns into a category, like 1 for "1");
        None when the whole column was counted here."""
        if not isinstance(values, np.ndarray) or values.ndim != 1:
            self.layout.count_labels(self.state, values)
            return None
        if values.dtype.kind == "b":
            slots = np.where(values, *self.true_false).astype(np.intp, copy=False)
        elif values.dtype.kind in "OU" and values.size <= LOOKUP_MAX:
            lookup = map(self.slots.get, values.tolist(), repeat(spare))
            slots = np.fromiter(lookup, dtype=np.intp, count=values.size)
        else:  # pandas.factorize hashes long columns faster than a dict lookup per value
            self.layout.count_labels(self.state, values)
            return None
        rest = slots == spare
        if rest.any():
            others = values[rest]
            labels = others.tolist()
            if all(type(label) is str for label in labels):  # new labels, already named
                counted = Counter(labels)
                self.state.add_unseen(list(counted), np.fromiter(counted.values(), np.int64))
            else:
                self.layout.count_labels(self.state, others)
        return slots


class _Packed:
    """Every feature of a live sketch counted together, in a few numpy calls per batch.

    The features' ``counts``, ``offsets`` and ``hits`` are views of three shared buffers laid
    out as [bins of each numeric feature, exact ones first | categories of each categorical
    feature | spare], so a batch is counted with one ``bincount`` per buffer over global
    slots: a numeric value's slot is its feature's base plus its bin (one binary search per
    numeric feature over the whole batch, on sorted values), a label's slot comes from a dict
    lookup (columns longer than ``LOOKUP_MAX`` are hashed by ``pandas.factorize`` instead).
    Values counted apart (missing, unseen) go to the spare slot, which no feature sees. The
    layout is derived once per sketch, not per batch.

    A copy or pickle of a sketch would cut the views from the buffers, so ``Sketch`` drops
    this object when copied and rebuilds it from the features' arrays at the next update.
    """

    def __init__(
        self, layouts: Mapping[str, _Layout], features: Mapping[str, FeatureCounts]
    ) -> None:
        if features.keys() != layouts.keys():
            raise ValueError("the sketch's features differ from its profile's")
        names = list(layouts)
        # Exact features first: their hits then fit a short bincount.
        numeric = [name for name in names if layouts[name].exact]
        numeric += [n for n in names if layouts[n].kind == "numeric" and not layouts[n].exact]
        categorical = [name for name in names if layouts[name].kind == "categorical"]
        starts = np.cumsum([0] + [layouts[name].size for name in numeric + categorical])
        self.spare = int(starts[-1])
        self.counts = np.zeros(self.spare + 1, dtype=np.int64)
        self.offsets = np.zeros(self.spare + 1, dtype=np.float64)
        exact = [r for r, name in enumerate(numeric) if layouts[name].exact]
        self.hits = np.zeros(int(starts[len(exact)]), dtype=np.int64)  # exact features only
        for name, start in zip(numeric + categorical, starts.tolist(), strict=False):
            state, stop = features[name], start + layouts[name].size
            state.counts = _share(self.counts, start, stop, state.counts, name)
            if layouts[name].kind == "numeric":
                state.offsets = _share(self.offsets, start, stop, state.offsets, name)
            if layouts[name].exact:
                state.hits = _share(self.hits, start, stop, state.hits, name)

        self.names = names
        self.width = len(names)
        self.numeric_columns = np.array([names.index(n) for n in numeric], dtype=np.intp)
        self.numeric_names = numeric
        self.numeric = [features[name] for name in numeric]
        self.edges = [layouts[name].edges for name in numeric]
        self.anchors = np.concatenate([np.empty(0)] + [layouts[n].anchors for n in numeric])
        self.bases = starts[: len(numeric), None].astype(np.intp)
        self.exact = len(exact)  # rows 0 .. exact - 1
        # Features whose values outside the reference are named: (row, counts)
        self.discrete = [(r, self.numeric[r]) for r in exact if layouts[numeric[r]].track_unseen]
        self.categorical_columns = [names.index(name) for name in categorical]
        self.categorical_names = categorical
        self.labels: list[_Labels] = []
        for name, start in zip(categorical, starts[len(numeric) : -1].tolist(), strict=True):
            slots = {label: start + i for label, i in layouts[name].categories.items()}
            bools = (slots.get("True", self.spare), slots.get("False", self.spare))
            self.labels.append(_Labels(layouts[name], features[name], slots, bools))

    def split_matrix(self, rows: npt.NDArray[Any]) -> tuple[FloatArray, list[Any], int]:
        """A 2-D batch in signature order as ``count`` takes it, and its number of rows."""
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected a 2-D array with {self.width} columns")
        numbers = np.ascontiguousarray(rows.T[self.numeric_columns], dtype=np.float64)
        return numbers, [rows[:, j] for j in self.categorical_columns], rows.shape[0]

    def split_columns(self, columns: Mapping[str, Any]) -> tuple[FloatArray, list[Any], int]:
        """A batch of named columns as ``count`` takes it, and its number of rows."""
        if missing := [name for name in self.names if name not in columns]:
            raise ValueError(f"batch lacks columns {missing}")
        lengths = {len(columns[name]) for name in self.names}
        if len(lengths) > 1:
            raise ValueError(f"columns differ in length: {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        shape = f"numeric columns must hold one number per row ({n} rows)"
        try:
            numbers = np.array([columns[name] for name in self.numeric_names], dtype=np.float64)
        except ValueError as exc:  # ragged columns, or values that are not numbers
            raise ValueError(f"{shape}: {exc}") from None
        if numbers.size != len(self.numeric_names) * n:
            raise ValueError(shape)
        labels = [columns[name] for name in self.categorical_names]
        return numbers.reshape(len(self.numeric_names), n), labels, n

    def count(self, numbers: FloatArray, labels: Sequence[object]) -> None:
        """Count one batch: ``numbers`` of shape (numeric features, n), one row per feature of
        ``numeric_names``; ``labels`` one column of n values per ``categorical_names``."""
        slots = [self._count_numbers(numbers)] if numbers.size else []
        for feature, values in zip(self.labels, labels, strict=True):
            if (found := feature.slots_of(values, self.spare)) is not None:
                slots.append(found)
        if slots:
            self.counts += np.bincount(np.concatenate(slots), minlength=self.counts.size)

    def _count_numbers(self, x: FloatArray) -> npt.NDArray[np.intp]:
        # Sorted keys make numpy's binary search reuse its last bounds: about twice as fast.
        x = np.sort(x, axis=1)
        finite = np.isfinite(x)
        clean = bool(finite.all())
        if not clean:
            missing = x.shape[1] - np.count_nonzero(finite, axis=1)
            for r in np.flatnonzero(missing).tolist():
                self.numeric[r].missing += int(missing[r])
            x = np.where(finite, x, 0.0)
        idx = np.empty(x.shape, dtype=np.intp)
        for r, edges in enumerate(self.edges):
            idx[r] = edges.searchsorted(x[r], side="right")
        idx += self.bases
        offsets = x - self.anchors[idx]
        if not clean:
            offsets[~finite] = 0.0
            idx[~finite] = self.spare
        flat = idx.ravel()
        self.offsets += np.bincount(flat, weights=offsets.ravel(), minlength=self.offsets.size)
        if self.exact:  # a hit is a value equal to its bin's left edge (offset 0)
            on_edge = offsets[: self.exact] == 0.0
            if not clean:  # missing values have offset 0 too
                on_edge &= finite[: self.exact]
            self.hits += np.bincount(idx[: self.exact][on_edge], minlength=self.hits.size)
            for r, state in self.discrete:
                if not on_edge[r].all():
                    new = offsets[r] != 0.0
                    names, counts, _ = count_labels(x[r][new])
                    state.add_unseen(names, counts)
        return flat


def _share(
    buffer: npt.NDArray[Any], start: int, stop: int, current: npt.NDArray[Any] | None, name: str
) -> Any:
    """``buffer[start:stop]`` holding ``current``'s values, to replace it."""
    view = buffer[start:stop]
    if current is None or current.shape != view.shape:
        raise ValueError(f"sketch feature {name!r} does not match its profile's layout")
    view[...] = current
    return view


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
        sketch._packed = _Packed(sketch._layouts, sketch.features)
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

    def __getstate__(self) -> dict[str, Any]:
        # A copy's arrays are no longer views of the packed buffers: it packs its own.
        return self.__dict__ | {"_packed": None}

    def update(
        self,
        columns: Mapping[str, Any] | pd.DataFrame | npt.NDArray[Any],
        predictions: Sequence[object] | npt.NDArray[Any] | None = None,
    ) -> None:
        """Count one batch of ``n`` rows.

        ``columns`` maps every feature name to ``n`` values (a dict of arrays, a DataFrame),
        or is an ``(n, features)`` array in signature order; ``predictions`` holds ``n``
        predicted labels. NaN and infinite numbers, None and NaN labels count as missing.

        Raises RuntimeError for a sketch loaded without its profile, and ValueError for a
        batch lacking a feature, with columns of different lengths, or of the wrong shape.
        """
        packed = self._packed or self._pack()
        if isinstance(columns, np.ndarray):
            numbers, labels, n = packed.split_matrix(columns)
        else:
            numbers, labels, n = packed.split_columns(columns)
        packed.count(numbers, labels)
        if predictions is not None:
            assert self.predictions is not None and self._prediction_layout is not None
            self._prediction_layout.count_labels(self.predictions, predictions)
        self.n_rows += n

    def _pack(self) -> _Packed:
        if self._layouts is None or self._prediction_layout is None:
            raise RuntimeError("sketch was loaded without its profile; pass profile= to update")
        self._packed = _Packed(self._layouts, self.features)
        return self._packed

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
