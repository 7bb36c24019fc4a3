"""The operator's reads of serving pods' objects against a real S3 server (SeaweedFS): listings
from StartAfter, each window read once whoever sums it, pod reports read only when their ETag
changed. Reads are counted by ``modelops_store_requests_total{op, purpose}`` and
``modelops_store_keys_listed_total{purpose}``, which the tests read."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from modelops.controllers import storereads, windows
from modelops.drift import Sketch, build_profile
from modelops.local.s3server import S3Server
from modelops.rollout import State
from modelops.serving.table import TRANSIENT_REASON
from modelops.storage import ArtifactStore, Location

BUCKET = "modelops"
_RNG = np.random.default_rng(7)
PROFILE = build_profile(pd.DataFrame({"a": _RNG.normal(size=300), "b": _RNG.normal(size=300)}))
WINDOW = 320.0  # seconds; buckets of 10 s


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtifactStore]:
    with S3Server(Path(tmp_path_factory.mktemp("store-reads")) / "s3") as s3:
        client = s3.store()
        client.ensure_bucket(BUCKET)
        yield client


def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


def requests(op: str, purpose: str) -> float:
    labels = {"op": op, "purpose": purpose}
    return REGISTRY.get_sample_value("modelops_store_requests_total", labels) or 0.0


def keys_listed(purpose: str) -> float:
    labels = {"purpose": purpose}
    return REGISTRY.get_sample_value("modelops_store_keys_listed_total", labels) or 0.0


class Counted:
    """Store requests of one purpose made inside the ``with`` block."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self.gets = self.lists = self.listed = 0.0

    def __enter__(self) -> Counted:
        self._before = self._now()
        return self

    def __exit__(self, *_: object) -> None:
        after = self._now()
        self.gets, self.lists, self.listed = (
            a - b for a, b in zip(after, self._before, strict=True)
        )

    def _now(self) -> tuple[float, float, float]:
        p = self.purpose
        return requests("get", p), requests("list", p), keys_listed(p)


def put_window(
    store: ArtifactStore,
    prefix: str,
    start: float,
    pod: str,
    rows: int,
    *,
    end: float | None = None,
    errors: int = 0,
) -> None:
    sketch = Sketch.empty(PROFILE, start=start, end=start + 5 if end is None else end)
    sketch.update(np.random.default_rng(int(start) % 1000).normal(size=(rows, 2)))
    data = sketch.to_dict() | {"requests": rows, "errors": errors}
    store.put(Location(BUCKET, f"{prefix}{int(start)}-{pod}.json"), json.dumps(data).encode())


def canary(step_started: float) -> State:
    return State(
        phase="Progressing", stable="iris-v1", canary="iris-v2", weight=10, step=0,
        step_started=step_started,
    )  # fmt: skip


# -- the storage module ------------------------------------------------------------------------


def test_a_listing_from_start_after_returns_only_the_keys_after_it(store: ArtifactStore) -> None:
    prefix = f"{namespace()}/sketches/iris/iris-v1/"
    names = ["1700000020-b.json", "1700000000-a.json", "latest.json", "1700000010-a.json"]
    for name in names:
        store.put(Location(BUCKET, prefix + name), b"{}")

    found = store.list_objects(Location(BUCKET, prefix), start_after=prefix + "1700000010")

    assert [o.location.key[len(prefix) :] for o in found] == [
        "1700000010-a.json",
        "1700000020-b.json",
        "latest.json",
    ]


def test_a_listing_gives_each_object_the_md5_etag_of_its_bytes(store: ArtifactStore) -> None:
    loc = Location(BUCKET, f"{namespace()}/serving/iris/pods/pod-a.json")
    store.put(loc, b'{"time": 1}')
    first = store.list_objects(loc)[0].etag
    store.put(loc, b'{"time": 2}')
    second = store.list_objects(loc)[0].etag

    assert (first, second) == (
        hashlib.md5(b'{"time": 1}').hexdigest(),
        hashlib.md5(b'{"time": 2}').hexdigest(),
    )


# -- sketch windows --------------------------------------------------------------------------


