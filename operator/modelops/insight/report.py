"""The drift report: one self-contained HTML page per DriftMonitor check, drawn from counts.

``render(monitor, profile, sketch, quality)`` takes what the operator itself compares — the
DriftMonitor object (as the API server returns it), the version's reference profile
(:mod:`modelops.drift.profile`) and the pods' sketch windows merged over the window
(:class:`~modelops.drift.sketch.Sketch`, or None when no window arrived) — and returns an
HTML string. No raw rows are ever read: every histogram is drawn from the profile's and the
sketch's bin counts. The scores are computed again by :func:`modelops.drift.detect` with
the monitor's own spec (method, thresholds, features, drift share), so the numbers next to a
histogram are those of the counts drawn; without a sketch, the verdicts in the monitor's
status are shown instead, saying so.

Layout: a summary (version, window, samples, drifted share, the monitor's last verdict), an
overview table, then one section per feature, drifted features first (then by how close to
its threshold each score is), each with reference vs live histograms (inline SVG, shares of
each side's values), the method, score and threshold; then prediction drift (the class
distribution) and live quality (labels joined by the serving pods) when present.

Numeric histograms: each profile bin's mass is placed at its mean (the per-bin offsets of the
profile and the sketch, as the Wasserstein distance places it), then re-binned into
``DISPLAY_BINS`` equal-width bars over the range both sides cover, so live values beyond the
reference's range show where they are. Categorical: the ``TOP_CATEGORIES`` most frequent
reference categories, the rest as "other", and values unseen in training as their own bar.

The page has no JavaScript and no external URL (fonts, scripts, images): it opens offline, in
a mail attachment or a CI artefact. Every string that comes from users (names, categories,
messages) goes through :func:`html.escape`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from modelops.api.driftmonitor import DriftMonitorSpec
from modelops.drift import METHODS, PREDICTION, FeatureCounts, FeatureDrift, Sketch, detect
from modelops.drift.profile import anchors

if TYPE_CHECKING:
    from modelops.controllers.windows import LiveQuality
    from modelops.drift.quality import QualityCounts

FloatArray = npt.NDArray[np.float64]

REFERENCE_COLOUR = "#4c78a8"
LIVE_COLOUR = "#f58518"
DRIFT_COLOUR = "#c0392b"
OK_COLOUR = "#2e7d32"
UNKNOWN_COLOUR = "#777777"
DISPLAY_BINS = 24
TOP_CATEGORIES = 20
MAX_CONFUSION_CLASSES = 20
"""A confusion matrix with more classes than this is summarized, not drawn."""

METHOD_NAMES = {
    "wasserstein": "Wasserstein distance ÷ reference std",
    "jensenshannon": "Jensen-Shannon distance",
    "psi": "population stability index",
    "ks": "two-sample Kolmogorov-Smirnov p-value",
    "chisquare": "chi-squared p-value",
    "ztest": "two-proportion Z-test p-value",
}


@dataclass(frozen=True)
class Bar:
    """One bar pair: ``reference`` and ``live`` are shares (0..1) of each side's values."""

    label: str
    reference: float
    live: float


@dataclass(frozen=True)
class Histogram:
    """Bars of one feature; ``axis`` holds (low, middle, high) labels for numeric ones."""

    bars: list[Bar]
    reference_n: int
    live_n: int
    axis: tuple[str, str, str] | None = None
    note: str = ""
    """Numeric: how many live values lie beyond the training range (drawn at their mean)."""


@dataclass(frozen=True)
class FeatureView:
    """What a feature's section shows; ``drift`` is None when nothing was scored."""

    name: str
    kind: str
    drift: FeatureDrift | None
    histogram: Histogram
    missing: tuple[int, int]
    """Missing values (NaN, None, inf) in the reference and in the live window."""


# -- histograms: counts -> bars ---------------------------------------------------------------


