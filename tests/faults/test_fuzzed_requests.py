"""The real model server process against fuzzed requests: no body and no raw byte sequence
gets a 5xx, every 4xx is a JSON ``{"error": ...}``, and the server keeps serving.

Two versions are served from a standalone S3 server: ``iris-v1`` (numeric, stable) and
``iris-v2`` (with a categorical ``soil`` feature, a canary at weight 0, reached under
``/versions/``). Bodies are generated once by hypothesis (derandomized, so every run sends
the same ones; each example gives ``PER_EXAMPLE`` bodies, see ``case_batches``) and then sent
in a tight loop over one keep-alive connection; raw HTTP comes from templates mutated by a
seeded ``random.Random``. The figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import http.client
import json
import math
import random
import re
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from modelops.local.s3server import S3Server
from unit.serving.test_serving_support import (
    IRIS_FEATURES,
    ServerProcess,
    iris_frame,
    routing_table,
    train_version,
    write_json,
)

pytestmark = pytest.mark.faults

BODIES = 10_000
RAW_REQUESTS = 1_000
MAX_BODY = 1 << 20
SOILS = ["clay", "loam", "sand"]
DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
]
BOGUS_DATATYPES = ["", "fp64", "FP128", "STRING", "INT", "FLOAT", "UINT128", "FP64 ", "null"]
INFER = "/v2/models/iris/infer"
PATHS = [
    "/v2/models/iris/versions/iris-v2/infer",
    "/v2/models/iris/versions/2/infer",
    "/v2/models/iris/versions/1/infer",
    "/v2/models/iris/versions/iris-v9/infer",
    "/v2/models/iris/versions//infer",
    "/v2/models/tulip/infer",
    "/v2/models/ir%69s/infer",
    "/v2/models/%FF%00/infer",
    "/v2/models/iris/infer/",
    "/v2/models/iris/infer?x=%ZZ",
    "/v2/models/iris",
    "/v2/models/iris/ready",
    "/v2/health/ready",
    "/v2",
    "/metrics",
    "/",
    "/" + "a" * 300,
]


@dataclass
class Case:
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with S3Server(tmp / "s3") as s3:
        store = s3.store()
        frame = iris_frame()
        frame["soil"] = [SOILS[i % 3] for i in range(len(frame))]
        numeric = frame.drop(columns="soil")
        v1 = train_version(store, "iris-v1", numeric, "species", params={"max_iter": 500})
        v2 = train_version(
            store, "iris-v2", frame, "species", params={"max_iter": 500}, categorical=["soil"]
        )
        routing = tmp / "routing.json"
        write_json(routing, routing_table([(v1, "stable", 100), (v2, "canary", 0)]))
        process = ServerProcess(
            routing,
            s3.endpoint,
            s3.access_key,
            s3.secret_key,
            tmp / "server.log",
            extra_args=["--grpc-port", "-1", "--max-body-bytes", str(MAX_BODY)],
        )
        process.start()
        try:
            asyncio.run(process.wait_ready())
            yield process
        finally:
            process.stop()


def ready(server: ServerProcess) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/v2/health/ready")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- generated bodies ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**40, -0.0, 1e308])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=5,
)
datatypes = st.sampled_from(DATATYPES) | st.sampled_from(BOGUS_DATATYPES) | st.text(max_size=6)
numbers = (
    st.floats(-10, 10)
    | st.integers(-300, 300)
    | st.floats()
    | st.integers()
    | st.sampled_from([math.nan, math.inf, -math.inf, 2**64, -(2**63) - 1, 65_504.0, 1e39])
)


def element(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BYTES":
        return st.sampled_from(SOILS) | st.text(max_size=8) | st.integers(-5, 5)
    if datatype == "BOOL":
        return st.booleans() | st.integers(0, 1)
    if datatype in DATATYPES:
        return numbers | st.booleans() | st.text(max_size=3)
    return scalars


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    """An input tensor, mostly well formed, with one or more parts mutated."""
    if draw(st.integers(0, 19)) == 7:
        return draw(json_values)
    datatype = draw(st.sampled_from(["FP64", "FP64", "FP32", "INT64", "BYTES"]) | datatypes)
    rows = draw(st.integers(0, 4))
    layout = draw(st.sampled_from(["matrix", "feature", "column"]))
    if layout == "matrix":
        name: Any = "x"
        shape: Any = [rows, 4]
    else:
        name = draw(st.sampled_from([*IRIS_FEATURES, "soil"]))
        shape = [rows] if layout == "feature" else [rows, 1]
    count = math.prod(shape)
    count = max(0, count + draw(st.sampled_from([0, 0, 0, 0, 1, -1, 3])))
    # A few drawn values repeated to length: cheaper to generate than one draw per element.
    pool = draw(st.lists(element(datatype), min_size=1, max_size=3))
    data: Any = [pool[i % len(pool)] for i in range(count)]
    if layout == "matrix" and rows and draw(st.booleans()) and len(data) == rows * 4:
        data = [data[i * 4 : i * 4 + 4] for i in range(rows)]  # nested rows, as JSON allows
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype, "data": data}
    mutation = draw(st.integers(0, 9))
    if mutation == 1:
        tensor["shape"] = draw(
            st.lists(st.integers(-(2**65), 2**65), max_size=4)
            | st.sampled_from([[-1, 4], [10**9, 10**9], [2**62, 4], [0], [], [1, 2, 3, 4, 5]])
        )
    elif mutation == 2:
        tensor[draw(st.sampled_from(sorted(tensor)))] = draw(json_values)
    elif mutation == 3:
        del tensor[draw(st.sampled_from(sorted(tensor)))]
    elif mutation == 4:
        tensor["name"] = draw(st.text(max_size=10))
    elif mutation == 5:
        tensor["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_size": st.integers(-5, 100) | json_values})
            | json_values
        )
    return tensor


outputs = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["predict", "predict_proba", "scores", ""]) | json_values},
        optional={
            "parameters": st.fixed_dictionaries(
                {},
                optional={
                    "binary_data": st.booleans() | json_values,
                    "class_count": st.integers(-1, 3),
                },
            )
            | json_values
        },
    )
    | json_values,
    max_size=3,
)
parameters = (
    st.fixed_dictionaries(
        {},
        optional={
            "binary_data_output": st.booleans() | json_values,
            "probabilities": st.booleans() | json_values,
            "content_type": st.text(max_size=5),
        },
    )
    | json_values
)


NUMERIC = ["FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16"]
RAW_TYPES = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
V2 = "/v2/models/iris/versions/iris-v2/infer"


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A request the server answers with 200 (as ``iris-v2`` when it has a ``soil`` input):
    one [rows, 4] tensor or one tensor per feature, any numeric datatype."""
    rows = draw(st.integers(1, 4))

    def values(datatype: str, count: int) -> list[Any]:
        if datatype in ("BYTES", "soil"):
            pool: list[Any] = draw(st.lists(st.sampled_from(SOILS), min_size=1, max_size=3))
        elif datatype.startswith(("INT", "UINT")):
            pool = draw(st.lists(st.integers(0, 8), min_size=1, max_size=3))
        else:
            pool = draw(st.lists(st.floats(-8, 8, width=16), min_size=1, max_size=3))
        return [pool[i % len(pool)] for i in range(count)]

    inputs: list[dict[str, Any]] = []
    if draw(st.booleans()):
        datatype = draw(st.sampled_from(NUMERIC))
        inputs.append({"name": "x", "shape": [rows, 4], "datatype": datatype})
        inputs[0]["data"] = values(datatype, rows * 4)
    else:
        for name in IRIS_FEATURES:
            datatype = draw(st.sampled_from(NUMERIC))
            shape = draw(st.sampled_from([[rows], [rows, 1]]))
            inputs.append({"name": name, "shape": shape, "datatype": datatype})
            inputs[-1]["data"] = values(datatype, rows)
    if draw(st.booleans()):
        inputs.append({"name": "soil", "shape": [rows], "datatype": "BYTES"})
        inputs[-1]["data"] = values("soil", rows)
    doc: dict[str, Any] = {"inputs": draw(st.permutations(inputs))}
    wanted = draw(
        st.sampled_from([[], ["predict"], ["predict_proba"], ["predict_proba", "predict"]])
    )
    if wanted:
        binary = draw(st.booleans())
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in wanted]
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans())}
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=8))
    return doc


