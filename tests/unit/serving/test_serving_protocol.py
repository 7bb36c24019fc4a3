"""Open Inference Protocol requests -> numpy: both layouts, and every malformed input is a 400
with a message that says what is wrong."""

from __future__ import annotations

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
