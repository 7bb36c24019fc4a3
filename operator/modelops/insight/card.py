"""The model card of a ModelVersion: one JSON document (the data) and one HTML page (it drawn).

``card_document(version, profile, deployments=..., monitors=...)`` gathers, from objects as
the API server returns them and the version's reference profile, what a reader needs to know
about one version; ``render_html(card)`` draws that document. Both are pure: no network, no
clock unless ``generated_at`` is left out.

The operator writes ``card.json`` and ``card.html`` beside ``model.skops`` when it registers
the version (lineage, metrics, fairness, profile, signature: the version is not served yet,
so the rollout and drift lists are empty) and records both digests in
``ModelVersion.spec.card``. ``modelops card mv/NAME`` draws it anew with the rollout and
drift history of now merged in.

Card document, ``schemaVersion`` 1::

    {"schemaVersion": 1, "generatedAt": "2025-10-09T09:30:00Z",
     "modelVersion": {"name", "namespace", "model", "version", "phase"},
     "lineage": {...},                       # ModelVersion.spec.lineage as written
     "artifacts": {"model": {uri, sha256, size}, "profile": ..., "probe": ...},
     "metrics": {"accuracy": 0.97, ...},     # held-out metrics, fairness scalars apart
     "fairness": {...} | null,               # ModelVersion.spec.fairness as written
     "signature": {...},
     "profile": {"fingerprint", "nRows", "features": [{"name", "kind", "stats": {...},
                 "histogram": {"bars": [{"label", "share"}], "axis": [lo, mid, hi] | null}}],
                 "predictions": {same shape} | null} | null,
     "profileProblem": "why there is no profile" (only then),
     "serving": [{"deployment", "role": "stable" | "canary" | "rejected", "phase", "weight"}],
     "rollout": [{"deployment", "time", "event", "reason", "message"}],   # oldest first
     "drift": [{"monitor", "deployment", "phase", "lastCheckTime", "samples", "driftedShare",
                "drifted", "underperforming", "message", "firings", "lastFiredTime",
                "features": [{"name", "method", "score", "threshold", "drifted"}]}]}

Rollout history: the entries of each Deployment's ``status.history`` that name this version
(the Deployment keeps its last 20), and its role there now. Drift history: each DriftMonitor
whose last check was on this version (``status.version``): its verdict, conditions and worst
features; ``firings`` and ``lastFiredTime`` are the monitor's totals over every version it
watched (a monitor keeps no history per version).

The page reuses the drift report's histograms (:mod:`modelops.insight.report`, reference bars
only), has no JavaScript and no external URL, and escapes every string with
:func:`html.escape`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelops.insight.report import (
    CSS,
    Bar,
    Histogram,
    categorical_histogram,
    histogram_svg,
    numeric_histogram,
)
from modelops.resources.training import LOWER_IS_BETTER
from modelops.training.metrics import FAIRNESS_SCALARS

SCHEMA_VERSION = 1
CARD_BINS = 16
"""Bars of a numeric feature's histogram (the profile's bins re-binned, as the report does)."""
CARD_CATEGORIES = 10
"""Categories drawn per categorical feature; the rest as one "other" bar."""
MAX_DRIFT_FEATURES = 5
MAX_LISTED_CATEGORIES = 12
"""Categories of an input listed in the signature table before "and N more"."""
STAT_KEYS = ("n", "missing", "mean", "std", "min", "max", "unique")
SECTIONS = ("lineage", "metrics", "fairness", "profile", "signature", "rollout", "drift")


# -- the document -----------------------------------------------------------------------------


def card_document(
    version: Mapping[str, Any],
    profile: Mapping[str, Any] | None,
    *,
    profile_problem: str | None = None,
    deployments: Sequence[Mapping[str, Any]] = (),
    monitors: Sequence[Mapping[str, Any]] = (),
    generated_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The card of ``version`` (a ModelVersion object: metadata, spec, optional status).

    ``profile``: its reference profile (:mod:`modelops.drift.profile`), or None with
    ``profile_problem`` saying why; ``deployments``: Deployments of its model (their status
    history and roles); ``monitors``: DriftMonitors of the namespace (those whose last check
    was on this version are kept). Raises KeyError when ``version`` has no spec.
    """
    meta = version.get("metadata") or {}
    spec = version["spec"]
    name = str(meta.get("name", ""))
    when = generated_at or dt.datetime.now(dt.UTC)
    metrics = spec.get("metrics") or {}
    card: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "generatedAt": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "modelVersion": {
            "name": name,
            "namespace": meta.get("namespace"),
            "model": spec.get("model"),
            "version": spec.get("version"),
            "phase": (version.get("status") or {}).get("phase"),
        },
        "lineage": dict(spec.get("lineage") or {}),
        "artifacts": {
            label: spec[key]
            for label, key in (("model", "artifact"), ("profile", "profile"), ("probe", "probe"))
            if spec.get(key)
        },
        "metrics": {k: v for k, v in sorted(metrics.items()) if k not in FAIRNESS_SCALARS},
        "fairness": spec.get("fairness"),
        "signature": spec.get("signature"),
        "profile": profile_summary(profile) if profile is not None else None,
        "serving": serving_roles(name, deployments),
        "rollout": rollout_history(name, deployments),
        "drift": drift_history(name, monitors),
    }
    if profile is None:
        card["profileProblem"] = profile_problem or "the version has no reference profile"
    return card


