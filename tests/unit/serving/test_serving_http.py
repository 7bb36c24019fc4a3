"""Every endpoint and every error path over real HTTP, the server's app in-process on a free
loopback port, models trained by the real trainer and kept in an in-memory store."""

from __future__ import annotations

import asyncio
import json
import operator
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from modelops.serving.server import ModelServer
from modelops.storage import Location
from unit.serving.test_serving_support import (
    BUCKET,
    IRIS_FEATURES,
    MemoryStore,
    get,
    iris_frame,
    matrix_request,
    post,
    routing_table,
    serve_in_process,
    train_version,
)

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


class Models:
    def __init__(self) -> None:
        self.store = MemoryStore()
        frame = iris_frame()
        self.v1 = train_version(self.store, "iris-v1", frame, "species")
        self.v2 = train_version(
            self.store,
            "iris-v2",
            frame,
            "species",
            "RandomForestClassifier",
            {"n_estimators": 10},
        )
        self.frame = frame

    def estimator(self, entry: Mapping[str, Any]) -> Any:
        data = self.store.get(Location.parse(entry["artifact"]["uri"]))
        return sio.loads(data, trusted=sio.get_untrusted_types(data=data))

    def table(self, w1: int = 90, w2: int = 10, **changes: Any) -> dict[str, Any]:
        table = routing_table([(self.v1, "stable", w1), (self.v2, "canary", w2)])
        table.update(changes)
        return table


@pytest.fixture(scope="module")
def models() -> Models:
    return Models()


@asynccontextmanager
async def served(
    models: Models, table: Mapping[str, Any] | None, **config: Any
) -> AsyncIterator[tuple[ModelServer, str, aiohttp.ClientSession]]:
    async with (
        serve_in_process(models.store, table, **config) as (server, url),
        aiohttp.ClientSession() as session,
    ):
        yield server, url, session


async def test_health_and_server_metadata(models: Models) -> None:
    async with served(models, models.table()) as (_, url, s):
        assert await get(s, url + "/v2/health/live") == (200, {"live": True})
        assert await get(s, url + "/v2/health/ready") == (200, {"ready": True})
        status, meta = await get(s, url + "/v2")
        assert status == 200 and meta["name"] == "modelops" and "version" in meta


async def test_not_ready_without_a_table(models: Models) -> None:
    async with served(models, None) as (_, url, s):
        assert (await get(s, url + "/v2/health/live"))[0] == 200
        status, body = await get(s, url + "/v2/health/ready")
        assert status == 503 and body["ready"] is False and "no routing table" in body["reason"]
        status, body = await post(s, url + "/v2/models/iris/infer", matrix_request(ROWS))
        assert status == 404 and "unknown model 'iris'" in body["error"]


