"""Where routing tables come from: a JSON file (local/dev) or the Deployment's ConfigMap.

Both sources call ``submit(text)`` with the table's JSON text each time it changes; the
model manager parses and validates it (an invalid table is counted and ignored).

The ConfigMap is watched through the Kubernetes API with aiohttp: one list (with a field
selector on its name, so a ConfigMap that does not exist yet is fine) for the current state
and resourceVersion, then a watch from there, resumed after every stream end and re-listed
after ``410 Gone``. Credentials: the pod's service account, else ``$KUBECONFIG``
(or ``~/.kube/config``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from modelops.serving.table import CONFIGMAP_KEY

logger = logging.getLogger(__name__)

Submit = Callable[[str | bytes], None]
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_SECONDS = 290  # below the API server's own cap, so we resume before it cuts us off


class FileSource:
    """Polls a file (a stat per poll; read only when it changed)."""

    def __init__(self, path: Path, interval: float = 0.1) -> None:
        self.path = path
        self.interval = interval

    async def run(self, submit: Submit) -> None:
        seen: tuple[int, int, int] | None = None
        content: bytes | None = None
        missing_logged = False
        while True:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != seen:
                    seen = stamp
                    data = self.path.read_bytes()
                    if data != content:
                        content = data
                        submit(data)
                missing_logged = False
            except FileNotFoundError:
                if not missing_logged:
                    logger.warning("routing file %s does not exist (yet)", self.path)
                    missing_logged = True
                seen = None
            except OSError as exc:
                logger.warning("cannot read routing file %s: %s", self.path, exc)
            await asyncio.sleep(self.interval)


@dataclass
class KubeAccess:
    """How to reach the API server."""

    server: str
    ssl: ssl.SSLContext | bool = True
    token: str | None = None
    token_file: Path | None = None
    namespace: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def auth_headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            # Bound service-account tokens rotate: read the file at every (re)connect.
            token = self.token_file.read_text().strip()
        return {**self.headers, **({"Authorization": f"Bearer {token}"} if token else {})}

    @classmethod
    def discover(cls) -> KubeAccess:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT"),
        )
        if host and port and (SERVICE_ACCOUNT / "token").exists():
            context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
            ns_file = SERVICE_ACCOUNT / "namespace"
            return cls(
                server=f"https://{_host(host)}:{port}",
                ssl=context,
                token_file=SERVICE_ACCOUNT / "token",
                namespace=ns_file.read_text().strip() if ns_file.exists() else None,
            )
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
            Path.home() / ".kube" / "config"
        )
        return cls.from_kubeconfig(Path(path))

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeAccess:
        config = yaml.safe_load(path.read_text()) or {}
        contexts = {c["name"]: c.get("context", {}) for c in config.get("contexts") or []}
        context = contexts.get(config.get("current-context", ""), {})
        if not context and contexts:
            context = next(iter(contexts.values()))
        clusters = {c["name"]: c.get("cluster", {}) for c in config.get("clusters") or []}
        users = {u["name"]: u.get("user", {}) or {} for u in config.get("users") or []}
        cluster = clusters.get(context.get("cluster", ""), {})
        user = users.get(context.get("user", ""), {})
        server = cluster.get("server")
        if not server:
            raise RuntimeError(f"{path}: the current context names no cluster server")
        base = path.parent
        tls: ssl.SSLContext | bool = True
        if server.startswith("https"):
            if cluster.get("insecure-skip-tls-verify"):
                tls = False
            else:
                tls = _tls_context(cluster, user, base)
        headers = {}
        if user.get("username") and user.get("password"):
            basic = base64.b64encode(f"{user['username']}:{user['password']}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        if "exec" in user or "auth-provider" in user:
            logger.warning("%s: exec/auth-provider credentials are not supported", path)
        token_file = user.get("tokenFile")
        return cls(
            server=server.rstrip("/"),
            ssl=tls,
            token=user.get("token"),
            token_file=Path(token_file) if token_file else None,
            namespace=context.get("namespace"),
            headers=headers,
        )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _pem(section: dict[str, Any], name: str, base: Path) -> bytes | None:
    """A kubeconfig credential's PEM: the file ``<name>`` (relative to the kubeconfig), else
    the base64 ``<name>-data``, else None."""
    if section.get(name):
        return (base / str(section[name])).read_bytes()
    data = section.get(f"{name}-data")
    return base64.b64decode(str(data)) if data else None


def _tls_context(cluster: dict[str, Any], user: dict[str, Any], base: Path) -> ssl.SSLContext:
    """The cluster's CA (system roots without one) and the user's client certificate, if any.

    ``load_cert_chain`` reads files only: embedded cert and key data go through a private
    temporary directory that is removed as soon as they are loaded, so no key is left behind.
    """
    ca = _pem(cluster, "certificate-authority", base)
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    cert = _pem(user, "client-certificate", base)
    if cert is None:
        return context
    key = _pem(user, "client-key", base)
    with tempfile.TemporaryDirectory(prefix="kubeconfig-") as tmp:  # mode 0700
        cert_file, key_file = Path(tmp) / "client.crt", Path(tmp) / "client.key"
        cert_file.write_bytes(cert)
        if key is not None:  # else the certificate's PEM holds the key too
            key_file.write_bytes(key)
        context.load_cert_chain(cert_file, key_file if key is not None else None)
    return context


class ConfigMapSource:
    """Lists, then watches, one ConfigMap; submits its ``routing.json`` on every change."""

    def __init__(
        self,
        access: KubeAccess,
        namespace: str,
        name: str,
        key: str = CONFIGMAP_KEY,
        max_backoff: float = 10.0,
    ) -> None:
        self.access = access
        self.namespace = namespace
        self.name = name
        self.key = key
        self.max_backoff = max_backoff
        self.url = f"{access.server}/api/v1/namespaces/{namespace}/configmaps"
        self._last: str | None = None

    async def run(self, submit: Submit) -> None:
        backoff = 0.5
        connector = aiohttp.TCPConnector(ssl=self.access.ssl)
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=WATCH_SECONDS + 30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while True:
                try:
                    rv: str | None = await self._list(session, submit)
                    while rv is not None:
                        rv = await self._watch(session, rv, submit)
                        backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning(
                        "watching configmap %s/%s: %s; retrying in %.1fs",
                        self.namespace,
                        self.name,
                        exc,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)

    def _params(self) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={self.name}"}

    async def _list(self, session: aiohttp.ClientSession, submit: Submit) -> str:
        async with session.get(
            self.url, params=self._params(), headers=self.access.auth_headers()
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET configmaps: HTTP {resp.status}: {await resp.text()}")
            body = orjson.loads(await resp.read())
        items = body.get("items") or []
        if items:
            self._deliver(items[0], submit)
        else:
            logger.warning("configmap %s/%s does not exist (yet)", self.namespace, self.name)
        return str(body.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, session: aiohttp.ClientSession, rv: str, submit: Submit) -> str | None:
        """One watch request; the resourceVersion to resume from, or None to list again."""
        params = {
            **self._params(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        if rv:
            params["resourceVersion"] = rv
        async with session.get(self.url, params=params, headers=self.access.auth_headers()) as resp:
            if resp.status == 410:
                return None
            if resp.status != 200:
                raise RuntimeError(f"watch configmaps: HTTP {resp.status}: {await resp.text()}")
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return None
                        raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                    rv = str(obj.get("metadata", {}).get("resourceVersion", rv))
                    if kind in ("ADDED", "MODIFIED"):
                        self._deliver(obj, submit)
                    elif kind == "DELETED":
                        logger.warning(
                            "configmap %s/%s was deleted: keeping the last routing table",
                            self.namespace,
                            self.name,
                        )
                        self._last = None
        return rv

    def _deliver(self, obj: dict[str, Any], submit: Submit) -> None:
        text = (obj.get("data") or {}).get(self.key)
        if text is None:
            logger.warning("configmap %s/%s has no key %s", self.namespace, self.name, self.key)
            return
        if text != self._last:
            self._last = text
            submit(text)


def from_environment(routing_file: Path | None) -> FileSource | ConfigMapSource:
    """The file when given, else the ConfigMap named by ``MODELOPS_ROUTING_CONFIGMAP``."""
    if routing_file is not None:
        return FileSource(routing_file)
    name = os.environ.get("MODELOPS_ROUTING_CONFIGMAP")
    if not name:
        raise RuntimeError(
            "give --routing-file, or set MODELOPS_ROUTING_CONFIGMAP (and POD_NAMESPACE)"
        )
    access = KubeAccess.discover()
    namespace = os.environ.get("POD_NAMESPACE") or access.namespace or "default"
    return ConfigMapSource(access, namespace, name)
