"""Benchmark of the model server: ``python tests/bench/bench_serve.py [--duration 8]``.

Trains LogisticRegression and RandomForest(50 trees) with the real trainer on a seeded
20-feature synthetic dataset (sklearn ``make_classification``) stored in a real S3 server,
starts ``python -m modelops.serving`` (subprocess, loopback, routing file, default worker
count), and drives it with ``wrk`` (installed with apt-get when missing) for 1-row and 32-row
requests at concurrency 1 and 16. Prints req/s, p50 and p99 next to the in-process
JSON -> predict -> JSON time of the same model and the ratios to the targets, then measures
how long a rollback (canary weight -> 0) takes to reach 100% stable under steady traffic: with
the table in a ConfigMap the server watches on a real control plane (``bin/controlplane``:
etcd + kube-apiserver with RBAC, as in a cluster; the PATCH included, the server logged in as
its ServiceAccount with the serving Role) and with the routing file (polled).
``--rollback-only`` skips the load runs.

The same run also compares, each side by side (alternated ``--pairs`` times, LR 1-row, c16):

- the full server with a no-op handler on the same HTTP stack (the server process answers
  ``POST /bench/noop`` with a constant JSON before its dispatch: ``bench_http_stack.py``
  starts it), and prints full / no-op;
- gRPC with REST on the same server: ModelInfer on its ``--grpc-port``, driven by h2load
  (Debian's nghttp2-client, installed with apt-get when missing; the calls' gRPC statuses are
  checked on the server's counters) and by ghz (built once with ``go install`` into
  ``${MODELOPS_CACHE:-~/.cache/modelops}/ghz-<version>``; the service described by the
  descriptors tritonclient ships compiled), or, if ghz cannot be built, by a multi-process
  tritonclient loop (said so in the output); and the server's own gRPC transport against
  grpcio's ``grpc.aio`` server with the same servicer, in a second server process;
- MLServer serving the same model (joblib) with adaptive batching and ``--workers`` parallel
  workers, from its own venv ``${MODELOPS_CACHE:-~/.cache/modelops}/mlserver-venv`` (created
  with ``python -m venv`` and pip on first use), for each of ``--mlserver-batching``; prints
  our / MLServer at its best setting. What cannot be installed or started is said, not faked.

``--parts`` picks what to run (cells, noop, grpc, mlserver, rollback).

Numbers are printed, never asserted: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pandas as pd
import skops.io as sio
from sklearn.datasets import make_classification

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

from bench_http_stack import NOOP_PATH, idle_estimate  # noqa: E402

from modelops.local.controlplane import ControlPlane  # noqa: E402
from modelops.local.s3server import S3Server  # noqa: E402
from modelops.storage import Location  # noqa: E402
from modelops.training.estimators import trusted_types  # noqa: E402
from unit.serving.test_serving_support import (  # noqa: E402
    BUCKET,
    ServerProcess,
    free_port,
    routing_table,
    train_version,
    watched_server,
    write_json,
)

FEATURES = 20
MODELS = {
    "logreg": ("LogisticRegression", {"max_iter": 1000}),
    "forest": ("RandomForestClassifier", {"n_estimators": 50}),
}
PARTS = ("cells", "noop", "grpc", "mlserver", "rollback")
# (model, rows, concurrency) -> (min req/s, max p99 ms); c1 cells: p50 vs the floor.
TARGETS: dict[tuple[str, int, int], tuple[float, float | None]] = {
    ("logreg", 1, 16): (12_000, 5.0),
    ("logreg", 32, 16): (8_000, None),
    ("forest", 1, 16): (4_000, 20.0),
}

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY")):read("*a")
done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format(
    "BENCH {\\"requests\\": %d, \\"seconds\\": %f, \\"p50\\": %f, \\"p99\\": %f, "
    .. "\\"errors\\": %d, \\"non2xx\\": %d}\\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    non2xx))
end
"""


def reference_server(model_path: str, port: int, workers: int) -> None:
    """The yardstick: a bare aiohttp server with adaptive micro-batching and plain
    ``estimator.predict``, in ``workers`` processes sharing the port (no validation, routing,
    metrics or sketches). Run on the same machine in the same minutes, it tells how much of a
    slow number is the machine and how much is the model server."""

    def worker() -> None:
        import uvloop
        from aiohttp import web

        data = Path(model_path).read_bytes()
        model = sio.loads(data, trusted=trusted_types(data))
        pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []

        def flush() -> None:
            batch = pending[:]
            pending.clear()
            y = model.predict(np.concatenate([x for x, _ in batch]))
            i = 0
            for x, future in batch:
                future.set_result(y[i : i + len(x)])
                i += len(x)

        async def infer(request: web.Request) -> web.Response:
            tensor = orjson.loads(await request.read())["inputs"][0]
            x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
            loop = asyncio.get_running_loop()
            future: asyncio.Future[np.ndarray] = loop.create_future()
            if not pending:
                loop.call_soon(flush)
            pending.append((x, future))
            y = await future
            out = {"name": "predict", "datatype": "INT64", "shape": [len(y)], "data": y.tolist()}
            return web.Response(
                body=orjson.dumps({"outputs": [out]}), content_type="application/json"
            )

        app = web.Application()
        app.router.add_post("/v2/models/ref/infer", infer)
        uvloop.install()
        web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)

    import multiprocessing

    fork = multiprocessing.get_context("fork")  # the worker is a closure: fork, not spawn
    procs = [fork.Process(target=worker) for _ in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()


class Reference:
    """The reference server as a subprocess group (stopped with it)."""

    def __init__(self, model_path: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v2/models/ref/infer"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--reference-server", str(model_path), str(self.port),
             str(workers)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(1.0)  # every worker listening
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the reference server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: it and its workers
            self.process.wait(timeout=20)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: apt-get install -y wrk", flush=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("could not install wrk")
    return found


def dataset() -> pd.DataFrame:
    X, y = make_classification(
        n_samples=5000, n_features=FEATURES, n_informative=10, n_redundant=4, random_state=7
    )
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(FEATURES)])
    frame["label"] = y
    return frame


