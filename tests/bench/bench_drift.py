"""Drift benchmark: `python tests/bench/bench_drift.py` prints a table (no assertions).

Seeded synthetic data, 20 numeric + 5 categorical features, 6 of them shifted in the live rows.
For each size it times the profile build, filling sketches (four "pods", merged), one detect()
and exact KS on the raw rows, reports how far binned statistics are from exact ones, and which
features were flagged. It also prints the live-sketch counting rate when fed 100-row batches
(issue 12's target: >= 5 M values/s), through the serving path (``SketchWindow.add``, which
gathers rows and folds them into the sketch every ``FOLD_ROWS``) and through ``Sketch.update``
called per batch, per second of CPU time (robust on a shared machine) and of wall-clock time.
Run it with an interpreter that has evidently 0.7 importable to also compare verdicts with
Evidently's DataDriftPreset.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy
from scipy import stats as sps
from scipy.spatial import distance

try:
    import modelops.drift  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))

from modelops.drift import Sketch, build_profile, detect
from modelops.drift.detect import ks_test
from modelops.serving import sketches
from modelops.serving.metrics import VersionStats

SIZES = (100_000, 1_000_000)
SHIFTED = {"n00", "n04", "n09", "n13", "c01", "c03"}
SMALL = 800
PODS = 4
BATCH = 10_000
SMALL_BATCH = 100
LIVE_ROWS = 51_200  # a whole number of 100-row batches and of 1024-row folds
TARGET = 5e6  # values/s, issue 12


def make_frame(n: int, seed: int, live: bool) -> pd.DataFrame:
    """Mixed shapes: normal, skewed, heavy-tailed, bounded, integer counts, zero-inflated."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for i in range(20):
        name = f"n{i:02d}"
        moved = live and name in SHIFTED
        match i % 5:
            case 0:
                cols[name] = rng.normal(10.0 + 0.5 * moved, 2.0, n)
            case 1:
                cols[name] = rng.lognormal(0.0, 0.8, n)
            case 2:
                cols[name] = rng.standard_t(5, n) * 3.0
            case 3:
                cols[name] = rng.uniform(0.0, 1.0 + 0.5 * moved, n)
            case _:
                lam = 4.0 + 2.0 * moved
                cols[name] = rng.poisson(lam, n).astype(np.float64) * (rng.random(n) > 0.2)
    base = ["a", "b", "c", "d"]
    cols["c00"] = rng.choice(base, n, p=[0.4, 0.3, 0.2, 0.1])
    cols["c01"] = rng.choice(base, n, p=[0.2, 0.2, 0.3, 0.3] if live else [0.4, 0.3, 0.2, 0.1])
    cols["c02"] = rng.choice([f"city{k}" for k in range(50)], n)
    c03 = rng.choice(["x", "y"], n, p=[0.7, 0.3])
    if live:  # a category the reference never had
        c03 = np.where(rng.random(n) < 0.25, "new", c03)
    cols["c03"] = c03
    cols["c04"] = rng.random(n) < 0.35
    return pd.DataFrame(cols)


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def fill(profile: dict[str, Any], frame: pd.DataFrame, batch: int) -> Sketch:
    """Four pods' sketches, each counting a quarter of the rows in batches, then merged."""
    columns = {name: frame[name].to_numpy() for name in frame.columns}
    quarters = np.array_split(np.arange(len(frame)), PODS)
    merged: Sketch | None = None
    for rows in quarters:
        sketch = Sketch.empty(profile)
        for lo in range(rows[0], rows[-1] + 1, batch):
            hi = min(lo + batch, rows[-1] + 1)
            sketch.update({name: col[lo:hi] for name, col in columns.items()})
        window = Sketch.from_dict(json.loads(json.dumps(sketch.to_dict())))
        merged = window if merged is None else merged.merge(window)
    assert merged is not None
    return merged


def served_columns(frame: pd.DataFrame) -> dict[str, Any]:
    """Columns as the model server decodes a mixed request: float64 numbers, str labels."""
    return {
        name: frame[name].to_numpy(np.float64)
        if pd.api.types.is_float_dtype(frame[name])
        else frame[name].astype(str).to_numpy(object)
        for name in frame.columns
    }


