"""Live sketch windows: what each version saw, written to the object store every few seconds.

The request path appends each predicted batch's (already validated) arrays to a short list;
every ``FOLD_ROWS`` rows they are counted into the version's :class:`Sketch` in one vectorized
``update``, on the event loop (about a millisecond per fold). Counting on another thread was
measured to cost more than it hides: the event loop then contends for the GIL around every
socket call, which costs more CPU than the counting itself. What is slow but rare stays off the
loop: serializing a closed window and building the next empty sketch run on a background
thread while the loop only swaps references. Memory is bounded: at most ``FOLD_ROWS`` rows plus
one batch wait, and a sketch has a fixed size.

Window object: ``<namespace>/sketches/<deployment>/<version>/<start>-<pod>.json`` holding
``Sketch.to_dict()`` plus ``deployment, version, pod, start, end, requests, errors,
latency_buckets`` (cumulative counts per upper bound in seconds, Prometheus ``le`` style).
A window in which nothing happened is not written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelops.drift.sketch import Sketch
from modelops.serving.metrics import LATENCY_BUCKETS, VersionStats, bucket_key
from modelops.serving.protocol import Rows, concat_rows
from modelops.storage import ArtifactStore, Location

logger = logging.getLogger(__name__)

MIN_WINDOW_SECONDS = 1.0
"""Windows are keyed by their start in whole seconds: a window ends (except the last one, at
shutdown) only once it is this old, so keys never collide."""
FOLD_ROWS = 1024
"""Rows gathered before one ``Sketch.update`` (whose fixed cost is per call, per feature)."""


def sketch_key(namespace: str, deployment: str, version: str, start: float, pod: str) -> str:
    return f"{namespace}/sketches/{deployment}/{version}/{int(start)}-{pod}.json"


class SketchWindow:
    """The open window of one version in one worker (used from the event loop only)."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        profile: dict[str, Any],
        stats: VersionStats,
        now: float,
    ) -> None:
        self.executor = executor
        self.profile = profile
        self.fingerprint = str(profile.get("fingerprint"))
        self.stats = stats
        self.start = now
        self._names = [str(s["name"]) for s in profile["signature"]]
        self._sketch = Sketch.empty(profile, start=now)
        self._spare: Future[Sketch] = executor.submit(Sketch.empty, profile)
        self._baseline = _counters(stats)
        self._rows: list[Rows] = []
        self._classes: list[str] = []
        self._class_counts: npt.NDArray[np.int64] | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def add(self, rows: Rows, n: int, classes: list[str] | None = None, counts: Any = None) -> None:
        """One predicted batch; a classifier's predictions as counts per class."""
        self._rows.append(rows)
        if classes is not None:
            if self._class_counts is None or classes is not self._classes:
                self._fold_predictions()
                self._classes, self._class_counts = classes, np.zeros(len(classes), np.int64)
            self._class_counts += counts
        self._pending += n
        if self._pending >= FOLD_ROWS:
            self._fold()

    def _fold(self) -> None:
        if not self._rows:
            return
        rows = self._rows
        self._rows, self._pending = [], 0
        try:
            # The sketch sorts each numeric column itself, all of them in one call.
            self._sketch.update(concat_rows(rows))
            self._fold_predictions()
        except Exception:  # a counting bug must not take serving down
            logger.exception("sketch update failed for %s", self.stats.version)

    def _fold_predictions(self) -> None:
        if self._class_counts is not None and self._class_counts.any():
            self._sketch.count_predictions(self._classes, self._class_counts)
            self._class_counts = np.zeros(len(self._classes), np.int64)

    def close(self, now: float) -> Future[dict[str, Any] | None]:
        """End the window and start the next; the payload to write (None when empty) is
        serialized on the background thread."""
        self._fold()
        closed = self._sketch
        spare = self._spare.result() if self._spare.done() else Sketch.empty(self.profile)
        spare.start = now
        self._sketch = spare
        self._spare = self.executor.submit(Sketch.empty, self.profile)
        counters, self._baseline = _delta(_counters(self.stats), self._baseline)
        start, self.start = self.start, now
        return self.executor.submit(self._payload, closed, counters, start, now)

    def _payload(
        self, sketch: Sketch, counters: dict[str, Any], start: float, end: float
    ) -> dict[str, Any] | None:
        if counters["requests"] == 0 and sketch.n_rows == 0:
            return None
        sketch.end = end
        cumulative, total = {}, 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counters["latency"], strict=True):
            total += n
            cumulative[bucket_key(bound)] = total
        return sketch.to_dict() | {
            "deployment": "",
            "version": self.stats.version,
            "pod": "",
            "start": start,
            "end": end,
            "requests": counters["requests"],
            "errors": counters["errors"],
            "latency_buckets": cumulative,
        }


def _counters(stats: VersionStats) -> dict[str, Any]:
    return {
        "requests": stats.requests,
        "errors": stats.error_count,
        "latency": list(stats.latency),
    }


def _delta(now: dict[str, Any], before: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    delta = {
        "requests": now["requests"] - before["requests"],
        "errors": now["errors"] - before["errors"],
        "latency": [a - b for a, b in zip(now["latency"], before["latency"], strict=True)],
    }
    return delta, now


class SketchWriter:
    """Closes every open window each interval and writes the non-empty ones."""

    def __init__(
        self,
        store: ArtifactStore | None,
        bucket: str,
        pod: str,
        interval: float,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.pod = pod
        self.interval = interval
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sketch")
        self.written: list[str] = []

    async def flush(
        self, windows: list[tuple[str, str, SketchWindow]], on_result: Any = None
    ) -> int:
        """Close the windows of ``(namespace, deployment, window)`` and write them; returns
        how many objects were written."""
        now = time.time()
        closing = [(ns, dep, w, w.close(now)) for ns, dep, w in windows]
        written = 0
        for namespace, deployment, window, future in closing:
            payload = await asyncio.wrap_future(future)
            if payload is None:
                continue
            payload["deployment"], payload["pod"] = deployment, self.pod
            version = window.stats.version
            key = sketch_key(namespace, deployment, version, payload["start"], self.pod)
            ok = await self._put(key, orjson.dumps(payload))
            written += ok
            if on_result is not None:
                on_result(ok)
        return written

    async def _put(self, key: str, data: bytes) -> bool:
        if self.store is None:
            return False
        try:
            await asyncio.to_thread(
                self.store.put, Location(self.bucket, key), data, "application/json"
            )
        except Exception as exc:
            logger.warning("could not write sketch %s: %s", key, exc)
            return False
        self.written.append(key)
        del self.written[:-100]
        return True

    def close(self) -> None:
        self.executor.shutdown(wait=True)
