"""Open Inference Protocol v2 (REST) requests -> numpy, and predictions -> responses.

Two input layouts are accepted, as KServe, MLServer and Triton clients send them:

- one tensor per feature, named after it, shape ``[n]`` or ``[n, 1]``;
- one 2-D tensor of shape ``[n, n_features]`` (any name), columns in signature order.

``data`` may be flat (row-major) or nested, or the tensor's bytes may follow the JSON header
(the binary tensor data extension of Triton and KServe: the body's first
``Inference-Header-Content-Length`` bytes are JSON, then each input with
``parameters.binary_data_size`` takes that many bytes, in input order, little-endian; a BYTES
element is a 4-byte little-endian length and its bytes). Outputs are answered the same way when
asked for (``parameters.binary_data`` on an output, ``binary_data_output`` on the request).
Every check is a whole-array numpy operation, so validation costs the same for 1 row as for 32.
Anything wrong is a :class:`ProtocolError` (HTTP 4xx) whose message says what and where;
nothing a client sends can cause a 5xx.

For other transports (gRPC): :func:`decode_tensors` takes :class:`Tensor` objects whose ``data``
is a list or an array from :func:`array_from_raw`; :func:`output_specs` reads requested
outputs; :func:`raw_from_array` encodes an output's bytes.
"""

from __future__ import annotations

import array
import json
import math
import struct
import zlib
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
RAW_DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""Each fixed-size datatype's little-endian element, as the binary extension lays it out."""
_LENGTH = struct.Struct("<I")

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


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """An output to answer with, and whether as raw bytes after the JSON header."""

    name: str
    binary: bool = False


DEFAULT_OUTPUTS = (OutputSpec(OUTPUT_PREDICT),)
DEFAULT_OUTPUTS_PROBA = (OutputSpec(OUTPUT_PREDICT), OutputSpec(OUTPUT_PROBA))


@dataclass(slots=True)
class Decoded:
    rows: Rows
    n: int
    request_id: str | None
    proba: bool
    """Probabilities must be computed (``predict_proba`` is among ``outputs``)."""
    outputs: tuple[OutputSpec, ...] = DEFAULT_OUTPUTS
    """What to answer with, in order."""


def parse_json(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc):
            raise ProtocolError(
                "request body nests arrays or objects too deeply (orjson's limit is 1024)"
            ) from None
        # Python clients send NaN/Infinity by default: say so rather than "not JSON".
        try:
            json.loads(bytes(body), parse_constant=_reject_constant)
        except _NonFinite as nonfinite:
            raise ProtocolError(str(nonfinite)) from None
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None


def split_binary(body: bytes, header_length: int) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary tensor data of a body sent with the extension's
    ``Inference-Header-Content-Length``."""
    if header_length <= 0 or header_length > len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length {header_length} is not within the "
            f"{len(body)}-byte body"
        )
    view = memoryview(body)
    return view[:header_length], view[header_length:]


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A body sent with ``Content-Encoding: gzip`` or ``deflate``, refused (413) when it
    inflates past ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise ProtocolError(
            f"Content-Encoding {encoding!r} is not supported (gzip, deflate, identity)", 415
        )
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body could not be decompressed: {exc}") from None
    if len(out) > limit:
        raise ProtocolError(f"the decompressed body is over the {limit}-byte limit", 413)
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
    return out


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


def decode(
    doc: dict[str, Any],
    layout: Layout,
    *,
    classifier: bool,
    binary: bytes | memoryview | None = None,
) -> Decoded:
    """Validate an inference request against a version's inputs; ``binary`` is the data after
    the JSON header when the request uses the binary tensor extension."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    if binary is None:
        tensors = [_tensor(t, i) for i, t in enumerate(inputs)]
    else:
        tensors = _binary_tensors(inputs, binary)
    rows, n = decode_tensors(tensors, layout)
    params = doc.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    outputs = output_specs(doc.get("outputs"), params, classifier)
    proba = outputs is DEFAULT_OUTPUTS_PROBA or (
        outputs is not DEFAULT_OUTPUTS and any(o.name == OUTPUT_PROBA for o in outputs)
    )
    return Decoded(rows, n, doc.get("id"), proba, outputs)