def body(rows: np.ndarray) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(rows.shape),
                    "datatype": "FP64",
                    "data": rows.ravel().tolist(),
                }
            ]
        }
    )


def floor_ms(model: Any, payload: bytes, repeat: int) -> float:
    """In-process JSON -> numpy -> estimator.predict -> JSON, median of ``repeat`` runs (ms)."""

    def once() -> bytes:
        doc = orjson.loads(payload)
        t = doc["inputs"][0]
        X = np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])
        labels = model.predict(X)
        return orjson.dumps(
            {
                "model_name": "m",
                "outputs": [
                    {"name": "predict", "datatype": "INT64", "shape": [len(labels)],
                     "data": labels.tolist()}
                ]
            }
        )  # fmt: skip

    for _ in range(20):
        once()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def process_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and its child processes (a server and its workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if root in (pid, ppid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_wrk(
    wrk: str, url: str, payload: bytes, connections: int, seconds: float, server_pid: int = 0
) -> dict[str, Any]:
    """One wrk run; with ``server_pid``, also the CPU time per request of server and wrk."""
    server_before = process_cpu(server_pid) if server_pid else 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_before = children.ru_utime + children.ru_stime
    with tempfile.TemporaryDirectory() as tmp:
        script, body_file = Path(tmp, "post.lua"), Path(tmp, "body.json")
        script.write_text(WRK_SCRIPT)
        body_file.write_bytes(payload)
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "-s",
                str(script),
                url,
            ],
            env={**os.environ, "BENCH_BODY": str(body_file)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    result: dict[str, Any] = json.loads(line[6:])
    result["rps"] = result["requests"] / result["seconds"]
    if server_pid:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = children.ru_utime + children.ru_stime - wrk_before
        server_cpu = process_cpu(server_pid) - server_before
        result["server_us"] = server_cpu / result["requests"] * 1e6
        result["wrk_us"] = wrk_cpu / result["requests"] * 1e6
    return result


Publish = Callable[[dict[str, Any]], Awaitable[None]]


def file_publisher(routing_file: Path) -> Publish:
    async def publish(table: dict[str, Any]) -> None:
        write_json(routing_file, table)

    return publish


def configmap_publisher(control_plane: ControlPlane, namespace: str, name: str) -> Publish:
    """What the operator does on a rollback: one PATCH of the routing ConfigMap (as admin)."""
    url = f"{control_plane.url}/api/v1/namespaces/{namespace}/configmaps/{name}"
    tls = control_plane.ssl_context("admin")

    async def publish(table: dict[str, Any]) -> None:
        patch = {"data": {"routing.json": json.dumps(table)}}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as s,
            s.patch(url, json=patch, headers=headers) as r,
        ):
            assert r.status == 200, await r.text()

    return publish


async def rollback_seconds(url: str, publish: Publish, table: dict[str, Any], canary: str) -> float:
    """Canary weight -> 0 in the routing table, under steady traffic (4 clients); seconds from
    the decision (before the table is published) to the last answer from the canary."""
    rolled = json.loads(json.dumps(table))
    for v in rolled["versions"]:
        v["weight"] = 0 if v["name"] == canary else 100
    payload = body(np.zeros((1, FEATURES)))
    answers: list[tuple[float, str]] = []
    stop, both = asyncio.Event(), asyncio.Event()
    names = {v["name"] for v in table["versions"]}
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            while not stop.is_set():
                async with session.post(url, data=payload) as r:
                    version = str((await r.json())["model_version"])
                answers.append((time.monotonic(), version))
                if {v for _, v in answers[-40:]} == names:
                    both.set()

        await publish(table)
        clients = [asyncio.create_task(client()) for _ in range(4)]
        try:
            await both.wait()  # both versions answering again
            start = time.monotonic()
            await publish(rolled)
            while True:
                await asyncio.sleep(0.2)
                last = max((t for t, v in answers if v == canary and t >= start), default=start)
                if time.monotonic() - last > 1.0:
                    return last - start
        finally:
            stop.set()
            await asyncio.gather(*clients)


def report(cells: list[dict[str, Any]], floors: dict[tuple[str, int], float], workers: int) -> None:
    cpus = os.cpu_count() or 1
    print(
        f"\nmodel server: {workers} workers; wrk -t1 on the same {cpus}-CPU machine.\n"
        "cpu us/req: CPU time of the server processes (+ of wrk) per request. idle est.: "
        f"{cpus} CPUs / (server + wrk CPU per request), the rate on an otherwise idle machine.\n"
        "ref: a bare aiohttp server with micro-batching and plain predict(), same machine, same "
        "minutes (see --no-reference)."
    )
    head = (
        f"{'model':6} {'rows':>4} {'c':>2} {'req/s':>7} {'p50 ms':>6} {'p99 ms':>6} "
        f"{'floor ms':>8} {'cpu us/req':>12} {'idle est.':>9} {'ref req/s':>9} {'ref est.':>8}"
        "  target: measured (idle est.)"
    )
    print(head)
    print("-" * (len(head) + 20))
    for c in cells:
        key = (c["model"], c["rows"], c["conc"])
        floor = floors[(c["model"], c["rows"])]
        estimate = cpus / ((c["server_us"] + c["wrk_us"]) / 1e6)
        note = ""
        if key in TARGETS:
            rps_min, p99_max = TARGETS[key]
            note = f">= {rps_min:,.0f} req/s: {c['rps'] / rps_min:.2f} ({estimate / rps_min:.2f})"
            if p99_max is not None:
                note += f"; p99 <= {p99_max:g} ms: {c['p99'] / p99_max:.2f} of it"
        elif c["conc"] == 1:
            budget = 1.3 * floor + 0.5
            note = f"p50 <= 1.3 floor + 0.5 = {budget:.2f} ms: {c['p50'] / budget:.2f} of it"
        if c["errors"] or c["non2xx"]:
            note += f"  ERRORS {c['errors']} non-2xx {c['non2xx']}"
        ref = c.get("ref")
        if ref:
            ref_estimate = cpus / ((ref["server_us"] + ref["wrk_us"]) / 1e6)
            ref_cols = f"{ref['rps']:>9,.0f} {ref_estimate:>8,.0f}"
        else:
            ref_cols = f"{'-':>9} {'-':>8}"
        cpu = f"{c['server_us']:.0f}+{c['wrk_us']:.0f}"
        print(
            f"{c['model']:6} {c['rows']:>4} {c['conc']:>2} {c['rps']:>7,.0f} {c['p50']:>6.2f} "
            f"{c['p99']:>6.2f} {floor:>8.3f} {cpu:>12} {estimate:>9,.0f} {ref_cols}  {note}"
        )


# -- comparisons: the no-op handler, gRPC, MLServer -------------------------------------------


class Unavailable(Exception):
    """Why a comparison cannot run on this machine (printed; the run goes on without it)."""


def cache_dir() -> Path:
    """``${MODELOPS_CACHE:-~/.cache/modelops}``, where built tools are kept between runs."""
    return Path(os.environ.get("MODELOPS_CACHE") or Path.home() / ".cache" / "modelops")


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _median(runs: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(r[field] for r in runs))


def _failed(runs: list[dict[str, Any]]) -> str:
    bad = sum(r["errors"] + r["non2xx"] for r in runs)
    if not bad:
        return ""
    kinds = {k for r in runs for k in r.get("error_kinds", {})}
    shown = f" ({'; '.join(sorted(kinds))[:300]})" if kinds else ""
    return f"  ERRORS: {bad} failed requests{shown}: the numbers above are not valid"


def noop_comparison(
    wrk: str, server_url: str, server_pid: int, payload: bytes, args: argparse.Namespace
) -> None:
    """The full server against the no-op handler of the same process (same HTTP layer, same
    workers; ``POST /bench/noop`` answered before the server's dispatch, see
    ``bench_http_stack.with_noop``), LR 1-row c16, alternated ``--pairs`` times."""
    full_url = f"{server_url}/v2/models/bench/infer"
    noop_url = server_url + NOOP_PATH
    full, noop = [], []
    for _ in range(args.pairs):
        full.append(run_wrk(wrk, full_url, payload, 16, args.duration, server_pid))
        noop.append(run_wrk(wrk, noop_url, payload, 16, args.duration, server_pid))
    ratios = [f["rps"] / n["rps"] for f, n in zip(full, noop, strict=True)]
    ratio = statistics.median(ratios)
    idle = statistics.median(
        idle_estimate(f) / idle_estimate(n) for f, n in zip(full, noop, strict=True)
    )
    print(
        f"\nfull server vs a no-op handler on the same HTTP stack (the hand-written layer, "
        f"{args.workers} workers), same 1-row body, c16, {args.pairs} alternated pairs (medians):"
    )
    for what, runs in (("full server (LR 1-row)", full), ("no-op handler", noop)):
        print(
            f"  {what:24} {_median(runs, 'rps'):>8,.0f} req/s  p99 {_median(runs, 'p99'):6.2f} ms"
            f"  server CPU {_median(runs, 'server_us'):5.0f} us/req{_failed(runs)}"
        )
    print(
        f"  full / no-op: x{ratio:.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)}); "
        f"idle est. x{idle:.3f}; target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'}"
    )


# gRPC: ghz (built from its module with the Go toolchain, cached) on the protocol's service,
# described by the descriptors tritonclient ships compiled (it ships no .proto files).
GHZ_VERSION = "v0.121.0"
GRPC_METHOD = "inference.GRPCInferenceService.ModelInfer"


def ensure_ghz() -> Path:
    """The cached ghz binary, built on first use (``go install ...@GHZ_VERSION``); raises
    :class:`Unavailable` with the reason when it cannot be built."""
    target = cache_dir() / f"ghz-{GHZ_VERSION}" / "ghz"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise Unavailable("no Go toolchain (go) on PATH to build ghz")
    print(f"building ghz {GHZ_VERSION} into {target.parent} (first use) ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [go, "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
            env={**os.environ, "GOBIN": str(target.parent)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable("building ghz took over 30 minutes") from None
    if proc.returncode != 0 or not target.exists():
        raise Unavailable(f"go install ghz failed: {_tail(proc.stderr)}")
    return target


def triton_protoset(path: Path) -> Path:
    """A FileDescriptorSet of ``grpc_service.proto`` and its dependency ``model_config.proto``,
    from the descriptors compiled into ``tritonclient.grpc`` (what ``--protoset`` reads)."""
    from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]
    from tritonclient.grpc import model_config_pb2, service_pb2

    files = descriptor_pb2.FileDescriptorSet()
    for module in (model_config_pb2, service_pb2):  # dependencies first
        module.DESCRIPTOR.CopyToProto(files.file.add())
    path.write_bytes(files.SerializeToString())
    return path


def infer_request(rows: np.ndarray) -> dict[str, Any]:
    """A ModelInferRequest (protobuf JSON) for ``rows`` as one FP64 tensor, its data in
    ``raw_input_contents`` (little-endian), as tritonclient sends it by default."""
    raw = np.ascontiguousarray(rows, dtype="<f8").tobytes()
    return {
        "model_name": "bench",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape)}],
        "raw_input_contents": [base64.b64encode(raw).decode()],
    }


