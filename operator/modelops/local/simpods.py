"""No-process pods: the process kubelet's mode for scale benchmarks.

A thousand serving pods cannot run as processes on one machine, yet the operator must see
what they would show it. With ``KubeletConfig(simulation=Simulation(...))`` the process
kubelet (:mod:`modelops.local.kubelet`) admits every pod bound to its node as a
:class:`SimulatedPod`: ``Running`` and ``Ready`` at once, no process, no probes; deleted, it
ends ``Succeeded`` (exit code 0). Pods of other kinds (a Job's, say) run until deleted.

Serving pods (labels ``app.kubernetes.io/component=server`` and ``modelops.dev/deployment``,
see :mod:`modelops.resources.serving`) also write to the store what
:class:`modelops.serving.server.Server` writes, with the pod's own store endpoint and
credentials (its env, from its Secret):

- the pod report ``<ns>/serving/<deployment>/pods/<pod>.json`` (``pod``, ``worker``,
  ``time``, ``versions``, ``loaded``, ``failed``): at start, at once after each change of the
  routing table, then every ``report_period`` seconds; deleted when the pod stops;
- every ``sketch_interval`` seconds (windows end on multiples of it, as the server's do), for
  each version of the table with a weight above 0, a sketch window
  ``<ns>/sketches/<deployment>/<version>/<start>-<pod>.json`` (:mod:`modelops.serving.sketches`):
  ``round(requests_per_second * interval * weight / 100)`` rows drawn from the version's
  reference profile (numeric features by bin, categorical ones by category, both weighted by
  the profile's counts; predicted classes likewise) and counted by ``Sketch.update``. A
  version marked with :meth:`PodSimulator.drift` draws shifted rows instead (every numeric
  value moved by its range plus three standard deviations, every category an unseen one).

The routing table is read from the ConfigMap named by ``MODELOPS_ROUTING_CONFIGMAP``, as the
server does, but through one watch of every serving ConfigMap shared by all pods (with the
``reader`` identity), not one watch per pod with the pod's token: the API server's cost of the
pods' own watches is not reproduced.

Not simulated: model loading (a version is reported loaded as soon as its table lists it),
request latency (every request in the 5 ms bucket), errors (none), quality objects, and
Services (no loopback proxies: there is nothing to proxy to). ``stats`` says whether the
simulation kept up: a round of windows that took longer than the interval is counted late.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import numpy as np
import numpy.typing as npt
import orjson

from modelops.controllers.cluster import ApiError, Cluster
from modelops.drift.sketch import Sketch
from modelops.local.informer import Informer
from modelops.local.podenv import PodSpecError, container_env, referenced_secrets
from modelops.local.pods import LocalPod, now_iso
from modelops.resources.serving import DEPLOYMENT_LABEL, ROUTING_KEY
from modelops.serving.metrics import LATENCY_BUCKETS, bucket_key
from modelops.storage import ArtifactStore, Location

__all__ = ["PodSimulator", "SimulatedPod", "Simulation", "SimulationStats", "latency_buckets"]

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
COMPONENT_LABEL = "app.kubernetes.io/component"
SERVER_COMPONENT = "server"
TICK = 0.2  # seconds between the loop's looks at pods whose table changed
LATENCY_SECONDS = 0.005  # the bucket every simulated request falls in
DRIFTED_CATEGORY = "__drifted__"


@dataclass(frozen=True)
class Simulation:
    """What the no-process mode needs and how much traffic its serving pods pretend to see.

    ``reader_cert``/``reader_key``: an identity that may list and watch ConfigMaps in every
    namespace (the shared routing-table watch). ``requests_per_second`` is per serving pod,
    split between versions by weight. ``sketch_interval`` (seconds) is the server's
    ``--sketch-interval`` default. ``report_period`` (seconds) is longer than the server's 2 s:
    a report changes only with the table (and is then written at once), and the operator
    trusts one for 30 s, so the period only sets the store's write load. ``concurrency``
    bounds the store writes in flight.
    """

    reader_cert: Path
    reader_key: Path
    requests_per_second: float = 20.0
    sketch_interval: float = 5.0
    report_period: float = 10.0
    concurrency: int = 8
    seed: int = 0


@dataclass
class SimulationStats:
    """Counts since start (objects written, failed writes, window rounds, late ones, the
    slowest round's seconds) and the serving pods written for now."""

    reports: int = 0
    windows: int = 0
    deleted: int = 0
    errors: int = 0
    rounds: int = 0
    late_rounds: int = 0
    slowest_round: float = 0.0  # seconds
    serving_pods: int = 0


@dataclass
class _Serving:
    """What one serving pod needs to write: where, as whom, and which table it reads."""

    namespace: str
    pod: str
    deployment: str
    config_map: str
    store: ArtifactStore
    bucket: str
    reported: float = 0.0  # time.monotonic() of the last report


class SimulatedPod(LocalPod):
    """A pod that is Running and Ready without a process (see the module docstring)."""

    def __init__(self, pod: Mapping[str, Any], *, simulator: PodSimulator, **kwargs: Any) -> None:
        super().__init__(pod, **kwargs)
        self._simulator = simulator

    async def _lifecycle(self) -> None:
        while not self.terminating:
            try:
                await self._simulator.add(self)
                break
            except ApiError as exc:
                # The Node authorizer lets the node read the pod's Secret only once it has
                # seen the binding: a kubelet retries, as LocalPod does.
                self._wait("CreateContainerConfigError", str(exc))
                await asyncio.sleep(1)
            except (PodSpecError, KeyError, ValueError) as exc:
                logger.warning("simulated pod %s/%s writes nothing: %s", *self.key, exc)
                break
        if self.terminating:
            return
        self.phase = "Running"
        self.state = {"running": {"startedAt": now_iso()}}
        self.ready = True
        self._changed()

    async def stop(self, grace: float | None = None) -> None:
        """Withdraw its report, then end ``Succeeded`` with exit code 0 (no process to stop);
        one that never started ends as LocalPod's do."""
        if not self.terminating:
            await self._simulator.remove(self)
        if "running" in self.state:
            self.exit_code = 0
            started = self.state["running"]["startedAt"]
            self.state = {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": started,
                    "finishedAt": now_iso(),
                }
            }
        await super().stop(grace)