def raw_tensor(tensor: dict[str, Any]) -> bytes:
    """A tensor's ``data`` as the binary extension sends it (ValueError and friends when the
    data do not fit the datatype)."""
    data, datatype = tensor["data"], tensor["datatype"]
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in data]
        return b"".join(struct.pack("<I", len(b)) + b for b in encoded)
    with np.errstate(over="ignore"):  # out-of-range values wrap: the server must still cope
        return np.asarray(data, dtype=RAW_TYPES[datatype]).tobytes()


@st.composite
def documents(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(valid_documents())
    doc: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=4) | json_values)}
    if draw(st.booleans()):
        doc["outputs"] = draw(outputs)
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=12) | json_values)
    if draw(st.integers(0, 9)) == 7:
        doc[draw(st.text(max_size=6))] = draw(json_values)
    if draw(st.integers(0, 29)) == 7:
        return draw(json_values)  # not an object at all
    return doc


def dumps(doc: Any, ascii_only: bool) -> bytes:
    """JSON as Python writes it: NaN and Infinity literals included; lone surrogates become
    invalid UTF-8."""
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def fp64_rows(rows: list[list[float]]) -> bytes:
    return b"".join(struct.pack("<4d", *row) for row in rows)


PER_EXAMPLE = 4
"""Bodies made from each hypothesis example: its document as drawn, the same bytes mutated,
a binary-extension request and an odd one, the last three varied by a ``random.Random`` seeded
from the example (one draw instead of hundreds: hypothesis' generation is the slow part)."""


