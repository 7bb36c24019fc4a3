"""The model server's HTTP layer, decided by measurement: ``make bench-http``
(``python tests/bench/bench_http_stack.py [--duration 5] [--rounds 3]``).

The same dispatch and predictors (one :class:`~modelops.serving.server.ModelServer` per
worker, its ``dispatch``/``infer`` unchanged) behind four HTTP stacks, each as 2 worker
processes on 127.0.0.1:

- ``handwritten``: the real server process, ``python -m modelops.serving`` (its own HTTP/1.1
  layer ``serving/http.py`` on httptools + uvloop; the gRPC port off, as the others have none);
- ``uvicorn``: a bare ASGI app under ``uvicorn --http httptools --loop uvloop --workers 2
  --no-access-log``;
- ``granian-asgi``: the same ASGI app under ``granian --interface asgi --loop uvloop
  --workers 2 --http 1``;
- ``granian-rsgi``: the same adapter on granian's own RSGI interface.

In each worker the ASGI/RSGI app builds what ``modelops.serving.app`` builds (routing-file
source, object store, ``ModelServer`` with the same peers directory, the routing, sketch,
pod-report and metrics-snapshot loops; the heap frozen, BLAS on one thread), so only the HTTP
layer differs. Every stack answers ``POST /bench/noop`` with a constant small JSON before the
server's dispatch (for ``handwritten`` by wrapping the handler ``ModelServer.http_server``
gives its ``HttpServer``, in this file's ``--handwritten-server`` entry point); every other
path goes to ``ModelServer.dispatch``.

Cells, driven by ``wrk -t1`` on the same machine: the no-op handler at concurrency 16 and
LogisticRegression (trained by the real trainer, stored in a real S3 server) 1-row at
concurrency 1 and 16, all with the same 1-row body. The stacks start one at a time, alternated
(A B C D, A B C D, ...) for ``--rounds`` rounds; the table gives the median and min-max of
req/s, p99 and the servers' CPU seconds per 10k requests, then the side-by-side ratios of each
library to the hand-written layer on the LR 1-row c16 cell (median of the per-round ratios)
and the decision of issue 12 part 5: keep the hand-written layer only if the best library is
more than 15% slower there, or worse on p99; otherwise move to that library.

On a machine shared with other work the measured rates also depend on how much CPU each stack
wins from that work, and the scheduler shares by runnable thread (granian runs Rust threads
beside each worker's Python thread). So the table also gives each stack's busy threads and an
estimate from CPU per request of the rate with the CPUs to itself, and the decision is printed
both ways; the 1-minute load average is printed with each round.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests"), str(HERE)]

from modelops.serving.http import Request, Response  # noqa: E402
from modelops.serving.protocol import error_body  # noqa: E402

logger = logging.getLogger("bench_http_stack")

NOOP_PATH = "/bench/noop"
NOOP = Response(200, b'{"ok":true}')
WORKERS = 2
STACKS = ("handwritten", "uvicorn", "granian-asgi", "granian-rsgi")
CELLS = (("noop", 16), ("lr", 1), ("lr", 16))
DECIDING_CELL = ("lr", 16)
SLOWER_LIMIT = 0.15
"""Issue 12 part 5: keep the hand-written layer if the best library is more than this much
slower on the LR 1-row c16 cell."""
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

Handler = Callable[[Request], "Response | Awaitable[Response]"]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]


def with_noop(dispatch: Handler) -> Handler:
    """``dispatch`` with ``POST /bench/noop`` answered first by a constant JSON: the no-op
    handler, on whatever HTTP stack calls it."""

    def handler(request: Request) -> Response | Awaitable[Response]:
        if request.path == NOOP_PATH:
            return NOOP
        return dispatch(request)

    return handler


# -- the server's worker without its HTTP layer (run inside uvicorn's / granian's workers) ------


class ServingCore:
    """One worker of the model server minus HTTP: what ``modelops.serving.app._serve`` sets up
    (routing-file source, object store, ``ModelServer``, its background loops), configured by
    ``BENCH_ROUTING_FILE``, ``BENCH_PEERS_DIR`` (shared by the workers of one stack: each
    claims a worker index there), ``BENCH_WORKERS`` and the S3 variables the real server reads.
    """

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.max_body = 1 << 20
        self._tasks: list[asyncio.Task[None]] = []
        self._server: Any = None
        self._http: Any = None

    @property
    def sticky_header(self) -> bytes | None:
        """The header (lower-case) whose value routes a request, if the table names one."""
        return getattr(self._http, "sticky_header", None)

    async def start(self) -> None:
        from modelops.serving.routing_source import from_environment
        from modelops.serving.server import ModelServer, ServerConfig
        from modelops.storage import ArtifactStore

        # As app.run_worker/_serve do: a short GIL switch interval for the sketch thread,
        # and the imported heap kept out of the cyclic GC.
        sys.setswitchinterval(0.001)
        gc.collect()
        gc.freeze()
        peers = Path(os.environ["BENCH_PEERS_DIR"])
        workers = int(os.environ["BENCH_WORKERS"])
        index = _claim_worker_index(peers, workers)
        pod = os.environ.get("POD_NAME", "bench")
        config = ServerConfig(
            max_body_bytes=self.max_body,
            sketch_interval=float(os.environ.get("BENCH_SKETCH_INTERVAL", "5")),
            bucket=os.environ.get("MODELOPS_BUCKET", "modelops"),
            pod=f"{pod}-w{index}",
            worker=index,
            workers=workers,
            peers_dir=peers,
        )
        server = ModelServer(config, ArtifactStore.from_env())
        source = from_environment(Path(os.environ["BENCH_ROUTING_FILE"]))
        self._server = server
        # Never started: built for the handler it wraps and for the sticky header the server
        # keeps current on it (read per request by the adapters, as the HTTP layer does).
        self._http = server.http_server()
        self.handler = with_noop(self._http.handler)
        self._tasks = [
            asyncio.create_task(server.manager.run(), name="routing-apply"),
            asyncio.create_task(source.run(server.manager.submit), name="routing-source"),
            asyncio.create_task(server.sketch_loop(), name="sketches"),
            asyncio.create_task(server.report_loop(), name="pod-report"),
            asyncio.create_task(server.snapshot_loop(), name="snapshots"),
        ]

    async def stop(self) -> None:
        server = self._server
        if server is None:
            return
        server.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.flush_sketches(final=True)
        await server.withdraw_report()
        server.writer.close()


def _claim_worker_index(peers: Path, workers: int) -> int:
    """The lowest free worker index in ``peers`` (O_EXCL files: one winner per index)."""
    for index in range(workers):
        try:
            os.close(os.open(peers / f"slot-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return index
    raise RuntimeError(f"more than {workers} workers claimed an index in {peers}")


def _answer(handler: Handler, request: Request) -> Response | Awaitable[Response]:
    """The handler's answer; a 500 (logged) if it raises, as ``serving/http.py`` does."""
    try:
        return handler(request)
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return Response(500, error_body("internal server error"))