def numeric_histogram(
    feature: Mapping[str, Any], live: FeatureCounts | None, bins: int = DISPLAY_BINS
) -> Histogram:
    """Reference vs live bars of a numeric profile feature (see the module docstring).

    ``feature`` is the profile's entry (``edges``, ``counts``, optional ``offsets``);
    ``live`` the sketch's counts of the same bins. Raises ValueError when their lengths differ.
    """
    edges = np.asarray(feature.get("edges") or [0.0], dtype=np.float64)
    at = anchors(edges)
    ref_pos, ref_w = _masses(at, feature.get("counts") or [0] * at.size, feature.get("offsets"))
    live_pos, live_w = np.zeros(0), np.zeros(0)
    if live is not None:
        if live.counts.size != at.size:
            raise ValueError(f"{live.counts.size} live bins for {at.size} profile bins")
        live_pos, live_w = _masses(at, live.counts, live.offsets)
    reference_n, live_n = int(ref_w.sum()), int(live_w.sum())
    note = "" if live is None else _beyond(feature, live)
    both = np.concatenate([ref_pos, live_pos])
    if both.size == 0:
        return Histogram([], reference_n, live_n, note=note)
    lo, hi = float(both.min()), float(both.max())
    if hi == lo:
        bar = Bar(_number(lo), _share(ref_w.sum(), reference_n), _share(live_w.sum(), live_n))
        return Histogram([bar], reference_n, live_n, ("", _number(lo), ""), note)
    width = (hi - lo) / bins

    def binned(pos: FloatArray, weights: FloatArray) -> FloatArray:
        index = np.minimum(((pos - lo) / width).astype(np.int64), bins - 1)
        return np.bincount(index, weights=weights, minlength=bins).astype(np.float64)

    ref_bins, live_bins = binned(ref_pos, ref_w), binned(live_pos, live_w)
    bars = [
        Bar(
            f"[{_number(lo + i * width)}, {_number(lo + (i + 1) * width)})",
            _share(ref_bins[i], reference_n),
            _share(live_bins[i], live_n),
        )
        for i in range(bins)
    ]
    axis = (_number(lo), _number((lo + hi) / 2), _number(hi))
    return Histogram(bars, reference_n, live_n, axis, note)


def _beyond(feature: Mapping[str, Any], live: FeatureCounts) -> str:
    """Live values in the profile's open tail bins, which the bars draw at their mean."""
    if "min" not in feature or live.counts.size < 2:
        return ""
    below = int(live.counts[0])
    above = int(live.counts[-1])
    at_max = "above"
    if live.hits is not None:
        above -= int(live.hits[-1])  # values equal to the maximum are within the range
    else:
        at_max = "at or above"
    parts = []
    if below:
        parts.append(f"{below} below the training minimum {_number(float(feature['min']))}")
    if above:
        parts.append(f"{above} {at_max} the training maximum {_number(float(feature['max']))}")
    if not parts:
        return ""
    return f"Live values {' and '.join(parts)}: each side drawn as one bar at their mean."


def categorical_histogram(
    feature: Mapping[str, Any], live: FeatureCounts | None, top: int = TOP_CATEGORIES
) -> Histogram:
    """Reference vs live bars of a categorical profile feature (or of the predictions): the
    ``top`` most frequent reference categories, "other" for the rest, and "unseen" for live
    values the reference never had. Raises ValueError when the live counts do not follow the
    profile's categories."""
    categories = [str(c) for c in feature.get("categories") or []]
    ref_counts = np.asarray(feature.get("counts") or [], dtype=np.float64)
    live_counts = np.zeros(len(categories)) if live is None else live.counts.astype(np.float64)
    if live_counts.size != len(categories):
        raise ValueError(f"{live_counts.size} live counts for {len(categories)} categories")
    reference_n = int(feature.get("n", ref_counts.sum()))
    live_n = 0 if live is None else live.n
    bars = [
        Bar(name, _share(ref_counts[i], reference_n), _share(live_counts[i], live_n))
        for i, name in enumerate(categories[:top])
    ]
    rest_ref = float(ref_counts[top:].sum()) + float(feature.get("other") or 0)
    rest_live = float(live_counts[top:].sum())
    if rest_ref or rest_live:
        more = max(len(categories) - top, 0) + (1 if feature.get("other") else 0)
        bars.append(
            Bar(f"other ({more}+)", _share(rest_ref, reference_n), _share(rest_live, live_n))
        )
    unseen = 0 if live is None else sum(live.unseen.values()) + live.unseen_other
    if unseen:
        bars.append(Bar("unseen in training", 0.0, _share(unseen, live_n)))
    return Histogram(bars, reference_n, live_n)


