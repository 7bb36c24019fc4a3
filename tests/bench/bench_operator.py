"""The operator at scale: `python tests/bench/bench_operator.py [--sizes 100,500,1000] [--quick]`.

For each N: a fresh real control plane, S3 server and process kubelet in no-process mode
(:mod:`modelops.local.simpods`: serving pods Running and Ready without processes, writing pod
reports and sketch windows drawn from the version's reference profile); in namespace
``bench``, for each of N models ``mNNNN``: ModelVersions ``-v1`` and ``-v2`` (one real trained
iris model and its profile, reused by reference: same artifact, same sha256), a TrainingRun
``-run2`` that "registered" v2 (its status written ``Succeeded`` by the benchmark: no Job, and
the operator's TrainingRun timer only runs for unfinished runs), a Deployment (stable and
canary ``latest``, 19 canary steps of 20 s, one replica) and a DriftMonitor aimed at it
(``action: rollback``, interval 10 s, window 1 m). 2N ModelVersions, not N: a canary needs a
second version.

Then, in turn, two operators, each a process logged in with the shipped ServiceAccount's token
and scoped to the one namespace (``MODELOPS_NAMESPACES=bench``: the case where every pass's
namespace-wide list reads all N objects, and no cluster-wide scanning):

(a) the real one, ``python -m modelops run`` with the shipped intervals (rollout 2 s, drift
    1 s, jobs 5 s). Warm-up: v1 only, until every Deployment serves v1 as stable; then the
    v2s are created and it runs until every Deployment's canary takes traffic (bounded by
    ``--warmup``; what was reached is printed). Then a window of ``--window`` seconds;
(b) the floor: ``tests/bench/noop_operator.py`` under Kopf, the same kinds, timers,
    intervals and filters, writing one status field; after a settling pause, the same window.

Each operator reaches the API server through a counting proxy (``support.faultproxy``, no
faults) and, for the real one, the store through another: both run in a child process, so
their CPU does not share the benchmark's interpreter. Measured over the window: the
operator's CPU (``/proc/<pid>/stat``, cores) and peak RSS; API requests/s by verb and the
busiest (verb, resource); store requests/s by operation; the real operator's passes/s and mean
pass time per kind (its own ``modelops_reconcile_*`` metrics). Latencies, on sampled
Deployments (labelled ``bench.modelops.dev/sample``, read through an admin watch):

- spec change -> status: a canary step's pause patched, until ``status.observedGeneration``
  shows the new generation (both operators);
- promote -> status: annotation ``modelops.dev/action=promote``, until ``stableVersion`` is v2;
- drifted traffic -> monitor fires: the simulated pods' canary windows drift, until the
  DriftMonitor says ``Drifted=True``; fires -> rolled back: from that event to the
  Deployment's ``phase: RolledBack``;
- canary step start delay: when a step began (the event showing it) minus when it was due
  (the previous ``stepStartedAt`` plus its pause), on every step change seen.

Numbers only, never asserted. If a size cannot be set up (a timeout, an error), or the
operator reconciles no Deployment at all within the warm-up (both windows are then measured in
that state), what broke and why (the operator's commonest logged errors) is printed and larger
sizes are skipped. ``--quick``: N = 100 only, a 30 s window. ``--profile S``: a py-spy profile
of the operator after its window (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
try:
    import modelops.local  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "tests"))

from modelops import API_VERSION  # noqa: E402
from modelops.controllers.cluster import ApiError, Cluster  # noqa: E402
from modelops.local.cluster import (  # noqa: E402
    BUCKET,
    SECRET,
    LocalCluster,
)
from modelops.local.s3server import free_port  # noqa: E402
from modelops.resources.common import RUN_UID_LABEL  # noqa: E402
from modelops.settings import Settings  # noqa: E402
from modelops.storage import Location  # noqa: E402
from support.simcluster import SimulatedCluster  # noqa: E402

NAMESPACE = "bench"
SAMPLE_LABEL = "bench.modelops.dev/sample"
ACTION_ANNOTATION = "modelops.dev/action"
PAUSE_SECONDS = 20
STEPS = [{"weight": w, "pause": f"{PAUSE_SECONDS}s"} for w in range(5, 100, 5)]
MONITOR = {"interval": "10s", "window": "1m", "minSamples": 50}
ROLES = ("spec", "promote", "drift", "steps")
NOOP = Path(__file__).with_name("noop_operator.py")
SHIPPED = Settings.model_fields
POLL_ENV = {
    "MODELOPS_JOB_POLL_SECONDS": str(SHIPPED["job_poll_seconds"].default),
    "MODELOPS_ROLLOUT_POLL_SECONDS": str(SHIPPED["rollout_poll_seconds"].default),
}
CREATE_CONCURRENCY = 32
PY_SPY = str(Path(sys.executable).with_name("py-spy"))  # `pip install py-spy` for --profile
STARTED = time.monotonic()


class Broke(Exception):
    """A size could not be measured: ``phase`` says where, the message why."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


# -- the objects ----------------------------------------------------------------------------------


def name(i: int) -> str:
    return f"m{i:04d}"


def role_of(i: int, sample: int) -> str | None:
    """The first ``sample`` models are the spec-change sample, the next the promote sample..."""
    index = i // sample
    return ROLES[index] if index < len(ROLES) else None


def labels(i: int, sample: int) -> dict[str, str]:
    role = role_of(i, sample)
    return {SAMPLE_LABEL: role} if role else {}


def model_version(summary: dict[str, Any], i: int, number: int, run: Any = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"{name(i)}-v{number}",
        "namespace": NAMESPACE,
        "labels": {"modelops.dev/model": name(i)},
    }
    if run is not None:
        meta["labels"][RUN_UID_LABEL] = run
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": meta,
        "spec": {
            "model": name(i),
            "version": number,
            "artifact": summary["artifact"],
            "profile": summary["profile"],
            "signature": summary["signature"],
            "metrics": summary["metrics"],
            "lineage": {
                "trainingRun": f"{name(i)}-run{number}",
                "datasetUri": summary["dataset"]["uri"],
                "estimator": "LogisticRegression",
                "seed": number,
            },
        },
    }


