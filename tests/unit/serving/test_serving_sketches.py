"""Live sketch windows: their contents equal the counts computed directly from the requests
sent, they reset after each flush, and their memory stays bounded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from modelops.drift.sketch import Sketch
from modelops.serving import sketches
from modelops.storage import Location
from unit.serving.test_serving_support import (
    BUCKET,
    IRIS_FEATURES,
    MemoryStore,
    iris_frame,
    matrix_request,
    post,
    routing_table,
    serve_in_process,
    train_version,
)


@pytest.fixture(scope="module")
def trained() -> tuple[MemoryStore, dict[str, Any], dict[str, Any]]:
    store = MemoryStore()
    frame = iris_frame()
    v1 = train_version(store, "iris-v1", frame, "species", params={"max_iter": 500})
    v2 = train_version(store, "iris-v2", frame, "species", "DecisionTreeClassifier")
    return store, v1, v2


def windows(store: MemoryStore, version: str) -> list[tuple[str, dict[str, Any]]]:
    prefix = f"default/sketches/iris/{version}/"
    return [
        (key, orjson.loads(store.get(Location(BUCKET, key))))
        for key in store.list(Location(BUCKET, prefix))
    ]


def assert_same_counts(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Counts exactly; offsets (float sums, 6 significant digits per window) closely."""
    assert got.keys() == expected.keys()
    for name in got:
        g, e = dict(got[name]), dict(expected[name])
        if "offsets" in e:
            np.testing.assert_allclose(g.pop("offsets"), e.pop("offsets"), rtol=1e-5, atol=1e-9)
        assert g == e, name


def profile_of(store: MemoryStore, entry: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(store.get(Location.parse(entry["profile"]["uri"])))  # type: ignore[no-any-return]


async def test_windows_hold_exactly_what_was_sent(
    trained: tuple[MemoryStore, dict[str, Any], dict[str, Any]],
) -> None:
    store, v1, v2 = trained
    table = routing_table([(v1, "stable", 100), (v2, "canary", 0)])
    rng = np.random.default_rng(3)
    X = iris_frame()[IRIS_FEATURES].to_numpy() + rng.normal(0, 0.3, (150, 4))
    sent: dict[str, list[np.ndarray]] = {"iris-v1": [], "iris-v2": []}
    labels: dict[str, list[str]] = {"iris-v1": [], "iris-v2": []}
    async with serve_in_process(store, table) as (server, url), aiohttp.ClientSession() as s:
        for round_ in range(2):
            requests = []
            for i in range(120):
                version = "iris-v2" if i % 3 == 0 else "iris-v1"
                rows = X[rng.choice(len(X), int(rng.integers(1, 40)))]
                requests.append((version, rows))
            answers = await asyncio.gather(
                *(
                    post(s, f"{url}/v2/models/iris/versions/{v}/infer", matrix_request(r))
                    for v, r in requests
                )
            )
            for (version, rows), (status, answer) in zip(requests, answers, strict=True):
                assert status == 200
                sent[version].append(rows)
                labels[version] += answer["outputs"][0]["data"]
            # Routed to iris-v1 but refused: an error, and no rows.
            bad = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1]}]}
            status, _ = await post(s, f"{url}/v2/models/iris/versions/1/infer", bad)
            assert status == 400
            if round_ == 0:
                # A window closes once a second old (keys are start seconds), or at shutdown.
                # Both windows must be a second old: wait for the younger one.
                windows_now = [v.window for v in server.manager.state.versions.values()]
                opened = max(w.start for w in windows_now if w is not None)
                await asyncio.sleep(max(0.0, opened + 1.01 - time.time()))
                assert await server.flush_sketches() == 2
                assert await server.flush_sketches() == 0  # too young: not closed yet
                first = {v: len(windows(store, v)) for v in sent}
                assert first == {"iris-v1": 1, "iris-v2": 1}
            else:
                assert await server.flush_sketches(final=True) == 2
                assert await server.flush_sketches(final=True) == 0  # nothing new: not written

    for version, entry in (("iris-v1", v1), ("iris-v2", v2)):
        objects = windows(store, version)
        assert len(objects) == 2
        profile = profile_of(store, entry)
        direct = Sketch.empty(profile)
        direct.update(np.concatenate(sent[version]), np.array(labels[version], dtype=object))
        merged = Sketch.from_dict(objects[0][1]).merge(Sketch.from_dict(objects[1][1]))
        expected, got = direct.to_dict(), merged.to_dict()
        assert got["nRows"] == expected["nRows"] == sum(len(r) for r in sent[version])
        assert_same_counts(got["features"], expected["features"])
        assert got["predictions"] == expected["predictions"]
        n_requests = len(sent[version]) + (2 if version == "iris-v1" else 0)
        assert sum(o["requests"] for _, o in objects) == n_requests
        assert sum(o["errors"] for _, o in objects) == (2 if version == "iris-v1" else 0)
        for key, obj in objects:
            assert key == f"default/sketches/iris/{version}/{int(obj['start'])}-local.json"
            assert obj["deployment"] == "iris" and obj["version"] == version
            assert obj["pod"] == "local" and obj["end"] >= obj["start"]
            assert obj["profile"] == profile["fingerprint"]
            buckets = obj["latency_buckets"]
            assert list(buckets)[-1] == "+Inf" and buckets["+Inf"] == obj["requests"]
            assert list(buckets.values()) == sorted(buckets.values())  # cumulative