def live_sketch_rates(profile: dict[str, Any], frame: pd.DataFrame) -> None:
    """Values counted per second when the live sketch is fed 100-row batches, best of 5.

    Rates per second of this thread's CPU time, which other processes on a shared machine
    barely change, and per second of wall-clock time.
    """
    columns = served_columns(frame)
    batches = [
        {name: col[lo : lo + SMALL_BATCH] for name, col in columns.items()}
        for lo in range(0, len(frame), SMALL_BATCH)
    ]
    width = len(columns)

    def serving() -> tuple[float, float]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            window = sketches.SketchWindow(executor, profile, VersionStats("m", "1"), time.time())
            cpu, wall = time.thread_time(), time.perf_counter()
            for batch in batches:
                window.add(batch, SMALL_BATCH)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            values = (len(frame) - window.pending) * width  # rows awaiting a fold don't count
        return values / cpu, values / wall

    def direct() -> tuple[float, float]:
        sketch = Sketch.empty(profile)
        cpu, wall = time.thread_time(), time.perf_counter()
        for batch in batches:
            sketch.update(batch)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        return len(frame) * width / cpu, len(frame) * width / wall

    row(f"live sketch fed {SMALL_BATCH}-row batches", f"(target {TARGET / 1e6:.0f} M values/s)")
    for label, measure in (
        (f"  serving: SketchWindow.add, folds of {sketches.FOLD_ROWS}", serving),
        ("  Sketch.update per batch", direct),
    ):
        cpu, wall = (max(rates) for rates in zip(*(measure() for _ in range(5)), strict=True))
        row(
            label,
            f"{cpu / 1e6:11.1f} M values/s CPU time ({cpu / TARGET:.2f}x target), "
            f"{wall / 1e6:.1f} wall-clock",
        )


def accuracy(
    profile: dict[str, Any], sketch: Sketch, ref: pd.DataFrame, cur: pd.DataFrame
) -> dict[str, float]:
    """Largest |binned - exact| per statistic over the features it applies to."""
    numeric = [s["name"] for s in profile["signature"] if s["type"] == "numeric"]
    by_w = {f.name: f.score for f in detect(profile, sketch, method="wasserstein").features}
    by_js = {f.name: f.score for f in detect(profile, sketch, method="jensenshannon").features}
    w_err = ks_err = js_err = 0.0
    for name in numeric:
        r, c = ref[name].to_numpy(), cur[name].to_numpy()
        exact_w = sps.wasserstein_distance(r, c) / max(float(np.std(r)), 0.001)
        w_err = max(w_err, abs(by_w[name] - exact_w))
        d, _ = ks_test(profile["features"][name], sketch.features[name])
        ks_err = max(ks_err, abs(d - sps.ks_2samp(r, c).statistic))
    for s in profile["signature"]:
        if s["type"] == "categorical":
            r, c = ref[s["name"]].astype(str), cur[s["name"]].astype(str)
            keys = sorted(set(r) | set(c))
            p = r.value_counts().reindex(keys, fill_value=0).to_numpy()
            q = c.value_counts().reindex(keys, fill_value=0).to_numpy()
            js_err = max(js_err, abs(by_js[s["name"]] - distance.jensenshannon(p, q)))
    return {"wasserstein/std": w_err, "ks D": ks_err, "jensenshannon": js_err}


