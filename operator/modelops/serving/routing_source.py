"""Where routing tables come from: a JSON file (local/dev) or the Deployment's ConfigMap.

Both sources call ``submit(text)`` with the table's JSON text each time it changes; the
model manager parses and validates it (an invalid table is counted and ignored).

The ConfigMap is followed with the operator's API client (:meth:`Cluster.watch`: list, then
watch, resumed and re-listed as needed). Credentials: the pod's ServiceAccount, else
``$KUBECONFIG`` (as the local kubelet gives its pods: a kubeconfig with the pod's bound
ServiceAccount token), else ``~/.kube/config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.controllers.cluster import Cluster
from modelops.serving.table import CONFIGMAP_KEY

logger = logging.getLogger(__name__)

Submit = Callable[[str | bytes], None]


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


class ConfigMapSource:
    """Lists, then watches, one ConfigMap; submits its ``routing.json`` on every change.

    A ConfigMap that does not exist (yet) is fine: the list and watch select it by name
    (a field selector), so it shows up when it is created. ``max_backoff`` caps the seconds
    between attempts while the API server cannot be reached.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        name: str,
        key: str = CONFIGMAP_KEY,
        max_backoff: float = 10.0,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.key = key
        self.max_backoff = max_backoff
        self._last: str | None = None

    async def run(self, submit: Submit) -> None:
        watch = self.cluster.watch(
            "v1",
            "ConfigMap",
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            max_backoff=self.max_backoff,
        )
        async with contextlib.aclosing(watch) as events:
            async for event in events:
                if event.type == "LISTED":
                    items = event.object.get("items") or []
                    if items:
                        self._deliver(items[0], submit)
                    else:
                        logger.warning(
                            "configmap %s/%s does not exist (yet)", self.namespace, self.name
                        )
                elif event.type in ("ADDED", "MODIFIED"):
                    self._deliver(event.object, submit)
                elif event.type == "DELETED":
                    logger.warning(
                        "configmap %s/%s was deleted: keeping the last routing table",
                        self.namespace,
                        self.name,
                    )
                    self._last = None

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
    cluster = Cluster.login()
    namespace = os.environ.get("POD_NAMESPACE") or cluster.namespace or "default"
    return ConfigMapSource(cluster, namespace, name)
