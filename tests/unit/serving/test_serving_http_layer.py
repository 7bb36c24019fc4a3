"""The model server's HTTP/1.1 layer (``serving/http.py``) over raw sockets.

Requests are written byte by byte and answers parsed by hand: a client library would hide what
is under test here (framing, ordering, when the server closes, what it sends before a body).
Every read has a timeout, so a server that hangs fails the test instead of blocking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np
import pytest

from modelops.serving.http import MAX_HEAD, Handler, HttpServer, Request, Response
from unit.serving.test_serving_support import (
    MemoryStore,
    iris_frame,
    matrix_request,
    routing_table,
    serve_in_process,
    train_version,
)

TIMEOUT = 5.0
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
SPECIES = ["setosa", "versicolor"]
INFER = "/v2/models/iris/infer"
LIVE = {"live": True}

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# -- the wire -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def read_reply(reader: asyncio.StreamReader, *, head: bool = False) -> Reply:
    """One answer: status line, headers, then ``Content-Length`` bytes of body (none for a HEAD
    or a 1xx). Reading exactly that many bytes is what checks the length: a wrong one breaks
    the parse of whatever follows."""

    async def read() -> Reply:
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"{name} sent twice"
            headers[name.lower()] = value.strip()
        code = int(status)
        if code < 200:
            return Reply(code, headers, b"")
        length = int(headers["content-length"])
        return Reply(code, headers, b"" if head else await reader.readexactly(length))

    return await asyncio.wait_for(read(), TIMEOUT)


async def rest(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """Everything until the server closes (``b""`` if it sends nothing more)."""
    return await asyncio.wait_for(reader.read(), timeout)


def request(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = request(
        path,
        "Host: test",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
        method="POST",
    )
    return head + body


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    return request(path, "Host: test", *headers, method=method)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def infer_body(request_id: str | None = None) -> bytes:
    return json.dumps(matrix_request(ROWS, request_id)).encode()


def assert_predicted(reply: Reply, request_id: str | None = None) -> None:
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["model_name"] == "iris"
    assert answer["outputs"][0]["data"] == SPECIES
    if request_id is not None:
        assert answer["id"] == request_id


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await asyncio.wait_for(writer.drain(), TIMEOUT)


# -- servers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Iris:
    store: MemoryStore
    table: dict[str, Any]


@pytest.fixture(scope="module")
def iris() -> Iris:
    store = MemoryStore()
    entry = train_version(store, "iris-v1", iris_frame(), "species")
    return Iris(store, routing_table([(entry, "stable", 100)]))


@contextlib.asynccontextmanager
async def model_server(iris: Iris | None = None, **config: Any) -> AsyncIterator[int]:
    """A real ModelServer (with the iris model if given); its port."""
    store, table = (iris.store, iris.table) if iris is not None else (None, None)
    async with serve_in_process(store, table, **config) as (_, url):
        port = urlsplit(url).port
        assert port is not None
        yield port


@contextlib.asynccontextmanager
async def http_server(handler: Handler, **options: Any) -> AsyncIterator[tuple[HttpServer, int]]:
    """The bare layer around a test handler, for what a ModelServer cannot be made to do."""
    http = HttpServer(handler, **{"max_body": 1024, **options})
    _, port = await http.start("127.0.0.1", 0)
    try:
        yield http, port
    finally:
        await http.close(1.0)


def ok(request: Request) -> Response:
    return Response(200, json.dumps({"path": request.path}).encode())


# -- connection handling --------------------------------------------------------------------------


async def test_keep_alive_answers_request_after_request_on_one_connection(iris: Iris) -> None:
    async with model_server(iris) as port, connect(port) as (reader, writer):
        for data in (
            get("/v2/health/live"),
            get("/v2"),
            post(INFER, infer_body("a")),
            get("/v2/health/ready"),
            post(INFER, infer_body("b")),
        ):
            await send(writer, data)
            reply = await read_reply(reader)
            assert reply.status == 200, reply.body
            assert int(reply.headers["content-length"]) == len(reply.body)
            assert reply.headers["content-type"] == "application/json"
            assert not reply.closes
            sent = parsedate_to_datetime(reply.headers["date"]).timestamp()
            assert abs(sent - time.time()) < 60
            reply.json()  # the whole body, no more and no less
        await send(writer, get("/v2/health/live", "Connection: close"))
        assert (await read_reply(reader)).json() == LIVE
        # Nothing after the last answer: every Content-Length above was exact.
        assert await rest(reader) == b""


async def test_pipelined_requests_are_answered_in_order(iris: Iris) -> None:
    async with model_server(iris) as port, connect(port) as (reader, writer):
        # The infers are answered later (by the batcher), the rest at once: the order must hold.
        await send(
            writer,
            b"".join(
                (
                    get("/v2/health/live"),
                    post(INFER, infer_body("first")),
                    get("/v2"),
                    post(INFER, infer_body("second")),
                    get("/v2/health/ready"),
                )
            ),
        )
        assert (await read_reply(reader)).json() == LIVE
        assert_predicted(await read_reply(reader), "first")
        assert (await read_reply(reader)).json()["name"] == "modelops"
        assert_predicted(await read_reply(reader), "second")
        assert (await read_reply(reader)).json() == {"ready": True}
        await send(writer, get("/v2/health/live"))
        reply = await read_reply(reader)
        assert reply.json() == LIVE and not reply.closes


async def test_a_long_pipelined_backlog_behind_a_slow_request_is_answered() -> None:
    # Far more requests than the read-ahead limit arrive in one read while the first is still
    # being answered; they queue, then are answered in one go (once, this overflowed the stack).
    async def slow() -> Response:
        await asyncio.sleep(0.2)
        return Response(200, b'{"path": "/slow"}')

    def handler(request: Request) -> Response | Awaitable[Response]:
        return slow() if request.path == "/slow" else ok(request)

    n = 2000
    async with http_server(handler) as (_, port), connect(port) as (reader, writer):
        await send(writer, get("/slow") + b"".join(get(f"/{i}") for i in range(n)))
        assert (await read_reply(reader)).json() == {"path": "/slow"}
        for i in range(n):
            assert (await read_reply(reader)).json() == {"path": f"/{i}"}


async def test_http_1_0_without_keep_alive_is_answered_and_closed() -> None:
    async with model_server() as port, connect(port) as (reader, writer):
        await send(writer, request("/v2/health/live", version="1.0"))
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.json() == LIVE
        assert reply.closes
        assert await rest(reader) == b""


async def test_connection_close_is_the_last_request_answered() -> None:
    async with model_server() as port, connect(port) as (reader, writer):
        # What follows "Connection: close" on the same connection is not answered.
        await send(writer, get("/v2", "Connection: close") + get("/v2/health/live"))
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.json()["name"] == "modelops"
        assert reply.closes
        assert await rest(reader) == b""


async def test_client_eof_right_after_a_request_still_gets_the_answer(iris: Iris) -> None:
    async with model_server(iris) as port:
        # One answered at once, one answered later (inference): both arrive before the close.
        for data, field, value in (
            (get("/v2/health/live"), "live", True),
            (post(INFER, infer_body("eof")), "id", "eof"),
        ):
            async with connect(port) as (reader, writer):
                await send(writer, data)
                writer.write_eof()
                reply = await read_reply(reader)
                assert reply.status == 200 and reply.json()[field] == value, reply.body
                assert await rest(reader) == b""


async def test_idle_connections_are_closed_busy_ones_are_not() -> None:
    async with http_server(ok, idle_timeout=1.0) as (_, port):

        async def idle() -> float:
            async with connect(port) as (reader, writer):
                await send(writer, get("/once"))
                assert (await read_reply(reader)).status == 200
                started = time.monotonic()
                assert await rest(reader) == b""
                return time.monotonic() - started

        async def busy() -> int:
            async with connect(port) as (reader, writer):
                answered = 0
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    await send(writer, get(f"/{answered}"))
                    reply = await read_reply(reader)
                    assert reply.json() == {"path": f"/{answered}"} and not reply.closes
                    answered += 1
                    await asyncio.sleep(0.25)
                return answered

        waited, answered = await asyncio.gather(idle(), busy())
        # Swept every idle_timeout / 4 (at least 0.5 s): closed between 1 and 1.5 s idle.
        assert 0.9 <= waited < 3.0
        assert answered >= 8


# -- bodies ---------------------------------------------------------------------------------------


async def test_a_chunked_body_is_read_whole(iris: Iris) -> None:
    body = infer_body("chunked")
    head = request(INFER, "Host: test", "Transfer-Encoding: chunked", method="POST")
    async with model_server(iris) as port, connect(port) as (reader, writer):
        # Chunks in separate writes, split mid-chunk too: the body arrives over several reads.
        await send(writer, head + chunk(body[:10]))
        await asyncio.sleep(0.05)
        await send(writer, chunk(body[10:50])[:7])
        await asyncio.sleep(0.05)
        await send(writer, chunk(body[10:50])[7:] + chunk(body[50:]) + b"0\r\n\r\n")
        assert_predicted(await read_reply(reader), "chunked")


async def test_expect_100_continue_is_answered_before_the_body_is_sent(iris: Iris) -> None:
    body = infer_body("expected")
    async with model_server(iris) as port, connect(port) as (reader, writer):
        await send(writer, post(INFER, body, "Expect: 100-continue")[: -len(body)])
        interim = await read_reply(reader)
        assert (interim.status, interim.headers) == (100, {})
        await send(writer, body)
        assert_predicted(await read_reply(reader), "expected")
        await send(writer, get("/v2/health/live"))
        assert (await read_reply(reader)).json() == LIVE


async def test_a_body_over_the_limit_is_refused_before_it_is_sent() -> None:
    async with model_server(max_body_bytes=1024) as port:
        # The declared length alone decides: the body is never sent, and with "Expect" the
        # refusal comes instead of a 100 Continue.
        for expect in ((), ("Expect: 100-continue",)):
            async with connect(port) as (reader, writer):
                await send(writer, post(INFER, b"x" * 100_000, *expect)[:-100_000])
                reply = await read_reply(reader)
                assert reply.status == 413 and reply.closes
                assert "100000 bytes" in reply.json()["error"]
                assert await rest(reader) == b""
        # A chunked body has no declared length: refused once what has arrived is too much.
        head = request(INFER, "Host: test", "Transfer-Encoding: chunked", method="POST")
        async with connect(port) as (reader, writer):
            await send(writer, head + chunk(b"x" * 600))
            await send(writer, chunk(b"x" * 600))
            reply = await read_reply(reader)
            assert reply.status == 413 and reply.closes
            assert "1024-byte limit" in reply.json()["error"]
            assert await rest(reader) == b""
        # At the limit is fine.
        async with connect(port) as (reader, writer):
            await send(writer, post(INFER, b"x" * 1024))
            assert (await read_reply(reader)).status == 404  # no model, but read and routed


# -- requests -------------------------------------------------------------------------------------


async def test_a_malformed_request_is_400_and_closes_and_others_are_served() -> None:
    async with model_server() as port:
        async with connect(port) as (reader, writer):
            # The answer to the good request before the garbage still goes first.
            await send(writer, get("/v2/health/live") + b"G\x00RBAGE / HTTP/1.1\r\n\r\n")
            assert (await read_reply(reader)).json() == LIVE
            reply = await read_reply(reader)
            assert reply.status == 400 and reply.closes
            assert reply.headers["content-type"] == "application/json"
            assert "malformed HTTP request" in reply.json()["error"]
            assert await rest(reader) == b""
        async with connect(port) as (reader, writer):
            await send(writer, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64))
            reply = await read_reply(reader)
            assert reply.status == 400 and reply.closes and "error" in reply.json()
            assert await rest(reader) == b""
        async with connect(port) as (reader, writer):
            await send(writer, get("/v2/health/live"))
            assert (await read_reply(reader)).json() == LIVE


async def test_headers_past_the_bound_are_431_and_a_split_head_with_a_big_body_is_not() -> None:
    async with http_server(ok, max_body=1 << 20) as (_, port):
        async with connect(port) as (reader, writer):
            # Sent in pieces, as a slow client would: the server must not buffer without end.
            await send(writer, b"GET /a HTTP/1.1\r\nHost: test\r\nX-Big: ")
            for _ in range(MAX_HEAD // 8192 + 2):
                await asyncio.sleep(0.01)  # separate reads
                await send(writer, b"x" * 8192)
            reply = await read_reply(reader)
            assert reply.status == 431 and reply.closes
            assert f"over {MAX_HEAD} bytes" in reply.json()["error"]
        async with connect(port) as (reader, writer):
            body = b"y" * (3 * MAX_HEAD)  # the body after the head does not count as head
            head = post("/b", body)[: -len(body)]
            await send(writer, head[:20])
            await asyncio.sleep(0.05)
            await send(writer, head[20:] + body)
            reply = await read_reply(reader)
            assert reply.status == 200 and reply.json() == {"path": "/b"}


async def test_head_sends_the_headers_without_the_body() -> None:
    async with model_server() as port, connect(port) as (reader, writer):
        await send(
            writer, get("/v2/health/live", method="HEAD") + get("/v2/health/live") + get("/v2")
        )
        head = await read_reply(reader, head=True)
        # Were a body sent after it, the next answer would not parse.
        whole = await read_reply(reader)
        assert head.status == whole.status == 200
        assert int(head.headers["content-length"]) == len(whole.body) > 0
        assert whole.json() == LIVE
        assert (await read_reply(reader)).json()["name"] == "modelops"


async def test_query_strings_are_ignored_and_paths_percent_decoded() -> None:
    async with model_server() as port, connect(port) as (reader, writer):
        for path in ("/v2/health/live?x=1", "/v2/health/%6Cive", "/v2/health/%6cive?y=%2F&z"):
            await send(writer, get(path))
            reply = await read_reply(reader)
            assert (reply.status, reply.json()) == (200, LIVE), path
        # An encoded "?" is part of the path, not the start of a query.
        await send(writer, get("/v2/health/live%3Fx=1"))
        reply = await read_reply(reader)
        assert reply.status == 404 and "/v2/health/live?x=1" in reply.json()["error"]


async def test_no_protocol_switch_on_upgrade() -> None:
    async with model_server() as port:
        async with connect(port) as (reader, writer):
            # The client may send the new protocol's first bytes at once: never answered.
            upgrade = get(
                "/v2/health/live",
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            )
            await send(writer, upgrade + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            reply = await read_reply(reader)
            assert (reply.status, reply.json()) == (200, LIVE)
            assert await rest(reader) == b""
        async with connect(port) as (reader, writer):
            await send(writer, get("example.com:443", method="CONNECT"))
            reply = await read_reply(reader)
            assert 400 <= reply.status < 500 and "error" in reply.json()
            assert await rest(reader) == b""


async def test_connect_is_refused_by_the_layer() -> None:
    seen: list[str] = []

    def handler(request: Request) -> Response:
        seen.append(request.method)
        return ok(request)

    async with http_server(handler) as (_, port), connect(port) as (reader, writer):
        await send(writer, get("example.com:443", method="CONNECT"))
        reply = await read_reply(reader)
        assert (reply.status, seen) == (400, [])


async def test_a_failing_handler_is_a_500_and_the_connection_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails_later() -> Response:
        await asyncio.sleep(0.01)
        raise RuntimeError("later")

    def handler(request: Request) -> Response | Awaitable[Response]:
        if request.path == "/now":
            raise RuntimeError("now")
        return fails_later() if request.path == "/later" else ok(request)

    with caplog.at_level(logging.ERROR, logger="modelops.serving.http"):
        async with http_server(handler) as (_, port), connect(port) as (reader, writer):
            await send(writer, get("/now") + get("/a") + get("/later") + get("/b"))
            for expected in ("/now", "/a", "/later", "/b"):
                reply = await read_reply(reader)
                if expected in ("/now", "/later"):
                    assert reply.status == 500 and not reply.closes
                    assert reply.json() == {"error": "internal server error"}
                else:
                    assert reply.json() == {"path": expected}
    assert sum("failed" in r.getMessage() for r in caplog.records) == 2


# -- shutdown -------------------------------------------------------------------------------------


async def test_graceful_close_answers_what_is_in_flight_and_refuses_new_connections() -> None:
    started = asyncio.Event()

    async def slow() -> Response:
        started.set()
        await asyncio.sleep(0.3)
        return Response(200, b'{"path": "/slow"}')

    def handler(request: Request) -> Response | Awaitable[Response]:
        return slow() if request.path == "/slow" else ok(request)

    http = HttpServer(handler, max_body=1024)
    _, port = await http.start("127.0.0.1", 0)
    try:
        async with connect(port) as (idle_reader, idle_writer), connect(port) as (reader, writer):
            await send(idle_writer, get("/before"))
            assert (await read_reply(idle_reader)).status == 200
            await send(writer, get("/slow"))
            await asyncio.wait_for(started.wait(), TIMEOUT)
            closing = asyncio.create_task(http.close(5.0))
            # An idle keep-alive connection is closed at once, with no answer pending.
            assert await rest(idle_reader) == b""
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            reply = await read_reply(reader)
            assert reply.json() == {"path": "/slow"} and reply.closes
            assert await rest(reader) == b""
        # Drained as soon as the clients are gone, well inside the drain timeout.
        await asyncio.wait_for(closing, 3.0)
        assert not http.connections
    finally:
        await http.close(0.1)


# -- slow and stalled peers -----------------------------------------------------------------------

BIG = 100_000
"""Bytes of an answer big enough that a few of them fill the socket buffers."""


def numbered(path: str) -> bytes:
    """A ``BIG`` answer that says which request it is for."""
    return (path.encode() + b" ").ljust(BIG, b"x")


def big_answers(calls: list[str]) -> Handler:
    """Answers every request later with ``numbered(path)``; records each call."""

    async def answer(path: str) -> Response:
        calls.append(path)
        await asyncio.sleep(0)
        return Response(200, numbered(path), "application/octet-stream")

    def handler(request: Request) -> Awaitable[Response]:
        return answer(request.path)

    return handler


def buffered(http: HttpServer) -> int:
    """Bytes the server holds in its transports' write buffers."""
    return sum(
        conn.transport.get_write_buffer_size()
        for conn in http.connections
        if conn.transport is not None
    )


