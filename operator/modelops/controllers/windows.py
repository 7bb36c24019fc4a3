"""The serving pods' sketch windows of one version, added up over a DriftMonitor's window.

Every worker of every pod writes a window every few seconds, so a 5-minute window of 4 pods
with 2 workers is ~500 objects: read at each check, they would be most of the operator's
traffic to the store. A window is written once and never changes (its key names its start and
its pod), so each is read once: windows are added into buckets of ``span`` seconds (by the
start in their key), a bucket keeps the sum of what it has read, and a check adds the buckets
that overlap the window. Memory per (version, window length) is at most ~33 bucket sums.

The price: the oldest bucket may start up to ``span`` (1/32 of the window, at least 5 s)
before the window does, so a check can count that much older traffic.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from modelops.controllers.metrics import SKETCH_WINDOWS_READ
from modelops.drift import Sketch
from modelops.storage import ArtifactStore, Location

BUCKETS = 32
MIN_SPAN = 5.0
IDLE_SECONDS = 3600.0
"""A cache no check used for this long (its monitor deleted or retargeted) is dropped."""


@dataclass
class _Bucket:
    keys: set[str] = field(default_factory=set)
    sketch: Sketch | None = None


@dataclass
class _Series:
    span: float
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    used: float = 0.0


_series: dict[tuple[str, str, str, float], _Series] = {}
"""By store bucket, key prefix (deployment and version), profile and window length."""


def span_of(window: float) -> float:
    return max(MIN_SPAN, window / BUCKETS)


async def merged_windows(
    store: ArtifactStore, bucket: str, prefix: str, fingerprint: str, window: float
) -> Sketch | None:
    """The sum of the windows under ``prefix`` made with the profile ``fingerprint`` that
    started in a bucket overlapping the last ``window`` seconds (None: there are none)."""
    now = time.time()
    span = span_of(window)
    # By window length, not span: monitors of one version with other windows (same span)
    # would otherwise evict each other's older buckets and read those windows again.
    key = (bucket, prefix, fingerprint, window)
    series = _series.get(key)
    if series is None:
        series = _series[key] = _Series(span)
    series.used = now
    for stale in [k for k, s in _series.items() if now - s.used > IDLE_SECONDS]:
        del _series[stale]
    first = math.floor((now - window) / span)
    async with series.lock:  # two monitors on one version must not add a window twice
        for index in [i for i in series.buckets if i < first]:
            del series.buckets[index]
        for name in await asyncio.to_thread(store.list, Location(bucket, prefix)):
            start = name.rsplit("/", 1)[-1].split("-", 1)[0]
            if not start.isdigit() or int(start) // span < first:
                continue  # the key names the window's start: old ones are never read
            target = series.buckets.setdefault(int(int(start) // span), _Bucket())
            if name in target.keys:
                continue
            data: dict[str, Any] = json.loads(
                await asyncio.to_thread(store.get, Location(bucket, name))
            )
            SKETCH_WINDOWS_READ.inc()
            target.keys.add(name)
            if data.get("profile") != fingerprint:
                continue  # written against another profile of the version: not comparable
            sketch = Sketch.from_dict(data)
            target.sketch = sketch if target.sketch is None else target.sketch.merge(sketch)
        merged: Sketch | None = None
        for index in sorted(series.buckets):
            part = series.buckets[index].sketch
            if part is not None:
                merged = part if merged is None else merged.merge(part)
        return merged