def _client_cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def run_ghz(
    ghz: Path,
    protoset: Path,
    port: int,
    rows: np.ndarray,
    concurrency: int,
    seconds: float,
    server_pid: int,
) -> dict[str, Any]:
    """One ghz run (``concurrency`` workers on as many connections, so both server workers
    get some, as wrk's connections do); the same fields as :func:`run_wrk`."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "request.json")
        data.write_text(json.dumps(infer_request(rows)))
        server_before, client_before = process_cpu(server_pid), _client_cpu()
        proc = subprocess.run(
            [
                str(ghz), "--insecure", "--protoset", str(protoset), "--call", GRPC_METHOD,
                "-D", str(data), "-c", str(concurrency), "--connections", str(concurrency),
                "-z", f"{max(1, round(seconds))}s", "--duration-stop", "ignore", "-O", "json",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        server_cpu, client_cpu = (
            process_cpu(server_pid) - server_before,
            _client_cpu() - client_before,
        )
    if proc.returncode != 0 and not proc.stdout.strip():
        raise Unavailable(f"ghz failed: {_tail(proc.stderr)}")
    out = json.loads(proc.stdout)
    count = int(out["count"])
    ok = int((out.get("statusCodeDistribution") or {}).get("OK", 0))
    latency = {int(x["percentage"]): x["latency"] / 1e6 for x in out["latencyDistribution"] or []}
    return {
        "requests": ok,
        "seconds": out["total"] / 1e9,
        "rps": ok / (out["total"] / 1e9),
        "p50": latency.get(50, float("nan")),
        "p99": latency.get(99, float("nan")),
        "errors": count - ok,
        "error_kinds": out.get("errorDistribution") or {},
        "non2xx": 0,
        "server_us": server_cpu / max(ok, 1) * 1e6,
        "wrk_us": client_cpu / max(ok, 1) * 1e6,
    }


def grpc_load_worker(port: int, threads: int, seconds: float) -> None:
    """The fallback load generator's worker process: ``threads`` tritonclient gRPC clients in
    a closed loop for ``seconds``; prints its latencies (ms) and error count as JSON."""
    import threading

    import tritonclient.grpc as triton

    rows = np.zeros((1, FEATURES))
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds

    def loop() -> None:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                client.infer("bench", [tensor])
            except Exception:
                errors[0] += 1
                continue
            latencies.append((time.perf_counter() - start) * 1e3)
        client.close()

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"latencies": latencies, "errors": errors[0]}))


def _load_run(
    latencies: list[float], seconds: float, server_cpu: float, client_cpu: float
) -> dict[str, Any]:
    """The fields of :func:`run_wrk` from a load run's sorted latencies (ms) over ``seconds``
    and the CPU seconds server and client used; no errors."""
    ok = len(latencies)
    return {
        "requests": ok,
        "seconds": seconds,
        "rps": ok / seconds,
        "p50": latencies[ok // 2],
        "p99": latencies[min(ok - 1, int(ok * 0.99))],
        "errors": 0,
        "non2xx": 0,
        "server_us": server_cpu / ok * 1e6,
        "wrk_us": client_cpu / ok * 1e6,
    }


def run_python_grpc(port: int, concurrency: int, seconds: float, server_pid: int) -> dict[str, Any]:
    """The fallback load generator: as many processes as CPUs, ``concurrency`` tritonclient
    gRPC clients in all; the same fields as :func:`run_wrk`."""
    procs = os.cpu_count() or 1
    threads = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    server_before, client_before = process_cpu(server_pid), _client_cpu()
    started = time.monotonic()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--grpc-load-worker", str(port), str(n), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in threads
        if n
    ]
    outputs = [json.loads(child.communicate()[0]) for child in children]
    elapsed = time.monotonic() - started
    server_cpu, client_cpu = process_cpu(server_pid) - server_before, _client_cpu() - client_before
    latencies = sorted(x for out in outputs for x in out["latencies"])
    ok = len(latencies)
    if not ok:
        raise Unavailable("the Python gRPC load loop got no answer")
    return {
        **_load_run(latencies, seconds, server_cpu, client_cpu),
        "errors": sum(out["errors"] for out in outputs),
        "elapsed": elapsed,
    }


GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_body(rows: np.ndarray) -> bytes:
    """The HTTP/2 body of a ModelInfer call for ``rows`` (one FP64 tensor in
    ``raw_input_contents``, as tritonclient sends it): gRPC's 5-byte prefix, then the message."""
    from tritonclient.grpc import service_pb2 as pb

    message = pb.ModelInferRequest(
        model_name="bench",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input-0", datatype="FP64", shape=list(rows.shape)
            )
        ],
        raw_input_contents=[np.ascontiguousarray(rows, dtype="<f8").tobytes()],
    ).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + bytes(message)