async def test_model_and_version_metadata(models: Models) -> None:
    async with served(models, models.table()) as (_, url, s):
        status, meta = await get(s, url + "/v2/models/iris")
        assert status == 200
        assert meta["name"] == "iris" and meta["platform"] == "sklearn"
        assert meta["versions"] == ["iris-v1", "iris-v2"]
        assert [i["name"] for i in meta["inputs"]] == IRIS_FEATURES
        assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
        assert all(i["shape"] == [-1] for i in meta["inputs"])
        assert meta["outputs"] == [
            {"name": "predict", "datatype": "BYTES", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ]
        states = {v["name"]: (v["state"], v["weight"]) for v in meta["parameters"]["versions"]}
        assert states == {"iris-v1": ("Ready", 90), "iris-v2": ("Ready", 10)}
        for ref in ("iris-v2", "2"):
            status, meta = await get(s, url + f"/v2/models/iris/versions/{ref}")
            assert status == 200 and meta["versions"] == ["iris-v2"]
            assert await get(s, url + f"/v2/models/iris/versions/{ref}/ready") == (
                200,
                {"name": "iris", "ready": True, "version": ref},
            )
        assert await get(s, url + "/v2/models/iris/ready") == (200, {"name": "iris", "ready": True})


async def test_infer_both_layouts_answer_what_the_model_predicts(models: Models) -> None:
    expected = models.estimator(models.v1).predict(np.array(ROWS)).tolist()
    per_feature = {
        "inputs": [
            {"name": name, "shape": [3, 1], "datatype": "FP64", "data": [[r[j]] for r in ROWS]}
            for j, name in enumerate(IRIS_FEATURES)
        ],
        "id": "abc",
    }
    async with served(models, models.table(100, 0)) as (_, url, s):
        for body in (matrix_request(ROWS), per_feature):
            status, answer = await post(s, url + "/v2/models/iris/infer", body)
            assert status == 200, answer
            assert answer["model_name"] == "iris" and answer["model_version"] == "iris-v1"
            assert answer["outputs"] == [
                {"name": "predict", "datatype": "BYTES", "shape": [3], "data": expected}
            ]
        assert answer["id"] == "abc"


async def test_versions_by_name_or_number_and_probabilities(models: Models) -> None:
    forest = models.estimator(models.v2)
    async with served(models, models.table()) as (_, url, s):
        for ref in ("iris-v2", "2"):
            status, answer = await post(
                s,
                url + f"/v2/models/iris/versions/{ref}/infer",
                matrix_request(ROWS, parameters={"probabilities": True}),
            )
            assert status == 200 and answer["model_version"] == "iris-v2"
            predict, proba = answer["outputs"]
            assert predict["data"] == forest.predict(np.array(ROWS)).tolist()
            assert proba["name"] == "predict_proba" and proba["shape"] == [3, 3]
            np.testing.assert_array_equal(
                np.array(proba["data"]).reshape(3, 3), forest.predict_proba(np.array(ROWS))
            )
            assert proba["parameters"]["classes"] == ["setosa", "versicolor", "virginica"]
        status, answer = await post(
            s,
            url + "/v2/models/iris/versions/1/infer",
            matrix_request(ROWS, outputs=[{"name": "predict_proba"}]),
        )
        assert status == 200 and [o["name"] for o in answer["outputs"]] == ["predict_proba"]
        status, answer = await post(
            s,
            url + "/v2/models/iris/infer",
            matrix_request(ROWS, outputs=[{"name": "predict_proba"}, {"name": "predict"}]),
        )
        assert status == 200 and [o["name"] for o in answer["outputs"]] == [
            "predict_proba",
            "predict",
        ]


ERRORS: list[tuple[str, str, bytes, int, str]] = [
    ("malformed JSON", "/v2/models/iris/infer", b'{"inputs": [', 400, "not valid JSON"),
    (
        "NaN",
        "/v2/models/iris/infer",
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,2,3,NaN]}]}',
        400,
        "non-finite",
    ),
    (
        "wrong shape",
        "/v2/models/iris/infer",
        json.dumps(
            {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
        ).encode(),
        400,
        "needs 8 values",
    ),
    (
        "wrong datatype",
        "/v2/models/iris/infer",
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]}
        ).encode(),
        400,
        "numeric, not BYTES",
    ),
    (
        "missing features",
        "/v2/models/iris/infer",
        json.dumps(
            {"inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP64", "data": [1]}]}
        ).encode(),
        400,
        "missing feature(s): sepal_width, petal_length, petal_width",
    ),
    ("unknown model", "/v2/models/nope/infer", b"{}", 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/iris/versions/iris-v9/infer", b"{}", 404, "no version"),
    ("unknown number", "/v2/models/iris/versions/7/infer", b"{}", 404, "no version '7'"),
    ("unknown endpoint", "/v2/models/iris/explain", b"{}", 404, "no such endpoint"),
    ("unknown root", "/predict", b"{}", 404, "no such endpoint"),
    ("metadata by POST", "/v2/models/iris", b"{}", 405, "not allowed"),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "message"), ERRORS, ids=[e[0] for e in ERRORS]
)
async def test_error_paths_are_json_4xx(
    models: Models, case: str, path: str, body: bytes, status: int, message: str
) -> None:
    async with served(models, models.table()) as (_, url, s):
        got, answer = await post(s, url + path, None, raw=body)
        assert got == status, answer
        assert message in answer["error"], answer