async def _resolved(result: Response | Awaitable[Response], request: Request) -> Response:
    if isinstance(result, Response):
        return result
    try:
        return await result
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return Response(500, error_body("internal server error"))


def _extra_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    """``Response.headers`` (``Name: value`` lines ending in CRLF) as header pairs."""
    pairs = []
    for line in raw.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name.strip().lower(), value.strip()))
    return pairs


def _too_large(length: int, limit: int) -> Response:
    return Response(
        413, error_body(f"request body of {length} bytes is over the {limit}-byte limit")
    )


class AsgiApp:
    """The server's dispatch as a bare ASGI 3 application (``http`` and ``lifespan`` scopes):
    the request's method, percent-decoded path, body, ``Inference-Header-Content-Length`` and
    ``Content-Encoding`` become the :class:`Request` that ``serving/http.py`` would build; a
    body over the limit is answered 413 before it is read."""

    def __init__(self) -> None:
        self.core = ServingCore()

    async def __call__(self, scope: AsgiMessage, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.core.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.core.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: AsgiMessage, receive: Receive, send: Send) -> None:
        handler = self.core.handler
        assert handler is not None, "lifespan startup did not run"
        limit = self.core.max_body
        header_length: int | None = None
        encoding: str | None = None
        sticky = self.core.sticky_header
        route_key: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value)
                if length > limit:
                    await self._send(send, scope["method"], _too_large(length, limit))
                    return
            elif name == b"inference-header-content-length":
                try:
                    header_length = int(value)
                except ValueError:
                    header_length = -1
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
            elif name == sticky:
                route_key = value.decode("latin-1")
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._send(send, scope["method"], _too_large(size, limit))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = Request(scope["method"], scope["path"], body, header_length, encoding, route_key)
        response = await _resolved(_answer(handler, request), request)
        await self._send(send, request.method, response)

    @staticmethod
    async def _send(send: Send, method: str, response: Response) -> None:
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
        ]
        if response.headers:
            headers += _extra_headers(response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        body = b"" if method == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})


