"""A modelops Deployment as a tree: versions, weights, step, pods, monitors, history.

``build_tree(snapshot)`` is pure: it takes the objects as the API server returns them (a
:class:`Snapshot`) and a clock, and returns a :class:`rich.tree.Tree`; ``render_text`` prints
it without colour for pipes, tests and logs. ``kubectl modelops status NAME`` shows it::

    Deployment iris (namespace shop): Progressing
    ├── stable iris-v1  90%  Ready  accuracy=0.967
    ├── canary iris-v2  10%  step 1/2, 25s of 30s left  Ready  accuracy=0.973
    ├── pods 2/2 ready
    │   ├── iris-server-7c9d-abcde  Running  ready  restarts 0
    │   └── ...
    ├── monitors
    │   └── iris-drift  Healthy  on iris-v2  samples 600  drifted False  share 0.00  (guard)
    └── history (last 5 of 3)
        ├── 12:00:01  StableSelected  iris-v1  serving iris-v1 as stable
        └── ...
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from modelops.api.common import parse_duration
from modelops.local.view import describe

Obj = Mapping[str, Any]
HISTORY = 5
"""History entries shown, newest last."""
WORST_FEATURES = 3
"""Per monitor, the features shown under it: drifted first, then closest to drifting."""
PHASE_STYLES = {
    "Stable": "green",
    "Promoted": "green",
    "Healthy": "green",
    "Ready": "green",
    "Progressing": "yellow",
    "InsufficientData": "yellow",
    "Pending": "yellow",
    "RolledBack": "red",
    "Degraded": "red",
    "Drifted": "red",
    "Failed": "red",
}


@dataclass(frozen=True)
class Snapshot:
    """What the tree shows, read at one moment.

    ``deployment``: the modelops Deployment; ``versions``: ModelVersions by name (those the
    status names; absent ones are shown as missing); ``pods``: its serving pods;
    ``monitors``: the DriftMonitors aimed at it; ``now``: Unix seconds, for the pause left.
    """

    deployment: Obj
    versions: Mapping[str, Obj] = field(default_factory=dict)
    pods: Sequence[Obj] = ()
    monitors: Sequence[Obj] = ()
    now: float = 0.0


def build_tree(snapshot: Snapshot, history: int = HISTORY) -> Tree:
    """The Deployment as a rich Tree (see the module docstring)."""
    dep = snapshot.deployment
    meta, spec, status = _part(dep, "metadata"), _part(dep, "spec"), _part(dep, "status")
    phase = str(status.get("phase") or "Pending")
    root = Text.assemble(
        ("Deployment ", "bold"),
        (str(meta.get("name", "")), "bold cyan"),
        f" (namespace {meta.get('namespace', '')}): ",
        (phase, PHASE_STYLES.get(phase, "")),
    )
    tree = Tree(root)
    # While a step runs, its line says what the message would (a countdown) and a held
    # canary's reason is shown under it; otherwise the message says what is awaited.
    if (message := status.get("message")) and status.get("step") is None:
        tree.add(Text(str(message), style="dim"))
    for line in _version_lines(snapshot, spec, status):
        tree.add(line)
    _add_pods(tree, snapshot.pods, spec)
    _add_monitors(tree, snapshot.monitors, spec)
    _add_history(tree, status.get("history") or [], history)
    return tree


def render_text(snapshot: Snapshot, width: int = 120, history: int = HISTORY) -> str:
    """The tree as plain text (no colour, no control codes), ``width`` columns wide."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(build_tree(snapshot, history))
    return buffer.getvalue()


def weights(status: Obj) -> tuple[int, int | None]:
    """(stable weight, canary weight or None) in percent, as the routing table splits them:
    the canary takes ``canaryWeight`` only while a canary is in flight (phase Progressing)."""
    canary = status.get("canaryVersion")
    if canary and status.get("phase") == "Progressing":
        weight = int(status.get("canaryWeight") or 0)
        return 100 - weight, weight
    return 100, None


def pause_left(spec: Obj, status: Obj, now: float) -> tuple[float, float] | None:
    """(seconds left, seconds in all) of the current step's pause; None when no step runs."""
    step, started = status.get("step"), status.get("stepStartedAt")
    steps = (spec.get("canary") or {}).get("steps") or []
    if step is None or started is None or not 0 <= step < len(steps):
        return None
    pause = parse_duration(str(steps[step].get("pause", "30s")))
    left = _parse_time(str(started)) + pause - now
    return max(0.0, left), pause


def _version_lines(snapshot: Snapshot, spec: Obj, status: Obj) -> list[Text]:
    lines = []
    stable_weight, canary_weight = weights(status)
    stable = status.get("stableVersion")
    if stable:
        lines.append(
            _version_line("stable", str(stable), stable_weight, "", snapshot.versions.get(stable))
        )
    else:
        lines.append(Text.assemble(("stable ", "bold"), ("none yet", "yellow")))
    canary = status.get("canaryVersion")
    if canary and canary_weight is not None:
        lines.append(
            _version_line(
                "canary",
                str(canary),
                canary_weight,
                _step_text(spec, status, snapshot.now),
                snapshot.versions.get(canary),
            )
        )
        held = _condition(status, "Progressing")
        if held.get("status") == "False" or held.get("reason") == "PromotePending":
            lines.append(Text(f"  {held.get('reason')}: {held.get('message', '')}", "yellow"))
    elif canary and status.get("phase") == "RolledBack":
        lines.append(Text.assemble(("canary ", "bold"), (f"{canary} rolled back", "red")))
    if rejected := status.get("rejectedVersions"):
        lines.append(Text.assemble(("rejected ", "bold"), (", ".join(rejected), "red")))
    return lines


