"""The model server's own HTTP/2 transport for unary gRPC calls (``serving/grpc_transport.py``),
in process on a loopback port, around a small fake servicer and Triton's real messages.

Two clients: grpcio's (``grpc.aio``) for what a real gRPC client sees (statuses, metadata,
compression, large answers, 200 calls at once, cancellation, a graceful stop), and
python-hyper's ``h2`` state machine, driven by hand, for what gRPC clients never send
(CONTINUATION, padding, oversized blocks and frames, bad prefaces, malformed bodies, streams
past the limit, blocked flow-control windows). Then the pure helpers: ``percent_encode``,
HPACK integers and literals, ``_keeps_table``. Sources: RFC 9113 (HTTP/2), RFC 7541 (HPACK)
and gRPC's ``doc/PROTOCOL-HTTP2.md``. Every socket read has a timeout, so a server that hangs
fails the test instead of blocking it. End-to-end conformance with Triton's client is
``tests/integration/test_triton_grpc.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote

import grpc
import h2.events
import hpack
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hpack.hpack import decode_integer, encode_integer
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from modelops.serving.grpc_server import SERVICE
from modelops.serving.grpc_transport import (
    MAX_CONCURRENT_STREAMS,
    Call,
    GrpcServer,
    _hpack_int,
    _keeps_table,
    _literal,
    percent_encode,
    unary_methods,
)

TIMEOUT = 5.0
LIMIT = 8192
"""``max_message_bytes`` of the server under test."""
ABORT_MESSAGE = "bad ünïcode % message"
NAMES = ("ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelInfer")
OUTPUT_BYTES = "output_bytes"
"""ModelInfer parameter: how many bytes of ``raw_output_contents`` the fake answers with."""

# Frame types and error codes of RFC 9113 (sections 6 and 7), spelled out here on purpose:
# the test does not take the module's constants on trust.
FRAME_HEADERS, FRAME_GOAWAY, FRAME_WINDOW_UPDATE, FRAME_CONTINUATION = 0x1, 0x7, 0x8, 0x9
FLAG_PADDED = 0x8
PROTOCOL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 1, 6, 7, 11
GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_UNIMPLEMENTED = "0", "3", "12"


def pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike, so a reordered or lost frame shows."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# -- the fake servicer ----------------------------------------------------------------------------


class FakeServicer:
    """Five unary methods of ``inference.GRPCInferenceService``, each standing for one
    behaviour: answer, echo, wait, abort, fail."""

    def __init__(self) -> None:
        self.metadata: list[list[tuple[str, str]]] = []
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.crowded = asyncio.Event()
        """Set once MAX_CONCURRENT_STREAMS calls wait at the same time."""
        self.running = 0
        self.peak = 0

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Call) -> Any:
        self.metadata.append(list(context.invocation_metadata()))
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Call) -> Any:
        response = pb.ModelInferResponse(id=request.id, model_name=request.model_name)
        if OUTPUT_BYTES in request.parameters:
            response.raw_output_contents.append(
                pattern(request.parameters[OUTPUT_BYTES].int64_param)
            )
        return response

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Call) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.entered.set()
        if self.running >= MAX_CONCURRENT_STREAMS:
            self.crowded.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.running -= 1
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Call) -> NoReturn:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ABORT_MESSAGE)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Call) -> Any:
        raise RuntimeError("servicer bug")


@dataclass
class Running:
    server: GrpcServer
    port: int
    servicer: FakeServicer


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    servicer = FakeServicer()
    server = GrpcServer(unary_methods(servicer, SERVICE, NAMES, pb), max_message_bytes=LIMIT)
    port = await server.start("127.0.0.1", 0)
    yield Running(server, port, servicer)
    servicer.release.set()
    await server.stop(1.0)


@pytest.fixture
async def channel(running: Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as chan:
        yield chan


def rpc(channel: grpc.aio.Channel, name: str, response: str | None = None) -> Any:
    """The unary callable for ``name``; the response class defaults to ``<name>Response``."""
    return channel.unary_unary(
        f"/{SERVICE}/{name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=getattr(pb, response or f"{name}Response").FromString,
    )


def infer_request(request_id: str, output_bytes: int | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="iris", id=request_id)
    if output_bytes is not None:
        request.parameters[OUTPUT_BYTES].int64_param = output_bytes
    return request


# -- grpcio's client ------------------------------------------------------------------------------


async def test_a_call_is_answered(channel: grpc.aio.Channel) -> None:
    answer = await rpc(channel, "ServerLive")(pb.ServerLiveRequest(), timeout=TIMEOUT)
    assert answer.live is True


async def test_request_metadata_reaches_invocation_metadata(
    channel: grpc.aio.Channel, running: Running
) -> None:
    metadata = (("x-route", "canary"), ("x-tag", "a"), ("x-tag", "b"))
    await rpc(channel, "ServerLive")(pb.ServerLiveRequest(), metadata=metadata, timeout=TIMEOUT)
    seen = running.servicer.metadata[0]
    assert [pair for pair in seen if pair[0] in ("x-route", "x-tag")] == list(metadata)


async def test_the_answer_echoes_the_request(channel: grpc.aio.Channel) -> None:
    answer = await rpc(channel, "ModelInfer")(infer_request("req-42"), timeout=TIMEOUT)
    assert answer.id == "req-42"


async def test_abort_gives_its_code_and_exact_message(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "ModelReady")(pb.ModelReadyRequest(name="iris"), timeout=TIMEOUT)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ABORT_MESSAGE,
    )


async def test_a_servicer_exception_is_internal_and_logged(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="modelops.serving.grpc_transport"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await rpc(channel, "ModelMetadata")(pb.ModelMetadataRequest(name="iris"), timeout=TIMEOUT)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INTERNAL,
        "internal error",
    )
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 1 and "ModelMetadata" in logged[0].getMessage()


async def test_an_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "NoSuchMethod", "ServerLiveResponse")(
            pb.ServerLiveRequest(), timeout=TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_request_over_the_limit_is_resource_exhausted(channel: grpc.aio.Channel) -> None:
    request = infer_request("big")
    request.raw_input_contents.append(os.urandom(3 * LIMIT))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "ModelInfer")(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_a_compressed_request_is_answered(
    channel: grpc.aio.Channel, compression: grpc.Compression
) -> None:
    request_id = "abc" * (LIMIT // 4)  # compressible, under the limit uncompressed
    answer = await rpc(channel, "ModelInfer")(
        infer_request(request_id), compression=compression, timeout=TIMEOUT
    )
    assert answer.id == request_id


async def test_the_limit_applies_after_decompression(channel: grpc.aio.Channel) -> None:
    # A few hundred bytes of gzip that inflate past the limit (and prove the client compressed).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "ModelInfer")(
            infer_request("a" * 4 * LIMIT), compression=grpc.Compression.Gzip, timeout=TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "after gzip" in (caught.value.details() or "")


async def test_a_response_over_the_windows_and_frame_size_arrives_whole(
    channel: grpc.aio.Channel,
) -> None:
    size = 300_000  # > 65,535 (default windows) and > 16,384 (default frame size)
    answer = await rpc(channel, "ModelInfer")(infer_request("large", size), timeout=TIMEOUT)
    assert list(answer.raw_output_contents) == [pattern(size)]


async def test_calls_past_max_concurrent_streams_wait_then_all_succeed(
    channel: grpc.aio.Channel, running: Running
) -> None:
    servicer = running.servicer
    waiting = rpc(channel, "ServerReady")
    calls = [
        asyncio.ensure_future(waiting(pb.ServerReadyRequest(), timeout=3 * TIMEOUT))
        for _ in range(200)
    ]
    try:
        await asyncio.wait_for(servicer.crowded.wait(), 3 * TIMEOUT)
        await asyncio.sleep(0.2)  # time for any call past the limit to (wrongly) start
        assert servicer.peak == MAX_CONCURRENT_STREAMS
        servicer.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*calls), 3 * TIMEOUT)
    finally:
        for call in calls:
            call.cancel()
    assert [a.ready for a in answers] == [True] * 200


async def test_200_concurrent_quick_calls_on_one_channel_are_all_answered(
    channel: grpc.aio.Channel,
) -> None:
    infer = rpc(channel, "ModelInfer")
    ids = [f"call-{i}" for i in range(200)]
    answers = await asyncio.wait_for(
        asyncio.gather(*(infer(infer_request(i), timeout=3 * TIMEOUT) for i in ids)),
        3 * TIMEOUT,
    )
    assert [a.id for a in answers] == ids


async def test_a_client_timeout_cancels_the_servicer_coroutine(
    channel: grpc.aio.Channel, running: Running
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "ServerReady")(pb.ServerReadyRequest(), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(running.servicer.cancelled.wait(), TIMEOUT)


async def test_stop_lets_a_call_in_flight_finish_and_refuses_new_ones(
    channel: grpc.aio.Channel, running: Running
) -> None:
    servicer = running.servicer
    in_flight = asyncio.ensure_future(
        rpc(channel, "ServerReady")(pb.ServerReadyRequest(), timeout=3 * TIMEOUT)
    )
    await asyncio.wait_for(servicer.entered.wait(), TIMEOUT)
    stopping = asyncio.ensure_future(running.server.stop(3 * TIMEOUT))
    await asyncio.sleep(0)  # stop() runs to its wait for calls in flight: GOAWAY is sent
    assert running.server.closing

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "ServerLive")(pb.ServerLiveRequest(), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    assert not in_flight.done()
    servicer.release.set()
    assert (await asyncio.wait_for(in_flight, TIMEOUT)).ready is True
    await asyncio.wait_for(stopping, TIMEOUT)


async def test_stop_cancels_the_calls_still_running_after_the_grace(
    channel: grpc.aio.Channel, running: Running
) -> None:
    in_flight = asyncio.ensure_future(
        rpc(channel, "ServerReady")(pb.ServerReadyRequest(), timeout=3 * TIMEOUT)
    )
    await asyncio.wait_for(running.servicer.entered.wait(), TIMEOUT)
    await asyncio.wait_for(running.server.stop(0.2), TIMEOUT)
    await asyncio.wait_for(running.servicer.cancelled.wait(), TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(in_flight, TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# -- h2, by hand ----------------------------------------------------------------------------------

Frame = tuple[int, int, int, bytes]
"""(type, flags, stream id, payload) of one HTTP/2 frame."""


def split_frames(data: bytes) -> list[Frame]:
    """The whole frames in ``data`` (RFC 9113 section 4.1)."""
    frames, pos = [], 0
    while len(data) - pos >= 9:
        size = int.from_bytes(data[pos : pos + 3])
        kind, flags = data[pos + 3], data[pos + 4]
        stream = int.from_bytes(data[pos + 5 : pos + 9]) & 0x7FFFFFFF
        frames.append((kind, flags, stream, data[pos + 9 : pos + 9 + size]))
        pos += 9 + size
    return frames


def join_frames(frames: list[Frame]) -> bytes:
    return b"".join(len(p).to_bytes(3) + bytes([k, f]) + s.to_bytes(4) + p for k, f, s, p in frames)


def goaway_code(data: bytes) -> int | None:
    """The error code of the first GOAWAY frame in ``data``, if any."""
    for kind, _, _, payload in split_frames(data):
        if kind == FRAME_GOAWAY:
            return int(struct.unpack(">II", payload[:8])[1])
    return None


def message(body: bytes, compressed: int = 0) -> bytes:
    """A gRPC length-prefixed message (PROTOCOL-HTTP2.md)."""
    return bytes([compressed]) + len(body).to_bytes(4) + body


@dataclass
class Answer:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None

    @property
    def grpc_status(self) -> str | None:
        """From the trailers, or from the headers of a Trailers-Only answer."""
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))


def text_fields(headers: Iterable[tuple[str | bytes, str | bytes]] | None) -> dict[str, str]:
    """h2's header list as a dict of str (they are str already with ``header_encoding``)."""
    return {
        k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
        for k, v in headers or []
    }


