"""The demo's story, also asserted by the end-to-end tests.

Train ``<model>-v1`` (TrainingRun -> Job -> ModelVersion), serve it (Deployment -> pods ->
Service), send traffic, train ``<model>-v2``, walk it through the canary steps, then either

- ``rollback``: at the second step the canary's traffic drifts; the DriftMonitor fires and
  the Deployment rolls the canary back to v1, with the monitor's reason; or
- ``promote``: the traffic stays clean and v2 is promoted.

With ``quality_act`` (what ``make demo`` runs), a second act follows the rollback: the concept
drifts (the same flowers, named by a new guide: the inputs do not change, the true labels do),
clients send the true labels back to the feedback endpoint, a DriftMonitor with a quality rule
finds the stable version's live accuracy fallen below its held-out accuracy and retrains on the
fresh labelled data under a dataset prefix, and the new version is canaried with quality
analysis (non-inferiority to stable on the live labels before each step and before promotion)
and promoted.

Every stage is timed; every answer the clients got is kept; the end checks that the clients
saw no failed request (nor failed feedback call) and that, after the rollback (or promotion),
every answer comes from the version that should serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
import kopf
import pandas as pd
from sklearn.datasets import load_iris

from modelops import API_VERSION
from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.cluster import NAMESPACE
from modelops.local.traffic import Answer, Feedback, Traffic, TrafficStats
from modelops.local.view import KINDS, View, number, p_value
from modelops.resources.training import TRIGGER_ANNOTATION
from modelops.storage import ArtifactStore, Location

Obj = dict[str, Any]
DATASET_KEY = "datasets/iris.csv"
TARGET = "species"


def iris_frame() -> pd.DataFrame:
    """scikit-learn's bundled iris (150 rows), with plain column names and species as text."""
    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame[TARGET] = [data.target_names[i] for i in frame.pop("target")]
    return frame


NARROW_SEPAL_CM = 3.0
"""The new guide's line: a non-setosa iris with sepals narrower than this is virginica."""


def relabelled(frame: pd.DataFrame) -> pd.DataFrame:
    """The same flowers named by a new guide (concept drift: the measurements do not change,
    what they mean does): setosa stay setosa; of the others, those with sepals narrower than
    :data:`NARROW_SEPAL_CM` are virginica, the rest versicolor. 63 of iris's 150 flowers get
    another name: a model of the old names gets about 57% of the new ones right, one fitted
    on the new names nearly all (``tests/unit/test_local_demo.py``)."""
    out = frame.copy()
    others = out[TARGET] != "setosa"
    narrow = out["sepal_width"] < NARROW_SEPAL_CM
    out.loc[others & narrow, TARGET] = "virginica"
    out.loc[others & ~narrow, TARGET] = "versicolor"
    return out


class Backend(Protocol):
    """Where the story runs: the local cluster, or a real one (tests/kind)."""

    def connection(self) -> kopf.ConnectionInfo:
        """How to reach the Kubernetes API."""

    def store(self) -> ArtifactStore:
        """The object store the operator uses (for the dataset)."""

    def service_url(self, name: str, namespace: str = NAMESPACE, port: int | None = None) -> str:
        """``http://host:port`` of a Service; LookupError while it has none."""


# -- the resources --------------------------------------------------------------------------------


def training_spec(model: str, estimator: str, params: Mapping[str, Any], dataset_uri: str) -> Obj:
    """A TrainingRun's spec (also a DriftMonitor's retrain template)."""
    return {
        "model": model,
        "dataset": {"uri": dataset_uri, "target": TARGET},
        "estimator": {"name": estimator, "params": dict(params)},
        "seed": 42,
        "testSize": 0.25,
        "register": {"minMetrics": {"accuracy": 0.85}},
        "backoffLimit": 0,
    }


def training_run(
    name: str, model: str, estimator: str, params: Mapping[str, Any], bucket: str
) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": training_spec(model, estimator, params, f"s3://{bucket}/{DATASET_KEY}"),
    }


def deployment(name: str, model: str, steps: list[Obj], monitor: str, replicas: int) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": model,
            "stable": {"version": "latest"},
            "canary": {"version": "latest", "steps": steps},
            "gates": {"accuracy": 0.85},
            "rollback": {"driftMonitors": [monitor], "maxErrorRate": 0.05, "minSamples": 50},
            "replicas": replicas,
            # A CPU limit of 1: each pod's server runs one worker process (it sizes its workers
            # by the CPUs it may use), which keeps the demo light on a small machine.
            "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}},
        },
    }