async def test_infer_by_get_is_405_and_metadata_of_unknown_model_404(models: Models) -> None:
    async with served(models, models.table()) as (_, url, s):
        status, answer = await get(s, url + "/v2/models/iris/infer")
        assert status == 405 and "POST" in answer["error"]
        status, answer = await get(s, url + "/v2/models/nope")
        assert status == 404 and "unknown model" in answer["error"]
        status, answer = await get(s, url + "/v2/models/iris/versions/9/ready")
        assert status == 404


async def test_body_over_the_limit_is_413(models: Models) -> None:
    big = matrix_request([[1.0, 2.0, 3.0, 4.0]] * 400)
    async with served(models, models.table(), max_body_bytes=4096) as (_, url, s):
        status, answer = await post(s, url + "/v2/models/iris/infer", big)
        assert status == 413 and "4096-byte limit" in answer["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        async with s.post(url + "/v2/models/iris/infer", data=chunks()) as r:
            assert r.status == 413 and "limit" in (await r.json())["error"]
        status, _ = await post(s, url + "/v2/models/iris/infer", matrix_request(ROWS))
        assert status == 200


async def test_counter_routing_is_exact(models: Models) -> None:
    async with served(models, models.table(70, 30)) as (_, url, s):
        answers = []
        for _ in range(5):  # concurrent bursts: the order differs, the totals may not
            answers += await asyncio.gather(
                *(
                    post(s, url + "/v2/models/iris/infer", matrix_request(ROWS[:1]))
                    for _ in range(60)
                )
            )
        counts = Counter(a["model_version"] for _, a in answers)
        assert counts == {"iris-v1": 210, "iris-v2": 90}


async def test_id_routing_is_sticky_and_near_the_weight(models: Models) -> None:
    async with served(models, models.table(80, 20)) as (_, url, s):
        answers = await asyncio.gather(
            *(
                post(s, url + "/v2/models/iris/infer", matrix_request(ROWS[:1], f"req-{i}"))
                for i in range(1000)
            )
        )
        canary = sum(a["model_version"] == "iris-v2" for _, a in answers)
        assert abs(canary - 200) < 5 * (1000 * 0.2 * 0.8) ** 0.5
        first = {a["id"]: a["model_version"] for _, a in answers[:20]}
        again = await asyncio.gather(
            *(post(s, url + "/v2/models/iris/infer", matrix_request(ROWS[:1], i)) for i in first)
        )
        assert {a["id"]: a["model_version"] for _, a in again} == first


@pytest.mark.parametrize("problem", ["DigestMismatch", "ArtifactMissing"])
async def test_a_version_that_fails_verification_never_serves(models: Models, problem: str) -> None:
    table = models.table(60, 40)
    canary = table["versions"][1]
    if problem == "DigestMismatch":
        canary["artifact"] = {**canary["artifact"], "sha256": "0" * 64}
    else:
        canary["artifact"] = {**canary["artifact"], "uri": f"s3://{BUCKET}/nowhere/model.skops"}
    async with served(models, table) as (server, url, s):
        # The pod stays in its Service (stable serves everything); the refusal is reported.
        assert await get(s, url + "/v2/health/ready") == (200, {"ready": True})
        assert (await get(s, url + "/v2/models/iris/ready"))[0] == 200
        assert (await get(s, url + "/v2/models/iris/versions/iris-v2/ready"))[0] == 503
        report = server.pod_report()
        assert report is not None
        assert report[1]["loaded"] == ["iris-v1"] and report[1]["failed"] == {"iris-v2": problem}
        status, answer = await post(
            s, url + "/v2/models/iris/versions/iris-v2/infer", matrix_request(ROWS)
        )
        assert status == 503 and problem in answer["error"]
        answers = await asyncio.gather(
            *(post(s, url + "/v2/models/iris/infer", matrix_request(ROWS[:1])) for _ in range(50))
        )
        assert {a["model_version"] for _, a in answers} == {"iris-v1"}
        _, meta = await get(s, url + "/v2/models/iris")
        state = {v["name"]: (v["state"], v["reason"]) for v in meta["parameters"]["versions"]}
        assert state["iris-v2"] == ("Failed", problem)
        _, metrics = await get(s, url + "/metrics")
        assert f'reason="{problem}"' in metrics and 'state="Failed"' in metrics
        assert 'modelops_serving_version_ready{model="iris",version="iris-v2"} 0.0' in metrics
        assert server.manager.state.versions["iris-v2"].model is None


async def test_untrusted_or_broken_or_mismatched_files_are_refused(models: Models) -> None:
    store = models.store
    X = models.frame[IRIS_FEATURES].to_numpy()
    y = models.frame["species"].to_numpy()
    untrusted = Pipeline(
        [("neg", FunctionTransformer(operator.neg)), ("lr", LogisticRegression(max_iter=500))]
    ).fit(X, y)
    three = LogisticRegression(max_iter=300).fit(X[:, :3], y)
    files = {
        "UntrustedTypes": sio.dumps(untrusted),
        "LoadFailed": b"not a zip file",
        "SignatureMismatch": sio.dumps(three),
    }
    for reason, data in files.items():
        loc = Location(BUCKET, f"bad/{reason}.skops")
        digest = store.put(loc, data)
        table = models.table(100, 0)
        table["versions"][1]["artifact"] = {"uri": loc.uri, "sha256": digest}
        async with served(models, table) as (server, url, s):
            v2 = server.manager.state.versions["iris-v2"]
            assert (v2.status.state, v2.status.reason) == ("Failed", reason), v2.status
            assert (await get(s, url + "/v2/models/iris/versions/iris-v2/ready"))[0] == 503


async def test_hot_swap_under_load_never_fails_a_request(models: Models) -> None:
    async with served(models, models.table(100, 0)) as (server, url, s):
        stop = asyncio.Event()
        seen: Counter[str] = Counter()
        failures: list[Any] = []

        async def client() -> None:
            while not stop.is_set():
                status, answer = await post(s, url + "/v2/models/iris/infer", matrix_request(ROWS))
                if status != 200:
                    failures.append(answer)
                else:
                    seen[answer["model_version"]] += 1

        clients = [asyncio.create_task(client()) for _ in range(8)]
        for w1, w2 in ((50, 50), (0, 100), (100, 0), (90, 10)):
            await server.manager.apply(models.table(w1, w2))
            await asyncio.sleep(0.15)
        # A table that drops v2 and brings it back: loaded again before it takes traffic.
        await server.manager.apply(routing_table([(models.v1, "stable", 100)]))
        await asyncio.sleep(0.1)
        await server.manager.apply(models.table(50, 50))
        await asyncio.sleep(0.15)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert seen["iris-v1"] > 20 and seen["iris-v2"] > 20


async def test_an_invalid_table_is_ignored(models: Models) -> None:
    async with served(models, models.table()) as (server, url, s):
        before = server.manager.state
        await server.manager.apply({**models.table(), "versions": []})
        await server.manager.apply(json.dumps(models.table(50, 40)))
        assert server.manager.state is before
        _, meta = await get(s, url + "/v2/models/iris")
        assert "sum to 100" in meta["parameters"]["routingError"]
        assert (await get(s, url + "/v2/health/ready"))[0] == 200
        _, metrics = await get(s, url + "/metrics")
        assert 'modelops_serving_routing_updates_total{result="invalid"} 2.0' in metrics


async def test_a_mixed_model_with_categories() -> None:
    store = MemoryStore()
    frame = iris_frame()
    rng = np.random.default_rng(0)
    frame.insert(2, "color", rng.choice(["red", "green", "blue"], len(frame)))
    entry = train_version(store, "flowers-v1", frame, "species", params={"max_iter": 1000})
    assert entry["signature"]["inputs"][2] == {
        "name": "color",
        "datatype": "BYTES",
        "categories": ["blue", "green", "red"],
    }
    data = store.get(Location.parse(entry["artifact"]["uri"]))
    pipeline = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    names = [f["name"] for f in entry["signature"]["inputs"]]
    rows = frame[names].head(5)
    request = {
        "inputs": [
            {
                "name": name,
                "shape": [5],
                "datatype": "BYTES" if name == "color" else "FP64",
                "data": rows[name].tolist(),
            }
            for name in names
        ]
    }
    table = routing_table([(entry, "stable", 100)], model="flowers")
    async with serve_in_process(store, table) as (_, url), aiohttp.ClientSession() as s:
        status, answer = await post(s, url + "/v2/models/flowers/infer", request)
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == pipeline.predict(rows).tolist()
        matrix = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [5, 5],
                    "datatype": "BYTES",
                    "data": rows.to_numpy().tolist(),
                }
            ]
        }
        status, answer = await post(s, url + "/v2/models/flowers/infer", matrix)
        assert status == 200 and answer["outputs"][0]["data"] == pipeline.predict(rows).tolist()


