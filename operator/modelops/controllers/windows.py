"""The serving pods' sketch windows and quality objects of one version, added up over a window.

Every worker of every pod writes a window every few seconds, so a 5-minute window of 4 pods
with 2 workers is ~500 objects: read at each check, they would be most of the operator's
traffic to the store. A window is written once and never changes (its key names its start and
its pod), so each is read once: windows are added into buckets of ``span`` seconds (by the
start in their key), a bucket keeps the sum of what it has read, and a check adds the buckets
that overlap the window. Memory per (version, window length) is at most ~33 bucket sums.

The price: the oldest bucket may start up to ``span`` (1/32 of the window, at least 5 s)
before the window does, so a check can count that much older traffic.

Store reads grow with new windows only. A pass lists from its first bucket's start on
(ListObjectsV2 ``StartAfter``, :func:`modelops.controllers.storereads.start_after`), not
every window ever written. Everyone who sums the windows of one prefix (the monitors of a
version, one series per kind and window length, and the Deployment's canary counts,
:func:`canary_counts`) shares one cache entry: a window one of them reads (GET) is offered to
all of them at once, so a window is read once per operator process, not once per reader. A
reader that starts later (a new monitor or window length, a canary's first count) reads once
what was read before it began and it still needs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from modelops.api.modelversion import MAX_GROUPS
from modelops.controllers.metrics import QUALITY_WINDOWS_MALFORMED, SKETCH_WINDOWS_READ
from modelops.controllers.storereads import list_since, read_json, window_start
from modelops.drift import Sketch
from modelops.drift.fairness_live import OTHER_GROUP
from modelops.drift.quality import Agreement, QualityCounts
from modelops.rollout import State
from modelops.storage import ArtifactStore, Location

BUCKETS = 32
MIN_SPAN = 5.0
IDLE_SECONDS = 3600.0
"""A cache no check used for this long (its monitor deleted or retargeted) is dropped."""


class Mergeable(Protocol):
    def merge(self: M, other: M) -> M: ...


M = TypeVar("M", bound=Mergeable)


CANARY_LEAD_SECONDS = 60
"""A canary's window whose key names a start up to this long before its step began is still
read: it may end after the step began (its requests then count for the step)."""
WINDOW_COUNTS_KEPT = 50_000
"""Most windows whose counts one canary's cache keeps between passes (the oldest read go
first, to be read again if still needed)."""


def span_of(window: float) -> float:
    return max(MIN_SPAN, window / BUCKETS)


@dataclass
class _Bucket:
    keys: set[str] = field(default_factory=set)
    part: Any = None


@dataclass
class _Series:
    """The sums, by bucket of ``span_of(window)`` seconds, of one kind of object (parsed
    by ``parse``) over the last ``window`` seconds."""

    window: float
    parse: Callable[[dict[str, Any]], Any]
    used: float
    buckets: dict[int, _Bucket] = field(default_factory=dict)

    def first(self, now: float) -> int:
        return math.floor((now - self.window) / span_of(self.window))

    def since(self, now: float) -> float:
        return self.first(now) * span_of(self.window)

    def wants(self, key: str, start: int, now: float) -> bool:
        index = int(start // span_of(self.window))
        bucket = self.buckets.get(index)
        return index >= self.first(now) and (bucket is None or key not in bucket.keys)

    def add(self, key: str, start: int, data: dict[str, Any], now: float) -> None:
        if not self.wants(key, start, now):
            return
        target = self.buckets.setdefault(int(start // span_of(self.window)), _Bucket())
        target.keys.add(key)
        part = self.parse(data)
        if part is not None:
            target.part = part if target.part is None else target.part.merge(part)

    def forget(self, key: str, start: int) -> None:
        bucket = self.buckets.get(int(start // span_of(self.window)))
        if bucket is not None:
            bucket.keys.discard(key)

    def prune(self, now: float) -> None:
        first = self.first(now)
        for index in [i for i in self.buckets if i < first]:
            del self.buckets[index]

    def total(self) -> Any:
        merged = None
        for index in sorted(self.buckets):
            found = self.buckets[index].part
            if found is not None:
                merged = found if merged is None else merged.merge(found)
        return merged


@dataclass
class _Counts:
    """End, requests and errors of each of a canary's windows read that may count for its
    current step (which began at ``step_started``, epoch seconds)."""

    step_started: float
    used: float
    windows: dict[str, tuple[float, int, int]] = field(default_factory=dict)

    def since(self, now: float) -> float:
        return self.step_started - CANARY_LEAD_SECONDS

    def wants(self, key: str, start: int, now: float) -> bool:
        return start + CANARY_LEAD_SECONDS >= self.step_started and key not in self.windows

    def add(self, key: str, start: int, data: dict[str, Any], now: float) -> None:
        if self.wants(key, start, now):
            self.windows[key] = (
                float(data.get("end", 0)),
                int(data.get("requests", 0)),
                int(data.get("errors", 0)),
            )

    def forget(self, key: str, start: int) -> None:
        self.windows.pop(key, None)

    def prune(self, now: float) -> None:
        for key in [k for k in self.windows if not self._counts(k)]:
            del self.windows[key]
        while len(self.windows) > WINDOW_COUNTS_KEPT:
            del self.windows[next(iter(self.windows))]  # the oldest read

    def _counts(self, key: str) -> bool:
        start = window_start(key)
        return start is not None and start + CANARY_LEAD_SECONDS >= self.step_started


class _Reader(Protocol):
    used: float

    def since(self, now: float) -> float: ...
    def wants(self, key: str, start: int, now: float) -> bool: ...
    def add(self, key: str, start: int, data: dict[str, Any], now: float) -> None: ...
    def forget(self, key: str, start: int) -> None: ...
    def prune(self, now: float) -> None: ...


@dataclass
class _Prefix:
    """Everyone's cache of the objects under one prefix (one version's sketch windows, or
    its quality objects); the lock makes their passes take turns, so none reads or adds a
    window twice."""

    used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    series: dict[tuple[str, float], _Series] = field(default_factory=dict)
    """By kind of object and window length (not span: monitors of one version with other
    windows of one span would otherwise evict each other's older buckets)."""
    counts: _Counts | None = None

    def readers(self) -> list[_Reader]:
        return [*self.series.values(), *([self.counts] if self.counts else [])]

    def drop_idle(self, now: float) -> None:
        for kind in [k for k, s in self.series.items() if now - s.used > IDLE_SECONDS]:
            del self.series[kind]
        if self.counts is not None and now - self.counts.used > IDLE_SECONDS:
            self.counts = None


_prefixes: OrderedDict[tuple[str, str], _Prefix] = OrderedDict()
"""By store bucket and key prefix (deployment and version), the least recently used first."""


def _prefix(bucket: str, prefix: str, now: float) -> _Prefix:
    key = (bucket, prefix)
    entry = _prefixes.get(key)
    if entry is None:
        entry = _prefixes[key] = _Prefix(now)
    entry.used = now
    _prefixes.move_to_end(key)
    while _prefixes:
        oldest = next(iter(_prefixes.values()))
        if now - oldest.used <= IDLE_SECONDS:
            break
        _prefixes.popitem(last=False)
    entry.drop_idle(now)
    return entry


@dataclass
class LiveQuality:
    """The quality objects of one version (``quality/<deployment>/<version>/``) added up.

    Object layout (written by the serving pods every sketch interval, when non-empty)::

        {"deployment": "iris", "version": "iris-v2", "pod": "iris-abc-w0",
         "start": 1.7e9, "end": 1.7e9,
         "quality": QualityCounts.to_dict() | null,   # labels joined for this version
         "agreement": Agreement.to_dict() | null,     # a shadow version against stable
         "feedback": {"received": 0, "joined": 0, "unknown": 0, "expired": 0},
         "groups": {"sex": {"F": QualityCounts.to_dict(), "M": ...}}}  # optional

    The per-deployment feedback counters (ids nobody answered, or answered too long ago) are
    written under the pseudo-version ``-`` (not a valid ModelVersion name).

    ``groups`` holds the labels joined for the version per group of each sensitive feature
    (live fairness, see :mod:`modelops.serving.feedback`). Merged group by group; a feature
    merged past ``MAX_GROUPS`` groups keeps the ``MAX_GROUPS`` with the most labels and adds
    the rest into ``(other)`` (so the sum stays bounded; which groups are folded can depend on
    the order of merging, the totals do not).
    """

    quality: QualityCounts | None = None
    agreement: Agreement | None = None
    feedback: dict[str, int] = field(default_factory=dict)
    groups: dict[str, dict[str, QualityCounts]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveQuality:
        """Parse one object. Raises ValueError/KeyError/TypeError when malformed."""
        quality, agreement = data.get("quality"), data.get("agreement")
        groups = data.get("groups") or {}
        if not isinstance(groups, dict):
            raise TypeError("groups must be an object")
        return cls(
            QualityCounts.from_dict(quality) if quality else None,
            Agreement.from_dict(agreement) if agreement else None,
            {str(k): int(v) for k, v in (data.get("feedback") or {}).items()},
            {
                str(feature): cls._capped(
                    {str(g): QualityCounts.from_dict(c) for g, c in table.items()}
                )
                for feature, table in groups.items()
            },
        )

    def merge(self, other: LiveQuality) -> LiveQuality:
        quality = _merge_optional(self.quality, other.quality)
        agreement = _merge_optional(self.agreement, other.agreement)
        feedback = dict(self.feedback)
        for k, v in other.feedback.items():
            feedback[k] = feedback.get(k, 0) + v
        groups = {feature: dict(table) for feature, table in self.groups.items()}
        for feature, table in other.groups.items():
            mine = groups.setdefault(feature, {})
            for group, counts in table.items():
                mine[group] = counts if group not in mine else mine[group].merge(counts)
            groups[feature] = self._capped(mine)
        return LiveQuality(quality, agreement, feedback, groups)

    @staticmethod
    def _capped(table: dict[str, QualityCounts]) -> dict[str, QualityCounts]:
        """At most MAX_GROUPS named groups: those with the fewest labels go into ``(other)``."""
        named = sorted((g for g in table if g != OTHER_GROUP), key=lambda g: (-table[g].labels, g))
        if len(named) <= MAX_GROUPS:
            return table
        kept = {g: table[g] for g in named[:MAX_GROUPS]}
        other = table.get(OTHER_GROUP)
        for g in named[MAX_GROUPS:]:
            other = table[g] if other is None else other.merge(table[g])
        if other is not None:
            kept[OTHER_GROUP] = other
        return kept


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
    entry = _prefix(bucket, prefix, now)
    async with entry.lock:
        series = entry.series.get((kind, window))
        if series is None:
            series = entry.series[(kind, window)] = _Series(window, parse, now)
        series.used = now
        series.prune(now)
        purpose = "quality" if kind == "quality" else "sketches"
        await _read_new(store, bucket, prefix, entry, series, purpose, now)
        merged: M | None = series.total()
        return merged


async def canary_counts(
    store: ArtifactStore, bucket: str, namespace: str, deployment: str, state: State
) -> dict[str, int]:
    """Requests and errors the canary answered since its current step began, as
    ``{"canary_requests": n, "canary_errors": n}`` (zeros while no step is in flight).

    The sum over the canary's sketch windows (``<namespace>/sketches/<deployment>/<canary>/``,
    fields ``end``, ``requests``, ``errors``) whose key names a start at most
    :data:`CANARY_LEAD_SECONDS` before the step began and that end at or after it. Windows are
    read through the cache the canary's monitors share, so each is read once. Raises
    :class:`modelops.storage.ArtifactError` when the store does not answer.
    """
    if not state.canary_active or state.step is None or state.step_started is None:
        return {"canary_requests": 0, "canary_errors": 0}
    prefix = f"{namespace}/sketches/{deployment}/{state.canary}/"
    now = time.time()
    entry = _prefix(bucket, prefix, now)
    async with entry.lock:
        counts = entry.counts
        if counts is None:
            counts = entry.counts = _Counts(state.step_started, now)
        counts.step_started, counts.used = state.step_started, now
        counts.prune(now)
        listed = await _read_new(store, bucket, prefix, entry, counts, "canary-counts", now)
        requests = errors = 0
        for key in listed:
            found = counts.windows.get(key)
            if found is not None and found[0] >= state.step_started:
                requests += found[1]
                errors += found[2]
        return {"canary_requests": requests, "canary_errors": errors}


async def _read_new(
    store: ArtifactStore,
    bucket: str,
    prefix: str,
    entry: _Prefix,
    reader: _Reader,
    purpose: str,
    now: float,
) -> list[str]:
    """List the objects under ``prefix`` from the first second ``reader`` wants on, read
    those it wants and has not added, and offer each one read to every reader of ``entry``.
    Returns the keys listed. Call with ``entry.lock`` held."""
    listed = await list_since(store, Location(bucket, prefix), purpose, reader.since(now))
    keys = [info.location.key for info in listed]
    for key in keys:
        start = window_start(key)
        if start is None or not reader.wants(key, start, now):
            continue  # the key names the window's start: old ones are never read
        data: dict[str, Any] = await read_json(store, Location(bucket, key), purpose)
        SKETCH_WINDOWS_READ.inc()
        reader.add(key, start, data, now)  # what it cannot parse fails its pass, as ever
        for other in entry.readers():
            if other is reader:
                continue
            try:
                other.add(key, start, data, now)
            except Exception:  # its own pass reads it again, and fails there
                other.forget(key, start)
    return keys
