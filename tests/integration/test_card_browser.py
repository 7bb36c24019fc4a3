"""The model card in a real browser: Debian's Chromium, headless, renders it.

The card is that of a model trained by the real trainer (a loan model with a sensitive
column), served by one Deployment and checked by one DriftMonitor, as ``modelops card``
draws it. ``--dump-dom`` gives the DOM Chromium built (every section in order, one SVG of
bars per profile feature, the fairness group table, no script); ``--screenshot`` the pixels
(the reference bars' colour where the histograms are). The browser helpers are the drift
report's (``test_report_browser.py``).

Run as a script, it writes the README's picture ``docs/model-card.png``
(``.venv/bin/python tests/integration/test_card_browser.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from integration.test_report_browser import chromium, coloured, decode_png, screenshot
from modelops.api.trainingrun import TrainingRun
from modelops.insight.card import SECTIONS, card_document, render_html
from modelops.insight.report import REFERENCE_COLOUR
from modelops.resources.modelversion import model_version
from modelops.storage import Location
from modelops.training.trainer import train
from unit.test_trainer import MemoryStore

pytestmark = pytest.mark.integration
WIDTH, HEIGHT = 1200, 2600
DOCS = Path(__file__).resolve().parents[2] / "docs"
FEATURES = ["income", "debt", "region"]


def loans() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 800
    sex = rng.choice(["female", "male"], size=n)
    income = rng.normal(size=n) + (sex == "male") * 1.0
    region = rng.choice(["north", "south", "<east>"], size=n)
    repaid = (income + rng.normal(scale=0.7, size=n) > 0.5).astype(int)
    return pd.DataFrame({"income": income, "debt": rng.gamma(2.0, size=n), "region": region,
                         "sex": sex, "repaid": repaid})  # fmt: skip


def card_page() -> str:
    """The card of ``loans-v2``, trained now, promoted by a canary, checked by a monitor."""
    store = MemoryStore()
    store.put(Location("modelops", "datasets/loans.csv"), loans().to_csv(index=False).encode())
    run = TrainingRun.model_validate(
        {
            "metadata": {"name": "loans-logreg", "namespace": "bank", "uid": "7c1e"},
            "spec": {
                "model": "loans",
                "dataset": {"uri": "s3://modelops/datasets/loans.csv", "target": "repaid"},
                "estimator": {"name": "LogisticRegression", "params": {"C": "0.5"}},
                "seed": 7,
                "fairness": {"sensitiveFeatures": ["sex"], "positiveLabel": 1},
            },
        }
    )
    summary = train(run.spec, store, Location("modelops", "bank/loans/7c1e"))
    version = model_version(run, summary, 2, "modelops-runtime:0.1.0")
    version["status"] = {"phase": "Ready"}
    profile = json.loads(store.objects[summary["profile"]["uri"]])
    history = [("CanaryStarted", "loading loans-v2 for a canary", "09:00"),
               ("CanaryStep", "loans-v2 at 10% (step 1)", "09:01"),
               ("Promoted", "loans-v2 promoted after 2 steps", "09:12")]  # fmt: skip
    deployment = {
        "metadata": {"name": "loans"},
        "spec": {"model": "loans"},
        "status": {"phase": "Promoted", "stableVersion": "loans-v2", "history": [
            {"time": f"2025-10-09T{t}:00Z", "event": e, "version": "loans-v2", "reason": e,
             "message": m} for e, m, t in history]},
    }  # fmt: skip
    monitor = {
        "metadata": {"name": "loans-drift"},
        "spec": {"deployment": "loans"},
        "status": {"phase": "Healthy", "version": "loans-v2", "samples": 812,
                   "lastCheckTime": "2025-10-09T09:30:00Z", "driftedShare": 0.0,
                   "message": "0/3 features drifted", "firings": 0,
                   "conditions": [{"type": "Drifted", "status": "False"}],
                   "features": [{"name": "income", "method": "ks", "score": 0.41,
                                 "threshold": 0.05, "drifted": False}]},
    }  # fmt: skip
    card = card_document(
        version, profile, deployments=[deployment], monitors=[monitor],
        generated_at=dt.datetime(2025, 10, 9, 9, 35, tzinfo=dt.UTC),
    )  # fmt: skip
    return render_html(card)


class Rendered(HTMLParser):
    """From Chromium's DOM: the sections in order, SVGs and bars per profile figure, the
    fairness table's rows and any script."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.figures: dict[str, dict[str, int]] = {}
        self.group_rows = 0
        self.scripts = 0
        self._figure: str | None = None
        self._groups = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "section" and found.get("data-section"):
            self.sections.append(str(found["data-section"]))
        elif tag == "figure":
            self._figure = str(found.get("data-feature"))
            self.figures[self._figure] = {"svgs": 0, "rects": 0}
        elif self._figure and tag in ("svg", "rect"):
            self.figures[self._figure][f"{tag}s"] += 1
        elif tag == "table":
            self._groups = "fairness-groups" in (found.get("class") or "")
        elif tag == "tr" and self._groups:
            self.group_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag == "table":
            self._groups = False


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("card") / "card.html"
    path.write_text(card_page(), encoding="utf-8")
    return path


def test_browser_dom_has_every_section_and_a_histogram_per_feature(page: Path) -> None:
    rendered = Rendered()
    rendered.feed(chromium("--dump-dom", page.as_uri()).stdout.decode())
    assert rendered.sections == list(SECTIONS)
    assert list(rendered.figures) == [*FEATURES, "predictions"]
    assert all(f["svgs"] == 1 and f["rects"] > 0 for f in rendered.figures.values())
    assert rendered.group_rows == 3  # the header and the groups female, male
    assert rendered.scripts == 0


def test_browser_screenshot_has_the_histograms_colour(page: Path, tmp_path: Path) -> None:
    pixels = decode_png(screenshot(page, tmp_path / "card.png", WIDTH, HEIGHT))
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    bars = coloured(pixels, REFERENCE_COLOUR)
    # Rows with many bar pixels: the histogram grid, not just the sections' edges.
    assert int(((bars.sum(axis=1)) >= 40).sum()) >= 100


def write_docs() -> None:
    """Write docs/model-card.png."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "card.html"
        source.write_text(card_page(), encoding="utf-8")
        data = screenshot(source, DOCS / "model-card.png", 1000, 2450)
        print(f"wrote {DOCS / 'model-card.png'} ({len(data) // 1024} KB)")


if __name__ == "__main__":
    sys.exit(write_docs())
