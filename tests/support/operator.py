"""The real operator, as a separate process, pointed at the local control plane."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from modelops.local.s3server import S3Server, free_port

T = TypeVar("T")

UNRUNNABLE_IMAGE = "ghcr.io/modelops-dev/modelops-runtime:0.1.0"
"""The shipped runtime image: the process kubelet runs only ``modelops-runtime:local``, so
pods naming this one wait in ErrImagePull and write nothing to the store. An operator given
it (``MODELOPS_RUNTIME_IMAGE``) lets a test be the only author of pod reports and windows."""


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 60.0, what: str = "condition"
) -> T:
    """Poll until ``probe`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


class OperatorProcess:
    """``python -m modelops run`` with a kubeconfig, store settings and free ports."""

    def __init__(self, kubeconfig: Path, s3: S3Server, log_dir: Path, **env: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MODELOPS_S3_ENDPOINT": s3.endpoint,
            "MODELOPS_BUCKET": "modelops",
            # The image the process kubelet runs (this checkout's Python).
            "MODELOPS_RUNTIME_IMAGE": "modelops-runtime:local",
            "MODELOPS_JOB_POLL_SECONDS": "0.3",
            "MODELOPS_ROLLOUT_POLL_SECONDS": "0.5",
            "MODELOPS_METRICS_PORT": str(self.metrics_port),
            "MODELOPS_HEALTH_PORT": str(free_port()),
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            # One operator per test namespace: nothing to elect, and a Lease shared by every
            # test's operator would make them wait for each other (and a restarted operator for
            # its own expired Lease). tests/faults/test_leader_election.py turns it on.
            "MODELOPS_LEADER_ELECTION": "false",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelops", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.terminate()
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def logs(self) -> str:
        return "\n".join(
            (self.log_dir / f"operator-{i}.log").read_text(errors="replace")
            for i in range(1, self.starts + 1)
        )

    def __repr__(self) -> str:
        return f"OperatorProcess(starts={self.starts}, alive={self.alive()})"


@contextmanager
def supervised(proc: OperatorProcess) -> Iterator[OperatorProcess]:
    """Start the operator; on exit stop it, and fail if it had exited by itself."""
    proc.start()
    yield proc
    crashed = proc.starts and not proc.alive() and proc.process is not None
    proc.stop()
    assert not crashed, f"the operator exited by itself:\n{proc.logs()[-3000:]}"


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in (obj or {}).get("status", {}).get("conditions", []):
        if cond.get("type") == type_:
            return dict(cond)
    return {}