def drift_monitor(name: str, deployment_name: str) -> Obj:
    # A short window and interval so the demo is quick: windows of the canary's live data older
    # than 20s drop out, so the drift of its newest traffic is not diluted for long.
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "deployment": deployment_name,
            "traffic": "auto",
            "window": "20s",
            "interval": "2s",
            "minSamples": 50,
            "driftShare": 0.5,
            "action": "rollback",
        },
    }


FOREST = ("RandomForestClassifier", {"n_estimators": 30, "max_depth": 4})
MAX_DEGRADATION = 0.1
QUALITY = {"metric": "accuracy", "maxDegradation": MAX_DEGRADATION, "baseline": "training"}
"""The quality rule of the second act: fire when stable's live accuracy is shown more than ten
points below its held-out accuracy."""
QUALITY_LABELS = 60
ANALYSIS = {"metric": "accuracy", "margin": 0.05, "minLabels": 40, "window": "30s"}
"""The canary analysis of the second act: before each step and before promotion, the canary
must be shown no more than five accuracy points worse than stable on the live labels."""


def quality_monitor(name: str, deployment_name: str, model: str, data_prefix: str) -> Obj:
    """A DriftMonitor on stable's live quality that retrains, on the newest dataset object
    under ``data_prefix`` (``s3://bucket/key/``), when it finds stable underperforming."""
    estimator, params = FOREST
    # Labels arrive a second or more after the answers (and reach the operator with the pods'
    # next quality objects, every 5s): a 30s window keeps only the new world's labels; the
    # cooldown keeps stable's lasting underperformance (until the promotion) from retraining
    # again; onNewData lets the template name a prefix.
    return {
        "apiVersion": API_VERSION,
        "kind": "DriftMonitor",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "deployment": deployment_name,
            "traffic": "stable",
            "window": "20s",
            "interval": "2s",
            "minSamples": 50,
            "quality": {**QUALITY, "minLabels": QUALITY_LABELS, "window": "30s"},
            "action": "retrain",
            "retrain": {
                "template": training_spec(model, estimator, params, data_prefix),
                "onNewData": True,
                "cooldown": "10m",
            },
        },
    }


# -- the second act ------------------------------------------------------------------------------


@dataclass
class SecondAct:
    """What the second act saw: the concept drift, stable's quality falling, the retrain the
    quality monitor started, the new version's canary with quality analysis, its promotion."""

    started: float  # time.time() when the labels changed
    stable: str  # the version whose quality falls
    dataset_uri: str  # the fresh labelled data uploaded
    fell: Obj = field(default_factory=dict)  # the monitor's status.quality when it fired
    fired: str = ""  # the monitor's message then
    fired_at: float | None = None
    client_accuracy: tuple[float | None, int] = (None, 0)  # stable's, as the clients saw it
    retrain: str = ""  # the TrainingRun the monitor started
    version: str = ""  # the version it registered
    promotion: Obj = field(default_factory=dict)  # the Deployment's history entry
    after: list[Answer] = field(default_factory=list)
    finished_at: float | None = None  # promotion observed (time.time())
    recovered: Obj = field(default_factory=dict)  # the monitor's status.quality on the new stable

    @property
    def fall_to_promotion(self) -> float | None:
        if self.finished_at is None:
            return None
        return self.finished_at - self.started


# -- the result -----------------------------------------------------------------------------------


