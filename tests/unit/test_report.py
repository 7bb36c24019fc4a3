"""The drift report's HTML, from a synthetic reference profile and live sketch (no network)."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelops.controllers.windows import LiveQuality
from modelops.drift import Sketch, build_profile, detect
from modelops.drift.quality import QualityCounts
from modelops.insight.report import (
    DISPLAY_BINS,
    categorical_histogram,
    numeric_histogram,
    render,
)

SCRIPT = "<script>alert(1)</script>"
N_REFERENCE, N_LIVE = 3000, 800


class Sections(HTMLParser):
    """The report's sections in page order: (feature, drifted flag, SVG count, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict[str, Any]] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section" and found.get("data-feature") is not None:
            self.sections.append(
                {"feature": found["data-feature"], "drifted": found["data-drifted"], "svgs": 0,
                 "text": ""}
            )  # fmt: skip
            self._depth = 1
        elif tag == "section" and self._depth:
            self._depth += 1
        elif tag == "svg" and self._depth:
            self.sections[-1]["svgs"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.sections[-1]["text"] += data


def sections(page: str) -> list[dict[str, Any]]:
    parser = Sections()
    parser.feed(page)
    return parser.sections


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "income": rng.lognormal(10, 0.5, N_REFERENCE),
            SCRIPT: rng.choice(["a", "b", "c"], N_REFERENCE),
            "age": rng.normal(40, 10, N_REFERENCE),
            "city": rng.choice(["paris", "lyon", "nice"], N_REFERENCE, p=[0.5, 0.3, 0.2]),
        }
    )
    return build_profile(frame, predictions=rng.choice(["yes", "no"], N_REFERENCE))


@pytest.fixture(scope="module")
def sketch(profile: dict[str, Any]) -> Sketch:
    """Live traffic where age moved by 1.5 std and a new city replaced one: both drift."""
    rng = np.random.default_rng(1)
    live = pd.DataFrame(
        {
            "income": rng.lognormal(10, 0.5, N_LIVE),
            SCRIPT: rng.choice(["a", "b", "c"], N_LIVE),
            "age": rng.normal(55, 10, N_LIVE),
            "city": rng.choice(["paris", "lyon", "oslo"], N_LIVE),
        }
    )
    sketch = Sketch.empty(profile, start=1.7e9, end=1.7e9 + 300)
    sketch.update(live, predictions=rng.choice(["yes", "no"], N_LIVE))
    return sketch


def monitor(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelops.dev/v1alpha1",
        "kind": "DriftMonitor",
        "metadata": {"name": "shop-drift", "namespace": "shop"},
        "spec": {"deployment": "shop", "window": "30m"},
        "status": status,
    }


def test_drifted_features_come_first(profile: dict[str, Any], sketch: Sketch) -> None:
    found = sections(render(monitor(), profile, sketch, version="shop-v2", window="30m"))
    flags = [s["drifted"] for s in found]
    assert sorted(s["feature"] for s in found[:2]) == ["age", "city"]
    assert flags == ["true", "true", "false", "false"]


def test_each_feature_has_its_own_histogram(profile: dict[str, Any], sketch: Sketch) -> None:
    found = sections(render(monitor(), profile, sketch, version="shop-v2", window="30m"))
    assert {s["feature"] for s in found} == {"age", "city", "income", SCRIPT}
    assert [s["svgs"] for s in found] == [1, 1, 1, 1]


def test_user_strings_are_escaped(profile: dict[str, Any], sketch: Sketch) -> None:
    page = render(
        monitor(phase="Drifted", version="shop-v2", message="<img src=x onerror=alert(2)>"),
        profile,
        sketch,
        version="shop-v2",
        window="30m",
    )
    assert SCRIPT not in page and "<img" not in page
    assert html.escape(SCRIPT) in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page


def test_page_loads_nothing_and_runs_nothing(profile: dict[str, Any], sketch: Sketch) -> None:
    page = render(monitor(), profile, sketch, version="shop-v2", window="30m")
    assert re.search(r"<script\b", page, re.IGNORECASE) is None
    assert re.search(r"https?://|\bsrc=|@import|url\(", page) is None


