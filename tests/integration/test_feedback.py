"""Ground truth and shadow traffic with the real server process (``python -m modelops.serving``)
and a real S3 server: labels sent back to whichever worker (two workers on one port, feedback
on fresh connections) join, through the prediction logs, into quality objects equal to what
was sent; ids never answered are counted unknown; a gRPC request (tritonclient) with an id is
joined by REST feedback; in shadow mode clients only get stable's answers while the shadow's
sketch windows and agreement objects appear in the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
from sklearn.metrics import confusion_matrix

from modelops.controllers.windows import LiveQuality
from modelops.local.s3server import S3Server
from modelops.storage import ArtifactStore, Location
from unit.serving.test_serving_support import (
    BUCKET,
    IRIS_FEATURES,
    ServerProcess,
    free_port,
    iris_frame,
    matrix_request,
    post,
    routing_table,
    train_version,
    write_json,
)

pytestmark = pytest.mark.integration

FRAME = iris_frame()
CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def versions(s3: S3Server) -> dict[str, dict[str, Any]]:
    store = s3.store()
    return {
        "v1": train_version(store, "irisfb-v1", FRAME, "species", params={"max_iter": 500}),
        "v2": train_version(store, "irisfb-v2", FRAME, "species", "DecisionTreeClassifier"),
    }


def start(
    s3: S3Server, tmp: Path, table: dict[str, Any], **kwargs: Any
) -> tuple[ServerProcess, int]:
    routing = tmp / "routing.json"
    write_json(routing, table)
    grpc_port = free_port()
    server = ServerProcess(
        routing,
        s3.endpoint,
        s3.access_key,
        s3.secret_key,
        tmp / "server.log",
        sketch_interval=1.0,
        extra_args=["--grpc-port", str(grpc_port)],
        **kwargs,
    )
    server.start()
    return server, grpc_port


def objects(store: ArtifactStore, prefix: str) -> dict[str, Any]:
    keys = store.list(Location(BUCKET, prefix))
    return {key: orjson.loads(store.get(Location(BUCKET, key))) for key in keys}


def live_quality(store: ArtifactStore, deployment: str, version: str) -> LiveQuality:
    """The version's quality objects added up, as the operator does."""
    total = LiveQuality()
    for doc in objects(store, f"default/quality/{deployment}/{version}/").values():
        total = total.merge(LiveQuality.from_dict(doc))
    return total


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def until_async(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def fresh_post(url: str, body: Any) -> tuple[int, Any]:
    """On a new connection, so that SO_REUSEPORT may hand it to either worker."""
    async with aiohttp.ClientSession() as session:
        return await post(session, url, body)


async def test_labels_sent_to_any_worker_join_into_quality_objects_equal_to_what_was_sent(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    table = routing_table([(versions["v1"], "stable", 100)], model="irisfb")
    server, _ = start(s3, tmp_path, table, workers=2)
    store = s3.store()
    rng = np.random.default_rng(5)
    true: list[str] = []
    predicted: list[str] = []
    answers: list[dict[str, int]] = []
    try:
        await server.wait_ready(60)
        infer, feedback = server.url + "/v2/models/irisfb/infer", server.url + "/v2/models/irisfb"
        requests = [FRAME.iloc[rng.choice(len(FRAME), int(rng.integers(1, 4)))] for _ in range(60)]
        for i, batch in enumerate(requests):
            body = matrix_request(batch[IRIS_FEATURES].to_numpy(), f"fb-{i}")
            status, answer = await fresh_post(infer, body)
            assert status == 200 and answer["model_version"] == "irisfb-v1"
            predicted += answer["outputs"][0]["data"]
            true += batch["species"].tolist()
        for i, batch in enumerate(requests):
            item = {"id": f"fb-{i}", "labels": batch["species"].tolist()}
            status, counts = await fresh_post(feedback + "/feedback", item)
            assert status == 200, counts
            answers.append(counts)
        status, counts = await fresh_post(
            feedback + "/versions/irisfb-v1/feedback",
            {"feedback": [{"id": f"never-{k}", "label": "setosa"} for k in range(5)]},
        )
        assert status == 200 and counts["received"] == 5 and counts["joined"] == 0
        assert all(a["joined"] + a["pending"] == 1 for a in answers), answers

        def settled() -> bool:
            quality = live_quality(store, "irisfb", "irisfb-v1").quality
            unknown = live_quality(store, "irisfb", "-").feedback.get("unknown", 0)
            return quality is not None and quality.labels == len(true) and unknown == 5

        await until(settled, "every label joined and the unknown ids counted")
    finally:
        server.stop()
    quality = live_quality(store, "irisfb", "irisfb-v1")
    assert quality.quality is not None
    expected = confusion_matrix(true, predicted, labels=CLASSES)
    np.testing.assert_array_equal(quality.quality.confusion, expected)
    assert quality.feedback["joined"] == 60 and quality.feedback["duplicate"] == 0
    logs = objects(store, "default/predictions/irisfb/")
    quality_pods = {d["pod"] for d in objects(store, "default/quality/irisfb/").values()}
    assert sum(len(log["entries"]) for log in logs.values()) == 60
    if {log["pod"] for log in logs.values()} != {"test-pod-w0", "test-pod-w1"}:
        pytest.fail(f"one worker took every request: {sorted(logs)}")
    if quality_pods != {"test-pod-w0", "test-pod-w1"}:
        pytest.fail(f"one worker took every feedback call: {quality_pods}")


async def test_a_grpc_request_with_an_id_is_joined_by_rest_feedback(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    table = routing_table([(versions["v1"], "stable", 100)], model="irisfb", deployment="irisfb-g")
    server, grpc_port = start(s3, tmp_path, table)
    store = s3.store()
    rows = FRAME.iloc[[0, 60, 120]]
    try:
        await server.wait_ready()
        client = triton.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        x = triton.InferInput("x", [3, 4], "FP64")
        x.set_data_from_numpy(rows[IRIS_FEATURES].to_numpy(np.float64))
        result = await asyncio.to_thread(client.infer, "irisfb", [x], request_id="grpc-1")
        client.close()
        predicted = [b.decode() for b in result.as_numpy("predict").tolist()]
        item = {"id": "grpc-1", "labels": rows["species"].tolist()}
        status, counts = await fresh_post(server.url + "/v2/models/irisfb/feedback", item)
        assert status == 200 and counts["joined"] == 1, counts

        def written() -> bool:
            return live_quality(store, "irisfb-g", "irisfb-v1").quality is not None

        await until(written, "the quality object")
    finally:
        server.stop()
    quality = live_quality(store, "irisfb-g", "irisfb-v1").quality
    assert quality is not None
    expected = confusion_matrix(rows["species"].tolist(), predicted, labels=CLASSES)
    np.testing.assert_array_equal(quality.confusion, expected)


async def test_shadow_mode_clients_get_stable_and_the_shadow_is_sketched_and_compared(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    table = routing_table(
        [(v1, "stable", 100), (v2, "canary", 0)], model="irisfb", deployment="irisfb-sh"
    )
    table["mode"] = "shadow"
    server, _ = start(s3, tmp_path, table)
    store = s3.store()
    rng = np.random.default_rng(9)
    x = FRAME[IRIS_FEATURES].to_numpy() + rng.normal(0, 0.3, (len(FRAME), 4))
    sent = 0
    try:
        await server.wait_ready()
        url = server.url + "/v2/models/irisfb/infer"
        async with aiohttp.ClientSession() as session:
            answers = []
            for i in range(40):
                rows = x[rng.choice(len(x), 2)]
                status, answer = await post(session, url, matrix_request(rows, f"sh-{i}"))
                assert status == 200
                answers.append(answer)
                sent += 2
            feedback = [
                {"id": a["id"], "labels": a["outputs"][0]["data"]} for a in answers
            ]  # stable's own answers as labels: stable is right on every row
            # The last copies are predicted after their answers went out.
            predicted = 'modelops_serving_shadow_requests_total{model="irisfb",result="predicted"'
            line = f'{predicted},version="irisfb-v2"}} 40.0'

            async def shadowed() -> bool:
                async with session.get(server.url + "/metrics") as r:
                    return line in (await r.text()).splitlines()

            await until_async(shadowed, "40 shadow predictions")
            status, counts = await post(
                session, server.url + "/v2/models/irisfb/feedback", {"feedback": feedback}
            )
        assert status == 200 and counts["joined"] == 40, counts

        def compared() -> bool:
            agreement = live_quality(store, "irisfb-sh", "irisfb-v2").agreement
            return agreement is not None and agreement.compared == sent

        await until(compared, "the shadow's agreement over every row")
    finally:
        server.stop()
    assert {a["model_version"] for a in answers} == {"irisfb-v1"}
    windows = objects(store, "default/sketches/irisfb-sh/irisfb-v2/")
    assert sum(w["nRows"] for w in windows.values()) == sent
    shadow = live_quality(store, "irisfb-sh", "irisfb-v2")
    stable = live_quality(store, "irisfb-sh", "irisfb-v1")
    assert stable.quality is not None and stable.quality.value("accuracy") == 1.0
    assert shadow.quality is not None and shadow.quality.labels == sent
    assert shadow.agreement is not None
    # Labels are stable's answers, so the shadow's accuracy is its agreement with stable.
    assert shadow.quality.value("accuracy") == shadow.agreement.rate
