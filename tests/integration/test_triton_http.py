"""The model server process driven by NVIDIA's own client, ``tritonclient.http``, as a new user
would: health, metadata, inference with binary and JSON tensors (one [n, 4] tensor, or one per
feature), requested outputs, every datatype of the protocol, versions, and the errors a client
sees through ``InferenceServerException``.

The server runs against a standalone S3 server (no control plane is needed here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelops.local.s3server import S3Server
from modelops.storage import ArtifactStore, Location
from unit.serving.test_serving_support import (
    IRIS_FEATURES,
    ServerProcess,
    iris_frame,
    routing_table,
    train_version,
    write_json,
)

pytestmark = pytest.mark.integration

SPECIES = np.array(["setosa", "versicolor", "virginica"])
SOILS = ["clay", "loam", "sand"]
INT_TYPES = ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
FLOAT_TYPES = ["FP16", "FP32", "FP64"]
NP_TYPES = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class Served:
    def __init__(self, store: ArtifactStore, url: str, entries: dict[str, dict[str, Any]]):
        self.store = store
        self.url = url
        self.entries = entries
        self.frame = mixed_frame()
        self.rows = self.frame[IRIS_FEATURES].to_numpy()[::7]

    def estimator(self, version: str) -> Any:
        data = self.store.get(Location.parse(self.entries[version]["artifact"]["uri"]))
        return sio.loads(data, trusted=sio.get_untrusted_types(data=data))

    def labels(self, version: str, rows: Any) -> list[bytes]:
        """What the version's estimator predicts, as tritonclient returns BYTES."""
        return [str(v).encode() for v in self.estimator(version).predict(rows)]


def mixed_frame() -> pd.DataFrame:
    frame = iris_frame()
    frame["soil"] = [SOILS[i % 3] for i in range(len(frame))]
    return frame


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("triton")
    with S3Server(tmp / "s3") as s3:
        store = s3.store()
        frame = mixed_frame()
        entries = {
            "v1": train_version(
                store, "iris-v1", frame.drop(columns="soil"), "species", params={"max_iter": 500}
            ),
            "v2": train_version(
                store, "iris-v2", frame.drop(columns="soil"), "species", "RandomForestClassifier"
            ),
            # Same model, a version with a categorical (BYTES) feature.
            "v3": train_version(
                store, "iris-v3", frame, "species", params={"max_iter": 500}, categorical=["soil"]
            ),
        }
        routing = tmp / "routing.json"
        write_json(
            routing,
            routing_table(
                [
                    (entries["v1"], "stable", 100),
                    (entries["v2"], "canary", 0),
                    (entries["v3"], "canary", 0),
                ]
            ),
        )
        server = ServerProcess(
            routing, s3.endpoint, s3.access_key, s3.secret_key, tmp / "server.log"
        )
        server.start()
        try:
            asyncio.run(server.wait_ready())
            yield Served(store, server.url, {e["name"]: e for e in entries.values()})
        finally:
            server.stop()


@pytest.fixture
def client(served: Served) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(url=served.url.removeprefix("http://"))
    yield c
    c.close()


def matrix(rows: Any, datatype: str = "FP64", binary: bool = True) -> httpclient.InferInput:
    arr = np.asarray(rows).astype(NP_TYPES[datatype])
    tensor = httpclient.InferInput("x", list(arr.shape), datatype)
    return tensor.set_data_from_numpy(arr, binary_data=binary)