def decode_tensors(tensors: list[Tensor], layout: Layout) -> tuple[Rows, int]:
    """Rows for the model from the request's tensors (one [n, k] tensor, or one per feature)."""
    if not tensors:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    first = tensors[0]
    # A single-feature model's [n, 1] tensor named after the feature reads the same either way.
    if (
        len(tensors) == 1
        and len(first.shape) == 2
        and first.shape[1] == layout.width
        and not (layout.width == 1 and first.name in layout.index)
    ):
        return _matrix(first, layout)
    return _per_feature(tensors, layout)


@dataclass(slots=True)
class Tensor:
    """An input tensor: ``data`` is the JSON list, or an array of ``shape`` already checked
    (from :func:`array_from_raw`)."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    data: list[Any] | npt.NDArray[Any]


def _head(t: Any, i: int) -> tuple[str, tuple[int, ...], str]:
    """An input's name, shape and datatype, checked."""
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
    if not isinstance(datatype, str) or datatype not in KNOWN_TYPES:
        raise ProtocolError(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(sorted(KNOWN_TYPES))}"
        )
    return name, tuple(shape), datatype


def _tensor(t: Any, i: int) -> Tensor:
    name, shape, datatype = _head(t, i)
    data = t.get("data")
    if not isinstance(data, list):
        if _binary_size(t, name) is not None:
            raise ProtocolError(
                f"input {name!r}: parameters.binary_data_size needs the binary data after a "
                "JSON header of Inference-Header-Content-Length bytes"
            )
        raise ProtocolError(f"input {name!r}: 'data' must be a list")
    return Tensor(name, shape, datatype, data)


def _binary_size(t: dict[str, Any], name: str) -> int | None:
    params = t.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None or (type(size) is int and size >= 0):
        return size
    raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")


def _binary_tensors(inputs: list[Any], binary: bytes | memoryview) -> list[Tensor]:
    """Inputs of a request with binary data: each with ``binary_data_size`` takes its bytes
    from ``binary`` in input order; the others carry JSON ``data``."""
    tensors: list[Tensor] = []
    offset = 0
    for i, t in enumerate(inputs):
        name, shape, datatype = _head(t, i)
        size = _binary_size(t, name)
        if size is None:
            tensors.append(_tensor(t, i))
            continue
        if "data" in t:
            raise ProtocolError(f"input {name!r} has both 'data' and binary_data_size")
        if offset + size > len(binary):
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)"
            )
        raw = binary[offset : offset + size]
        offset += size
        tensors.append(Tensor(name, shape, datatype, array_from_raw(name, datatype, shape, raw)))
    if offset != len(binary):
        raise ProtocolError(
            f"the body has {len(binary) - offset} bytes after the inputs' binary data"
        )
    return tensors


def array_from_raw(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview
) -> npt.NDArray[Any]:
    """A tensor's raw little-endian bytes (BYTES: length-prefixed elements, decoded as UTF-8)
    as a checked array of ``shape``; floats must be finite."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(name, raw, count).reshape(shape)
    dtype = RAW_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ProtocolError(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(sorted(KNOWN_TYPES))}"
        )
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"input {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes, the binary data has {len(raw)}"
        )
    # A copy: aligned, writable, and independent of the request's buffer.
    arr = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
    if datatype in FLOAT_TYPES and not np.isfinite(arr).all():
        raise ProtocolError(f"input {name!r} holds non-finite values (NaN or infinity)")
    return arr.reshape(shape)


def _bytes_elements(name: str, raw: bytes | memoryview, count: int) -> npt.NDArray[Any]:
    if count > len(raw) // 4:  # each element needs at least its 4-byte length
        raise ProtocolError(
            f"input {name!r}: {count} BYTES elements cannot fit in {len(raw)} bytes"
        )
    view = memoryview(raw)
    out = np.empty(count, dtype=object)
    offset = 0
    for k in range(count):
        if offset + 4 > len(view):
            raise ProtocolError(f"input {name!r}: BYTES element {k} is cut short")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise ProtocolError(f"input {name!r}: BYTES element {k} runs past its data")
        try:
            out[k] = str(view[offset : offset + length], "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"input {name!r}: BYTES element {k} is not UTF-8") from None
        offset += length
    if offset != len(view):
        raise ProtocolError(
            f"input {name!r}: {len(view) - offset} bytes after its {count} BYTES elements"
        )
    return out


def raw_from_array(datatype: str, values: npt.NDArray[Any] | list[Any]) -> bytes:
    """An output's bytes for the binary extension: little-endian elements, or for BYTES a
    4-byte little-endian length before each element's UTF-8."""
    if datatype == "BYTES":
        parts = []
        for v in values if isinstance(values, list) else values.ravel().tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=RAW_DTYPES[datatype]).tobytes()