def evidently_scores(ref: pd.DataFrame, cur: pd.DataFrame) -> dict[str, tuple[float, bool]] | None:
    """Evidently's DataDriftPreset (defaults) score and verdict per column, if installed."""
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError:
        return None
    numeric = [c for c in ref.columns if c.startswith("n")]
    categorical = [c for c in ref.columns if c.startswith("c")]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    scores: dict[str, tuple[float, bool]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            score, threshold, method = float(metric["value"]), config["threshold"], config["method"]
            if method.startswith("K-S"):  # Evidently's KS drifts at p <= threshold
                drifted = score <= threshold
            elif method.startswith(("chi", "Z-test")):
                drifted = score < threshold
            else:
                drifted = score >= threshold
            scores[config["column"]] = (score, drifted)
    return scores


def compare_with_evidently(report: Any, ref: pd.DataFrame, cur: pd.DataFrame) -> None:
    theirs = evidently_scores(ref, cur)
    if theirs is None:
        row("evidently", "not importable, skipped")
        return
    differ = sorted(f.name for f in report.features if theirs[f.name][1] != f.drifted)
    gaps: dict[str, float] = {}
    for f in report.features:
        gaps[f.method] = max(gaps.get(f.method, 0.0), abs(f.score - theirs[f.name][0]))
    row("evidently DataDriftPreset: verdicts differ on", str(differ))
    for method, gap in sorted(gaps.items()):
        row(f"  max |our score - evidently's|, {method}", f"{gap:11.2e}")


def row(label: str, value: str) -> None:
    print(f"  {label:<44} {value}")


def main() -> None:
    print("drift benchmark")
    print(
        f"  python {platform.python_version()}  numpy {np.__version__}  scipy {scipy.__version__}"
        f"  pandas {pd.__version__}  os.cpu_count()={os.cpu_count()}"
    )
    for n in SIZES:
        ref, cur = make_frame(n, seed=1, live=False), make_frame(n, seed=2, live=True)
        values = n * ref.shape[1]
        print(f"\n{n:,} reference rows, {n:,} live rows, {ref.shape[1]} features")
        build_s, profile = timed(lambda: build_profile(ref))  # noqa: B023
        row(
            "profile build",
            f"{build_s * 1e3:8.1f} ms   ({len(json.dumps(profile)) / 1e3:.0f} kB JSON)",
        )
        fill_s, merged = timed(lambda: fill(profile, cur, BATCH))  # noqa: B023
        row(
            f"sketch fill, {PODS} pods, batches of {BATCH:,} + JSON",
            f"{fill_s * 1e3:8.1f} ms   ({values / fill_s / 1e6:.1f} M values/s, one core)",
        )
        if n == SIZES[0]:
            small_s, _ = timed(lambda: fill(profile, cur.iloc[:20_000], SMALL_BATCH))  # noqa: B023
            row(
                f"sketch fill, {PODS} pods, batches of {SMALL_BATCH} + JSON",
                f"{20_000 * 25 / small_s / 1e6:11.1f} M values/s",
            )
            live_sketch_rates(profile, cur.iloc[:LIVE_ROWS])
        window = json.dumps(merged.to_dict())
        row("merged window JSON", f"{len(window) / 1e3:8.0f} kB")
        loaded = json.loads(json.dumps(profile))  # not parsed into arrays yet
        cold_s, _ = timed(lambda: detect(loaded, merged))  # noqa: B023
        detect_s, report = timed(lambda: detect(profile, merged), repeat=7)  # noqa: B023
        row(
            "detect(), 25 features, defaults",
            f"{detect_s * 1e3:8.2f} ms  (first call {cold_s * 1e3:.2f} ms)",
        )
        numeric = [c for c in ref.columns if c.startswith("n")]
        ks_s, _ = timed(lambda: [sps.ks_2samp(ref[c], cur[c]) for c in numeric])  # noqa: B023
        row(f"exact KS on raw rows, {len(numeric)} numeric", f"{ks_s * 1e3:8.1f} ms")
        for stat, err in accuracy(profile, merged, ref, cur).items():
            row(f"max |binned - exact| {stat}", f"{err:11.2e}")
        flagged = {f.name for f in report.features if f.drifted}
        row("flagged", " ".join(sorted(flagged)))
        row("truly shifted", " ".join(sorted(SHIFTED)))
        row("missed / false alarms", f"{sorted(SHIFTED - flagged)} / {sorted(flagged - SHIFTED)}")
        row("dataset drift (share)", f"{report.dataset_drift} ({report.drifted_share:.2f})")
        compare_with_evidently(report, ref, cur)
    small_reference()


def small_reference() -> None:
    """Evidently's other branch: <= 1000 reference rows (KS, chi-squared and Z-test p-values)."""
    ref, cur = make_frame(SMALL, seed=3, live=False), make_frame(SMALL // 2, seed=4, live=True)
    print(f"\n{SMALL} reference rows, {SMALL // 2} live rows (small-reference tests)")
    profile = build_profile(ref)
    sketch = fill(profile, cur, 100)
    detect_s, report = timed(lambda: detect(profile, sketch), repeat=7)
    row("detect(), 25 features, defaults", f"{detect_s * 1e3:8.2f} ms")
    methods = sorted({f.method for f in report.features})
    row("methods", " ".join(methods))
    flagged = {f.name for f in report.features if f.drifted}
    row("missed / false alarms", f"{sorted(SHIFTED - flagged)} / {sorted(flagged - SHIFTED)}")
    compare_with_evidently(report, ref, cur)


if __name__ == "__main__":
    main()