async def test_a_pass_lists_from_the_first_bucket_of_the_window(store: ArtifactStore) -> None:
    prefix = f"{namespace()}/sketches/iris/iris-v1/"
    now = time.time()
    for start in (now - WINDOW - 60, now - WINDOW - 120):  # long before the window
        put_window(store, prefix, start, "pod-a", 10)
    put_window(store, prefix, now - 30, "pod-a", 100)
    put_window(store, prefix, now - 30, "pod-b", 50)

    with Counted("sketches") as counted:
        merged = await windows.merged_windows(store, BUCKET, prefix, PROFILE["fingerprint"], WINDOW)

    assert merged is not None and merged.n_rows == 150
    assert (counted.lists, counted.listed, counted.gets) == (1, 2, 2)


async def test_a_second_pass_over_unchanged_windows_reads_none(store: ArtifactStore) -> None:
    prefix = f"{namespace()}/sketches/iris/iris-v1/"
    now = time.time()
    for pod in ("pod-a", "pod-b", "pod-c"):
        put_window(store, prefix, now - 30, pod, 20)
    fingerprint = PROFILE["fingerprint"]
    await windows.merged_windows(store, BUCKET, prefix, fingerprint, WINDOW)

    with Counted("sketches") as counted:
        merged = await windows.merged_windows(store, BUCKET, prefix, fingerprint, WINDOW)

    assert merged is not None and merged.n_rows == 60
    assert (counted.lists, counted.gets) == (1, 0)


async def test_a_window_read_for_a_monitor_is_not_read_again_for_the_canary_count(
    store: ArtifactStore,
) -> None:
    prefix = f"{namespace()}/sketches/iris/iris-v2/"
    now = time.time()
    state = canary(step_started=now - 100)
    fingerprint = PROFILE["fingerprint"]
    # both readers of the version's windows have begun
    await windows.canary_counts(store, BUCKET, prefix.split("/")[0], "iris", state)
    await windows.merged_windows(store, BUCKET, prefix, fingerprint, WINDOW)
    put_window(store, prefix, now - 20, "pod-a", 40, errors=3)

    monitor = await windows.merged_windows(store, BUCKET, prefix, fingerprint, WINDOW)
    with Counted("canary-counts") as counted:
        counts = await windows.canary_counts(store, BUCKET, prefix.split("/")[0], "iris", state)

    assert monitor is not None and monitor.n_rows == 40
    assert counts == {"canary_requests": 40, "canary_errors": 3}
    assert counted.gets == 0


async def test_a_window_read_for_the_canary_count_is_not_read_again_for_a_monitor(
    store: ArtifactStore,
) -> None:
    ns = namespace()
    prefix = f"{ns}/sketches/iris/iris-v2/"
    now = time.time()
    state = canary(step_started=now - 100)
    fingerprint = PROFILE["fingerprint"]
    await windows.merged_windows(store, BUCKET, prefix, fingerprint, WINDOW)
    await windows.canary_counts(store, BUCKET, ns, "iris", state)
    put_window(store, prefix, now - 20, "pod-a", 40)

    await windows.canary_counts(store, BUCKET, ns, "iris", state)
    with Counted("sketches") as counted:
        monitor = await windows.merged_windows(store, BUCKET, prefix, fingerprint, WINDOW)

    assert monitor is not None and monitor.n_rows == 40
    assert counted.gets == 0


async def test_canary_counts_are_of_windows_ending_in_the_step_and_starting_60s_before_it(
    store: ArtifactStore,
) -> None:
    ns = namespace()
    prefix = f"{ns}/sketches/iris/iris-v2/"
    began = float(int(time.time()) - 200)
    put_window(store, prefix, began - 61, "too-early", 1000, end=began + 1)
    put_window(store, prefix, began - 60, "a", 7, end=began, errors=1)
    put_window(store, prefix, began - 30, "ended-before", 500, end=began - 25)
    put_window(store, prefix, began + 10, "a", 11, errors=2)

    with Counted("canary-counts") as counted:
        counts = await windows.canary_counts(store, BUCKET, ns, "iris", canary(began))

    assert counts == {"canary_requests": 18, "canary_errors": 3}
    assert counted.listed == 3  # the window 61 s before the step is not even listed


