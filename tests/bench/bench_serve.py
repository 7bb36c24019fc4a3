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

Numbers are printed, never asserted: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
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
        server = ServerProcess(
            routing,
            s3.endpoint,
            s3.access_key,
            s3.secret_key,
            tmp / "server.log",
            workers=args.workers,
            sketch_interval=5.0,
        )
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
            for name in args.models if not args.rollback_only else ():
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

            rollback_table = routing_table(
                [(versions["logreg"], "stable", 50), (canary, "canary", 50)], model="bench"
            )
            file_times = [
                await rollback_seconds(
                    urls["logreg"], file_publisher(routing), rollback_table, "bench-v3"
                )
                for _ in range(args.rollbacks)
            ]
        finally:
            server.stop()
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--floor-repeat", type=int, default=300)
    p.add_argument("--rollbacks", type=int, default=5)
    p.add_argument("--rollback-only", action="store_true", help="skip the load runs")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the bare aiohttp reference server runs",
    )
    p.add_argument("--reference-server", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reference_server:
        model, port, workers = args.reference_server
        reference_server(model, int(port), int(workers))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
