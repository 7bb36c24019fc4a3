"""A Service's loopback address: round-robin over the ready pods behind one Service port.

HTTP ports (named ``http*`` or with ``appProtocol: http``) get a small reverse proxy that
balances each request, not each connection, and tries the next pod when one refuses or drops
the connection before answering (a pod that just stopped): clients see no errors while pods
come and go. Other ports get a plain TCP relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

logger = logging.getLogger(__name__)

Endpoints = Callable[[], list[int]]  # the loopback ports of the ready pods, right now

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


class ServiceProxy:
    """Listens on a free loopback port; ``port`` is known once ``start`` returns."""

    def __init__(self, label: str, endpoints: Endpoints, *, http: bool) -> None:
        self.label = label  # "<namespace>/<service>:<port>", for messages
        self.endpoints = endpoints
        self.http = http
        self.port = 0
        self.requests = 0
        self.retries = 0
        self._turn = itertools.count()
        self._runner: web.BaseRunner | None = None
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None

    def _order(self) -> list[int]:
        ports = sorted(self.endpoints())
        if not ports:
            return []
        first = next(self._turn) % len(ports)
        return ports[first:] + ports[:first]

    async def start(self) -> int:
        if self.http:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=2, sock_read=300),
                auto_decompress=False,
            )
            self._runner = web.ServerRunner(web.Server(self._forward), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(self._runner.addresses[0][1])
        else:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
            self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._session is not None:
            await self._session.close()

    # -- HTTP --

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._session is not None
        self.requests += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        order = self._order()
        last_error = "no ready endpoints"
        for attempt, port in enumerate(order):
            if attempt:
                self.retries += 1
            url = f"http://127.0.0.1:{port}{request.raw_path}"
            try:
                async with self._session.request(
                    request.method, url, data=body, headers=headers, allow_redirects=False
                ) as upstream:
                    payload = await upstream.read()
                    reply = {
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    return web.Response(status=upstream.status, body=payload, headers=reply)
            except aiohttp.ClientConnectionError as exc:
                # Refused, or dropped before an answer: a pod going away. Try the next one.
                last_error = f"127.0.0.1:{port}: {exc!r}"
        message = f"service {self.label}: {last_error}"
        return web.json_response({"error": message}, status=503)

    # -- TCP --

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for port in self._order():
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                self.retries += 1
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
