"""``python -m modelops serve``: the model server process(es).

With ``--workers N`` (default: the CPUs this process may use) a master process imports the
server's modules once, then forks N worker processes (before any thread, event loop or
connection exists, so forking is safe and no worker pays the seconds scikit-learn takes to
import) that each bind the port with SO_REUSEPORT, load the models, watch the routing table
and flush their own sketch windows (pod name ``<pod>-w<i>`` in the object key). Each worker
also serves the protocol over gRPC on ``--grpc-port`` (:mod:`modelops.serving.grpc_server`),
that port shared the same way. The master
forwards SIGTERM/SIGINT and exits when they have; if a worker dies unexpectedly it stops the
others and exits non-zero so the kubelet restarts the pod. ``/metrics`` sums all workers
(see :mod:`modelops.serving.metrics`).

Each worker keeps its own ledger of request ids for ground-truth feedback
(``--feedback-max-ids`` ids for at most ``--feedback-ttl`` seconds) and shares it with the
other workers and pods through the prediction logs it writes with its sketch windows (see
:mod:`modelops.serving.feedback`).

Shutdown of a worker: stop accepting, finish in-flight requests (``--drain-timeout``), write
the last sketch window (and prediction log and quality objects), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

logger = logging.getLogger("modelops.serving")

# One BLAS thread per worker: N workers already use N cores, and batches are small.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Options:
    host: str = "0.0.0.0"
    port: int = 8080
    grpc_port: int = 8001
    routing_file: Path | None = None
    workers: int = 1
    max_body_bytes: int = 1 << 20
    sketch_interval: float = 5.0
    drain_timeout: float = 20.0
    log_level: str = "INFO"
    feedback_max_ids: int = 100_000
    feedback_ttl: float = 3600.0


def default_workers() -> int:
    """CPUs available: the affinity mask, capped by a cgroup v2 CPU quota (a pod's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:  # cgroup v2
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return cpus
    if quota not in ("max", "-1"):
        cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return cpus


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelops serve", description="Serve models over the Open Inference Protocol v2."
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--grpc-port",
        type=int,
        default=8001,
        help="the Open Inference Protocol over gRPC (Triton's port; 0: any free port, "
        "negative: off)",
    )
    p.add_argument(
        "--routing-file",
        type=Path,
        help="a routing table JSON file, re-read when it changes (local/dev); default: the "
        "ConfigMap named by MODELOPS_ROUTING_CONFIGMAP in POD_NAMESPACE",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--sketch-interval", type=float, default=5.0, help="seconds per sketch window")
    p.add_argument(
        "--drain-timeout", type=float, default=20.0, help="seconds to finish requests on SIGTERM"
    )
    p.add_argument(
        "--feedback-max-ids",
        type=int,
        default=100_000,
        help="request ids each worker remembers for feedback (about 250 bytes each)",
    )
    p.add_argument(
        "--feedback-ttl",
        type=float,
        default=3600.0,
        help="seconds a request id is remembered for feedback",
    )
    p.add_argument("--log-level", default=os.environ.get("MODELOPS_LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.max_body_bytes <= 0 or args.sketch_interval < 1:
        print("--max-body-bytes must be positive, --sketch-interval at least 1", file=sys.stderr)
        return 2
    if args.feedback_max_ids < 1 or not 0 < args.feedback_ttl < math.inf:
        print("--feedback-max-ids must be at least 1, --feedback-ttl positive", file=sys.stderr)
        return 2
    options = Options(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        routing_file=args.routing_file,
        workers=max(1, args.workers if args.workers is not None else default_workers()),
        max_body_bytes=args.max_body_bytes,
        sketch_interval=args.sketch_interval,
        drain_timeout=args.drain_timeout,
        log_level=args.log_level,
        feedback_max_ids=args.feedback_max_ids,
        feedback_ttl=args.feedback_ttl,
    )
    for name in _THREAD_ENV:
        os.environ.setdefault(name, "1")
    if options.workers == 1:
        return run_worker(options, 0, None)
    return _supervise(options)


# -- master --------------------------------------------------------------------------------------


def _supervise(options: Options) -> int:
    _logging(options.log_level, "master")
    # Imported here, once, and shared copy-on-write by the forked workers.
    import modelops.serving.routing_source
    import modelops.serving.server  # noqa: F401

    _freeze_heap()

    peers = Path(tempfile.mkdtemp(prefix="modelops-serve-"))
    reserved: list[socket.socket] = []
    for field in ("port", "grpc_port"):
        if getattr(options, field) == 0:
            # Workers must share one port: pick it here and hold it (a bound, non-listening
            # SO_REUSEPORT socket takes no connections) until they are gone.
            sock = socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((options.host, 0))
            reserved.append(sock)
            options = Options(**{**options.__dict__, field: sock.getsockname()[1]})
    ctx = multiprocessing.get_context("fork")
    master = os.getpid()
    workers = [
        ctx.Process(target=_worker_entry, args=(options, i, peers), name=f"serve-w{i}")
        for i in range(options.workers)
    ]
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if os.getpid() != master:  # a worker between fork and its own handlers
            return
        stopping = True
        for w in workers:
            if w.pid is not None and w.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for w in workers:
        w.start()
    logger.info("serving on %s:%d with %d workers", options.host, options.port, len(workers))
    code = 0
    try:
        alive = list(workers)
        while alive:
            multiprocessing.connection.wait([w.sentinel for w in alive])
            for w in [w for w in alive if w.exitcode is not None]:
                alive.remove(w)
                if w.exitcode != 0 and not stopping:
                    logger.error("worker %s exited with %s: stopping", w.name, w.exitcode)
                    code = 1
                    forward(signal.SIGTERM, None)
                elif w.exitcode != 0:
                    code = code or 1
    finally:
        for w in workers:
            w.join(timeout=1)
        for sock in reserved:
            sock.close()
        shutil.rmtree(peers, ignore_errors=True)
    return code


def _worker_entry(options: Options, index: int, peers: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # until the worker's event loop takes them
    sys.exit(run_worker(options, index, peers))


# -- worker --------------------------------------------------------------------------------------


def _freeze_heap() -> None:
    """Exempt what exists now (some 200k objects of numpy, pandas, scikit-learn...) from the
    cyclic GC: a full collection over them takes a tenth of a second, a latency spike for
    every request in flight; after freezing, collections only walk what serving creates."""
    gc.collect()
    gc.freeze()


def _logging(level: str, who: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s [{who}] %(name)s: %(message)s",
        force=True,
    )


def run_worker(options: Options, index: int, peers: Path | None) -> int:
    """One serving process, until SIGTERM/SIGINT; returns its exit code."""
    _logging(options.log_level, f"w{index}")
    # The sketch thread must not hold the event loop off the GIL for long.
    sys.setswitchinterval(0.001)
    try:
        import uvloop
    except ImportError:  # optional: a faster event loop when installed
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(options, index, peers))


async def _serve(options: Options, index: int, peers: Path | None) -> int:
    from modelops.serving.routing_source import from_environment
    from modelops.serving.server import ModelServer, ServerConfig
    from modelops.storage import ArtifactError, ArtifactStore

    _freeze_heap()
    try:
        source = from_environment(options.routing_file)
    except Exception as exc:
        logger.error("no routing table source: %s", exc)
        return 2
    try:
        store: ArtifactStore | None = ArtifactStore.from_env()
    except ArtifactError as exc:
        logger.error("no object store: %s (no version can load)", exc)
        store = None
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    config = ServerConfig(
        max_body_bytes=options.max_body_bytes,
        sketch_interval=options.sketch_interval,
        bucket=os.environ.get("MODELOPS_BUCKET", "modelops"),
        pod=pod if peers is None else f"{pod}-w{index}",
        worker=index,
        workers=options.workers,
        peers_dir=peers,
        feedback_max_ids=options.feedback_max_ids,
        feedback_ttl=options.feedback_ttl,
    )
    server = ModelServer(config, store)
    http = server.http_server()
    await http.start(options.host, options.port, reuse_port=peers is not None)
    grpc = None
    if options.grpc_port >= 0:
        from modelops.serving.grpc_server import grpc_server

        grpc = grpc_server(server)
        grpc_port = await grpc.start(options.host, options.grpc_port, reuse_port=peers is not None)
        logger.info("worker %d: gRPC on %s:%d", index, options.host, grpc_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(server.manager.run(), name="routing-apply"),
        asyncio.create_task(source.run(server.manager.submit), name="routing-source"),
        asyncio.create_task(server.sketch_loop(), name="sketches"),
        asyncio.create_task(server.report_loop(), name="pod-report"),
    ]
    if peers is not None:
        tasks.append(asyncio.create_task(server.snapshot_loop(), name="snapshots"))
    logger.info("worker %d listening on %s:%d", index, options.host, options.port)
    await stop.wait()
    logger.info("stopping: draining in-flight requests")
    server.stopping = True
    if grpc is not None:
        # Refuses new RPCs at once, lets those in flight finish, as the HTTP server does.
        await asyncio.gather(http.close(options.drain_timeout), grpc.stop(options.drain_timeout))
    else:
        await http.close(options.drain_timeout)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    written = await server.flush_sketches(final=True)
    await server.withdraw_report()
    server.writer.close()
    logger.info("stopped (%d final sketch window(s) written)", written)
    return 0