class H2Client:
    """One client connection: h2's state machine over asyncio streams, flushed by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.events: list[h2.events.Event] = []
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> H2Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def until(
        self, done: Callable[[list[h2.events.Event]], bool], timeout: float = TIMEOUT
    ) -> list[h2.events.Event]:
        """Reads and feeds h2 until ``done(events)``; TimeoutError after ``timeout``,
        AssertionError when the server closes first."""
        async with asyncio.timeout(timeout):
            while not done(self.events):
                assert not self.eof, f"connection closed; events: {self.events}"
                data = await self.reader.read(65_536)
                if not data:
                    self.eof = True
                    continue
                self.events.extend(self.conn.receive_data(data))
                self.flush()  # h2's SETTINGS and PING acknowledgements
        return self.events

    async def wait_closed(self, timeout: float = TIMEOUT) -> None:
        """Reads (raw, past h2) until the server closes the connection; TimeoutError when it
        does not within ``timeout``."""
        async with asyncio.timeout(timeout):
            while not self.eof:
                with contextlib.suppress(ConnectionResetError):
                    if await self.reader.read(65_536):
                        continue
                self.eof = True

    def request(
        self,
        path: str,
        *,
        method: str = "POST",
        content_type: str = "application/grpc",
        extra: tuple[tuple[str, str], ...] = (),
        index: bool = True,
    ) -> int:
        """Opens a stream with the request's headers (not sent yet); returns its id. Without
        ``index``, only the ``extra`` headers may enter the HPACK dynamic table."""
        stream = self.conn.get_next_available_stream_id()
        fixed = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", content_type),
            ("te", "trailers"),
        ]
        kept = fixed if index else [hpack.NeverIndexedHeaderTuple(*pair) for pair in fixed]
        self.conn.send_headers(stream, [*kept, *extra])
        return stream

    def call(self, path: str, body: bytes, **kwargs: Any) -> int:
        """Sends a whole request: headers, then ``body`` with END_STREAM."""
        stream = self.request(path, **kwargs)
        self.conn.send_data(stream, body, end_stream=True)
        self.flush()
        return stream

    async def answer(self, stream: int) -> Answer:
        """The answer on ``stream``, once ended or reset."""

        def over(events: list[h2.events.Event]) -> bool:
            return any(
                isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
                and e.stream_id == stream
                for e in events
            )

        answer = Answer()
        for event in await self.until(over):
            if getattr(event, "stream_id", None) != stream:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                answer.headers = text_fields(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                answer.data += event.data or b""
            elif isinstance(event, h2.events.TrailersReceived):
                answer.trailers = text_fields(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                answer.reset = event.error_code
        return answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def h2client(running: Running) -> AsyncIterator[H2Client]:
    client = await H2Client.open(running.port)
    yield client
    await client.close()


LIVE = f"/{SERVICE}/ServerLive"
INFER = f"/{SERVICE}/ModelInfer"
READY = f"/{SERVICE}/ServerReady"
LIVE_MESSAGE = message(pb.ServerLiveRequest().SerializeToString())


async def test_a_header_block_split_into_continuation_frames_is_answered(
    h2client: H2Client, running: Running
) -> None:
    value = os.urandom(20_000).hex()  # 40 KB, under the 64 KiB header list limit
    stream = h2client.request(LIVE, extra=(("x-big", value),))
    h2client.conn.send_data(stream, LIVE_MESSAGE, end_stream=True)
    sent = h2client.conn.data_to_send()
    assert FRAME_CONTINUATION in {kind for kind, *_ in split_frames(sent)}  # h2 did split
    h2client.writer.write(sent)
    answer = await h2client.answer(stream)
    assert answer.grpc_status == GRPC_OK
    assert dict(running.servicer.metadata[0])["x-big"] == value


async def test_a_header_block_is_decoded_afresh_after_the_dynamic_table_changes(
    h2client: H2Client, running: Running
) -> None:
    # The transport caches decoded blocks. With only x-route indexed, the 2nd and 4th blocks
    # are the same bytes ("dynamic entry 62"), meaning "a" then "b": the 3rd block inserted b.
    routes = ["a", "a", "b", "b"]
    sent = []
    for route in routes:
        stream = h2client.request(LIVE, extra=(("x-route", route),), index=False)
        h2client.conn.send_data(stream, LIVE_MESSAGE, end_stream=True)
        data = h2client.conn.data_to_send()
        sent.append(b"".join(p for kind, _, _, p in split_frames(data) if kind == FRAME_HEADERS))
        h2client.writer.write(data)
        assert (await h2client.answer(stream)).grpc_status == GRPC_OK
    assert sent[1] == sent[3]  # the precondition: same bytes, different meaning
    assert [dict(fields)["x-route"] for fields in running.servicer.metadata] == routes


async def test_padded_headers_and_data_frames_are_answered(h2client: H2Client) -> None:
    stream = h2client.request(INFER)
    frames = split_frames(h2client.conn.data_to_send())
    # h2 cannot pad HEADERS: the frame it built is padded here (RFC 9113 section 6.2).
    padded = [
        (kind, flags | FLAG_PADDED, sid, bytes([200]) + payload + bytes(200))
        if kind == FRAME_HEADERS
        else (kind, flags, sid, payload)
        for kind, flags, sid, payload in frames
    ]
    h2client.writer.write(join_frames(padded))
    body = message(infer_request("padded").SerializeToString())
    h2client.conn.send_data(stream, body, end_stream=True, pad_length=100)
    data = h2client.conn.data_to_send()
    assert [flags & FLAG_PADDED for kind, flags, *_ in split_frames(data)] == [FLAG_PADDED]
    h2client.writer.write(data)
    answer = await h2client.answer(stream)
    assert answer.grpc_status == GRPC_OK
    assert pb.ModelInferResponse.FromString(answer.data[5:]).id == "padded"


async def test_a_large_response_is_split_into_frames_the_client_accepts(
    h2client: H2Client,
) -> None:
    size = 100_000
    # Windows wide open, so only the client's max frame size (16,384) bounds a DATA frame.
    h2client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    h2client.conn.increment_flow_control_window(1 << 20)
    h2client.flush()
    stream = h2client.call(INFER, message(infer_request("split", size).SerializeToString()))
    answer = await h2client.answer(stream)  # h2 raises FrameTooLargeError on a bigger frame
    assert answer.grpc_status == GRPC_OK
    assert output(answer) == [pattern(size)]


async def test_a_header_block_over_64_kib_is_goaway_enhance_your_calm(
    h2client: H2Client,
) -> None:
    stream = h2client.request(LIVE, extra=(("x-huge", os.urandom(55_500).hex()),))
    h2client.conn.send_data(stream, LIVE_MESSAGE, end_stream=True)
    sent = h2client.conn.data_to_send()
    block = sum(
        len(p)
        for kind, _, _, p in split_frames(sent)
        if kind in (FRAME_HEADERS, FRAME_CONTINUATION)
    )
    assert 65_536 < block < 65_536 + 16_384  # the last CONTINUATION crosses the limit
    h2client.writer.write(sent)
    events = await h2client.until(
        lambda ev: any(isinstance(e, h2.events.ConnectionTerminated) for e in ev)
    )
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated[0].error_code == ENHANCE_YOUR_CALM
    await h2client.wait_closed()


async def test_a_method_other_than_post_is_405(h2client: H2Client) -> None:
    stream = h2client.call(LIVE, LIVE_MESSAGE, method="PUT")
    answer = await h2client.answer(stream)
    assert answer.headers[":status"] == "405"


async def test_a_content_type_other_than_grpc_is_415(h2client: H2Client) -> None:
    stream = h2client.call(LIVE, LIVE_MESSAGE, content_type="application/json")
    answer = await h2client.answer(stream)
    assert answer.headers[":status"] == "415"


async def test_a_stream_past_max_concurrent_streams_is_refused(
    h2client: H2Client, running: Running
) -> None:
    # All opened before the server's SETTINGS are read, so h2 does not hold any back.
    ready = message(pb.ServerReadyRequest().SerializeToString())
    streams = [h2client.call(READY, ready) for _ in range(MAX_CONCURRENT_STREAMS + 1)]
    refused = await h2client.answer(streams[-1])
    assert refused.reset == REFUSED_STREAM
    await asyncio.wait_for(running.servicer.crowded.wait(), TIMEOUT)
    running.servicer.release.set()
    answers = [await h2client.answer(stream) for stream in streams[:-1]]
    assert [a.grpc_status for a in answers] == [GRPC_OK] * MAX_CONCURRENT_STREAMS


async def test_a_ping_is_acknowledged_with_its_payload(h2client: H2Client) -> None:
    h2client.conn.ping(b"\x01pingme\xff")
    h2client.flush()
    events = await h2client.until(
        lambda ev: any(isinstance(e, h2.events.PingAckReceived) for e in ev)
    )
    acks = [e for e in events if isinstance(e, h2.events.PingAckReceived)]
    assert acks[0].ping_data == b"\x01pingme\xff"


async def test_the_connection_window_is_given_back_only_for_calls_dispatched() -> None:
    # Unfinished requests must not get the window back, or a client could make a connection
    # hold any amount of partial bodies.
    window = 65_535  # the protocol's initial window: the least there can be
    server = GrpcServer(
        unary_methods(FakeServicer(), SERVICE, NAMES, pb),
        max_message_bytes=LIMIT,
        connection_window=1,
    )
    port = await server.start("127.0.0.1", 0)
    client = await H2Client.open(port)
    try:
        await client.until(lambda ev: client.conn.outbound_flow_control_window == window)
        chunk = 6000  # under LIMIT; six of them pass half the window, where an update is due
        streams = []
        for _ in range(6):
            stream = client.request(INFER)
            client.conn.send_data(stream, message(bytes(chunk - 5)), end_stream=False)
            streams.append(stream)
        client.conn.ping(b"12345678")  # answered after the DATA before it is processed
        client.flush()
        await client.until(lambda ev: any(isinstance(e, h2.events.PingAckReceived) for e in ev))
        assert client.conn.outbound_flow_control_window == window - 6 * chunk
        for stream in streams:
            client.conn.send_data(stream, b"", end_stream=True)
        client.flush()
        await client.until(lambda ev: client.conn.outbound_flow_control_window == window)
    finally:
        await client.close()
        await server.stop(1.0)


async def test_two_messages_in_a_unary_request_are_invalid_argument(h2client: H2Client) -> None:
    stream = h2client.call(LIVE, LIVE_MESSAGE + LIVE_MESSAGE)
    answer = await h2client.answer(stream)
    assert answer.grpc_status == GRPC_INVALID_ARGUMENT


async def test_a_message_shorter_than_its_prefix_is_invalid_argument(h2client: H2Client) -> None:
    body = message(infer_request("cut").SerializeToString())
    stream = h2client.call(INFER, body[:-3])
    answer = await h2client.answer(stream)
    assert answer.grpc_status == GRPC_INVALID_ARGUMENT


async def test_an_unsupported_grpc_encoding_is_unimplemented(h2client: H2Client) -> None:
    body = message(infer_request("snappy").SerializeToString(), compressed=1)
    stream = h2client.call(INFER, body, extra=(("grpc-encoding", "snappy"),))
    answer = await h2client.answer(stream)
    assert answer.grpc_status == GRPC_UNIMPLEMENTED


async def test_a_bad_connection_preface_is_goaway_protocol_error(running: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        received = b""
        async with asyncio.timeout(TIMEOUT):
            while chunk := await reader.read(65_536):  # to EOF: the server closes
                received += chunk
        assert goaway_code(received) == PROTOCOL_ERROR
    finally:
        writer.close()


async def test_a_frame_over_16384_bytes_is_goaway_frame_size_error(h2client: H2Client) -> None:
    await h2client.until(lambda ev: any(isinstance(e, h2.events.SettingsAcknowledged) for e in ev))
    # Only the frame header: its length alone must end the connection (RFC 9113 section 4.2).
    h2client.writer.write((16_385).to_bytes(3) + bytes([0xFA, 0]) + (0).to_bytes(4))
    events = await h2client.until(
        lambda ev: any(isinstance(e, h2.events.ConnectionTerminated) for e in ev)
    )
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated[0].error_code == FRAME_SIZE_ERROR
    await h2client.wait_closed()


def received(events: list[h2.events.Event], stream: int) -> int:
    """Flow-controlled DATA bytes (padding included) received on ``stream``."""
    return sum(
        e.flow_controlled_length or 0
        for e in events
        if isinstance(e, h2.events.DataReceived) and e.stream_id == stream
    )


def ended(events: list[h2.events.Event], stream: int) -> bool:
    return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in events)


def more_than(events: list[h2.events.Event], stream: int, seen: int) -> bool:
    """More than ``seen`` bytes received on ``stream``, or its end."""
    return received(events, stream) > seen or ended(events, stream)


async def assert_blocked_at(client: H2Client, stream: int, expected: int) -> None:
    """``expected`` bytes arrive on ``stream``, then nothing more for 0.3 s."""
    await client.until(lambda ev: received(ev, stream) >= expected)
    with pytest.raises(TimeoutError):
        await client.until(functools.partial(more_than, stream=stream, seen=expected), timeout=0.3)
    assert received(client.events, stream) == expected


async def acknowledge_to_the_end(client: H2Client, stream: int) -> list[Frame]:
    """Acknowledges DATA on ``stream`` as it arrives until the answer ends; returns the frames
    the acknowledgements sent."""
    sent, acknowledged = [], 0
    while not ended(client.events, stream):
        if (total := received(client.events, stream)) > acknowledged:
            client.conn.acknowledge_received_data(total - acknowledged, stream)
            sent.append(data := client.conn.data_to_send())
            client.writer.write(data)
            acknowledged = total
        await client.until(functools.partial(more_than, stream=stream, seen=acknowledged))
    return split_frames(b"".join(sent))


def output(answer: Answer) -> list[bytes]:
    return list(pb.ModelInferResponse.FromString(answer.data[5:]).raw_output_contents)


async def test_a_response_blocked_by_the_stream_window_completes_after_window_updates(
    h2client: H2Client,
) -> None:
    window, size = 1000, 5000
    h2client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
    h2client.flush()
    stream = h2client.call(INFER, message(infer_request("flow", size).SerializeToString()))
    await assert_blocked_at(h2client, stream, window)
    await acknowledge_to_the_end(h2client, stream)
    answer = await h2client.answer(stream)
    assert answer.grpc_status == GRPC_OK
    assert output(answer) == [pattern(size)]


async def test_a_response_blocked_by_the_connection_window_completes_after_its_updates(
    h2client: H2Client,
) -> None:
    size = 100_000
    # Stream windows wide open: only the connection's default window (65,535) holds it back.
    h2client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    h2client.flush()
    stream = h2client.call(INFER, message(infer_request("conn", size).SerializeToString()))
    await assert_blocked_at(h2client, stream, 65_535)
    updates = [
        f for f in await acknowledge_to_the_end(h2client, stream) if f[0] == FRAME_WINDOW_UPDATE
    ]
    assert updates and {sid for _, _, sid, _ in updates} == {0}  # connection-level only
    answer = await h2client.answer(stream)
    assert answer.grpc_status == GRPC_OK
    assert output(answer) == [pattern(size)]


# -- the pure functions ---------------------------------------------------------------------------

GRPC_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)
"""What gRPC's grpc-message leaves as is: printable ASCII except ``%``."""


