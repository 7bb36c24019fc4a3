"""The model server's endpoints: Open Inference Protocol v2 REST, ground-truth feedback, and
``/metrics``.

One handler and a small path dispatcher on the server's own HTTP layer (``http.py``); every
answer, 404 and 405 included, is JSON with an ``error`` message. Everything but inference and
feedback is answered synchronously, without a task.

``POST /v2/models/{model}[/versions/{version}]/feedback`` takes true labels by request id
(:func:`modelops.serving.feedback.parse_feedback`) and answers how many items were joined,
are pending, unknown, expired, duplicate or mismatched. Inference requests with an ``id`` are
remembered in the worker's ledger; in shadow mode the shadow versions predict a copy of what
stable answers (:mod:`modelops.serving.shadow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelops import __version__
from modelops.serving.batcher import Batcher, Prediction
from modelops.serving.feedback import Feedback, input_groups, parse_feedback
from modelops.serving.http import HttpServer, Request, Response
from modelops.serving.metrics import NO_VERSION, ServerMetrics
from modelops.serving.protocol import (
    OUTPUT_PREDICT,
    OUTPUT_PROBA,
    Decoded,
    OutputSpec,
    ProtocolError,
    decode,
    decompress,
    encode_response,
    error_body,
    parse_json,
    raw_from_array,
    request_id,
    split_binary,
)
from modelops.serving.shadow import Shadows
from modelops.serving.sketches import SketchWriter
from modelops.serving.state import ModelManager, ServedVersion, ServingState
from modelops.storage import ArtifactStore, Location

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int = 1 << 20
    sketch_interval: float = 5.0
    bucket: str = "modelops"
    pod: str = "local"
    worker: int = 0
    workers: int = 1
    peers_dir: Path | None = None
    feedback_max_ids: int = 100_000
    feedback_ttl: float = 3600.0


def _json(doc: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(doc))


def _error(message: str, status: int) -> Response:
    return Response(status, error_body(message))


def _no_endpoint(method: str, path: str) -> Response:
    shown = path if len(path) <= 200 else f"{path[:200]}... ({len(path)} characters)"
    return _error(f"no such endpoint: {method[:20]} {shown}", 404)


BINARY = "application/octet-stream"


@dataclass(slots=True)
class _Pending:
    """An inference request waiting for its batch."""

    answer: asyncio.Future[Response]
    state: ServingState
    served: ServedVersion
    rid: str | None
    routed: bool
    decoded: Decoded
    doc: dict[str, Any]
    binary: bytes | memoryview | None
    started: float


class ModelServer:
    def __init__(self, config: ServerConfig, store: ArtifactStore | None) -> None:
        self.config = config
        self.metrics = ServerMetrics(config.worker, config.peers_dir, config.workers)
        self.store = store
        self._http: HttpServer | None = None
        self.writer = SketchWriter(store, config.bucket, config.pod, config.sketch_interval)
        self.manager = ModelManager(store, self.metrics, self.writer.executor, self._swapped)
        self.batcher = Batcher(self.metrics)
        self.feedback = Feedback(
            store,
            config.bucket,
            config.pod,
            config.sketch_interval,
            max_ids=config.feedback_max_ids,
            ttl=config.feedback_ttl,
            count=self.metrics.count_feedback,
            dropped=self.metrics.count_dropped,
            written=self.metrics.count_written,
        )
        self.metrics.ledger_sizes = lambda: (len(self.feedback.own), self.feedback.pending)
        self.shadows = Shadows(self.batcher, self.metrics, self.feedback)
        self.stopping = False
        self._ids = itertools.count(1)
        self._id_prefix = f"{config.pod}-{os.getpid():x}-"

    def http_server(self) -> HttpServer:
        """The HTTP server for this model server; ``start`` it inside the event loop."""
        self._http = HttpServer(self.dispatch, max_body=self.config.max_body_bytes)
        self._swapped(self.manager.state)
        return self._http

    def _swapped(self, state: ServingState) -> None:
        """A new serving state: the HTTP layer captures its sticky header from now on."""
        if self._http is not None:
            header = state.sticky_header
            self._http.sticky_header = header.encode("latin-1") if header else None

    # -- dispatch -------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response | Awaitable[Response]:
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                return self._model_route(request, method, parts[2], parts[3:])
            if len(parts) == 1:
                return self._get(method) or self._server_metadata()
            if len(parts) == 3 and parts[1] == "health" and parts[2] in ("live", "ready"):
                return self._get(method) or self._health(parts[2])
        elif parts == ["metrics"]:
            return self._get(method) or self._metrics()
        return _no_endpoint(method, request.path)

    async def _metrics(self) -> Response:
        own = self.metrics.snapshot()  # here, consistent; the text is built off the loop
        text = await asyncio.to_thread(self.metrics.render, own)
        return Response(200, text, CONTENT_TYPE_LATEST)

    def _model_route(
        self, request: Request, method: str, name: str, rest: list[str]
    ) -> Response | Awaitable[Response]:
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if rest == ["infer"]:
            if method != "POST":
                return _error("use POST for infer", 405)
            return self.infer(request, name, version)
        if rest == ["feedback"]:
            if method != "POST":
                return _error("use POST for feedback", 405)
            return self.receive_feedback(request, name, version)
        if rest in ([], ["ready"]):
            if (bad := self._get(method)) is not None:
                return bad
            state = self.manager.state
            if not state.knows(name):
                return self._unknown_model(state, name)
            return self._ready(state, version) if rest else self._model_metadata(state, version)
        return _no_endpoint(method, request.path)

    @staticmethod
    def _get(method: str) -> Response | None:
        return None if method in ("GET", "HEAD") else _error(f"{method} is not allowed here", 405)

    # -- inference --------------------------------------------------------------------------------

    def infer(
        self, request: Request, name: str, version: str | None
    ) -> Response | asyncio.Future[Response]:
        """``POST .../infer``: a bad request is answered at once; a valid one joins the next
        batch and its answer is a future the batch completes (:meth:`_predicted`), so a
        request costs no task of its own."""
        started = time.perf_counter()
        state = self.manager.state
        if not state.knows(name):
            self.metrics.stats("", NO_VERSION).rest.observe(time.perf_counter() - started, 404)
            return self._unknown_model(state, name)
        served: ServedVersion | None = None
        try:
            body = request.body
            if request.content_encoding is not None:
                body = decompress(body, request.content_encoding, self.config.max_body_bytes)
            binary = None
            if request.header_length is None:
                doc = parse_json(body)
            else:
                head, binary = split_binary(body, request.header_length)
                doc = parse_json(head)
            rid = request_id(doc)
            if version is not None:
                served = state.resolve(version)
            else:
                served = state.route(request.route_key or rid)
            model = served.model
            assert model is not None
            decoded = decode(doc, model.layout, classifier=model.classifier, binary=binary)
        except ProtocolError as exc:
            stats = served.stats if served is not None else self.metrics.stats(state.model_name, "")
            stats.rest.observe(time.perf_counter() - started, exc.status)
            return Response(exc.status, error_body(str(exc)))
        answer: asyncio.Future[Response] = self.batcher.loop().create_future()
        pending = _Pending(
            answer, state, served, rid, version is None, decoded, doc, binary, started
        )
        self.batcher.submit_then(
            served,
            decoded.rows,
            decoded.n,
            decoded.proba,
            functools.partial(self._predicted, pending),
        )
        return answer

    def _predicted(
        self, p: _Pending, prediction: Prediction | None, error: ProtocolError | None
    ) -> None:
        """The batch of an inference request is predicted: answer it."""
        if p.answer.done():
            return
        try:
            header_length: int | None = None
            if prediction is None:
                assert error is not None
                status, body = error.status, error_body(str(error))
            else:
                body, header_length = self._answer(
                    p.state, p.served, p.rid, prediction, p.decoded.n, p.decoded.outputs
                )
                status = 200
                self.answered(
                    p.state,
                    p.served,
                    p.rid,
                    p.routed,
                    p.decoded,
                    prediction,
                    p.doc,
                    p.binary,
                    "rest",
                )
            p.served.stats.rest.observe(time.perf_counter() - p.started, status)
        except Exception as exc:  # a bug: the HTTP layer logs it and answers 500
            p.answer.set_exception(exc)
            return
        if header_length is None:
            p.answer.set_result(Response(status, body))
        else:
            p.answer.set_result(
                Response(
                    status, body, BINARY, b"Inference-Header-Content-Length: %d\r\n" % header_length
                )
            )

    def answered(
        self,
        state: ServingState,
        served: ServedVersion,
        rid: str | None,
        routed: bool,
        decoded: Decoded,
        prediction: Prediction,
        doc: dict[str, Any],
        binary: bytes | memoryview | None,
        transport: str,
    ) -> None:
        """After a successful prediction over ``transport`` (``rest``, ``grpc``): remember it
        under its id, and hand a copy to the shadow versions when stable answered a routed
        request (the copies are counted under the same transport)."""
        model = served.model
        assert model is not None
        try:
            entry = None
            if rid is not None:
                classes = model.class_names if model.classifier else None
                groups = input_groups(decoded.rows, model.layout, served.entry.sensitive_features)
                entry = self.feedback.record(
                    rid, served.name, classes, prediction.values, groups=groups
                )
            shadows = state.shadows_of(served) if routed else ()
            if shadows:
                self.shadows.submit(
                    state.model_name,
                    shadows,
                    served,
                    decoded.rows,
                    decoded.n,
                    doc,
                    binary,
                    prediction.values,
                    rid,
                    entry,
                    transport,
                )
        except Exception:  # the client's answer is ready: bookkeeping must not cost it
            logger.exception("could not remember or shadow the request %r", rid)

    def _answer(
        self,
        state: ServingState,
        served: ServedVersion,
        rid: str | None,
        prediction: Prediction,
        n: int,
        wanted: tuple[OutputSpec, ...],
    ) -> tuple[bytes, int | None]:
        model = served.model
        assert model is not None
        outputs: list[dict[str, Any]] = []
        raw: list[bytes] = []
        for spec in wanted:
            out: dict[str, Any]
            if spec.name == OUTPUT_PREDICT:
                values: Any = prediction.values
                if model.classifier:
                    labels = model.labels
                    values = [labels[i] for i in values.tolist()]
                datatype = model.output_datatype
                out = {"name": OUTPUT_PREDICT, "datatype": datatype, "shape": [n]}
            else:
                assert prediction.proba is not None
                values = prediction.proba.ravel()
                datatype = "FP64"
                out = {
                    "name": OUTPUT_PROBA,
                    "datatype": datatype,
                    "shape": [n, len(model.labels)],
                    "parameters": {"classes": list(model.labels)},
                }
            if spec.binary:
                data = raw_from_array(datatype, values)
                out["parameters"] = {**out.get("parameters", {}), "binary_data_size": len(data)}
                raw.append(data)
            else:
                out["data"] = values
            outputs.append(out)
        doc = {
            "model_name": state.model_name,
            "model_version": served.name,
            "id": rid if rid is not None else f"{self._id_prefix}{next(self._ids)}",
            "outputs": outputs,
        }
        return encode_response(doc, raw)

    # -- ground truth -----------------------------------------------------------------------------

    async def receive_feedback(self, request: Request, name: str, version: str | None) -> Response:
        """``POST .../feedback``: 200 with the counts, 400 for a malformed body (nothing of it
        is joined), 404 for an unknown model or version."""
        state = self.manager.state
        if not state.knows(name) or state.table is None:
            return self._unknown_model(state, name)
        table = state.table
        try:
            if version is not None:
                found = state.aliases.get(version)
                if found is None:
                    raise ProtocolError(f"model {table.model!r} has no version {version!r}", 404)
                version = found.name
            body = request.body
            if request.content_encoding is not None:
                body = decompress(body, request.content_encoding, self.config.max_body_bytes)
            tasks = {v.entry.signature.task for v in state.versions.values()}
            items = parse_feedback(parse_json(body), tasks.pop() if len(tasks) == 1 else None)
        except ProtocolError as exc:
            return Response(exc.status, error_body(str(exc)))
        counts = await self.feedback.receive(
            table.model, table.namespace, table.deployment, items, version
        )
        return _json(counts.to_dict())

    # -- health and metadata ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self.stopping and self.manager.state.ready and self.metrics.peers_ready()

    def _health(self, which: str) -> Response:
        if which == "live":
            return _json({"live": True})
        if self.ready:
            return _json({"ready": True})
        return _json({"ready": False, "reason": self._not_ready_reason()}, 503)

    def _not_ready_reason(self) -> str:
        if self.stopping:
            return "shutting down"
        state = self.manager.state
        if state.table is None:
            return self.manager.table_error or "no routing table yet"
        waiting = [
            f"{v.name}: {v.status.state} ({v.status.reason})"
            for v in state.versions.values()
            if v.model is None
        ]
        return "; ".join(waiting) or "another worker is not ready"

    def _server_metadata(self) -> Response:
        return _json(
            {
                "name": "modelops",
                "version": __version__,
                "extensions": ["binary_tensor_data"],
            }
        )

    def _unknown_model(self, state: ServingState, name: str) -> Response:
        serving = f" (this server serves {state.model_name!r})" if state.table else ""
        return _error(f"unknown model {name!r}{serving}", 404)

    def _ready(self, state: ServingState, version: str | None) -> Response:
        if version is None:
            ready = state.ready
        else:
            found = state.aliases.get(version)
            if found is None:
                return _error(f"model {state.model_name!r} has no version {version!r}", 404)
            ready = found.model is not None
        body = {"name": state.model_name, "ready": ready}
        if version is not None:
            body["version"] = version
        return _json(body, 200 if ready else 503)

    def _model_metadata(self, state: ServingState, version: str | None) -> Response:
        table = state.table
        assert table is not None
        if version is not None:
            shown = state.aliases.get(version)
            if shown is None:
                return _error(f"model {table.model!r} has no version {version!r}", 404)
        else:
            shown = next(
                (v for v in state.versions.values() if v.entry.role == "stable"),
                next(iter(state.versions.values())),
            )
        entry = shown.entry
        signature = entry.signature
        classifier = signature.task == "classification"
        if shown.model is not None:
            label_type = shown.model.output_datatype
            n_classes = len(shown.model.labels)
        else:
            label_type = "BYTES" if classifier else "FP64"
            n_classes = len(signature.classes or [])
        outputs = [{"name": OUTPUT_PREDICT, "datatype": label_type, "shape": [-1]}]
        if classifier:
            outputs.append({"name": OUTPUT_PROBA, "datatype": "FP64", "shape": [-1, n_classes]})
        return _json(
            {
                "name": table.model,
                "versions": [shown.name] if version is not None else list(state.versions),
                "platform": "sklearn",
                "inputs": [
                    {"name": f.name, "datatype": f.datatype, "shape": [-1]}
                    for f in signature.inputs
                ],
                "outputs": outputs,
                "parameters": {
                    "deployment": table.deployment,
                    "namespace": table.namespace,
                    "ready": state.ready,
                    "routingError": self.manager.table_error,
                    "versions": [_status(v) for v in state.versions.values()],
                },
            }
        )

    # -- background work ------------------------------------------------------------------------

    async def flush_sketches(self, *, final: bool = False) -> int:
        """Write the sketch windows (only those at least a second old unless ``final``), then
        this worker's prediction log and quality objects (see :mod:`.feedback`); returns how
        many sketch windows were written."""

        def counted(ok: bool) -> None:
            self.metrics.sketch_flushes["ok" if ok else "error"] += 1

        written = await self.writer.flush(self.manager.windows(final=final), counted)
        table = self.manager.state.table
        if table is not None:
            await self.feedback.flush(table.namespace, table.deployment, final=final)
        return written

    async def sketch_loop(self) -> None:
        interval = self.config.sketch_interval
        while True:
            # Windows end on multiples of the interval, so pods' windows line up.
            await asyncio.sleep(interval - time.time() % interval)
            try:
                await self.flush_sketches()
            except Exception:
                logger.exception("sketch flush failed")

    def pod_report(self) -> tuple[Location, dict[str, Any]] | None:
        """Which versions this worker has loaded and verified: the operator reads these
        reports before it gives a canary its first share of traffic."""
        state = self.manager.state
        if state.table is None:
            return None
        config = self.config
        who = config.pod if config.workers == 1 else f"{config.pod}-w{config.worker}"
        key = f"{state.table.namespace}/serving/{state.table.deployment}/pods/{who}.json"
        versions = state.versions.values()
        report = {
            "pod": config.pod,
            "worker": config.worker,
            "time": time.time(),
            "versions": sorted(v.name for v in versions),
            "loaded": sorted(v.name for v in versions if v.model is not None),
            "failed": {v.name: v.status.reason for v in versions if v.status.state == "Failed"},
        }
        return Location(config.bucket, key), report

    async def report_loop(self, period: float = 2.0) -> None:
        while True:
            report = self.pod_report()
            if report is not None and self.store is not None:
                loc, doc = report
                try:
                    await asyncio.to_thread(self.store.put, loc, orjson.dumps(doc))
                except Exception as exc:
                    logger.warning("could not write the pod report %s: %s", loc.uri, exc)
            await asyncio.sleep(period)

    async def withdraw_report(self) -> None:
        """A pod going away must not hold a canary back with a report that lacks it."""
        report = self.pod_report()
        if report is not None and self.store is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.delete_prefix, report[0])

    async def snapshot_loop(self, period: float = 1.0) -> None:
        while True:
            try:
                self.metrics.write_snapshot()
            except OSError as exc:
                logger.warning("could not write the metrics snapshot: %s", exc)
            await asyncio.sleep(period)


def _status(v: ServedVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "number": v.entry.version_number,
        "role": v.entry.role,
        "weight": v.entry.weight,
        "state": v.status.state,
        "reason": v.status.reason,
        "message": v.status.message,
        "sha256": v.entry.artifact.sha256,
        "predictor": v.model.predictor.kind if v.model is not None else None,
        "sketch": v.window is not None,
    }
