"""Open Inference Protocol v2 (REST) requests -> numpy, and predictions -> responses.

Two input layouts are accepted, as KServe, MLServer and Triton clients send them:

- one tensor per feature, named after it, shape ``[n]`` or ``[n, 1]``;
- one 2-D tensor of shape ``[n, n_features]`` (any name), columns in signature order.

``data`` may be flat (row-major) or nested. Every check is a whole-array numpy operation, so
validation costs the same for 1 row as for 32. Anything wrong is a :class:`ProtocolError`
(HTTP 400) whose message says what and where; nothing a client sends can cause a 5xx.
"""

from __future__ import annotations

import array
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelops.api.modelversion import Signature

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
NUMERIC_TYPES = FLOAT_TYPES | INT_TYPES
KNOWN_TYPES = NUMERIC_TYPES | {"BYTES", "BOOL"}
OUTPUT_PREDICT = "predict"
OUTPUT_PROBA = "predict_proba"

Matrix = npt.NDArray[np.float64]
Columns = dict[str, npt.NDArray[Any]]
Rows = Matrix | Columns
"""A float64 matrix in signature order (numeric models), or named columns (mixed models)."""


class ProtocolError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP status to reply with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Layout:
    """What a version's signature says about its inputs, precomputed for the hot path."""

    names: tuple[str, ...]
    datatypes: tuple[str, ...]
    categorical: tuple[bool, ...]
    index: Mapping[str, int]
    numeric_only: bool
    width: int

    @classmethod
    def of(cls, signature: Signature) -> Layout:
        names = tuple(f.name for f in signature.inputs)
        # The trainer one-hot encodes exactly the BYTES features (as str) in a Pipeline.
        categorical = tuple(
            f.datatype == "BYTES" or f.categories is not None for f in signature.inputs
        )
        return cls(
            names=names,
            datatypes=tuple(f.datatype for f in signature.inputs),
            categorical=categorical,
            index={name: i for i, name in enumerate(names)},
            numeric_only=not any(categorical),
            width=len(names),
        )


@dataclass(slots=True)
class Decoded:
    rows: Rows
    n: int
    request_id: str | None
    proba: bool


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # Python clients send NaN/Infinity by default: say so rather than "not JSON".
        try:
            json.loads(body, parse_constant=_reject_constant)
        except _NonFinite as nonfinite:
            raise ProtocolError(str(nonfinite)) from None
        except (ValueError, UnicodeDecodeError):
            pass
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(f"non-finite number {name} in the request: only finite numbers are allowed")


def request_id(doc: Any) -> str | None:
    """The request's ``id`` (routing needs it before the inputs are decoded)."""
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object with 'inputs'")
    rid = doc.get("id")
    if rid is None or isinstance(rid, str):
        return rid
    raise ProtocolError("'id' must be a string")


def decode(doc: dict[str, Any], layout: Layout, *, classifier: bool) -> Decoded:
    """Validate an inference request against a version's inputs."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    tensors = [_tensor(t, i) for i, t in enumerate(inputs)]
    first = tensors[0]
    # A single-feature model's [n, 1] tensor named after the feature reads the same either way.
    if (
        len(tensors) == 1
        and len(first.shape) == 2
        and first.shape[1] == layout.width
        and not (layout.width == 1 and first.name in layout.index)
    ):
        rows, n = _matrix(first, layout)
    else:
        rows, n = _per_feature(tensors, layout)
    return Decoded(rows, n, doc.get("id"), _wants_proba(doc, classifier))


@dataclass(slots=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: Any


def _tensor(t: Any, i: int) -> _Tensor:
    if not isinstance(t, dict):
        raise ProtocolError(f"inputs[{i}] must be an object with name, shape, datatype, data")
    name, shape, datatype = t.get("name"), t.get("shape"), t.get("datatype")
    if not isinstance(name, str):
        raise ProtocolError(f"inputs[{i}] needs a string 'name'")
    if not isinstance(shape, list) or not shape:
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    for d in shape:
        if type(d) is not int or d < 0:
            raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if datatype not in KNOWN_TYPES:
        raise ProtocolError(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(sorted(KNOWN_TYPES))}"
        )
    if "data" not in t or not isinstance(t["data"], list):
        raise ProtocolError(f"input {name!r}: 'data' must be a list")
    return _Tensor(name, tuple(shape), datatype, t["data"])


def _array(t: _Tensor) -> npt.NDArray[Any]:
    """The tensor's data as an array of its shape, checked against its declared datatype."""
    data = t.data
    if t.datatype in FLOAT_TYPES and data and type(data[0]) is not bool:
        # A flat list of numbers, the common case, converts in C at about 70% of asarray's
        # cost; strings, nulls and nested lists raise and take the general path below, which
        # says what is wrong with them. (A list of only booleans is refused there too.)
        try:
            flat = np.frombuffer(array.array("d", data), dtype=np.float64)
        except (TypeError, OverflowError):
            pass
        else:
            return _shaped(t, flat)
    try:
        arr = np.asarray(t.data)
    except (ValueError, TypeError):
        raise ProtocolError(f"input {t.name!r}: 'data' is ragged or mixes types") from None
    kind = arr.dtype.kind
    if t.datatype in FLOAT_TYPES:
        ok = kind in "fiu"
    elif t.datatype in INT_TYPES:
        ok = kind in "iu" or (kind == "f" and arr.size == 0)
    elif t.datatype == "BOOL":
        ok = kind == "b"
    else:  # BYTES: strings, or numbers written as JSON numbers
        ok = kind in "Uiufb"
    if not ok:
        what = "null values" if kind == "O" else f"{_kind_name(kind)} values"
        raise ProtocolError(f"input {t.name!r}: datatype {t.datatype} does not match its {what}")
    return _shaped(t, arr)