def pick_path(rng: random.Random) -> str:
    return INFER if rng.random() < 0.7 else rng.choice(PATHS)


def mutate(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randrange(1, 16))
    at = rng.randrange(len(data))
    how = rng.randrange(7)
    if how == 0:
        return data[:at]  # truncated
    if how == 1:
        return data[:at] + rng.randbytes(rng.randrange(1, 4)) + data[at:]
    if how == 2:
        literal = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"1E400", b"nan"])
        return data[:at] + literal + data[at:]
    if how == 3:
        return data[:at] + b"\x00" + data[at + 1 :]
    if how == 4:  # a number made a non-finite literal
        return re.sub(rb"-?\d+(\.\d+)?(e-?\d+)?", rng.choice([b"NaN", b"Infinity"]), data, count=1)
    if how == 5:  # a lone surrogate escape, or invalid UTF-8
        return data.replace(b'"', rng.choice([b'"\\ud800', b'"\xc3\x28', b'"\xed\xa0\x80']), 1)
    return data[:at] + data[at + 1 :]


def binary_case(rng: random.Random, doc: Any) -> Case:
    """Triton's binary tensor extension: a JSON header of ``Inference-Header-Content-Length``
    bytes, then raw tensors; sizes and header length right or wrong."""
    if rng.random() < 0.5 or not isinstance(doc, dict):
        rows = rng.randrange(4)
        values = [rng.choice([rng.uniform(-10, 10), 0.0, math.nan, math.inf]) for _ in range(4)]
        raw = fp64_rows([values] * rows)
        datatype = rng.choice(["FP64", "FP64", "FP64", *DATATYPES, *BOGUS_DATATYPES])
        size: Any = len(raw) + rng.choice([0, 0, 0, 0, 1, -1, 8, -len(raw) - 1, 10**12])
        if rng.random() < 0.05:
            size = rng.choice(["8", None, 1.5, [], True])
        tensor = {"name": "x", "shape": [rows, 4], "datatype": datatype}
        tensor["parameters"] = {"binary_data_size": size}
        head_doc: Any = {"inputs": [tensor]}
        if isinstance(doc, dict):  # its outputs, parameters and id
            head_doc.update((k, v) for k, v in doc.items() if k != "inputs")
    else:
        head_doc = dict(doc)
        raw = b""
        inputs = head_doc.get("inputs")
        if isinstance(inputs, list):
            head_doc["inputs"] = []
            for tensor in inputs:
                if isinstance(tensor, dict) and rng.random() < 0.8:
                    try:  # the data as they are, or bytes when they do not fit
                        chunk = raw_tensor(tensor)
                    except (KeyError, TypeError, ValueError, OverflowError):
                        chunk = rng.randbytes(rng.choice([0, 1, 4, 8, 32, 64]))
                    tensor = {k: v for k, v in tensor.items() if k != "data"}
                    raw += chunk
                    size = len(chunk) + rng.choice([0] * 12 + [1, -1, -(2**63)])
                    tensor["parameters"] = {"binary_data_size": size}
                head_doc["inputs"].append(tensor)
        raw += rng.randbytes(rng.choice([0, 0, 0, 1, 7]))
    head = dumps(head_doc, True)
    length: Any = len(head) + rng.choice([0] * 8 + [1, -1, 5, -5, 10_000, -len(head) - 1])
    if rng.random() < 0.05:
        length = rng.choice(["", "abc", "-1", "1e3", " 12", "0x10", "1_0", str(2**70), "٣"])
    headers = {"Content-Type": "application/octet-stream"}
    headers["Inference-Header-Content-Length"] = str(length).encode().decode("latin-1")
    path = V2 if b'"soil"' in head and rng.random() < 0.7 else pick_path(rng)
    return Case(path, head + raw, headers)