def _version_line(role: str, name: str, weight: int, step: str, mv: Obj | None) -> Text:
    text = Text.assemble((f"{role} ", "bold"), (name, "cyan"), "  ", (f"{weight}%", "bold magenta"))
    if step:
        text.append(f"  {step}")
    if mv is None:
        text.append("  ModelVersion not found", style="red")
        return text
    mv_status = _part(mv, "status")
    phase = str(mv_status.get("phase") or "Pending")
    text.append(f"  {phase}", style=PHASE_STYLES.get(phase, ""))
    summary = mv_status.get("metricsSummary") or _metrics(_part(mv, "spec").get("metrics") or {})
    if summary:
        text.append(f"  {summary}", style="dim")
    return text


def _step_text(spec: Obj, status: Obj, now: float) -> str:
    steps = (spec.get("canary") or {}).get("steps") or []
    step = status.get("step")
    if step is None:
        return "loading on the serving pods"
    text = f"step {int(step) + 1}/{len(steps)}"
    if (left := pause_left(spec, status, now)) is not None:
        text += f", {_duration(left[0])} of {_duration(left[1])} left"
    return text


def _add_pods(tree: Tree, pods: Sequence[Obj], spec: Obj) -> None:
    ready = sum(1 for pod in pods if _pod_ready(pod))
    wanted = spec.get("replicas", 1)
    node = tree.add(Text.assemble(("pods ", "bold"), f"{ready}/{len(pods)} ready"))
    if spec.get("autoscaling") is None and len(pods) != wanted:
        node.label = Text.assemble(
            ("pods ", "bold"), f"{ready}/{len(pods)} ready ({wanted} wanted)"
        )
    for pod in sorted(pods, key=lambda p: str(_part(p, "metadata").get("name", ""))):
        status = _part(pod, "status")
        restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or [])
        waiting = [
            str(c["state"]["waiting"].get("reason", ""))
            for c in status.get("containerStatuses") or []
            if (c.get("state") or {}).get("waiting")
        ]
        is_ready = _pod_ready(pod)
        node.add(
            Text.assemble(
                str(_part(pod, "metadata").get("name", "")),
                "  ",
                (str(status.get("phase", "Unknown")), "green" if is_ready else "yellow"),
                "  ",
                ("ready" if is_ready else "not ready", "green" if is_ready else "yellow"),
                f"  restarts {restarts}",
                (f"  {', '.join(waiting)}" if waiting else "", "red"),
            )
        )


def _add_monitors(tree: Tree, monitors: Sequence[Obj], spec: Obj) -> None:
    guards = set((spec.get("rollback") or {}).get("driftMonitors") or [])
    node = tree.add(Text("monitors", style="bold"))
    if not monitors:
        node.add(Text("none", style="dim"))
    for monitor in sorted(monitors, key=lambda m: str(_part(m, "metadata").get("name", ""))):
        name = str(_part(monitor, "metadata").get("name", ""))
        phase, details = describe("DriftMonitor", monitor)
        action = _part(monitor, "spec").get("action", "alert")
        guard = name in guards or action == "rollback"
        line = Text.assemble(
            (name, "cyan"),
            "  ",
            (phase, PHASE_STYLES.get(phase, "")),
            f"  {details}",
            (f"  action {action}" + (" (guards the canary)" if guard else ""), "dim"),
        )
        child = node.add(line)
        drifted = _condition(_part(monitor, "status"), "Drifted")
        if drifted.get("status") == "Unknown" and drifted.get("reason") != "InsufficientData":
            child.add(Text(f"{drifted.get('reason')}: {drifted.get('message', '')}", "yellow"))
        for feature in _worst(_part(monitor, "status").get("features") or []):
            child.add(_feature_line(feature))


def _worst(features: Sequence[Obj]) -> list[Obj]:
    def closeness(f: Obj) -> float:
        score, threshold = f.get("score"), float(f.get("threshold") or 0)
        if score is None or threshold <= 0:
            return -1.0
        p_value = f.get("method") in ("ks", "chisquare", "ztest")
        if p_value:
            return threshold / float(score) if score else float("inf")
        return float(score) / threshold

    ranked = sorted(features, key=lambda f: (bool(f.get("drifted")), closeness(f)), reverse=True)
    return ranked[:WORST_FEATURES]


def _feature_line(feature: Obj) -> Text:
    score = feature.get("score")
    shown = "-" if score is None else f"{float(score):.3g}"
    drifted = bool(feature.get("drifted"))
    return Text.assemble(
        str(feature.get("name", "")),
        f"  {feature.get('method', '')} {shown} (threshold {feature.get('threshold')})  ",
        ("drifted" if drifted else "ok", "red" if drifted else "green"),
    )


def _add_history(tree: Tree, history: Sequence[Obj], limit: int) -> None:
    shown = list(history)[-limit:] if limit > 0 else []
    node = tree.add(Text(f"history (last {len(shown)} of {len(history)})", style="bold"))
    for entry in shown:
        when = str(entry.get("time", ""))
        node.add(
            Text.assemble(
                (when[11:19] if len(when) >= 19 else when, "dim"),
                "  ",
                (str(entry.get("event", "")), "bold"),
                f"  {entry.get('version') or '-'}  ",
                (str(entry.get("message", "")), "dim"),
            )
        )


def _part(obj: Obj, key: str) -> Obj:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _condition(status: Obj, type_: str) -> Obj:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _pod_ready(pod: Obj) -> bool:
    return _condition(_part(pod, "status"), "Ready").get("status") == "True"


def _metrics(metrics: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={float(v):.3g}" for k, v in sorted(metrics.items()))


def _duration(exact: float) -> str:
    seconds = round(exact)
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _parse_time(text: str) -> float:
    """Unix seconds of an RFC 3339 time as our status writes them (``...Z``)."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