async def test_a_regression_model() -> None:
    store = MemoryStore()
    frame = iris_frame().drop(columns="species")
    entry = train_version(store, "petal-v1", frame, "petal_width", "LinearRegression")
    data = store.get(Location.parse(entry["artifact"]["uri"]))
    model = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    rows = frame.drop(columns="petal_width").head(4).to_numpy()
    table = routing_table([(entry, "stable", 100)], model="petal")
    async with serve_in_process(store, table) as (_, url), aiohttp.ClientSession() as s:
        status, answer = await post(s, url + "/v2/models/petal/infer", matrix_request(rows))
        assert status == 200, answer
        out = answer["outputs"][0]
        assert out["datatype"] == "FP64" and out["shape"] == [4]
        np.testing.assert_allclose(out["data"], model.predict(rows), rtol=0, atol=0)
        status, answer = await post(
            s,
            url + "/v2/models/petal/infer",
            matrix_request(rows, parameters={"probabilities": True}),
        )
        assert status == 400 and "classifiers" in answer["error"]
        _, meta = await get(s, url + "/v2/models/petal")
        assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


async def test_concurrent_requests_are_batched_and_answered_each_with_its_own_rows(
    models: Models,
) -> None:
    rng = np.random.default_rng(5)
    X = models.frame[IRIS_FEATURES].to_numpy()
    estimator = models.estimator(models.v1)
    async with served(models, models.table(100, 0)) as (server, url, s):
        requests = [X[rng.choice(len(X), int(rng.integers(1, 6)))] for _ in range(200)]
        answers = await asyncio.gather(
            *(post(s, url + "/v2/models/iris/infer", matrix_request(r)) for r in requests)
        )
        for rows, (status, answer) in zip(requests, answers, strict=True):
            assert status == 200
            assert answer["outputs"][0]["data"] == estimator.predict(rows).tolist()
        batches = server.metrics.batches
        assert sum(batches) < 200  # some predict calls served several requests
        assert server.metrics.batch_rows == sum(len(r) for r in requests)