class _Rows:
    """Random rows of one reference profile (and the shifted rows of a drifted version)."""

    def __init__(self, profile: Mapping[str, Any], rng: np.random.Generator) -> None:
        self.profile = profile
        self.rng = rng
        self.features: list[tuple[str, str, npt.NDArray[Any], npt.NDArray[np.float64]]] = []
        self.shift: dict[str, float] = {}
        for spec in profile["signature"]:
            name = str(spec["name"])
            feature = profile["features"][name]
            if feature["kind"] == "numeric":
                values, weights = _numeric_support(feature)
                spread = float(feature.get("max", 0.0)) - float(feature.get("min", 0.0))
                self.shift[name] = spread + 3 * float(feature.get("std", 0.0)) + 1.0
                self.features.append((name, "numeric", values, weights))
            else:
                values, weights = _category_support(feature)
                self.features.append((name, "categorical", values, weights))
        predictions = profile.get("predictions")
        self.classes = _category_support(predictions) if predictions else None

    def sketch(self, n: int, start: float, *, drifted: bool) -> Sketch:
        """A sketch of ``n`` rows counted against the profile."""
        sketch = Sketch.empty(self.profile, start=start)
        if n <= 0:
            return sketch
        columns: dict[str, npt.NDArray[Any]] = {}
        for name, kind, values, weights in self.features:
            drawn = self.rng.choice(values, size=n, p=weights)
            if drifted and kind == "numeric":
                drawn = drawn + self.shift[name]
            elif drifted:
                drawn = np.full(n, DRIFTED_CATEGORY, dtype=object)
            columns[name] = drawn
        predicted = None
        if self.classes is not None:
            predicted = self.rng.choice(self.classes[0], size=n, p=self.classes[1])
        sketch.update(columns, predicted)
        return sketch