def odd_case(rng: random.Random, doc: Any, text: bytes) -> Case:
    headers = {"Content-Type": "application/json"}
    kind = rng.randrange(6)
    if kind == 0:  # deep nesting, around orjson's limit of 1024
        depth = rng.choice([1023, 1024, 1025, 1100, 5000, 100_000])
        inner = rng.choice([b"[]", b"{}", b"1", b"NaN", b"", b'"x"'])
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'{"inputs":[', b"]}")])
        body = opener * depth + inner + closer * rng.choice([depth, depth - 1, 0])
    elif kind == 1:  # compressed, well or not
        encoding = rng.choice(["gzip", "deflate", "br", "GZIP", "gzip, deflate", "x", "identity"])
        packed = gzip.compress(text) if rng.random() < 0.5 else zlib.compress(text)
        body = packed if rng.random() < 0.6 else mutate(rng, packed)
        headers["Content-Encoding"] = encoding
    elif kind == 2:  # not JSON
        body = rng.choice([rng.randbytes(rng.randrange(64)), b"", b" ", b"\xef\xbb\xbf{}", b"{"])
    elif kind == 3:  # the document inside something else
        body = dumps(rng.choice([[doc], {"inputs": doc}, {"inputs": [doc]}, {"x": doc}]), False)
    elif kind == 4:  # the document's values made non-finite
        body = re.sub(rb"\d+\.\d+", lambda _: rng.choice([b"NaN", b"-Infinity", b"1e400"]), text)
    else:
        body = mutate(rng, mutate(rng, text))
    method = "POST" if rng.random() < 0.9 else rng.choice(["PUT", "GET", "DELETE", "PATCH", "HEAD"])
    return Case(pick_path(rng), body, headers, method)