def _masses(at: FloatArray, counts: Any, offsets: Any) -> tuple[FloatArray, FloatArray]:
    """(position, count) of each non-empty bin: its mean when offsets are known, else its
    anchor (an exact profile's values sit on its edges)."""
    weights = np.asarray(counts, dtype=np.float64)
    filled = weights > 0
    pos = at[filled]
    if offsets is not None:
        pos = pos + np.asarray(offsets, dtype=np.float64)[filled] / weights[filled]
    return pos, weights[filled]


def _share(count: float, total: int) -> float:
    return float(count) / total if total > 0 else 0.0


# -- verdicts ---------------------------------------------------------------------------------


def feature_views(
    spec: DriftMonitorSpec,
    profile: Mapping[str, Any],
    sketch: Sketch | None,
    status_scores: Sequence[Mapping[str, Any]] = (),
) -> tuple[list[FeatureView], FeatureView | None, float | None]:
    """(feature views in report order, the predictions' view or None, drifted share or None).

    With a sketch, scores come from :func:`modelops.drift.detect` run with ``spec``; without,
    from ``status_scores`` (the monitor's ``status.features``). Raises ValueError when the
    spec names features or methods the profile cannot answer (as the monitor would say).
    """
    names = list(spec.features) if spec.features else [s["name"] for s in profile["signature"]]
    if unknown := [n for n in names if n not in profile["features"]]:
        raise ValueError(f"spec.features names {', '.join(unknown)}: not in the profile")
    has_predictions = profile.get("predictions") is not None
    live_predictions = sketch.predictions if sketch is not None else None
    scores: dict[str, FeatureDrift] = {}
    share: float | None = None
    if sketch is not None:
        report = detect(
            dict(profile),
            sketch,
            features=names,
            method=spec.method,
            threshold=spec.threshold,
            per_feature={k: v.wire() for k, v in spec.per_feature.items()},
            drift_share=spec.drift_share,
            include_predictions=spec.prediction_drift and has_predictions,
        )
        scores = {f.name: f for f in report.features}
        share = report.drifted_share
        if has_predictions and live_predictions is not None and PREDICTION not in scores:
            # Not part of the monitor's verdict, but worth seeing: the default test alone.
            alone = detect(dict(profile), sketch, features=[], include_predictions=True)
            scores[PREDICTION] = alone.features[0]
    else:
        for entry in status_scores:
            drift = _from_status(entry, profile)
            if drift is not None:
                scores[drift.name] = drift

    views = [
        _view(name, profile["features"][name], scores.get(name), sketch_counts(sketch, name))
        for name in names
    ]
    views.sort(key=_order)
    predictions = None
    if has_predictions:
        predictions = _view(
            PREDICTION, profile["predictions"], scores.get(PREDICTION), live_predictions
        )
    return views, predictions, share


def sketch_counts(sketch: Sketch | None, name: str) -> FeatureCounts | None:
    return None if sketch is None else sketch.features.get(name)


def _view(
    name: str, feature: Mapping[str, Any], drift: FeatureDrift | None, live: FeatureCounts | None
) -> FeatureView:
    if feature["kind"] == "numeric":
        histogram = numeric_histogram(feature, live)
    else:
        histogram = categorical_histogram(feature, live)
    missing = (int(feature.get("missing", 0)), 0 if live is None else live.missing)
    return FeatureView(name, str(feature["kind"]), drift, histogram, missing)


def _order(view: FeatureView) -> tuple[bool, float, str]:
    """Drifted first, then the furthest past (or closest to) its threshold, unscored last."""
    if view.drift is None:
        return True, math.inf, view.name
    return not view.drift.drifted, -view.drift.severity, view.name