def test_scores_and_thresholds_are_the_detectors(profile: dict[str, Any], sketch: Sketch) -> None:
    expected = {f.name: f for f in detect(profile, sketch).features}
    found = sections(render(monitor(), profile, sketch, version="shop-v2", window="30m"))
    for section in found:
        drift = expected[section["feature"]]
        assert f"method {drift.method}" in section["text"]
        assert f"score {drift.score:.4g}" in section["text"]
        assert f"threshold {drift.threshold:.4g}" in section["text"]


def test_summary_gives_samples_and_drifted_share(profile: dict[str, Any], sketch: Sketch) -> None:
    page = render(monitor(), profile, sketch, version="shop-v2", window="30m")
    assert f"{N_LIVE} samples" in page
    assert "2 of 4 features drifted (share 0.50" in page


def test_prediction_drift_has_its_section(profile: dict[str, Any], sketch: Sketch) -> None:
    page = render(monitor(), profile, sketch, version="shop-v2", window="30m")
    section = page[page.index('id="predictions"') :]
    assert "Prediction drift" in section and "not part of the monitor's verdict" in section
    assert '<svg class="histogram" data-feature="predictions"' in section


def test_without_a_sketch_the_status_verdicts_are_shown(profile: dict[str, Any]) -> None:
    status = {
        "phase": "Drifted",
        "version": "shop-v2",
        "features": [
            {"name": "income", "method": "wasserstein", "score": 0.02, "threshold": 0.1,
             "drifted": False},
            {"name": "city", "method": "jensenshannon", "score": 0.4, "threshold": 0.1,
             "drifted": True},
        ],
    }  # fmt: skip
    page = render(monitor(**status), profile, None, version="shop-v2", window="30m")
    found = sections(page)
    assert "No sketch window of shop-v2 in the last 30m" in page
    assert [s["feature"] for s in found[:2]] == ["city", "income"]
    assert "score 0.4," in found[0]["text"]


def test_live_quality_shows_metrics_and_confusion(profile: dict[str, Any], sketch: Sketch) -> None:
    counts = QualityCounts.empty("classification", ["no", "yes"])
    counts.add_classification(["no"] * 30 + ["yes"] * 70, ["no"] * 20 + ["yes"] * 80)
    quality = LiveQuality(quality=counts, feedback={"received": 100, "joined": 100})
    page = render(
        monitor(),
        profile,
        sketch,
        quality,
        version="shop-v2",
        window="30m",
        reference_metrics={"accuracy": 0.95},
    )
    section = page[page.index('id="quality"') :]
    assert "100 true labels joined" in section
    assert '<td>accuracy</td><td class="num">0.9</td><td class="num">0.95</td>' in section
    assert '<tr><th>yes</th><td class="num">0</td><td class="num">70</td></tr>' in section


def test_numeric_bars_place_live_values_beyond_the_reference() -> None:
    reference = build_profile(pd.DataFrame({"x": np.linspace(0.0, 1.0, 2000)}))
    sketch = Sketch.empty(reference)
    sketch.update(pd.DataFrame({"x": np.linspace(9.0, 10.0, 500)}))
    histogram = numeric_histogram(reference["features"]["x"], sketch.features["x"])
    bars = histogram.bars
    assert "500 at or above the training maximum 1:" in histogram.note
    assert len(bars) == DISPLAY_BINS
    assert sum(b.reference for b in bars) == pytest.approx(1.0)
    assert sum(b.live for b in bars) == pytest.approx(1.0)
    assert bars[0].reference > 0 and bars[0].live == 0
    assert bars[-1].live > 0 and bars[-1].reference == 0


def test_categorical_bars_count_unseen_values_apart(
    profile: dict[str, Any], sketch: Sketch
) -> None:
    bars = categorical_histogram(profile["features"]["city"], sketch.features["city"]).bars
    by_label = {b.label: b for b in bars}
    oslo = sketch.features["city"].unseen["oslo"]
    assert by_label["unseen in training"].live == pytest.approx(oslo / N_LIVE)
    assert by_label["nice"].live == 0 and by_label["nice"].reference > 0.15


def test_a_sketch_of_another_profile_is_refused(profile: dict[str, Any]) -> None:
    other = build_profile(pd.DataFrame({"x": np.arange(50.0)}))
    with pytest.raises(ValueError, match="not counted against this profile"):
        render(monitor(), profile, Sketch.empty(other), version="shop-v2", window="30m")
