"""The serving pods' sketch windows and quality objects of one version, added up over a window.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from modelops.controllers.metrics import QUALITY_WINDOWS_MALFORMED, SKETCH_WINDOWS_READ
from modelops.drift import Sketch
from modelops.drift.quality import Agreement, QualityCounts
from modelops.storage import ArtifactStore, Location

BUCKETS = 32
MIN_SPAN = 5.0
IDLE_SECONDS = 3600.0
"""A cache no check used for this long (its monitor deleted or retargeted) is dropped."""


class Mergeable(Protocol):
    def merge(self: M, other: M) -> M: ...


M = TypeVar("M", bound=Mergeable)


@dataclass
class _Bucket:
    keys: set[str] = field(default_factory=set)
    part: Any = None


@dataclass
class _Series:
    span: float
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    used: float = 0.0


_series: dict[tuple[str, str, str, float], _Series] = {}
"""By store bucket, key prefix (deployment and version), kind of object and window length."""


def span_of(window: float) -> float:
    return max(MIN_SPAN, window / BUCKETS)


@dataclass
class LiveQuality:
    """The quality objects of one version (``quality/<deployment>/<version>/``) added up.

    Object layout (written by the serving pods every sketch interval, when non-empty)::

        {"deployment": "iris", "version": "iris-v2", "pod": "iris-abc-w0",
         "start": 1.7e9, "end": 1.7e9,
         "quality": QualityCounts.to_dict() | null,   # labels joined for this version
         "agreement": Agreement.to_dict() | null,     # a shadow version against stable
         "feedback": {"received": 0, "joined": 0, "unknown": 0, "expired": 0}}

    The per-deployment feedback counters (ids nobody answered, or answered too long ago) are
    written under the pseudo-version ``-`` (not a valid ModelVersion name).
    """

    quality: QualityCounts | None = None
    agreement: Agreement | None = None
    feedback: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveQuality:
        """Parse one object. Raises ValueError/KeyError/TypeError when malformed."""
        quality, agreement = data.get("quality"), data.get("agreement")
        return cls(
            QualityCounts.from_dict(quality) if quality else None,
            Agreement.from_dict(agreement) if agreement else None,
            {str(k): int(v) for k, v in (data.get("feedback") or {}).items()},
        )

    def merge(self, other: LiveQuality) -> LiveQuality:
        quality = _merge_optional(self.quality, other.quality)
        agreement = _merge_optional(self.agreement, other.agreement)
        feedback = dict(self.feedback)
        for k, v in other.feedback.items():
            feedback[k] = feedback.get(k, 0) + v
        return LiveQuality(quality, agreement, feedback)


def _merge_optional(a: M | None, b: M | None) -> M | None:
    if a is None or b is None:
        return a if b is None else b
    return a.merge(b)


async def merged_windows(
    store: ArtifactStore, bucket: str, prefix: str, fingerprint: str, window: float
) -> Sketch | None:
    """The sum of the sketch windows under ``prefix`` made with the profile ``fingerprint``
    that started in a bucket overlapping the last ``window`` seconds (None: there are none)."""

    def parse(data: dict[str, Any]) -> Sketch | None:
        if data.get("profile") != fingerprint:
            return None  # written against another profile of the version: not comparable
        return Sketch.from_dict(data)

    return await _merged(store, bucket, prefix, f"sketch:{fingerprint}", window, parse)


async def merged_quality(
    store: ArtifactStore, bucket: str, prefix: str, window: float
) -> LiveQuality | None:
    """The sum of the quality objects under ``prefix`` (``<ns>/quality/<deployment>/<version>/``)
    that started in a bucket overlapping the last ``window`` seconds (None: there are none).
    A malformed object is skipped and counted in ``modelops_quality_windows_malformed_total``."""

    def parse(data: dict[str, Any]) -> LiveQuality | None:
        try:
            return LiveQuality.from_dict(data)
        except (ValueError, KeyError, TypeError):
            QUALITY_WINDOWS_MALFORMED.inc()
            return None

    return await _merged(store, bucket, prefix, "quality", window, parse)


async def _merged(
    store: ArtifactStore,
    bucket: str,
    prefix: str,
    kind: str,
    window: float,
    parse: Callable[[dict[str, Any]], M | None],
) -> M | None:
    now = time.time()
    span = span_of(window)
    # By window length, not span: monitors of one version with other windows (same span)
    # would otherwise evict each other's older buckets and read those windows again.
    key = (bucket, prefix, kind, window)
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
            part = parse(data)
            if part is not None:
                target.part = part if target.part is None else target.part.merge(part)
        merged: M | None = None
        for index in sorted(series.buckets):
            found: M | None = series.buckets[index].part
            if found is not None:
                merged = found if merged is None else merged.merge(found)
        return merged