@st.composite
def case_batches(draw: st.DrawFn) -> list[Case]:
    doc = draw(documents())
    ascii_only = draw(st.booleans())
    text = dumps(doc, ascii_only)
    # Seeded by the document too: hypothesis draws small integers (such as 0) often.
    rng = random.Random(text + b"%d" % draw(st.integers(0, 2**32 - 1)))
    headers = {"Content-Type": "application/json"}
    method = "POST" if rng.random() < 0.95 else rng.choice(["PUT", "GET", "DELETE"])
    path = pick_path(rng)
    if b'"soil"' in text and rng.random() < 0.7:
        path = V2
    return [
        Case(path, text, headers, method),
        Case(INFER, mutate(rng, text), headers),
        binary_case(rng, doc),
        odd_case(rng, doc, text),
    ]


def generate(count: int) -> list[Case]:
    found: list[Case] = []

    @settings(
        max_examples=-(-count // PER_EXAMPLE),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case_batches())
    def collect(batch: list[Case]) -> None:
        found.extend(batch)

    collect()
    return found


def special_cases() -> list[Case]:
    """What generation rarely reaches: bodies over the limit, before and after inflating."""
    bomb = gzip.compress(b"[" + b"0," * (MAX_BODY // 2 + 10) + b"0]")
    valid = dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1] * 4}]}, True
    )
    return [
        Case(INFER, b" " * (MAX_BODY + 1)),
        Case(INFER, valid + b" " * (MAX_BODY - len(valid))),  # exactly at the limit
        Case(INFER, bomb, {"Content-Encoding": "gzip"}),
        Case(INFER, zlib.compress(b" " * (MAX_BODY + 1)), {"Content-Encoding": "deflate"}),
        Case(INFER, valid, {"Inference-Header-Content-Length": str(len(valid))}),
        Case(INFER, valid, {"Inference-Header-Content-Length": str(2**63)}),
        Case(INFER, valid, {"Content-Encoding": ""}),
    ]


NOT_A_STRING_DATATYPE = dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": {}, "data": [5.1, 3.5, 1.4, 0.2]}]},
    True,
)
"""Found by this file: a datatype that is a JSON object or array was a 500 (fixed: a 400)."""


@dataclass
class Sent:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    connections: int = 0
    unexpected: list[tuple[Case, int, bytes]] = field(default_factory=list)


def send_all(server: ServerProcess, bodies: list[Case]) -> Sent:
    """Every case over one keep-alive connection (reopened when the server closes it)."""
    sent = Sent()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for case in bodies:
            if conn.sock is None:
                sent.connections += 1
            conn.request(case.method, case.path, body=case.body, headers=case.headers)
            response = conn.getresponse()
            data = response.read()
            sent.statuses[response.status] += 1
            if response.status >= 500:
                sent.unexpected.append((case, response.status, data[:300]))
            elif response.status >= 400 and case.method != "HEAD":  # HEAD: no body
                doc = json.loads(data)
                assert isinstance(doc, dict) and isinstance(doc.get("error"), str), (case, data)
                assert doc["error"], (case, data)
            if response.will_close:
                conn.close()
    finally:
        conn.close()
    return sent


def test_no_generated_inference_body_gets_a_5xx(server: ServerProcess) -> None:
    started = time.monotonic()
    bodies = generate(BODIES) + special_cases()
    generated = time.monotonic() - started
    sent = send_all(server, bodies)
    sending = time.monotonic() - started - generated
    print(
        f"\nbodies: {len(bodies)} sent over {sent.connections} connection(s) "
        f"(generated in {generated:.1f} s, sent in {sending:.1f} s); "
        f"statuses: {dict(sorted(sent.statuses.items()))}; 5xx: {len(sent.unexpected)}"
    )
    assert not sent.unexpected, sent.unexpected[:5]
    assert ready(server) == 200
    assert server.process is not None and server.process.poll() is None
    assert len(bodies) >= BODIES
    assert sent.statuses[200] > 0 and sent.statuses[400] > 0  # valid and invalid bodies sent


