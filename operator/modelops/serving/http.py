"""The model server's HTTP/1.1 layer: an ``asyncio.Protocol`` on the llhttp parser (httptools).

Why not aiohttp's server: on this kind of machine a bare aiohttp handler tops out near 16k
requests/s on two workers while the same loop with a protocol like this one passes 60k; a
1-row prediction costs far less than aiohttp's per-request objects, so the framework was the
bottleneck. What is kept from a full server: keep-alive and pipelining (answers in order), HTTP/1.0,
chunked bodies, ``Expect: 100-continue``, HEAD, a body limit answered with 413 before the body is
read, idle connections closed after a timeout, write back-pressure, and a graceful drain.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

from modelops.serving.listener import Listener
from modelops.serving.protocol import error_body

logger = logging.getLogger(__name__)

JSON = "application/json"
MAX_PIPELINED = 32
"""Requests parsed ahead of the one being answered before the connection stops reading."""
MAX_HEAD = 64 * 1024
"""Bytes of request line and headers (and, apart, of trailers): the parser buffers them."""
CHUNK_FRAMING = 32
"""Bytes allowed per body chunk for its size line and line breaks."""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    """Percent-decoded, without the query string."""
    body: bytes
    header_length: int | None = None
    """``Inference-Header-Content-Length`` (binary tensor data follows that much JSON); -1 if
    it is not a number."""
    content_encoding: str | None = None
    route_key: str | None = None
    """The value of the server's ``sticky_header``, when the request carries it."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: bytes = b""
    """More header lines, each ending in CRLF."""


Handler = Callable[[Request], "Response | Awaitable[Response]"]
"""Answers at once (a ``Response``) or later (an awaitable of one)."""


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {s.value: _status_line(s.value) for s in HTTPStatus}


