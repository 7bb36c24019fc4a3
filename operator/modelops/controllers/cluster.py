"""The one module that talks to the Kubernetes API (besides Kopf itself).

A thin layer over the official client's asyncio port, ``kubernetes_asyncio``. The library
gives the connection and the credentials: its ``ApiClient`` (aiohttp, TLS, client
certificates) and its ``config`` loaders, for kubeconfig files (tokens, ``tokenFile``,
client certificates, exec plugins, OIDC) and for the pod's ServiceAccount in-cluster, whose
projected token it reads again every minute, as the kubelet rotates it. Calls go by path
through ``ApiClient.call_api``, as the library's own dynamic client does: objects stay plain
dicts, and no typed API class is needed.

What we add, and why:

- retries (the library's aiohttp transport has none): 429 and 5xx answers and dropped
  connections are retried with jittered exponential back-off, honouring ``Retry-After`` (API
  conventions, "Retry-After" on 429/503); a POST is retried only on 429 and 503, which the
  server sends before acting, so a create is never sent twice after it may have happened;
- a 401 logs in again once and repeats the call: the library re-reads a ServiceAccount token
  only once a minute and a kubeconfig's ``tokenFile`` or exec credential (without an expiry)
  never, so a token revoked or rotated in between would fail every call until then;
- server-side apply of children (field manager ``modelops``), create-if-absent, merge
  patches of objects and of their status, every answer >= 400 as one :class:`ApiError`;
- one list+watch (:meth:`Cluster.watch`) for the few places that follow a collection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json as jsonlib  # `json` is the request-body parameter below
import logging
import os
import random
import tempfile
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import load_kube_config
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader
from kubernetes_asyncio.config.kube_config import KubeConfigMerger

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
Login = kopf.ConnectionInfo | Configuration
"""Credentials: Kopf's (as its login functions give them) or the library's own."""
Relogin = Callable[[], Login | Awaitable[Login | None] | None]

# plural of each built-in kind the controllers touch, and whether it lives in the core group
_PLURALS = {
    "Job": "jobs",
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ServiceAccount": "serviceaccounts",
    "HTTPRoute": "httproutes",
    "GRPCRoute": "grpcroutes",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "Pod": "pods",
    "Namespace": "namespaces",
    "Node": "nodes",
    "EndpointSlice": "endpointslices",
    "ResourceQuota": "resourcequotas",
    "Event": "events",
    "Lease": "leases",
    "TrainingRun": "trainingruns",
    "ModelVersion": "modelversions",
    "DriftMonitor": "driftmonitors",
}


FIELD_MANAGER = "modelops"
USER_AGENT = "modelops"
RETRIED = frozenset({429, 500, 502, 503, 504})
RETRIED_POST = frozenset({429, 503})  # refused before the server acted: safe to send again
BACKOFFS = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds before each retry, jittered by +-50 %
RETRY_AFTER_MAX = 30.0
REQUEST_TIMEOUT = 30.0  # seconds for one call, from connecting to the last byte
WATCH_SECONDS = 290  # one watch request's server-side timeout, below the server's own cap
WATCH_BACKOFF = 0.2  # seconds before the first reconnect of a failing watch, doubled each time
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """The API server answered 4xx/5xx (``status``), or gave no answer (``status`` 0).

    ``body`` is the answer's text (a ``Status`` object as JSON, usually); ``reason`` its
    CamelCase reason (``NotFound``, ``Conflict``, ``Invalid``, ...; ``Unreachable`` without an
    answer), fit for a condition's reason.
    """

    def __init__(self, status: int, body: str) -> None:
        what = f"answered {status}" if status else "gave no answer"
        super().__init__(f"Kubernetes API {what}: {body[:300]}")
        self.status = status
        self.body = body
        self.reason = _reason(status, body)


def _reason(status: int, body: str) -> str:
    try:
        reason = jsonlib.loads(body).get("reason")
    except (ValueError, AttributeError):
        reason = None
    if isinstance(reason, str) and reason:
        return reason
    if status == 0:
        return "Unreachable"
    try:
        return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        return "Unknown"


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by :meth:`Cluster.watch`.

    ``type`` is a watch event's (``ADDED``, ``MODIFIED``, ``DELETED``; ``object`` is the
    object), or ``LISTED``: the collection was (re)listed and ``object`` is the List
    (``items``, ``metadata.resourceVersion``), which replaces all that was known before, as
    client-go's Reflector replaces its store after a list.
    """

    type: str
    object: JsonDict


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a collection (no ``name``) or of one object, under the server."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = _PLURALS[kind]
    url = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{url}/{name}" if name else url