def _from_status(entry: Mapping[str, Any], profile: Mapping[str, Any]) -> FeatureDrift | None:
    name, method = str(entry.get("name", "")), str(entry.get("method", ""))
    if method not in METHODS:
        return None
    features = {PREDICTION: profile.get("predictions"), **profile["features"]}
    feature = features.get(name)
    if feature is None:
        return None
    score = entry.get("score")
    return FeatureDrift(
        name=name,
        method=method,
        score=math.nan if score is None else float(score),
        threshold=float(entry.get("threshold", METHODS[method].threshold)),
        drifted=bool(entry.get("drifted")),
        kind=str(feature["kind"]),
    )


# -- the page ---------------------------------------------------------------------------------


def render(
    monitor: Mapping[str, Any],
    profile: Mapping[str, Any],
    sketch: Sketch | None,
    quality: LiveQuality | None = None,
    *,
    version: str,
    window: str,
    reference_metrics: Mapping[str, float] | None = None,
    generated_at: dt.datetime | None = None,
) -> str:
    """The report as one HTML document (UTF-8 text).

    ``monitor``: the DriftMonitor object (metadata, spec, status); ``profile``: the reference
    profile of ``version``; ``sketch``: the live windows of ``version`` merged over ``window``
    (a duration such as ``30m``), or None; ``quality``: the merged quality objects, if any;
    ``reference_metrics``: the version's held-out metrics (``ModelVersion.spec.metrics``),
    shown beside the live ones. Raises ValueError when the monitor's spec is invalid or names
    features the profile lacks, or when the sketch was not counted against this profile.
    """
    spec = DriftMonitorSpec.model_validate(monitor.get("spec") or {})
    status = monitor.get("status") or {}
    meta = monitor.get("metadata") or {}
    if sketch is not None and sketch.fingerprint != profile.get("fingerprint"):
        raise ValueError("the sketch was not counted against this profile")
    same = status.get("version") == version
    status_scores = (status.get("features") or []) if same else []
    views, predictions, share = feature_views(spec, profile, sketch, status_scores)
    generated = (generated_at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"Drift report: DriftMonitor {meta.get('namespace', '')}/{meta.get('name', '')}"
    parts = [
        _head(title),
        f"<header><h1>{_e(title)}</h1>",
        _summary(spec, status, profile, sketch, version, window, views, share),
        "</header>",
        _overview(views, predictions),
    ]
    parts += [_feature_section(i, view) for i, view in enumerate(views)]
    if predictions is not None:
        parts.append(_predictions_section(predictions, spec.prediction_drift))
    if quality is not None:
        parts.append(_quality_section(quality, reference_metrics or {}))
    parts.append(
        f"<footer><p>Drawn from the reference profile (fingerprint "
        f"{_e(str(profile.get('fingerprint', '')))}, {int(profile.get('nRows', 0))} rows) and "
        f"the serving pods' merged sketch windows: bin counts only, no raw rows. "
        f"Generated {_e(generated)}.</p></footer></body></html>"
    )
    return "\n".join(parts)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


CSS = f"""
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  max-width: 1100px; margin: 24px auto; padding: 0 16px; background: #fff; }}
h1 {{ font-size: 22px; margin: 0 0 6px; }}
h2 {{ font-size: 17px; margin: 0 0 6px; }}
.meta {{ color: #555; margin: 2px 0; }}
table {{ border-collapse: collapse; margin: 10px 0; }}
th, td {{ padding: 3px 10px; border-bottom: 1px solid #e3e3e3; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.badge {{ display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  color: #fff; vertical-align: middle; }}
.badge.drifted {{ background: {DRIFT_COLOUR}; }}
.badge.ok {{ background: {OK_COLOUR}; }}
.badge.unknown {{ background: {UNKNOWN_COLOUR}; }}
section {{ border: 1px solid #ddd; border-left: 6px solid {UNKNOWN_COLOUR}; border-radius: 4px;
  padding: 10px 16px; margin: 14px 0; }}
section.is-drifted {{ border-left-color: {DRIFT_COLOUR}; }}
section.is-ok {{ border-left-color: {OK_COLOUR}; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 14px;
  vertical-align: -1px; }}
.warn {{ color: {DRIFT_COLOUR}; }}
svg {{ display: block; width: 100%; height: auto; }}
footer {{ color: #666; font-size: 12px; margin-top: 24px; }}
"""


def _head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
    )