@pytest.mark.parametrize("datatype", [{}, []], ids=["object", "array"])
def test_a_datatype_that_is_not_a_string_is_a_400(server: ServerProcess, datatype: Any) -> None:
    body = NOT_A_STRING_DATATYPE.replace(b'"datatype": {}', b'"datatype": ' + dumps(datatype, True))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", INFER, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    assert response.status == 400, (body, response.status, answer)
    assert "datatype" in json.loads(answer)["error"]


# -- raw HTTP ------------------------------------------------------------------------------------

GOOD = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
INFER_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
).encode()
POST_HEAD = b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n"
RAW_TEMPLATES: list[bytes] = [
    GOOD,
    GOOD * 3,
    POST_HEAD + b"Content-Length: %d\r\n\r\n" % len(INFER_BODY) + INFER_BODY,
    # bad request lines
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"G@T / HTTP/1.1\r\n\r\n",
    b"get /v2 HTTP/1.1\r\n\r\n",
    b" GET / HTTP/1.1\r\n\r\n",
    b"GET  HTTP/1.1\r\n\r\n",
    b"GET /\x00/ HTTP/1.1\r\n\r\n",
    b"GET /v2\x7f HTTP/1.1\r\n\r\n",
    b"GET http://x/v2 HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
    b"CONNECT x:80 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"BREW /v2 HTTP/1.1\r\n\r\n",
    b"GET /v2 HTTP/1.0\r\n\r\n",
    b"GET /v2\r\n\r\n",  # HTTP/0.9
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface
    b"GET /" + b"v" * 70_000 + b" HTTP/1.1\r\n\r\n",
    # bad header syntax
    b"GET /v2 HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\n: empty\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: \x00\x01\r\n\r\n",
    b"GET /v2 HTTP/1.1\nHost: x\n\n",
    b"GET /v2 HTTP/1.1\rHost: x\r\r",
    b"GET /v2 HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\n" + b"X: y\r\n" * 12_000 + b"\r\n",
    b"GET /v2 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /v2/models/iris/infer HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v2/models/iris/infer HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    b"POST /v2/models/iris/infer HTTP/1.1\r\nInference-Header-Content-Length: x\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Encoding: gzip\r\n"
    b"Content-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
    # invalid Content-Length
    POST_HEAD + b"Content-Length: -1\r\n\r\n{}",
    POST_HEAD + b"Content-Length: abc\r\n\r\n{}",
    POST_HEAD + b"Content-Length: 1, 2\r\n\r\n{}",
    POST_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    POST_HEAD + b"Content-Length: 99999999999999999999999\r\n\r\n{}",
    POST_HEAD + b"Content-Length: 2000000\r\n\r\n{}",
    POST_HEAD + b"Content-Length: 10\r\n\r\n{}",
    POST_HEAD + b"Content-Length: 0\r\n\r\n{}",
    POST_HEAD + b"Content-Length: +2\r\n\r\n{}",
    POST_HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    # bad chunked encoding
    POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
    POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}0\r\n\r\n",
    POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
    POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n",
    POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n200000\r\n{}",
    POST_HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n2;ext="
    + b"e" * 70_000
    + b"\r\n{}\r\n0\r\n\r\n",
    POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nTrailer: " + b"t" * 70_000 + b"\r\n\r\n",
    POST_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    POST_HEAD + b"Transfer-Encoding: identity\r\n\r\n{}",
    POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\n \r\n" * 5000 + b"0\r\n\r\n",
    POST_HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"%x\r\n" % len(INFER_BODY)
    + INFER_BODY
    + b"\r\n0\r\n\r\n",
    # pipelined garbage
    GOOD + b"garbage\r\n\r\n" + GOOD,
    GOOD + b"\x00" * 64,
    GOOD + b"\r\n\r\n\r\n" + GOOD,
    GOOD * 40 + b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    GOOD + POST_HEAD + b"Content-Length: 2\r\n\r\n[[" + GOOD,
    # nothing much
    b"",
    b"\r\n",
    b"\r\n" * 1000,
    b"\x00" * 100,
    bytes(range(256)),
]