def grpc_counts(metrics_url: str) -> tuple[float, float]:
    """(requests, errors) the server counted over gRPC so far, from its ``/metrics``; calls
    cancelled by the client (``code="499"``: h2load resets those in flight when it stops) are
    not errors."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    requests = errors = 0.0
    for line in text.splitlines():
        if 'transport="grpc"' not in line:
            continue
        if line.startswith("modelops_serving_requests_total{"):
            requests += float(line.rsplit(" ", 1)[1])
        elif line.startswith("modelops_serving_errors_total{") and 'code="499"' not in line:
            errors += float(line.rsplit(" ", 1)[1])
    return requests, errors


def run_h2load(
    h2load: str,
    port: int,
    message: bytes,
    concurrency: int,
    seconds: float,
    server_pid: int,
    metrics_url: str,
) -> dict[str, Any]:
    """One h2load run of ModelInfer (``concurrency`` connections, one call at a time each, as
    wrk's connections); the same fields as :func:`run_wrk`. h2load sees HTTP statuses only, so
    the calls' gRPC statuses are checked on the server's own counters: every call must be
    counted, and none as an error (the snapshot the metrics read is written every second)."""
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp, "body"), Path(tmp, "log")
        data.write_bytes(message)
        counted_before = grpc_counts(metrics_url)
        server_before, client_before = process_cpu(server_pid), _client_cpu()
        proc = subprocess.run(
            [
                h2load, "-c", str(concurrency), "-m", "1", "-t", "1", "-D", str(round(seconds)),
                "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
                "--log-file", str(log), f"http://127.0.0.1:{port}{GRPC_PATH}",
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        server_cpu = process_cpu(server_pid) - server_before
        client_cpu = _client_cpu() - client_before
        # h2load logs "<start time>\t<HTTP status>\t<duration in microseconds>" per request.
        durations = sorted(
            int(fields[2]) / 1e3
            for fields in (line.split("\t") for line in log.read_text().splitlines())
            if len(fields) == 3 and fields[1] == "200"
        )
    if proc.returncode != 0 or not durations:
        raise Unavailable(f"h2load failed: {_tail(proc.stderr or proc.stdout)}")
    time.sleep(1.5)
    counted = [a - b for a, b in zip(grpc_counts(metrics_url), counted_before, strict=True)]
    ok = len(durations)
    return {
        **_load_run(durations, seconds, server_cpu, client_cpu),
        # Calls h2load saw answered that the server did not count as answered without error.
        "errors": int(counted[1]) + max(0, ok - int(counted[0])),
        "error_kinds": {"gRPC errors counted": int(counted[1])} if counted[1] else {},
    }


def run_aio_grpc(argv: list[str]) -> int:
    """``python -m modelops.serving ARGV`` with its gRPC transport replaced by grpcio's
    ``grpc.aio`` server calling the same ``InferenceServicer`` (what the server used before its
    own transport; kept here as the library it must beat). The workers fork from here."""
    from bench_http_stack import run_handwritten

    import modelops.serving.grpc_server as module

    class AioServer:
        def __init__(self, model_server: Any, **_: Any) -> None:
            self.servicer = module.InferenceServicer(model_server)
            self.limit = model_server.config.max_body_bytes
            self.server: Any = None

        async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
            import grpc  # in the worker: the gRPC core must not start before the fork
            from tritonclient.grpc import service_pb2_grpc

            self.server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 1 if reuse_port else 0),
                    ("grpc.max_receive_message_length", self.limit),
                ]
            )
            service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
            bound = int(self.server.add_insecure_port(f"{host}:{port}"))
            await self.server.start()
            return bound

        async def stop(self, grace: float) -> None:
            await self.server.stop(grace)

    module.grpc_server = AioServer  # type: ignore[assignment]
    return run_handwritten(argv)


def grpc_comparison(
    wrk: str,
    server: ServerProcess,
    grpc_port: int,
    aio: tuple[ServerProcess, int] | None,
    rows: np.ndarray,
    tmp: Path,
    args: argparse.Namespace,
) -> None:
    """gRPC (ModelInfer, raw tensor contents) against REST (JSON), LR 1-row c16, on the same
    server processes; and the server's own gRPC transport against ``grpc.aio`` (``aio``: a
    second server process, :func:`run_aio_grpc`) with the same servicer; alternated ``--pairs``
    times. Clients: wrk for REST, h2load (nghttp2's C load generator, as light as wrk) and ghz
    (a Go gRPC client, which checks every status and costs some 120 us of CPU per call on the
    same cores) for gRPC."""
    print("\ngRPC vs REST, LR 1-row c16 (own gRPC transport and grpc.aio on the same servicer):")
    assert server.process is not None
    h2load = shutil.which("h2load")
    ghz: Path | None = None
    if args.grpc_client == "ghz":
        try:
            ghz = ensure_ghz()
        except Unavailable as exc:
            print(f"  ghz not available ({exc}): using the Python tritonclient load loop instead")
    protoset = triton_protoset(tmp / "triton.protoset")
    message = grpc_body(rows)
    layers = {"own": (server, grpc_port), **({"grpc.aio": aio} if aio is not None else {})}

    def runs(layer: str) -> dict[str, Callable[[], dict[str, Any]]]:
        proc, port = layers[layer]
        assert proc.process is not None
        pid = proc.process.pid
        out: dict[str, Callable[[], dict[str, Any]]] = {}
        if h2load is not None:
            out["h2load"] = lambda: run_h2load(
                h2load, port, message, 16, args.duration, pid, f"{proc.url}/metrics"
            )
        if ghz is not None:
            out["ghz"] = lambda: run_ghz(ghz, protoset, port, rows, 16, args.duration, pid)
        else:
            out["python"] = lambda: run_python_grpc(port, 16, args.duration, pid)
        return out

    payload = body(rows)
    url = f"{server.url}/v2/models/bench/infer"
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for layer in layers:  # warm up
            for run in runs(layer).values():
                run()
        for _ in range(args.pairs):
            results.setdefault(("REST", "wrk"), []).append(
                run_wrk(wrk, url, payload, 16, args.duration, server.process.pid)
            )
            for layer in layers:
                for client, run in runs(layer).items():
                    results.setdefault((layer, client), []).append(run())
    except Unavailable as exc:
        print(f"  not measured: {exc}")
        return
    if h2load is None:
        print("  h2load not found (Debian package nghttp2-client; make bench-serve installs it)")
    for (layer, client), got in results.items():
        print(
            f"  {layer:8} {client:7} {_median(got, 'rps'):>8,.0f} req/s  p99 "
            f"{_median(got, 'p99'):6.2f} ms  CPU us/req server {_median(got, 'server_us'):4.0f}"
            f" + client {_median(got, 'wrk_us'):4.0f}  idle est. "
            f"{statistics.median(idle_estimate(r) for r in got):>7,.0f}{_failed(got)}"
        )
    rest = results[("REST", "wrk")]

    def ratio(a: list[dict[str, Any]], b: list[dict[str, Any]], field: str) -> str:
        per = [x[field] / y[field] for x, y in zip(a, b, strict=True)]
        return f"x{statistics.median(per):.3f} ({', '.join(f'{r:.3f}' for r in per)})"

    for client in ("h2load", "ghz", "python"):
        own = results.get(("own", client))
        if own is None:
            continue
        verdict = (
            "met"
            if statistics.median(o["rps"] / r["rps"] for o, r in zip(own, rest, strict=True)) >= 0.8
            else "NOT met"
        )
        print(
            f"  own gRPC ({client}) / REST (wrk): req/s {ratio(own, rest, 'rps')}, server CPU per "
            f"request {ratio(own, rest, 'server_us')}; target within 20% (x0.80): {verdict}"
        )
        library = results.get(("grpc.aio", client))
        if library is not None:
            print(
                f"  own gRPC / grpc.aio ({client}): req/s {ratio(own, library, 'rps')}, p99 "
                f"{ratio(own, library, 'p99')}, server CPU per request "
                f"{ratio(own, library, 'server_us')}"
            )


# MLServer: its own venv (it pins other versions of FastAPI, uvicorn and friends), created
# on first use. uvloop < 0.22: later ones have no implicit event loop, and MLServer 1.7.1's
# parallel workers die asking for one ("There is no current event loop").
MLSERVER_PACKAGES = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22")
MLSERVER_BATCHING = ((8, 0.001), (16, 0.005), (32, 0.02))
"""(max_batch_size, max_batch_time in seconds) tried; the best at c16 is kept."""


def mlserver_bin() -> Path:
    """The ``bin`` directory of ``<cache>/mlserver-venv``, created with ``python -m venv`` and
    pip on first use (scikit-learn pinned to the version that saved the model); raises
    :class:`Unavailable` with pip's complaint when it cannot be installed."""
    import sklearn

    venv = cache_dir() / "mlserver-venv"
    wanted = [*MLSERVER_PACKAGES, f"scikit-learn=={sklearn.__version__}"]
    stamp = venv / ".bench-installed"
    if stamp.exists() and stamp.read_text() == "\n".join(wanted):
        return venv / "bin"
    print(f"installing {' '.join(wanted)} into {venv} (first use) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True
        )
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *wanted],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except subprocess.CalledProcessError as exc:
        raise Unavailable(f"python -m venv failed: {_tail(exc.stderr)}") from None
    except subprocess.TimeoutExpired:
        raise Unavailable("pip install took over 30 minutes") from None
    if proc.returncode != 0:
        raise Unavailable(f"pip install {' '.join(wanted)} failed: {_tail(proc.stderr)}")
    stamp.write_text("\n".join(wanted))
    return venv / "bin"


