"""Prometheus metrics of the model server, kept as plain counters on the hot path.

``modelops_serving_requests_total``, ``_errors_total{code}`` and
``_request_duration_seconds`` are labelled ``model``, ``version`` and ``transport`` (``rest`` or
``grpc``); rows and predicted classes are per version only.

Counting is a few integer increments per request and one ``bincount`` per batch; the
Prometheus text is built only when ``/metrics`` is scraped. With several worker processes
each keeps its own counters and writes a snapshot file every second; whichever worker
answers a scrape sums its live counters with its peers' snapshots, so counters never go
backwards between scrapes that land on different workers (prometheus_client's multiprocess
mode would instead cost several mmap writes per request).

Ground truth and shadow traffic (see :mod:`modelops.serving.feedback`):
``modelops_feedback_labels_total{model,version,result}`` counts feedback items by what came of
them (``joined``, ``duplicate``, ``mismatched`` under the version that answered the id; a label
joined for a shadow too counts under both; ``unknown``, ``expired`` with ``version=""``);
``modelops_feedback_ledger_ids`` and ``_pending`` are gauges;
``modelops_feedback_ledger_dropped_total{reason}`` counts requests not remembered
(``too_large``) or left out of a prediction log, full (``log_full``) or evicted from the
ledger before it was written (``evicted``);
``modelops_feedback_objects_written_total{kind,result}`` the prediction logs and quality
objects written; ``modelops_serving_shadow_requests_total{model,version,result}`` the copies a
shadow version ``predicted``, failed on (``error``) or ``shed`` under load. A shadow's
predictions are also counted in its ``modelops_serving_requests_total`` and the rest.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NO_VERSION = ""
"""The version label of requests that failed before a version was chosen."""


def bucket_key(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


TRANSPORTS = ("rest", "grpc")
"""Values of the ``transport`` label: the Open Inference Protocol over HTTP/REST or gRPC."""


@dataclass
class TransportStats:
    """Requests, errors (by HTTP status; gRPC errors by the status they map from) and latency
    of one (model, version) over one transport; only ever incremented."""

    requests: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe(self, seconds: float, status: int) -> None:
        """One request answered with ``status`` after ``seconds``."""
        self.requests += 1
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        if status >= 400:
            self.errors[status] = self.errors.get(status, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": {str(k): v for k, v in self.errors.items()},
            "latency": list(self.latency),
            "latencySum": self.latency_sum,
        }


@dataclass
class VersionStats:
    """Cumulative counters of one (model, version); only ever incremented. Requests, errors
    and latency are kept per transport (``rest``, ``grpc``), rows and classes per version."""

    model: str
    version: str
    rows: int = 0
    rest: TransportStats = field(default_factory=TransportStats)
    grpc: TransportStats = field(default_factory=TransportStats)
    classes: list[str] = field(default_factory=list)
    class_counts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def transport(self, name: str) -> TransportStats:
        """The counters of transport ``name`` (one of :data:`TRANSPORTS`); KeyError otherwise."""
        if name == "rest":
            return self.rest
        if name == "grpc":
            return self.grpc
        raise KeyError(name)

    def add_class_counts(self, classes: list[str], counts: npt.NDArray[np.int64]) -> None:
        """One batch of predictions, counted per class of the version (``classes``)."""
        if self.classes != classes:
            self.classes = list(classes)
            self.class_counts = np.zeros(len(classes), np.int64)
        self.class_counts += counts

    @property
    def requests(self) -> int:
        """Requests over every transport."""
        return self.rest.requests + self.grpc.requests

    @property
    def error_count(self) -> int:
        """Error answers over every transport."""
        return sum(self.rest.errors.values()) + sum(self.grpc.errors.values())

    @property
    def latency(self) -> list[int]:
        """Requests per latency bucket (:data:`LATENCY_BUCKETS`, then +Inf), every transport."""
        return [a + b for a, b in zip(self.rest.latency, self.grpc.latency, strict=True)]

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "rows": self.rows,
            "transports": {name: self.transport(name).snapshot() for name in TRANSPORTS},
            "classes": dict(zip(self.classes, self.class_counts.tolist(), strict=True)),
        }


@dataclass(frozen=True)
class VersionInfo:
    """What a scrape reports about a version of the current routing table."""

    model: str
    version: str
    role: str
    weight: int
    sha256: str
    state: str
    reason: str


class ServerMetrics:
    """All counters of one worker process."""

    def __init__(self, worker: int = 0, peers_dir: Path | None = None, workers: int = 1) -> None:
        self.worker = worker
        self.peers_dir = peers_dir
        self.workers = workers
        self.versions: dict[tuple[str, str], VersionStats] = {}
        self.batches = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_rows = 0
        self.sketch_flushes: dict[str, int] = {"ok": 0, "error": 0}
        self.table_updates: dict[str, int] = {"applied": 0, "invalid": 0}
        self.info: list[VersionInfo] = []
        self.ready = False
        self.feedback: dict[tuple[str, str, str], int] = {}
        """(model, version, result) -> feedback items."""
        self.shadow: dict[tuple[str, str, str], int] = {}
        """(model, version, result) -> shadow copies."""
        self.ledger_dropped: dict[str, int] = {}
        self.objects_written: dict[tuple[str, str], int] = {}
        """(kind, result) -> prediction logs / quality objects written."""
        self.ledger_sizes: Callable[[], tuple[int, int]] | None = None
        """Ids remembered and ids pending, read when the metrics are rendered."""
        self._last_written: bytes | None = None

    def stats(self, model: str, version: str) -> VersionStats:
        key = (model, version)
        found = self.versions.get(key)
        if found is None:
            found = self.versions[key] = VersionStats(model, version)
        return found

    def observe_batch(self, rows: int) -> None:
        self.batches[bisect.bisect_left(BATCH_BUCKETS, rows)] += 1
        self.batch_rows += rows

    def count_feedback(self, model: str, version: str, result: str) -> None:
        key = (model, version, result)
        self.feedback[key] = self.feedback.get(key, 0) + 1

    def count_shadow(self, model: str, version: str, result: str) -> None:
        key = (model, version, result)
        self.shadow[key] = self.shadow.get(key, 0) + 1

    def count_dropped(self, reason: str, n: int) -> None:
        self.ledger_dropped[reason] = self.ledger_dropped.get(reason, 0) + n

    def count_written(self, kind: str, ok: bool) -> None:
        key = (kind, "ok" if ok else "error")
        self.objects_written[key] = self.objects_written.get(key, 0) + 1

    # -- sharing between worker processes ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "pid": os.getpid(),
            "ready": self.ready,
            "versions": [s.snapshot() for s in self.versions.values()],
            "batches": list(self.batches),
            "batchRows": self.batch_rows,
            "sketchFlushes": dict(self.sketch_flushes),
            "tableUpdates": dict(self.table_updates),
            "feedback": [[*k, n] for k, n in self.feedback.items()],
            "shadow": [[*k, n] for k, n in self.shadow.items()],
            "ledgerDropped": dict(self.ledger_dropped),
            "objectsWritten": [[*k, n] for k, n in self.objects_written.items()],
            "ledger": list(self.ledger_sizes()) if self.ledger_sizes is not None else [0, 0],
        }

    def write_snapshot(self) -> None:
        """Publish this worker's counters for its peers (atomically: write, then rename)."""
        if self.peers_dir is None:
            return
        data = orjson.dumps(self.snapshot())
        if data == self._last_written:
            return
        path = self.peers_dir / f"worker-{self.worker}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self._last_written = data

    def peer_snapshots(self) -> list[dict[str, Any]]:
        if self.peers_dir is None:
            return []
        found = []
        for path in sorted(self.peers_dir.glob("worker-*.json")):
            if path.name == f"worker-{self.worker}.json":
                continue
            try:
                found.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # a peer that is starting or stopping
        return found

    def peers_ready(self) -> bool:
        """Every other worker has published a snapshot (so it listens) and is ready."""
        peers = self.peer_snapshots()
        return len(peers) >= self.workers - 1 and all(s.get("ready") for s in peers)

    # -- exposition ------------------------------------------------------------------------------

    def render(self, own: dict[str, Any] | None = None) -> bytes:
        """The Prometheus text. Pass ``own`` (a :meth:`snapshot` taken on the event loop) to
        render on another thread while the loop keeps counting."""
        registry = CollectorRegistry(auto_describe=False)
        snapshots = [own if own is not None else self.snapshot(), *self.peer_snapshots()]
        registry.register(_Collector(self, snapshots))
        return generate_latest(registry)