async def test_a_client_that_does_not_read_holds_back_the_handler_not_memory() -> None:
    calls: list[str] = []
    n = 300
    async with (
        http_server(big_answers(calls)) as (http, port),
        connect(port) as (reader, writer),
    ):
        await send(writer, b"".join(get(f"/{i}") for i in range(n)))
        # The client reads nothing for a second: the server must stop handling once the
        # socket buffers and its write buffer are full, not answer all 300 into memory.
        most = 0
        halfway = 0
        for tick in range(20):
            await asyncio.sleep(0.05)
            most = max(most, buffered(http))
            if tick == 9:
                halfway = len(calls)
        assert 1 <= len(calls) <= 64, len(calls)
        assert len(calls) == halfway  # stopped, not merely slow
        assert most < 16 << 20, most
        assert calls == [f"/{i}" for i in range(len(calls))]
        # Once the client reads, every answer comes, whole and in order.
        for i in range(n):
            reply = await read_reply(reader)
            assert reply.status == 200 and not reply.closes
            assert reply.body == numbered(f"/{i}"), (i, reply.body[:16])
        assert calls == [f"/{i}" for i in range(n)]
        await send(writer, get("/after"))
        assert (await read_reply(reader)).body == numbered("/after")


async def test_a_peer_that_never_reads_its_answers_is_dropped() -> None:
    calls: list[str] = []
    n = 300
    async with (
        http_server(big_answers(calls), idle_timeout=1.0) as (http, port),
        connect(port) as (reader, writer),
    ):
        await send(writer, b"".join(get(f"/{i}") for i in range(n)))
        started = time.monotonic()
        while http.connections:
            assert time.monotonic() - started < 6.0, "a stalled peer was kept"
            await asyncio.sleep(0.1)
        assert time.monotonic() - started >= 0.9  # after the idle timeout, not before
        assert len(calls) < n
        # What was already in the socket buffers may still arrive; the rest never does.
        answered = 0
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            for i in range(n):
                reply = await read_reply(reader)
                assert reply.body == numbered(f"/{i}")
                answered += 1
        assert answered < n