def _query(url: str, params: Mapping[str, str]) -> str:
    return f"{url}?{urlencode(params)}" if params else url


def _pem(data: str | bytes) -> bytes:
    raw = data if isinstance(data, bytes) else data.encode()
    return raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)


def _json(raw: bytes) -> JsonDict:
    result: JsonDict = jsonlib.loads(raw) if raw else {}
    return result


@contextlib.contextmanager
def _configuration(info: kopf.ConnectionInfo) -> Iterator[Configuration]:
    """Kopf's credentials as the library's ``Configuration``, valid inside the block.

    The ``ssl`` module loads certificates from files only: embedded CA, certificate and key
    data (base64 of PEM in a kubeconfig) are written to a private directory that is removed
    when the block ends, so open the ``ApiClient`` (which loads them) inside it.
    """
    config = Configuration(host=info.server.rstrip("/"))
    config.verify_ssl = not info.insecure
    if header := info.as_http_headers().get("Authorization"):
        config.api_key["BearerToken"] = header  # "Bearer <token>" or "Basic <user:password>"
    with tempfile.TemporaryDirectory(prefix="modelops-tls-") as private:  # mode 0700

        def file(name: str, data: str | bytes | None, given: Any) -> str | None:
            if not data:
                return os.fsdecode(given) if given else None
            target = Path(private) / name
            target.touch(mode=0o600)
            target.write_bytes(_pem(data))
            return str(target)

        config.ssl_ca_cert = file("ca.crt", info.ca_data, info.ca_path)
        config.cert_file = file("tls.crt", info.certificate_data, info.certificate_path)
        config.key_file = file("tls.key", info.private_key_data, info.private_key_path)
        yield config


def _trimmed(config: Configuration) -> Configuration:
    """The token without the whitespace around it, as client-go reads token files (the
    library sends a file's final newline along, which aiohttp refuses in a header), also
    after each of the library's refreshes; a refresh that fails is an :class:`ApiError`."""
    refresh: Any = config.refresh_api_key_hook  # the library types it loosely

    async def trim(configuration: Configuration) -> None:
        try:
            if refresh is not None and inspect.isawaitable(done := refresh(configuration)):
                await done
        except Exception as exc:  # a token file gone, an exec plugin failing
            raise ApiError(0, f"cannot refresh the credentials: {exc!r}") from exc
        if token := configuration.api_key.get("BearerToken"):
            configuration.api_key["BearerToken"] = token.strip()

    config.refresh_api_key_hook = trim
    return config


def _in_cluster(environ: Mapping[str, str], service_account: Path) -> Configuration:
    """The pod's ServiceAccount; the library re-reads its token file every minute."""
    config = Configuration()
    InClusterConfigLoader(
        token_filename=str(service_account / "token"),
        cert_filename=str(service_account / "ca.crt"),
        environ=dict(environ),
    ).load_and_set(config)
    return _trimmed(config)


