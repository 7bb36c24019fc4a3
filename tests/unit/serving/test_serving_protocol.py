"""Open Inference Protocol requests -> numpy: both layouts, and every malformed input is a 400
with a message that says what is wrong."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from modelops.api.modelversion import Signature
from modelops.serving.protocol import Layout, ProtocolError, concat_rows, decode, parse_json

NUMERIC = Layout.of(
    Signature.model_validate(
        {
            "task": "classification",
            "inputs": [
                {"name": "a", "datatype": "FP64"},
                {"name": "b", "datatype": "FP64"},
                {"name": "c", "datatype": "INT64"},
            ],
        }
    )
)
MIXED = Layout.of(
    Signature.model_validate(
        {
            "task": "classification",
            "inputs": [
                {"name": "age", "datatype": "FP64"},
                {"name": "city", "datatype": "BYTES", "categories": ["lyon", "paris"]},
            ],
        }
    )
)


def tensor(name: str, shape: list[Any], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_one_2d_tensor_flat_or_nested() -> None:
    flat = decode(
        {"inputs": [tensor("x", [2, 3], "FP64", [1, 2, 3, 4, 5, 6])]}, NUMERIC, classifier=True
    )
    nested = decode(
        {"inputs": [tensor("x", [2, 3], "FP32", [[1, 2, 3], [4, 5, 6]])]}, NUMERIC, classifier=True
    )
    for d in (flat, nested):
        assert d.n == 2
        assert isinstance(d.rows, np.ndarray) and d.rows.dtype == np.float64
        np.testing.assert_array_equal(d.rows, [[1, 2, 3], [4, 5, 6]])


def test_one_tensor_per_feature_any_order_shape_n_or_n_by_1() -> None:
    doc = {
        "inputs": [
            tensor("c", [2, 1], "INT64", [[7], [8]]),
            tensor("a", [2], "FP64", [1.5, 2.5]),
            tensor("b", [2], "FP64", [0, 1]),
        ],
        "id": "r1",
    }
    d = decode(doc, NUMERIC, classifier=True)
    np.testing.assert_array_equal(d.rows, [[1.5, 0, 7], [2.5, 1, 8]])
    assert d.request_id == "r1" and not d.proba


def test_mixed_model_gives_columns_with_categories_as_str() -> None:
    per_feature = decode(
        {
            "inputs": [
                tensor("age", [2], "FP64", [30.0, 41.0]),
                tensor("city", [2], "BYTES", ["paris", "oslo"]),
            ]
        },
        MIXED,
        classifier=True,
    )
    matrix = decode(
        {"inputs": [tensor("x", [2, 2], "BYTES", [["30", "paris"], ["41", "oslo"]])]},
        MIXED,
        classifier=True,
    )
    for d in (per_feature, matrix):
        assert isinstance(d.rows, dict)
        np.testing.assert_array_equal(d.rows["age"], [30.0, 41.0])
        assert d.rows["city"].tolist() == ["paris", "oslo"]


def test_probabilities_by_parameter_or_by_output_name() -> None:
    base = {"inputs": [tensor("x", [1, 3], "FP64", [1, 2, 3])]}
    assert decode({**base, "parameters": {"probabilities": True}}, NUMERIC, classifier=True).proba
    assert decode({**base, "outputs": [{"name": "predict_proba"}]}, NUMERIC, classifier=True).proba
    assert not decode({**base, "outputs": [{"name": "predict"}]}, NUMERIC, classifier=True).proba


def test_concat_rows_of_both_kinds() -> None:
    a, b = np.ones((1, 3)), np.zeros((2, 3))
    assert concat_rows([a, b]).shape == (3, 3)  # type: ignore[union-attr]
    cols = concat_rows([{"x": np.array([1.0])}, {"x": np.array([2.0, 3.0])}])
    assert isinstance(cols, dict) and cols["x"].tolist() == [1.0, 2.0, 3.0]


BAD: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "JSON object"),
    ("no inputs", {"id": "x"}, "'inputs' must be a non-empty list"),
    ("inputs empty", {"inputs": []}, "'inputs' must be a non-empty list"),
    ("tensor not an object", {"inputs": [3]}, "inputs[0] must be an object"),
    ("no name", {"inputs": [{"shape": [1], "datatype": "FP64", "data": [1]}]}, "string 'name'"),
    ("bad shape", {"inputs": [tensor("x", ["1", 3], "FP64", [1, 2, 3])]}, "'shape'"),
    ("negative shape", {"inputs": [tensor("x", [-1, 3], "FP64", [1, 2, 3])]}, "'shape'"),
    ("bad datatype", {"inputs": [tensor("x", [1, 3], "FLOAT", [1, 2, 3])]}, "datatype 'FLOAT'"),
    ("data not a list", {"inputs": [tensor("x", [1, 3], "FP64", "123")]}, "'data' must be a list"),
    ("wrong size", {"inputs": [tensor("x", [2, 3], "FP64", [1, 2, 3])]}, "needs 6 values"),
    ("ragged", {"inputs": [tensor("x", [2, 3], "FP64", [[1, 2, 3], [4, 5]])]}, "ragged"),
    ("strings as FP64", {"inputs": [tensor("x", [1, 3], "FP64", ["1", "2", "3"])]}, "string"),
    ("floats as INT64", {"inputs": [tensor("x", [1, 3], "INT64", [1.5, 2, 3])]}, "INT64"),
    ("nulls", {"inputs": [tensor("x", [1, 3], "FP64", [1, None, 3])]}, "null values"),
    ("BYTES for numbers", {"inputs": [tensor("x", [1, 3], "BYTES", ["a", "b", "c"])]}, "numeric"),
    ("wrong width", {"inputs": [tensor("x", [1, 4], "FP64", [1, 2, 3, 4])]}, "not a feature"),
    ("no rows", {"inputs": [tensor("x", [0, 3], "FP64", [])]}, "no rows"),
    (
        "missing feature",
        {"inputs": [tensor("a", [1], "FP64", [1]), tensor("b", [1], "FP64", [2])]},
        "missing feature(s): c",
    ),
    (
        "unknown feature",
        {"inputs": [tensor("a", [1], "FP64", [1]), tensor("zz", [1], "FP64", [2])]},
        "'zz' is not a feature",
    ),
    (
        "duplicate feature",
        {"inputs": [tensor("a", [1], "FP64", [1]), tensor("a", [1], "FP64", [1])]},
        "given twice",
    ),
    (
        "rows differ",
        {
            "inputs": [
                tensor("a", [1], "FP64", [1]),
                tensor("b", [2], "FP64", [1, 2]),
                tensor("c", [1], "INT64", [1]),
            ]
        },
        "differ in rows",
    ),
    (
        "per-feature 2 columns",
        {
            "inputs": [
                tensor("a", [1, 2], "FP64", [1, 2]),
                tensor("b", [1], "FP64", [1]),
                tensor("c", [1], "INT64", [1]),
            ]
        },
        "[n] or [n, 1]",
    ),
    ("bad id", {"id": 5, "inputs": []}, "'id' must be a string"),
    (
        "unknown output",
        {"inputs": [tensor("x", [1, 3], "FP64", [1, 2, 3])], "outputs": [{"name": "logits"}]},
        "unknown output 'logits'",
    ),
    (
        "bad parameter",
        {"inputs": [tensor("x", [1, 3], "FP64", [1, 2, 3])], "parameters": {"probabilities": 1}},
        "true or false",
    ),
]


@pytest.mark.parametrize(("case", "doc", "message"), BAD, ids=[c for c, _, _ in BAD])
def test_malformed_requests_are_400_with_a_message(case: str, doc: Any, message: str) -> None:
    from modelops.serving.protocol import request_id

    with pytest.raises(ProtocolError) as info:
        request_id(doc)
        decode(doc, NUMERIC, classifier=True)
    assert info.value.status == 400
    assert message in str(info.value), str(info.value)


def test_mixed_model_errors() -> None:
    with pytest.raises(ProtocolError, match="categorical, not FP64"):
        decode(
            {"inputs": [tensor("age", [1], "FP64", [3]), tensor("city", [1], "FP64", [1.0])]},
            MIXED,
            classifier=True,
        )
    with pytest.raises(ProtocolError, match="non-numbers"):
        decode({"inputs": [tensor("x", [1, 2], "BYTES", ["old", "paris"])]}, MIXED, classifier=True)
    with pytest.raises(ProtocolError, match="non-finite"):
        decode({"inputs": [tensor("x", [1, 2], "BYTES", ["nan", "paris"])]}, MIXED, classifier=True)


def test_probabilities_of_a_regressor_are_refused() -> None:
    doc = {
        "inputs": [tensor("x", [1, 3], "FP64", [1, 2, 3])],
        "parameters": {"probabilities": True},
    }
    with pytest.raises(ProtocolError, match="only available for classifiers"):
        decode(doc, NUMERIC, classifier=False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"inputs": [{"data": [NaN]}]}', "non-finite number NaN"),
        (b'{"inputs": [{"data": [Infinity]}]}', "non-finite number Infinity"),
        (b'{"inputs": [{"data": [1e999]}]}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_json(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_json(body)


# -- binary tensor data, datatypes, requested outputs, limits ----------------------------------

from modelops.serving.protocol import (  # noqa: E402
    DEFAULT_OUTPUTS,
    RAW_DTYPES,
    OutputSpec,
    array_from_raw,
    decompress,
    encode_response,
    output_specs,
    raw_from_array,
    split_binary,
)


def binary_request(
    tensors: list[tuple[str, list[int], str, bytes]], **extra: Any
) -> tuple[dict[str, Any], bytes]:
    """The JSON header (as parsed) and the data after it."""
    inputs = [
        {"name": n, "shape": s, "datatype": d, "parameters": {"binary_data_size": len(raw)}}
        for n, s, d, raw in tensors
    ]
    return {"inputs": inputs, **extra}, b"".join(raw for *_, raw in tensors)


def bytes_tensor(*values: bytes) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


@pytest.mark.parametrize("datatype", sorted(set(RAW_DTYPES) - {"BOOL"}))
def test_every_numeric_datatype_decodes_from_binary_and_json(datatype: str) -> None:
    values = np.array([[1, 2, 3], [4, 5, 6]], dtype=RAW_DTYPES[datatype])
    doc, raw = binary_request([("x", [2, 3], datatype, values.tobytes())])
    from_binary = decode(doc, NUMERIC, classifier=True, binary=raw)
    from_json = decode(
        {"inputs": [tensor("x", [2, 3], datatype, values.tolist())]}, NUMERIC, classifier=True
    )
    for d in (from_binary, from_json):
        assert isinstance(d.rows, np.ndarray) and d.rows.dtype == np.float64
        np.testing.assert_array_equal(d.rows, values.astype(np.float64))


def test_per_feature_binary_tensors_mixed_with_json_ones() -> None:
    doc, raw = binary_request(
        [
            ("a", [2], "FP32", np.array([1.5, 2.5], "<f4").tobytes()),
            ("c", [2, 1], "INT8", np.array([7, 8], "<i1").tobytes()),
        ]
    )
    doc["inputs"].append(tensor("b", [2], "FP64", [0, 1]))
    d = decode(doc, NUMERIC, classifier=True, binary=raw)
    np.testing.assert_array_equal(d.rows, [[1.5, 0, 7], [2.5, 1, 8]])


def test_bytes_elements_are_length_prefixed_utf8() -> None:
    doc, raw = binary_request(
        [
            ("age", [2], "FP64", np.array([30.0, 41.0]).tobytes()),
            ("city", [2], "BYTES", bytes_tensor(b"paris", "l\u00e9on".encode())),
        ]
    )
    d = decode(doc, MIXED, classifier=True, binary=raw)
    assert isinstance(d.rows, dict) and d.rows["city"].tolist() == ["paris", "l\u00e9on"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"abc", "cannot fit"),
        (bytes_tensor(b"paris"), "cut short"),  # shape says 2, one element
        (bytes_tensor(b"paris", b"lyon") + b"x", "bytes after"),
        (bytes_tensor(b"paris") + (99).to_bytes(4, "little") + b"ab", "runs past"),
        (bytes_tensor(b"paris", b"\xff\xfe"), "not UTF-8"),
    ],
)
def test_malformed_bytes_elements_are_400s(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        array_from_raw("city", "BYTES", (2,), raw)


@pytest.mark.parametrize(
    ("tensors", "tail", "message"),
    [
        ([("x", [2, 3], "FP64", bytes(40))], b"", "needs 48 bytes"),
        ([("x", [2, 3], "FP64", bytes(48))], b"extra", "5 bytes after"),
        ([("x", [2, 3], "FP64", np.full(6, np.inf).tobytes())], b"", "non-finite"),
        ([("x", [2, 3], "FP16", np.full(6, np.nan, "<f2").tobytes())], b"", "non-finite"),
        ([("x", [2, 3], "BOOL", bytes(6))], b"", "not BOOL"),
        ([("x", [2, 3], "BF16", bytes(12))], b"", "'BF16' is not one of"),
    ],
)
def test_bad_binary_inputs_are_400s_that_say_why(
    tensors: list[tuple[str, list[int], str, bytes]], tail: bytes, message: str
) -> None:
    doc, raw = binary_request(tensors)
    with pytest.raises(ProtocolError, match=message) as info:
        decode(doc, NUMERIC, classifier=True, binary=raw + tail)
    assert info.value.status == 400


def test_binary_size_past_the_body_or_without_the_header_is_a_400() -> None:
    doc, raw = binary_request([("x", [2, 3], "FP64", bytes(48))])
    with pytest.raises(ProtocolError, match="runs past the end"):
        decode(doc, NUMERIC, classifier=True, binary=raw[:40])
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
        decode(doc, NUMERIC, classifier=True)
    doc["inputs"][0]["data"] = [0] * 6
    with pytest.raises(ProtocolError, match="both 'data' and binary_data_size"):
        decode(doc, NUMERIC, classifier=True, binary=raw)


def test_split_binary_checks_the_header_length() -> None:
    head, tail = split_binary(b'{"a": 1}xyz', 8)
    assert bytes(head) == b'{"a": 1}' and bytes(tail) == b"xyz"
    for bad in (-1, 0, 12):
        with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
            split_binary(b'{"a": 1}xyz', bad)


@pytest.mark.parametrize("datatype", ["INT8", "UINT8", "UINT16", "INT32"])
def test_json_integers_out_of_their_datatypes_range_are_400s(datatype: str) -> None:
    too_big = int(np.iinfo(RAW_DTYPES[datatype]).max) + 1
    doc = {"inputs": [tensor("x", [1, 3], datatype, [1, 2, too_big])]}
    with pytest.raises(ProtocolError, match=f"out of range for {datatype}"):
        decode(doc, NUMERIC, classifier=True)
    doc = {"inputs": [tensor("x", [1, 3], datatype, [1, 2, -129])]}
    if datatype.startswith("U") or datatype == "INT8":
        with pytest.raises(ProtocolError, match="out of range"):
            decode(doc, NUMERIC, classifier=True)


def test_bytes_for_numeric_features_names_the_datatype() -> None:
    with pytest.raises(ProtocolError, match="not BYTES"):
        decode(
            {"inputs": [tensor("x", [1, 3], "BYTES", ["1", "2", "3"])]}, NUMERIC, classifier=True
        )


def test_requested_outputs_only_those_named_in_order_with_their_binary_flag() -> None:
    assert output_specs(None, None, True) is DEFAULT_OUTPUTS
    assert output_specs(None, {"binary_data_output": True}, True) == (OutputSpec("predict", True),)
    assert output_specs(None, {"probabilities": True, "binary_data_output": True}, True) == (
        OutputSpec("predict", True),
        OutputSpec("predict_proba", True),
    )
    named = [
        {"name": "predict_proba", "parameters": {"binary_data": True}},
        {"name": "predict"},
    ]
    assert output_specs(named, None, True) == (
        OutputSpec("predict_proba", True),
        OutputSpec("predict", False),
    )
    # The request-level flag is the default; an output's own flag wins.
    mixed = [{"name": "predict", "parameters": {"binary_data": False}}, {"name": "predict_proba"}]
    assert output_specs(mixed, {"binary_data_output": True}, True) == (
        OutputSpec("predict", False),
        OutputSpec("predict_proba", True),
    )
    d = decode(
        {
            "inputs": [tensor("x", [1, 3], "FP64", [1, 2, 3])],
            "outputs": [{"name": "predict_proba"}],
        },
        NUMERIC,
        classifier=True,
    )
    assert d.proba and d.outputs == (OutputSpec("predict_proba"),)


@pytest.mark.parametrize(
    ("outputs", "params", "classifier", "message"),
    [
        ([{"name": "scores"}], None, True, "unknown output 'scores'"),
        ([{"name": "predict"}, {"name": "predict"}], None, True, "asked for twice"),
        ([{"nom": "predict"}], None, True, "no string 'name'"),
        ([], None, True, "non-empty list"),
        ({"name": "predict"}, None, True, "non-empty list"),
        ([{"name": "predict_proba"}], None, False, "only available for classifiers"),
        ([{"name": "predict", "parameters": {"binary_data": 1}}], None, True, "binary_data"),
        ([{"name": "predict", "parameters": {"classification": 2}}], None, True, "classif"),
        (None, {"binary_data_output": "yes"}, True, "binary_data_output"),
        (None, {"probabilities": True}, False, "only available for classifiers"),
    ],
)
def test_bad_requested_outputs_are_400s(
    outputs: Any, params: Any, classifier: bool, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        output_specs(outputs, params, classifier)


@pytest.mark.parametrize(
    ("datatype", "values", "expected"),
    [
        ("FP64", np.array([1.5, -2.0]), np.array([1.5, -2.0], "<f8").tobytes()),
        ("INT64", [1, 2], np.array([1, 2], "<i8").tobytes()),
        ("BOOL", [True, False], b"\x01\x00"),
        ("BYTES", ["setosa", "é"], bytes_tensor(b"setosa", "é".encode())),
    ],
)
def test_raw_from_array_is_what_array_from_raw_reads(
    datatype: str, values: Any, expected: bytes
) -> None:
    raw = raw_from_array(datatype, values)
    assert raw == expected
    back = array_from_raw("y", datatype, (2,), raw)
    assert back.tolist() == list(values)


def test_encode_response_puts_binary_after_the_json_header() -> None:
    body, length = encode_response({"outputs": []}, [b"\x01\x02", b"\x03"])
    assert length == len(b'{"outputs":[]}') and body[length:] == b"\x01\x02\x03"
    assert encode_response({"outputs": []}, []) == (b'{"outputs":[]}', None)


def test_deep_nesting_is_a_400_not_a_crash() -> None:
    deep = b'{"inputs": [{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    with pytest.raises(ProtocolError, match="too deeply"):
        parse_json(deep)
    # Under the parser's limit, numpy's dimension limit answers instead.
    nested = "[" * 100 + "1" + "]" * 100
    doc = parse_json(b'{"inputs": [%s]}' % json.dumps(tensor("x", [1, 3], "FP64", 0)).encode())
    doc["inputs"][0]["data"] = json.loads(nested)
    with pytest.raises(ProtocolError):
        decode(doc, NUMERIC, classifier=True)


def test_compressed_bodies_inflate_within_the_limit() -> None:
    import gzip
    import zlib

    body = b'{"inputs": []}'
    assert decompress(gzip.compress(body), "gzip", 100) == body
    assert decompress(zlib.compress(body), "deflate", 100) == body
    assert decompress(body, "identity", 100) == body
    with pytest.raises(ProtocolError) as info:
        decompress(gzip.compress(bytes(10_000)), "gzip", 1000)
    assert info.value.status == 413
    with pytest.raises(ProtocolError) as info:
        decompress(body, "br", 100)
    assert info.value.status == 415
    with pytest.raises(ProtocolError, match="could not be decompressed"):
        decompress(b"not gzip", "gzip", 100)
    with pytest.raises(ProtocolError, match="truncated"):
        decompress(gzip.compress(body)[:-12], "gzip", 100)
