"""A tiny informer: list, then watch, one resource; keep the objects in memory.

The resource is a collection URL (``/api/v1/pods``, all namespaces), optionally narrowed by a
field and a label selector; the session carries the credentials (TLS client certificate).
Every change calls ``on_change(type, object)``; a stream that ends is resumed from the last
resourceVersion, and an expired one (410) is listed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
WATCH_SECONDS = 240


class Informer:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        on_change: Callable[[str, Obj], None],
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        self.url = url
        self.kind = url.rsplit("/", 1)[-1]
        self._selectors = {
            k: v
            for k, v in (("fieldSelector", field_selector), ("labelSelector", label_selector))
            if v
        }
        self.objects: dict[tuple[str, str], Obj] = {}
        self.synced = asyncio.Event()
        self._session = session
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer {self.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @staticmethod
    def key(obj: Obj) -> tuple[str, str]:
        meta = obj.get("metadata", {})
        return (meta.get("namespace", ""), meta["name"])

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                rv: str | None = await self._list()
                self.synced.set()
                while rv is not None:
                    rv = await self._watch(rv)
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("informer %s: %r; retrying", self.kind, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _list(self) -> str:
        async with self._session.get(self.url, params=self._selectors) as resp:
            resp.raise_for_status()
            body = await resp.json()
        fresh = {self.key(o): o for o in body.get("items", [])}
        for key, obj in list(self.objects.items()):
            if key not in fresh:
                del self.objects[key]
                self._on_change("DELETED", obj)
        for key, obj in fresh.items():
            if self.objects.get(key) != obj:
                self.objects[key] = obj
                self._on_change("ADDED", obj)
        return str(body.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, rv: str) -> str | None:
        params = {
            **self._selectors,
            "watch": "true",
            "resourceVersion": rv,
            "timeoutSeconds": str(WATCH_SECONDS),
            "allowWatchBookmarks": "true",
        }
        async with self._session.get(self.url, params=params) as resp:
            if resp.status == 410:
                return None
            resp.raise_for_status()
            buffer = b""
            async for chunk in resp.content.iter_any():  # lines may be longer than readline's cap
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        resume = self._apply(json.loads(line), rv)
                        if resume is None:
                            return None
                        rv = resume
        return rv

    def _apply(self, event: Obj, rv: str) -> str | None:
        """Apply one watch event; the resourceVersion to resume from, None to list again."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            return None  # 410 Gone inside the stream: list again
        new_rv = str(obj.get("metadata", {}).get("resourceVersion", rv))
        if kind == "BOOKMARK":
            return new_rv
        key = self.key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._on_change(str(kind), obj)
        return new_rv
