"""The one module that talks to the Kubernetes API (besides Kopf itself).

It logs in the way Kopf does (service account, else kubeconfig) and speaks plain REST with
aiohttp: get, list by labels, create-if-absent, server-side apply of children (field manager
``modelops``), merge-patch of objects and of their status.

Every call survives what a busy or restarting API server does: 429 and 5xx answers and
dropped connections are retried with jittered exponential back-off, honouring
``Retry-After`` (API conventions, "Retry-After" on 429/503); a POST is retried only on 429 and
503, which the server sends before acting, so a create is never sent twice after it may have
happened. A 401 logs in again once (a rotated service-account token is re-read) and repeats
the call.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib  # `json` is the request-body parameter below
import random
import ssl
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import kopf

JsonDict = dict[str, Any]

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
    "ResourceQuota": "resourcequotas",
    "Event": "events",
    "Lease": "leases",
    "TrainingRun": "trainingruns",
    "ModelVersion": "modelversions",
    "DriftMonitor": "driftmonitors",
}


FIELD_MANAGER = "modelops"
RETRIED = frozenset({429, 500, 502, 503, 504})
RETRIED_POST = frozenset({429, 503})  # refused before the server acted: safe to send again
BACKOFFS = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds before each retry, jittered by +-50 %
RETRY_AFTER_MAX = 30.0


class ApiError(Exception):
    """The API server answered 4xx/5xx (``status``), or gave no answer (``status`` 0)."""

    def __init__(self, status: int, body: str) -> None:
        what = f"answered {status}" if status else "gave no answer"
        super().__init__(f"Kubernetes API {what}: {body[:300]}")
        self.status = status
        self.body = body


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = _PLURALS[kind]
    url = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{url}/{name}" if name else url


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """TLS for the API server: its CA, and our client certificate when we log in with one.

    Kubeconfig ``*-data`` fields are base64 of PEM; the key is written only to a private
    directory that is removed once loaded (``ssl`` loads a chain only from files).
    """
    if info.insecure:
        return False
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=_pem(info.ca_data).decode() if info.ca_data else None,
    )
    if info.certificate_data and info.private_key_data:
        with tempfile.TemporaryDirectory() as private:
            cert, key = Path(private) / "tls.crt", Path(private) / "tls.key"
            cert.write_bytes(_pem(info.certificate_data))
            key.touch(mode=0o600)
            key.write_bytes(_pem(info.private_key_data))
            context.load_cert_chain(str(cert), str(key))
    elif info.certificate_path:
        key_path = str(info.private_key_path) if info.private_key_path else None
        context.load_cert_chain(str(info.certificate_path), key_path)
    return context


def _pem(data: str | bytes) -> bytes:
    raw = data if isinstance(data, bytes) else data.encode()
    return raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)


def _json(text: str) -> JsonDict:
    result: JsonDict = jsonlib.loads(text) if text else {}
    return result


class Cluster:
    """A small async REST client; one per operator process.

    ``relogin`` returns fresh credentials (called after a 401); ``backoffs`` are the delays in
    seconds before each retry of a retried answer.
    """

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        relogin: Callable[[], kopf.ConnectionInfo | None] | None = None,
        backoffs: Sequence[float] = BACKOFFS,
    ) -> None:
        self._relogin = relogin
        self.backoffs = tuple(backoffs)
        self.retries = 0  # calls repeated after a retried answer or a dropped connection
        self._connect(info)

    def _connect(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json", **info.as_http_headers()}
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info))
        self.session = aiohttp.ClientSession(
            headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        )

    @classmethod
    def login(cls, settings: kopf.OperatorSettings) -> Cluster:
        def fresh() -> kopf.ConnectionInfo | None:
            return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
                settings=settings
            )

        info = fresh()
        if info is None:
            raise kopf.LoginError("no service account and no kubeconfig to log in with")
        return cls(info, relogin=fresh)

    async def close(self) -> None:
        await self.session.close()

    async def _call(
        self, method: str, url: str, *, json: Any = None, content_type: str | None = None
    ) -> JsonDict:
        headers = {"Content-Type": content_type} if content_type else {}
        attempt, relogged = 0, False
        while True:
            try:
                async with self.session.request(
                    method, self.server + url, json=json, headers=headers
                ) as response:
                    status, text = response.status, await response.text()
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                # A POST that may have reached the server is not sent twice.
                if method == "POST" or attempt >= len(self.backoffs):
                    raise ApiError(0, f"{method} {url}: {exc!r}") from exc
                await self._pause(attempt, None)
                attempt += 1
                continue
            if status == 401 and self._relogin is not None and not relogged:
                relogged = True
                if (info := self._relogin()) is not None:
                    await self.session.close()
                    self._connect(info)
                    continue
            retried = RETRIED_POST if method == "POST" else RETRIED
            if status in retried and attempt < len(self.backoffs):
                await self._pause(attempt, retry_after)
                attempt += 1
                continue
            if status >= 400:
                raise ApiError(status, text)
            return _json(text)

    async def request(
        self, method: str, url: str, *, json: Any = None, content_type: str | None = None
    ) -> JsonDict:
        """Any call by path under the server (``/api/v1/...``), with the retries and re-login
        of every other method; raises :class:`ApiError`."""
        return await self._call(method, url, json=json, content_type=content_type)

    async def _pause(self, attempt: int, retry_after: str | None) -> None:
        self.retries += 1
        try:
            delay = min(float(retry_after), RETRY_AFTER_MAX) if retry_after else None
        except ValueError:
            delay = None  # an HTTP-date: fall back to our own back-off
        if delay is None:
            delay = self.backoffs[attempt] * random.uniform(0.5, 1.5)
        await asyncio.sleep(delay)

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> JsonDict | None:
        try:
            return await self._call("GET", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, labels: dict[str, str]
    ) -> list[JsonDict]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        url = path(api_version, kind, namespace)
        if selector:
            url += f"?labelSelector={selector}"
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
            f"{url}?fieldManager={FIELD_MANAGER}&force=true",
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
        try:
            await self._call("DELETE", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