def _shaped(t: _Tensor, arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    expected = math.prod(t.shape)
    if arr.size != expected:
        raise ProtocolError(
            f"input {t.name!r}: shape {list(t.shape)} needs {expected} values, "
            f"'data' has {arr.size}"
        )
    return arr if arr.shape == t.shape else arr.reshape(t.shape)


def _kind_name(kind: str) -> str:
    names = {"f": "floating-point", "i": "integer", "u": "integer", "b": "boolean", "U": "string"}
    return names.get(kind, "mixed")


def _matrix(t: _Tensor, layout: Layout) -> tuple[Rows, int]:
    arr = _array(t)
    n = t.shape[0]
    if n == 0:
        raise ProtocolError(f"input {t.name!r} has no rows")
    if layout.numeric_only:
        if t.datatype not in NUMERIC_TYPES:
            raise ProtocolError(
                f"input {t.name!r}: the model's features are numeric, not {t.datatype}"
            )
        # A fresh array from a list is C-contiguous; JSON numbers parsed by orjson are finite
        # (it rejects NaN, Infinity and overflowing literals), so there is nothing to check.
        return (arr if arr.dtype == np.float64 else arr.astype(np.float64)), n
    if t.datatype == "BOOL":
        raise ProtocolError(f"input {t.name!r}: a BOOL tensor cannot hold this model's features")
    columns: Columns = {}
    for j, name in enumerate(layout.names):
        where = f"{t.name!r} column {j} ({name})"
        columns[name] = _column(arr[:, j], layout.categorical[j], where, t.datatype)
    return columns, n


def _per_feature(tensors: list[_Tensor], layout: Layout) -> tuple[Rows, int]:
    by_name: dict[str, _Tensor] = {}
    for t in tensors:
        if t.name not in layout.index:
            raise ProtocolError(
                f"input {t.name!r} is not a feature of this model (features: "
                f"{', '.join(layout.names)}; or send one [n, {layout.width}] tensor)"
            )
        if t.name in by_name:
            raise ProtocolError(f"input {t.name!r} is given twice")
        by_name[t.name] = t
    if missing := [name for name in layout.names if name not in by_name]:
        raise ProtocolError(f"missing feature(s): {', '.join(missing)}")
    n = -1
    for t in tensors:
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise ProtocolError(
                f"input {t.name!r}: shape must be [n] or [n, 1], not {list(t.shape)}"
            )
        if n < 0:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise ProtocolError(
                f"inputs differ in rows: {t.name!r} has {t.shape[0]}, others have {n}"
            )
    if n == 0:
        raise ProtocolError("the inputs have no rows")
    if layout.numeric_only:
        matrix = np.empty((n, layout.width), dtype=np.float64)
        for j, name in enumerate(layout.names):
            t = by_name[name]
            if t.datatype not in NUMERIC_TYPES:
                raise ProtocolError(f"input {name!r}: the feature is numeric, not {t.datatype}")
            matrix[:, j] = _array(t).reshape(n)
        return matrix, n
    columns: Columns = {}
    for j, name in enumerate(layout.names):
        t = by_name[name]
        categorical = layout.categorical[j]
        if not categorical and t.datatype not in NUMERIC_TYPES:
            raise ProtocolError(f"input {name!r}: the feature is numeric, not {t.datatype}")
        columns[name] = _column(_array(t).reshape(n), categorical, repr(name), t.datatype)
    return columns, n


def _column(
    values: npt.NDArray[Any], categorical: bool, where: str, datatype: str
) -> npt.NDArray[Any]:
    """One column of a mixed model: float64 for numeric features, str objects for categories."""
    if categorical:
        if datatype in FLOAT_TYPES:
            # 1 and 1.0 would be different categories: category codes must be integers.
            raise ProtocolError(f"input {where}: the feature is categorical, not {datatype}")
        return values.astype(str).astype(object)
    if values.dtype.kind == "b":
        raise ProtocolError(f"input {where}: the feature is numeric, got booleans")
    try:
        column = values.astype(np.float64)
    except ValueError:
        raise ProtocolError(f"input {where}: the feature is numeric, got non-numbers") from None
    _check_finite(column, where)
    return column


def _check_finite(values: npt.NDArray[np.float64], where: str) -> None:
    if not np.isfinite(values).all():
        raise ProtocolError(f"input {where} holds non-finite values (NaN or infinity)")


def _wants_proba(doc: dict[str, Any], classifier: bool) -> bool:
    proba = False
    params = doc.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise ProtocolError("'parameters' must be an object")
        flag = params.get("probabilities", params.get("predict_proba", False))
        if not isinstance(flag, bool):
            raise ProtocolError("parameter 'probabilities' must be true or false")
        proba = flag
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise ProtocolError("'outputs' must be a list of {\"name\": ...}")
        for out in outputs:
            name = out.get("name") if isinstance(out, dict) else None
            if name == OUTPUT_PROBA:
                proba = True
            elif name != OUTPUT_PREDICT:
                raise ProtocolError(
                    f"unknown output {name!r}: ask for {OUTPUT_PREDICT!r} or {OUTPUT_PROBA!r}"
                )
    if proba and not classifier:
        raise ProtocolError(f"{OUTPUT_PROBA!r} is only available for classifiers")
    return proba


def concat_rows(batches: list[Rows]) -> Rows:
    """Rows of several requests (all matrices, or all column sets, of one layout) as one."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(batches)  # type: ignore[arg-type]
    columns = [b for b in batches if isinstance(b, dict)]
    return {name: np.concatenate([c[name] for c in columns]) for name in first}


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