def _summary(
    spec: DriftMonitorSpec,
    status: Mapping[str, Any],
    profile: Mapping[str, Any],
    sketch: Sketch | None,
    version: str,
    window: str,
    views: Sequence[FeatureView],
    share: float | None,
) -> str:
    lines = [
        f"Deployment <b>{_e(spec.deployment)}</b>, version <b>{_e(version)}</b>; "
        f"reference: {int(profile.get('nRows', 0))} training rows"
    ]
    if sketch is None:
        lines.append(
            f'<span class="warn">No sketch window of {_e(version)} in the last {_e(window)}:'
            " reference histograms only; the scores are the monitor's last verdicts.</span>"
        )
    else:
        span = ""
        if sketch.start is not None and sketch.end is not None:
            span = f" ({_e(_utc(sketch.start))} to {_e(_utc(sketch.end))})"
        few = ""
        if sketch.n_rows < spec.min_samples:
            few = (
                f' <span class="warn">fewer than minSamples ({spec.min_samples}): the monitor'
                " would not decide on this window</span>"
            )
        lines.append(f"Live window: last {_e(window)}{span}, {sketch.n_rows} samples{few}")
    drifted = sum(1 for v in views if v.drift is not None and v.drift.drifted)
    if share is not None:
        verdict = share >= spec.drift_share and bool(views)
        badge = _badge(verdict, "dataset drift" if verdict else "no dataset drift")
        lines.append(
            f"{badge} {drifted} of {len(views)} features drifted (share {share:.2f}; "
            f"dataset drift at {spec.drift_share:g})"
        )
    phase = status.get("phase")
    if phase:
        checked = status.get("lastCheckTime") or "never"
        message = status.get("message") or ""
        lines.append(
            f"Monitor's last check: <b>{_e(phase)}</b> at {_e(checked)} "
            f"on {_e(status.get('version') or '-')}: {_e(message)}"
        )
    return "".join(f'<p class="meta">{line}</p>' for line in lines)


def _overview(views: Sequence[FeatureView], predictions: FeatureView | None) -> str:
    rows = []
    for i, view in enumerate(views):
        rows.append(_overview_row(f"#feature-{i}", view.name, view))
    if predictions is not None:
        rows.append(_overview_row("#predictions", "predictions (classes)", predictions))
    head = (
        "<tr><th>feature</th><th>kind</th><th>method</th><th>score</th>"
        "<th>threshold</th><th>verdict</th></tr>"
    )
    return f'<table class="overview">{head}{"".join(rows)}</table>'


def _overview_row(anchor: str, label: str, view: FeatureView) -> str:
    d = view.drift
    method = d.method if d else "-"
    score = _number(d.score) if d else "-"
    threshold = _number(d.threshold) if d else "-"
    return (
        f'<tr><td><a href="{anchor}">{_e(label)}</a></td><td>{_e(view.kind)}</td>'
        f'<td>{_e(method)}</td><td class="num">{score}</td><td class="num">{threshold}</td>'
        f"<td>{_verdict_badge(d)}</td></tr>"
    )


def _verdict_badge(drift: FeatureDrift | None) -> str:
    if drift is None or math.isnan(drift.score):
        return '<span class="badge unknown">not scored</span>'
    return _badge(drift.drifted, "drifted" if drift.drifted else "no drift")


def _badge(bad: bool, text: str) -> str:
    return f'<span class="badge {"drifted" if bad else "ok"}">{_e(text)}</span>'


def _state(drift: FeatureDrift | None) -> str:
    if drift is None or math.isnan(drift.score):
        return "unknown"
    return "drifted" if drift.drifted else "ok"