class _Collector:
    def __init__(self, metrics: ServerMetrics, snapshots: list[dict[str, Any]]) -> None:
        self.metrics = metrics
        self.snapshots = snapshots

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        merged = _merge(self.snapshots)
        labels = ["model", "version"]
        by_transport = [*labels, "transport"]
        requests = CounterMetricFamily(
            "modelops_serving_requests",
            "Inference requests, by version answered and transport (rest, grpc)",
            labels=by_transport,
        )
        rows = CounterMetricFamily("modelops_serving_rows", "Rows predicted", labels=labels)
        errors = CounterMetricFamily(
            "modelops_serving_errors",
            "Inference requests answered with an error, by HTTP status (gRPC: the status its "
            "code maps from) and transport",
            labels=[*by_transport, "code"],
        )
        latency = HistogramMetricFamily(
            "modelops_serving_request_duration_seconds",
            "Time from request body to response, per inference request, by transport",
            labels=by_transport,
        )
        predictions = CounterMetricFamily(
            "modelops_serving_predictions",
            "Predicted rows per class",
            labels=[*labels, "class"],
        )
        for (model, version), v in sorted(merged["versions"].items()):
            rows.add_metric([model, version], v["rows"])
            for transport in TRANSPORTS:
                t = v["transports"][transport]
                key = [model, version, transport]
                requests.add_metric(key, t["requests"])
                for code, n in sorted(t["errors"].items()):
                    errors.add_metric([*key, code], n)
                latency.add_metric(key, _cumulative(t["latency"]), t["latencySum"])
            for cls, n in sorted(v["classes"].items()):
                predictions.add_metric([model, version, cls], n)
        yield from (requests, rows, errors, latency, predictions)

        info = GaugeMetricFamily(
            "modelops_serving_version_info",
            "Versions of the routing table and their state (value 1)",
            labels=["model", "version", "role", "sha256", "state", "reason"],
        )
        ready = GaugeMetricFamily(
            "modelops_serving_version_ready",
            "1 when the version is verified, loaded and servable",
            labels=labels,
        )
        weight = GaugeMetricFamily(
            "modelops_serving_version_weight", "Configured traffic weight (%)", labels=labels
        )
        for i in self.metrics.info:
            info.add_metric([i.model, i.version, i.role, i.sha256, i.state, i.reason], 1)
            ready.add_metric([i.model, i.version], 1 if i.state == "Ready" else 0)
            weight.add_metric([i.model, i.version], i.weight)
        yield from (info, ready, weight)

        batch = HistogramMetricFamily(
            "modelops_serving_batch_rows", "Rows per predict call (micro-batches)"
        )
        buckets = [(bucket_key(float(b)), 0) for b in (*BATCH_BUCKETS, float("inf"))]
        batch.add_metric(
            [], _cumulative(merged["batches"], buckets=buckets), float(merged["batchRows"])
        )
        yield batch
        flushes = CounterMetricFamily(
            "modelops_serving_sketch_flushes", "Sketch windows written", labels=["result"]
        )
        for result, n in sorted(merged["sketchFlushes"].items()):
            flushes.add_metric([result], n)
        yield flushes
        updates = CounterMetricFamily(
            "modelops_serving_routing_updates", "Routing tables received", labels=["result"]
        )
        for result, n in sorted(merged["tableUpdates"].items()):
            updates.add_metric([result], n)
        yield updates
        workers = GaugeMetricFamily("modelops_serving_workers", "Worker processes reporting")
        workers.add_metric([], len(self.snapshots))
        yield workers
        yield from _ground_truth(merged)


