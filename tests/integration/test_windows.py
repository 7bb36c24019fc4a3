"""Drift monitors' window sums (controllers/windows.py) against a real S3 server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import numpy as np
import pandas as pd
from prometheus_client import REGISTRY

from modelops.controllers import windows
from modelops.drift import Sketch, build_profile
from modelops.drift.quality import Agreement, QualityCounts
from modelops.local.s3server import S3Server
from modelops.storage import ArtifactStore, Location

BUCKET = "modelops"
_RNG = np.random.default_rng(5)
PROFILE = build_profile(pd.DataFrame({"a": _RNG.normal(size=500), "b": _RNG.normal(size=500)}))
OTHER = build_profile(pd.DataFrame({"a": _RNG.normal(size=400), "b": _RNG.normal(size=400)}))


def put_window(
    store: ArtifactStore, prefix: str, start: float, pod: str, rows: int, profile: dict = PROFILE
) -> None:
    sketch = Sketch.empty(profile, start=start, end=start + 5)
    sketch.update(np.random.default_rng(int(start) % 1000).normal(size=(rows, 2)))
    data = sketch.to_dict() | {"requests": rows, "errors": 0}
    store.put(Location(BUCKET, f"{prefix}{int(start)}-{pod}.json"), json.dumps(data).encode())


def reads() -> float:
    return REGISTRY.get_sample_value("modelops_sketch_windows_read_total") or 0.0


async def test_each_window_is_read_once_and_old_or_foreign_ones_not_counted(
    s3: S3Server,
) -> None:
    store = s3.store()
    store.ensure_bucket(BUCKET)
    prefix = f"ns-{uuid.uuid4().hex[:8]}/sketches/iris/iris-v1/"
    now = time.time()
    window = 320.0  # buckets of 10 s
    put_window(store, prefix, now - 30, "pod-a", 100)
    put_window(store, prefix, now - 30, "pod-b", 50)
    put_window(store, prefix, now - 20, "pod-a", 25, profile=OTHER)  # another profile
    put_window(store, prefix, now - window - 60, "pod-a", 1000)  # long before the window
    fingerprint = PROFILE["fingerprint"]

    before = reads()
    merged = await windows.merged_windows(store, BUCKET, prefix, fingerprint, window)
    assert merged is not None and merged.n_rows == 150
    assert reads() - before == 3  # the old window is skipped by its key, never read

    # Concurrent checks (two monitors on one version) neither read nor add a window twice.
    put_window(store, prefix, now - 10, "pod-b", 7)
    before = reads()
    results = await asyncio.gather(
        *(windows.merged_windows(store, BUCKET, prefix, fingerprint, window) for _ in range(3))
    )
    assert [r.n_rows for r in results if r is not None] == [157, 157, 157]
    assert reads() - before == 1

    # Counts equal one sketch of all the rows, whatever the buckets.
    direct = Sketch.empty(PROFILE)
    for start, rows in ((now - 30, 100), (now - 30, 50), (now - 10, 7)):
        direct.update(np.random.default_rng(int(start) % 1000).normal(size=(rows, 2)))
    got = results[0]
    assert got is not None
    for name, feature in direct.features.items():
        assert np.array_equal(got.features[name].counts, feature.counts), name


def put_quality(store: ArtifactStore, prefix: str, start: float, pod: str, doc: dict) -> None:
    store.put(Location(BUCKET, f"{prefix}{int(start)}-{pod}.json"), json.dumps(doc).encode())


async def test_quality_objects_add_up_and_malformed_ones_are_skipped(s3: S3Server) -> None:
    store = s3.store()
    store.ensure_bucket(BUCKET)
    prefix = f"ns-{uuid.uuid4().hex[:8]}/quality/iris/iris-v1/"
    now = time.time()
    left = QualityCounts.empty("classification", ["a", "b"])
    left.add_classification(["a", "a", "b"], ["a", "b", "b"])
    right = QualityCounts.empty("classification", ["b", "a"])
    right.add_classification(["b"], ["a"])
    agreement = Agreement(compared=4, agreed=3)
    put_quality(store, prefix, now - 20, "pod-a", {"quality": left.to_dict()})
    put_quality(
        store,
        prefix,
        now - 10,
        "pod-b",
        {"quality": right.to_dict(), "agreement": agreement.to_dict(), "feedback": {"joined": 1}},
    )
    put_quality(store, prefix, now - 5, "pod-c", {"quality": {"task": "ranking"}})

    merged = await windows.merged_quality(store, BUCKET, prefix, 300.0)

    assert merged is not None and merged.quality is not None
    assert merged.quality.labels == 4
    assert merged.quality.value("accuracy") == 0.5
    assert merged.agreement == agreement
    assert merged.feedback == {"joined": 1}