def refused(call: Any, status: str, *words: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    message = info.value.message()
    assert info.value.status() == status, message
    for word in words:
        assert word in message, message
    return str(message)


# -- health and metadata ------------------------------------------------------------------------


def test_server_live_ready_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelops" and "binary_tensor_data" in meta["extensions"]


def test_model_and_version_readiness(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("iris")
    for version in ("iris-v1", "1", "iris-v2", "2", "iris-v3"):
        assert client.is_model_ready("iris", model_version=version)
    assert not client.is_model_ready("iris", model_version="iris-v9")
    assert not client.is_model_ready("tulip")


def test_model_metadata_and_per_version_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("iris")
    assert meta["name"] == "iris" and meta["versions"] == ["iris-v1", "iris-v2", "iris-v3"]
    assert [i["name"] for i in meta["inputs"]] == IRIS_FEATURES
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    v3 = client.get_model_metadata("iris", model_version="iris-v3")
    assert v3["versions"] == ["iris-v3"]
    assert {i["name"]: i["datatype"] for i in v3["inputs"]}["soil"] == "BYTES"
    refused(lambda: client.get_model_metadata("tulip"), "404", "unknown model 'tulip'")
    refused(lambda: client.get_model_metadata("iris", model_version="9"), "404", "no version")


# -- inference --------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_one_matrix_answers_what_the_model_predicts(
    served: Served, client: httpclient.InferenceServerClient, binary: bool
) -> None:
    result = client.infer("iris", [matrix(served.rows, binary=binary)])
    assert result.get_response()["model_version"] == "iris-v1"
    assert result.as_numpy("predict").tolist() == served.labels("iris-v1", served.rows)
    assert result.as_numpy("predict_proba") is None  # not asked for
    # No outputs named: tritonclient asks for binary outputs (binary_data_output).
    assert result.get_output("predict")["parameters"]["binary_data_size"] > 0


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("column", [False, True], ids=["1-D", "2-D"])
def test_infer_one_tensor_per_feature(
    served: Served, client: httpclient.InferenceServerClient, binary: bool, column: bool
) -> None:
    inputs = []
    for j, name in enumerate(IRIS_FEATURES):
        values = served.rows[:, j].copy()
        if column:
            values = values.reshape(-1, 1)
        tensor = httpclient.InferInput(name, list(values.shape), "FP64")
        inputs.append(tensor.set_data_from_numpy(values, binary_data=binary))
    result = client.infer("iris", inputs[::-1])  # any order
    assert result.as_numpy("predict").tolist() == served.labels("iris-v1", served.rows)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_categorical_feature_as_bytes(
    served: Served, client: httpclient.InferenceServerClient, binary: bool
) -> None:
    frame = served.frame.iloc[::7]
    inputs = []
    for name in [*IRIS_FEATURES, "soil"]:
        if name == "soil":
            values = frame[name].to_numpy(dtype=object)
            tensor = httpclient.InferInput(name, [len(values)], "BYTES")
        else:
            values = frame[name].to_numpy()
            tensor = httpclient.InferInput(name, [len(values)], "FP64")
        inputs.append(tensor.set_data_from_numpy(values, binary_data=binary))
    result = client.infer("iris", inputs, model_version="iris-v3")
    expected = served.labels("iris-v3", frame[[*IRIS_FEATURES, "soil"]])
    assert result.as_numpy("predict").tolist() == expected


def test_requested_outputs_only_and_in_order(
    served: Served, client: httpclient.InferenceServerClient
) -> None:
    rows = served.rows
    proba_only = client.infer(
        "iris",
        [matrix(rows)],
        outputs=[httpclient.InferRequestedOutput("predict_proba", binary_data=True)],
    )
    assert [o["name"] for o in proba_only.get_response()["outputs"]] == ["predict_proba"]
    np.testing.assert_array_equal(
        proba_only.as_numpy("predict_proba"), served.estimator("iris-v1").predict_proba(rows)
    )
    both = client.infer(
        "iris",
        [matrix(rows)],
        outputs=[
            httpclient.InferRequestedOutput("predict_proba", binary_data=False),
            httpclient.InferRequestedOutput("predict", binary_data=True),
        ],
    )
    outputs = both.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["predict_proba", "predict"]
    assert "data" in outputs[0] and "binary_data_size" in outputs[1]["parameters"]
    assert outputs[0]["parameters"]["classes"] == SPECIES.tolist()
    np.testing.assert_array_equal(
        both.as_numpy("predict_proba"), served.estimator("iris-v1").predict_proba(rows)
    )
    assert both.as_numpy("predict").tolist() == served.labels("iris-v1", rows)
    json_only = client.infer(
        "iris", [matrix(rows)], outputs=[httpclient.InferRequestedOutput("predict", False)]
    )
    assert json_only.get_output("predict")["data"] == [
        label.decode() for label in served.labels("iris-v1", rows)
    ]


def test_request_ids_are_echoed(served: Served, client: httpclient.InferenceServerClient) -> None:
    for rid in ("r-1", "another id"):
        result = client.infer("iris", [matrix(served.rows)], request_id=rid)
        assert result.get_response()["id"] == rid


def test_versions_by_name_or_number(
    served: Served, client: httpclient.InferenceServerClient
) -> None:
    for version, name in (("iris-v2", "iris-v2"), ("2", "iris-v2"), ("1", "iris-v1")):
        result = client.infer("iris", [matrix(served.rows)], model_version=version)
        assert result.get_response()["model_version"] == name
        assert result.as_numpy("predict").tolist() == served.labels(name, served.rows)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(
    served: Served, client: httpclient.InferenceServerClient, algorithm: str
) -> None:
    result = client.infer("iris", [matrix(served.rows)], request_compression_algorithm=algorithm)
    assert result.as_numpy("predict").tolist() == served.labels("iris-v1", served.rows)


# -- datatypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", INT_TYPES + FLOAT_TYPES)
def test_every_numeric_datatype_is_accepted(
    served: Served, client: httpclient.InferenceServerClient, datatype: str, binary: bool
) -> None:
    rows = np.rint(served.rows * 2)  # whole numbers every integer type holds
    result = client.infer("iris", [matrix(rows, datatype, binary)])
    sent = rows.astype(NP_TYPES[datatype]).astype(np.float64)
    assert result.as_numpy("predict").tolist() == served.labels("iris-v1", sent)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bool_and_bytes_for_numeric_features_are_400s_naming_them(
    served: Served, client: httpclient.InferenceServerClient, binary: bool
) -> None:
    flags = httpclient.InferInput("x", [2, 4], "BOOL")
    flags.set_data_from_numpy(np.ones((2, 4), dtype=bool), binary_data=binary)
    refused(lambda: client.infer("iris", [flags]), "400", "BOOL")
    text = httpclient.InferInput("x", [2, 4], "BYTES")
    text.set_data_from_numpy(np.full((2, 4), "1.5", dtype=object), binary_data=binary)
    refused(lambda: client.infer("iris", [text]), "400", "BYTES")


def test_a_datatype_outside_the_protocol_is_a_400_naming_it(
    client: httpclient.InferenceServerClient,
) -> None:
    bf16 = httpclient.InferInput("x", [1, 4], "BF16")
    bf16.set_data_from_numpy(np.ones((1, 4), dtype=ml_dtypes.bfloat16))
    refused(lambda: client.infer("iris", [bf16]), "400", "BF16")


def test_non_finite_binary_floats_are_refused(
    served: Served, client: httpclient.InferenceServerClient
) -> None:
    rows = served.rows.copy()
    rows[1, 2] = np.nan
    refused(lambda: client.infer("iris", [matrix(rows)]), "400", "non-finite")


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model_or_version_is_404(
    served: Served, client: httpclient.InferenceServerClient
) -> None:
    refused(lambda: client.infer("tulip", [matrix(served.rows)]), "404", "unknown model")
    refused(
        lambda: client.infer("iris", [matrix(served.rows)], model_version="iris-v9"),
        "404",
        "iris-v9",
    )


def test_bad_inputs_are_400_with_a_message(
    served: Served, client: httpclient.InferenceServerClient
) -> None:
    rows = served.rows
    refused(lambda: client.infer("iris", [matrix(rows[:, :3])]), "400", "not a feature")
    petal = httpclient.InferInput("petal_width", [len(rows)], "FP64")
    petal.set_data_from_numpy(rows[:, 3])
    refused(lambda: client.infer("iris", [petal]), "400", "missing feature")
    refused(
        lambda: client.infer(
            "iris", [matrix(rows)], outputs=[httpclient.InferRequestedOutput("scores")]
        ),
        "400",
        "unknown output 'scores'",
    )
    refused(
        lambda: client.infer(
            "iris",
            [matrix(rows)],
            outputs=[httpclient.InferRequestedOutput("predict_proba", class_count=2)],
        ),
        "400",
        "classification",
    )
    refused(
        lambda: client.infer("iris", [matrix(rows)], parameters={"probabilities": "yes"}),
        "400",
        "probabilities",
    )
    refused(
        lambda: client.infer("iris", [matrix(rows)], headers={"Content-Encoding": "br"}),
        "415",
        "br",
    )