def _ground_truth(merged: dict[str, Any]) -> Iterator[Metric]:
    labels = CounterMetricFamily(
        "modelops_feedback_labels",
        "Feedback items (true labels of one request id), by result",
        labels=["model", "version", "result"],
    )
    for (model, version, result), n in sorted(merged["feedback"].items()):
        labels.add_metric([model, version, result], n)
    shadow = CounterMetricFamily(
        "modelops_serving_shadow_requests",
        "Copies of stable's requests predicted by a shadow version, by result",
        labels=["model", "version", "result"],
    )
    for (model, version, result), n in sorted(merged["shadow"].items()):
        shadow.add_metric([model, version, result], n)
    dropped = CounterMetricFamily(
        "modelops_feedback_ledger_dropped",
        "Requests with an id not remembered, or not in the prediction log, by reason",
        labels=["reason"],
    )
    for reason, n in sorted(merged["ledgerDropped"].items()):
        dropped.add_metric([reason], n)
    written = CounterMetricFamily(
        "modelops_feedback_objects_written",
        "Prediction logs and quality objects written to the store",
        labels=["kind", "result"],
    )
    for (kind, result), n in sorted(merged["objectsWritten"].items()):
        written.add_metric([kind, result], n)
    ids = GaugeMetricFamily("modelops_feedback_ledger_ids", "Request ids remembered")
    ids.add_metric([], merged["ledger"][0])
    pending = GaugeMetricFamily(
        "modelops_feedback_pending", "Feedback items waiting for their id to be found"
    )
    pending.add_metric([], merged["ledger"][1])
    yield from (labels, shadow, dropped, written, ids, pending)


