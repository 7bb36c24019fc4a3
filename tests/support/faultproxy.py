"""A fault-injecting HTTPS proxy in front of the real API server.

Clients (the operator, with a ServiceAccount bearer token) talk to the proxy as if it were the
API server: it serves TLS with a certificate the cluster CA signed for 127.0.0.1, forwards each
request with its headers (``Authorization`` included) to the real server, and streams the answer
back (watches included). Faults are injected by rules:

- ``fail(status, ...)``: answer with a Kubernetes ``Status`` of that code instead of forwarding
  (``Retry-After`` on 429/503), for matching requests, with a probability, a number of times;
  with ``forward=True`` the request is forwarded first and its answer replaced (the write
  happened, its answer was lost: a client's retry of a create then meets 409 AlreadyExists);
- ``drop_watches()``: cut every open watch stream (as a restarting API server does);
- ``delay(seconds, ...)``: hold matching requests before forwarding them.

Every injected fault is counted in ``injected`` by kind, and every forwarded request in
``requests`` by Kubernetes verb and resource (:func:`kube_verb`), with the seconds the API
server took to answer them (to the response's headers; watches excluded) in ``seconds`` and
their status codes in ``statuses``: with no rule the proxy is a pass-through request counter
(``tests/bench/bench_operator.py``). Runs in its own thread and loop so a synchronous test can
use it too.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

# The reason a real API server gives with each code (metav1.StatusReason).
_REASONS = {
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


def kube_verb(method: str, path: str, watch: bool) -> tuple[str, str]:
    """The Kubernetes verb and resource of a request, as the API server's audit names them:
    ``(verb, resource)`` with verb in get, list, watch, create, update, patch, delete,
    deletecollection; ``("get", "")`` for non-resource paths (``/version``, discovery).
    A subresource is ``resource/sub`` (``deployments/status``)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        parts = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        parts = parts[3:]
    else:
        return "get", ""
    if len(parts) >= 3 and parts[0] == "namespaces":
        parts = parts[2:]  # a namespaced resource; ["namespaces", name] is a Namespace itself
    if not parts:
        return "get", ""
    named = len(parts) >= 2
    resource = "/".join(parts[:1] + parts[2:3])
    if method == "GET":
        verb = "watch" if watch else ("get" if named else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
        if method == "DELETE":
            verb = "delete" if named else "deletecollection"
    return verb, resource


@dataclass
class Rule:
    """Answer ``status`` to requests whose method and path match, with ``probability``."""

    status: int
    method: str = ".*"
    path: str = ".*"
    probability: float = 1.0
    times: int | None = None  # None: until removed
    delay: float = 0.0  # seconds; with status 0, a pure delay
    forward: bool = False  # forward the request, then answer ``status`` instead of its answer
    hits: int = field(default=0)

    def matches(self, method: str, path: str, rng: random.Random) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if not (re.fullmatch(self.method, method) and re.search(self.path, path)):
            return False
        return rng.random() < self.probability


class FaultProxy:
    def __init__(
        self, upstream: str, ca_file: str, cert_file: str, key_file: str, *, seed: int = 0
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.cert_file, self.key_file = cert_file, key_file
        self.rng = random.Random(seed)
        self.rules: list[Rule] = []
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.requests: Counter[tuple[str, str]] = Counter()  # forwarded, by (verb, resource)
        self.seconds: Counter[tuple[str, str]] = Counter()  # their upstream time, summed
        self.statuses: Counter[int] = Counter()  # their answers' status codes
        self.port = 0
        self._watches: set[web.StreamResponse] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- rules (thread-safe enough: list appends and reads under the GIL) --

    def fail(self, status: int, **match: object) -> Rule:
        rule = Rule(status=status, **match)  # type: ignore[arg-type]
        self.rules.append(rule)
        return rule

    def delay(self, seconds: float, **match: object) -> Rule:
        rule = Rule(status=0, delay=seconds, **match)  # type: ignore[arg-type]
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def drop_watches(self) -> int:
        """Cut every open watch stream; returns how many were cut."""
        future = asyncio.run_coroutine_threadsafe(self._drop(), self._loop)
        return future.result(10)

    # -- lifecycle --

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        upstream_tls = ssl.create_default_context(cafile=self.ca_file)
        self._session = aiohttp.ClientSession(
            # No connection limit of its own (aiohttp's is 100): the client's pool decides.
            connector=aiohttp.TCPConnector(ssl=upstream_tls, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(self.cert_file, self.key_file)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=serving)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        await self._drop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _drop(self) -> int:
        watches = list(self._watches)
        for response in watches:
            if response.task is not None:
                response.task.cancel()
        self.injected["dropped watch"] += len(watches)
        return len(watches)

    # -- the proxy --

    def _rule(self, method: str, path: str) -> Rule | None:
        for rule in list(self.rules):
            if rule.matches(method, path, self.rng):
                rule.hits += 1
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._rule(request.method, request.path_qs)
        if rule is not None and rule.delay:
            self.injected["delay"] += 1
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.status:
            if rule.forward:
                await self._forward_unanswered(request)
            self.injected[str(rule.status) + (" after forwarding" if rule.forward else "")] += 1
            headers = {"Retry-After": "1"} if rule.status in (429, 503) else {}
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"injected by the fault proxy ({rule.status})",
                    # A 409 to a create is AlreadyExists; to any other write, Conflict.
                    "reason": "AlreadyExists"
                    if (rule.status, request.method) == (409, "POST")
                    else _REASONS.get(rule.status, ""),
                    "code": rule.status,
                },
                status=rule.status,
                headers=headers,
            )
        return await self._forward(request)

    async def _forward_unanswered(self, request: web.Request) -> None:
        """Send the request upstream and drop the server's answer (a write whose answer was
        lost on the way back)."""
        assert self._session is not None
        self.forwarded += 1
        self.requests[kube_verb(request.method, request.path, False)] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            await upstream.read()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.forwarded += 1
        watch = request.query.get("watch") in ("true", "1")
        verb = kube_verb(request.method, request.path, watch)
        self.requests[verb] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        sent = time.monotonic()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            self.statuses[upstream.status] += 1
            if not watch:
                self.seconds[verb] += time.monotonic() - sent
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers[key] = value
            await response.prepare(request)
            if watch:
                self._watches.add(response)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            finally:
                self._watches.discard(response)
            await response.write_eof()
            return response