def profile_summary(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Per feature of the profile: kind, summary statistics and a small histogram (shares of
    the reference's values); the same for the predicted classes when present."""
    features = [
        _feature_summary(str(name), feature)
        for name, feature in (profile.get("features") or {}).items()
    ]
    predictions = profile.get("predictions")
    return {
        "fingerprint": profile.get("fingerprint"),
        "nRows": profile.get("nRows"),
        "features": features,
        "predictions": _feature_summary("predictions", predictions) if predictions else None,
    }


def _feature_summary(name: str, feature: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(feature.get("kind", ""))
    if kind == "numeric":
        drawn = numeric_histogram(feature, None, bins=CARD_BINS)
    else:
        drawn = categorical_histogram(feature, None, top=CARD_CATEGORIES)
    # Strict JSON: a statistic of a column with no finite value (NaN) is left out.
    stats = {k: feature[k] for k in STAT_KEYS if k in feature and _finite(feature[k])}
    return {
        "name": name,
        "kind": kind,
        "stats": stats,
        "histogram": {
            "bars": [{"label": b.label, "share": round(b.reference, 6)} for b in drawn.bars],
            "axis": list(drawn.axis) if drawn.axis is not None else None,
            "n": drawn.reference_n,
        },
    }


def serving_roles(name: str, deployments: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Where the version is now: stable, canary (with its weight) or rejected, per Deployment."""
    roles = []
    for dep in deployments:
        status = dep.get("status") or {}
        dep_name = (dep.get("metadata") or {}).get("name")
        role, weight = None, None
        if status.get("stableVersion") == name:
            role = "stable"
            canary = status.get("canaryWeight") if status.get("canaryVersion") else 0
            weight = 100 - int(canary or 0)
        elif status.get("canaryVersion") == name:
            role, weight = "canary", int(status.get("canaryWeight") or 0)
        elif name in (status.get("rejectedVersions") or []):
            role = "rejected"
        if role is not None:
            roles.append(
                {"deployment": dep_name, "role": role, "phase": status.get("phase"),
                 "weight": weight}
            )  # fmt: skip
    return roles


def rollout_history(name: str, deployments: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every Deployment history entry naming the version, oldest first."""
    entries = [
        {
            "deployment": (dep.get("metadata") or {}).get("name"),
            "time": entry.get("time"),
            "event": entry.get("event"),
            "reason": entry.get("reason"),
            "message": entry.get("message", ""),
        }
        for dep in deployments
        for entry in (dep.get("status") or {}).get("history") or []
        if entry.get("version") == name
    ]
    return sorted(entries, key=lambda e: (str(e["time"] or ""), str(e["deployment"])))


def drift_history(name: str, monitors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The last verdict of each DriftMonitor whose last check was on the version."""
    out = []
    for monitor in monitors:
        status = monitor.get("status") or {}
        if status.get("version") != name:
            continue
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        scored = sorted(
            status.get("features") or [],
            key=lambda f: (not f.get("drifted"), str(f.get("name", ""))),
        )
        out.append(
            {
                "monitor": (monitor.get("metadata") or {}).get("name"),
                "deployment": (monitor.get("spec") or {}).get("deployment"),
                "phase": status.get("phase"),
                "lastCheckTime": status.get("lastCheckTime"),
                "samples": status.get("samples"),
                "driftedShare": status.get("driftedShare"),
                "drifted": (conditions.get("Drifted") or {}).get("status"),
                "underperforming": (conditions.get("Underperforming") or {}).get("status"),
                "message": status.get("message") or "",
                "firings": status.get("firings", 0),
                "lastFiredTime": status.get("lastFiredTime"),
                "features": scored[:MAX_DRIFT_FEATURES],
            }
        )
    return sorted(out, key=lambda m: str(m["monitor"]))


# -- the page ---------------------------------------------------------------------------------


def render_html(card: Mapping[str, Any]) -> str:
    """The card as one self-contained HTML document (UTF-8 text, no script, no external URL)."""
    mv = card.get("modelVersion") or {}
    title = f"Model card: {mv.get('name', '')}"
    subtitle = (
        f"model <b>{_e(mv.get('model'))}</b>, version <b>{_e(mv.get('version'))}</b>, "
        f"namespace {_e(mv.get('namespace'))}"
        + (f", phase <b>{_e(mv['phase'])}</b>" if mv.get("phase") else "")
    )
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}{CARD_CSS}</style></head><body>",
        f'<header><h1>{_e(title)}</h1><p class="meta">{subtitle}</p></header>',
        _lineage(card),
        _metrics(card),
        _fairness(card.get("fairness")),
        _profile(card),
        _signature(card.get("signature") or {}),
        _rollout(card),
        _drift(card.get("drift") or []),
        f"<footer><p>Generated {_e(card.get('generatedAt', ''))} from ModelVersion "
        f"{_e(mv.get('namespace'))}/{_e(mv.get('name'))} and its reference profile "
        "(bin counts, no raw rows).</p></footer></body></html>",
    ]
    return "\n".join(parts)


CARD_CSS = """
.histograms { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 4px 24px; }
.histograms figure { margin: 6px 0; }
.histograms figcaption { font-weight: 600; }
td.mono, span.mono { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
section.card { border-left-color: #4c78a8; }
"""


def _section(key: str, heading: str, body: str) -> str:
    return (
        f'<section class="card" id="{key}" data-section="{key}"><h2>{_e(heading)}</h2>'
        f"{body}</section>"
    )


def _table(head: Sequence[str] | None, rows: Sequence[Sequence[str]], css: str) -> str:
    """A table of already-escaped cells, with a header row unless ``head`` is None."""
    header = "" if head is None else "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f'<table class="{css}">{header}{body}</table>'


def _cell(value: Any, numeric: bool = False) -> str:
    if numeric:
        return f'<td class="num">{_number(value)}</td>'
    return f"<td>{_e('-' if value is None or value == '' else value)}</td>"


def _lineage(card: Mapping[str, Any]) -> str:
    lineage = card.get("lineage") or {}
    params = lineage.get("params") or {}
    rows = [
        ("TrainingRun", lineage.get("trainingRun")),
        ("run uid", lineage.get("runUid")),
        ("dataset", lineage.get("datasetUri")),
        ("dataset sha256", lineage.get("datasetSha256")),
        ("target", lineage.get("target")),
        ("test size", lineage.get("testSize")),
        ("estimator", lineage.get("estimator")),
        ("params", ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "(defaults)"),
        ("seed", lineage.get("seed")),
        ("image", lineage.get("image")),
        ("trigger", " — ".join(str(x) for x in (lineage.get("trigger"),
                                                 lineage.get("triggerDetail")) if x)),
    ]  # fmt: skip
    cells = [(f"<th>{_e(k)}</th>", _cell(v)) for k, v in rows]
    artifacts = [
        (f"<th>{_e(k)}</th>", f'<td class="mono">{_e(ref.get("uri"))}<br>sha256 '
                              f'{_e(ref.get("sha256"))}</td>')
        for k, ref in (card.get("artifacts") or {}).items()
    ]  # fmt: skip
    return _section("lineage", "Lineage", _table(None, [*cells, *artifacts], "lineage"))


def _metrics(card: Mapping[str, Any]) -> str:
    metrics = card.get("metrics") or {}
    if not metrics:
        return _section("metrics", "Metrics", '<p class="meta">No metric was measured.</p>')
    rows = [(f"<td>{_e(k)}</td>", _cell(v, numeric=True)) for k, v in metrics.items()]
    note = '<p class="meta">Measured on the held-out split (lineage: test size).</p>'
    return _section("metrics", "Metrics", note + _table(("metric", "value"), rows, "metrics"))


def _fairness(record: Mapping[str, Any] | None) -> str:
    if not record:
        return _section(
            "fairness",
            "Fairness",
            '<p class="meta">Not assessed: the TrainingRun named no spec.fairness.</p>',
        )
    positive = record.get("positiveLabel")
    parts = [
        f'<p class="meta">Sensitive features: '
        f"{_e(', '.join(record.get('sensitiveFeatures') or []))}"
        + (f"; favourable class {_e(positive)}" if positive is not None else "")
        + ". Measured with fairlearn on the held-out rows; the overall value of each scalar"
        " is the worst over the sensitive features.</p>"
    ]
    overall = record.get("metrics") or {}
    rows = [
        (f"<td>{_e(k)}</td>", _cell(v, numeric=True),
         f"<td>{'lower is better' if k in LOWER_IS_BETTER else 'higher is better'}</td>")
        for k, v in overall.items()
    ]  # fmt: skip
    parts.append(_table(("metric", "worst", "gate"), rows, "fairness-overall"))
    for key, why in (record.get("unmeasured") or {}).items():
        parts.append(f'<p class="meta warn">{_e(key)}: {_e(why)}</p>')
    for feature in record.get("features") or []:
        parts.append(_fairness_feature(feature))
    return _section("fairness", "Fairness", "".join(parts))


def _fairness_feature(feature: Mapping[str, Any]) -> str:
    groups = feature.get("groups") or []
    columns: list[str] = []
    for group in groups:
        for key in group.get("metrics") or {}:
            if key not in columns:
                columns.append(key)
    rows = [
        (
            _cell(group.get("value")),
            f'<td class="num">{int(group.get("count", 0))}</td>',
            *(_cell((group.get("metrics") or {}).get(c), numeric=True) for c in columns),
        )
        for group in groups
    ]
    scalars = ", ".join(f"{k} {_number(v)}" for k, v in (feature.get("metrics") or {}).items())
    omitted = int(feature.get("omittedGroups") or 0)
    note = f'<p class="meta">{omitted} smaller groups not listed.</p>' if omitted else ""
    return (
        f'<h3 data-feature="{_e(feature.get("name"))}">by {_e(feature.get("name"))}</h3>'
        f'<p class="meta">{_e(scalars)}</p>'
        + _table(("group", "rows", *(_e(c) for c in columns)), rows, "fairness-groups")
        + note
    )


def _profile(card: Mapping[str, Any]) -> str:
    profile = card.get("profile")
    if not profile:
        why = card.get("profileProblem") or "no reference profile"
        return _section("profile", "Reference profile", f'<p class="meta warn">{_e(why)}</p>')
    figures = [_figure(f) for f in profile.get("features") or []]
    if profile.get("predictions"):
        figures.append(_figure(profile["predictions"]))
    intro = (
        f'<p class="meta">The training rows the drift monitors compare live traffic with: '
        f"{_e(profile.get('nRows'))} rows, fingerprint {_e(profile.get('fingerprint'))}. "
        "Bars are shares of each feature's values.</p>"
    )
    return _section(
        "profile",
        "Reference profile",
        intro + f'<div class="histograms">{"".join(figures)}</div>',
    )


def _figure(feature: Mapping[str, Any]) -> str:
    drawn = feature.get("histogram") or {}
    bars = [Bar(str(b.get("label")), float(b.get("share", 0.0)), 0.0) for b in drawn.get("bars")
            or []]  # fmt: skip
    axis = drawn.get("axis")
    histogram = Histogram(bars, int(drawn.get("n") or 0), 0, tuple(axis) if axis else None)
    stats = feature.get("stats") or {}
    line = ", ".join(f"{k} {_number(v)}" for k, v in stats.items())
    name = str(feature.get("name"))
    return (
        f'<figure data-feature="{_e(name)}"><figcaption>{_e(name)} '
        f'<span class="meta">({_e(feature.get("kind"))})</span></figcaption>'
        f"{histogram_svg(name, histogram)}"
        f'<p class="meta">{_e(line)}</p></figure>'
    )


def _signature(signature: Mapping[str, Any]) -> str:
    rows = []
    for feature in signature.get("inputs") or []:
        categories = [str(c) for c in feature.get("categories") or []]
        shown = ", ".join(categories[:MAX_LISTED_CATEGORIES])
        if len(categories) > MAX_LISTED_CATEGORIES:
            shown += f" and {len(categories) - MAX_LISTED_CATEGORIES} more"
        rows.append((_cell(feature.get("name")), _cell(feature.get("datatype")), _cell(shown)))
    classes = signature.get("classes")
    outputs = f"; classes {', '.join(map(str, classes))}" if classes else ""
    intro = f'<p class="meta">Task {_e(signature.get("task"))}{_e(outputs)}.</p>'
    table = _table(("input", "datatype", "categories"), rows, "signature")
    return _section("signature", "Signature", intro + table)


def _rollout(card: Mapping[str, Any]) -> str:
    serving = card.get("serving") or []
    history = card.get("rollout") or []
    if not serving and not history:
        return _section("rollout", "Rollout", '<p class="meta">Not served yet.</p>')
    parts = []
    if serving:
        roles = [
            (_cell(s.get("deployment")), _cell(s.get("role")), _cell(s.get("phase")),
             _cell(f"{s['weight']}%" if s.get("weight") is not None else None))
            for s in serving
        ]  # fmt: skip
        parts.append(_table(("Deployment", "role", "phase", "weight"), roles, "serving"))
    if history:
        rows = [
            (_cell(h.get("time")), _cell(h.get("deployment")), _cell(h.get("event")),
             _cell(h.get("reason")), _cell(h.get("message")))
            for h in history
        ]  # fmt: skip
        parts.append(_table(("time", "Deployment", "event", "reason", "message"), rows, "history"))
    return _section("rollout", "Rollout", "".join(parts))


def _drift(monitors: Sequence[Mapping[str, Any]]) -> str:
    if not monitors:
        return _section(
            "drift", "Drift", '<p class="meta">No DriftMonitor has checked this version.</p>'
        )
    parts = []
    for m in monitors:
        worst = ", ".join(
            f"{f.get('name')} {f.get('method')} {_number(f.get('score'))}"
            + (" (drifted)" if f.get("drifted") else "")
            for f in m.get("features") or []
        )
        parts.append(
            f'<h3 data-monitor="{_e(m.get("monitor"))}">DriftMonitor {_e(m.get("monitor"))} '
            f"on Deployment {_e(m.get('deployment'))}</h3>"
            f'<p class="meta">last check {_e(m.get("lastCheckTime") or "never")}: '
            f"<b>{_e(m.get('phase'))}</b>, Drifted={_e(m.get('drifted'))}"
            + (f", Underperforming={_e(m['underperforming'])}" if m.get("underperforming")
               else "")
            + f", {_e(m.get('samples') or 0)} samples, drifted share "
            f"{_number(m.get('driftedShare'))}: {_e(m.get('message'))}</p>"
            f'<p class="meta">worst features: {_e(worst or "-")}; the monitor fired '
            f"{_e(m.get('firings', 0))} times over all versions it watched (last "
            f"{_e(m.get('lastFiredTime') or 'never')})</p>"
        )  # fmt: skip
    return _section("drift", "Drift", "".join(parts))


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str | bool)


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return _e("-" if value is None else value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "—"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"
