"""The model server as a process (``python -m modelops.serving``) against a real S3 server:
hot swaps under load, digest refusal, sketches equal to the traffic (its table watched in a
ConfigMap on the real control plane), graceful shutdown, and several workers on one port."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from modelops.drift.sketch import Sketch
from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server
from modelops.storage import ArtifactStore, Location
from unit.serving.test_serving_support import (
    BUCKET,
    IRIS_FEATURES,
    ServerProcess,
    get,
    iris_frame,
    matrix_request,
    post,
    routing_table,
    train_version,
    watched_server,
    write_json,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def versions(s3: S3Server) -> dict[str, dict[str, Any]]:
    store = s3.store()
    frame = iris_frame()
    return {
        "v1": train_version(store, "iris-v1", frame, "species", params={"max_iter": 500}),
        "v2": train_version(store, "iris-v2", frame, "species", "DecisionTreeClassifier"),
        "v3": train_version(store, "iris-v3", frame, "species", params={"C": 0.1}),
    }


def start(s3: S3Server, tmp_path: Path, table: dict[str, Any], **kwargs: Any) -> ServerProcess:
    routing = tmp_path / "routing.json"
    write_json(routing, table)
    server = ServerProcess(
        routing, s3.endpoint, s3.access_key, s3.secret_key, tmp_path / "server.log", **kwargs
    )
    server.start()
    return server


def sketches(
    store: ArtifactStore, deployment: str, version: str, namespace: str = "default"
) -> list[tuple[str, Any]]:
    prefix = Location(BUCKET, f"{namespace}/sketches/{deployment}/{version}/")
    return [(key, orjson.loads(store.get(Location(BUCKET, key)))) for key in store.list(prefix)]


async def test_hot_swap_under_load_and_digest_refusal(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    v1, v2, v3 = versions["v1"], versions["v2"], versions["v3"]
    server = start(s3, tmp_path, routing_table([(v1, "stable", 100)]))
    routing = tmp_path / "routing.json"
    rows = iris_frame()[IRIS_FEATURES].to_numpy()[::10]
    try:
        await server.wait_ready()
        url = server.url + "/v2/models/iris/infer"
        stop = asyncio.Event()
        seen: list[str] = []
        failures: list[Any] = []
        async with aiohttp.ClientSession() as session:

            async def client() -> None:
                while not stop.is_set():
                    try:
                        status, answer = await post(session, url, matrix_request(rows))
                    except aiohttp.ClientError as exc:
                        failures.append(repr(exc))
                        continue
                    if status == 200:
                        seen.append(answer["model_version"])
                    else:
                        failures.append(answer)

            async def until_only(*names: str) -> None:
                for _ in range(200):
                    mark = len(seen)
                    await asyncio.sleep(0.05)
                    if set(seen[mark:]) == set(names) and len(seen) > mark + 10:
                        return
                raise AssertionError(f"never only {names}: {Counter(seen[-50:])}")

            clients = [asyncio.create_task(client()) for _ in range(8)]
            await until_only("iris-v1")
            write_json(routing, routing_table([(v1, "stable", 50), (v2, "canary", 50)]))
            await until_only("iris-v1", "iris-v2")
            write_json(routing, routing_table([(v1, "stable", 0), (v2, "canary", 100)]))
            await until_only("iris-v2")
            write_json(routing, routing_table([(v1, "stable", 100), (v2, "canary", 0)]))
            await until_only("iris-v1")
            # A canary whose artifact does not match its digest: refused, never serves.
            bad = {**v3, "artifact": {**v3["artifact"], "sha256": "f" * 64}}
            write_json(routing, routing_table([(v1, "stable", 80), (bad, "canary", 20)]))
            bad_ready = f"{server.url}/v2/models/iris/versions/{bad['name']}/ready"
            for _ in range(100):
                status, _ = await get(session, bad_ready)
                if status == 503:  # in the table, refused (404 before the table is applied)
                    break
                await asyncio.sleep(0.05)
            assert status == 503
            assert (await get(session, server.url + "/v2/health/ready"))[0] == 200
            mark = len(seen)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            assert failures == []
            assert set(seen[mark:]) == {"iris-v1"}
            assert "iris-v3" not in seen
            status, answer = await post(
                session, server.url + "/v2/models/iris/versions/3/infer", matrix_request(rows)
            )
            assert status == 503 and "DigestMismatch" in answer["error"]
            _, meta = await get(session, server.url + "/v2/models/iris")
            (v3_status,) = [v for v in meta["parameters"]["versions"] if v["name"] == "iris-v3"]
            assert (v3_status["state"], v3_status["reason"]) == ("Failed", "DigestMismatch")
        assert "version iris-v3 refused: DigestMismatch" in server.logs()
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0


async def test_configmap_table_sketches_equal_the_traffic_and_sigterm_flushes(
    local_cluster: LocalCluster,
    namespace: str,
    s3: S3Server,
    versions: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    table = routing_table(
        [(v1, "stable", 70), (v2, "canary", 30)], deployment="iris-sk", namespace=namespace
    )
    store = s3.store()
    server = await watched_server(
        local_cluster.control_plane,
        namespace,
        s3.endpoint,
        s3.access_key,
        s3.secret_key,
        table,
        "iris-sk-routing",
        tmp_path,
        sketch_interval=1.0,
    )
    server.start()
    sent, labels, statuses = await _traffic_then_sigterm(server)
    assert set(statuses) == {200}, statuses  # drained: every request answered got a 200
    assert "final sketch window(s) written" in server.logs()
    for version, entry in (("iris-v1", v1), ("iris-v2", v2)):
        windows = sketches(store, "iris-sk", version, namespace)
        assert len(windows) >= 2, [k for k, _ in windows]
        profile = orjson.loads(store.get(Location.parse(entry["profile"]["uri"])))
        merged = Sketch.from_dict(windows[0][1])
        for _, window in windows[1:]:
            merged = merged.merge(Sketch.from_dict(window))
        direct = Sketch.empty(profile)
        direct.update(np.concatenate(sent[version]), np.array(labels[version], dtype=object))
        expected, got = direct.to_dict(), merged.to_dict()
        assert got["nRows"] == expected["nRows"] == sum(len(b) for b in sent[version])
        for name, feature in expected["features"].items():
            assert got["features"][name]["counts"] == feature["counts"], name
        assert got["predictions"] == expected["predictions"]
        assert sum(w["requests"] for _, w in windows) == len(sent[version])
        assert sum(w["errors"] for _, w in windows) == 0
        assert all(key.endswith("-test-pod.json") for key, _ in windows)
    total = sum(len(v) for v in sent.values())
    assert abs(len(sent["iris-v2"]) - 0.3 * total) <= 1  # the counter split is exact per 100


async def _traffic_then_sigterm(
    server: ServerProcess,
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[str]], Counter[int]]:
    """Six clients send requests until SIGTERM (sent ~2.5 s in) stops the server."""
    rng = np.random.default_rng(11)
    X = iris_frame()[IRIS_FEATURES].to_numpy() + rng.normal(0, 0.2, (150, 4))
    sent: dict[str, list[np.ndarray]] = {"iris-v1": [], "iris-v2": []}
    labels: dict[str, list[str]] = {"iris-v1": [], "iris-v2": []}
    statuses: Counter[int] = Counter()
    try:
        await server.wait_ready()
        url = server.url + "/v2/models/iris-sk/infer"
        async with aiohttp.ClientSession() as session:

            async def client(i: int) -> None:
                for j in range(10_000):
                    batch = X[rng.choice(len(X), 1 + (i + j) % 7)]
                    try:
                        status, answer = await post(session, url, matrix_request(batch))
                    except aiohttp.ClientError:
                        return  # the server stopped accepting: fine, after SIGTERM
                    statuses[status] += 1
                    if status != 200:
                        return
                    version = answer["model_version"]
                    sent[version].append(batch)
                    labels[version] += answer["outputs"][0]["data"]

            clients = [asyncio.create_task(client(i)) for i in range(6)]
            await asyncio.sleep(2.5)  # spans at least two periodic windows
            server.terminate()  # SIGTERM while requests are in flight
            await asyncio.gather(*clients)
        assert await asyncio.to_thread(server.wait, 30) == 0
    finally:
        server.stop()
    return sent, labels, statuses


async def test_two_workers_share_the_port_metrics_and_shutdown(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    table = routing_table([(versions["v1"], "stable", 100)], deployment="iris-mw")
    server = start(s3, tmp_path, table, workers=2, sketch_interval=60.0)
    n = 0
    try:
        await server.wait_ready(60)
        url = server.url + "/v2/models/iris-mw/infer"
        for _ in range(4):  # new connections spread over both workers (SO_REUSEPORT)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as s:
                answers = await asyncio.gather(
                    *(post(s, url, matrix_request([[5.0, 3.0, 1.5, 0.2]])) for _ in range(40))
                )
                assert {status for status, _ in answers} == {200}
                n += len(answers)
        await asyncio.sleep(1.3)  # peers publish their counters every second
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                async with aiohttp.ClientSession() as fresh:  # a new connection each time
                    _, text = await get(fresh, server.url + "/metrics")
                line = (
                    'modelops_serving_requests_total{model="iris",transport="rest",'
                    f'version="iris-v1"}} {float(n)}'
                )
                assert line in text.splitlines(), text
                assert "modelops_serving_workers 2.0" in text
            assert (await get(s, server.url + "/v2/health/ready"))[0] == 200
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0
    windows = sketches(s3.store(), "iris-mw", "iris-v1")
    pods = {json.dumps(w["pod"]) for _, w in windows}
    assert sum(w["requests"] for _, w in windows) == n
    assert pods <= {'"test-pod-w0"', '"test-pod-w1"'} and pods, pods
    if len(pods) < 2:
        pytest.fail(f"one worker took every connection: {pods}")


async def test_pod_report_lists_loaded_versions_and_is_withdrawn_on_shutdown(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    table = routing_table([(v1, "stable", 100), (v2, "canary", 0)], deployment="iris-rp")
    server = start(s3, tmp_path, table)
    store = s3.store()
    prefix = Location(BUCKET, "default/serving/iris-rp/pods/")
    try:
        await server.wait_ready()
        reports: list[str] = []
        for _ in range(100):
            reports = store.list(prefix)
            if reports:
                break
            await asyncio.sleep(0.1)
        assert len(reports) == 1, reports
        report = orjson.loads(store.get(Location(BUCKET, reports[0])))
        assert report["loaded"] == ["iris-v1", "iris-v2"] and report["failed"] == {}
    finally:
        server.stop()
    assert store.list(prefix) == []