def kubeconfig_files(
    explicit: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The kubeconfig files to read, as kubectl picks them: ``explicit`` (``--kubeconfig``),
    else ``$KUBECONFIG`` (several files joined by ``os.pathsep``, merged), else
    ``~/.kube/config``; one string, as :meth:`Cluster.from_kubeconfig` takes it."""
    env = os.environ if environ is None else environ
    return str(explicit or env.get("KUBECONFIG") or Path.home() / ".kube" / "config")


def _kubeconfig_context(files: str, context: str | None) -> tuple[str, str | None, str]:
    """The context :meth:`Cluster.from_kubeconfig` logs in with: its name, its namespace (None
    when it names none) and its cluster's server URL.

    The files are merged by the library's own merger, as :func:`load_kube_config` merges them
    (the first file to name a context, cluster or user wins); ``current-context`` is the first
    file's that sets one, as kubectl takes it (the library would take the last). Raises
    ``kopf.LoginError`` naming what is missing or unknown.
    """
    missing = kopf.LoginError(f"no kubeconfig at {files}")
    if not any(Path(f).expanduser().is_file() for f in files.split(os.pathsep) if f):
        raise missing
    try:
        merger = KubeConfigMerger(files)
        if (merged := merger.config) is None:
            raise missing
        contexts = merged["contexts"]
        known = ", ".join(str(c["name"]) for c in contexts.value) or "none"
        current = [
            c["current-context"]
            for c in merger.config_files.values()
            if c and c.get("current-context")
        ]
        name = context or (str(current[0]) if current else "")
        if not name:
            raise kopf.LoginError(
                f"kubeconfig {files} has no current-context; name one of its contexts: {known}"
            )
        if (found := contexts.get_with_name(name, safe=True)) is None:
            raise kopf.LoginError(
                f"context {name!r} is not in kubeconfig {files} (its contexts: {known})"
            )
        spec = found["context"]
        if (cluster := merged["clusters"].get_with_name(spec["cluster"], safe=True)) is None:
            raise kopf.LoginError(
                f"context {name!r} names cluster {spec['cluster']!r}, not in kubeconfig {files}"
            )
        server = str(cluster["cluster"].safe_get("server") or "").rstrip("/")
        namespace = spec.safe_get("namespace")
    except kopf.LoginError:
        raise
    except Exception as exc:  # the library raises ConfigException, KeyError, yaml errors
        raise kopf.LoginError(f"kubeconfig {files}: {exc}") from exc
    return name, str(namespace) if namespace else None, server


async def _from_kubeconfig(files: str, context: str | None = None) -> Configuration:
    """The ``context`` (default: the current one) of the kubeconfig ``files``
    (``os.pathsep``-joined, merged)."""
    config = Configuration()
    loader = await load_kube_config(
        config_file=files, context=context, client_configuration=config, persist_config=False
    )
    if hasattr(loader, "exec_plugin_expiry"):
        # An exec credential that says when it expires: run the plugin again before then (the
        # library checks the expiry, with five minutes to spare, but only when asked).
        lock = asyncio.Lock()

        async def refresh(configuration: Configuration) -> None:
            async with lock:
                await loader.load_from_exec_plugin()
            configuration.api_key["BearerToken"] = loader.token

        config.refresh_api_key_hook = refresh
    return _trimmed(config)


class Cluster:
    """An async client of one API server; one per operator process.

    ``info`` is the credentials to use, or None to log in with ``relogin`` on first use.
    ``relogin`` (sync or async) returns fresh credentials; it is called after a 401, and
    None from it leaves the 401 as the answer. ``backoffs`` are the delays in seconds before
    each retry of a retried answer. No I/O happens until the first call, so a ``Cluster`` can
    be made outside an event loop.

    Every call raises :class:`ApiError` for an answer >= 400 and for no answer (status 0,
    also when logging in fails).
    """

    def __init__(
        self,
        info: Login | None,
        *,
        relogin: Relogin | None = None,
        backoffs: Sequence[float] = BACKOFFS,
    ) -> None:
        self._login = info
        self._relogin = relogin
        self.backoffs = tuple(backoffs)
        self.retries = 0  # calls repeated after a retried answer or a dropped connection
        self.namespace: str | None = None  # the credentials' default namespace, if any
        self.server = ""  # the API server's URL, once known
        if isinstance(info, kopf.ConnectionInfo):
            self.namespace, self.server = info.default_namespace, info.server.rstrip("/")
        elif info is not None:
            self.server = str(info.host or "").rstrip("/")
        self._api: ApiClient | None = None
        self._lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    @classmethod
    def login(
        cls,
        settings: kopf.OperatorSettings | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        service_account: Path = SERVICE_ACCOUNT,
    ) -> Cluster:
        """Log in as Kopf does: the pod's ServiceAccount, else the kubeconfig.

        In-cluster when ``KUBERNETES_SERVICE_HOST``/``PORT`` are set and the ServiceAccount's
        token is mounted (``service_account``: token, ca.crt, namespace); else ``$KUBECONFIG``
        (files joined by ``os.pathsep``, merged) or ``~/.kube/config``. The credentials are
        loaded on first use and again after a 401. ``settings`` is accepted for the callers'
        sake and not needed. Raises ``kopf.LoginError`` when there is neither.
        """
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if host and port and (service_account / "token").is_file():
            cluster = cls(None, relogin=partial(_in_cluster, dict(env), service_account))
            with contextlib.suppress(OSError):
                cluster.namespace = (service_account / "namespace").read_text().strip() or None
            return cluster
        try:
            return cls.from_kubeconfig(kubeconfig_files(environ=env))
        except kopf.LoginError as exc:
            raise kopf.LoginError(f"no service account, and {exc}") from exc

    @classmethod
    def from_kubeconfig(
        cls, files: str | Path | None = None, context: str | None = None
    ) -> Cluster:
        """A context of a kubeconfig, as kubectl picks it; loaded on first use and after a 401.

        ``files``: one path, or several joined by ``os.pathsep`` and merged as kubectl merges
        them (the first file to name a context, cluster or user, or to set
        ``current-context``, wins; missing files are skipped); None: kubectl's default,
        ``$KUBECONFIG``, else ``~/.kube/config`` (:func:`kubeconfig_files`). ``context``: the
        context to use (kubectl's ``--context``); None: ``current-context``. The cluster's
        ``namespace`` is that context's (None when it names none) and ``server`` the URL of
        its cluster. Users log in as the library lets them: token, ``tokenFile``, client
        certificate, basic auth, exec plugin, OIDC.

        Raises ``kopf.LoginError`` (naming the files) when none of the files exists or one
        cannot be read, when the context is unknown (naming it and the contexts there are) or
        there is none, or when it names an unknown cluster.
        """
        files = kubeconfig_files(files)
        name, namespace, server = _kubeconfig_context(files, context)
        cluster = cls(None, relogin=partial(_from_kubeconfig, files, name))
        cluster.namespace, cluster.server = namespace, server
        return cluster

    async def connect(self) -> None:
        """Log in now (calls do it on first use); raises :class:`ApiError` when it fails."""
        await self._client()

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        if self._api is not None:
            await self._api.close()
            self._api = None

    # -- the connection --

    async def _credentials(self) -> Login | None:
        if self._relogin is None:
            return None
        try:
            fresh = self._relogin()
            return await fresh if inspect.isawaitable(fresh) else fresh
        except Exception as exc:  # a plugin or file the library could not read
            raise ApiError(0, f"cannot log in: {exc!r}") from exc

    def _open(self, login: Login) -> ApiClient:
        if isinstance(login, kopf.ConnectionInfo):
            with _configuration(login) as config:
                api = ApiClient(config)
            self.namespace = login.default_namespace or self.namespace
        else:
            api = ApiClient(login)
        api.user_agent = USER_AGENT
        self.server = str(api.configuration.host).rstrip("/")
        return api

    async def _client(self) -> ApiClient:
        if self._api is None:
            async with self._lock:
                if self._api is None:
                    login = self._login or await self._credentials()
                    if login is None:
                        raise ApiError(0, "no credentials to log in with")
                    self._api = self._open(login)
        return self._api

    async def _login_again(self, stale: ApiClient) -> bool:
        """After a 401 through ``stale``: fresh credentials (once, however many calls got the
        401 at the same time); False when there are none."""
        async with self._lock:
            if self._api is not stale:
                return self._api is not None  # another call has logged in again already
            try:
                login = await self._credentials()
            except ApiError as exc:
                logger.warning("logging in again after a 401 failed: %s", exc)
                return False
            if login is None:
                return False
            self._api = self._open(login)
        self._retire(stale)
        return True

    def _retire(self, api: ApiClient) -> None:
        """Close a replaced client once the calls still using it are done."""

        async def close_later() -> None:
            try:
                await asyncio.sleep(REQUEST_TIMEOUT)
            finally:
                await api.close()

        task = asyncio.create_task(close_later(), name="close a replaced API client")
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content_type: str | None = None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """One request, sent again once with fresh credentials after a 401; the answer
        unread (the caller releases it). Raises aiohttp's errors and ``TimeoutError``."""
        headers = {"Accept": "application/json", "Content-Type": content_type or "application/json"}
        relogged = False
        while True:
            api = await self._client()
            response: aiohttp.ClientResponse = await api.call_api(
                url,
                method,
                header_params=dict(headers),
                body=json,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
            if response.status == 401 and not relogged and await self._login_again(api):
                response.release()
                relogged = True
                continue
            return response

    async def _call(
        self, method: str, url: str, *, json: Any = None, content_type: str | None = None
    ) -> JsonDict:
        attempt = 0
        while True:
            try:
                response = await self._send(
                    method,
                    url,
                    json=json,
                    content_type=content_type,
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                )
                async with response:
                    status, raw = response.status, await response.read()
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                # A POST that may have reached the server is not sent twice.
                if method == "POST" or attempt >= len(self.backoffs):
                    raise ApiError(0, f"{method} {url}: {exc!r}") from exc
                await self._pause(attempt, None)
                attempt += 1
                continue
            retried = RETRIED_POST if method == "POST" else RETRIED
            if status in retried and attempt < len(self.backoffs):
                await self._pause(attempt, retry_after)
                attempt += 1
                continue
            if status >= 400:
                raise ApiError(status, raw.decode(errors="replace"))
            return _json(raw)

    async def _pause(self, attempt: int, retry_after: str | None) -> None:
        self.retries += 1
        try:
            delay = min(float(retry_after), RETRY_AFTER_MAX) if retry_after else None
        except ValueError:
            delay = None  # an HTTP-date: fall back to our own back-off
        if delay is None:
            delay = self.backoffs[attempt] * random.uniform(0.5, 1.5)
        await asyncio.sleep(delay)

    # -- calls --

    async def request(
        self, method: str, url: str, *, json: Any = None, content_type: str | None = None
    ) -> JsonDict:
        """Any call by path under the server (``/api/v1/...``), with the retries and re-login
        of every other method; raises :class:`ApiError`."""
        return await self._call(method, url, json=json, content_type=content_type)

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> JsonDict | None:
        """The object, or None when it does not exist."""
        try:
            return await self._call("GET", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, labels: dict[str, str]
    ) -> list[JsonDict]:
        """The objects whose labels include ``labels`` (all of them for ``{}``)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        url = _query(
            path(api_version, kind, namespace), {"labelSelector": selector} if labels else {}
        )
        items: list[JsonDict] = (await self._call("GET", url)).get("items", [])
        # Filter again here: a selector the server ignored must not widen the result.
        return [
            item
            for item in items
            if all(
                item.get("metadata", {}).get("labels", {}).get(k) == v for k, v in labels.items()
            )
        ]

    async def create(self, obj: JsonDict) -> tuple[JsonDict, bool]:
        """Return the existing object, or create it; the flag says whether it was created.

        It reads first: a POST for an object that exists would still be charged to a
        ResourceQuota by admission (403 on every pass once the quota is full).
        """
        meta = obj["metadata"]
        api_version, kind, namespace = obj["apiVersion"], obj["kind"], meta.get("namespace")
        existing = await self.get(api_version, kind, namespace, meta["name"])
        if existing is not None:
            return existing, False
        try:
            return await self._call("POST", path(api_version, kind, namespace), json=obj), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        existing = await self.get(api_version, kind, namespace, meta["name"])
        if existing is None:
            raise ApiError(409, f"{kind} {meta['name']} conflicts but cannot be read")
        return existing, False

    async def apply(self, obj: JsonDict) -> JsonDict:
        """Server-side apply: create the object or make our fields of it what ``obj`` says.

        One PATCH (``application/apply-patch+yaml``, field manager ``modelops``, forced: the
        operator owns its children's fields); fields set by others are left alone. See
        https://kubernetes.io/docs/reference/using-api/server-side-apply/.
        """
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        desired = {k: v for k, v in obj.items() if k != "status"}
        return await self._call(
            "PATCH",
            _query(url, {"fieldManager": FIELD_MANAGER, "force": "true"}),
            json=desired,
            content_type="application/apply-patch+yaml",
        )

    async def create_new(self, obj: JsonDict) -> JsonDict | None:
        """Create the object; None when the name is taken (the API server decides races)."""
        meta = obj["metadata"]
        try:
            return await self._call(
                "POST", path(obj["apiVersion"], obj["kind"], meta.get("namespace")), json=obj
            )
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        body: JsonDict,
        *,
        subresource: str | None = None,
    ) -> JsonDict:
        """A JSON merge patch (RFC 7386) of the object or of its ``subresource``."""
        url = path(api_version, kind, namespace, name)
        if subresource:
            url += f"/{subresource}"
        return await self._call(
            "PATCH", url, json=body, content_type="application/merge-patch+json"
        )

    async def replace(self, obj: JsonDict) -> JsonDict:
        """PUT the whole object (verb ``update``); with ``metadata.resourceVersion`` set, the
        server refuses it with 409 when the object changed since it was read."""
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        return await self._call("PUT", url, json=obj)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete the object; False when it did not exist."""
        try:
            await self._call("DELETE", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        max_backoff: float = 5.0,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Every change of a collection (``namespace`` None: all namespaces), forever.

        List, then watch from the list's resourceVersion (API concepts, "Efficient detection
        of changes"), as client-go's Reflector does: first a ``LISTED`` event (skipped when
        ``resource_version`` is given: the watch starts there), then ``ADDED``, ``MODIFIED``
        and ``DELETED``. A watch request that ends (its ``timeoutSeconds``, a restarting
        server) is resumed from the last resourceVersion seen, which bookmarks move on without
        an event; ``410 Gone`` (that version is compacted away) lists again, so another
        ``LISTED``. Failures (no answer, 5xx, 403, a watch closed at once) are logged and
        retried after a jittered back-off doubling from 0.2 s up to ``max_backoff`` seconds.
        The iterator never ends by itself; close it (``contextlib.aclosing``) to stop.
        """
        collection = path(api_version, kind, namespace)
        selectors = {
            key: value
            for key, value in (("fieldSelector", field_selector), ("labelSelector", label_selector))
            if value
        }
        rv, failures = resource_version, 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if rv is None:
                    listed = await self._call("GET", _query(collection, selectors))
                    rv = str(listed.get("metadata", {}).get("resourceVersion", ""))
                    failures = 0
                    yield WatchEvent("LISTED", listed)
                opened, received = loop.time(), False
                params = {
                    **selectors,
                    "watch": "true",
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(WATCH_SECONDS),
                }
                response = await self._send(
                    "GET",
                    _query(collection, params),
                    timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=WATCH_SECONDS + 30),
                )
                async with response, contextlib.aclosing(_events(response)) as events:
                    if response.status == 410:
                        rv = None
                        continue
                    if response.status != 200:
                        raise ApiError(response.status, await response.text(errors="replace"))
                    async for event in events:
                        received, failures = True, 0
                        kind_, obj = event.get("type"), event.get("object") or {}
                        if kind_ == "ERROR":
                            if obj.get("code") == 410:
                                rv = None
                                break
                            raise ApiError(int(obj.get("code") or 0), jsonlib.dumps(obj))
                        rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                        if kind_ != "BOOKMARK":
                            yield WatchEvent(str(kind_), obj)
                if received or loop.time() - opened >= 1.0:
                    continue
                raise ApiError(0, f"the watch of {collection} ended at once")
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                delay = min(max_backoff, WATCH_BACKOFF * 2**failures * random.uniform(0.5, 1.5))
                failures += 1
                logger.warning("watching %s: %s; again in %.1f s", collection, exc, delay)
                await asyncio.sleep(delay)


async def _events(response: aiohttp.ClientResponse) -> AsyncGenerator[JsonDict, None]:
    """The JSON lines of a watch stream (read in chunks: an event can exceed a line cap)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                event: JsonDict = jsonlib.loads(line)
                yield event