async def test_a_request_not_received_whole_in_time_is_408() -> None:
    async with http_server(ok, request_timeout=1.0) as (_, port):

        async def stalled() -> float:
            async with connect(port) as (reader, writer):
                await send(writer, b"GET /slow HTTP/1.1\r\nHost: t\r\n")
                started = time.monotonic()
                reply = await read_reply(reader)
                waited = time.monotonic() - started
                assert reply.status == 408 and reply.closes
                assert reply.headers["content-type"] == "application/json"
                assert "within 1 s" in reply.json()["error"]
                assert await rest(reader) == b""
                return waited

        async def in_time() -> None:
            async with connect(port) as (reader, writer):
                # Sent in pieces, but whole within the deadline.
                data = get("/a")
                for piece in (data[:5], data[5:20], data[20:]):
                    await send(writer, piece)
                    await asyncio.sleep(0.2)
                reply = await read_reply(reader)
                assert reply.json() == {"path": "/a"} and not reply.closes
                # Time between requests is not a request's time.
                await asyncio.sleep(1.6)
                await send(writer, get("/b"))
                reply = await read_reply(reader)
                assert reply.json() == {"path": "/b"} and not reply.closes

        waited, _ = await asyncio.gather(stalled(), in_time())
        # Swept every 0.5 s: answered between 1 and 1.5 s after the first byte.
        assert 0.9 <= waited < 3.0


