"""What the demo shows: a live view of the four kinds, the traffic, and the narration.

``make_view()`` picks a rich live display on an interactive terminal (when ``rich`` is
installed) and plain progress lines otherwise (``CI`` set, ``TERM=dumb``, stdout not a TTY):
a narration line per event, and one line per object whenever its status changes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TextIO

from modelops.local.traffic import TrafficStats
from modelops.resources.training import TRIGGER_ANNOTATION as TRIGGER_LABEL

Obj = Mapping[str, Any]
KINDS = ("TrainingRun", "ModelVersion", "Deployment", "DriftMonitor")


class View(Protocol):
    def say(self, text: str, style: str = "") -> None:
        """One narration line (``style``: a rich style; ignored in plain mode)."""

    def update(self, objects: Mapping[str, Sequence[Obj]], traffic: TrafficStats | None) -> None:
        """The current objects by kind, and the traffic so far."""

    def close(self) -> None: ...


def _status(obj: Obj) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def _condition(obj: Obj, type_: str) -> dict[str, Any]:
    for cond in _status(obj).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def describe(kind: str, obj: Obj) -> tuple[str, str]:
    """(phase, details) of one object, as the view and the plain lines show it."""
    status, spec = _status(obj), obj.get("spec") or {}
    phase = str(status.get("phase") or "-")
    if kind == "TrainingRun":
        details = [spec.get("estimator", {}).get("name", "")]
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if trigger := labels.get(TRIGGER_LABEL):
            details.append(f"trigger {trigger}")
        if metrics := status.get("metricsSummary"):
            details.append(metrics)
        if version := status.get("modelVersion"):
            details.append(f"-> {version}")
    elif kind == "ModelVersion":
        details = [status.get("metricsSummary") or ""]
        if trigger := (spec.get("lineage") or {}).get("trigger"):
            details.append(f"trigger {trigger}")
    elif kind == "Deployment":
        details = [f"stable {status.get('stableVersion') or '-'}"]
        canary = status.get("canaryVersion")
        if canary and phase == "Progressing":
            step = status.get("step")
            at = f" step {step + 1}" if step is not None else " loading"
            details.append(f"canary {canary} {status.get('canaryWeight') or 0}%{at}")
        replicas = spec.get("replicas", 1)
        details.append(f"ready {status.get('readyReplicas') or 0}/{replicas}")
        analysis = status.get("analysis") or {}
        if analysis and phase == "Progressing":
            details.append(f"analysis {analysis.get('decision')} {_versus(analysis)}")
        if rejected := status.get("rejectedVersions"):
            details.append(f"rejected {','.join(rejected)}")
    else:
        drifted = _condition(obj, "Drifted").get("status", "-")
        details = [
            f"on {status.get('version') or '-'}",
            f"samples {status.get('samples') or 0}",
            f"drifted {drifted}",
        ]
        if status.get("driftedShare") is not None:
            details.append(f"share {status['driftedShare']:.2f}")
        if status.get("firings"):
            details.append(f"firings {status['firings']}")
        if quality := status.get("quality"):
            under = _condition(obj, "Underperforming").get("status", "-")
            details.append(
                f"{quality.get('metric')} {number(quality.get('value'))} "
                f"({quality.get('labels') or 0} labels) underperforming {under}"
            )
        if status.get("retrains"):
            details.append(f"retrains {status['retrains']}")
    return phase, "  ".join(d for d in details if d)


def number(value: Any) -> str:
    """A metric as the demo shows it (two decimals; ``-`` when there is none)."""
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def p_value(value: Any) -> str:
    """A p-value as the demo shows it: two significant digits; ``<1e-16`` below what a
    double can tell from 0 next to 1 (the tests underflow to 0 for such large effects)."""
    if not isinstance(value, int | float):
        return "-"
    return "<1e-16" if value < 1e-16 else f"{value:.2g}"


def _versus(analysis: Obj) -> str:
    """``accuracy 0.98 (41) vs 0.57 (160)``: canary's and stable's value (labels)."""
    if analysis.get("canaryLabels") is None:
        return ""
    return (
        f"{analysis.get('metric')} {number(analysis.get('canaryValue'))} "
        f"({analysis.get('canaryLabels')}) vs {number(analysis.get('stableValue'))} "
        f"({analysis.get('stableLabels')})"
    )


def traffic_line(traffic: TrafficStats) -> str:
    versions = ", ".join(f"{v} {n}" for v, n in sorted(traffic.by_version().items()))
    errors = len(traffic.errors())
    drifted = len(traffic.drifted())
    line = (
        f"{len(traffic.answers)} answers ({versions or 'none yet'}), {errors} errors, "
        f"{drifted} drifted rows sent"
    )
    if traffic.feedback:
        line += (
            f"; {traffic.labels_sent()} labels sent back in {len(traffic.feedback)} calls, "
            f"{len(traffic.feedback_errors())} failed"
        )
    return line


def interactive(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def make_view(*, plain: bool | None = None) -> View:
    if plain is None:
        plain = not interactive()
    if not plain:
        try:
            return RichView()
        except ImportError:
            pass
    return PlainView()


class PlainView:
    """Progress lines: narration, and each object's status whenever it changes."""

    def __init__(self, stream: TextIO | None = None, traffic_every: float = 10.0) -> None:
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self.traffic_every = traffic_every
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}
        self._traffic_at = 0.0

    def _print(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {text}", file=self.stream, flush=True)

    def say(self, text: str, style: str = "") -> None:
        self._print(text)

    def update(self, objects: Mapping[str, Sequence[Obj]], traffic: TrafficStats | None) -> None:
        for kind in KINDS:
            for obj in objects.get(kind, ()):
                name = obj["metadata"]["name"]
                now = describe(kind, obj)
                if self._seen.get((kind, name)) != now:
                    self._seen[(kind, name)] = now
                    self._print(f"  {kind} {name}: {now[0]}  {now[1]}")
        if traffic is not None and traffic.answers:
            at = time.monotonic()
            if at - self._traffic_at >= self.traffic_every:
                self._traffic_at = at
                self._print(f"  traffic: {traffic_line(traffic)}")

    def close(self) -> None:
        self.stream.flush()


class RichView:
    """A live terminal view: the four kinds' status, the traffic, the story so far."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.start = time.monotonic()
        self._lines: list[tuple[float, str, str]] = []
        self._objects: Mapping[str, Sequence[Obj]] = {}
        self._traffic: TrafficStats | None = None
        self._live = Live(self._render(), console=self.console, refresh_per_second=4)
        self._live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=True, show_edge=False, pad_edge=False)
        for column, style in (("KIND", "cyan"), ("NAME", "bold"), ("PHASE", ""), ("", "dim")):
            table.add_column(column, style=style, no_wrap=column != "")
        colours = {"Ready": "green", "Succeeded": "green", "Stable": "green", "Healthy": "green"}
        colours |= {"Promoted": "green", "Progressing": "yellow", "Running": "yellow"}
        colours |= {"Drifted": "red", "RolledBack": "red", "Failed": "red"}
        colours |= {"Underperforming": "red"}
        for kind in KINDS:
            for obj in self._objects.get(kind, ()):
                phase, details = describe(kind, obj)
                style = colours.get(phase, "")
                table.add_row(kind, obj["metadata"]["name"], Text(phase, style=style), details)
        story = Text()
        for at, text, style in self._lines[-14:]:
            story.append(f"{at:6.1f}s ", style="dim")
            story.append(text + "\n", style=style)
        traffic = traffic_line(self._traffic) if self._traffic is not None else "not started"
        return Group(
            Panel(table, title="modelops local demo", border_style="blue"),
            Panel(Text(traffic), title="traffic (OIP v2 through the Service)"),
            Panel(story, title="what happens"),
        )

    def say(self, text: str, style: str = "") -> None:
        self._lines.append((time.monotonic() - self.start, text, style))
        self._live.update(self._render())

    def update(self, objects: Mapping[str, Sequence[Obj]], traffic: TrafficStats | None) -> None:
        self._objects, self._traffic = objects, traffic
        self._live.update(self._render())

    def close(self) -> None:
        self._live.update(self._render())
        self._live.stop()
