"""The operator's API client against a scripted HTTP server: retries, Retry-After, re-login, SSA."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import pytest
from aiohttp import web

from modelops.controllers.cluster import ApiError, Cluster
from modelops.controllers.status import finite

Answer = Callable[[web.Request], web.Response]


class Script:
    """Answers requests in order from a list; records method, path, headers and body."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            (request.method, request.path_qs, dict(request.headers), await request.read())
        )
        if not self.answers:
            return web.json_response({"kind": "Status", "message": "unscripted"}, status=500)
        return self.answers.pop(0)(request)


def status(code: int, **headers: str) -> Answer:
    return lambda _: web.json_response(
        {"kind": "Status", "code": code, "message": f"scripted {code}"},
        status=code,
        headers=headers,
    )


def ok(body: dict[str, Any]) -> Answer:
    return lambda _: web.json_response(body)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Script, str]]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield script, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def client(url: str, **options: Any) -> Cluster:
    return Cluster(
        kopf.ConnectionInfo(server=url, insecure=True), backoffs=(0.01, 0.01, 0.01), **options
    )


async def test_503_and_429_are_retried_until_an_answer(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers = [
        status(503),
        status(429),
        ok({"kind": "ConfigMap", "metadata": {"name": "x"}}),
    ]
    api = client(url)
    try:
        found = await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    assert found == {"kind": "ConfigMap", "metadata": {"name": "x"}}
    assert len(script.seen) == 3 and api.retries == 2


async def test_retries_stop_after_the_last_backoff_with_the_server_error(
    server: tuple[Script, str],
) -> None:
    script, url = server
    script.answers = [status(503)] * 4
    api = client(url)
    try:
        with pytest.raises(ApiError) as failed:
            await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    assert failed.value.status == 503 and len(script.seen) == 4


async def test_a_post_is_not_sent_again_after_a_500(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers = [status(500)]
    api = client(url)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "n"}}
    try:
        with pytest.raises(ApiError) as failed:
            await api.create_new(body)
    finally:
        await api.close()
    assert failed.value.status == 500
    assert [m for m, *_ in script.seen] == ["POST"]


async def test_retry_after_is_honoured(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers = [status(429, **{"Retry-After": "1"}), ok({})]
    api = client(url)
    started = time.monotonic()
    try:
        await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    assert time.monotonic() - started >= 1.0


async def test_a_401_logs_in_again_once_with_fresh_credentials(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers = [status(401), ok({"fresh": True})]
    logins = []

    def relogin() -> kopf.ConnectionInfo:
        logins.append(1)
        return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer", token="new-token")

    api = client(url, relogin=relogin)
    try:
        assert await api.get("v1", "ConfigMap", "ns", "x") == {"fresh": True}
    finally:
        await api.close()
    assert logins == [1]
    assert script.seen[1][2]["Authorization"] == "Bearer new-token"


async def test_a_dropped_connection_is_an_api_error_with_no_status() -> None:
    api = client("http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        with pytest.raises(ApiError) as failed:
            await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    assert failed.value.status == 0 and api.retries == 3


async def test_apply_is_one_server_side_apply_patch(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers = [ok({"applied": True})]
    api = client(url)
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"ports": [{"port": 8080}]},
        "status": {"ignored": True},
    }
    try:
        await api.apply(body)
    finally:
        await api.close()
    ((method, path, headers, sent),) = script.seen
    assert (method, path) == (
        "PATCH",
        "/api/v1/namespaces/ml/services/iris?fieldManager=modelops&force=true",
    )
    assert headers["Content-Type"] == "application/apply-patch+yaml"
    assert b'"status"' not in sent


async def test_create_reads_first_and_posts_only_what_is_missing(
    server: tuple[Script, str],
) -> None:
    script, url = server
    existing = {"kind": "Job", "metadata": {"name": "j"}}
    script.answers = [ok(existing)]
    api = client(url)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "n"}}
    try:
        assert await api.create(job) == (existing, False)
    finally:
        await api.close()
    assert [m for m, *_ in script.seen] == ["GET"]


def test_non_finite_numbers_become_null_and_are_counted() -> None:
    status_ = {"metrics": {"r2": float("nan"), "mae": 0.5, "x": [float("inf"), 1]}, "phase": "A"}
    clean, dropped = finite(status_)
    assert clean == {"metrics": {"r2": None, "mae": 0.5, "x": [None, 1]}, "phase": "A"}
    assert dropped == 2


def test_pruned_fields_are_what_the_server_did_not_keep() -> None:
    from modelops.controllers.status import pruned_fields

    written = {"phase": "A", "gone": 1, "nested": {"kept": 1, "lost": 2}, "deleted": None}
    stored = {"phase": "A", "nested": {"kept": 1}, "other": 3}
    assert pruned_fields(written, stored) == ["status.gone", "status.nested.lost"]
    assert pruned_fields({"list": [{"a": 1}]}, {"list": []}) == []  # lists are replaced whole
