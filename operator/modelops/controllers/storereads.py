"""The operator's reads of what serving pods write to the store, each request counted.

Serving pods write two kinds of objects the operator polls (the store sends no events):

- window objects, written once and never changed, keyed by the second their window starts:
  ``<ns>/sketches/<deployment>/<version>/<start>-<pod>.json`` (and quality objects alike,
  ``<ns>/quality/...``). :func:`list_since` lists them from a start with ListObjectsV2's
  ``StartAfter``, so a pass lists the windows it may still need, not every window ever
  written; :mod:`modelops.controllers.windows` reads each once.
- pod reports, ``<ns>/serving/<deployment>/pods/<pod>.json``, rewritten by their pod:
  :func:`pod_reports` reads one only when its ETag (from the listing) changed.

Every request is counted in ``modelops_store_requests_total{op, purpose}`` and every key a
listing returned in ``modelops_store_keys_listed_total{purpose}``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from modelops.controllers.metrics import STORE_KEYS_LISTED, STORE_REQUESTS
from modelops.serving.table import TRANSIENT_REASON
from modelops.storage import ArtifactError, ArtifactStore, Location, ObjectInfo

EPOCH_DIGITS = 10
"""Digits of a window start in its key (``str(int(start))``, epoch seconds): 10 from
2001-09-09 (1e9 s) until 2286-11-20 (1e10 s). Strings of digits of one length sort as their
numbers do, so among such keys the store's key order is time order."""
POD_REPORTS = "pod-reports"
REPORT_FRESH_SECONDS = 30.0
"""A serving pod's report older than this is ignored (the pod is gone or stuck)."""
REPORTS_IDLE_SECONDS = 3600.0
"""The cached reports of a Deployment no pass asked about for this long are dropped."""


def window_start(key: str) -> int | None:
    """The start, in whole epoch seconds, that a window object's key names
    (``.../<start>-<pod>.json``); None for a key not named so (its name does not begin with
    ASCII digits)."""
    start = key.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(start) if start.isascii() and start.isdigit() else None


def start_after(prefix: str, since: float) -> str | None:
    """The ``StartAfter`` key from which a listing of ``prefix`` returns every window object
    whose key names a start at or after ``since`` (epoch seconds): ``prefix + str(first)``
    with ``first = ceil(since)``. It sorts before ``<first>-<pod>.json`` and after the key of
    every earlier start of :data:`EPOCH_DIGITS` digits. None (list everything) when ``first``
    has another number of digits.

    Keys named otherwise still list where they sort: those beginning with a letter (after
    every digit) are listed and the caller skips them, as it always did. Left out, though
    no writer makes them (they use ``str(int(start))``): starts with a leading zero or of 11
    digits (after the year 2286), and a key named by the bare start with no ``-<pod>``.
    """
    first = str(math.ceil(since))
    return prefix + first if len(first) == EPOCH_DIGITS and first.isdigit() else None


async def list_since(
    store: ArtifactStore, loc: Location, purpose: str, since: float | None = None
) -> list[ObjectInfo]:
    """The objects under the prefix ``loc.key`` (key order), with ETags; with ``since``,
    only from the window objects that start at or after it on (:func:`start_after`).
    Counted as one ``list`` of ``purpose``. Raises :class:`ArtifactError`
    ``StoreUnavailable`` when the store does not answer or refuses."""
    bound = None if since is None else start_after(loc.key, since)
    STORE_REQUESTS.labels("list", purpose).inc()
    found = await asyncio.to_thread(store.list_objects, loc, start_after=bound)
    STORE_KEYS_LISTED.labels(purpose).inc(len(found))
    return found


async def read_json(store: ArtifactStore, loc: Location, purpose: str) -> Any:
    """The object's bytes parsed as JSON; counted as one ``get`` of ``purpose``. Raises
    :class:`ArtifactError` ``ArtifactMissing`` when it is absent, ``ValueError`` when it is
    not JSON."""
    STORE_REQUESTS.labels("get", purpose).inc()
    return json.loads(await asyncio.to_thread(store.get, loc))


@dataclass
class _Reports:
    used: float
    by_key: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """Key -> (ETag, parsed report) of every report the last listing returned."""


_reports: OrderedDict[tuple[str, str], _Reports] = OrderedDict()
"""By store bucket and prefix, the least recently asked first."""


async def pod_reports(
    store: ArtifactStore,
    bucket: str,
    namespace: str,
    deployment: str,
    version: str | None,
    *,
    every_pod: bool,
) -> tuple[bool, list[str]]:
    """Whether the serving pods that should hold ``version`` report it loaded (and there is
    one), and the pods that refused it for good (``"pod: Reason"``, the transient
    ``StoreUnavailable`` left out). In model routing (``every_pod``) every pod holds every
    version; in gateway routing only the pods whose table lists it. Reports older than
    :data:`REPORT_FRESH_SECONDS` (by their ``time``) are ignored; ``(False, [])`` when
    ``version`` is None.

    Reports are listed under ``<namespace>/serving/<deployment>/pods/``; a report is read
    (GET) only when its ETag differs from the one it had when last read (an ETag changes
    whenever its object is written anew, so a cached report is never older than the listing
    says). A report once read and then missing (deleted, or not listed for a moment) counts
    until it is stale by its ``time``, so a pod cannot drop out of "every pod loaded it". Raises
    :class:`ArtifactError` ``StoreUnavailable`` when the store does not answer, ``ValueError``
    for a report that is not JSON.
    """
    if version is None:
        return False, []
    reports = await _current_reports(
        store, Location(bucket, f"{namespace}/serving/{deployment}/pods/")
    )
    now = time.time()
    fresh = [
        r
        for r in reports
        if now - float(r.get("time", 0)) < REPORT_FRESH_SECONDS
        and (every_pod or version in r.get("versions", []))
    ]
    failures = [
        f"{r.get('pod', '?')}: {reason}"
        for r in fresh
        if (reason := r.get("failed", {}).get(version)) and reason != TRANSIENT_REASON
    ]
    return bool(fresh) and all(version in r.get("loaded", []) for r in fresh), failures


async def _current_reports(store: ArtifactStore, prefix: Location) -> list[dict[str, Any]]:
    """Every report listed under ``prefix``, from the cache while its ETag is unchanged;
    keys no longer listed leave the cache."""
    now = time.monotonic()
    cache_key = (prefix.bucket, prefix.key)
    cached = _reports.pop(cache_key, None) or _Reports(now)
    current = _Reports(now)
    for info in await list_since(store, prefix, POD_REPORTS):
        key = info.location.key
        known = cached.by_key.get(key)
        if known is not None and info.etag and known[0] == info.etag:
            current.by_key[key] = known
            continue
        try:
            report = await read_json(store, info.location, POD_REPORTS)
        except ArtifactError as exc:
            if exc.reason == "ArtifactMissing":
                continue  # gone since the listing: kept below while its last copy is fresh
            raise
        current.by_key[key] = (info.etag, report)
    # A report missing from one listing (its pod stopped, or the store between an overwrite's
    # delete and write) still speaks until it is stale: a pod that has not loaded the canary
    # must never drop out of "every pod loaded it" for one pass.
    wall = time.time()
    for key, (etag, report) in cached.by_key.items():
        if key not in current.by_key and wall - float(report.get("time", 0)) < REPORT_FRESH_SECONDS:
            current.by_key[key] = (etag, report)
    _reports[cache_key] = current
    while _reports:
        oldest = next(iter(_reports.values()))
        if now - oldest.used <= REPORTS_IDLE_SECONDS:
            break
        _reports.popitem(last=False)
    return [report for _, report in current.by_key.values()]
