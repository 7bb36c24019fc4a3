"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService``.

The service definition is KServe's ``grpc_predict_v2.proto``, as Triton ships it compiled in
``tritonclient.grpc`` (the server uses only its messages and the servicer base class). Every
RPC reads the same :class:`~modelops.serving.server.ModelServer` as the REST endpoints: the
same routing table and canary split (the table's sticky header is read from the call's
metadata), the same ledger of request ids (feedback is REST only) and shadow copies, the same
validation (a gRPC request is turned into the REST request document and checked by
:func:`modelops.serving.protocol.decode`), the same micro-batcher, counters and sketch
windows. gRPC requests are counted in the serving metrics with ``transport="grpc"``
(``modelops_serving_requests_total`` and the rest); an error is counted under the HTTP status
the REST API would have answered (``code="400"`` for INVALID_ARGUMENT, 404 NOT_FOUND, 503
UNAVAILABLE).

Inputs come as ``raw_input_contents`` (little-endian bytes, what Triton clients send by default;
BYTES elements each prefixed by a 4-byte length) or typed ``contents``. Outputs go back as
``raw_output_contents``, as Triton answers. Requested ``outputs`` are honoured: only those are
returned; without any, ``predict`` (plus ``predict_proba`` with the ``probabilities``
parameter).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
import numpy as np
import numpy.typing as npt
import orjson
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelops import __version__
from modelops.serving.grpc_transport import GrpcServer, unary_methods
from modelops.serving.metrics import NO_VERSION
from modelops.serving.protocol import (
    FLOAT_TYPES,
    KNOWN_TYPES,
    OUTPUT_PREDICT,
    OUTPUT_PROBA,
    ProtocolError,
    decode,
)
from modelops.serving.state import ServedVersion, ServingState

if TYPE_CHECKING:
    from modelops.serving.server import ModelServer

SERVICE = "inference.GRPCInferenceService"


class CallContext(Protocol):
    """What a servicer method uses of its call: :class:`~modelops.serving.grpc_transport.Call`
    in this server, ``grpc.aio.ServicerContext`` under grpcio (``make bench-serve``)."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn: ...


STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The HTTP status of a :class:`ProtocolError` -> the gRPC status code (else INTERNAL)."""

CLIENT_CLOSED = 499
"""The status counted for a call its client cancelled (nginx's "client closed request"): no
answer was sent, and it is not the server's error."""

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""Raw tensor contents are little-endian, row-major (Triton's layout)."""

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Which typed ``contents`` field holds a datatype (FP16 has none: raw only)."""


class Abort(Exception):
    """An RPC to end with ``code``; ``status`` is the HTTP status counted in the metrics."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _abort_for(exc: ProtocolError) -> Abort:
    return Abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc), exc.status)


# -- requests -> the REST document ----------------------------------------------------------------