# -- framing --------------------------------------------------------------------------------------


def sized(request: Request) -> Response:
    return Response(200, json.dumps({"path": request.path, "size": len(request.body)}).encode())


async def test_trailers_past_the_bound_are_431_and_many_small_chunks_are_not() -> None:
    head = request("/t", "Host: test", "Transfer-Encoding: chunked", method="POST")
    async with http_server(sized, max_body=1 << 20) as (_, port):
        async with connect(port) as (reader, writer):
            # The body is fine; the trailer section grows, a read at a time.
            await send(writer, head + chunk(b"fine") + b"0\r\nX-Trailer: ")
            for _ in range(MAX_HEAD // 8192 + 2):
                await asyncio.sleep(0.01)  # separate reads
                await send(writer, b"a" * 8192)
            reply = await read_reply(reader)
            assert reply.status == 431 and reply.closes
            assert f"over {MAX_HEAD} bytes" in reply.json()["error"]
            assert await rest(reader) == b""
        async with connect(port) as (reader, writer):
            # One-byte chunks: their framing adds up to more than MAX_HEAD, and is allowed.
            n = MAX_HEAD // 5 + 1000
            chunks = [chunk(b"x") for _ in range(n)]
            await send(writer, head)
            for start in range(0, n, 1000):
                await asyncio.sleep(0.005)
                await send(writer, b"".join(chunks[start : start + 1000]))
            await send(writer, b"0\r\nX-Checksum: small\r\n\r\n")
            reply = await read_reply(reader)
            assert (reply.status, reply.json()) == (200, {"path": "/t", "size": n})
            assert not reply.closes
            await send(writer, post("/after", b"{}"))
            assert (await read_reply(reader)).json() == {"path": "/after", "size": 2}


async def test_an_upgrade_request_with_a_body_is_400_and_never_handled() -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return sized(request)

    upgrade = ("Host: test", "Connection: Upgrade", "Upgrade: h2c")
    with_length = request("/p", *upgrade, "Content-Length: 5", method="POST")
    chunked = request("/p", *upgrade, "Transfer-Encoding: chunked", method="POST")
    chunked_body = chunk(b"hello") + b"0\r\n\r\n"
    async with http_server(handler) as (_, port):
        # Whole in one read, and the head before the body.
        for pieces in (
            (with_length + b"hello",),
            (with_length, b"hello"),
            (chunked + chunked_body,),
            (chunked, chunked_body),
        ):
            async with connect(port) as (reader, writer):
                for piece in pieces:
                    await send(writer, piece)
                    await asyncio.sleep(0.05)
                reply = await read_reply(reader)
                assert reply.status == 400 and reply.closes, pieces
                assert "upgrades are not supported" in reply.json()["error"]
                assert await rest(reader) == b""
        assert seen == []  # above all, never handled as if its body were empty
        async with connect(port) as (reader, writer):
            await send(writer, post("/p", b"hello"))
            assert (await read_reply(reader)).json() == {"path": "/p", "size": 5}
        assert seen == [Request("POST", "/p", b"hello")]


async def test_http_1_0_keep_alive_is_answered_and_closed() -> None:
    async with http_server(ok) as (_, port), connect(port) as (reader, writer):
        keep_alive = request("/a", "Connection: keep-alive", version="1.0")
        await send(writer, keep_alive + request("/b", "Connection: keep-alive", version="1.0"))
        reply = await read_reply(reader)
        assert (reply.status, reply.json()) == (200, {"path": "/a"})
        assert reply.closes
        assert await rest(reader) == b""  # "/b" is not answered


async def test_an_owed_100_continue_is_sent_after_the_answers_before_it() -> None:
    async def slow() -> Response:
        await asyncio.sleep(0.3)
        return Response(200, b'{"path": "/slow", "size": 0}')

    def handler(request: Request) -> Response | Awaitable[Response]:
        return slow() if request.path == "/slow" else sized(request)

    body = b'{"x": 1}'
    expecting = post("/p", body, "Expect: 100-continue")
    async with http_server(handler) as (_, port):
        async with connect(port) as (reader, writer):
            await send(writer, get("/slow") + expecting[: -len(body)])
            # Sent before the first answer, a 100 would read as that answer's interim one.
            first = await read_reply(reader)
            assert first.json() == {"path": "/slow", "size": 0} and not first.closes
            interim = await read_reply(reader)
            assert (interim.status, interim.headers) == (100, {})
            await send(writer, body)
            assert (await read_reply(reader)).json() == {"path": "/p", "size": len(body)}
            # No second 100 anywhere: the next read is the next answer.
            await send(writer, get("/q"))
            assert (await read_reply(reader)).json() == {"path": "/q", "size": 0}
        async with connect(port) as (reader, writer):
            # The body already sent: no 100 is owed once the request is whole.
            await send(writer, get("/slow") + expecting + get("/q"))
            assert (await read_reply(reader)).json() == {"path": "/slow", "size": 0}
            assert (await read_reply(reader)).json() == {"path": "/p", "size": len(body)}
            assert (await read_reply(reader)).json() == {"path": "/q", "size": 0}
            # Nor later, once the connection is idle: the next read is the next answer.
            await send(writer, get("/r"))
            assert (await read_reply(reader)).json() == {"path": "/r", "size": 0}


# -- handler bugs ---------------------------------------------------------------------------------


async def test_an_answer_that_cannot_be_written_drops_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def nothing() -> Response:
        await asyncio.sleep(0.01)
        return cast(Response, None)

    def handler(request: Request) -> Response | Awaitable[Response]:
        if request.path == "/str":
            return Response(200, cast(bytes, '{"not": "bytes"}'))
        if request.path == "/none":
            return nothing()
        return ok(request)

    with caplog.at_level(logging.ERROR, logger="modelops.serving.http"):
        async with http_server(handler) as (http, port):
            for path in ("/str", "/none"):
                async with connect(port) as (reader, writer):
                    await send(writer, get("/a"))
                    assert (await read_reply(reader)).json() == {"path": "/a"}
                    await send(writer, get(path) + get("/b"))
                    try:
                        after = await rest(reader)
                    except ConnectionResetError:
                        after = b""
                    assert after == b"", after  # dropped: no answer, not "/b"'s either
            async with connect(port) as (reader, writer):
                await send(writer, get("/c"))
                assert (await read_reply(reader)).json() == {"path": "/c"}
                assert len(http.connections) == 1
    failed = [
        r.getMessage()
        for r in caplog.records
        if r.name == "modelops.serving.http" and r.levelno >= logging.ERROR
    ]
    assert failed == [
        "GET /str: the answer could not be written",
        "GET /none: the answer could not be written",
    ]


async def test_a_sync_handler_that_returns_no_answer_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: Request) -> Response:
        return cast(Response, None) if request.path == "/none" else ok(request)

    with caplog.at_level(logging.ERROR, logger="modelops.serving.http"):
        async with http_server(handler) as (_, port), connect(port) as (reader, writer):
            await send(writer, get("/none") + get("/after"))
            reply = await read_reply(reader)
            assert reply.status == 500 and reply.json() == {"error": "internal server error"}
            assert (await read_reply(reader)).json() == {"path": "/after"}
    assert any("/none failed" in r.getMessage() for r in caplog.records)