def training_run(i: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": f"{name(i)}-run2", "namespace": NAMESPACE},
        "spec": {
            "model": name(i),
            "dataset": {"uri": f"s3://{BUCKET}/datasets/iris.csv", "target": "species"},
            "estimator": {"name": "LogisticRegression", "params": {"max_iter": 300}},
            "seed": 2,
        },
    }


def finished(i: int) -> dict[str, Any]:
    """A TrainingRun's status once it succeeded and registered v2 (as the operator writes it)."""
    now = iso(time.time())
    return {
        "status": {
            "phase": "Succeeded",
            "jobName": f"{name(i)}-run2-train",
            "startTime": now,
            "completionTime": now,
            "modelVersion": f"{name(i)}-v2",
            "message": "finished before the benchmark",
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": "finished before the benchmark",
                    "observedGeneration": 1,
                    "lastTransitionTime": now,
                }
            ],
        }
    }


def deployment(i: int, sample: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": name(i), "namespace": NAMESPACE, "labels": labels(i, sample)},
        "spec": {
            "model": name(i),
            "stable": {"version": "latest"},
            "canary": {"version": "latest", "steps": STEPS},
            "replicas": 1,
            # No process runs: a request this small lets a thousand pods fit the one Node.
            "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}},
        },
    }


def drift_monitor(i: int, sample: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {
            "name": f"{name(i)}-drift",
            "namespace": NAMESPACE,
            "labels": labels(i, sample),
        },
        "spec": {"deployment": name(i), "traffic": "auto", "action": "rollback", **MONITOR},
    }


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


async def bounded(jobs: Iterable[Awaitable[Any]], limit: int = CREATE_CONCURRENCY) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


async def create_all(admin: Cluster, what: str, objects: list[dict[str, Any]]) -> list[Any]:
    started = time.monotonic()
    created = await bounded(admin.create_new(o) for o in objects)
    took = time.monotonic() - started
    say(f"created {len(objects)} {what} in {took:.1f} s ({len(objects) / took:.0f}/s)")
    return created


# -- processes: the proxies, the operators --------------------------------------------------------


def serve_proxies(args: argparse.Namespace) -> int:
    """The child process: the API proxy (``FaultProxy``, no rules) and an S3 proxy, both
    counting; prints their ports as one JSON line, serves the counts at ``GET /__counts`` on
    the S3 port, and runs until SIGTERM."""
    from aiohttp import ClientSession, ClientTimeout, web

    from support.faultproxy import FaultProxy

    # A client that goes away mid-watch (an operator stopped) is not the proxy's error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    api = FaultProxy(args.api_upstream, args.ca, args.cert, args.key)
    api.__enter__()
    s3_counts: Counter[str] = Counter()
    s3_seconds: dict[str, float] = defaultdict(float)
    hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}

    async def run() -> None:
        session = ClientSession(timeout=ClientTimeout(total=60), auto_decompress=False)

        async def counts(_request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "api": [[v, r, n] for (v, r), n in api.requests.items()],
                    "api_seconds": [[v, r, n] for (v, r), n in api.seconds.items()],
                    "s3": dict(s3_counts),
                    "s3_seconds": dict(s3_seconds),
                    "api_statuses": {str(k): n for k, n in api.statuses.items()},
                }
            )

        async def forward(request: web.Request) -> web.StreamResponse:
            operation = s3_operation(request.method, request.path, request.query_string)
            s3_counts[operation] += 1
            sent = time.monotonic()
            # Host is kept: it is signed (SigV4), for the proxy's address.
            headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
            body = await request.read()
            async with session.request(
                request.method,
                args.s3_upstream + request.path_qs,
                headers=headers,
                data=body or None,
                skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
            ) as upstream:
                data = await upstream.read()
                s3_seconds[operation] += time.monotonic() - sent
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in hop}
                if request.method == "HEAD":  # the object's size, with no body
                    out["Content-Length"] = upstream.headers.get("Content-Length", "0")
                    return web.Response(status=upstream.status, headers=out)
                return web.Response(status=upstream.status, body=data, headers=out)

        app = web.Application(client_max_size=256 * 2**20)
        app.router.add_get("/__counts", counts)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"api": api.port, "s3": port}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()
        await session.close()

    asyncio.run(run())
    api.__exit__()
    return 0


def s3_operation(method: str, path: str, query: str) -> str:
    """The S3 API operation of a path-style request (``/bucket/key``)."""
    bucket_only = "/" not in path.strip("/")
    if method == "GET" and bucket_only:
        return "ListObjects" if "list-type" in query or "prefix" in query else "GetBucket"
    names = {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}
    if bucket_only:
        names = {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}
    if method == "POST":
        return "DeleteObjects" if "delete" in query else "PostObject"
    return names.get(method, method)


@dataclass
class Counts:
    """What the proxies counted: requests by (verb, resource) and by S3 operation, and the
    seconds their upstream took to answer, summed."""

    api: Counter[tuple[str, str]]
    api_seconds: Counter[tuple[str, str]]
    store: Counter[str]
    store_seconds: Counter[str]
    api_statuses: Counter[str]  # API answers by status code

    def __sub__(self, before: Counts) -> Counts:
        return Counts(
            self.api - before.api,
            self.api_seconds - before.api_seconds,
            self.store - before.store,
            self.store_seconds - before.store_seconds,
            self.api_statuses - before.api_statuses,
        )