def _feature_section(index: int, view: FeatureView) -> str:
    state = _state(view.drift)
    return (
        f'<section class="feature is-{state}" id="feature-{index}" '
        f'data-feature="{_e(view.name)}" data-drifted="{str(state == "drifted").lower()}">'
        f"<h2>{_e(view.name)} {_verdict_badge(view.drift)}</h2>"
        f"{_drift_line(view)}{_legend(view.histogram)}{histogram_svg(view.name, view.histogram)}"
        f"{_note(view.histogram)}</section>"
    )


def _note(histogram: Histogram) -> str:
    return f'<p class="meta">{_e(histogram.note)}</p>' if histogram.note else ""


def _drift_line(view: FeatureView) -> str:
    d = view.drift
    missing = f"; missing values: {view.missing[0]} in training, {view.missing[1]} live"
    if d is None:
        return f'<p class="meta">{_e(view.kind)}; not scored{missing}</p>'
    spec = METHODS[d.method]
    if spec.p_value:
        rule = f"drift when p {'≤' if spec.inclusive else '<'} threshold"
    else:
        rule = "drift when score ≥ threshold"
    return (
        f'<p class="meta">{_e(view.kind)}; method <b>{_e(d.method)}</b> '
        f"({_e(METHOD_NAMES.get(d.method, d.method))}): score <b>{_number(d.score)}</b>, "
        f"threshold {_number(d.threshold)}, {rule}{missing}</p>"
    )


def _legend(histogram: Histogram) -> str:
    return (
        f'<p class="legend"><i style="background:{REFERENCE_COLOUR}"></i>reference '
        f"({histogram.reference_n} values)"
        f'<i style="background:{LIVE_COLOUR}"></i>live ({histogram.live_n} values)</p>'
    )


SVG_WIDTH, SVG_HEIGHT = 1000, 210
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 52, 990, 10, 170