class RsgiApp:
    """The same adapter on granian's RSGI interface (``__rsgi__``; ``__rsgi_init__`` and
    ``__rsgi_del__`` run the worker's start and stop on its loop before and after serving)."""

    def __init__(self) -> None:
        self.core = ServingCore()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.core.start())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.core.stop())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        handler = self.core.handler
        assert handler is not None, "__rsgi_init__ did not run"
        headers = scope.headers
        limit = self.core.max_body
        length = headers.get("content-length")
        if length is not None and int(length) > limit:
            self._send(protocol, scope.method, _too_large(int(length), limit))
            return
        header_length: int | None = None
        raw_length = headers.get("inference-header-content-length")
        if raw_length is not None:
            try:
                header_length = int(raw_length)
            except ValueError:
                header_length = -1
        body = await protocol()
        if len(body) > limit:
            self._send(protocol, scope.method, _too_large(len(body), limit))
            return
        sticky = self.core.sticky_header
        request = Request(
            scope.method,
            scope.path,
            body,
            header_length,
            headers.get("content-encoding"),
            headers.get(sticky.decode("latin-1")) if sticky else None,
        )
        response = await _resolved(_answer(handler, request), request)
        self._send(protocol, request.method, response)

    @staticmethod
    def _send(protocol: Any, method: str, response: Response) -> None:
        headers = [("content-type", response.content_type)]
        if response.headers:
            headers += [(k.decode(), v.decode()) for k, v in _extra_headers(response.headers)]
        body = b"" if method == "HEAD" else response.body
        protocol.response_bytes(response.status, headers, body)


asgi_app = AsgiApp()
"""``uvicorn bench_http_stack:asgi_app`` / ``granian --interface asgi ...``."""
rsgi_app = RsgiApp()
"""``granian --interface rsgi bench_http_stack:rsgi_app``."""


def run_handwritten(argv: list[str]) -> int:
    """``python -m modelops.serving ARGV`` with ``POST /bench/noop`` answered by the HTTP layer's
    handler before the server's dispatch (the workers fork from here, patch included)."""
    from modelops.serving.app import main
    from modelops.serving.http import HttpServer
    from modelops.serving.server import ModelServer

    original = ModelServer.http_server

    def http_server(self: ModelServer) -> HttpServer:
        http = original(self)
        http.handler = with_noop(http.handler)
        return http

    ModelServer.http_server = http_server  # type: ignore[method-assign]
    return main(argv)


# -- the benchmark --------------------------------------------------------------------------------


class Stack:
    """One stack's server processes (its own session, stopped with it) on a free port."""

    def __init__(
        self, name: str, routing: Path, s3_env: dict[str, str], tmp: Path, port: int
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.peers = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
        self.log = tmp / f"{name}.log"
        env = {
            **os.environ,
            **s3_env,
            **{k: "1" for k in _THREAD_ENV},
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "tests"), str(HERE)]),
            "BENCH_ROUTING_FILE": str(routing),
            "BENCH_PEERS_DIR": str(self.peers),
            "BENCH_WORKERS": str(WORKERS),
            "BENCH_SKETCH_INTERVAL": "5",
            "POD_NAME": f"bench-{name}",
        }
        py, where = sys.executable, ["--host", "127.0.0.1", "--port", str(port)]
        commands = {
            "handwritten": [
                py, __file__, "--handwritten-server", "--routing-file", str(routing),
                "--workers", str(WORKERS), "--sketch-interval", "5", "--grpc-port", "-1", *where,
            ],
            "uvicorn": [
                py, "-m", "uvicorn", "bench_http_stack:asgi_app", "--http", "httptools",
                "--loop", "uvloop", "--workers", str(WORKERS), "--no-access-log",
                "--log-level", "warning", "--lifespan", "on", *where,
            ],
            "granian-asgi": [
                py, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--workers",
                str(WORKERS), "--http", "1", "--no-ws", "--log-level", "warning", *where,
                "bench_http_stack:asgi_app",
            ],
            "granian-rsgi": [
                py, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--workers",
                str(WORKERS), "--http", "1", "--no-ws", "--log-level", "warning", *where,
                "bench_http_stack:rsgi_app",
            ],
        }  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                commands[name],
                env=env,
                cwd=HERE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until ``/v2/health/ready`` answers 200: every worker has the model loaded (the
        workers share a peers directory, so one answers ready only when all are)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout:g} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a worker left behind