class Proxies:
    """The proxies' child process."""

    def __init__(self, cluster: LocalCluster) -> None:
        pki = cluster.control_plane.pki
        assert cluster.s3 is not None
        command = [
            sys.executable,
            __file__,
            "--serve-proxies",
            "--api-upstream",
            cluster.api_url,
            "--ca",
            str(pki.ca_cert),
            "--cert",
            str(pki.cert("apiserver")),  # signed by the cluster CA for 127.0.0.1
            "--key",
            str(pki.key("apiserver")),
            "--s3-upstream",
            f"http://{cluster.s3.endpoint}",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise Broke("proxies", "the counting proxies did not start")
        ports = json.loads(line)
        self.api_url = f"https://127.0.0.1:{ports['api']}"
        self.s3_endpoint = f"127.0.0.1:{ports['s3']}"

    def counts(self) -> Counts:
        with urllib.request.urlopen(f"http://{self.s3_endpoint}/__counts", timeout=10) as r:
            data = json.loads(r.read())
        return Counts(
            Counter({(v, res): n for v, res, n in data["api"]}),
            Counter({(v, res): n for v, res, n in data["api_seconds"]}),
            Counter(data["s3"]),
            Counter(data["s3_seconds"]),
            Counter(data["api_statuses"]),
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Operator:
    """An operator process (the real one or the floor) via the proxies."""

    def __init__(
        self, label: str, command: list[str], env: dict[str, str], log: Path, metrics: int
    ) -> None:
        self.label = label
        self.metrics_port = metrics
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def operator_env(
    cluster: LocalCluster, proxies: Proxies, workdir: Path, metrics: int
) -> dict[str, str]:
    config = yaml.safe_load(cluster.operator_kubeconfig(workdir / "sa.kubeconfig").read_text())
    config["clusters"][0]["cluster"]["server"] = proxies.api_url
    kubeconfig = workdir / "via-proxy.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    assert cluster.s3 is not None
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MODELOPS_NAMESPACES": NAMESPACE,
        "MODELOPS_S3_ENDPOINT": proxies.s3_endpoint,
        "MODELOPS_BUCKET": BUCKET,
        "MODELOPS_RUNTIME_IMAGE": "modelops-runtime:local",
        "MODELOPS_METRICS_PORT": str(metrics),
        "MODELOPS_HEALTH_PORT": str(free_port()),
        "MODELOPS_LEADER_ELECTION": "false",
        "AWS_ACCESS_KEY_ID": cluster.s3.access_key,
        "AWS_SECRET_ACCESS_KEY": cluster.s3.secret_key,
        **POLL_ENV,
    }


def log_errors(log: Path, offset: int) -> Counter[str]:
    """The exceptions an operator logged after ``offset`` (the last line of each traceback,
    runs of 4 digits or more (names, resource versions) masked so alike ones count together)."""
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if re.match(r"^[\w.]+(Error|Exception): ", line):
            found[re.sub(r"\d{4,}", "N", line)[:160]] += 1
    return found


def other_processes(cluster: LocalCluster, proxies: Proxies) -> dict[str, int]:
    """What else runs for the benchmark, by name: each control-plane component, the store,
    the counting proxies, and this process (the kubelet and its simulated pods)."""
    pids = {name: p.pid for name, p in cluster.control_plane.processes.items()}
    if cluster.s3 is not None and cluster.s3.process is not None:
        pids["S3 server"] = cluster.s3.process.pid
    pids["counting proxies"] = proxies.process.pid
    pids["benchmark (kubelet, simulated pods)"] = os.getpid()
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def reconcile_metrics(port: int) -> dict[str, tuple[float, float, float]]:
    """Per kind: (passes, seconds spent, errors) from the operator's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            kind = s.labels.get("kind")
            if kind is None:
                continue
            row = found.setdefault(kind, [0.0, 0.0, 0.0])
            if s.name == "modelops_reconcile_total":
                row[0] = s.value
            elif s.name == "modelops_reconcile_duration_seconds_sum":
                row[1] = s.value
            elif s.name == "modelops_reconcile_errors_total":
                row[2] = s.value
    return {k: (v[0], v[1], v[2]) for k, v in found.items()}


# -- watching the samples -------------------------------------------------------------------------


@dataclass
class Waiter:
    what: str
    name: str
    done: Callable[[dict[str, Any]], bool]
    since: float  # time.monotonic()


@dataclass
class Observer:
    """Admin watches of the sampled Deployments and DriftMonitors: latencies as they happen."""

    admin: Cluster
    latencies: dict[str, list[float]] = field(default_factory=dict)
    waiters: list[Waiter] = field(default_factory=list)
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fired: dict[str, float] = field(default_factory=dict)  # deployment -> monotonic time
    step_delays: list[float] = field(default_factory=list)
    rollbacks: Counter[str] = field(default_factory=Counter)  # by reason, unprovoked ones
    provoked: set[str] = field(default_factory=set)  # deployments rolled back on purpose
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    synced: int = 0

    def start(self) -> None:
        for kind in ("Deployment", "DriftMonitor"):
            self.tasks.append(asyncio.create_task(self._watch(kind)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _watch(self, kind: str) -> None:
        watch = self.admin.watch(API_VERSION, kind, NAMESPACE, label_selector=SAMPLE_LABEL)
        async with contextlib.aclosing(watch) as events:
            async for event in events:
                if event.type == "LISTED":
                    for item in event.object.get("items") or []:
                        self.objects[(kind, item["metadata"]["name"])] = item
                    self.synced += 1
                    continue
                self._seen(kind, event.object)

    def _seen(self, kind: str, obj: dict[str, Any]) -> None:
        now, wall = time.monotonic(), time.time()
        key = (kind, obj["metadata"]["name"])
        before = (self.objects.get(key) or {}).get("status") or {}
        self.objects[key] = obj
        status = obj.get("status") or {}
        if kind == "DriftMonitor":
            dep = (obj.get("spec") or {}).get("deployment", "")
            drifted = _condition(status, "Drifted") == "True"
            if drifted and _condition(before, "Drifted") != "True" and dep not in self.fired:
                self.fired[dep] = now
        else:
            self._deployment_seen(obj, before, status, now, wall)
        for waiter in list(self.waiters):
            if waiter.name == obj["metadata"]["name"] and waiter.done(obj):
                self.waiters.remove(waiter)
                self.latencies.setdefault(waiter.what, []).append(now - waiter.since)

    def _deployment_seen(
        self,
        obj: dict[str, Any],
        before: dict[str, Any],
        status: dict[str, Any],
        now: float,
        wall: float,
    ) -> None:
        dep = obj["metadata"]["name"]
        step, was = status.get("step"), before.get("step")
        same_canary = status.get("canaryVersion") == before.get("canaryVersion")
        if same_canary and isinstance(step, int) and isinstance(was, int) and step == was + 1:
            started = before.get("stepStartedAt")
            if started:
                self.step_delays.append(wall - (parse_iso(started) + PAUSE_SECONDS))
        if status.get("phase") == "RolledBack" and before.get("phase") != "RolledBack":
            if dep in self.fired:
                self.latencies.setdefault("fires -> rolled back", []).append(now - self.fired[dep])
            if dep not in self.provoked:
                history = status.get("history") or [{}]
                self.rollbacks[str(history[-1].get("reason", "?"))] += 1

    def wait_for(self, what: str, obj_name: str, done: Callable[[dict[str, Any]], bool]) -> None:
        self.waiters.append(Waiter(what, obj_name, done, time.monotonic()))

    def pending(self) -> Counter[str]:
        return Counter(w.what for w in self.waiters)

    def deployment(self, obj_name: str) -> dict[str, Any]:
        return self.objects.get(("Deployment", obj_name)) or {}


def _condition(status: dict[str, Any], type_: str) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("status"))
    return None


# -- one measurement ------------------------------------------------------------------------------


@dataclass
class Measured:
    label: str
    seconds: float
    cpu: float  # cores
    rss_peak: float  # MiB
    counts: Counts
    latencies: dict[str, list[float]]
    missed: Counter[str]
    step_delays: list[float]
    passes: dict[str, tuple[float, float, float]]
    unprovoked: Counter[str]
    simulator: dict[str, Any]
    errors: Counter[str]  # the operator's log: exceptions by message, in the window
    others: dict[str, float]  # CPU cores of the other processes on the machine's 2 cores
    load: tuple[float, float]  # the machine's 1-minute load average at the window's start, end

    @property
    def api(self) -> Counter[tuple[str, str]]:
        return self.counts.api

    @property
    def store(self) -> Counter[str]:
        return self.counts.store

    def api_rate(self, verb: str | None = None) -> float:
        return sum(n for (v, _), n in self.api.items() if verb in (None, v)) / self.seconds

    def store_rate(self, operation: str | None = None) -> float:
        return sum(n for k, n in self.store.items() if operation in (None, k)) / self.seconds

    def api_in_flight(self) -> float:
        """Requests waiting on the API server on average (Little's law: their seconds summed
        over the window's)."""
        return sum(self.counts.api_seconds.values()) / self.seconds

    def store_in_flight(self) -> float:
        return sum(self.counts.store_seconds.values()) / self.seconds

    def api_latency(self, verb: str | None = None) -> float:
        """Mean seconds the API server took per request (of ``verb``); NaN for none."""
        pairs = [
            (n, self.counts.api_seconds[k]) for k, n in self.api.items() if verb in (None, k[0])
        ]
        count = sum(n for n, _ in pairs)
        return sum(t for _, t in pairs) / count if count else math.nan

    def store_latency(self, operation: str | None = None) -> float:
        keys = [k for k in self.store if operation in (None, k)]
        count = sum(self.store[k] for k in keys)
        return sum(self.counts.store_seconds[k] for k in keys) / count if count else math.nan


Action = Callable[[], Coroutine[Any, Any, None]]
"""A sampled change made during a window (it registers what to wait for)."""


async def measure(
    label: str,
    operator: Operator,
    proxies: Proxies,
    observer: Observer,
    cluster: SimulatedCluster,
    admin: Cluster,
    samples: dict[str, list[int]],
    window: float,
    grace: float,
    *,
    real: bool,
) -> Measured:
    """One window: counts and CPU before and after, the sampled perturbations spread over it,
    RSS every second; latencies still pending are awaited ``grace`` seconds more."""
    observer.latencies.clear()
    observer.step_delays.clear()
    observer.rollbacks.clear()
    observer.waiters.clear()
    counts0 = await asyncio.to_thread(proxies.counts)
    cpu0, t0 = cpu_seconds(operator.pid), time.monotonic()
    pids = other_processes(cluster, proxies)
    others0, load0 = {k: cpu_seconds(p) for k, p in pids.items()}, os.getloadavg()[0]
    passes0 = await asyncio.to_thread(reconcile_metrics, operator.metrics_port) if real else {}
    sim0 = dict(vars(cluster.simulator.stats))
    rss = [rss_mib(operator.pid)]
    log_start = operator.log.stat().st_size
    actions: list[tuple[float, Action]] = []
    span = max(1.0, window - 25.0)  # the last actions leave time to be seen within the window

    def spread(items: list[int]) -> list[float]:
        return [2.0 + span * k / max(1, len(items)) for k in range(len(items))]

    for at, i in zip(spread(samples["spec"]), samples["spec"], strict=True):
        actions.append((at, _spec_change(admin, observer, i, label)))
    if real:
        for at, i in zip(spread(samples["promote"]), samples["promote"], strict=True):
            actions.append((at, _promote(admin, observer, i)))
        for i in samples["drift"]:
            actions.append((1.0, _drift(cluster, observer, i)))
    actions.sort(key=lambda a: a[0])
    pending = list(actions)
    started: list[asyncio.Task[None]] = []
    while (elapsed := time.monotonic() - t0) < window:
        while pending and pending[0][0] <= elapsed:
            _, act = pending.pop(0)
            started.append(asyncio.create_task(act()))
        await asyncio.sleep(min(1.0, window - elapsed))
        if not operator.alive():
            raise Broke(f"{label} window", f"the operator exited:\n{operator.tail()}")
        rss.append(rss_mib(operator.pid))
    seconds = time.monotonic() - t0
    cpu = (cpu_seconds(operator.pid) - cpu0) / seconds
    others = {k: (cpu_seconds(p) - others0[k]) / seconds for k, p in pids.items()}
    load = (load0, os.getloadavg()[0])
    counts1 = await asyncio.to_thread(proxies.counts)
    passes1 = await asyncio.to_thread(reconcile_metrics, operator.metrics_port) if real else {}
    sim1 = dict(vars(cluster.simulator.stats))
    for failed in await asyncio.gather(*started, return_exceptions=True):
        if isinstance(failed, Exception):
            say(f"a sample action failed: {failed!r}")
    deadline = time.monotonic() + grace
    # The watch tasks resolve the waiters; this only bounds how long they may take.
    while observer.waiters and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    passes = {
        kind: tuple(b - a for a, b in zip(passes0.get(kind, (0, 0, 0)), v, strict=True))
        for kind, v in passes1.items()
    }
    kept = ("slowest_round", "serving_pods")  # not counters
    sim = {k: v if k in kept else v - sim0.get(k, 0) for k, v in sim1.items()}
    return Measured(
        label=label,
        seconds=seconds,
        cpu=cpu,
        rss_peak=max(rss),
        counts=counts1 - counts0,
        latencies={k: list(v) for k, v in observer.latencies.items()},
        missed=observer.pending(),
        step_delays=list(observer.step_delays),
        passes=passes,  # type: ignore[arg-type]
        unprovoked=Counter(observer.rollbacks),
        simulator=sim,
        others=others,
        errors=log_errors(operator.log, log_start),
        load=load,
    )


def _spec_change(admin: Cluster, observer: Observer, i: int, label: str) -> Action:
    async def act() -> None:
        steps = [dict(s) for s in STEPS]
        # Each run gives the last step's pause a new value: a change of spec, same behaviour
        # within the window (the last step is minutes away).
        steps[-1]["pause"] = f"{PAUSE_SECONDS + 1 + (label == 'no-op floor')}s"
        body = {"spec": {"canary": {"version": "latest", "steps": steps}}}
        patched = await admin.patch(API_VERSION, "Deployment", NAMESPACE, name(i), body)
        generation = int(patched["metadata"]["generation"])

        def done(obj: dict[str, Any]) -> bool:
            return int((obj.get("status") or {}).get("observedGeneration") or 0) >= generation

        observer.wait_for("spec change -> status", name(i), done)

    return act


def _promote(admin: Cluster, observer: Observer, i: int) -> Action:
    async def act() -> None:
        status = observer.deployment(name(i)).get("status") or {}
        canary = status.get("canaryVersion")
        if status.get("phase") != "Progressing" or not canary:
            observer.latencies.setdefault("promote: not progressing, skipped", []).append(0.0)
            return
        observer.provoked.add(name(i))
        body = {"metadata": {"annotations": {ACTION_ANNOTATION: "promote"}}}
        await admin.patch(API_VERSION, "Deployment", NAMESPACE, name(i), body)

        def done(obj: dict[str, Any]) -> bool:
            return bool((obj.get("status") or {}).get("stableVersion") == canary)

        observer.wait_for("promote -> status", name(i), done)

    return act


def _drift(cluster: SimulatedCluster, observer: Observer, i: int) -> Action:
    async def act() -> None:
        status = observer.deployment(name(i)).get("status") or {}
        if status.get("phase") != "Progressing" or not status.get("canaryWeight"):
            observer.latencies.setdefault("drift: no canary in traffic, skipped", []).append(0.0)
            return
        observer.provoked.add(name(i))
        cluster.simulator.drift(NAMESPACE, name(i))

        def fired(obj: dict[str, Any]) -> bool:
            return _condition(obj.get("status") or {}, "Drifted") == "True"

        def rolled_back(obj: dict[str, Any]) -> bool:
            return (obj.get("status") or {}).get("phase") == "RolledBack"

        observer.wait_for("drifted traffic -> monitor fires", f"{name(i)}-drift", fired)
        observer.wait_for("drifted traffic -> rolled back", name(i), rolled_back)

    return act


# -- one size -------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    n: int
    real: Measured | None = None
    floor: Measured | None = None
    setup: dict[str, float] = field(default_factory=dict)
    warm: str = ""
    broke: Broke | None = None


async def wait_until(
    admin: Cluster,
    what: str,
    n: int,
    ok: Callable[[dict[str, Any]], bool],
    timeout: float,
    operator: Operator,
) -> int:
    """Poll the Deployments until ``ok`` holds for all ``n``; returns how many it holds for
    (fewer when ``timeout`` passed first). Progress every 10 s."""
    started = time.monotonic()
    shown = 0.0
    count = 0
    while True:
        items = await admin.list(API_VERSION, "Deployment", NAMESPACE, {})
        count = sum(1 for d in items if ok(d))
        elapsed = time.monotonic() - started
        if count >= n or elapsed > timeout:
            say(f"{what}: {count}/{n} after {elapsed:.0f} s")
            return count
        if not operator.alive():
            raise Broke(what, f"the operator exited:\n{operator.tail()}")
        if elapsed - shown >= 10:
            shown = elapsed
            say(f"  {what}: {count}/{n} ({elapsed:.0f} s)")
        await asyncio.sleep(max(3.0, n / 100))  # the list itself loads the API server


def _stable(d: dict[str, Any]) -> bool:
    return bool((d.get("status") or {}).get("stableVersion"))


def _canary_live(d: dict[str, Any]) -> bool:
    status = d.get("status") or {}
    return status.get("phase") == "Progressing" and bool(status.get("canaryWeight"))


async def prepare(admin: Cluster, cluster: LocalCluster) -> dict[str, Any]:
    """The namespace with the store's Secret, and one real model trained into the store;
    returns the trainer's summary (artifact, profile, signature, metrics)."""
    from support.models import iris_frame, train_version

    assert cluster.s3 is not None
    await admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    # Made by the controller-manager soon after; pods are refused before it exists.
    while await admin.get("v1", "ServiceAccount", NAMESPACE, "default") is None:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "stringData": {
            "AWS_ACCESS_KEY_ID": cluster.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": cluster.s3.secret_key,
        },
    }
    await admin.create(secret)
    store = cluster.store()
    buffer = io.StringIO()
    iris_frame().to_csv(buffer, index=False)
    store.put(Location(BUCKET, "datasets/iris.csv"), buffer.getvalue().encode())
    summary: dict[str, Any] = await asyncio.to_thread(train_version, store, 1)
    return summary


async def create_objects(
    admin: Cluster, summary: dict[str, Any], n: int, sample: int
) -> dict[str, str]:
    """N finished TrainingRuns, N v1 ModelVersions, N Deployments, N DriftMonitors; returns
    the runs' uids by name (their v2 ModelVersions carry them, as registered versions do)."""
    runs = await create_all(admin, "TrainingRuns", [training_run(i) for i in range(n)])
    await bounded(
        admin.patch(
            API_VERSION, "TrainingRun", NAMESPACE, f"{name(i)}-run2", finished(i),
            subresource="status",
        )
        for i in range(n)
    )  # fmt: skip
    await create_all(admin, "ModelVersions (v1)", [model_version(summary, i, 1) for i in range(n)])
    await create_all(admin, "Deployments", [deployment(i, sample) for i in range(n)])
    await create_all(admin, "DriftMonitors", [drift_monitor(i, sample) for i in range(n)])
    return {r["metadata"]["name"]: r["metadata"]["uid"] for r in runs if r}


async def warm_up(
    admin: Cluster,
    operator: Operator,
    summary: dict[str, Any],
    uids: dict[str, str],
    args: argparse.Namespace,
    result: SizeResult,
) -> Broke | None:
    """Every Deployment serving v1, then the v2s and every canary taking traffic, each wait
    bounded by ``--warmup``; what was reached goes to ``result``. Returns why the size is
    broken when the operator reconciled no Deployment at all (the canaries are then not
    waited for)."""
    n = result.n
    t = time.monotonic()
    stable = await wait_until(admin, "stable v1", n, _stable, args.warmup, operator)
    result.setup["operator: every stable v1 (s)"] = time.monotonic() - t
    await create_all(
        admin,
        "ModelVersions (v2, registered by the runs)",
        [model_version(summary, i, 2, uids.get(f"{name(i)}-run2")) for i in range(n)],
    )
    live, stuck = 0, None
    if stable:
        t = time.monotonic()
        live = await wait_until(admin, "canary in traffic", n, _canary_live, args.warmup, operator)
        result.setup["operator: every canary in traffic (s)"] = time.monotonic() - t
    else:
        say("no Deployment reconciled at all: the canaries' warm-up is skipped")
        errors = log_errors(operator.log, 0).most_common(3)
        stuck = Broke(
            "warm-up",
            f"the operator reconciled none of {n} Deployments in {args.warmup:.0f} s "
            "(both windows below are of that state); its log's commonest errors: "
            + "; ".join(f"{count} x {message}" for message, count in errors),
        )
    if live < n:
        result.warm = (
            f"not steady: {stable}/{n} served v1 and {live}/{n} canaries took traffic "
            f"within the {args.warmup:.0f} s warm-up bounds"
        )
    return stuck


async def one_size(n: int, args: argparse.Namespace, workdir: Path, result: SizeResult) -> None:
    """Set up N of everything, then measure the real operator and the floor (see the module
    docstring); a failure is recorded in ``result.broke`` with the phase it happened in."""
    phase = "control plane"
    say(f"N = {n}: starting the control plane, S3 and the no-process kubelet")
    cluster = SimulatedCluster(
        workdir / "cluster",
        requests_per_second=args.rps,
        sketch_interval=args.sketch_interval,
        max_pods=n + 50,
    )
    proxies: Proxies | None = None
    operator: Operator | None = None
    observer: Observer | None = None
    admin: Cluster | None = None
    try:
        t = time.monotonic()
        await asyncio.to_thread(cluster.start)
        result.setup["cluster up (s)"] = time.monotonic() - t
        admin = Cluster(cluster.connection())
        assert cluster.s3 is not None

        phase = "namespace and model"
        summary = await prepare(admin, cluster)
        phase = "creating objects"
        sample = max(1, min(args.samples, n // len(ROLES)))
        uids = await create_objects(admin, summary, n, sample)
        samples = {r: [i for i in range(n) if role_of(i, sample) == r] for r in ROLES}

        phase = "proxies"
        proxies = Proxies(cluster)
        # The operator writes its store endpoint (the proxy) into the serving pods' env; the
        # pods' own writes go to the store directly, as in a cluster: only the operator's
        # requests are counted.
        cluster.alias(proxies.s3_endpoint, cluster.s3.endpoint)
        observer = Observer(admin)
        observer.start()

        phase = "real operator warm-up"
        metrics = free_port()
        env = operator_env(cluster, proxies, workdir, metrics)
        command = [sys.executable, "-m", "modelops", "run"]
        operator = Operator("modelops", command, env, workdir / "operator.log", metrics)
        say(f"operator started (pid {operator.pid}); waiting for every Deployment to serve v1")
        stuck = await warm_up(admin, operator, summary, uids, args, result)

        phase = "real operator window"
        say(f"measuring the operator for {args.window:.0f} s")
        result.real = await measure(
            "modelops", operator, proxies, observer, cluster, admin, samples, args.window,
            args.grace, real=True,
        )  # fmt: skip
        if args.profile:
            await asyncio.to_thread(py_spy, operator.pid, workdir, args.profile)
        operator.stop()
        operator = None

        phase = "no-op floor"
        metrics = free_port()
        env = operator_env(cluster, proxies, workdir, metrics)
        command = [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", NAMESPACE]
        command.append(str(NOOP))
        operator = Operator("no-op floor", command, env, workdir / "noop.log", metrics)
        say(f"no-op floor started (pid {operator.pid}); settling {args.settle:.0f} s")
        await asyncio.sleep(args.settle)
        if not operator.alive():
            raise Broke(phase, f"the no-op operator exited:\n{operator.tail()}")
        say(f"measuring the no-op floor for {args.window:.0f} s")
        result.floor = await measure(
            "no-op floor", operator, proxies, observer, cluster, admin, samples, args.window,
            args.grace, real=False,
        )  # fmt: skip
        if stuck is not None:
            raise stuck
    except Broke as exc:
        result.broke = exc
    except (ApiError, OSError, RuntimeError, TimeoutError, ValueError) as exc:
        result.broke = Broke(phase, f"{type(exc).__name__}: {exc}")
    finally:
        say(f"N = {n}: stopping")
        if observer is not None:
            await observer.stop()
        if operator is not None:
            operator.stop()
        if proxies is not None:
            proxies.stop()
        if admin is not None:
            await admin.close()
        await asyncio.to_thread(cluster.stop)


def py_spy(pid: int, workdir: Path, seconds: int) -> None:
    """A py-spy profile of the operator (``--profile S``), when py-spy is installed."""
    out = workdir / f"operator-{pid}.txt"
    command = [PY_SPY, "record", "--nonblocking", "-d", str(seconds), "-p", str(pid)]
    try:
        done = subprocess.run(
            [*command, "-f", "raw", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"py-spy not run: {exc}")
        return
    if done.returncode != 0:
        say(f"py-spy failed: {done.stderr.strip()[-300:]}")
        return
    say(f"py-spy profile (collapsed stacks) in {out}; top frames:")
    for line in top_frames(out.read_text()):
        print(f"    {line}", flush=True)


def top_frames(collapsed: str, count: int = 12) -> list[str]:
    """Where the samples are: the operator's own functions by inclusive share (time in them
    and what they call), then the innermost frames by exclusive share."""
    total = 0
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [re.sub(r" \(.*?/site-packages/", " (", f) for f in stack.split(";")]
        for frame in set(frames):
            if "(modelops/" in frame and not re.search(r"(cli|main|__main__)\.py", frame):
                inclusive[frame] += n
        leaf[frames[-1]] += n
    if not total:
        return []
    lines = ["modelops functions (inclusive):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(count)]
    lines += ["innermost frames (exclusive):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(count)]
    return lines


# -- printing -------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def latency_cell(m: Measured | None, what: str) -> str:
    if m is None:
        return "-"
    values = m.step_delays if what == "canary step start delay" else m.latencies.get(what, [])
    missed = m.missed.get(what, 0)
    if not values and not missed:
        return "n/a"
    cell = f"{fmt(quantile(values, 0.5))} / {fmt(quantile(values, 0.99))}  (n={len(values)}"
    return cell + (f", {missed} unseen)" if missed else ")")


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "-"
    return f"{a / b:.1f}x"


LATENCIES = (
    "spec change -> status",
    "promote -> status",
    "drifted traffic -> monitor fires",
    "fires -> rolled back",
    "drifted traffic -> rolled back",
    "canary step start delay",
)


def print_size(r: SizeResult, args: argparse.Namespace) -> None:
    print(
        f"\n=== N = {r.n}: {r.n} each of TrainingRun, Deployment, DriftMonitor; "
        f"{2 * r.n} ModelVersions ==="
    )
    for key, value in r.setup.items():
        print(f"  {key}: {value:.0f}")
    if r.warm:
        print(f"  warm-up: {r.warm}")
    if r.broke is not None:
        print(f"  BROKE during {r.broke.phase}: {r.broke}")
    a, b = r.real, r.floor
    if a is None:
        return
    rows: list[tuple[str, str, str, str]] = []

    def num(label: str, get: Callable[[Measured], float], digits: int = 1) -> None:
        va = get(a)
        vb = get(b) if b else math.nan
        rows.append((label, fmt(va, digits), fmt(vb, digits), ratio(va, vb)))

    num("operator CPU (cores)", lambda m: m.cpu, 2)
    num("operator RSS peak (MiB)", lambda m: m.rss_peak, 0)
    num("API requests/s", lambda m: m.api_rate(), 1)
    verbs = sorted({v for m in (a, b) if m for (v, _) in m.api})
    for verb in verbs:
        num(f"  {verb}", partial(Measured.api_rate, verb=verb), 1)
    num("API server time per request (ms)", lambda m: 1000 * m.api_latency(), 0)
    num("API requests in flight (mean)", lambda m: m.api_in_flight(), 1)
    num("store requests/s", lambda m: m.store_rate(), 1)
    for op in sorted(a.store):
        num(f"  {op}", partial(Measured.store_rate, operation=op), 1)
    num("store time per request (ms)", lambda m: 1000 * m.store_latency(), 0)
    num("store requests in flight (mean)", lambda m: m.store_in_flight(), 1)
    for what in LATENCIES:
        rows.append((f"{what} p50 / p99 (s)", latency_cell(a, what), latency_cell(b, what), ""))
    width = max(len(row[0]) for row in rows)
    wa = max(len("modelops"), *(len(row[1]) for row in rows))
    wb = max(len("no-op floor"), *(len(row[2]) for row in rows))
    loads = "; ".join(
        f"{m.label} {m.load[0]:.1f} -> {m.load[1]:.1f}" for m in (a, b) if m is not None
    )
    print(f"  window {a.seconds:.0f} s each; machine load average (1 min): {loads}")
    print(
        "  CPU of the rest (cores, modelops window / floor window): "
        + ", ".join(
            f"{k} {v:.2f} / {b.others.get(k, math.nan) if b else math.nan:.2f}"
            for k, v in a.others.items()
        )
        + "\n"
    )
    print(f"  {'':{width}}  {'modelops':>{wa}}  {'no-op floor':>{wb}}  ratio")
    for label, va, vb, rr in rows:
        print(f"  {label:{width}}  {va:>{wa}}  {vb:>{wb}}  {rr}")
    print("\n  busiest API requests of the operator (per second; API server time per request):")
    for (verb, res), count in a.api.most_common(10):
        mean = a.counts.api_seconds[(verb, res)] / count
        print(f"    {count / a.seconds:7.1f}  {1000 * mean:6.0f} ms  {verb} {res}")
    if a.passes:
        print("  the operator's passes (its modelops_reconcile_* metrics):")
        for kind, (passes, spent, errors) in sorted(a.passes.items()):
            mean = spent / passes if passes else math.nan
            print(
                f"    {kind:13} {passes / a.seconds:6.1f} passes/s, mean {fmt(mean * 1000, 0)} ms"
                f", {errors / a.seconds:.2f} errors/s"
            )
    for m in (a, b):
        if m is None:
            continue
        answers = ", ".join(
            f"{code}: {n / m.seconds:.1f}/s" for code, n in sorted(m.counts.api_statuses.items())
        )
        print(f"  {m.label}: API answers by status {answers}")
        for message, count in m.errors.most_common(3):
            print(f"    logged {count} times in the window: {message}")
    if a.unprovoked:
        print(f"  rollbacks nobody provoked (sampled Deployments): {dict(a.unprovoked)}")
    skipped = {k: len(v) for k, v in a.latencies.items() if "skipped" in k}
    if skipped:
        print(f"  sample actions skipped: {skipped}")
    sim = a.simulator
    print(
        f"  simulated pods: {sim.get('serving_pods')} serving; in the window "
        f"{sim.get('windows', 0) / a.seconds:.0f} windows/s and "
        f"{sim.get('reports', 0) / a.seconds:.0f} reports/s written, "
        f"{sim.get('errors', 0)} write errors, {sim.get('late_rounds', 0)} of "
        f"{sim.get('rounds', 0)} window rounds late (slowest {sim.get('slowest_round', 0):.1f} s)"
    )


def print_curve(results: list[SizeResult]) -> None:
    measured = [r for r in results if r.real is not None]
    if not measured:
        return
    print("\n=== scaling: modelops (no-op floor) ===")
    header = ("N", "CPU cores", "RSS MiB", "API req/s", "store req/s", "spec p99 s", "step p99 s")
    print("  " + "  ".join(f"{h:>16}" for h in header))
    for r in measured:
        a, b = r.real, r.floor
        assert a is not None

        def pair(
            get: Callable[[Measured], float], digits: int = 1, a: Measured = a, b: Any = b
        ) -> str:
            return f"{fmt(get(a), digits)} ({fmt(get(b), digits) if b else '-'})"

        cells = [
            str(r.n),
            pair(lambda m: m.cpu, 2),
            pair(lambda m: m.rss_peak, 0),
            pair(lambda m: m.api_rate()),
            pair(lambda m: m.store_rate()),
            pair(lambda m: quantile(m.latencies.get("spec change -> status", []), 0.99)),
            fmt(quantile(a.step_delays, 0.99)),
        ]
        print("  " + "  ".join(f"{c:>16}" for c in cells))


def print_targets(results: list[SizeResult]) -> None:
    done = [r for r in results if r.real is not None]
    if not done:
        return
    r = done[-1]
    a, b = r.real, r.floor
    assert a is not None
    print(f"\n=== issue 15's targets (set for N = 1000), at N = {r.n} ===")
    rows = [
        ("operator CPU <= 1 core", fmt(a.cpu, 2)),
        ("operator RSS <= 500 MiB", fmt(a.rss_peak, 0)),
        (
            "p99 spec change -> status <= 2 s",
            fmt(quantile(a.latencies.get("spec change -> status", []), 0.99)),
        ),
        (
            "API requests/s <= 1.5x the floor's",
            ratio(a.api_rate(), b.api_rate()) if b else "-",
        ),
        ("canary step start p99 <= 1 s late", fmt(quantile(a.step_delays, 0.99))),
        (
            "rollback p99 <= 1 s after the monitor fires",
            fmt(quantile(a.latencies.get("fires -> rolled back", []), 0.99)),
        ),
    ]
    for target, value in rows:
        print(f"  {target:45} measured {value}")


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,500,1000", help="comma-separated N")
    parser.add_argument("--quick", action="store_true", help="N = 100 only, a 30 s window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=300.0, help="bound of each warm-up (s)")
    parser.add_argument("--settle", type=float, default=15.0, help="no-op floor's start (s)")
    parser.add_argument("--grace", type=float, default=30.0, help="extra wait for latencies")
    parser.add_argument("--samples", type=int, default=20, help="Deployments per sample role")
    parser.add_argument("--rps", type=float, default=100.0, help="requests/s per serving pod")
    parser.add_argument("--sketch-interval", type=float, default=5.0)
    parser.add_argument("--profile", type=int, default=0, help="py-spy the operator S seconds")
    parser.add_argument("--keep", type=Path, default=None, help="keep state and logs here")
    parser.add_argument("--serve-proxies", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--api-upstream", "--ca", "--cert", "--key", "--s3-upstream"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxies:
        return serve_proxies(args)
    if args.quick:
        args.sizes, args.window = "100", min(args.window, 30.0)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: list[SizeResult] = []
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            base = args.keep.resolve()
            base.mkdir(parents=True, exist_ok=True)
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-op-")))
        for n in sizes:
            result = SizeResult(n)
            results.append(result)
            workdir = base / f"n{n}"
            workdir.mkdir(parents=True, exist_ok=True)
            asyncio.run(one_size(n, args, workdir, result))
            print_size(result, args)
            if result.broke is not None:
                rest = [s for s in sizes if s > n]
                if rest:
                    print(f"\n  sizes {rest} not run: N = {n} broke (above)")
                break
    print_curve(results)
    print_targets(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