def _cumulative(
    counts: list[int], buckets: list[tuple[str, int]] | None = None
) -> list[tuple[str, float]]:
    bounds = buckets or [(bucket_key(b), 0) for b in (*LATENCY_BUCKETS, float("inf"))]
    total, out = 0, []
    for (key, _), n in zip(bounds, counts, strict=True):
        total += n
        out.append((key, float(total)))
    return out


def _merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    batches = [0] * (len(BATCH_BUCKETS) + 1)
    batch_rows = 0
    flushes: dict[str, int] = {}
    updates: dict[str, int] = {}
    feedback: dict[tuple[str, ...], int] = {}
    shadow: dict[tuple[str, ...], int] = {}
    dropped: dict[str, int] = {}
    written: dict[tuple[str, ...], int] = {}
    ledger = [0, 0]
    for snap in snapshots:
        for v in snap["versions"]:
            key = (v["model"], v["version"])
            into = versions.setdefault(
                key,
                {
                    "rows": 0,
                    "transports": {t: _empty_transport() for t in TRANSPORTS},
                    "classes": {},
                },
            )
            into["rows"] += v["rows"]
            for transport, t in v["transports"].items():
                acc = into["transports"][transport]
                acc["requests"] += t["requests"]
                acc["latencySum"] += t["latencySum"]
                acc["latency"] = [a + b for a, b in zip(acc["latency"], t["latency"], strict=True)]
                _add(acc["errors"], t["errors"])
            _add(into["classes"], v["classes"])
        batches = [a + b for a, b in zip(batches, snap["batches"], strict=True)]
        batch_rows += snap["batchRows"]
        _add(flushes, snap["sketchFlushes"])
        _add(updates, snap["tableUpdates"])
        # .get: a peer's snapshot written by an older worker lacks these.
        _add_rows(feedback, snap.get("feedback", []))
        _add_rows(shadow, snap.get("shadow", []))
        _add(dropped, snap.get("ledgerDropped", {}))
        _add_rows(written, snap.get("objectsWritten", []))
        ledger = [a + b for a, b in zip(ledger, snap.get("ledger", [0, 0]), strict=True)]
    return {
        "versions": versions,
        "batches": batches,
        "batchRows": batch_rows,
        "sketchFlushes": flushes,
        "tableUpdates": updates,
        "feedback": feedback,
        "shadow": shadow,
        "ledgerDropped": dropped,
        "objectsWritten": written,
        "ledger": ledger,
    }


def _empty_transport() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": {},
        "latency": [0] * (len(LATENCY_BUCKETS) + 1),
        "latencySum": 0.0,
    }


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for k, n in more.items():
        into[k] = into.get(k, 0) + n


def _add_rows(into: dict[tuple[str, ...], int], rows: list[list[Any]]) -> None:
    """Add ``[label, ..., count]`` rows (a snapshot's form of tuple-keyed counters)."""
    for *key, n in rows:
        k = tuple(str(x) for x in key)
        into[k] = into.get(k, 0) + int(n)
