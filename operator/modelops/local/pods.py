"""One pod of the local cluster: its container run as a local process, probed, restarted.

A :class:`LocalPod` is what the kubelet would do for one Pod: start the container's command
(translated to this machine by a :class:`Launch`), follow its readiness and liveness probes,
restart it per ``restartPolicy`` with a back-off, and describe all of it as a Pod ``status``.
The process kubelet (:mod:`modelops.local.kubelet`) decides which pods run here; a pod only
runs and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from modelops.local import processes

logger = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_MAX = 0.5, 10.0  # the kubelet's 10s..5m, shrunk for a laptop
READINESS_PERIOD_MAX = 0.5  # probe readiness at least this often: pods join Services sooner


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Launch:
    """How to run the container here: the translated command, env, ports and CPUs."""

    command: list[str]
    env: dict[str, str]
    workdir: Path
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> loopback port
    port_names: dict[str, int] = field(default_factory=dict)  # port name -> containerPort
    cpus: frozenset[int] | None = None
    termination_log: Path | None = None

    def local_port(self, port: int | str) -> int | None:
        """Where a probe or Service reaches a container port, by number or by name."""
        number = self.port_names.get(port) if isinstance(port, str) else port
        if number is None and isinstance(port, str) and port.isdigit():
            number = int(port)
        return None if number is None else self.ports.get(number, number)


@dataclass
class Probe:
    path: str
    port: int | str
    period: float
    timeout: float
    initial_delay: float
    failures: int
    successes: int = 1

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None, *, readiness: bool) -> Probe | None:
        if not spec or "httpGet" not in spec:
            return None  # exec and tcpSocket probes are not run here: the container counts
        http = spec["httpGet"]
        period = float(spec.get("periodSeconds", 10))
        return cls(
            path=http.get("path", "/"),
            port=http.get("port", 80),
            period=min(period, READINESS_PERIOD_MAX) if readiness else period,
            timeout=float(spec.get("timeoutSeconds", 1)),
            initial_delay=float(spec.get("initialDelaySeconds", 0)),
            failures=int(spec.get("failureThreshold", 3)),
            successes=int(spec.get("successThreshold", 1)),
        )


class LocalPod:
    """A Pod object's single container, run as a process group of this machine."""

    def __init__(
        self,
        pod: Mapping[str, Any],
        *,
        prepare: Callable[[LocalPod], Any],
        on_change: Callable[[], None],
        runnable: bool,
        image_message: str = "",
        grace_max: float = 10.0,
        pod_ip: str = "127.0.0.1",
        host_ip: str = "127.0.0.1",
    ) -> None:
        self.pod = dict(pod)  # the Pod as created (metadata with uid, spec)
        self.meta: dict[str, Any] = self.pod["metadata"]
        self.spec: dict[str, Any] = self.pod["spec"]
        self.container: dict[str, Any] = self.spec["containers"][0]
        self.pod_ip = pod_ip
        self.host_ip = host_ip
        self.restart_policy = self.spec.get("restartPolicy", "Always")
        self._prepare = prepare  # async: builds the Launch (env needs the API)
        self._on_change = on_change
        self._runnable = runnable
        self._image_message = image_message
        self._grace_max = grace_max
        self.launch: Launch | None = None
        self.phase = "Pending"
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.restarts = 0
        self.ready = False
        self.start_time = now_iso()  # when this kubelet took the pod on (status.startTime)
        self.terminating = False
        self.exit_code: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.version = 0  # bumped on every change of the reported status
        self.reported = -1  # the version last written to the API
        self.created = time.time()
        self._task: asyncio.Task[None] | None = None
        self._transitions: dict[str, tuple[bool, str]] = {}

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def namespace(self) -> str:
        return str(self.meta["namespace"])

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.meta.get("labels") or {})

    @property
    def uid(self) -> str:
        return str(self.meta["uid"])

    @property
    def log_path(self) -> Path | None:
        return None if self.launch is None else self.launch.workdir / "container.log"

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._lifecycle(), name=f"pod {self.name}")

    def _changed(self) -> None:
        self.version += 1
        self._on_change()

    # -- the lifecycle --

    async def _lifecycle(self) -> None:
        if not self._runnable:
            self._wait("ErrImagePull", self._image_message)
            return
        while not self.terminating:
            try:
                self.launch = await self._prepare(self)
                break
            except Exception as exc:  # a missing Secret may appear later: keep trying
                self._wait("CreateContainerConfigError", str(exc))
                await asyncio.sleep(2)
        failures_in_a_row = 0
        while not self.terminating:
            code = await self._run_once()
            if self.terminating:
                break
            again = self.restart_policy == "Always" or (
                self.restart_policy == "OnFailure" and code != 0
            )
            if not again:
                self.phase = "Succeeded" if code == 0 else "Failed"
                self._changed()
                return
            failures_in_a_row = failures_in_a_row + 1 if code != 0 else 0
            delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** max(0, failures_in_a_row - 1))
            self.restarts += 1
            self._wait("CrashLoopBackOff", f"back-off {delay:.1f}s restarting failed container")
            await asyncio.sleep(delay)

    def _wait(self, reason: str, message: str) -> None:
        self.state = {"waiting": {"reason": reason, "message": message}}
        self.ready = False
        self._changed()

    async def _run_once(self) -> int:
        launch = self.launch
        assert launch is not None
        launch.workdir.mkdir(parents=True, exist_ok=True)
        log = (launch.workdir / "container.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *launch.command,
                env=launch.env,
                cwd=launch.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: its children stop with it
                preexec_fn=processes.child_setup(launch.cpus),
            )
        except OSError as exc:
            log.close()
            self._wait("RunContainerError", str(exc))
            return 128
        self.process = process
        processes.track(process.pid, f"pod {self.namespace}/{self.name}")
        started = now_iso()
        self.phase = "Running"
        self.state = {"running": {"startedAt": started}}
        self.ready = self._readiness() is None and self._startup() is None
        self._changed()
        probes = asyncio.create_task(self._run_probes())
        try:
            code = await process.wait()
        finally:
            probes.cancel()
            await asyncio.gather(probes, return_exceptions=True)
            log.close()
            # The leader is gone; anything it left behind in its group goes too.
            processes.signal_group(process.pid, signal.SIGKILL)
            processes.untrack(process.pid)
        self.exit_code = code
        self.ready = False
        terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now_iso(),
        }
        if code < 0:
            terminated["signal"] = -code
        if message := self._termination_message(code):
            terminated["message"] = message
        self.last_state = {"terminated": terminated}
        self.state = {"terminated": terminated}
        self._changed()
        return code

    def _termination_message(self, code: int) -> str:
        launch = self.launch
        text = ""
        if launch and launch.termination_log and launch.termination_log.exists():
            text = launch.termination_log.read_text(errors="replace")
        policy = self.container.get("terminationMessagePolicy", "File")
        if not text.strip() and code != 0 and policy == "FallbackToLogsOnError" and launch:
            lines = (launch.workdir / "container.log").read_text(errors="replace").splitlines()
            text = "\n".join(lines[-80:])
        return text[-4096:]

    # -- probes --

    def _readiness(self) -> Probe | None:
        return Probe.of(self.container.get("readinessProbe"), readiness=True)

    def _liveness(self) -> Probe | None:
        return Probe.of(self.container.get("livenessProbe"), readiness=False)

    def _startup(self) -> Probe | None:
        return Probe.of(self.container.get("startupProbe"), readiness=False)

    async def _run_probes(self) -> None:
        """The kubelet's order: a startupProbe first; readiness and liveness only once it
        has succeeded (a slow start is not a failed liveness check)."""
        startup = self._startup()
        if startup is not None:
            if not await self._started(startup):
                return
            if self._readiness() is None:
                self.ready = True
                self._changed()
        probes = [(self._readiness(), True), (self._liveness(), False)]
        await asyncio.gather(*(self._probe(p, readiness=r) for p, r in probes if p is not None))

    async def _started(self, probe: Probe) -> bool:
        """Run the startup probe until it succeeds (True) or fails ``failureThreshold`` times
        in a row, which restarts the container (False)."""
        assert self.launch is not None
        url = f"http://127.0.0.1:{self.launch.local_port(probe.port)}{probe.path}"
        failures = 0
        await asyncio.sleep(probe.initial_delay)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=probe.timeout)) as s:
            while True:
                if await _http_ok(s, url):
                    return True
                failures += 1
                if failures >= probe.failures:
                    logger.warning("pod %s failed its startup probe: restarting it", self.name)
                    await self._signal_and_wait(self._grace())
                    return False
                await asyncio.sleep(probe.period)

    async def _probe(self, probe: Probe, *, readiness: bool) -> None:
        assert self.launch is not None
        port = self.launch.local_port(probe.port)
        url = f"http://127.0.0.1:{port}{probe.path}"
        timeout = aiohttp.ClientTimeout(total=probe.timeout)
        ok_run = bad_run = 0
        await asyncio.sleep(probe.initial_delay)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                ok = await _http_ok(session, url)
                ok_run, bad_run = (ok_run + 1, 0) if ok else (0, bad_run + 1)
                if readiness:
                    if ok_run >= probe.successes and not self.ready:
                        self.ready = True
                        self._changed()
                    elif bad_run >= probe.failures and self.ready:
                        self.ready = False
                        self._changed()
                elif bad_run >= probe.failures:
                    logger.warning("pod %s failed its liveness probe: restarting it", self.name)
                    await self._signal_and_wait(self._grace())
                    return
                await asyncio.sleep(probe.period)

    # -- stopping --

    def _grace(self, seconds: float | None = None) -> float:
        if seconds is None:
            seconds = float(self.spec.get("terminationGracePeriodSeconds", 30))
        return min(seconds, self._grace_max)

    async def _signal_and_wait(self, grace: float) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        processes.signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            processes.signal_group(process.pid, signal.SIGKILL)
            await process.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Take the pod out of service, then SIGTERM it; SIGKILL after its grace period.

        ``grace`` is the deletion's grace period (the pod's own when None), capped by
        ``grace_max``. The pod ends in a terminal phase: Succeeded if its container exited 0.
        """
        if self.terminating and self._task is None:
            return
        self.terminating = True
        self.ready = False
        self._changed()
        await self._signal_and_wait(self._grace(grace))
        task, self._task = self._task, None
        if task is not None:
            # Let it record the exit; a back-off sleep or a config retry is simply cancelled.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.done:
            self.phase = "Succeeded" if self.exit_code == 0 else "Failed"
            if "terminated" not in self.state:
                self.state = self.last_state or {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container never started before the pod was deleted",
                    }
                }
            self._changed()

    # -- the Pod status --

    def _condition(self, type_: str, ok: bool, reason: str = "") -> dict[str, Any]:
        previous = self._transitions.get(type_)
        if previous is None or previous[0] != ok:
            self._transitions[type_] = previous = (ok, now_iso())
        condition: dict[str, Any] = {
            "type": type_,
            "status": str(ok),
            "lastProbeTime": None,
            "lastTransitionTime": previous[1],
        }
        if reason:
            condition["reason"] = reason
            if reason == "ContainersNotReady":
                condition["message"] = f"containers with unready status: [{self.container['name']}]"
        return condition

    def status(self) -> dict[str, Any]:
        """The Pod ``status`` as the kubelet writes it (one container)."""
        running = "running" in self.state
        unready = "" if self.ready else ("PodCompleted" if self.done else "ContainersNotReady")
        conditions = [
            self._condition("PodReadyToStartContainers", not self.done),
            self._condition("Initialized", True),
            self._condition("Ready", self.ready, unready),
            self._condition("ContainersReady", self.ready, unready),
            self._condition("PodScheduled", True),
        ]
        container_status: dict[str, Any] = {
            "name": self.container["name"],
            "image": self.container.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": running,
            "restartCount": self.restarts,
            **({"containerID": f"local://{self.process.pid}"} if self.process else {}),
            "state": self.state,
            "lastState": self.last_state if self.restarts else {},
        }
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": [container_status],
        }
        return status


async def _http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            await response.read()
            return 200 <= response.status < 400
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
