"""The one module that talks to the Kubernetes API (besides Kopf itself).

It logs in the way Kopf does (service account, else kubeconfig) and speaks plain REST with
aiohttp: get, list by labels, idempotent create, merge-patch of objects and of their status.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
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
    "Pod": "pods",
    "Namespace": "namespaces",
    "Event": "events",
    "TrainingRun": "trainingruns",
    "ModelVersion": "modelversions",
    "DriftMonitor": "driftmonitors",
}


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"Kubernetes API answered {status}: {body[:300]}")
        self.status = status


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = _PLURALS[kind]
    url = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{url}/{name}" if name else url


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data,
    )
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:
        cert, key = _tempfile(info.certificate_data), _tempfile(info.private_key_data)
    if cert:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def _tempfile(data: str | bytes) -> str:
    raw = data if isinstance(data, bytes) else data.encode()
    if not raw.startswith(b"-----"):
        raw = base64.b64decode(raw)
    with tempfile.NamedTemporaryFile(delete=False, suffix=".pem") as handle:
        handle.write(raw)
        return handle.name


class Cluster:
    """A small async REST client; one per operator process."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json", **info.as_http_headers()}
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info))
        self.session = aiohttp.ClientSession(
            headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        )

    @classmethod
    def login(cls, settings: kopf.OperatorSettings) -> Cluster:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
        if info is None:
            raise kopf.LoginError("no service account and no kubeconfig to log in with")
        return cls(info)

    async def close(self) -> None:
        await self.session.close()

    async def _call(
        self, method: str, url: str, *, json: Any = None, content_type: str | None = None
    ) -> JsonDict:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self.session.request(
            method, self.server + url, json=json, headers=headers
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, text)
            result: JsonDict = await response.json(content_type=None) if text else {}
            return result

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
        """Create the object, or return the existing one; the flag says whether it was created."""
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        try:
            return await self._call("POST", url, json=obj), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        existing = await self.get(
            obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]
        )
        if existing is None:
            raise ApiError(409, f"{obj['kind']} {meta['name']} conflicts but cannot be read")
        return existing, False

    async def apply(self, obj: JsonDict) -> JsonDict:
        """Create the object, or merge its desired fields into the existing one."""
        current, created = await self.create(obj)
        if created:
            return current
        desired = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
        meta = obj["metadata"]
        return await self.patch(
            obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], desired
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

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            await self._call("DELETE", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
