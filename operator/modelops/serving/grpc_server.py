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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
import numpy as np
import numpy.typing as npt
import orjson
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelops import __version__
from modelops.serving.batcher import Prediction
from modelops.serving.grpc_transport import Call, GrpcAbort, GrpcServer, unary_methods
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


class Abort(GrpcAbort):
    """An RPC to end with ``code``; ``status`` is the HTTP status counted in the metrics."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


Metadata = Sequence[tuple[str, str | bytes]]
"""A call's metadata: (lower-case key, value) pairs."""

Reply = Callable[[Any, "Abort | None"], None]
"""Answers a call: ``(response, None)`` or ``(None, abort)``."""


def _abort_for(exc: ProtocolError) -> Abort:
    return Abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc), exc.status)


# -- requests -> the REST document ----------------------------------------------------------------


def request_document(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes | None]:
    """The REST request a gRPC one stands for, so that :func:`decode` checks it the same way:
    the JSON document, and the binary data after it when the tensors come as
    ``raw_input_contents`` (which then stand for the REST binary tensor extension's
    ``binary_data_size`` inputs: the same little-endian layout, BYTES length-prefixed)."""
    raw: Sequence[bytes] = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        name = tensor.name or f"inputs[{i}]"
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
        }
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"input {name!r}: both contents and raw_input_contents given")
            entry["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            entry["data"] = _typed_values(name, tensor.datatype, tensor)
        inputs.append(entry)
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
    return doc, (b"".join(raw) if raw else None)


def _typed_values(name: str, datatype: str, tensor: Any) -> list[Any]:
    if datatype not in KNOWN_TYPES:
        raise ProtocolError(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(sorted(KNOWN_TYPES))}"
        )
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
        """ModelInfer as a coroutine (grpc.aio's servicer interface): :meth:`infer`, awaited."""
        future: asyncio.Future[tuple[Any, Abort | None]] = (
            asyncio.get_running_loop().create_future()
        )

        def reply(response: Any, abort: Abort | None) -> None:
            if not future.done():
                future.set_result((response, abort))

        self.infer(request, context.invocation_metadata() or (), reply)
        response, abort = await future
        if abort is not None:
            await context.abort(abort.code, str(abort))
        return response

    def infer(self, request: Any, metadata: Metadata, reply: Reply) -> None:
        """ModelInfer: ``reply`` is called once, with the response or the :class:`Abort`, at
        once for a request refused before it is queued, else from its micro-batch (on the
        event loop). No task or future per call: this server's transport calls it directly."""
        server = self.server
        started = time.perf_counter()
        state = server.manager.state
        try:
            self._known(state, request.model_name)
        except Abort as exc:
            server.metrics.stats("", NO_VERSION).grpc.observe(
                time.perf_counter() - started, exc.status
            )
            reply(None, exc)
            return
        served: ServedVersion | None = None
        try:
            doc, binary = request_document(request)
            rid: str | None = doc.get("id")
            routed = not request.model_version
            if routed:
                served = state.route(_sticky_key(state, metadata) or rid)
            else:
                served = state.resolve(request.model_version)
            model = served.model
            assert model is not None
            decoded = decode(doc, model.layout, classifier=model.classifier, binary=binary)
        except ProtocolError as exc:
            stats = (
                served.stats if served is not None else server.metrics.stats(state.model_name, "")
            )
            stats.grpc.observe(time.perf_counter() - started, exc.status)
            reply(None, _abort_for(exc))
            return
        version = served
        wanted = [o.name for o in request.outputs] or [
            OUTPUT_PREDICT,
            *([OUTPUT_PROBA] if decoded.proba else []),
        ]

        def done(prediction: Prediction | None, error: ProtocolError | None) -> None:
            if prediction is None:
                assert error is not None
                version.stats.grpc.observe(time.perf_counter() - started, error.status)
                reply(None, _abort_for(error))
                return
            response = self._response(state, version, rid, wanted, prediction, decoded.n)
            version.stats.grpc.observe(time.perf_counter() - started, 200)
            reply(response, None)
            server.answered(state, version, rid, routed, decoded, prediction, doc, binary, "grpc")

        server.batcher.submit_then(version, decoded.rows, decoded.n, decoded.proba, done)

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


def _sticky_key(state: ServingState, metadata: Metadata) -> str | None:
    """The value of the routing table's sticky header among the call's metadata."""
    header = state.sticky_header
    if header is None:
        return None
    for key, value in metadata:
        if key == header:
            return value if isinstance(value, str) else None
    return None


def _no_version(state: ServingState, version: str) -> str:
    return f"model {state.model_name!r} has no version {version!r}"


COROUTINE_METHODS = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata")
"""The service's methods served as coroutines; with ModelInfer (served by
:meth:`InferenceServicer.infer`, without a task per call), all this server implements: any
other is UNIMPLEMENTED."""


def grpc_server(model_server: ModelServer, *, max_message_bytes: int | None = None) -> GrpcServer:
    """The server's gRPC transport (:mod:`modelops.serving.grpc_transport`) calling an
    :class:`InferenceServicer` of ``model_server``; not listening yet (``start``). A request
    message over ``max_message_bytes`` (default: the REST body limit) is RESOURCE_EXHAUSTED."""
    servicer = InferenceServicer(model_server)

    def model_infer(request: Any, call: Call) -> None:
        servicer.infer(request, call.metadata, call.finish)

    return GrpcServer(
        {
            **unary_methods(servicer, SERVICE, COROUTINE_METHODS, pb),
            f"/{SERVICE}/ModelInfer": (model_infer, pb.ModelInferRequest.FromString),
        },
        max_message_bytes=max_message_bytes or model_server.config.max_body_bytes,
    )