def mutations(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    at = rng.randrange(len(data))
    how = rng.randrange(8)
    if how == 0:
        return data[:at]
    if how == 1:
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    if how == 2:
        return (
            data[:at]
            + rng.choice([b"\r", b"\n", b"\r\n", b"\x00", b" ", b":", b"\xff"])
            + data[at:]
        )
    if how == 3:
        return data[:at] + data[at + 1 :]
    if how == 4:
        return data[:at] + data[at : at + 16] * rng.randrange(2, 50) + data[at + 16 :]
    if how == 5:
        return data + rng.choice(RAW_TEMPLATES)[: rng.randrange(1, 200)]
    if how == 6:
        return data.replace(
            b"HTTP/1.1", rng.choice([b"HTTP/1.0", b"HTTP/1.2", b"HTTP/11", b"HTTPS/1.1"])
        )
    return data.replace(b"\r\n", b"\n", rng.randrange(1, 4))


def raw_cases(count: int) -> list[tuple[bytes, str]]:
    """``count`` byte sequences, each with how the client ends: half-close after sending,
    send in small pieces then half-close, or reset the connection after sending."""
    rng = random.Random(20240611)
    found = [(t, "half-close") for t in RAW_TEMPLATES]
    while len(found) < count:
        data = rng.choice(RAW_TEMPLATES)
        for _ in range(rng.randrange(1, 4)):
            data = mutations(rng, data)
        found.append((data, rng.choice(["half-close", "half-close", "pieces", "reset"])))
    return found[:count]


def status_lines(stream: bytes) -> list[int]:
    """The statuses of the answers in ``stream`` (answers read by their Content-Length; what
    is left unparsed is searched for anything that looks like a status line)."""
    statuses: list[int] = []
    at = 0
    while stream.startswith(b"HTTP/1.", at):
        end = stream.find(b"\r\n\r\n", at)
        if end < 0:
            break
        head = stream[at:end].split(b"\r\n")
        statuses.append(int(head[0].split(b" ")[1]))
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        at = end + 4 + length
    statuses.extend(int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", stream[at:]))
    return statuses


def exchange(port: int, data: bytes, ending: str) -> tuple[bytes, bool]:
    """Send ``data``, end as told, read until the server closes; (what came back, whether
    the server closed within the timeout)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            if ending == "pieces":
                for i in range(0, len(data), 7):
                    sock.sendall(data[i : i + 7])
            else:
                sock.sendall(data)
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return b"", True
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before all was sent: read its answer
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            return bytes(received), False
    return bytes(received), True


def test_no_malformed_raw_request_gets_a_5xx(server: ServerProcess) -> None:
    cases = raw_cases(RAW_REQUESTS)
    statuses: collections.Counter[int] = collections.Counter()
    silent = 0
    hung: list[bytes] = []
    started = time.monotonic()
    for i, (data, ending) in enumerate(cases):
        received, closed = exchange(server.port, data, ending)
        if not closed:
            hung.append(data[:200])
        seen = status_lines(received)
        if not seen and ending != "reset":
            silent += 1
        for status in seen:
            statuses[status] += 1
            assert status < 500, (data[:300], ending, received[:500])
        if i % 100 == 99:
            assert ready(server) == 200, f"not serving after raw request {i}: {data[:300]!r}"
    assert ready(server) == 200
    assert server.process is not None and server.process.poll() is None
    print(
        f"\nraw requests: {len(cases)} sent in {time.monotonic() - started:.1f} s; "
        f"answer statuses: {dict(sorted(statuses.items()))}; "
        f"connections closed without an answer: {silent}; left open: {len(hung)}"
    )
    assert not hung, hung[:5]