def thread_cpu(root: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``root`` and of its child processes, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                pids.append(int(stat.parent.name))
    found = {}
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                found[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def busy_threads(before: dict[int, float], after: dict[int, float], seconds: float) -> int:
    """Threads that ran at least a tenth of ``seconds`` between the two snapshots. On a shared
    machine the scheduler shares the CPUs by runnable thread, so a stack with more busy threads
    takes more of them from its neighbours."""
    return sum(1 for tid, cpu in after.items() if cpu - before.get(tid, 0.0) >= 0.1 * seconds)


def _spread(values: list[float], digits: int) -> str:
    return (
        f"{statistics.median(values):,.{digits}f} "
        f"({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    )


def report(results: dict[tuple[str, str, int], list[dict[str, Any]]], stacks: list[str]) -> None:
    """The table, the side-by-side ratios on the deciding cell and the decision."""
    loads = [r["load"] for runs in results.values() for r in runs]
    print(
        f"\nHTTP stacks, {WORKERS} workers each, wrk -t1 on the same {os.cpu_count()}-CPU "
        f"machine (1-minute load average {min(loads):.1f}-{max(loads):.1f} during the runs); "
        "median (min-max) of the rounds.\n"
        "CPU s/10k: the server processes' CPU seconds per 10k requests. idle est.: CPUs / "
        "(server + wrk CPU per request), the rate with the CPUs to itself (or under a pod's "
        "CPU limit). threads: the stack's threads busy during the run (>= 10% of it); on a "
        "shared machine the scheduler shares the CPUs by runnable thread, so measured req/s "
        "favours the stack with more of them."
    )
    head = (
        f"{'stack':13} {'cell':12} {'req/s':>22} {'p99 ms':>20} {'CPU s/10k':>18} "
        f"{'idle est.':>9} {'threads':>7} errors"
    )
    print(head)
    print("-" * len(head))
    for kind, conc in CELLS:
        for stack in stacks:
            runs = results[(stack, kind, conc)]
            errors = sum(r["errors"] + r["non2xx"] for r in runs)
            cell = f"{'no-op' if kind == 'noop' else 'LR 1-row'} c{conc}"
            estimate = statistics.median(idle_estimate(r) for r in runs)
            threads = statistics.median(r["threads"] for r in runs)
            print(
                f"{stack:13} {cell:12} {_spread([r['rps'] for r in runs], 0):>22} "
                f"{_spread([r['p99'] for r in runs], 2):>20} "
                f"{_spread([r['server_us'] / 100 for r in runs], 2):>18} "
                f"{estimate:>9,.0f} {threads:>7g} {errors}"
            )
    base = stacks[0]
    libraries = stacks[1:]
    if base != "handwritten" or not libraries:
        return
    kind, conc = DECIDING_CELL
    print(f"\nside by side on LR 1-row c{conc}: library / hand-written, median (per round)")
    measured: dict[str, tuple[float, float]] = {}
    capacity: dict[str, tuple[float, float]] = {}
    spans: dict[str, tuple[float, float]] = {}
    for stack in libraries:
        pairs = list(zip(results[(stack, kind, conc)], results[(base, kind, conc)], strict=True))
        rps = [lib["rps"] / hw["rps"] for lib, hw in pairs]
        p99 = [lib["p99"] / hw["p99"] for lib, hw in pairs]
        cpu = [lib["server_us"] / hw["server_us"] for lib, hw in pairs]
        idle = [idle_estimate(lib) / idle_estimate(hw) for lib, hw in pairs]
        measured[stack] = (statistics.median(rps), statistics.median(p99))
        capacity[stack] = (statistics.median(idle), statistics.median(p99))
        spans[stack] = (min(rps), max(rps))
        print(
            f"  {stack:13} req/s {_ratios(rps)}; p99 {_ratios(p99)}; server CPU per request "
            f"{_ratios(cpu)}; idle est. {_ratios(idle)}"
        )
    by_measure = decide(measured, f"LR 1-row c{conc} req/s as measured")
    by_capacity = decide(capacity, f"LR 1-row c{conc} idle est. (CPU per request)")
    print(f"decision (issue 12.5's rule on measured req/s and p99): {by_measure}")
    print(f"decision (the same rule on the idle estimate, p99 as measured): {by_capacity}")
    threshold = 1 - SLOWER_LIMIT
    straddling = [s for s, (low, high) in spans.items() if low < threshold < high]
    if straddling:
        print(
            f"  note: the per-round req/s ratios of {', '.join(straddling)} fall on both sides "
            f"of x{threshold:.2f}: the spread is larger than the margin, run it again."
        )
    if by_measure.split(":")[0] != by_capacity.split(":")[0]:
        print(
            "  note: the two disagree: the measured rates depend on the CPU share each stack "
            "got from the other work on the machine (see threads); the idle estimate does not."
        )


def decide(ratios: dict[str, tuple[float, float]], what: str) -> str:
    """Issue 12 part 5's rule: keep the hand-written layer only if the best library (highest
    ratio) is more than 15% slower or has a worse p99; ``ratios``: library -> (rate ratio,
    p99 ratio), library / hand-written."""
    best = max(ratios, key=lambda s: ratios[s][0])
    rate, p99 = ratios[best]
    if 1 - rate > SLOWER_LIMIT or p99 > 1:
        why = []
        if 1 - rate > SLOWER_LIMIT:
            why.append(f"{1 - rate:.1%} slower (more than {SLOWER_LIMIT:.0%})")
        if p99 > 1:
            why.append(f"p99 x{p99:.3f} (worse)")
        return f"KEEP the hand-written layer: the best library, {best}, is {' and '.join(why)}"
    return (
        f"MOVE to {best}: x{rate:.3f} of the hand-written layer on {what} (at most "
        f"{SLOWER_LIMIT:.0%} slower allowed), p99 x{p99:.3f} (not worse)"
    )


def idle_estimate(run: dict[str, Any]) -> float:
    """Requests/s with the machine to itself: CPUs / (server + client CPU seconds per
    request), the client being wrk (or ghz)."""
    return float((os.cpu_count() or 1) / ((run["server_us"] + run["wrk_us"]) / 1e6))


def _ratios(values: list[float]) -> str:
    return f"x{statistics.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def main_bench(args: argparse.Namespace) -> int:
    import numpy as np
    from bench_serve import body, dataset, ensure_wrk, run_wrk

    from modelops.local.s3server import S3Server
    from unit.serving.test_serving_support import (
        BUCKET,
        free_port,
        routing_table,
        train_version,
        write_json,
    )

    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    frame = dataset()
    stacks = list(args.stacks)
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {
        (s, kind, conc): [] for s in stacks for kind, conc in CELLS
    }
    with S3Server(tmp / "s3") as s3:
        store = s3.store()
        store.ensure_bucket(BUCKET)
        print("training LogisticRegression with the real trainer ...", flush=True)
        version = train_version(
            store, "bench-v1", frame, "label", "LogisticRegression", {"max_iter": 1000}
        )
        routing = tmp / "routing.json"
        write_json(routing, routing_table([(version, "stable", 100)], model="bench"))
        s3_env = {
            "MODELOPS_S3_ENDPOINT": s3.endpoint,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "MODELOPS_BUCKET": BUCKET,
        }
        X = frame.drop(columns="label").to_numpy()
        payload = body(X[np.random.default_rng(0).choice(len(X), 1)])
        for round_ in range(args.rounds):
            for name in stacks:
                stack = Stack(name, routing, s3_env, tmp, free_port())
                try:
                    stack.wait_ready()
                    urls = {
                        "noop": stack.url + NOOP_PATH,
                        "lr": stack.url + "/v2/models/bench/infer",
                    }
                    for kind in ("noop", "lr"):
                        run_wrk(wrk, urls[kind], payload, 16, args.warmup)
                    line = []
                    for kind, conc in CELLS:
                        before = thread_cpu(stack.process.pid)
                        result = run_wrk(
                            wrk, urls[kind], payload, conc, args.duration, stack.process.pid
                        )
                        result["threads"] = busy_threads(
                            before, thread_cpu(stack.process.pid), result["seconds"]
                        )
                        result["load"] = float(Path("/proc/loadavg").read_text().split()[0])
                        results[(name, kind, conc)].append(result)
                        line.append(
                            f"{kind} c{conc} {result['rps']:,.0f}/s p99 {result['p99']:.2f} ms"
                        )
                    load = Path("/proc/loadavg").read_text().split()[0]
                    print(
                        f"  round {round_ + 1} {name:13} " + "; ".join(line) + f" (load {load})",
                        flush=True,
                    )
                finally:
                    stack.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    report(results, stacks)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--handwritten-server"]:
        return run_handwritten(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk per path per start")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    p.add_argument(
        "--stacks",
        nargs="+",
        choices=STACKS,
        default=list(STACKS),
        help="the first is the base of the ratios (the decision needs handwritten first)",
    )
    return main_bench(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