def histogram_svg(name: str, histogram: Histogram) -> str:
    """Inline SVG of the bars: heights are shares of each side's values, the y axis in
    percent; each bar's ``<title>`` gives its label and both shares (a tooltip, no script)."""
    bars = histogram.bars
    top = max([max(b.reference, b.live) for b in bars] + [0.0]) or 1.0
    plot_w, plot_h = PLOT_RIGHT - PLOT_LEFT, PLOT_BOTTOM - PLOT_TOP
    out = [
        f'<svg class="histogram" data-feature="{_e(name)}" viewBox="0 0 {SVG_WIDTH} '
        f'{SVG_HEIGHT}" role="img" aria-label="{_e(f"histogram of {name}")}">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = PLOT_BOTTOM - fraction * plot_h
        out.append(
            f'<line x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#ddd" stroke-width="1"/><text x="{PLOT_LEFT - 6}" y="{y + 4:.1f}" '
            f'font-size="11" text-anchor="end" fill="#555">{100 * fraction * top:.3g}%</text>'
        )
    slot = plot_w / max(len(bars), 1)
    for i, bar in enumerate(bars):
        x = PLOT_LEFT + i * slot
        tip = _e(f"{bar.label}: reference {bar.reference:.2%}, live {bar.live:.2%}")
        for share, offset, colour in (
            (bar.reference, 0.08, REFERENCE_COLOUR),
            (bar.live, 0.5, LIVE_COLOUR),
        ):
            h = share / top * plot_h
            out.append(
                f'<rect x="{x + offset * slot:.2f}" y="{PLOT_BOTTOM - h:.2f}" '
                f'width="{0.42 * slot:.2f}" height="{h:.2f}" fill="{colour}">'
                f"<title>{tip}</title></rect>"
            )
        if histogram.axis is None:  # categories: a label under each bar pair
            room = max(int(slot / 7), 3)
            label = bar.label if len(bar.label) <= room else bar.label[: room - 1] + "…"
            out.append(
                f'<text x="{x + slot / 2:.1f}" y="{PLOT_BOTTOM + 16}" font-size="11" '
                f'text-anchor="middle" fill="#333">{_e(label)}</text>'
            )
    if histogram.axis is not None:
        for label, x, anchor in zip(
            histogram.axis,
            (PLOT_LEFT, (PLOT_LEFT + PLOT_RIGHT) / 2, PLOT_RIGHT),
            ("start", "middle", "end"),
            strict=True,
        ):
            out.append(
                f'<text x="{x}" y="{PLOT_BOTTOM + 16}" font-size="11" '
                f'text-anchor="{anchor}" fill="#333">{_e(label)}</text>'
            )
    out.append(
        f'<line x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{PLOT_BOTTOM}" y2="{PLOT_BOTTOM}" '
        'stroke="#888" stroke-width="1"/></svg>'
    )
    return "".join(out)


def _predictions_section(view: FeatureView, in_verdict: bool) -> str:
    note = (
        "part of the monitor's verdict (spec.predictionDrift)"
        if in_verdict
        else "shown for information: not part of the monitor's verdict (spec.predictionDrift"
        " is false)"
    )
    state = _state(view.drift)
    return (
        f'<section class="predictions is-{state}" id="predictions">'
        f"<h2>Prediction drift {_verdict_badge(view.drift)}</h2>"
        f'<p class="meta">The predicted class distribution, {note}.</p>'
        f"{_drift_line(view)}{_legend(view.histogram)}"
        f"{histogram_svg('predictions', view.histogram)}</section>"
    )


def _quality_section(quality: LiveQuality, reference: Mapping[str, float]) -> str:
    parts = ['<section class="quality" id="quality"><h2>Live quality</h2>']
    counts = quality.quality
    if counts is None or counts.labels == 0:
        parts.append('<p class="meta">No true labels joined in this window.</p>')
    else:
        parts.append(_metrics_table(counts, reference))
        if counts.task == "classification":
            parts.append(_confusion(counts))
    agreement = quality.agreement
    if agreement is not None and agreement.compared:
        parts.append(
            f'<p class="meta">Shadow agreement with stable: {agreement.rate:.2%} of '
            f"{agreement.compared} compared rows (mean |difference| "
            f"{_number(agreement.sum_abs_difference / agreement.compared)})</p>"
        )
    if quality.feedback:
        items = ", ".join(f"{_e(k)} {int(v)}" for k, v in sorted(quality.feedback.items()))
        parts.append(f'<p class="meta">Feedback: {items}</p>')
    parts.append("</section>")
    return "".join(parts)


def _metrics_table(counts: QualityCounts, reference: Mapping[str, float]) -> str:
    if counts.task == "classification":
        metrics = {"accuracy": counts.value("accuracy"), "f1 (macro)": counts.value("f1")}
        keys = {"accuracy": "accuracy", "f1 (macro)": "f1"}
    else:
        n = counts.labels
        metrics = {
            "mae": counts.value("mae"),
            "rmse": counts.value("rmse"),
            "mean error (bias)": counts.sum_error / n,
            "median |error| (upper bin edge)": counts.abs_error_quantile(0.5),
            "90th percentile |error|": counts.abs_error_quantile(0.9),
        }
        keys = {"mae": "mae", "rmse": "rmse"}
    rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="num">{_number(value)}</td>'
        f'<td class="num">{_number(reference[keys[name]]) if keys.get(name) in reference else "-"}'
        "</td></tr>"
        for name, value in metrics.items()
    )
    return (
        f'<p class="meta">{counts.labels} true labels joined ({_e(counts.task)}).</p>'
        '<table class="metrics"><tr><th>metric</th><th>live</th><th>held-out (training)</th>'
        f"</tr>{rows}</table>"
    )


def _confusion(counts: QualityCounts) -> str:
    classes = counts.classes
    if len(classes) > MAX_CONFUSION_CLASSES:
        return f'<p class="meta">{len(classes)} classes: confusion matrix not drawn.</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in classes)
    rows = "".join(
        f"<tr><th>{_e(c)}</th>"
        + "".join(f'<td class="num">{int(v)}</td>' for v in counts.confusion[i].tolist())
        + "</tr>"
        for i, c in enumerate(classes)
    )
    return (
        '<table class="confusion"><caption>confusion matrix: rows true label, columns '
        f"predicted</caption><tr><th></th>{head}</tr>{rows}</table>"
    )


def _number(x: float) -> str:
    if math.isnan(x):
        return "—"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4g}"


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