def request_document(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The REST request a gRPC one stands for, so that :func:`decode` checks it the same way."""
    raw: Sequence[bytes] = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        name = tensor.name or f"inputs[{i}]"
        datatype = tensor.datatype
        if datatype not in KNOWN_TYPES:
            raise ProtocolError(
                f"input {name!r}: datatype {datatype!r} is not one of "
                f"{', '.join(sorted(KNOWN_TYPES))}"
            )
        shape = list(tensor.shape)
        if not shape or any(d < 0 for d in shape):
            raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"input {name!r}: both contents and raw_input_contents given")
            data = _raw_values(name, datatype, raw[i])
        else:
            data = _typed_values(name, datatype, tensor)
        inputs.append({"name": tensor.name, "shape": shape, "datatype": datatype, "data": data})
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    proba = request.parameters.get("probabilities") or request.parameters.get("predict_proba")
    if proba is not None:
        if proba.WhichOneof("parameter_choice") != "bool_param":
            raise ProtocolError("parameter 'probabilities' must be a bool")
        doc["parameters"] = {"probabilities": proba.bool_param}
    if request.outputs:
        doc["outputs"] = [{"name": o.name} for o in request.outputs]
    return doc


def _raw_values(name: str, datatype: str, data: bytes) -> list[Any]:
    if datatype == "BYTES":
        return [b.decode("utf-8", "replace") for b in _split_bytes(name, data)]
    dtype = NUMPY_TYPES[datatype]
    if len(data) % dtype.itemsize:
        raise ProtocolError(
            f"input {name!r}: {len(data)} raw bytes are not a whole number of "
            f"{datatype} values ({dtype.itemsize} bytes each)"
        )
    values = np.frombuffer(data, dtype=dtype)
    if datatype in FLOAT_TYPES:
        _finite(name, values)
        values = values.astype(np.float64)  # tolist() then gives Python floats
    return list(values.tolist())


def _split_bytes(name: str, data: bytes) -> list[bytes]:
    """Triton's BYTES serialization: each element a 4-byte little-endian length, then bytes."""
    out, pos, end = [], 0, len(data)
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError(f"input {name!r}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + size > end:
            raise ProtocolError(f"input {name!r}: BYTES element runs past the raw contents")
        out.append(data[pos : pos + size])
        pos += size
    return out


def _typed_values(name: str, datatype: str, tensor: Any) -> list[Any]:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(f"input {name!r}: {datatype} can only be sent as raw_input_contents")
    contents = tensor.contents
    given = [f.name for f, _ in contents.ListFields()]
    if any(f != field for f in given):
        raise ProtocolError(
            f"input {name!r}: datatype {datatype} goes in contents.{field}, "
            f"not {', '.join(f for f in given if f != field)}"
        )
    values = getattr(contents, field)
    if datatype == "BYTES":
        return [b.decode("utf-8", "replace") for b in values]
    if datatype in FLOAT_TYPES:
        _finite(name, np.fromiter(values, np.float64, len(values)))
    return list(values)


def _finite(name: str, values: npt.NDArray[Any]) -> None:
    # JSON cannot carry NaN or infinity (orjson refuses them); binary tensors can.
    if not np.isfinite(values).all():
        raise ProtocolError(f"input {name!r} holds non-finite values (NaN or infinity)")


# -- predictions -> responses --------------------------------------------------------------------


def _bytes_tensor(values: Sequence[str]) -> bytes:
    parts = []
    for v in values:
        b = v.encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _label_bytes(served: ServedVersion, indices: npt.NDArray[Any]) -> bytes:
    model = served.model
    assert model is not None
    labels = model.labels
    if model.output_datatype == "BYTES":
        return _bytes_tensor([labels[i] for i in indices.tolist()])
    dtype = NUMPY_TYPES[model.output_datatype]
    return bytes(np.asarray(labels, dtype=dtype)[indices].tobytes())


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The gRPC face of a :class:`ModelServer`."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    # -- health and metadata ----------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: CallContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: CallContext) -> Any:
        return pb.ServerReadyResponse(ready=self.server.ready)

    async def ServerMetadata(self, request: Any, context: CallContext) -> Any:
        return pb.ServerMetadataResponse(name="modelops", version=__version__, extensions=[])

    async def ModelReady(self, request: Any, context: CallContext) -> Any:
        state = self.server.manager.state
        try:
            self._known(state, request.name)
            if not request.version:
                return pb.ModelReadyResponse(ready=state.ready)
            found = state.aliases.get(request.version)
            if found is None:
                raise Abort(grpc.StatusCode.NOT_FOUND, _no_version(state, request.version), 404)
            return pb.ModelReadyResponse(ready=found.model is not None)
        except Abort as exc:
            await context.abort(exc.code, str(exc))

    async def ModelMetadata(self, request: Any, context: CallContext) -> Any:
        state = self.server.manager.state
        try:
            self._known(state, request.name)
            if request.version and request.version not in state.aliases:
                raise Abort(grpc.StatusCode.NOT_FOUND, _no_version(state, request.version), 404)
        except Abort as exc:
            await context.abort(exc.code, str(exc))
        # The REST document, so both transports describe a model identically.
        answer = self.server._model_metadata(state, request.version or None)
        doc = orjson.loads(answer.body)
        return pb.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["outputs"]],
        )

    # -- inference --------------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: CallContext) -> Any:
        server = self.server
        started = time.perf_counter()
        state = server.manager.state
        try:
            self._known(state, request.model_name)
        except Abort as exc:
            server.metrics.stats("", NO_VERSION).grpc.observe(
                time.perf_counter() - started, exc.status
            )
            await context.abort(exc.code, str(exc))
        served: ServedVersion | None = None
        status = 500
        try:
            doc = request_document(request)
            rid: str | None = doc.get("id")
            routed = not request.model_version
            if routed:
                served = state.route(_sticky_key(state, context) or rid)
            else:
                served = state.resolve(request.model_version)
            model = served.model
            assert model is not None
            decoded = decode(doc, model.layout, classifier=model.classifier)
            wanted = [o.name for o in request.outputs]
            if not wanted:
                wanted = [OUTPUT_PREDICT, *([OUTPUT_PROBA] if decoded.proba else [])]
            prediction = await server.batcher.submit(served, decoded.rows, decoded.n, decoded.proba)
            response = self._response(state, served, rid, wanted, prediction, decoded.n)
            status = 200
            server.answered(state, served, rid, routed, decoded, prediction, doc, None, "grpc")
            return response
        except ProtocolError as exc:
            status = exc.status
            abort = _abort_for(exc)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the client cancelled the call (RST_STREAM) or went away
            raise
        finally:
            stats = (
                served.stats if served is not None else server.metrics.stats(state.model_name, "")
            )
            stats.grpc.observe(time.perf_counter() - started, status)
        await context.abort(abort.code, str(abort))

    def _response(
        self,
        state: ServingState,
        served: ServedVersion,
        rid: str | None,
        wanted: list[str],
        prediction: Any,
        n: int,
    ) -> Any:
        model = served.model
        assert model is not None
        outputs, raw = [], []
        for name in dict.fromkeys(wanted):  # in the order asked, once each
            if name == OUTPUT_PREDICT:
                if model.classifier:
                    data = _label_bytes(served, prediction.values)
                else:
                    data = np.ascontiguousarray(prediction.values, dtype="<f8").tobytes()
                outputs.append(
                    pb.ModelInferResponse.InferOutputTensor(
                        name=name, datatype=model.output_datatype, shape=[n]
                    )
                )
                raw.append(data)
            else:  # OUTPUT_PROBA: decode() refused any other name, and proba for regressors
                tensor = pb.ModelInferResponse.InferOutputTensor(
                    name=name, datatype="FP64", shape=[n, len(model.labels)]
                )
                tensor.parameters["classes"].string_param = orjson.dumps(
                    list(model.labels)
                ).decode()
                outputs.append(tensor)
                raw.append(np.ascontiguousarray(prediction.proba, dtype="<f8").tobytes())
        server = self.server
        return pb.ModelInferResponse(
            model_name=state.model_name,
            model_version=served.name,
            id=rid if rid is not None else f"{server._id_prefix}{next(server._ids)}",
            outputs=outputs,
            raw_output_contents=raw,
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _known(self, state: ServingState, name: str) -> None:
        if self.server.stopping:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "shutting down", 503)
        if state.table is None:
            reason = self.server.manager.table_error or "no routing table yet"
            raise Abort(grpc.StatusCode.UNAVAILABLE, f"not ready: {reason}", 503)
        if not state.knows(name):
            raise Abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r} (this server serves {state.model_name!r})",
                404,
            )


def _sticky_key(state: ServingState, context: CallContext) -> str | None:
    """The value of the routing table's sticky header among the call's metadata."""
    header = state.sticky_header
    if header is None:
        return None
    for key, value in context.invocation_metadata() or ():
        if key == header:
            return value if isinstance(value, str) else None
    return None


def _no_version(state: ServingState, version: str) -> str:
    return f"model {state.model_name!r} has no version {version!r}"


METHODS = (
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelInfer",
)
"""The service's methods this server implements; any other is UNIMPLEMENTED."""


def grpc_server(model_server: ModelServer, *, max_message_bytes: int | None = None) -> GrpcServer:
    """The server's gRPC transport (:mod:`modelops.serving.grpc_transport`) calling an
    :class:`InferenceServicer` of ``model_server``; not listening yet (``start``). A request
    message over ``max_message_bytes`` (default: the REST body limit) is RESOURCE_EXHAUSTED."""
    servicer = InferenceServicer(model_server)
    return GrpcServer(
        unary_methods(servicer, SERVICE, METHODS, pb),
        max_message_bytes=max_message_bytes or model_server.config.max_body_bytes,
    )