class MLServer:
    """``mlserver start`` on a model directory (the LR model as a joblib file, model-settings
    with adaptive batching), REST on a free loopback port; its own session, stopped with it."""

    def __init__(
        self,
        bin_dir: Path,
        model: Path,
        directory: Path,
        workers: int,
        batch_size: int,
        batch_time: float,
    ) -> None:
        directory.mkdir(parents=True)
        shutil.copy(model, directory / "model.joblib")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": workers,
            "debug": False,
        }
        model_settings = {
            "name": "bench",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "v1"},
            "max_batch_size": batch_size,
            "max_batch_time": batch_time,
        }
        (directory / "settings.json").write_text(json.dumps(settings))
        (directory / "model-settings.json").write_text(json.dumps(model_settings))
        self.log = directory / "mlserver.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(bin_dir / "mlserver"), "start", str(directory)],
                cwd=directory,
                env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until ``/v2/models/bench/ready`` answers 200 (raises :class:`Unavailable`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"mlserver exited: {_tail(self.log.read_text(errors='replace'))}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/bench/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise Unavailable(f"mlserver not ready in {timeout:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a worker left behind
        self.process.wait()


def mlserver_model(estimator: Any, path: Path) -> Path:
    """The served estimator as a joblib file for MLServer's scikit-learn runtime, without
    ``feature_names_in_``: MLServer passes a bare array, which would otherwise draw a warning
    on every call; the coefficients, and so the predictions, are the same."""
    import joblib  # type: ignore[import-untyped]

    bare = copy.deepcopy(estimator)
    if hasattr(bare, "feature_names_in_"):
        del bare.feature_names_in_
    joblib.dump(bare, path)
    return path


def mlserver_comparison(
    wrk: str,
    server_url: str,
    server_pid: int,
    estimator: Any,
    payload: bytes,
    tmp: Path,
    args: argparse.Namespace,
) -> None:
    """MLServer (``--workers`` parallel workers, adaptive batching) serving the same model,
    next to this server, LR 1-row c16: for each batching setting, ``--pairs`` alternated runs."""
    print(
        f"\nMLServer side by side: the same LogisticRegression, 1-row body, c16; MLServer "
        f"{MLSERVER_PACKAGES[0].split('==')[1]} with mlserver-sklearn, {args.workers} parallel "
        f"workers, adaptive batching; {args.pairs} alternated pairs per setting (medians):"
    )
    try:
        bin_dir = mlserver_bin()
    except Unavailable as exc:
        print(f"  MLServer not measured: {exc}")
        return
    model = mlserver_model(estimator, tmp / "logreg.joblib")
    url = f"{server_url}/v2/models/bench/infer"
    found: list[tuple[float, str, float]] = []
    for size, wait in args.mlserver_batching:
        setting = f"max_batch_size={size} max_batch_time={wait * 1e3:g} ms"
        ml = MLServer(bin_dir, model, tmp / f"mlserver-{size}-{wait}", args.workers, size, wait)
        try:
            ml.wait_ready()
            ml_url = f"{ml.url}/v2/models/bench/infer"
            run_wrk(wrk, ml_url, payload, 16, 2)  # warm up
            ours, theirs = [], []
            for _ in range(args.pairs):
                ours.append(run_wrk(wrk, url, payload, 16, args.duration, server_pid))
                theirs.append(run_wrk(wrk, ml_url, payload, 16, args.duration, ml.process.pid))
        except Unavailable as exc:
            print(f"  {setting}: MLServer not measured: {exc}")
            continue
        finally:
            ml.stop()
        ratios = [o["rps"] / t["rps"] for o, t in zip(ours, theirs, strict=True)]
        idle = statistics.median(
            idle_estimate(o) / idle_estimate(t) for o, t in zip(ours, theirs, strict=True)
        )
        print(
            f"  {setting:38} MLServer {_median(theirs, 'rps'):>7,.0f} req/s p99 "
            f"{_median(theirs, 'p99'):7.2f} ms {_median(theirs, 'server_us'):5.0f} us CPU/req | "
            f"this server {_median(ours, 'rps'):>7,.0f} req/s p99 {_median(ours, 'p99'):5.2f} ms "
            f"{_median(ours, 'server_us'):3.0f} us CPU/req | ours/MLServer "
            f"x{statistics.median(ratios):.1f} (idle est. x{idle:.1f}){_failed(theirs + ours)}"
        )
        if not any(r["errors"] + r["non2xx"] for r in theirs + ours):
            found.append((_median(theirs, "rps"), setting, statistics.median(ratios)))
    if not found:
        print("  MLServer not measured: no setting gave an error-free run")
        return
    _, setting, ratio = max(found)
    print(
        f"  MLServer's best here: {setting}; this server / MLServer: x{ratio:.1f}; "
        f"target >= 20x: {'met' if ratio >= 20 else 'NOT met'}"
    )


def _batching(text: str) -> tuple[int, float]:
    size, _, wait = text.partition(":")
    return int(size), float(wait)


async def main_async(args: argparse.Namespace) -> int:
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    frame = dataset()
    with S3Server(tmp / "s3") as s3:
        store = s3.store()
        store.ensure_bucket(BUCKET)
        print("training ...", flush=True)
        versions = {
            name: train_version(store, f"bench-v{i + 1}", frame, "label", est, params, seed=i)
            for i, (name, (est, params)) in enumerate(MODELS.items())
        }
        canary = train_version(
            store, "bench-v3", frame, "label", "LogisticRegression", {"C": 0.5}, seed=3
        )
        models = {}
        for name, entry in versions.items():
            data = store.get(Location.parse(entry["artifact"]["uri"]))
            models[name] = sio.loads(data, trusted=trusted_types(data))
        table = routing_table(
            [(versions["logreg"], "stable", 100), (versions["forest"], "canary", 0)], model="bench"
        )
        routing = tmp / "routing.json"
        write_json(routing, table)

        def server_process(log: str, grpc_port: int) -> ServerProcess:
            return ServerProcess(
                routing,
                s3.endpoint,
                s3.access_key,
                s3.secret_key,
                tmp / log,
                workers=args.workers,
                sketch_interval=5.0,
                extra_args=["--grpc-port", str(grpc_port)],
            )

        grpc_port = free_port()
        server = server_process("server.log", grpc_port)
        # The same server with POST /bench/noop answered by its HTTP layer's handler, for the
        # no-op comparison (bench_http_stack.run_handwritten: `python -m modelops.serving`).
        server.args[1:3] = [
            str(Path(__file__).with_name("bench_http_stack.py")),
            "--handwritten-server",
        ]
        server.start()
        try:
            await server.wait_ready(60)
            urls = {
                "logreg": f"{server.url}/v2/models/bench/infer",
                "forest": f"{server.url}/v2/models/bench/versions/bench-v2/infer",
            }
            rng = np.random.default_rng(0)
            X = frame.drop(columns="label").to_numpy()
            cells, floors = [], {}
            for name in args.models if "cells" in args.parts else ():
                reference = None
                if args.reference:
                    path = tmp / f"{name}.skops"
                    path.write_bytes(store.get(Location.parse(versions[name]["artifact"]["uri"])))
                    reference = Reference(path, args.workers)
                try:
                    for rows in (1, 32):
                        payload = body(X[rng.choice(len(X), rows)])
                        floors[(name, rows)] = floor_ms(models[name], payload, args.floor_repeat)
                        run_wrk(wrk, urls[name], payload, 16, 2)  # warm up
                        for conc in (1, 16):
                            assert server.process is not None
                            result = run_wrk(
                                wrk, urls[name], payload, conc, args.duration, server.process.pid
                            )
                            if reference is not None:
                                result["ref"] = run_wrk(
                                    wrk,
                                    reference.url,
                                    payload,
                                    conc,
                                    args.duration,
                                    reference.process.pid,
                                )
                            cells.append({"model": name, "rows": rows, "conc": conc, **result})
                            print(
                                f"  {name} rows={rows} c={conc}: {result['rps']:,.0f} req/s, "
                                f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms",
                                flush=True,
                            )
                finally:
                    if reference is not None:
                        reference.stop()
            if cells:
                report(cells, floors, args.workers)
            assert server.process is not None
            pid = server.process.pid
            row = X[np.random.default_rng(1).choice(len(X), 1)]
            if "noop" in args.parts:
                noop_comparison(wrk, server.url, pid, body(row), args)
            if "grpc" in args.parts:
                aio_port = free_port()
                aio = server_process("server-aio.log", aio_port)
                aio.args[1:3] = [__file__, "--aio-grpc-server"]
                aio.start()
                try:
                    await aio.wait_ready(60)
                    grpc_comparison(wrk, server, grpc_port, (aio, aio_port), row, tmp, args)
                finally:
                    aio.stop()
            if "mlserver" in args.parts:
                mlserver_comparison(wrk, server.url, pid, models["logreg"], body(row), tmp, args)

            rollback_table = routing_table(
                [(versions["logreg"], "stable", 50), (canary, "canary", 50)], model="bench"
            )
            file_times = [
                await rollback_seconds(
                    urls["logreg"], file_publisher(routing), rollback_table, "bench-v3"
                )
                for _ in range(args.rollbacks if "rollback" in args.parts else 0)
            ]
        finally:
            server.stop()
        if "rollback" not in args.parts:
            shutil.rmtree(tmp, ignore_errors=True)
            return 0
        watch_times = await watched_rollbacks(s3, tmp, rollback_table, args)
        for what, times in (
            ("ConfigMap PATCH, watched by the pods (as in a cluster)", watch_times),
            ("routing file, polled every 0.1 s (local use)", file_times),
        ):
            print(
                f"rollback decision (canary weight -> 0) to 100% stable, {what}: median "
                f"{statistics.median(times) * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms over "
                f"{len(times)} runs"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


async def watched_rollbacks(
    s3: S3Server, tmp: Path, table: dict[str, Any], args: argparse.Namespace
) -> list[float]:
    """The server as in a pod: its table from a ConfigMap it watches on a real control plane
    (in ``default``, the namespace of the table)."""
    print("starting the control plane ...", flush=True)
    with ControlPlane(tmp / "controlplane") as control_plane:
        print(f"  ready in {control_plane.ready_seconds:.1f} s", flush=True)
        server = await watched_server(
            control_plane,
            "default",
            s3.endpoint,
            s3.access_key,
            s3.secret_key,
            table,
            "bench-routing",
            tmp,
            workers=args.workers,
            sketch_interval=5.0,
            extra_args=["--grpc-port", "-1"],  # not measured here; no port to collide on
        )
        server.start()
        try:
            await server.wait_ready(60)
            url = f"{server.url}/v2/models/bench/infer"
            publish = configmap_publisher(control_plane, "default", "bench-routing")
            return [
                await rollback_seconds(url, publish, table, "bench-v3")
                for _ in range(args.rollbacks)
            ]
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--aio-grpc-server"]:
        return run_aio_grpc(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--floor-repeat", type=int, default=300)
    p.add_argument("--rollbacks", type=int, default=5)
    p.add_argument(
        "--rollback-only", action="store_true", help="skip the load runs (--parts rollback)"
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure: the table of cells, the no-op handler, gRPC vs REST, MLServer, "
        "rollback times",
    )
    p.add_argument("--pairs", type=int, default=3, help="alternated pairs per comparison")
    p.add_argument(
        "--grpc-client",
        choices=["ghz", "python"],
        default="ghz",
        help="gRPC load generator (python: the tritonclient fallback)",
    )
    p.add_argument(
        "--mlserver-batching",
        nargs="+",
        type=_batching,
        default=list(MLSERVER_BATCHING),
        metavar="SIZE:SECONDS",
        help="MLServer adaptive-batching settings to try (max_batch_size:max_batch_time)",
    )
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the bare aiohttp reference server runs",
    )
    p.add_argument("--reference-server", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--grpc-load-worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reference_server:
        model, port, workers = args.reference_server
        reference_server(model, int(port), int(workers))
        return 0
    if args.grpc_load_worker:
        port, threads, seconds = args.grpc_load_worker
        grpc_load_worker(int(port), int(threads), float(seconds))
        return 0
    if args.rollback_only:
        args.parts = ["rollback"]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
