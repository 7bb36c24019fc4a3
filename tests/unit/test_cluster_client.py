"""The operator's API client against a scripted HTTP server: retries, Retry-After, re-login
(kubeconfig token files and exec plugins), kubeconfig contexts, SSA, and the watch (resume,
bookmarks, 410, back-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kopf
import pytest
from aiohttp import web

from modelops.controllers.cluster import (
    ApiError,
    Cluster,
    WatchEvent,
    _from_kubeconfig,
    kubeconfig_files,
)
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


def stream(*events: dict[str, Any]) -> Answer:
    """A watch answer: the events as JSON lines, then the end of the stream."""
    lines = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    return lambda _: web.Response(body=lines, content_type="application/json")


def configmap(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


def listed(rv: str, *items: dict[str, Any]) -> Answer:
    return ok({"kind": "ConfigMapList", "metadata": {"resourceVersion": rv}, "items": list(items)})


def query(seen: tuple[str, str, dict[str, str], bytes]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(seen[1]).query).items()}


async def watched(api: Cluster, count: int, **options: Any) -> list[WatchEvent]:
    """The first ``count`` events of a watch of ConfigMaps in ``ns``."""
    got: list[WatchEvent] = []
    async with contextlib.aclosing(api.watch("v1", "ConfigMap", "ns", **options)) as events:
        async for event in events:
            got.append(event)
            if len(got) == count:
                break
    return got


def kubeconfig(path: Path, url: str, user: dict[str, Any]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return path


def exec_user(plugin: Path) -> dict[str, Any]:
    """A kubeconfig user whose credentials come from running ``plugin`` with Python."""
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }


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


async def test_an_api_error_carries_the_status_reason(server: tuple[Script, str]) -> None:
    script, url = server
    script.answers = [
        lambda _: web.json_response({"kind": "Status", "reason": "Invalid"}, status=422)
    ]
    api = client(url)
    try:
        with pytest.raises(ApiError) as failed:
            await api.patch("v1", "ConfigMap", "ns", "x", {"data": {"a": 1}})
    finally:
        await api.close()
    assert (failed.value.status, failed.value.reason) == (422, "Invalid")


async def test_a_rotated_kubeconfig_token_file_is_read_again_after_a_401(
    server: tuple[Script, str], tmp_path: Path
) -> None:
    script, url = server
    token = tmp_path / "token"
    token.write_text("first\n")
    api = Cluster.from_kubeconfig(kubeconfig(tmp_path / "config", url, {"tokenFile": str(token)}))
    script.answers = [ok({}), status(401), ok({})]
    try:
        await api.get("v1", "ConfigMap", "ns", "x")
        token.write_text("rotated")  # the old token is refused from now on
        await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    sent = [headers["Authorization"] for _, _, headers, _ in script.seen]
    assert sent == ["Bearer first", "Bearer first", "Bearer rotated"]
    assert api.namespace == "ml"


async def test_an_exec_credential_is_kept_until_the_server_refuses_it(
    server: tuple[Script, str], tmp_path: Path
) -> None:
    script, url = server
    runs, token = tmp_path / "runs", tmp_path / "token"
    token.write_text("one")
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, pathlib, sys\n"
        f"pathlib.Path({str(runs)!r}).open('a').write('run\\n')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', "
        f"'status': {{'token': pathlib.Path({str(token)!r}).read_text()}}}}))\n"
    )
    api = Cluster.from_kubeconfig(kubeconfig(tmp_path / "config", url, exec_user(plugin)))
    script.answers = [ok({}), ok({}), status(401), ok({})]
    try:
        await api.get("v1", "ConfigMap", "ns", "x")
        await api.get("v1", "ConfigMap", "ns", "x")
        token.write_text("two")
        await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    sent = [headers["Authorization"] for _, _, headers, _ in script.seen]
    assert sent == ["Bearer one", "Bearer one", "Bearer one", "Bearer two"]
    assert runs.read_text().count("run") == 2


async def test_an_expiring_exec_credential_is_renewed_before_it_is_sent(
    server: tuple[Script, str], tmp_path: Path
) -> None:
    script, url = server
    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    # Each run gives a new token valid for one minute: within the five minutes the library
    # keeps to spare, so every use finds it expiring and runs the plugin again.
    plugin.write_text(
        "import datetime, json, pathlib\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = len(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text('x' * n)\n"
        "expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', 'status': {'token': f't{n}', "
        "'expirationTimestamp': expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}}))\n"
    )
    api = Cluster.from_kubeconfig(kubeconfig(tmp_path / "config", url, exec_user(plugin)))
    script.answers = [ok({}), ok({})]
    try:
        await api.get("v1", "ConfigMap", "ns", "x")
        await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    sent = [headers["Authorization"] for _, _, headers, _ in script.seen]
    assert sent == ["Bearer t2", "Bearer t3"]  # t1: the login, before the first call


async def test_a_failing_exec_plugin_is_an_api_error_with_no_answer(
    server: tuple[Script, str], tmp_path: Path
) -> None:
    script, url = server
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import sys\nsys.exit('no credentials for you')\n")
    api = Cluster.from_kubeconfig(kubeconfig(tmp_path / "config", url, exec_user(plugin)))
    try:
        with pytest.raises(ApiError) as failed:
            await api.get("v1", "ConfigMap", "ns", "x")
    finally:
        await api.close()
    assert failed.value.status == 0 and "no credentials for you" in str(failed.value)
    assert script.seen == []


def test_no_service_account_and_no_kubeconfig_is_a_login_error(tmp_path: Path) -> None:
    with pytest.raises(kopf.LoginError, match="no kubeconfig at"):
        Cluster.login(environ={"KUBECONFIG": str(tmp_path / "absent")})


def contexts(path: Path, url: str, bob: dict[str, Any]) -> Path:
    """Two contexts: ``a`` (current), alice on cluster ``one`` (https, its CA and alice's
    certificate named relative to the kubeconfig), no namespace; ``b``, ``bob`` on cluster
    ``two`` at ``url``, namespace ``shop``."""
    for name in ("ca.crt", "alice.crt", "alice.key"):
        (path.parent / name).write_text("")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "a",
        "clusters": [
            {"name": "one",
             "cluster": {"server": "https://one:6443/", "certificate-authority": "ca.crt"}},
            {"name": "two", "cluster": {"server": url}},
        ],
        "users": [
            {"name": "alice",
             "user": {"client-certificate": "alice.crt", "client-key": "alice.key",
                      "token": "alice-token"}},
            {"name": "bob", "user": bob},
        ],
        "contexts": [
            {"name": "a", "context": {"cluster": "one", "user": "alice"}},
            {"name": "b", "context": {"cluster": "two", "user": "bob", "namespace": "shop"}},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(config))
    return path


async def test_a_named_context_gives_its_server_user_and_namespace(
    server: tuple[Script, str], tmp_path: Path
) -> None:
    script, url = server
    path = contexts(tmp_path / "config", url, {"token": "bob-token"})
    api = Cluster.from_kubeconfig(path, context="b")
    assert (api.server, api.namespace) == (url, "shop")  # known before logging in
    script.answers = [ok({})]
    try:
        await api.get("v1", "ConfigMap", "shop", "x")
    finally:
        await api.close()
    assert [(p, h["Authorization"]) for _, p, h, _ in script.seen] == [
        ("/api/v1/namespaces/shop/configmaps/x", "Bearer bob-token")
    ]
    assert (api.server, api.namespace) == (url, "shop")


async def test_without_a_context_the_current_one_is_used(
    server: tuple[Script, str], tmp_path: Path
) -> None:
    _, url = server
    path = contexts(tmp_path / "config", url, {"token": "bob-token"})
    api = Cluster.from_kubeconfig(path)
    assert (api.server, api.namespace) == ("https://one:6443", None)
    config = await _from_kubeconfig(str(path), "a")  # what it logs in with
    assert (config.host, config.api_key["BearerToken"]) == (
        "https://one:6443",
        "Bearer alice-token",
    )
    # files named in the kubeconfig are relative to it
    assert (config.ssl_ca_cert, config.cert_file) == (
        str(tmp_path / "ca.crt"),
        str(tmp_path / "alice.crt"),
    )


async def test_a_named_contexts_exec_plugin_gives_the_token(
    server: tuple[Script, str], tmp_path: Path
) -> None:
    script, url = server
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', 'status': {'token': 'from-exec'}}))\n"
    )
    api = Cluster.from_kubeconfig(contexts(tmp_path / "config", url, exec_user(plugin)), "b")
    script.answers = [ok({})]
    try:
        await api.get("v1", "ConfigMap", "shop", "x")
    finally:
        await api.close()
    assert [h["Authorization"] for _, _, h, _ in script.seen] == ["Bearer from-exec"]


def test_an_unknown_context_is_named_with_those_there_are(tmp_path: Path) -> None:
    path = contexts(tmp_path / "config", "http://127.0.0.1:1", {})
    with pytest.raises(kopf.LoginError) as failed:
        Cluster.from_kubeconfig(path, context="nope")
    assert str(failed.value) == f"context 'nope' is not in kubeconfig {path} (its contexts: a, b)"
    config = json.loads(path.read_text())
    del config["current-context"]
    path.write_text(json.dumps(config))
    with pytest.raises(kopf.LoginError, match=r"has no current-context.*: a, b$"):
        Cluster.from_kubeconfig(path)
    assert Cluster.from_kubeconfig(path, context="b").namespace == "shop"


def test_merged_kubeconfigs_take_the_first_current_context_and_name(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "first", "http://first", {"token": "1"})
    second = contexts(tmp_path / "second", "http://second", {})
    merged = os.pathsep.join(map(str, [tmp_path / "absent", first, second]))
    assert Cluster.from_kubeconfig(merged).server == "http://first"  # current-context x
    assert Cluster.from_kubeconfig(merged, "b").server == "http://second"


def test_the_kubeconfig_files_are_kubectls(tmp_path: Path) -> None:
    env = {"KUBECONFIG": f"a{os.pathsep}b"}
    assert kubeconfig_files("given", env) == "given"
    assert kubeconfig_files(None, env) == f"a{os.pathsep}b"
    assert kubeconfig_files(None, {}) == str(Path.home() / ".kube" / "config")


async def test_a_watch_lists_then_resumes_from_the_last_event_without_listing_again(
    server: tuple[Script, str],
) -> None:
    script, url = server
    script.answers = [
        listed("10", configmap("a", "9")),
        stream({"type": "ADDED", "object": configmap("b", "11")}),  # then the stream ends
        stream({"type": "MODIFIED", "object": configmap("b", "12")}),
    ]
    api = client(url)
    try:
        events = await watched(api, 3)
    finally:
        await api.close()
    assert [(e.type, e.object.get("items", [e.object])[0]["metadata"]["resourceVersion"])
            for e in events] == [("LISTED", "9"), ("ADDED", "11"), ("MODIFIED", "12")]  # fmt: skip
    watches = [query(seen) for seen in script.seen[1:]]
    assert [w["watch"] for w in watches] == ["true", "true"]
    assert [w["resourceVersion"] for w in watches] == ["10", "11"]


async def test_a_bookmark_moves_the_resource_version_without_an_event(
    server: tuple[Script, str],
) -> None:
    script, url = server
    script.answers = [
        stream({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}),
        stream({"type": "ADDED", "object": configmap("b", "16")}),
    ]
    api = client(url)
    try:
        events = await watched(api, 1, resource_version="10")
    finally:
        await api.close()
    assert [e.type for e in events] == ["ADDED"]
    assert [query(seen)["resourceVersion"] for seen in script.seen] == ["10", "15"]
    assert query(script.seen[0])["allowWatchBookmarks"] == "true"


@pytest.mark.parametrize(
    "gone",
    [
        stream({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}),
        status(410),
    ],
    ids=["in-the-stream", "as-the-answer"],
)
async def test_410_gone_lists_again(server: tuple[Script, str], gone: Answer) -> None:
    script, url = server
    script.answers = [listed("10", configmap("a", "9")), gone, listed("20", configmap("b", "19"))]
    api = client(url)
    try:
        events = await watched(api, 2)
    finally:
        await api.close()
    assert [e.type for e in events] == ["LISTED", "LISTED"]
    assert [i["metadata"]["name"] for i in events[1].object["items"]] == ["b"]
    assert "watch" not in query(script.seen[2])


@pytest.mark.parametrize(
    "failure", [status(403), stream()], ids=["refused", "closed-at-once-with-nothing"]
)
async def test_a_failing_watch_is_retried_after_a_growing_back_off(
    server: tuple[Script, str], failure: Answer
) -> None:
    script, url = server
    script.answers = [failure, failure, stream({"type": "ADDED", "object": configmap("b", "11")})]
    api = client(url)
    started = time.monotonic()
    try:
        events = await watched(api, 1, resource_version="10")
    finally:
        await api.close()
    assert [e.type for e in events] == ["ADDED"] and len(script.seen) == 3
    # 0.2 s, then 0.4 s, each jittered by -50 % at most
    assert time.monotonic() - started >= 0.3


async def test_a_watch_survives_an_unreachable_server() -> None:
    api = client("http://127.0.0.1:9")  # nothing listens on the discard port
    task = asyncio.create_task(watched(api, 1, max_backoff=0.05))
    try:
        await asyncio.sleep(0.5)
        assert not task.done()  # still trying
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


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