@pytest.mark.parametrize(
    "text",
    ["", "plain text", "100% sure", ABORT_MESSAGE, "tab\tnew\nline", "del\x7f", "🚀 €", "%%%"],
)
def test_percent_encode_follows_grpc_rule(text: str) -> None:
    assert percent_encode(text) == quote(text, safe=GRPC_SAFE).encode("ascii")


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_percent_encode_matches_urllib_on_any_text(text: str) -> None:
    assert percent_encode(text) == quote(text, safe=GRPC_SAFE).encode("ascii")


@pytest.mark.parametrize("prefix", [4, 5, 6, 7])
@pytest.mark.parametrize("value", [0, 1, 14, 15, 16, 30, 127, 128, 200, 16_383, 16_384, 2**21])
def test_hpack_int_is_rfc7541_integer_encoding(value: int, prefix: int) -> None:
    encoded = _hpack_int(value, prefix, 0)
    assert encoded == bytes(encode_integer(value, prefix))
    assert decode_integer(encoded, prefix) == (value, len(encoded))


@pytest.mark.parametrize("size", [0, 5, 126, 127, 128, 300, 16_383, 16_384, 20_000])
def test_literal_round_trips_through_hpack_decoder(size: int) -> None:
    name, value = b"x-" + b"n" * size, pattern(size).hex().encode()[:size]
    block = _literal(name, value) + _literal(31, value)  # 31: the static content-type
    assert hpack.Decoder().decode(block, raw=True) == [(name, value), (b"content-type", value)]


