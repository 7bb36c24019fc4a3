"""The Open Inference Protocol over gRPC, driven by Triton's own client
(``tritonclient.grpc``) against the server process (``python -m modelops.serving``) and a
real S3 server: health, metadata, inference with raw and typed contents, requested outputs,
request ids, the canary split, metrics and sketches; every error a status code, never
INTERNAL. Malformed messages the Triton client refuses to build go through the bare stub."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelops.local.s3server import S3Server
from modelops.storage import Location
from unit.serving.test_serving_support import (
    BUCKET,
    IRIS_FEATURES,
    ServerProcess,
    free_port,
    iris_frame,
    routing_table,
    train_version,
    write_json,
)

pytestmark = pytest.mark.integration

ROWS = iris_frame()[IRIS_FEATURES].to_numpy()
SPECIES = {"setosa", "versicolor", "virginica"}


@pytest.fixture(scope="module")
def versions(s3: S3Server) -> dict[str, dict[str, Any]]:
    store = s3.store()
    frame = iris_frame()
    return {
        "v1": train_version(store, "irisg-v1", frame, "species", params={"max_iter": 500}),
        "v2": train_version(store, "irisg-v2", frame, "species", "DecisionTreeClassifier"),
    }


def start(
    s3: S3Server, tmp: Path, table: dict[str, Any], *, ready: bool = True
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
        extra_args=["--grpc-port", str(grpc_port)],
    )
    server.start()
    try:
        asyncio.run(server.wait_ready(ready=ready))
    except BaseException:
        server.stop()
        raise
    return server, grpc_port


@pytest.fixture(scope="module")
def served(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    """v1 stable at 80 %, v2 canary at 20 %; the gRPC address."""
    table = routing_table([(versions["v1"], "stable", 80), (versions["v2"], "canary", 20)])
    table["deployment"] = table["model"] = "irisg"
    server, port = start(s3, tmp_path_factory.mktemp("grpc"), table)
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def client(served: tuple[ServerProcess, str]) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=served[1])
    yield c
    c.close()


@pytest.fixture
def stub(served: tuple[ServerProcess, str]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def matrix(rows: Any, datatype: str = "FP64") -> triton.InferInput:
    arr = np.asarray(rows, dtype=triton_dtype(datatype))
    tensor = triton.InferInput("x", list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr)
    return tensor


def triton_dtype(datatype: str) -> Any:
    return {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}[datatype]


def labels(result: Any, name: str = "predict") -> list[str]:
    return [b.decode() for b in result.as_numpy(name).tolist()]


def fp64_request(rows: Any, **fields: Any) -> pb.ModelInferRequest:
    arr = np.asarray(rows, dtype="<f8")
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=arr.shape)
    return pb.ModelInferRequest(
        model_name="irisg", inputs=[tensor], raw_input_contents=[arr.tobytes()], **fields
    )


def metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as exposed
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# -- health and metadata --------------------------------------------------------------------------


def test_live_ready_and_model_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("irisg")
    assert client.is_model_ready("irisg", "irisg-v2")


def test_metadata_matches_the_signature(client: triton.InferenceServerClient) -> None:
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "modelops"
    meta = client.get_model_metadata("irisg", as_json=True)
    assert meta["name"] == "irisg"
    assert meta["versions"] == ["irisg-v1", "irisg-v2"]
    assert [i["name"] for i in meta["inputs"]] == IRIS_FEATURES
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "predict": "BYTES",
        "predict_proba": "FP64",
    }
    one = client.get_model_metadata("irisg", "irisg-v2", as_json=True)
    assert one["versions"] == ["irisg-v2"]


# -- inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_infer_a_2d_tensor_raw(client: triton.InferenceServerClient, datatype: str) -> None:
    result = client.infer("irisg", [matrix(ROWS[:5], datatype)], model_version="irisg-v1")
    response = result.get_response()
    assert response.model_version == "irisg-v1"
    assert [o.name for o in response.outputs] == ["predict"]
    assert list(response.outputs[0].shape) == [5]
    assert labels(result) == ["setosa"] * 5


def test_infer_one_1d_tensor_per_feature(client: triton.InferenceServerClient) -> None:
    inputs = []
    for j, name in enumerate(IRIS_FEATURES):
        t = triton.InferInput(name, [3], "FP64")
        t.set_data_from_numpy(np.ascontiguousarray(ROWS[[0, 60, 120], j]))
        inputs.append(t)
    result = client.infer("irisg", inputs, model_version="irisg-v1")
    assert labels(result) == ["setosa", "versicolor", "virginica"]


def test_infer_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    arr = ROWS[[0, 120]]
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x",
        datatype="FP64",
        shape=[2, 4],
        contents=pb.InferTensorContents(fp64_contents=arr.ravel().tolist()),
    )
    ints = pb.ModelInferRequest.InferInputTensor(
        name="x",
        datatype="INT64",
        shape=[1, 4],
        contents=pb.InferTensorContents(int64_contents=[5, 3, 1, 0]),
    )
    for t in (tensor, ints):
        response = stub.ModelInfer(
            pb.ModelInferRequest(model_name="irisg", model_version="irisg-v1", inputs=[t])
        )
        assert response.outputs[0].name == "predict"
        assert response.raw_output_contents[0]  # answered raw, as Triton does
    assert tensor.contents.fp64_contents


def test_requested_outputs_are_the_only_ones(client: triton.InferenceServerClient) -> None:
    proba = [triton.InferRequestedOutput("predict_proba")]
    result = client.infer("irisg", [matrix(ROWS[:2])], model_version="irisg-v1", outputs=proba)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["predict_proba"]
    p = result.as_numpy("predict_proba")
    assert p.shape == (2, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    classes = orjson.loads(response.outputs[0].parameters["classes"].string_param)
    assert set(classes) == SPECIES
    both = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("irisg", [matrix(ROWS[:2])], model_version="irisg-v1", outputs=both)
    assert [o.name for o in result.get_response().outputs] == ["predict", "predict_proba"]


def test_probabilities_parameter(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "irisg", [matrix(ROWS[:1])], model_version="irisg-v1", parameters={"probabilities": True}
    )
    assert [o.name for o in result.get_response().outputs] == ["predict", "predict_proba"]


def test_request_ids_are_echoed_and_pin_the_version(client: triton.InferenceServerClient) -> None:
    for i in range(20):
        rid = f"req-{i}"
        answers = {
            client.infer("irisg", [matrix(ROWS[:1])], request_id=rid).get_response().model_version
            for _ in range(3)
        }
        assert len(answers) == 1
        assert client.infer("irisg", [matrix(ROWS[:1])], request_id=rid).get_response().id == rid
    assert client.infer("irisg", [matrix(ROWS[:1])]).get_response().id  # one is made up otherwise


def test_canary_split_counts_and_sketches(
    client: triton.InferenceServerClient, served: tuple[ServerProcess, str], s3: S3Server
) -> None:
    server, _ = served
    before = {
        v: metric(
            server.url,
            "modelops_serving_requests_total",
            model="irisg",
            version=v,
            transport="grpc",
        )
        for v in ("irisg-v1", "irisg-v2")
    }
    started = time.time()
    plain = Counter(
        client.infer("irisg", [matrix(ROWS[:2])]).get_response().model_version for _ in range(1000)
    )
    assert abs(plain["irisg-v2"] - 200) <= 1  # without ids the split is exact per 100
    ids = Counter(
        client.infer("irisg", [matrix(ROWS[:1])], request_id=uuid.uuid4().hex)
        .get_response()
        .model_version
        for _ in range(1000)
    )
    assert 150 <= ids["irisg-v2"] <= 250  # hashed ids: binomial(1000, 0.2), 4 sigma
    sent = plain + ids
    after = {
        v: metric(
            server.url,
            "modelops_serving_requests_total",
            model="irisg",
            version=v,
            transport="grpc",
        )
        for v in ("irisg-v1", "irisg-v2")
    }
    assert {v: after[v] - before[v] for v in after} == {v: float(n) for v, n in sent.items()}

    store = s3.store()
    deadline = time.monotonic() + 20
    while True:  # windows close every second (--sketch-interval 1)
        requests = 0
        for key in store.list(Location(BUCKET, "default/sketches/irisg/irisg-v2/")):
            window = orjson.loads(store.get(Location(BUCKET, key)))
            if window["end"] >= started:
                requests += window["requests"]
        if requests >= sent["irisg-v2"] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert requests >= sent["irisg-v2"]


# -- errors ---------------------------------------------------------------------------------------


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_unknown_model_and_version_are_not_found(
    client: triton.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", [matrix(ROWS[:1])])
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("irisg", [matrix(ROWS[:1])], model_version="irisg-v9")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert (
        code_of(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="irisg", version="x")))
        == grpc.StatusCode.NOT_FOUND
    )


def _bad_requests() -> dict[str, pb.ModelInferRequest]:
    t = pb.ModelInferRequest.InferInputTensor
    good = np.asarray(ROWS[:1], dtype="<f8").tobytes()
    return {
        "three features": fp64_request(ROWS[:1, :3]),
        "shape and bytes disagree": pb.ModelInferRequest(
            model_name="irisg",
            inputs=[t(name="x", datatype="FP64", shape=[2, 4])],
            raw_input_contents=[good],
        ),
        "not whole values": pb.ModelInferRequest(
            model_name="irisg",
            inputs=[t(name="x", datatype="FP64", shape=[1, 4])],
            raw_input_contents=[good[:-3]],
        ),
        "unknown datatype": pb.ModelInferRequest(
            model_name="irisg",
            inputs=[t(name="x", datatype="FP128", shape=[1, 4])],
            raw_input_contents=[good],
        ),
        "strings for numbers": pb.ModelInferRequest(
            model_name="irisg",
            inputs=[
                t(
                    name="x",
                    datatype="BYTES",
                    shape=[1, 4],
                    contents=pb.InferTensorContents(bytes_contents=[b"a", b"b", b"c", b"d"]),
                )
            ],
        ),
        "typed field of another type": pb.ModelInferRequest(
            model_name="irisg",
            inputs=[
                t(
                    name="x",
                    datatype="FP64",
                    shape=[1, 4],
                    contents=pb.InferTensorContents(int_contents=[1, 2, 3, 4]),
                )
            ],
        ),
        "NaN": fp64_request([[np.nan, 1.0, 1.0, 1.0]]),
        "no inputs": pb.ModelInferRequest(model_name="irisg"),
        "no rows": fp64_request(np.zeros((0, 4))),
        "raw contents count": pb.ModelInferRequest(
            model_name="irisg",
            inputs=[t(name="x", datatype="FP64", shape=[1, 4])],
            raw_input_contents=[good, good],
        ),
        "unknown output": fp64_request(
            ROWS[:1], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]
        ),
        "unknown feature": pb.ModelInferRequest(
            model_name="irisg",
            inputs=[t(name="petal", datatype="FP64", shape=[1])],
            raw_input_contents=[b"\0" * 8],
        ),
        "probabilities not a bool": fp64_request(
            ROWS[:1], parameters={"probabilities": pb.InferParameter(string_param="yes")}
        ),
    }


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_bad_input_is_invalid_argument(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    request = _bad_requests()[case]
    assert code_of(lambda: stub.ModelInfer(request)) == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_input_is_counted_as_400(
    served: tuple[ServerProcess, str], stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    url = served[0].url

    def errors() -> float:
        return sum(
            metric(
                url,
                "modelops_serving_errors_total",
                model="irisg",
                version=v,
                code="400",
                transport="grpc",
            )
            for v in ("", "irisg-v1", "irisg-v2")
        )

    before = errors()
    code_of(lambda: stub.ModelInfer(fp64_request(ROWS[:1, :3])))
    assert errors() == before + 1


def test_not_ready_is_unavailable(
    s3: S3Server, versions: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    v1 = versions["v1"]
    bad = {**v1, "artifact": {**v1["artifact"], "sha256": "0" * 64}}
    table = routing_table([(bad, "stable", 100)])
    table["deployment"] = table["model"] = "irisg"
    server, port = start(s3, tmp_path, table, ready=False)
    try:
        with triton.InferenceServerClient(url=f"127.0.0.1:{port}") as c:
            assert c.is_server_live()
            deadline = time.monotonic() + 20
            while True:
                with pytest.raises(InferenceServerException) as caught:
                    c.infer("irisg", [matrix(ROWS[:1])])
                if caught.value.status() != "StatusCode.UNAVAILABLE" or (
                    "Loading" not in str(caught.value) and "routing table" not in str(caught.value)
                ):
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert caught.value.status() == "StatusCode.UNAVAILABLE"
            assert c.is_server_ready() is False
            assert c.is_model_ready("irisg") is False
    finally:
        server.stop()