def encode_response(doc: dict[str, Any], raw: list[bytes]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary output data follows it."""
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return head, None
    return b"".join((head, *raw)), len(head)


def _array(t: Tensor) -> npt.NDArray[Any]:
    """The tensor's data as an array of its shape, checked against its declared datatype."""
    data = t.data
    if isinstance(data, np.ndarray):
        return data  # from binary data: shaped and checked
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
    if t.datatype in INT_TYPES and arr.size:
        info = np.iinfo(RAW_DTYPES[t.datatype])
        if arr.min() < info.min or arr.max() > info.max:
            raise ProtocolError(f"input {t.name!r}: values out of range for {t.datatype}")
    return _shaped(t, arr)


def _shaped(t: Tensor, arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
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


def _matrix(t: Tensor, layout: Layout) -> tuple[Rows, int]:
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


def _per_feature(tensors: list[Tensor], layout: Layout) -> tuple[Rows, int]:
    by_name: dict[str, Tensor] = {}
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


def output_specs(
    outputs: Any, parameters: dict[str, Any] | None, classifier: bool
) -> tuple[OutputSpec, ...]:
    """The outputs to answer with, in order: those named in ``outputs`` (a list of
    ``{"name": ..., "parameters": {"binary_data": ...}}``), else ``predict`` (and
    ``predict_proba`` with the request parameter ``probabilities``). ``binary_data_output``
    in ``parameters`` makes every output binary unless it says otherwise."""
    proba = False
    binary = False
    if parameters:
        flag = parameters.get("probabilities", parameters.get("predict_proba", False))
        if not isinstance(flag, bool):
            raise ProtocolError("parameter 'probabilities' must be true or false")
        proba = flag
        binary = parameters.get("binary_data_output", False)
        if not isinstance(binary, bool):
            raise ProtocolError("parameter 'binary_data_output' must be true or false")
    if outputs is None:
        if proba and not classifier:
            raise ProtocolError(f"{OUTPUT_PROBA!r} is only available for classifiers")
        if not binary:
            return DEFAULT_OUTPUTS_PROBA if proba else DEFAULT_OUTPUTS
        wanted = [OUTPUT_PREDICT, OUTPUT_PROBA] if proba else [OUTPUT_PREDICT]
        return tuple(OutputSpec(name, True) for name in wanted)
    if not isinstance(outputs, list) or not outputs:
        raise ProtocolError("'outputs' must be a non-empty list of {\"name\": ...}")
    specs: list[OutputSpec] = []
    for i, out in enumerate(outputs):
        name = out.get("name") if isinstance(out, dict) else None
        if name not in (OUTPUT_PREDICT, OUTPUT_PROBA):
            what = repr(name) if isinstance(name, str) else f"outputs[{i}] (no string 'name')"
            raise ProtocolError(
                f"unknown output {what}: ask for {OUTPUT_PREDICT!r} or {OUTPUT_PROBA!r}"
            )
        if name == OUTPUT_PROBA and not classifier:
            raise ProtocolError(f"{OUTPUT_PROBA!r} is only available for classifiers")
        if any(s.name == name for s in specs):
            raise ProtocolError(f"output {name!r} is asked for twice")
        as_binary = binary
        params = out.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise ProtocolError(f"output {name!r}: 'parameters' must be an object")
            flag = params.get("binary_data", binary)
            if not isinstance(flag, bool):
                raise ProtocolError(f"output {name!r}: binary_data must be true or false")
            as_binary = flag
            if params.get("classification"):
                raise ProtocolError(
                    f"output {name!r}: the classification extension is not supported "
                    f"(ask for {OUTPUT_PROBA!r})"
                )
        specs.append(OutputSpec(name, as_binary))
    return tuple(specs)


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