@dataclass
class Result:
    outcome: Literal["rollback", "promote"]
    model: str
    started: float  # time.time()
    stages: list[tuple[str, float]] = field(default_factory=list)  # (stage, time.time())
    traffic: TrafficStats = field(default_factory=TrafficStats)
    after: list[Answer] = field(default_factory=list)  # the answers checked at the end
    expected_version: str = ""  # who must answer after the rollback or promotion
    finished_at: float | None = None  # rollback or promotion observed (time.time())
    reason: str = ""  # the Deployment's last history entry: reason and message
    objects: dict[str, dict[str, Obj]] = field(default_factory=dict)  # final, by kind and name
    second: SecondAct | None = None  # with ``quality_act``

    def at(self, stage: str) -> float | None:
        return next((t for s, t in self.stages if s == stage), None)

    @property
    def drift_to_rollback(self) -> float | None:
        first = self.traffic.first_drifted
        if first is None or self.finished_at is None:
            return None
        return self.finished_at - first

    def problems(self) -> list[str]:
        """What went wrong for the clients; empty when the story ended as it should."""
        found = []
        if errors := self.traffic.errors():
            found.append(
                f"{len(errors)} failed requests, e.g. {errors[0].error or errors[0].status}"
            )
        if failed := self.traffic.feedback_errors():
            found.append(f"{len(failed)} failed feedback calls, e.g. {failed[0].error}")
        found += _wrong_answers(self.after, self.expected_version, "the end of act 1")
        if self.second is not None:
            found += _wrong_answers(self.second.after, self.second.version, "the promotion")
        return found


def _wrong_answers(after: list[Answer], expected: str, when: str) -> list[str]:
    wrong = [a for a in after if a.version != expected]
    if not after:
        return [f"no answers were checked after {when}"]
    if wrong:
        return [
            f"{len(wrong)}/{len(after)} answers after {when} came from "
            f"{sorted({str(a.version) for a in wrong})}, not {expected}"
        ]
    return []


class ScenarioError(Exception):
    """A stage did not happen in time (the message says which, and what was seen last)."""


# -- the runner -----------------------------------------------------------------------------------


