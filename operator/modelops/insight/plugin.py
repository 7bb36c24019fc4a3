"""``kubectl modelops``: look at a rollout, steer it, read a drift report or a model card.

Installed as the console script ``kubectl-modelops``, so kubectl runs it as a plugin
(``kubectl modelops status iris``); ``modelops report``, ``modelops card`` and
``modelops reproduce`` are the same commands. It talks only to the Kubernetes API, with the
user's kubeconfig and RBAC (read as kubectl reads it:
:meth:`~modelops.controllers.cluster.Cluster.from_kubeconfig`), and — for ``report``,
``card``, ``reproduce`` and ``retrain`` of a dataset prefix — to the object store, with
``MODELOPS_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (optional
``MODELOPS_S3_SECURE``, ``MODELOPS_BUCKET``).

What each command needs from RBAC, in the Deployment's namespace: ``get``/``status``: get
deployments and modelversions, list pods and driftmonitors; ``promote``/``abort``/``approve``:
get and patch deployments.modelops.dev (``approve`` also the verb ``approve``, checked by the
admission policy ``modelops-approvals``); ``retrain``: get driftmonitors, create trainingruns;
``report``: get driftmonitors, modelversions (and deployments when the monitor never ran);
``card``: get modelversions, list deployments and driftmonitors; ``reproduce``: get
modelversions, create and get trainingruns.

Errors a user can fix (an unknown object, a missing kubeconfig, a store that does not answer,
a refused request) print one line on stderr, ``error: ...``, and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import kopf
from minio.error import S3Error
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from modelops import API_VERSION, GROUP
from modelops.api.common import parse_duration
from modelops.api.driftmonitor import DriftMonitorSpec
from modelops.controllers.cluster import ApiError, Cluster
from modelops.insight.tree import Snapshot, build_tree, render_text
from modelops.storage import ArtifactError, ArtifactStore, Location

ACTION_ANNOTATION = f"{GROUP}/action"
APPROVED_BY_ANNOTATION = f"{GROUP}/approved-by"
"""What the Deployment controller obeys (``rollout.ACTIONS``); removed once obeyed."""
TRIGGER = f"{GROUP}/trigger"
MANUAL_TRIGGER = "manual"
"""The trigger label of a TrainingRun made by ``retrain`` (not one of the monitor's own)."""
SERVER_COMPONENT = "server"
DEPLOYMENT_KINDS = frozenset(
    {"mdep", "deployment", "deployments", "deployment.modelops.dev", "deployments.modelops.dev"}
)
MONITOR_KINDS = frozenset(
    {
        "dm",
        "driftmonitor",
        "driftmonitors",
        "driftmonitor.modelops.dev",
        "driftmonitors.modelops.dev",
    }
)
PLAIN_WIDTH = 160
"""Columns of the tree when stdout is not a terminal (pipes, logs, tests)."""

EPILOG = """\
`approve` promotes a canary awaiting approval (spec.canary.requireApproval); it needs the
approve verb on deployments.modelops.dev (ClusterRole modelops-approver) and records you as
the approver (annotation modelops.dev/approved-by).

examples:
  kubectl modelops status iris -n shop --watch
  kubectl modelops promote iris -n shop
  kubectl modelops report dm/iris-drift -n shop -o report.html --window 30m
  kubectl modelops card mv/iris-v2 -n shop --open
  kubectl modelops reproduce mv/iris-v2 -n shop --wait
"""


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 1."""


# -- arguments --------------------------------------------------------------------------------


def build_parser(prog: str = "kubectl modelops") -> argparse.ArgumentParser:
    """The command line (``prog`` names it in help: ``kubectl modelops`` or ``modelops``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    common.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"
    )
    common.add_argument("--context", help="kubeconfig context (default: current-context)")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Look at and steer modelops Deployments; read DriftMonitor reports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("status", "get"):
        cmd = sub.add_parser(
            name,
            parents=[common],
            help="a Deployment as a tree: versions, weights, step, pods, monitors, history",
        )
        cmd.add_argument("name", metavar="NAME", help="Deployment (NAME or mdep/NAME)")
        cmd.add_argument("-w", "--watch", action="store_true", help="redraw until Ctrl-C")
        cmd.add_argument("--interval", type=float, default=2.0, help="seconds between redraws")
        cmd.add_argument("--history", type=int, default=5, help="history entries shown")
        cmd.set_defaults(run=_status)
    for action, text in (
        ("promote", "promote the canary now (skips the remaining steps; waits for the pods)"),
        ("abort", "roll the canary back now (it is marked rejected)"),
        (
            "approve",
            "approve a canary awaiting approval (modelops.dev/action=approve, with you as "
            "modelops.dev/approved-by); needs the approve verb (ClusterRole modelops-approver)",
        ),
    ):
        cmd = sub.add_parser(action, parents=[common], help=text)
        cmd.add_argument("name", metavar="NAME", help="Deployment (NAME or mdep/NAME)")
        cmd.set_defaults(run=_action, action=action)
    retrain = sub.add_parser(
        "retrain",
        parents=[common],
        help="create a TrainingRun now from a DriftMonitor's spec.retrain.template",
    )
    retrain.add_argument("name", metavar="NAME", help="DriftMonitor (NAME or dm/NAME)")
    retrain.add_argument(
        "--dataset", help="train on this s3:// object instead of the template's dataset.uri"
    )
    retrain.set_defaults(run=_retrain)
    add_report_arguments(sub.add_parser("report", parents=[common], help=REPORT_HELP))
    card = sub.add_parser("card", parents=[common], help=CARD_HELP)
    card.add_argument("name", metavar="NAME", help="ModelVersion (NAME or mv/NAME)")
    card.add_argument(
        "-o", "--output", help="file to write, HTML or .json (default model-card-NAME.html)"
    )
    card.add_argument("--open", action="store_true", help="open it in the web browser")
    card.set_defaults(run=_card)
    from modelops.insight import reproduce  # it imports this module

    again = sub.add_parser("reproduce", parents=[common], help=reproduce.HELP)
    reproduce.add_arguments(again)
    again.set_defaults(run=reproduce.reproduce)
    return parser


CARD_HELP = "write a ModelVersion's model card (with its rollout and drift history)"


REPORT_HELP = "write a DriftMonitor's drift report: one self-contained HTML file"


def add_report_arguments(cmd: argparse.ArgumentParser) -> None:
    """The ``report`` command's arguments (shared with ``modelops report``)."""
    cmd.add_argument("name", metavar="NAME", help="DriftMonitor (NAME or dm/NAME)")
    cmd.add_argument("-o", "--output", help="file to write (default drift-report-NAME.html)")
    cmd.add_argument("--window", help="live window to merge, e.g. 30m (default: the monitor's)")
    cmd.add_argument(
        "--version", help="ModelVersion to report on (default: the one the monitor last checked)"
    )
    cmd.set_defaults(run=_report)


def main(argv: list[str] | None = None, prog: str = "kubectl modelops") -> int:
    """Run one command; returns the exit status (0, 1 for user errors, 2 for usage)."""
    args = build_parser(prog).parse_args(argv)
    command: Callable[[Session, argparse.Namespace], Awaitable[int]] = args.run
    # The library logs a failing exec credential plugin before raising; the error is then
    # told once, as our own line.
    logging.getLogger("kubernetes_asyncio.config.kube_config").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_with_session(command, args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if getattr(args, "watch", False) else 130


async def _with_session(
    command: Callable[[Session, argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    try:
        cluster = Cluster.from_kubeconfig(args.kubeconfig, args.context)
    except kopf.LoginError as exc:
        raise UserError(_one_line(str(exc))) from None
    session = Session(cluster, args.namespace or cluster.namespace or "default")
    try:
        try:
            await cluster.connect()  # the credentials now: a failing exec plugin says so
        except ApiError as exc:
            raise UserError(_one_line(f"{exc.body} (API server {cluster.server})")) from None
        return await command(session, args)
    except ApiError as exc:
        raise UserError(session.explain(exc)) from None
    finally:
        await session.cluster.close()


def _one_line(text: str) -> str:
    """``text`` (a library's message: YAML marks, a plugin's stderr) on one line."""
    return " ".join(text.split())[:500]


def object_name(ref: str, kinds: frozenset[str], kind: str) -> str:
    """``NAME`` or ``<kind>/NAME`` (any of ``kinds``); raises UserError for another kind."""
    if "/" not in ref:
        return ref
    prefix, name = ref.split("/", 1)
    if prefix.lower() not in kinds or not name:
        raise UserError(f"{ref!r} is not a {kind}: use NAME or {min(kinds, key=len)}/NAME")
    return name


# -- the API, through the one client ----------------------------------------------------------


class Session:
    """The API client, the namespace, and one-line explanations of API errors."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    @property
    def server(self) -> str:
        """The API server's URL (the kubeconfig context's cluster)."""
        return self.cluster.server

    async def get(self, kind: str, name: str) -> dict[str, Any]:
        """The object; UserError naming it and the namespace when it does not exist."""
        obj = await self.cluster.get(API_VERSION, kind, self.namespace, name)
        if obj is None:
            raise UserError(f"{kind} {name} not found in namespace {self.namespace}")
        return obj

    def explain(self, exc: ApiError) -> str:
        if exc.status == 0:
            return f"the Kubernetes API at {self.server} gave no answer ({exc.body[:200]})"
        try:
            message = str(json.loads(exc.body).get("message") or exc.body)
        except (ValueError, AttributeError):
            message = exc.body
        if exc.status == 401:
            return f"the Kubernetes API at {self.server} refused the credentials: {message}"
        if exc.status == 403:
            return f"forbidden: {message}"
        return f"the Kubernetes API answered {exc.status}: {message}"[:500]


async def snapshot(session: Session, name: str) -> Snapshot:
    """The Deployment ``name`` with the versions its status names, its serving pods and
    the DriftMonitors aimed at it (UserError when the Deployment does not exist)."""
    dep = await session.get("Deployment", name)
    status = dep.get("status") or {}
    names = [v for v in (status.get("stableVersion"), status.get("canaryVersion")) if v]
    ns = session.namespace
    selector = {f"{GROUP}/deployment": name, "app.kubernetes.io/component": SERVER_COMPONENT}
    mvs, pods, monitors = await asyncio.gather(
        asyncio.gather(*(session.cluster.get(API_VERSION, "ModelVersion", ns, v) for v in names)),
        session.cluster.list("v1", "Pod", ns, selector),
        session.cluster.list(API_VERSION, "DriftMonitor", ns, {}),
    )
    versions = {v: mv for v, mv in zip(names, mvs, strict=True) if mv is not None}
    aimed = [m for m in monitors if (m.get("spec") or {}).get("deployment") == name]
    return Snapshot(dep, versions, pods, aimed, time.time())


# -- commands ---------------------------------------------------------------------------------


async def _status(session: Session, args: argparse.Namespace) -> int:
    name = object_name(args.name, DEPLOYMENT_KINDS, "Deployment")
    tty = sys.stdout.isatty()
    if not args.watch:
        shot = await snapshot(session, name)
        if tty:
            from rich.console import Console

            Console().print(build_tree(shot, args.history))
        else:
            print(render_text(shot, PLAIN_WIDTH, args.history), end="", flush=True)
        return 0
    if tty:
        return await _watch_live(session, name, args)
    last = ""
    while True:  # plain: the tree again whenever it changes
        shot = await snapshot(session, name)
        # Compared at a fixed clock, so the pause's countdown alone prints nothing.
        frozen = render_text(dataclasses.replace(shot, now=0.0), PLAIN_WIDTH, args.history)
        if frozen != last:
            stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
            print(
                f"--- {stamp}\n{render_text(shot, PLAIN_WIDTH, args.history)}", end="", flush=True
            )
            last = frozen
        await asyncio.sleep(args.interval)


async def _watch_live(session: Session, name: str, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    shot = await snapshot(session, name)
    with Live(build_tree(shot, args.history), console=console, refresh_per_second=4) as live:
        while True:
            await asyncio.sleep(args.interval)
            live.update(build_tree(await snapshot(session, name), args.history))


async def _action(session: Session, args: argparse.Namespace) -> int:
    name = object_name(args.name, DEPLOYMENT_KINDS, "Deployment")
    dep = await session.get("Deployment", name)
    status = dep.get("status") or {}
    canary = status.get("canaryVersion")
    if not canary or status.get("phase") != "Progressing":
        raise UserError(
            f"Deployment {name} has no canary in flight (phase {status.get('phase') or 'Pending'})"
            f": nothing to {args.action}"
        )
    annotations = {ACTION_ANNOTATION: args.action}
    if args.action == "approve":
        annotations[APPROVED_BY_ANNOTATION] = await _username(session)
    patch = {"metadata": {"annotations": annotations}}
    await session.cluster.patch(API_VERSION, "Deployment", session.namespace, name, patch)
    annotated = " ".join(f"{k}={v}" for k, v in annotations.items())
    print(f"deployment.modelops.dev/{name} annotated {annotated} (canary {canary})")
    return 0


async def _username(session: Session) -> str:
    """The user the API server authenticates us as (a SelfSubjectReview, which every
    authenticated user may create): what the admission policy lets ``approved-by`` name."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    answer = await session.cluster.request(
        "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", json=review
    )
    name = ((answer.get("status") or {}).get("userInfo") or {}).get("username")
    if not name:
        raise UserError("the Kubernetes API did not say who you are (SelfSubjectReview)")
    return str(name)


async def _retrain(session: Session, args: argparse.Namespace) -> int:
    from modelops.resources.common import child_name
    from modelops.resources.training import retrain_run

    name = object_name(args.name, MONITOR_KINDS, "DriftMonitor")
    monitor = await session.get("DriftMonitor", name)
    template = copy.deepcopy(((monitor.get("spec") or {}).get("retrain") or {}).get("template"))
    if not template:
        raise UserError(f"DriftMonitor {name} has no spec.retrain.template to train from")
    uri = args.dataset or str(template.get("dataset", {}).get("uri", ""))
    if uri.endswith("/"):
        uri = await asyncio.to_thread(_newest_dataset, uri)
    template.setdefault("dataset", {})["uri"] = uri
    run = retrain_run(name, session.namespace, 0, template)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    meta = run["metadata"]
    meta["name"] = child_name(name, f"manual-{stamp}")
    meta["labels"][TRIGGER] = MANUAL_TRIGGER
    meta["annotations"] = {
        TRIGGER: MANUAL_TRIGGER,
        f"{GROUP}/trigger-detail": "kubectl modelops retrain",
    }
    meta["ownerReferences"] = [
        {"apiVersion": API_VERSION, "kind": "DriftMonitor", "name": name,
         "uid": monitor["metadata"]["uid"]}
    ]  # fmt: skip
    if await session.cluster.create_new(run) is None:
        raise UserError(f"TrainingRun {meta['name']} already exists in {session.namespace}")
    print(
        f"trainingrun.modelops.dev/{meta['name']} created from DriftMonitor {name} (dataset {uri})"
    )
    return 0


def _newest_dataset(prefix: str) -> str:
    """The newest dataset object under an ``s3://`` prefix, as the monitor's onNewData
    trigger picks it."""
    from modelops.controllers.triggers import newest

    try:
        found = newest(store_from_env().list_objects(Location.parse(prefix)))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except (ArtifactError, S3Error, HTTPError, OSError) as exc:
        raise UserError(store_problem(exc)) from None
    if found is None:
        raise UserError(f"no dataset object (.csv, .parquet, .pq) under {prefix}; pass --dataset")
    return found.location.uri


def store_from_env() -> ArtifactStore:
    """The object store the user's environment names; UserError when it names none."""
    try:
        return ArtifactStore.from_env()
    except ArtifactError as exc:
        raise UserError(
            f"the object store is not configured: {exc} (set MODELOPS_S3_ENDPOINT,"
            " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        ) from None


def store_problem(exc: Exception) -> str:
    """One line for a failed store call."""
    endpoint = os.environ.get("MODELOPS_S3_ENDPOINT", "?")
    if isinstance(exc, ArtifactError):
        return str(exc)
    if isinstance(exc, S3Error):
        return f"the object store at {endpoint} refused: {exc.code}: {exc.message}"
    reason = getattr(exc, "reason", None) or exc
    return f"the object store at {endpoint} is unreachable: {reason}"


async def _report(session: Session, args: argparse.Namespace) -> int:
    from modelops.controllers.windows import merged_quality, merged_windows
    from modelops.insight.report import render

    name = object_name(args.name, MONITOR_KINDS, "DriftMonitor")
    monitor = await session.get("DriftMonitor", name)
    try:
        spec = DriftMonitorSpec.model_validate(monitor.get("spec") or {})
        window_text = args.window or spec.window
        window = parse_duration(window_text)
    except (ValidationError, ValueError) as exc:
        raise UserError(f"DriftMonitor {name}: {exc}".splitlines()[0]) from None
    version = args.version or (monitor.get("status") or {}).get("version") or spec.version
    if not version:
        dep = await session.get("Deployment", spec.deployment)
        version = target_version(spec, dep.get("status") or {})
    if not version:
        raise UserError(f"DriftMonitor {name} has no version to report on yet; pass --version")
    mv = await session.get("ModelVersion", version)
    ref = (mv.get("spec") or {}).get("profile")
    if not ref:
        raise UserError(f"ModelVersion {version} has no reference profile")
    store = store_from_env()
    bucket = os.environ.get("MODELOPS_BUCKET", "modelops")
    base = f"{session.namespace}/{{}}/{spec.deployment}/{version}/"
    try:
        data = await asyncio.to_thread(
            store.get_verified, Location.parse(ref["uri"]), ref["sha256"]
        )
        profile = json.loads(data)
        sketch = await merged_windows(
            store, bucket, base.format("sketches"), profile["fingerprint"], window
        )
        quality = await merged_quality(store, bucket, base.format("quality"), window)
    except (ArtifactError, S3Error, HTTPError, OSError) as exc:
        raise UserError(store_problem(exc)) from None
    metrics = (mv.get("spec") or {}).get("metrics") or {}
    try:
        page = render(
            monitor, profile, sketch, quality, version=version, window=window_text,
            reference_metrics=metrics,
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(f"DriftMonitor {name} on {version}: {exc}") from None
    out = Path(args.output or f"drift-report-{name}.html")
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc}") from None
    samples = sketch.n_rows if sketch is not None else 0
    print(f"wrote {out}: {version}, last {window_text}, {samples} samples")
    return 0


def target_version(spec: DriftMonitorSpec, status: Mapping[str, Any]) -> str | None:
    """The version a monitor watches, as its controller picks it: ``spec.version``, else
    the canary while it takes traffic (``traffic`` auto or canary), else stable."""
    if spec.version:
        return spec.version
    live = status.get("phase") == "Progressing" and (status.get("canaryWeight") or 0) > 0
    if spec.traffic == "canary" or (spec.traffic == "auto" and live):
        return status.get("canaryVersion") if live else None
    stable = status.get("stableVersion")
    return str(stable) if stable else None


async def _card(session: Session, args: argparse.Namespace) -> int:
    from modelops.insight.card import card_document, render_html
    from modelops.insight.reproduce import VERSION_KINDS

    name = object_name(args.name, VERSION_KINDS, "ModelVersion")
    mv = await session.get("ModelVersion", name)
    spec = mv.get("spec") or {}
    ns = session.namespace
    deployments, monitors = await asyncio.gather(
        session.cluster.list(API_VERSION, "Deployment", ns, {}),
        session.cluster.list(API_VERSION, "DriftMonitor", ns, {}),
    )
    mine = [d for d in deployments if (d.get("spec") or {}).get("model") == spec.get("model")]
    profile, problem = None, None
    if ref := spec.get("profile"):
        try:
            data = await asyncio.to_thread(
                store_from_env().get_verified, Location.parse(ref["uri"]), ref["sha256"]
            )
            profile = json.loads(data)
        except ArtifactError as exc:
            problem = f"reference profile unavailable: {exc}"
        except (S3Error, HTTPError, OSError) as exc:
            raise UserError(store_problem(exc)) from None
    try:
        card = card_document(
            mv, profile, profile_problem=problem, deployments=mine, monitors=monitors
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"ModelVersion {name}: cannot draw its card: {exc}") from None
    out = Path(args.output or f"model-card-{name}.html")
    text = json.dumps(card, indent=2) if out.suffix == ".json" else render_html(card)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc}") from None
    print(
        f"wrote {out}: {name}, {len(card['rollout'])} rollout entries, "
        f"{len(card['drift'])} DriftMonitor verdicts"
    )
    if args.open:
        import webbrowser

        webbrowser.open(out.resolve().as_uri())
    return 0
