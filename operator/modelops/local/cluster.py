"""The embedded single-machine cluster: API server, S3 server, the operator and the executor.

``LocalCluster(state_dir).start()`` brings up, in order:

1. the in-process API server (its own thread) with the CRDs, and ``<state_dir>/kubeconfig``;
2. an S3 server (``weed mini``) with the bucket, and the Secret ``modelops-s3`` in ``default``;
3. the process executor (its own thread and event loop), which runs the runtime image's pods
   as local processes and gives Services loopback addresses (``<state_dir>/services.json``);
4. the operator, unchanged: ``python -m modelops run`` with the kubeconfig and short polls.

``stop()`` undoes it all, and is safe to call twice or after a failed start. Every process is
in its own process group and recorded in :mod:`modelops.local.processes`, whose ``atexit``
hook and the kernel's parent-death signal catch whatever an interrupted exit leaves.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import kopf

from modelops.api.crd import KINDS, crd
from modelops.local import processes
from modelops.local.apiserver import ApiServer
from modelops.local.executor import Executor, ExecutorConfig
from modelops.local.s3server import S3Server, free_port
from modelops.storage import ArtifactStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

RUNTIME_IMAGE = "modelops-runtime:local"
BUCKET = "modelops"
SECRET = "modelops-s3"
NAMESPACE = "default"
# Where the operator's default settings say the store is: pods that carry this address (an
# operator configured for a real cluster) reach the local S3 server instead.
IN_CLUSTER_S3 = "minio.modelops-system.svc:9000"


class LocalCluster:
    def __init__(
        self,
        state_dir: Path,
        *,
        runtime_image: str = RUNTIME_IMAGE,
        poll_seconds: float = 0.5,
        operator_env: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.runtime_image = runtime_image
        self.poll_seconds = poll_seconds
        self.operator_env = dict(operator_env or {})
        self.startup_timeout = startup_timeout
        self.api: ApiServer | None = None
        self.s3: S3Server | None = None
        self.executor: Executor | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._log_handler: logging.Handler | None = None

    # -- paths --

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def services_file(self) -> Path:
        return self.state_dir / "services.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def store(self) -> ArtifactStore:
        assert self.s3 is not None, "the cluster is not started"
        return self.s3.store()

    # -- lifecycle --

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for stale in ("pods", "s3", "logs"):  # a fresh cluster: the API server starts empty
            shutil.rmtree(self.state_dir / stale, ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.log_dir / "local.log")
        self._log_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        local_logger = logging.getLogger("modelops.local")
        local_logger.addHandler(self._log_handler)
        local_logger.setLevel(logging.INFO)

        # Nothing here asserts on past requests; a short log keeps every request fast.
        self.api = ApiServer(crds=[crd(kind) for kind in KINDS], request_log_limit=20)
        self.api.emulator.pod_logs = self._pod_log
        self.api.start()
        self.api.write_kubeconfig(self.kubeconfig)

        self.s3 = S3Server(self.state_dir / "s3", startup_timeout=self.startup_timeout)
        self.s3.start()
        if self.s3.process is not None:
            processes.track(self.s3.process.pid, "s3 server")
        self.s3.store().ensure_bucket(BUCKET)

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="local-executor", daemon=True
        )
        self._thread.start()
        self._call(self._start_executor())

        self._start_operator()

    def stop(self) -> None:
        """Stop everything started, newest first; never raises for what is already gone."""
        if self._loop is not None and self._thread is not None:
            try:
                self._call(self._stop_executor(), timeout=60)
            except Exception:
                logger.exception("stopping the executor failed; stopping what remains")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()
        self._loop = self._thread = None
        self.executor = None
        if self.operator is not None:
            processes.kill_group(self.operator.pid, grace=10)
            self.operator.wait()
            self.operator = None
        if self.s3 is not None:
            pid = self.s3.process.pid if self.s3.process else None
            self.s3.stop()
            if pid is not None:
                processes.untrack(pid)
            self.s3 = None
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self._log_handler is not None:
            logging.getLogger("modelops.local").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _pod_log(self, namespace: str, name: str) -> Path | None:
        return self.state_dir / "pods" / namespace / name / "container.log"

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the executor's loop and wait for its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout if timeout is not None else self.startup_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _start_executor(self) -> None:
        assert self.api is not None and self.s3 is not None
        self.executor = Executor(
            ExecutorConfig(
                api_url=self.api.url,
                kubeconfig=self.kubeconfig,
                state_dir=self.state_dir,
                runtime_image=self.runtime_image,
                aliases={IN_CLUSTER_S3: self.s3.endpoint},
                services_file=self.services_file,
            )
        )
        await self.executor.start()
        assert self.executor.cluster is not None
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "type": "Opaque",
            "data": {
                "AWS_ACCESS_KEY_ID": _b64(self.s3.access_key),
                "AWS_SECRET_ACCESS_KEY": _b64(self.s3.secret_key),
            },
        }
        await self.executor.cluster.create(secret)

    async def _stop_executor(self) -> None:
        if self.executor is not None:
            await self.executor.stop()

    def _start_operator(self) -> None:
        assert self.s3 is not None
        health = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MODELOPS_S3_ENDPOINT": self.s3.endpoint,
            "MODELOPS_BUCKET": BUCKET,
            "MODELOPS_CREDENTIALS_SECRET": SECRET,
            "MODELOPS_RUNTIME_IMAGE": self.runtime_image,
            "MODELOPS_JOB_POLL_SECONDS": str(self.poll_seconds),
            "MODELOPS_ROLLOUT_POLL_SECONDS": str(self.poll_seconds),
            "MODELOPS_DRIFT_POLL_SECONDS": str(self.poll_seconds),
            "MODELOPS_METRICS_PORT": str(free_port()),
            "MODELOPS_HEALTH_PORT": str(health),
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "PYTHONUNBUFFERED": "1",
            **self.operator_env,
        }
        with (self.log_dir / "operator.log").open("ab") as log:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "modelops", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=processes.child_setup(),
            )
        processes.track(self.operator.pid, "operator")
        self._wait_healthy(f"http://127.0.0.1:{health}/healthz")

    def _wait_healthy(self, url: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.operator is not None and self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited: see {self.log_dir / 'operator.log'}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the operator was not healthy in {self.startup_timeout}s")

    # -- what the demo, the tests and users need --

    def failure(self) -> str | None:
        """Why the cluster cannot work any more (a process it needs exited), or None."""
        if self.operator is not None and self.operator.poll() is not None:
            return f"the operator exited ({self.operator.returncode}): see {self.log_dir}"
        if (
            self.s3 is not None
            and self.s3.process is not None
            and self.s3.process.poll() is not None
        ):
            return f"the S3 server exited: see {self.s3.data_dir / 'weed.log'}"
        if self._thread is not None and not self._thread.is_alive():
            return "the executor's thread ended"
        return None

    def connection(self) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=self.api_url, insecure=True)

    @property
    def api_url(self) -> str:
        assert self.api is not None, "the cluster is not started"
        return self.api.url

    def service_url(self, name: str, namespace: str = NAMESPACE, port: int | None = None) -> str:
        """``http://127.0.0.1:<port>`` of a Service, once the executor has given it one."""
        assert self.executor is not None, "the cluster is not started"
        address = self.executor.service_address(namespace, name, port)
        if address is None:
            raise LookupError(f"service {namespace}/{name} has no local address (yet)")
        return f"http://{address}"

    def info(self) -> dict[str, Any]:
        """How to reach everything, as ``modelops local up`` writes it to ``local.json``."""
        assert self.s3 is not None and self.api is not None
        return {
            "pid": os.getpid(),
            "api": self.api.url,
            "kubeconfig": str(self.kubeconfig),
            "services": str(self.services_file),
            "s3": {
                "endpoint": self.s3.endpoint,
                "bucket": BUCKET,
                "accessKey": self.s3.access_key,
                "secretKey": self.s3.secret_key,
            },
            "runtimeImage": self.runtime_image,
            "logs": str(self.log_dir),
        }

    def write_info(self) -> Path:
        path = self.state_dir / "local.json"
        path.write_text(json.dumps(self.info(), indent=2) + "\n")
        return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
