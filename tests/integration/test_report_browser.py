"""The drift report in a real browser: Debian's Chromium, headless, renders it.

Two views of the same page: ``--dump-dom`` (the DOM Chromium built: feature headings in
drifted-first order, one SVG of bars per feature) and ``--screenshot`` (the pixels: the
reference, live and drift colours where the histograms are). The PNG is decoded here with
zlib and numpy (no imaging library in the project's dependencies).

Chromium is a Debian package that ``.ci/run`` installs; a machine without it fails here with
the command to install it, it is not skipped.

Run as a script, it writes the README's screenshots: ``docs/report.png`` and
``docs/plugin-tree.png`` (``.venv/bin/python tests/integration/test_report_browser.py``).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from modelops.controllers.windows import LiveQuality
from modelops.drift import Sketch, build_profile, detect
from modelops.drift.quality import QualityCounts
from modelops.insight.report import DRIFT_COLOUR, LIVE_COLOUR, REFERENCE_COLOUR, render

pytestmark = pytest.mark.integration
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
WIDTH, HEIGHT = 1200, 2000
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"


# -- the page: iris, its petals shifted in live traffic ---------------------------------------


def iris() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = [str(data.target_names[i]) for i in frame.pop("target")]
    return frame


def report_page() -> tuple[str, list[str]]:
    """The report of a canary whose petal features drifted, with live quality; and the
    feature names in the order the page must show them (by the detector's verdicts)."""
    frame = iris()
    profile = build_profile(frame[FEATURES], predictions=frame["species"].to_numpy())
    rng = np.random.default_rng(7)
    rows = frame.iloc[rng.integers(0, len(frame), 600)].reset_index(drop=True)
    live = rows[FEATURES].copy()
    live[["petal_length", "petal_width"]] += [2.0, 0.8]
    sketch = Sketch.empty(profile, start=1_760_000_000.0, end=1_760_001_800.0)
    predicted = np.where(rng.random(600) < 0.3, "virginica", rows["species"].to_numpy())
    sketch.update(live, predictions=predicted)
    counts = QualityCounts.empty("classification", ["setosa", "versicolor", "virginica"])
    counts.add_classification(rows["species"].tolist()[:400], predicted.tolist()[:400])
    monitor = {
        "metadata": {"name": "iris-drift", "namespace": "shop"},
        "spec": {"deployment": "iris", "window": "30m", "action": "rollback"},
        "status": {"phase": "Drifted", "version": "iris-v2",
                   "lastCheckTime": "2025-10-09T09:30:00Z",
                   "message": "2/4 features drifted in iris-v2 (share 0.50, 600 samples)"},
    }  # fmt: skip
    page = render(
        monitor,
        profile,
        sketch,
        LiveQuality(quality=counts, feedback={"received": 400, "joined": 400}),
        version="iris-v2",
        window="30m",
        reference_metrics={"accuracy": 0.967, "f1": 0.966},
    )
    verdicts = detect(profile, sketch).features
    order = sorted(verdicts, key=lambda f: (not f.drifted, -f.severity, f.name))
    return page, [f.name for f in order]


# -- the browser ------------------------------------------------------------------------------


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.fail("Chromium is needed: apt-get install -y chromium (.ci/run installs it)")


def chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Headless Chromium with a throwaway profile; fails the test when it fails."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            timeout=180,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


def screenshot(page: Path, png: Path, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    chromium(f"--screenshot={png}", f"--window-size={width},{height}", page.as_uri())
    return png.read_bytes()


def decode_png(data: bytes) -> npt.NDArray[np.uint8]:
    """Pixels (height, width, channels) of an 8-bit, non-interlaced RGB or RGBA PNG
    (the PNG specification, ISO/IEC 15948: chunks, zlib stream, per-row filters 0-4)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(bytes(idat))
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray(
                (np.frombuffer(line, np.uint8) + np.frombuffer(prev, np.uint8)).tobytes()
            )
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out[y] = np.frombuffer(line, np.uint8)
        prev = line
    return out.reshape(height, width, bpp)


def coloured(pixels: npt.NDArray[np.uint8], colour: str) -> npt.NDArray[np.bool_]:
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return np.all(pixels[:, :, :3] == rgb, axis=2)


class Rendered(HTMLParser):
    """From Chromium's DOM: per feature section, its heading and the bars of its SVGs."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict[str, Any]] = []
        self.scripts = 0
        self._in_section = self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "section":
            self._in_section = found.get("data-feature") is not None
            if self._in_section:
                self.sections.append({"heading": "", "svgs": 0, "rects": 0,
                                      "drifted": found["data-drifted"]})  # fmt: skip
        elif self._in_section and tag == "h2":
            self._in_heading = True
        elif self._in_section and tag == "svg":
            self.sections[-1]["svgs"] += 1
        elif self._in_section and tag == "rect":
            self.sections[-1]["rects"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_heading = False
        elif tag == "section":
            self._in_section = False

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.sections[-1]["heading"] += data


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    text, order = report_page()
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(text, encoding="utf-8")
    return path, order


def test_browser_dom_has_headings_in_drifted_first_order(page: tuple[Path, list[str]]) -> None:
    path, order = page
    dom = chromium("--dump-dom", path.as_uri()).stdout.decode()
    rendered = Rendered()
    rendered.feed(dom)
    headings = [s["heading"].split()[0] for s in rendered.sections]
    assert headings == order
    assert order[:2] == ["petal_length", "petal_width"]
    assert [s["drifted"] for s in rendered.sections] == ["true", "true", "false", "false"]
    assert all(s["svgs"] == 1 and s["rects"] > 0 for s in rendered.sections), rendered.sections
    assert rendered.scripts == 0


def test_browser_screenshot_has_the_histograms_colours(
    page: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, _ = page
    pixels = decode_png(screenshot(path, tmp_path / "report.png"))
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    reference, live = coloured(pixels, REFERENCE_COLOUR), coloured(pixels, LIVE_COLOUR)
    assert reference.sum() > 5000 and live.sum() > 5000
    assert coloured(pixels, DRIFT_COLOUR).sum() > 500  # badges and the drifted sections' edge
    # The histograms are bands of rows with many bar pixels (the legend's squares are 12 px
    # wide): one band per histogram drawn in the first 2000 pixels.
    rows = (reference.sum(axis=1) >= 50) & (live.sum(axis=1) >= 50)
    bands = int(rows[0]) + int(np.count_nonzero(rows[1:] & ~rows[:-1]))
    assert bands >= 3, bands


# -- the README's screenshots -----------------------------------------------------------------


def tree_page() -> str:
    """The tree of a canary in its first step, as ``kubectl modelops status`` prints it on a
    terminal, as an HTML page (rich's own export)."""
    from rich.console import Console

    from modelops.insight.tree import Snapshot, build_tree

    now = 1_760_000_000.0

    def at(seconds: float) -> str:
        import datetime as dt

        return dt.datetime.fromtimestamp(now - seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    history = [("StableSelected", "iris-v1", "serving iris-v1 as stable", 900),
               ("CanaryStarted", "iris-v2", "loading iris-v2 for a canary", 80),
               ("CanaryStep", "iris-v2", "iris-v2 at 10% (step 1)", 75)]  # fmt: skip
    dep = {
        "metadata": {"name": "iris", "namespace": "shop"},
        "spec": {"replicas": 2, "canary": {"steps": [{"weight": 10, "pause": "2m"},
                                                     {"weight": 50, "pause": "5m"}]},
                 "rollback": {"driftMonitors": ["iris-drift"]}},
        "status": {"phase": "Progressing", "stableVersion": "iris-v1", "canaryVersion": "iris-v2",
                   "canaryWeight": 10, "step": 0, "stepStartedAt": at(75),
                   "history": [{"time": at(s), "event": e, "version": v, "reason": e, "message": m}
                               for e, v, m, s in history]},
    }  # fmt: skip
    versions = {
        name: {"status": {"phase": "Ready", "metricsSummary": summary}}
        for name, summary in (("iris-v1", "accuracy=0.967 f1=0.966"),
                              ("iris-v2", "accuracy=0.973 f1=0.973"))
    }  # fmt: skip
    pods = [
        {"metadata": {"name": f"iris-server-6d5f8-{suffix}"},
         "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"restartCount": 0, "state": {"running": {}}}]}}
        for suffix in ("k2x9p", "q7m4w")
    ]  # fmt: skip
    monitor = {
        "metadata": {"name": "iris-drift"},
        "spec": {"deployment": "iris", "action": "rollback"},
        "status": {"phase": "Healthy", "version": "iris-v2", "samples": 412, "driftedShare": 0.0,
                   "conditions": [{"type": "Drifted", "status": "False", "reason": "NoDrift"}],
                   "features": [{"name": n, "method": "ks", "score": s, "threshold": 0.05,
                                 "drifted": False}
                                for n, s in (("petal_length", 0.21), ("sepal_width", 0.48),
                                             ("petal_width", 0.64))]},
    }  # fmt: skip
    console = Console(
        file=io.StringIO(), record=True, width=120, force_terminal=True, color_system="truecolor"
    )
    console.print("$ kubectl modelops status iris -n shop", style="bold")
    console.print(build_tree(Snapshot(dep, versions, pods, [monitor], now)))
    return console.export_html(inline_styles=True).replace(
        "<body>", '<body style="background:#1e1e1e;color:#ddd;margin:0;padding:12px">'
    )


def write_docs() -> None:
    """Write docs/report.png and docs/plugin-tree.png (each < 200 KB)."""
    with tempfile.TemporaryDirectory() as tmp:
        report, tree = Path(tmp) / "report.html", Path(tmp) / "tree.html"
        report.write_text(report_page()[0], encoding="utf-8")
        tree.write_text(tree_page(), encoding="utf-8")
        for source, target, size in (
            (report, DOCS / "report.png", (WIDTH, HEIGHT)),
            (tree, DOCS / "plugin-tree.png", (1000, 400)),
        ):
            data = screenshot(source, target, *size)
            print(f"wrote {target} ({len(data) // 1024} KB)")


if __name__ == "__main__":
    sys.exit(write_docs())