def test_literal_is_never_indexed_and_leaves_the_table_empty() -> None:
    decoder = hpack.Decoder()
    decoder.decode(_literal(b"x-a", b"1"), raw=True)
    assert len(decoder.header_table.dynamic_entries) == 0


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(hpack.Encoder().encode([(":method", "POST"), (":path", "/")]), id="indexed"),
        pytest.param(_literal(b"x-a", b"1") + _literal(31, b"v"), id="without-indexing"),
        pytest.param(
            hpack.Encoder().encode(
                [hpack.NeverIndexedHeaderTuple("x-a", "secret" * 30)], huffman=True
            ),
            id="never-indexed-huffman",
        ),
        pytest.param(
            hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(":path", "/x")]),
            id="never-indexed-static-name",
        ),
        pytest.param(b"", id="empty"),
    ],
)
def test_keeps_table_for_blocks_that_do_not_change_the_table(block: bytes) -> None:
    assert _keeps_table(block) is True


def _after_size_update() -> bytes:
    encoder = hpack.Encoder()
    encoder.header_table_size = 1024
    return encoder.encode([(":method", "POST")])


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            hpack.Encoder().encode([hpack.HeaderTuple("x-a", "1")]), id="incremental-indexing"
        ),
        pytest.param(
            b"\x82" + hpack.Encoder().encode([("x-b", "2")]), id="indexed-then-incremental"
        ),
        pytest.param(_after_size_update(), id="table-size-update"),
        # Size update to 0, then ":authority: \x00": misread as one literal, it would fit.
        pytest.param(b"\x20" + _literal(1, b"\x00"), id="size-update-then-literal"),
        pytest.param(_literal(b"x-a", b"value")[:-1], id="truncated-value"),
        pytest.param(_literal(b"x-a", b"v" * 300)[:6], id="truncated-integer"),
        pytest.param(b"\x00", id="truncated-name"),
    ],
)
def test_keeps_table_false_for_blocks_that_change_it_or_are_cut(block: bytes) -> None:
    assert _keeps_table(block) is False


def test_percent_encode_never_fails_on_text_that_is_not_unicode() -> None:
    # A lone surrogate cannot be UTF-8: escaped, so the call is still answered.
    assert percent_encode("model \ud800") == b"model \\ud800"