async def test_no_profile_no_sketch(
    trained: tuple[MemoryStore, dict[str, Any], dict[str, Any]],
) -> None:
    store, v1, _ = trained
    entry = {k: v for k, v in v1.items() if k != "profile"}
    table = routing_table([(entry, "stable", 100)], model="bare")
    async with serve_in_process(store, table) as (server, url), aiohttp.ClientSession() as s:
        status, _ = await post(s, f"{url}/v2/models/bare/infer", matrix_request([[1, 2, 3, 4]]))
        assert status == 200
        assert server.manager.state.versions["iris-v1"].window is None
        assert await server.flush_sketches(final=True) == 0
    assert not store.list(Location(BUCKET, "default/sketches/bare/"))


async def test_pending_rows_are_bounded(
    trained: tuple[MemoryStore, dict[str, Any], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, v1, _ = trained
    monkeypatch.setattr(sketches, "FOLD_ROWS", 25)
    table = routing_table([(v1, "stable", 100)], model="bounded")
    async with serve_in_process(store, table) as (server, url), aiohttp.ClientSession() as s:
        window = server.manager.state.versions["iris-v1"].window
        assert window is not None
        most = 0
        for _ in range(8):
            status, _ = await post(
                s, f"{url}/v2/models/bounded/infer", matrix_request([[1, 2, 3, 4]] * 10)
            )
            assert status == 200
            most = max(most, window.pending)
        assert 0 < most < 25  # folded every 25 rows: at most FOLD_ROWS + one batch wait
        await server.flush_sketches(final=True)
    (key,) = store.list(Location(BUCKET, "default/sketches/bounded/"))
    obj = orjson.loads(store.get(Location(BUCKET, key)))
    assert obj["nRows"] == 80 and obj["requests"] == 8


async def test_many_folds_count_everything(
    trained: tuple[MemoryStore, dict[str, Any], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, v1, _ = trained
    monkeypatch.setattr(sketches, "FOLD_ROWS", 16)
    table = routing_table([(v1, "stable", 100)], model="folded")
    rows = iris_frame()[IRIS_FEATURES].to_numpy()
    async with serve_in_process(store, table) as (server, url), aiohttp.ClientSession() as s:
        for i in range(0, 150, 10):
            status, _ = await post(
                s, f"{url}/v2/models/folded/infer", matrix_request(rows[i : i + 10])
            )
            assert status == 200
        await server.flush_sketches(final=True)
    (key,) = store.list(Location(BUCKET, "default/sketches/folded/"))
    obj = orjson.loads(store.get(Location(BUCKET, key)))
    direct = Sketch.empty(profile_of(store, v1))
    direct.update(rows)
    assert obj["nRows"] == 150
    assert_same_counts(obj["features"], direct.to_dict()["features"])