async def test_metrics_per_version(models: Models) -> None:
    estimator = models.estimator(models.v1)
    async with served(models, models.table(100, 0)) as (_, url, s):
        for _ in range(3):
            await post(s, url + "/v2/models/iris/infer", matrix_request(ROWS))
        await post(s, url + "/v2/models/iris/infer", None, raw=b"{")
        await post(s, url + "/v2/models/iris/versions/2/infer", {"inputs": []})
        status, text = await get(s, url + "/metrics")
        assert status == 200
        lines = set(text.splitlines())
        rest = 'model="iris",transport="rest",version="iris-v1"'
        assert f"modelops_serving_requests_total{{{rest}}} 3.0" in lines
        assert 'modelops_serving_rows_total{model="iris",version="iris-v1"} 9.0' in lines
        assert (
            'modelops_serving_errors_total{code="400",model="iris",transport="rest",version=""} 1.0'
            in lines
        )
        assert (
            'modelops_serving_errors_total{code="400",model="iris",transport="rest",'
            'version="iris-v2"} 1.0' in lines
        )
        for label, n in Counter(estimator.predict(np.array(ROWS * 3))).items():
            labels = f'class="{label}",model="iris",version="iris-v1"'
            assert f"modelops_serving_predictions_total{{{labels}}} {float(n)}" in lines
        assert f"modelops_serving_request_duration_seconds_count{{{rest}}} 3.0" in lines
        assert any(
            line.startswith(
                'modelops_serving_version_info{model="iris",reason="Verified",role="canary"'
            )
            for line in lines
        )
        assert 'modelops_serving_version_weight{model="iris",version="iris-v1"} 100.0' in lines