class Scenario:
    def __init__(
        self,
        cluster: Backend,
        view: View,
        *,
        outcome: Literal["rollback", "promote"] = "rollback",
        model: str = "iris",
        replicas: int = 2,
        rate: float = 40.0,
        stage_timeout: float = 150.0,
        check_requests: int = 200,
        quality_act: bool = False,
    ) -> None:
        self.cluster = cluster
        self.view = view
        self.outcome = outcome
        self.model = model
        self.replicas = replicas
        self.rate = rate
        self.stage_timeout = stage_timeout
        self.check_requests = check_requests
        self.quality_act = quality_act
        self.deployment = model
        self.monitor = f"{model}-drift"
        self.quality_monitor = f"{model}-quality"
        self.runs = (f"{model}-logreg", f"{model}-forest")
        self.versions = (f"{model}-v1", f"{model}-v2")
        self.fresh = f"{model}-v3"  # what the second act's retraining registers (next number)
        slow = "2m" if outcome == "rollback" else "5s"
        self.steps = [{"weight": 20, "pause": "10s"}, {"weight": 50, "pause": slow}]
        self.result = Result(outcome, model, time.time())
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self.traffic: Traffic | None = None
        self.feedback: Feedback | None = None
        self._client: Cluster | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._history_seen = 0
        self._phases: dict[tuple[str, str], str] = {}

    # -- helpers --

    def mark(self, stage: str, text: str = "", style: str = "bold") -> None:
        """A stage reached: timed under its short name, narrated with ``text`` (if the objects'
        own narration does not tell it already)."""
        self.result.stages.append((stage, time.time()))
        if text:
            self.view.say(text, style)

    def obj(self, kind: str, name: str) -> Obj:
        return self.objects[kind].get(name) or {}

    def status(self, kind: str, name: str) -> Obj:
        return dict(self.obj(kind, name).get("status") or {})

    async def until(self, what: str, probe: Callable[[], Any]) -> Any:
        """Wait (on the watcher's snapshots) until ``probe()`` is truthy."""
        deadline = time.monotonic() + self.stage_timeout
        while time.monotonic() < deadline:
            failure = getattr(self.cluster, "failure", None)  # a local cluster can tell
            if failure is not None and (why := failure()):
                raise ScenarioError(f"while waiting for {what}: {why}")
            if self._watcher is not None and self._watcher.done():
                self._watcher.result()  # raises what stopped it
                raise ScenarioError("the status watcher stopped")
            if value := probe():
                return value
            await asyncio.sleep(0.1)
        seen = {
            k: {n: o.get("status") for n, o in objs.items()} for k, objs in self.objects.items()
        }
        raise ScenarioError(f"timed out after {self.stage_timeout:.0f}s waiting for {what}; {seen}")

    async def _watch(self) -> None:
        """Poll the four kinds; keep the snapshot, the traffic's canary weight and the story."""
        assert self._client is not None
        while True:
            try:
                for kind in KINDS:
                    items = await self._client.list(API_VERSION, kind, NAMESPACE, {})
                    self.objects[kind] = {
                        o["metadata"]["name"]: o for o in items if _model_of(kind, o) == self.model
                    }
            except (ApiError, aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)  # a hiccup of the API: the next poll sees the state
                continue
            dep = self.status("Deployment", self.deployment)
            if self.traffic is not None:
                canary_on = dep.get("phase") == "Progressing" and dep.get("step") is not None
                self.traffic.canary_weight = int(dep.get("canaryWeight") or 0) if canary_on else 0
            self._narrate()
            listed = {kind: list(objs.values()) for kind, objs in self.objects.items()}
            self.view.update(listed, self.traffic.stats if self.traffic is not None else None)
            await asyncio.sleep(0.25)

    def _narrate(self) -> None:
        history = self.status("Deployment", self.deployment).get("history") or []
        for entry in history[self._history_seen :]:
            style = "red" if entry["event"] in ROLLBACK_EVENTS else "green"
            self.view.say(f"Deployment {self.deployment}: {entry['message']}", style)
        self._history_seen = max(self._history_seen, len(history))
        for kind in ("TrainingRun", "ModelVersion", "DriftMonitor"):
            for name, obj in self.objects[kind].items():
                status = obj.get("status") or {}
                phase = status.get("phase")
                if not phase or self._phases.get((kind, name)) == phase:
                    continue
                self._phases[(kind, name)] = phase
                if kind == "DriftMonitor":
                    if phase in ("Drifted", "Underperforming"):
                        self.view.say(
                            f"DriftMonitor {name} {phase}: {status.get('message')}", "red"
                        )
                    elif phase == "Healthy":
                        features = status.get("features") or []
                        drifted = sum(bool(f.get("drifted")) for f in features)
                        self.view.say(
                            f"DriftMonitor {name}: Healthy on {status.get('version')} "
                            f"({status.get('samples')} samples, {drifted}/{len(features)} "
                            "features drifted)"
                        )
                elif kind == "TrainingRun" and phase in ("Succeeded", "Failed"):
                    made = status.get("modelVersion")
                    extra = f" -> ModelVersion {made}" if made else ""
                    self.view.say(f"TrainingRun {name} {phase}: {status.get('message')}{extra}")
                elif kind == "TrainingRun" and phase == "Running":
                    meta = obj.get("metadata") or {}
                    trigger = (meta.get("annotations") or {}).get(TRIGGER_ANNOTATION)
                    if trigger:
                        uri = (obj.get("spec") or {}).get("dataset", {}).get("uri")
                        self.view.say(f"TrainingRun {name} Running (trigger: {trigger}) on {uri}")
                elif kind == "ModelVersion" and phase == "Ready":
                    self.view.say(f"ModelVersion {name} Ready: {status.get('message')}")

    # -- the story --

    async def run(self) -> Result:
        client = self._client = Cluster(self.cluster.connection())
        watcher = self._watcher = asyncio.create_task(self._watch(), name="scenario-watch")
        try:
            await self._story(client)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            if self.feedback is not None:
                await self.feedback.stop()
            if self.traffic is not None:
                await self.traffic.stop()
                self.result.traffic = self.traffic.stats
            self.result.objects = {k: dict(v) for k, v in self.objects.items()}
            await client.close()
        return self.result

    async def _story(self, client: Cluster) -> None:
        store = self.cluster.store()
        frame = iris_frame()
        bucket = "modelops"
        await asyncio.to_thread(
            store.put, Location(bucket, DATASET_KEY), frame.to_csv(index=False).encode()
        )
        first, second = self.runs
        v1, v2 = self.versions
        await client.create(
            training_run(first, self.model, "LogisticRegression", {"max_iter": 500}, bucket)
        )
        await client.create(
            deployment(self.deployment, self.model, self.steps, self.monitor, self.replicas)
        )
        await client.create(drift_monitor(self.monitor, self.deployment))
        weights = " -> ".join(f"{s['weight']}% for {s['pause']}" for s in self.steps)
        self.mark(
            "dataset uploaded, resources applied",
            f"Uploaded s3://{bucket}/{DATASET_KEY} ({len(frame)} rows of scikit-learn's iris); "
            f"applied TrainingRun {first}, Deployment {self.deployment} (canary {weights}), "
            f"DriftMonitor {self.monitor} (action: rollback)",
        )

        await self._trained(first, v1)
        await self.until(
            f"{self.deployment} serving {v1}",
            lambda: (
                (s := self.status("Deployment", self.deployment)).get("stableVersion") == v1
                and (s.get("readyReplicas") or 0) >= self.replicas
            ),
        )
        url = await self.until("the Service's address", self._service_url)
        self.mark(
            f"stable {v1} serving",
            f"Stable {v1} served by {self.replicas} pods; the Service is at {url}",
            "bold green",
        )

        features = [c for c in frame.columns if c != TARGET]
        self.traffic = Traffic(
            url,
            self.model,
            features,
            frame[features].to_numpy().tolist(),
            stds=frame[features].std().tolist(),
            rate=self.rate,
            prefix=f"{self.model}-req",
        )
        self.traffic.start()
        self.view.say(
            f"Traffic: {self.rate:.0f} OIP v2 infer requests/s with request ids, "
            "rows drawn from the dataset"
        )

        await client.create(
            training_run(
                second,
                self.model,
                "RandomForestClassifier",
                {"n_estimators": 30, "max_depth": 4},
                bucket,
            )
        )
        self.view.say(f"Applied TrainingRun {second} (RandomForestClassifier)")
        await self._trained(second, v2)
        await self._step(0, v2)
        await self._step(1, v2)
        if self.outcome == "rollback":
            await self._rollback(v1, v2)
        else:
            await self._promotion(v2)
        self.result.after = await self._check(self.result.expected_version)
        if self.quality_act:
            await self._second_act(client, url, frame, bucket)

    async def _trained(self, run: str, version: str) -> None:
        """Wait until ``run`` succeeded, registering ``version``, and that version is Ready."""

        def done() -> str | None:
            phase = self.status("TrainingRun", run).get("phase")
            if phase == "Failed":
                raise ScenarioError(f"TrainingRun {run} failed: {self.status('TrainingRun', run)}")
            return str(phase) if phase == "Succeeded" else None

        await self.until(f"TrainingRun {run} to succeed", done)
        made = self.status("TrainingRun", run).get("modelVersion")
        if made != version:
            raise ScenarioError(f"TrainingRun {run} registered {made}, not {version}")
        self.mark(f"{version} trained")
        await self.until(
            f"ModelVersion {version} Ready",
            lambda: self.status("ModelVersion", version).get("phase") == "Ready",
        )
        self.mark(f"{version} Ready")

    async def _step(self, index: int, canary: str, stage: str = "") -> None:
        """Wait until ``canary`` is in step ``index`` (0-based); mark it as ``stage``."""
        await self.until(
            f"canary {canary} step {index + 1}",
            lambda: (
                (s := self.status("Deployment", self.deployment)).get("canaryVersion") == canary
                and s.get("step") == index
            ),
        )
        self.mark(stage or f"canary step {index + 1} ({self.steps[index]['weight']}%)")

    async def _rollback(self, stable: str, canary: str) -> None:
        assert self.traffic is not None
        self.traffic.drift_canary = True
        self.view.say(
            f"The canary's traffic drifts now: the requests {canary} answers carry rows "
            "shifted by +1.5 standard deviations on every feature",
            "red",
        )
        await self.until(
            f"DriftMonitor {self.monitor} to fire on {canary}",
            lambda: (
                (s := self.status("DriftMonitor", self.monitor)).get("version") == canary
                and any(
                    c.get("type") == "Drifted" and c.get("status") == "True"
                    for c in s.get("conditions") or []
                )
            ),
        )
        self.mark("drift detected")
        await self.until(
            f"{self.deployment} to roll back",
            lambda: self.status("Deployment", self.deployment).get("phase") == "RolledBack",
        )
        self._finished(stable, f"rolled back to {stable}")

    async def _promotion(self, canary: str) -> None:
        await self.until(
            f"{self.deployment} to promote {canary}",
            lambda: self.status("Deployment", self.deployment).get("phase") == "Promoted",
        )
        self._finished(canary, f"{canary} promoted")

    def _finished(self, expected: str, label: str) -> None:
        """Record the outcome: when, why (the last history entry), and who should answer now."""
        self.result.finished_at = time.time()
        last = (self.status("Deployment", self.deployment).get("history") or [{}])[-1]
        self.result.reason = f"{last.get('reason')}: {last.get('message')}"
        self.result.expected_version = expected
        self.mark(label)

    async def _check(self, expected: str, stage: str = "") -> list[Answer]:
        """After the routing change reached the pods (watch latency), who answers?"""
        assert self.traffic is not None
        await asyncio.sleep(1.0)
        after = await self.traffic.batch(self.check_requests)
        served = sum(a.version == expected for a in after)
        self.mark(
            stage or f"{len(after)} answers checked",
            f"Checked: {served}/{len(after)} answers from {expected}",
            "bold green" if served == len(after) else "bold red",
        )
        return after

    # -- the second act: live quality falls, retrain on fresh data, canary analysis, promotion --

    async def _second_act(
        self, client: Cluster, url: str, frame: pd.DataFrame, bucket: str
    ) -> None:
        assert self.traffic is not None
        stable = self.result.expected_version
        fresh = self.fresh
        store = self.cluster.store()
        # 1: the world changes; its labelled data lands under the prefix the monitor retrains on
        world = relabelled(frame)
        prefix = f"datasets/{self.model}/"
        key = f"{prefix}season-2.csv"
        await asyncio.to_thread(
            store.put, Location(bucket, key), world.to_csv(index=False).encode()
        )
        uri = f"s3://{bucket}/{key}"
        act = self.result.second = SecondAct(time.time(), stable, uri)
        self.traffic.drift_canary = False
        self.traffic.labels = world[TARGET].tolist()
        self.feedback = Feedback(url, self.model, self.traffic.stats)
        self.feedback.start()
        changed = int((world[TARGET] != frame[TARGET]).sum())
        self.mark(
            "act 2: the concept drifts",
            f"Act 2. The world changes: a new guide names the flowers ({changed}/{len(frame)} "
            f"iris get another name; the measurements, so the inputs, stay the same). Clients "
            f"now send each true label back to /v2/models/{self.model}/feedback by request id "
            f"a second after the answer; the new guide's labelled flowers land at {uri}",
            "bold",
        )
        # 2: watch stable's live quality; require the canary's to be not worse than stable's
        await client.create(
            quality_monitor(
                self.quality_monitor, self.deployment, self.model, f"s3://{bucket}/{prefix}"
            )
        )
        steps = [{"weight": 20, "pause": "10s"}, {"weight": 50, "pause": "10s"}]
        canary = {"version": "latest", "steps": steps, "analysis": ANALYSIS}
        await client.patch(
            API_VERSION, "Deployment", NAMESPACE, self.deployment, {"spec": {"canary": canary}}
        )
        estimator, _ = FOREST
        self.view.say(
            f"Applied DriftMonitor {self.quality_monitor} (stable's live accuracy vs its held-out "
            f"accuracy, maxDegradation {MAX_DEGRADATION}, {QUALITY_LABELS} labels; "
            f"action: retrain {estimator} on the newest data under s3://{bucket}/{prefix}); "
            f"patched Deployment {self.deployment}: canary analysis (margin {ANALYSIS['margin']}, "
            f"{ANALYSIS['minLabels']} labels each, window {ANALYSIS['window']}), steps 20% 10s "
            "-> 50% 10s"
        )
        # 3: stable's live quality falls; the monitor fires and retrains
        monitor = await self.until(
            f"DriftMonitor {self.quality_monitor} to find {stable} underperforming",
            lambda: self._quality_verdict(stable, "True"),
        )
        act.fired_at = time.time()
        act.fell = dict(monitor.get("quality") or {})
        act.fired = str(monitor.get("message") or "")
        act.client_accuracy = self.traffic.stats.accuracy(stable, since=act.started)
        seen, judged = act.client_accuracy
        features = monitor.get("features") or []
        drifted = sum(bool(f.get("drifted")) for f in features)
        inputs = (
            f"its inputs show no drift (0/{len(features)} features): only the labels tell"
            if not drifted
            else f"{drifted}/{len(features)} features of its inputs drifted too"
        )
        self.mark(
            "stable quality fell",
            f"{stable}'s live accuracy fell to {number(act.fell.get('value'))} on "
            f"{act.fell.get('labels')} labels (held-out {number(_baseline(act.fell))}; the "
            f"clients' own tally: {number(seen)} on {judged} answers), while {inputs}",
            "bold red",
        )
        act.retrain = await self.until(
            f"DriftMonitor {self.quality_monitor} to start a retraining run",
            lambda: self.status("DriftMonitor", self.quality_monitor).get("lastRetrain"),
        )
        trigger = self.status("DriftMonitor", self.quality_monitor).get("lastTrigger")
        self.mark(
            f"retrain started (trigger: {trigger})",
            f"TrainingRun {act.retrain} started by the quality rule (trigger: {trigger})",
        )
        # 4: the new version, canaried with quality analysis, promoted
        await self._trained(act.retrain, fresh)
        act.version = fresh
        await self._step(0, fresh, f"{fresh} canary step 1 ({steps[0]['weight']}%)")
        await self._step(1, fresh, f"{fresh} step 2 ({steps[1]['weight']}%): analysis passed")
        self._say_analysis()
        await self.until(
            f"{self.deployment} to promote {fresh}",
            lambda: (
                (s := self.status("Deployment", self.deployment)).get("phase") == "Promoted"
                and s.get("stableVersion") == fresh
            ),
        )
        act.finished_at = time.time()
        history = self.status("Deployment", self.deployment).get("history") or [{}]
        act.promotion = dict(history[-1])
        self.mark(f"{fresh} promoted")
        self._say_analysis()
        act.after = await self._check(fresh, f"answers from {fresh} checked")
        # 5: the monitor now watches the new stable version: quality is back
        healthy = await self.until(
            f"DriftMonitor {self.quality_monitor} to find {fresh} healthy",
            lambda: self._quality_verdict(fresh, "False"),
        )
        act.recovered = dict(healthy.get("quality") or {})
        self.mark(
            "quality recovered",
            f"DriftMonitor {self.quality_monitor}: {fresh}, now stable, is healthy: live "
            f"accuracy {number(act.recovered.get('value'))} on {act.recovered.get('labels')} "
            "labels",
            "bold green",
        )

    def _quality_verdict(self, version: str, underperforming: str) -> Obj | None:
        """The quality monitor's status once its ``Underperforming`` condition on ``version``
        is ``underperforming`` (``"True"``, ``"False"``); None until then."""
        status = self.status("DriftMonitor", self.quality_monitor)
        under: Obj = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Underperforming"), {}
        )
        if status.get("version") == version and under.get("status") == underperforming:
            return status
        return None

    def _say_analysis(self) -> None:
        """Narrate the numbers of the Deployment's last decision taken on a quality analysis."""
        history = self.status("Deployment", self.deployment).get("history") or []
        entry = next((h for h in reversed(history) if h.get("analysis")), None)
        if entry is None:
            return
        a = entry["analysis"]
        taken = "promoted" if entry.get("event") == "Promoted" else "next step taken"
        p = p_value(a.get("pNotWorse"))
        self.view.say(
            f"Canary analysis: {a.get('canaryVersion')} {a.get('metric')} "
            f"{number(a.get('canaryValue'))} on {a.get('canaryLabels')} labels vs "
            f"{a.get('stableVersion')} {number(a.get('stableValue'))} on "
            f"{a.get('stableLabels')}: non-inferior at margin {a.get('margin')} "
            f"(p{'' if p.startswith('<') else '='}{p}): {taken}",
            "green",
        )

    def _service_url(self) -> str | None:
        try:
            return self.cluster.service_url(self.deployment)
        except LookupError:
            return None


def _model_of(kind: str, obj: Obj) -> str | None:
    spec = obj.get("spec") or {}
    if kind == "DriftMonitor":
        return str(spec.get("deployment"))  # the demo's deployments are named as their models
    return spec.get("model")


ROLLBACK_EVENTS = frozenset(
    {
        "DriftDetected",
        "ErrorRateExceeded",
        "Underperforming",
        "AnalysisInconclusive",
        "CanaryLoadFailed",
        "ABTestLost",
        "ABTestInconclusive",
        "ShadowDisagrees",
    }
)
"""History events narrated in red: a canary rolled back."""


def _baseline(quality: Obj) -> Any:
    """The held-out (or stable) value a quality status's baseline test compared with."""
    return (quality.get("baseline") or {}).get("against")