def _numeric_support(feature: Mapping[str, Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Values standing for each bin and their probabilities: bin ``k`` (1..m-1) holds
    ``edges[k-1] <= x < edges[k]`` and is drawn at its midpoint (exactly at ``edges[k-1]``
    when the profile kept every distinct value); the open tails at their edge."""
    edges = np.asarray(feature.get("edges") or [0.0], dtype=np.float64)
    counts = np.asarray(feature.get("counts") or [0, 1], dtype=np.float64)
    low = np.concatenate(([edges[0]], edges))
    if feature.get("exact", True):
        values = low
    else:
        high = np.concatenate((edges, [edges[-1]]))
        values = (low + high) / 2
    return values, _probabilities(counts)


def _category_support(feature: Mapping[str, Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    categories = list(feature.get("categories") or []) or ["?"]
    counts = np.asarray(feature.get("counts") or [1] * len(categories), dtype=np.float64)
    return np.asarray(categories, dtype=object), _probabilities(counts)


def _probabilities(counts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    total = float(counts.sum())
    if total <= 0:
        return np.full(counts.size, 1.0 / counts.size)
    result: npt.NDArray[np.float64] = counts / total
    return result


def latency_buckets(requests: int) -> dict[str, int]:
    """Cumulative counts per upper bound (Prometheus ``le``) with every request at 5 ms."""
    return {
        bucket_key(bound): requests if bound >= LATENCY_SECONDS else 0
        for bound in (*LATENCY_BUCKETS, float("inf"))
    }


class PodSimulator:
    """The serving pods' writes, for every :class:`SimulatedPod` of one kubelet.

    ``node`` is the kubelet's own client (it reads the Secrets a pod's env refers to, as the
    Node authorizer allows); ``aliases`` maps in-cluster ``host:port`` to local ones (the
    store), read (not copied) when each serving pod is admitted. Use from the kubelet's event
    loop; :meth:`drift` may be called from any thread.
    """

    def __init__(
        self,
        config: Simulation,
        *,
        api_url: str,
        ca_file: Path,
        node: Cluster,
        aliases: Mapping[str, str],
    ) -> None:
        self.config = config
        self.stats = SimulationStats()
        self._node = node
        self._aliases = aliases
        self._reader = Cluster(
            kopf.ConnectionInfo(
                server=api_url,
                ca_path=str(ca_file),
                certificate_path=str(config.reader_cert),
                private_key_path=str(config.reader_key),
            )
        )
        self._tables = Informer(
            self._reader,
            "v1",
            "ConfigMap",
            self._on_table,
            label_selector=f"{COMPONENT_LABEL}={SERVER_COMPONENT},{DEPLOYMENT_LABEL}",
        )
        self._pods: dict[str, _Serving] = {}  # by pod uid
        self._stores: dict[tuple[str, str, str, bool], ArtifactStore] = {}
        self._rows: dict[str, _Rows] = {}  # by profile sha256
        self._drifted: set[tuple[str, str, str | None]] = set()
        self._changed: set[tuple[str, str]] = set()  # (namespace, ConfigMap) changed
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(config.concurrency)
        self._rng = np.random.default_rng(config.seed)
        self._tasks: list[asyncio.Task[None]] = []

    # -- running --

    async def start(self) -> None:
        """Watch the serving ConfigMaps; start the report and window loops."""
        self._tables.start()
        await self._tables.synced.wait()
        self._tasks = [
            asyncio.create_task(self._report_loop(), name="simulated reports"),
            asyncio.create_task(self._window_loop(), name="simulated windows"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._tables.stop()
        await self._reader.close()

    def pod(self, obj: Mapping[str, Any], **kwargs: Any) -> SimulatedPod:
        """A :class:`SimulatedPod` for the kubelet to admit (its runnable flag is ignored)."""
        kwargs["runnable"] = True
        return SimulatedPod(obj, simulator=self, **kwargs)

    def drift(self, namespace: str, deployment: str, version: str | None = None) -> None:
        """From now on the version's windows (every version's with None) hold drifted rows."""
        self._drifted.add((namespace, deployment, version))

    def undrift(self, namespace: str, deployment: str, version: str | None = None) -> None:
        self._drifted.discard((namespace, deployment, version))

    # -- pods --

    async def add(self, pod: SimulatedPod) -> None:
        """Start writing for ``pod`` if it is a serving pod. Raises PodSpecError (a Secret
        its env needs is missing), KeyError or ValueError (no routing ConfigMap named)."""
        labels = pod.labels
        if labels.get(COMPONENT_LABEL) != SERVER_COMPONENT or DEPLOYMENT_LABEL not in labels:
            return
        container = pod.container
        secrets = await referenced_secrets(self._node, pod.namespace, container)
        fields = {
            "metadata": pod.meta,
            "spec": pod.spec,
            "status": {"podIP": pod.pod_ip, "hostIP": pod.host_ip},
        }
        env = container_env(container, secrets, {}, fields)
        endpoint = env["MODELOPS_S3_ENDPOINT"]
        for alias, target in self._aliases.items():
            endpoint = endpoint.replace(alias, target)
        secure = env.get("MODELOPS_S3_SECURE", "false").lower() == "true"
        access, secret = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        key = (endpoint, access, secret, secure)
        if key not in self._stores:
            self._stores[key] = ArtifactStore(endpoint, access, secret, secure=secure)
        if pod.terminating:
            return
        self._pods[pod.uid] = _Serving(
            namespace=pod.namespace,
            pod=env.get("POD_NAME", pod.name),
            deployment=labels[DEPLOYMENT_LABEL],
            config_map=env["MODELOPS_ROUTING_CONFIGMAP"],
            store=self._stores[key],
            bucket=env.get("MODELOPS_BUCKET", "modelops"),
        )
        self.stats.serving_pods = len(self._pods)
        self._changed.add((pod.namespace, self._pods[pod.uid].config_map))
        self._wake.set()

    async def remove(self, pod: SimulatedPod) -> None:
        """Stop writing for ``pod`` and delete its report (as a stopping server does)."""
        serving = self._pods.pop(pod.uid, None)
        self.stats.serving_pods = len(self._pods)
        if serving is None:
            return
        loc = Location(serving.bucket, _report_key(serving))
        try:
            await asyncio.to_thread(serving.store.delete_prefix, loc)
            self.stats.deleted += 1
        except Exception as exc:
            self.stats.errors += 1
            logger.warning("could not withdraw the report of %s: %s", serving.pod, exc)

    def _on_table(self, _type: str, obj: Obj) -> None:
        self._changed.add(Informer.key(obj))
        self._wake.set()

    def _table(self, serving: _Serving) -> dict[str, Any] | None:
        cm = self._tables.objects.get((serving.namespace, serving.config_map))
        text = ((cm or {}).get("data") or {}).get(ROUTING_KEY)
        if text is None:
            return None
        try:
            table: dict[str, Any] = json.loads(text)
        except ValueError:
            return None
        return table

    # -- reports --

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            changed, self._changed = self._changed, set()
            now = time.monotonic()
            due = [
                s
                for s in list(self._pods.values())
                if (s.namespace, s.config_map) in changed
                or now - s.reported >= self.config.report_period
            ]
            await asyncio.gather(*(self._report(s) for s in due))

    async def _report(self, serving: _Serving) -> None:
        table = self._table(serving)
        if table is None:
            return  # the server writes no report before it has a table
        names = sorted(str(v["name"]) for v in table.get("versions") or [])
        report = {
            "pod": serving.pod,
            "worker": 0,
            "time": time.time(),
            "versions": names,
            "loaded": names,
            "failed": {},
        }
        serving.reported = time.monotonic()
        loc = Location(serving.bucket, _report_key(serving))
        if await self._put(serving.store, loc, orjson.dumps(report)):
            self.stats.reports += 1

    # -- sketch windows --

    async def _window_loop(self) -> None:
        interval = self.config.sketch_interval
        start = time.time()
        while True:
            await asyncio.sleep(interval - time.time() % interval)
            end = time.time()
            began = time.monotonic()
            writes = [
                self._window(s, version, start, end)
                for s in list(self._pods.values())
                for version in (self._table(s) or {}).get("versions") or []
                if int(version.get("weight") or 0) > 0
            ]
            await asyncio.gather(*writes)
            start = end
            took = time.monotonic() - began
            self.stats.rounds += 1
            self.stats.slowest_round = max(self.stats.slowest_round, took)
            if took > interval:
                self.stats.late_rounds += 1

    async def _window(
        self, serving: _Serving, version: Mapping[str, Any], start: float, end: float
    ) -> None:
        name = str(version["name"])
        weight = int(version.get("weight") or 0)
        requests = round(self.config.requests_per_second * (end - start) * weight / 100)
        if requests <= 0 or not version.get("profile"):
            return
        try:
            rows = await self._profile_rows(serving.store, version["profile"])
        except Exception as exc:
            self.stats.errors += 1
            logger.warning("no profile for %s: %s", name, exc)
            return
        drifted = any(
            (serving.namespace, serving.deployment, v) in self._drifted for v in (name, None)
        )
        sketch = rows.sketch(requests, start, drifted=drifted)
        sketch.end = end
        payload = sketch.to_dict() | {
            "deployment": serving.deployment,
            "version": name,
            "pod": serving.pod,
            "start": start,
            "end": end,
            "requests": requests,
            "errors": 0,
            "latency_buckets": latency_buckets(requests),
        }
        key = f"{serving.namespace}/sketches/{serving.deployment}/{name}/{int(start)}-{serving.pod}"
        loc = Location(serving.bucket, key + ".json")
        if await self._put(serving.store, loc, orjson.dumps(payload)):
            self.stats.windows += 1

    async def _profile_rows(self, store: ArtifactStore, ref: Mapping[str, Any]) -> _Rows:
        digest = str(ref["sha256"])
        if digest not in self._rows:
            data = await asyncio.to_thread(store.get_verified, Location.parse(ref["uri"]), digest)
            self._rows[digest] = _Rows(json.loads(data), self._rng)
        return self._rows[digest]

    async def _put(self, store: ArtifactStore, loc: Location, data: bytes) -> bool:
        async with self._limit:
            try:
                await asyncio.to_thread(store.put, loc, data, "application/json")
            except Exception as exc:
                self.stats.errors += 1
                logger.warning("could not write %s: %s", loc.uri, exc)
                return False
        return True


def _report_key(serving: _Serving) -> str:
    return f"{serving.namespace}/serving/{serving.deployment}/pods/{serving.pod}.json"
