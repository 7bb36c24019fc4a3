"""``modelops local demo``: the whole loop on this machine, narrated, with a summary.

Starts the local cluster in ``.modelops/``, runs the story of :mod:`modelops.local.scenario`
with a live view (act 1: the drift rollback; act 2: live quality falls, a retrain on fresh
data, a canary with quality analysis, promoted), prints a summary (stage timings, requests
served, client errors, time from the first drifted request to the rollback, feedback sent,
stable's fallen accuracy, time from the concept drift to the promotion) and stops everything.
Exits 0 when the story ended as it should.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelops.local.cluster import LocalCluster
from modelops.local.scenario import Result, Scenario, ScenarioError, SecondAct
from modelops.local.traffic import TrafficStats
from modelops.local.view import RichView, View, make_view, number, p_value


def summary(result: Result, cluster_seconds: float) -> list[tuple[str, str]]:
    """(label, value) rows: when each stage was reached (seconds since the start, and since
    the stage before), then what the clients saw, act by act."""
    rows: list[tuple[str, str]] = [("local cluster up", f"{cluster_seconds:6.1f}s")]
    previous = result.started
    for stage, at in result.stages:
        since_start = cluster_seconds + at - result.started
        rows.append((stage, f"{since_start:6.1f}s  (+{at - previous:.1f}s)"))
        previous = at
    traffic = result.traffic
    versions = ", ".join(f"{v}: {n}" for v, n in sorted(traffic.by_version().items()))
    p50, p99 = traffic.latency_ms(0.5), traffic.latency_ms(0.99)
    rows += [
        ("requests served", f"{len(traffic.ok())} ({versions})"),
        ("client errors", str(len(traffic.errors()))),
        ("latency p50 / p99", f"{p50:.1f} ms / {p99:.1f} ms"),
    ]
    if result.outcome == "rollback":
        drifted = traffic.drifted()
        by_canary = sum(a.version != result.expected_version for a in drifted)
        rows.append(("drifted requests", f"{len(drifted)} ({by_canary} answered by the canary)"))
        if (seconds := result.drift_to_rollback) is not None:
            rows.append(("first drifted request -> rollback", f"{seconds:.1f}s"))
    checked = sum(a.version == result.expected_version for a in result.after)
    rows.append((f"answers from {result.expected_version} after", f"{checked}/{len(result.after)}"))
    rows.append(("reason", result.reason))
    if result.second is not None:
        rows += second_act_rows(result.second, traffic)
    rows.append(("total", f"{cluster_seconds + time.time() - result.started:.1f}s"))
    return rows


def second_act_rows(act: SecondAct, traffic: TrafficStats) -> list[tuple[str, str]]:
    """The second act's rows: feedback sent, stable's fallen quality (as the monitor and as
    the clients measured it), the retrain, the analysis the promotion was taken on."""
    counts = traffic.feedback_counts()
    answered = ", ".join(
        f"{k} {counts[k]}" for k in ("joined", "pending", "unknown") if k in counts
    )
    fell, seen = act.fell, act.client_accuracy
    held_out = (fell.get("baseline") or {}).get("against")
    rows = [
        (
            "feedback",
            f"{traffic.labels_sent()} labels in {len(traffic.feedback)} calls "
            f"(at once: {answered}), {len(traffic.feedback_errors())} failed",
        ),
        (
            f"{act.stable} live accuracy when it fired",
            f"{number(fell.get('value'))} on {fell.get('labels')} labels (held-out "
            f"{number(held_out)}; clients' tally {number(seen[0])} on {seen[1]})",
        ),
    ]
    if act.fired_at is not None:
        rows.append(("labels change -> quality fired", f"{act.fired_at - act.started:.1f}s"))
    rows.append(("retraining run", f"{act.retrain} on {act.dataset_uri}"))
    analysis = act.promotion.get("analysis") or {}
    if analysis:
        rows.append(
            (
                f"{act.version} analysis at promotion",
                f"{analysis.get('metric')} {number(analysis.get('canaryValue'))} "
                f"({analysis.get('canaryLabels')} labels) vs {number(analysis.get('stableValue'))} "
                f"({analysis.get('stableLabels')}), margin {analysis.get('margin')}, "
                f"p(not worse) {p_value(analysis.get('pNotWorse'))}",
            )
        )
    if (seconds := act.fall_to_promotion) is not None:
        rows.append(("labels change -> promotion", f"{seconds:.1f}s"))
    checked = sum(a.version == act.version for a in act.after)
    rows.append((f"answers from {act.version} after", f"{checked}/{len(act.after)}"))
    rows.append(("act 2 reason", f"{act.promotion.get('reason')}: {act.promotion.get('message')}"))
    return rows


def print_summary(rows: list[tuple[str, str]], problems: list[str], *, rich: bool) -> None:
    if rich:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            rich = False
        else:
            table = Table(title="Summary", show_header=False, expand=False)
            table.add_column(style="cyan")
            table.add_column()
            for label, value in rows:
                table.add_row(label, value)
            console = Console()
            console.print(table)
            for problem in problems:
                console.print(f"[bold red]problem:[/] {problem}")
            if not problems:
                console.print("[bold green]The loop closed: no client saw an error.[/]")
            return
    width = max(len(label) for label, _ in rows)
    print("\nSummary", flush=True)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    for problem in problems:
        print(f"problem: {problem}")
    if not problems:
        print("The loop closed: no client saw an error.")
    sys.stdout.flush()


async def _story(cluster: LocalCluster, view: View) -> Result:
    return await Scenario(cluster, view, quality_act=True).run()


def run_demo(
    state_dir: Path,
    *,
    plain: bool | None = None,
    on_start: Callable[[LocalCluster], object] | None = None,
) -> int:
    view = make_view(plain=plain)
    rich = isinstance(view, RichView)
    view.say("Starting the local cluster: Kubernetes control plane, S3 server, kubelet, operator")
    cluster = LocalCluster(state_dir)
    started = time.monotonic()
    try:
        cluster.start()
        if on_start is not None:
            on_start(cluster)
        cluster_seconds = time.monotonic() - started
        view.say(
            f"Cluster up in {cluster_seconds:.1f}s: kubectl works with "
            f"KUBECONFIG={cluster.kubeconfig}"
        )
        try:
            result = asyncio.run(_story(cluster, view))
        except ScenarioError as exc:
            view.say(f"The demo failed: {exc}", "bold red")
            view.close()
            print(f"logs: {cluster.log_dir} and {cluster.state_dir / 'pods'}", file=sys.stderr)
            return 1
        view.close()
    except BaseException:
        view.close()
        raise
    finally:
        cluster.stop()
        (state_dir / "local.json").unlink(missing_ok=True)
    problems = result.problems()
    print_summary(summary(result, cluster_seconds), problems, rich=rich)
    return 1 if problems else 0