class _Clock:
    """The ``Date`` header, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self.second = 0
        self.header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.header = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self.header


_clock = _Clock()


def _finish_then_close(conn: _Connection) -> None:
    conn.done = True  # no new requests; what is in flight is answered, then closed
    conn.close_if_idle()


class HttpServer(Listener["_Connection"]):
    """Listens, tracks connections, drains on close."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        idle_timeout: float = 75.0,
        request_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        """A request must arrive whole within this long of its first byte."""
        self.sticky_header: bytes | None = None
        """A header (lower-case) whose value becomes ``Request.route_key``; settable any time."""
        self._sweeper: asyncio.Task[None] | None = None

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 2048
    ) -> tuple[str, int]:
        bound = await self.listen(
            lambda: _Connection(self), host, port, reuse_port=reuse_port, backlog=backlog
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="http-idle")
        return bound

    async def close(self, drain_timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``drain_timeout``), close."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.drain(drain_timeout, _finish_then_close)

    async def _sweep(self) -> None:
        period = max(0.5, min(self.idle_timeout / 4, self.request_timeout / 4, 10.0))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.sweep(now)


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.last_activity = time.monotonic()
        """When a request began or an answer was written (not any byte: bare line breaks
        between requests must not keep a connection alive)."""
        self.queue: collections.deque[tuple[Request, Response | None]] = collections.deque()
        """Requests read ahead of the answer being prepared; a queued ``Response`` is an
        error answer prepared while parsing (the connection closes after it)."""
        self.busy = False
        self.done = False
        """No more requests are read on this connection (it closes after its answers)."""
        self.write_paused = False
        # The request being parsed.
        self._started: float | None = None
        self._url = b""
        self._head_size = 0
        self._header_length: int | None = None
        self._encoding: str | None = None
        self._route_key: str | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._expect = False
        self._continue_owed = False
        self._chunked = False
        self._length: int | None = None
        # Bytes that are not body (request line, headers, chunk framing, trailers) since the
        # last whole request: the parser buffers some of them whole, so they are bounded.
        self._overhead = 0
        self._chunks = 0
        self._completed = 0
        self._fed_body = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        self.done = True
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.done:
            return  # lingering after an error answer: read and drop, so the client sees it
        self._fed_body = 0
        completed = self._completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here: answer what was asked, if it was whole, then close.
            if self._started is not None:  # stopped inside a request
                self._fail(400, "protocol upgrades (and CONNECT) are not supported")
            elif self.busy or self.queue:
                self.done = True
            else:
                self._close()
        except httptools.HttpParserError as exc:
            if not self.done:
                self._fail(400, f"malformed HTTP request: {exc}")
        else:
            # Counted only for reads in which no request completed: those hold bytes of one
            # request alone, so a request cannot grow without bound across reads.
            if self._completed == completed and not self.done:
                self._overhead += len(data) - self._fed_body
                if self._overhead > MAX_HEAD + CHUNK_FRAMING * self._chunks:
                    self._fail(431, f"request head or chunk framing over {MAX_HEAD} bytes")

    def eof_received(self) -> bool | None:
        self.done = True
        if not self.busy and not self.queue:
            return None  # close now
        return True  # answer what was asked first, then close

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_activity = time.monotonic()
        if self.transport is not None and not self.done and len(self.queue) < MAX_PIPELINED:
            self.transport.resume_reading()
        if not self.busy:
            self._handle(self._next())

    def sweep(self, now: float) -> None:
        """Called every few seconds: end what has stalled."""
        transport = self.transport
        if transport is None:
            return
        server = self.server
        stalled = now - self.last_activity > server.idle_timeout
        if transport.is_closing() or self.write_paused:
            if stalled:
                self.abort()  # a peer that does not read its answers
        elif self._started is not None and now - self._started > server.request_timeout:
            self._fail(408, f"request not received whole within {server.request_timeout:g} s")
        elif stalled:
            self.close_if_idle()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._started = self.last_activity = time.monotonic()
        self._url = b""
        self._head_size = 0
        self._header_length = None
        self._encoding = None
        self._route_key = None
        self._body = []
        self._size = 0
        self._expect = False
        self._chunked = False
        self._length = None

    def on_url(self, url: bytes) -> None:
        # Bounded here too: a whole request in one read never reaches data_received's check.
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            if not self.done:
                self._fail(431, f"request line over {MAX_HEAD} bytes")
            return
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD and not self.done:
            self._fail(431, f"request line and headers over {MAX_HEAD} bytes")
        lowered = name.lower()
        if lowered == b"content-length":
            with contextlib.suppress(ValueError):
                self._length = int(value)
        elif lowered == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif lowered == b"transfer-encoding":
            self._chunked = True
        elif lowered == b"inference-header-content-length":
            try:
                self._header_length = int(value)
            except ValueError:
                self._header_length = -1
        elif lowered == b"content-encoding":
            self._encoding = value.decode("latin-1")
        elif lowered == self.server.sticky_header:
            self._route_key = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.done:
            return
        limit = self.server.max_body
        if self._length is not None and self._length > limit:
            self._fail(413, f"request body of {self._length} bytes is over the {limit}-byte limit")
        elif self._expect and self.transport is not None:
            if self.busy or self.queue:
                # Behind an unanswered request a 100 would read as that request's interim
                # answer: it is sent once the answers before it are written.
                self._continue_owed = True
            else:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._fed_body += len(body)
        if self.done:
            return
        self._size += len(body)
        if self._size > self.server.max_body:
            self._fail(413, f"request body is over the {self.server.max_body}-byte limit")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._completed += 1
        self._overhead = self._chunks = 0
        self._started = None
        self._continue_owed = False
        if self.done:
            return
        parser = self.parser
        method = parser.get_method().decode("latin-1")
        if method == "CONNECT":  # llhttp completes it before it stops for the "upgrade"
            self._fail(400, "CONNECT is not supported")
            return
        if parser.should_upgrade() and (self._length or self._chunked):
            # llhttp skips the body of an upgrade request: never answer it without its body.
            self._fail(400, "protocol upgrades are not supported")
            return
        raw = self._url.split(b"?", 1)[0]
        path = raw.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(method, path, body, self._header_length, self._encoding, self._route_key)
        if not parser.should_keep_alive() or parser.get_http_version() == "1.0":
            self.done = True  # "Connection: close" or HTTP/1.0: this is the last request
        if self.busy or self.queue:
            self.queue.append((request, None))
            if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
                self.transport.pause_reading()
        else:
            self._handle(request)

    # -- answering ---------------------------------------------------------------------------------

    def _handle(self, request: Request | None) -> None:
        # A loop, not recursion through _respond: a long pipelined backlog behind a slow
        # request is answered here in one go and would otherwise overflow the stack.
        while request is not None:
            self.busy = True
            try:
                result = self.server.handler(request)
                if not isinstance(result, Response):  # an awaitable, or a handler's bug
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(functools.partial(self._finished, request))
                    return
            except Exception:
                logger.exception("%s %s failed", request.method, request.path)
                result = Response(500, error_body("internal server error"))
            request = self._respond(request, result)

    def _finished(self, request: Request, task: asyncio.Future[Response]) -> None:
        if task.cancelled():
            response = Response(503, error_body("the server is shutting down"))
        elif (exc := task.exception()) is not None:
            logger.error("%s %s failed", request.method, request.path, exc_info=exc)
            response = Response(500, error_body("internal server error"))
        else:
            response = task.result()
        self._handle(self._respond(request, response))

    def _respond(self, request: Request, response: Response, last: bool = False) -> Request | None:
        """Write the answer; the next queued request to handle now, if there is one."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        last = last or (not self.queue and (self.done or self.server.closing))
        try:
            body = response.body
            head = b"".join(
                (
                    _STATUS_LINES.get(response.status) or _status_line(response.status),
                    _clock.date(),
                    b"Content-Type: ",
                    response.content_type.encode(),
                    b"\r\nContent-Length: ",
                    str(len(body)).encode(),
                    b"\r\n",
                    response.headers,
                    b"Connection: close\r\n\r\n" if last else b"\r\n",
                )
            )
            transport.write(head if request.method == "HEAD" else head + body)
        except Exception:  # a handler's bug (no Response, a str body): drop the connection
            logger.exception("%s %s: the answer could not be written", request.method, request.path)
            self.abort()
            return None
        self.last_activity = time.monotonic()
        self.busy = False
        if last:
            self.done = True
            self.queue.clear()
            self._close()
            return None
        return self._next()

    def _next(self) -> Request | None:
        """The next queued request to handle (None: none, or the client must read first)."""
        transport = self.transport
        if self.write_paused or transport is None:
            return None
        if not self.queue:
            if self._continue_owed:
                self._continue_owed = False
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        queued, ready = self.queue.popleft()
        if len(self.queue) < MAX_PIPELINED // 2 and not self.done:
            transport.resume_reading()
        self.busy = True
        if ready is None:
            return queued
        self._respond(queued, ready, last=True)
        return None

    def _fail(self, status: int, message: str) -> None:
        """Answer an unreadable request and read no more: the rest of the connection's bytes
        are not known to be requests. Answers to requests before it still go first."""
        self.done = True
        self._started = None
        response = Response(status, error_body(message))
        if self.busy or self.queue:
            self.queue.append((Request("", "", b""), response))
        else:
            self.busy = True
            self._respond(Request("", "", b""), response, last=True)

    def _close(self) -> None:
        """Half-close, then close: closing with unread bytes in the socket would send a reset
        that can destroy the last answer before the client reads it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(2.0, transport.close)
        else:
            transport.close()

    def close_if_idle(self) -> None:
        if not self.busy and not self.queue and self.transport is not None:
            self.done = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