async def test_canary_counts_are_zero_without_a_step_in_flight(store: ArtifactStore) -> None:
    ns = namespace()
    put_window(store, f"{ns}/sketches/iris/iris-v2/", time.time() - 10, "a", 5)
    loading = State(phase="Progressing", stable="iris-v1", canary="iris-v2", weight=0)

    with Counted("canary-counts") as counted:
        counts = await windows.canary_counts(store, BUCKET, ns, "iris", loading)

    assert counts == {"canary_requests": 0, "canary_errors": 0}
    assert (counted.lists, counted.gets) == (0, 0)


# -- pod reports -----------------------------------------------------------------------------


def put_report(store: ArtifactStore, ns: str, pod: str, **fields: object) -> None:
    report = {"pod": pod, "worker": 0, "time": time.time(), "versions": ["iris-v1", "iris-v2"]}
    report |= fields
    store.put(Location(BUCKET, f"{ns}/serving/iris/pods/{pod}.json"), json.dumps(report).encode())


async def reports(
    store: ArtifactStore, ns: str, version: str = "iris-v2", every_pod: bool = True
) -> tuple[bool, list[str]]:
    return await storereads.pod_reports(store, BUCKET, ns, "iris", version, every_pod=every_pod)


async def test_a_pod_report_is_read_again_only_when_its_etag_changed(
    store: ArtifactStore,
) -> None:
    ns = namespace()
    for pod in ("pod-a", "pod-b", "pod-c"):
        put_report(store, ns, pod, loaded=["iris-v1"])
    await reports(store, ns)

    with Counted("pod-reports") as unchanged:
        await reports(store, ns)
    put_report(store, ns, "pod-b", loaded=["iris-v1"], time=time.time() + 1)
    with Counted("pod-reports") as rewritten:
        await reports(store, ns)

    assert (unchanged.lists, unchanged.gets) == (1, 0)
    assert rewritten.gets == 1


async def test_a_rewritten_pod_report_is_what_counts(store: ArtifactStore) -> None:
    ns = namespace()
    put_report(store, ns, "pod-a", loaded=["iris-v1"])
    before = await reports(store, ns)
    put_report(store, ns, "pod-a", loaded=["iris-v1", "iris-v2"])

    assert (before, await reports(store, ns)) == ((False, []), (True, []))


async def test_a_deleted_pod_report_counts_until_it_is_stale(store: ArtifactStore) -> None:
    """A report missing from a listing (its pod gone, or the store mid-overwrite) must not
    let "every pod loaded it" pass for a pod that had not: it speaks until stale."""
    ns = namespace()
    put_report(store, ns, "pod-a", loaded=["iris-v1", "iris-v2"])
    soon_stale = time.time() - storereads.REPORT_FRESH_SECONDS + 1.0
    put_report(store, ns, "pod-b", loaded=[], failed={"iris-v2": "ModelInvalid"}, time=soon_stale)
    assert await reports(store, ns) == (False, ["pod-b: ModelInvalid"])
    store.client.remove_object(BUCKET, f"{ns}/serving/iris/pods/pod-b.json")

    assert await reports(store, ns) == (False, ["pod-b: ModelInvalid"])
    await asyncio.sleep(1.2)
    assert await reports(store, ns) == (True, [])


async def test_a_stale_pod_report_is_ignored(store: ArtifactStore) -> None:
    ns = namespace()
    put_report(store, ns, "pod-a", loaded=["iris-v2"])
    stale = time.time() - storereads.REPORT_FRESH_SECONDS - 1
    put_report(store, ns, "pod-gone", loaded=[], time=stale)

    assert await reports(store, ns) == (True, [])


async def test_a_transient_load_failure_is_not_a_refusal(store: ArtifactStore) -> None:
    ns = namespace()
    put_report(store, ns, "pod-a", loaded=[], failed={"iris-v2": TRANSIENT_REASON})

    assert await reports(store, ns) == (False, [])


async def test_in_gateway_routing_only_the_pods_serving_the_version_count(
    store: ArtifactStore,
) -> None:
    ns = namespace()
    put_report(store, ns, "v2-pod", versions=["iris-v2"], loaded=["iris-v2"])
    put_report(store, ns, "v1-pod", versions=["iris-v1"], loaded=["iris-v1"])

    gateway = await reports(store, ns, every_pod=False)
    model = await reports(store, ns, every_pod=True)

    assert (gateway, model) == ((True, []), (False, []))


async def test_no_pod_report_means_not_loaded(store: ArtifactStore) -> None:
    assert await reports(store, namespace()) == (False, [])
