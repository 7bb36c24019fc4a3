"""gRPC over HTTP/2 cleartext (h2c with prior knowledge), unary calls: the transport of
:class:`~modelops.serving.grpc_server.InferenceServicer`.

Written for this server because grpcio's ``grpc.aio`` server spent some 190 µs of CPU per
no-op call on this project's machine, five times the whole REST request; ``make bench-serve``
measures this layer beside ``grpc.aio`` with the same servicer.

Sources: RFC 9113 (HTTP/2: framing, streams, flow control, errors), RFC 7541 (HPACK; header
blocks are decoded by the ``hpack`` package, and this server encodes only literals that never
enter the dynamic table), and gRPC's "gRPC over HTTP2" (``doc/PROTOCOL-HTTP2.md`` in
grpc/grpc: the 5-byte length-prefixed message, ``grpc-status`` / ``grpc-message`` trailers,
Trailers-Only answers, percent-encoded messages, 415 for a content-type that is not gRPC).

What it does: one request message and one response message per call (the service has only
unary methods); ``identity``, ``gzip`` and ``deflate`` request compression (answers are never
compressed); flow control both ways; PING, SETTINGS, WINDOW_UPDATE, RST_STREAM (cancels the
call), GOAWAY; at most :data:`MAX_CONCURRENT_STREAMS` calls at once per connection (more are
refused with REFUSED_STREAM: the call never started, so it is safe to retry; clients that
read the SETTINGS queue them instead); a graceful stop (GOAWAY, calls in flight
answered). Not done: TLS, server push (never used by gRPC), ``grpc-timeout`` deadlines (the
calls are short), idle-connection timeouts, answers' compression.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
import hpack
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from modelops.serving.listener import Listener

logger = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types, flags, error codes and settings of RFC 9113 (sections 6, 7 and 6.5.2).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 9, 11
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 3, 4, 5
SETTINGS_MAX_HEADER_LIST_SIZE = 6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MAX_FRAME_SIZE = 16_384
"""The largest frame this server accepts (the protocol's default; not raised)."""
MAX_CONCURRENT_STREAMS = 128
MAX_HEADER_BLOCK = 65_536
"""Compressed bytes of one header block; more closes the connection (ENHANCE_YOUR_CALM)."""
ONE_MESSAGE = "a unary call takes exactly one request message"
MAX_CACHED_HEADS = 64
CONNECTION_WINDOW = 16 * 1024 * 1024
"""What this server lets a client send on a connection ahead of the calls it has started: DATA
of calls still being received is given back only once the call is dispatched, so this bounds
the memory a connection's unfinished requests hold."""


class GrpcAbort(Exception):
    """Ends a call with a gRPC status: ``code`` (a :class:`grpc.StatusCode`) and the message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Call:
    """The context a method gets: the call's metadata, and ``abort``, as grpc.aio's
    ``ServicerContext`` offers them; and :meth:`finish`, for a method that answers later
    without a coroutine."""

    __slots__ = ("finish", "metadata")

    def __init__(
        self, metadata: list[tuple[str, str]], finish: Callable[[Any, GrpcAbort | None], None]
    ) -> None:
        self.metadata = metadata
        self.finish = finish
        """Answers the call: ``(response, None)`` or ``(None, abort)``; on the event loop, once."""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        """The request's headers other than pseudo-headers, as (lower-case name, value)."""
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        """Ends the call with ``code``; raises :class:`GrpcAbort`."""
        raise GrpcAbort(code, details)


Method = tuple[Callable[[Any, Call], Awaitable[Any] | None], Callable[[bytes], Any]]
"""A unary method: its handler and its request message's parser. The handler returns an
awaitable of the response (run as a task; :class:`GrpcAbort` ends the call with its status), or
None after arranging for ``call.finish`` to be called."""


def unary_methods(
    servicer: Any, service: str, names: Sequence[str], module: Any
) -> dict[str, Method]:
    """``{"/<service>/<name>": (servicer.<name>, <name>Request.FromString)}`` for the named
    methods, the request classes taken from the generated ``module`` (``*_pb2``)."""
    return {
        f"/{service}/{name}": (
            getattr(servicer, name),
            getattr(module, f"{name}Request").FromString,
        )
        for name in names
    }


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return struct.pack(">BHBBI", size >> 16, size & 0xFFFF, kind, flags, stream) + payload


def _hpack_int(value: int, prefix: int, first: int) -> bytes:
    """RFC 7541 section 5.1: ``value`` on a ``prefix``-bit prefix, ``first`` holding the
    pattern bits above it."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes | int, value: bytes) -> bytes:
    """A header field as a literal never added to the dynamic table (RFC 7541 section 6.2.2),
    its name a static-table index or a literal; no Huffman coding."""
    if isinstance(name, int):
        head = _hpack_int(name, 4, 0x00)
    else:
        head = b"\x00" + _hpack_int(len(name), 7, 0x00) + name
    return head + _hpack_int(len(value), 7, 0x00) + value


_STATUS_200 = b"\x88"  # static table entry 8: ":status: 200"
_CONTENT_TYPE = _literal(31, b"application/grpc")  # 31: the static table's content-type
RESPONSE_HEADERS = _STATUS_200 + _CONTENT_TYPE
OK_TRAILERS = _literal(b"grpc-status", b"0")


def percent_encode(message: str) -> bytes:
    """``grpc-message``: UTF-8, with bytes outside 0x20-0x7E and ``%`` percent-encoded (text
    that is not valid Unicode, a lone surrogate, as a backslash escape: never an error, so
    that a call is always answered)."""
    return b"".join(
        bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in message.encode(errors="backslashreplace")
    )


def status_block(code: grpc.StatusCode, message: str, *, headers: bool) -> bytes:
    """The trailers of a call ended with ``code``; with ``headers``, a Trailers-Only answer
    (``:status`` and content-type first)."""
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", percent_encode(message[:2048]))
    return (RESPONSE_HEADERS + block) if headers else block


class _Head:
    """A decoded request header block, and what the server reads of it."""

    __slots__ = ("encoding", "metadata", "path", "problem")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        found = dict(fields)
        self.path = found.get(":path", "")
        self.encoding = found.get("grpc-encoding", "identity")
        self.metadata = [(k, v) for k, v in fields if not k.startswith(":")]
        """The call's metadata (a list shared by every call with this block: not modified)."""
        self.problem = _check_headers(found)


def _skip_int(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 section 5.1: the integer at ``block[i]`` on a ``prefix``-bit prefix, and the
    index after it; IndexError when cut short."""
    limit = (1 << prefix) - 1
    value = block[i] & limit
    i += 1
    if value == limit:
        shift = 0
        while True:
            byte = block[i]
            i += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    return value, i


def _keeps_table(block: bytes) -> bool:
    """Whether decoding an HPACK block leaves the dynamic table as it was: it holds only
    indexed fields and literals without or never indexed (RFC 7541 sections 6.1, 6.2.2,
    6.2.3), no literal with incremental indexing and no table size update."""
    i, end = 0, len(block)
    try:
        while i < end:
            first = block[i]
            if first & 0x80:  # indexed
                _, i = _skip_int(block, i, 7)
                continue
            if first & 0xE0:  # 01xxxxxx incremental indexing, 001xxxxx size update
                return False
            name, i = _skip_int(block, i, 4)
            for _ in range(1 if name else 2):  # the value, after a literal name if any
                size, i = _skip_int(block, i, 7)
                i += size
    except IndexError:
        return False
    return i == end


class _Stream:
    __slots__ = (
        "answered",
        "body",
        "head",
        "held",
        "id",
        "pending",
        "receiving",
        "send_window",
        "task",
    )  # fmt: skip

    def __init__(self, stream_id: int, send_window: int, head: _Head) -> None:
        self.id = stream_id
        self.head = head
        self.body = bytearray()
        self.send_window = send_window
        self.pending: memoryview | None = None
        """Response DATA not yet sent for want of flow-control window."""
        self.task: asyncio.Task[None] | None = None
        self.receiving = True
        """The client has not ended its side yet."""
        self.answered = False
        """The answer's END_STREAM was sent or queued."""
        self.held = 0
        """DATA bytes received and not yet given back to the connection's window."""


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class GrpcServer(Listener["_Connection"]):
    """Listens for gRPC calls to ``methods`` (path -> :data:`Method`); ``max_message_bytes``
    bounds one request message (after decompression): more is RESOURCE_EXHAUSTED."""

    def __init__(
        self,
        methods: dict[str, Method],
        *,
        max_message_bytes: int,
        connection_window: int = CONNECTION_WINDOW,
    ) -> None:
        super().__init__()
        self.methods = methods
        self.max_message_bytes = max_message_bytes
        # At least one whole message, or a call of the largest size could never be sent,
        # and never below the protocol's initial window, which a WINDOW_UPDATE cannot lower.
        self.connection_window = min(
            MAX_WINDOW, max(connection_window, max_message_bytes + 1024, DEFAULT_WINDOW)
        )
        """Bytes (see :data:`CONNECTION_WINDOW`)."""

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listens on ``host:port`` (0: any free port); returns the port. Raises OSError."""
        _, bound = await self.listen(lambda: _Connection(self), host, port, reuse_port=reuse_port)
        return bound

    async def stop(self, grace: float) -> None:
        """Stops accepting, sends GOAWAY on every connection, lets calls in flight finish (up
        to ``grace`` seconds), then closes what is left."""
        await self.drain(grace, _go_away)


def _go_away(conn: _Connection) -> None:
    conn.go_away(NO_ERROR)


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.settings_seen = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_BLOCK
        self.heads: dict[bytes, _Head] = {}
        """Header blocks that leave the dynamic table unchanged, decoded (see ``_decode``)."""
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.continuing: tuple[int, int, bytearray] | None = None
        """A header block being continued: (stream, flags of its HEADERS frame, bytes so far)."""
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = MAX_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW
        self.received = 0
        """DATA bytes consumed (dispatched or dropped) since the last connection WINDOW_UPDATE
        this server sent."""
        self.blocked: dict[int, _Stream] = {}
        """Streams waiting for window to send their answer, in the order they blocked."""
        self.going_away = False
        self.closed = False
        self.out: list[bytes] | None = None
        """While a read is processed: frames to write once it is done (one write per read)."""

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        settings = struct.pack(
            ">HIHIHI",
            SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS,
            SETTINGS_INITIAL_WINDOW_SIZE, min(MAX_WINDOW, self.server.max_message_bytes + 1024),
            SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK,
        )  # fmt: skip
        raised = self.server.connection_window - DEFAULT_WINDOW
        self._write(
            _frame(SETTINGS, 0, 0, settings)
            + (_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", raised)) if raised else b"")
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.blocked.clear()
        self.server.forget(self)

    def pause_writing(self) -> None:
        # A client that does not read its answers stops being read from.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        self.out = []
        try:
            if not self.preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if buf[: len(PREFACE)] != PREFACE:
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buf[: len(PREFACE)]
                self.preface = True
            pos, end = 0, len(buf)
            while end - pos >= 9:
                size = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if size > MAX_FRAME_SIZE:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {size} bytes")
                if end - pos - 9 < size:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                stream_id = int.from_bytes(buf[pos + 5 : pos + 9]) & 0x7FFFFFFF
                payload = bytes(buf[pos + 9 : pos + 9 + size])
                pos += 9 + size
                self._frame_received(kind, flags, stream_id, payload)
                if self.closed:
                    return
            del buf[:pos]
            if self.received >= self.server.connection_window // 2:
                self.out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
                self.received = 0
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc))
        finally:
            out, self.out = self.out, None
            if out and not self.closed:
                self._write(b"".join(out))

    # -- frames in -------------------------------------------------------------------------------

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        if not self.settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise _ConnectionError(PROTOCOL_ERROR, "the preface must be followed by SETTINGS")
            self.settings_seen = True
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise _ConnectionError(
                    FRAME_SIZE_ERROR if stream_id == 0 else PROTOCOL_ERROR, "bad PING"
                )
            if not flags & ACK:
                self._send(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == RST_STREAM:
            if len(payload) != 4 or stream_id == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "bad RST_STREAM")
            self._reset(stream_id)
        elif kind == GOAWAY:
            self.going_away = True
            self._close_if_done()
        elif kind == PRIORITY:
            if len(payload) != 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "bad PRIORITY")
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client cannot push")
        # Frames of unknown types are ignored (RFC 9113 section 4.1).

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id > self.last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        size = len(payload)  # flow control counts padding too
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None or not stream.receiving:
            # Closed, reset, or answered early: the client may still be sending.
            self.received += size
            return
        if stream.answered:
            self.received += size
        else:
            stream.held += size
            stream.body += payload
            body = stream.body
            # The length prefix says early whether the message is over the limit.
            if len(body) >= 5 and int.from_bytes(body[1:5]) > self.server.max_message_bytes:
                self._answer_early(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large())
            elif len(body) > self.server.max_message_bytes + 5:
                self._answer_early(stream, grpc.StatusCode.INVALID_ARGUMENT, ONE_MESSAGE)
        if flags & END_STREAM:
            stream.receiving = False
            if stream.answered:
                self._forget_if_done(stream)
            else:
                self._dispatch(stream)

    def _release(self, stream: _Stream) -> None:
        """The stream's DATA is consumed: its bytes count towards the next connection
        WINDOW_UPDATE."""
        self.received += stream.held
        stream.held = 0

    def _too_large(self) -> str:
        return f"request message larger than {self.server.max_message_bytes} bytes"

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "bad HEADERS priority")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self.continuing = (stream_id, flags, bytearray(payload))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is None or self.continuing[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self.continuing[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            first_flags = self.continuing[1]
            self.continuing = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Always decoded, even for a stream refused: the HPACK state is the connection's.
        head = self.heads.get(block)
        if head is None:
            head = self._decode(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: must end its side
            if not flags & END_STREAM:
                raise _ConnectionError(PROTOCOL_ERROR, "trailers without END_STREAM")
            if stream.receiving:
                stream.receiving = False
                if stream.answered:
                    self._forget_if_done(stream)
                else:
                    self._dispatch(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS opening stream {stream_id}")
        self.last_stream = stream_id
        if self.going_away or self.server.closing or len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self._send(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, self.peer_initial_window, head)
        self.streams[stream_id] = stream
        if head.problem is not None:
            status, message = head.problem
            self._answer_http(stream, status, message)
        elif flags & END_STREAM:
            stream.receiving = False
            self._dispatch(stream)

    def _decode(self, block: bytes) -> _Head:
        try:
            fields = self.decoder.decode(block)
        except hpack.OversizedHeaderListError:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header list too large") from None
        except hpack.HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"header block: {exc}") from None
        head = _Head([(str(k), str(v)) for k, v in fields])
        # Clients index their headers, so a call's block is the same bytes as the last call's:
        # decoded once. The same bytes decode the same way while the dynamic table is
        # unchanged, which only a block that changes it ends.
        if _keeps_table(block) and len(self.heads) < MAX_CACHED_HEADS:
            self.heads[block] = head
        else:
            self.heads.clear()
        return head

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not MAX_FRAME_SIZE <= value <= 16_777_215:
                    raise _ConnectionError(PROTOCOL_ERROR, f"max frame size {value}")
                self.peer_max_frame = value
            # The header table size needs nothing: answers never use the dynamic table.
        self._send(_frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = int.from_bytes(payload) & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0 or self.send_window + increment > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "bad connection window increment")
            self.send_window += increment
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if increment == 0 or stream.send_window + increment > MAX_WINDOW:
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            return
        stream.send_window += increment
        if stream.pending is not None:
            self._flush(stream)

    def _reset(self, stream_id: int, code: int | None = None) -> None:
        stream = self.streams.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        if stream is not None:
            self._release(stream)
            if stream.task is not None:
                stream.task.cancel()
        if code is not None:
            self._send(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
        self._close_if_done()

    # -- calls -----------------------------------------------------------------------------------

    def _dispatch(self, stream: _Stream) -> None:
        self._release(stream)
        head = stream.head
        method = self.server.methods.get(head.path)
        if method is None:
            self._answer_status(
                stream, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {head.path!r}"
            )
            return
        try:
            message = _message(stream.body, head.encoding, self.server.max_message_bytes)
            request = method[1](message)
        except GrpcAbort as exc:
            self._answer_status(stream, exc.code, str(exc))
            return
        except DecodeError as exc:
            self._answer_status(
                stream, grpc.StatusCode.INVALID_ARGUMENT, f"request message not valid: {exc}"
            )
            return
        stream.body = bytearray()
        call = Call(head.metadata, functools.partial(self._finish, stream))
        try:
            pending = method[0](request, call)
        except GrpcAbort as exc:
            self._answer_status(stream, exc.code, str(exc))
            return
        except Exception:
            logger.exception("gRPC call %s failed", head.path)
            self._answer_status(stream, grpc.StatusCode.INTERNAL, "internal error")
            return
        if pending is not None:
            stream.task = asyncio.get_running_loop().create_task(self._call(stream, pending))

    async def _call(self, stream: _Stream, pending: Awaitable[Any]) -> None:
        try:
            response = await pending
        except asyncio.CancelledError:
            return
        except GrpcAbort as exc:
            self._finish(stream, None, exc)
        except Exception:
            logger.exception("gRPC call %s failed", stream.head.path)
            self._answer_status(stream, grpc.StatusCode.INTERNAL, "internal error")
        else:
            self._finish(stream, response, None)

    def _finish(self, stream: _Stream, response: Any, abort: GrpcAbort | None) -> None:
        if abort is not None:
            self._answer_status(stream, abort.code, str(abort))
            return
        message = response.SerializeToString()
        self._answer(stream, b"\x00" + len(message).to_bytes(4) + message)

    # -- frames out ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _send(self, frame: bytes) -> None:
        if self.out is not None:
            self.out.append(frame)
        else:
            self._write(frame)

    def _answer(self, stream: _Stream, data: bytes) -> None:
        if self.streams.get(stream.id) is not stream:
            return  # reset meanwhile
        stream.answered = True
        size = len(data)
        if size <= min(stream.send_window, self.send_window, self.peer_max_frame):
            stream.send_window -= size
            self.send_window -= size
            self._send(
                _frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS)
                + _frame(DATA, 0, stream.id, data)
                + _frame(HEADERS, END_HEADERS | END_STREAM, stream.id, OK_TRAILERS)
            )
            self._forget_if_done(stream)
            return
        self._send(_frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        stream.pending = memoryview(data)
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        pending = stream.pending
        assert pending is not None
        frames = []
        while pending:
            size = min(len(pending), stream.send_window, self.send_window, self.peer_max_frame)
            if size <= 0:
                break
            frames.append(_frame(DATA, 0, stream.id, bytes(pending[:size])))
            pending = pending[size:]
            stream.send_window -= size
            self.send_window -= size
        if pending:
            stream.pending = pending
            self.blocked[stream.id] = stream
        else:
            stream.pending = None
            self.blocked.pop(stream.id, None)
            frames.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, OK_TRAILERS))
        if frames:
            self._send(b"".join(frames))
        if stream.pending is None:
            self._forget_if_done(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                break
            self._flush(stream)

    def _answer_status(self, stream: _Stream, code: grpc.StatusCode, message: str) -> None:
        if self.streams.get(stream.id) is not stream:
            return
        stream.answered = True
        block = status_block(code, message, headers=True)
        self._send(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._forget_if_done(stream)

    def _answer_early(self, stream: _Stream, code: grpc.StatusCode, message: str) -> None:
        """Answers before the request is whole, then asks the client to stop sending it
        (RST_STREAM NO_ERROR, RFC 9113 section 8.1)."""
        stream.body = bytearray()
        self._release(stream)
        self._answer_status(stream, code, message)
        if stream.receiving:
            self._send(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
            stream.receiving = False
            self._forget_if_done(stream)

    def _answer_http(self, stream: _Stream, status: int, message: str) -> None:
        """A plain HTTP answer to a request that is not a gRPC call (RFC 7541 literal
        ``:status``, static index 8)."""
        stream.answered = True
        block = _literal(8, str(status).encode()) + _literal(
            b"grpc-message", percent_encode(message)
        )
        self._send(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        if stream.receiving:
            self._send(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
            stream.receiving = False
        self._forget_if_done(stream)

    def _forget_if_done(self, stream: _Stream) -> None:
        if stream.answered and stream.pending is None and not stream.receiving:
            self.streams.pop(stream.id, None)
            self._close_if_done()
        elif stream.answered and stream.pending is None and stream.receiving:
            # Answered while the client still sends: its remaining DATA is dropped on arrival.
            stream.body = bytearray()

    # -- closing ---------------------------------------------------------------------------------

    def go_away(self, code: int, message: str = "") -> None:
        """Tells the client no stream after the last one seen will be served."""
        if not self.going_away or code != NO_ERROR:
            self._send(
                _frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code) + message.encode())
            )
        self.going_away = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.going_away and not self.streams and self.transport is not None and not self.closed:
            if self.out:
                self._write(b"".join(self.out))
                self.out.clear()
            self.transport.close()
            self.closed = True

    def _fail(self, code: int, message: str) -> None:
        logger.info("gRPC connection closed: %s", message)
        self.go_away(code, message)
        for stream in list(self.streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self._close_if_done()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def _check_headers(found: dict[str, str]) -> tuple[int, str] | None:
    """(HTTP status, message) when the request is not a gRPC call (gRPC over HTTP2: 415 for
    another content-type; 405 for another method)."""
    if found.get(":method") != "POST":
        return 405, f"gRPC calls are POST, not {found.get(':method')!r}"
    content_type = found.get("content-type", "")
    if not (
        content_type == "application/grpc"
        or content_type.startswith(("application/grpc+", "application/grpc;"))
    ):
        return 415, f"content-type {content_type!r} is not application/grpc"
    return None


def _message(body: bytearray, encoding: str, limit: int) -> bytes:
    """The one request message of a unary call from its length-prefixed body; raises
    :class:`GrpcAbort` (INVALID_ARGUMENT, UNIMPLEMENTED, RESOURCE_EXHAUSTED)."""
    if len(body) < 5:
        raise GrpcAbort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
    compressed, size = body[0], int.from_bytes(body[1:5])
    if size > limit:
        raise GrpcAbort(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"request message larger than {limit} bytes"
        )
    if len(body) != 5 + size:
        raise GrpcAbort(
            grpc.StatusCode.INVALID_ARGUMENT,
            ONE_MESSAGE if len(body) > 5 + size else "request message cut short",
        )
    message = bytes(body[5:])
    if not compressed:
        return message
    if compressed != 1:
        raise GrpcAbort(grpc.StatusCode.INVALID_ARGUMENT, f"message flag {compressed}")
    wbits = {"gzip": 31, "deflate": 15}.get(encoding)
    if wbits is None:
        raise GrpcAbort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"grpc-encoding {encoding!r} (supported: gzip, deflate, identity)",
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(message, limit + 1)
    except zlib.error as exc:
        raise GrpcAbort(grpc.StatusCode.INVALID_ARGUMENT, f"{encoding} message: {exc}") from None
    if len(out) > limit:
        raise GrpcAbort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request message larger than {limit} bytes after {encoding}",
        )
    return out