# -- limits and the binary tensor extension on the wire ----------------------------------------


async def test_a_request_line_over_the_bound_in_one_write_is_431_without_the_path(
    iris: Iris,
) -> None:
    async with model_server(iris) as port:
        for target in ("/v2/" + "a" * (100 * 1024), "/v2/models/iris?" + "q" * (MAX_HEAD + 1)):
            async with connect(port) as (reader, writer):
                await send(writer, get(target))
                reply = await read_reply(reader)
                assert reply.status == 431 and reply.closes
                assert len(reply.body) < 200 and "aaaa" not in reply.json()["error"]
        async with connect(port) as (reader, writer):
            many = [f"X-H{i}: {'v' * 100}" for i in range(MAX_HEAD // 100)]
            await send(writer, get("/v2/health/live", *many))
            assert (await read_reply(reader)).status == 431


async def test_a_404_does_not_echo_a_long_path(iris: Iris) -> None:
    async with model_server(iris) as port, connect(port) as (reader, writer):
        await send(writer, get("/nowhere/" + "b" * 20_000))
        reply = await read_reply(reader)
        assert reply.status == 404 and len(reply.body) < 400
        assert "20009 characters" in reply.json()["error"]


async def test_binary_request_and_response_on_the_wire(iris: Iris) -> None:
    rows = np.asarray(ROWS, dtype=np.float64)
    header = json.dumps(
        {
            "id": "b1",
            "inputs": [
                {
                    "name": "x",
                    "shape": list(rows.shape),
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + rows.astype("<f8").tobytes()
    async with model_server(iris) as port, connect(port) as (reader, writer):
        await send(
            writer,
            post("/v2/models/iris/infer", body, f"Inference-Header-Content-Length: {len(header)}"),
        )
        reply = await read_reply(reader)
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"] == "application/octet-stream"
        length = int(reply.headers["inference-header-content-length"])
        answer = json.loads(reply.body[:length])
        assert answer["id"] == "b1"
        (out,) = answer["outputs"]
        assert (
            "data" not in out and out["parameters"]["binary_data_size"] == len(reply.body) - length
        )
        raw, labels = reply.body[length:], []
        while raw:
            n = int.from_bytes(raw[:4], "little")
            labels.append(raw[4 : 4 + n].decode())
            raw = raw[4 + n :]
        assert labels == SPECIES
        # A header length that is not a number, or past the body: 400 with a message.
        for bad in ("ten", str(len(body) + 1)):
            await send(
                writer,
                post("/v2/models/iris/infer", body, f"Inference-Header-Content-Length: {bad}"),
            )
            reply = await read_reply(reader)
            assert (
                reply.status == 400 and "Inference-Header-Content-Length" in reply.json()["error"]
            )
