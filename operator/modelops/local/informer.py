"""A tiny informer: one collection kept in memory, from the client's list+watch.

The collection is a kind (all namespaces), optionally narrowed by a field and a label selector;
the :class:`~modelops.controllers.cluster.Cluster` carries the credentials. Every change calls
``on_change(type, object)``; the watch itself (resumption, ``410 Gone``, bookmarks, back-off)
is :meth:`Cluster.watch`. After a (re)list, objects that are gone are reported ``DELETED`` and
new or changed ones ``ADDED``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from modelops.controllers.cluster import Cluster

Obj = dict[str, Any]


class Informer:
    """The objects of ``kind`` (``api_version``) by (namespace, name), kept current.

    ``synced`` is set once the first list is in.
    """

    def __init__(
        self,
        cluster: Cluster,
        api_version: str,
        kind: str,
        on_change: Callable[[str, Obj], None],
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        self.kind = kind
        self.objects: dict[tuple[str, str], Obj] = {}
        self.synced = asyncio.Event()
        self._cluster = cluster
        self._api_version = api_version
        self._field_selector, self._label_selector = field_selector, label_selector
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
        watch = self._cluster.watch(
            self._api_version,
            self.kind,
            None,
            field_selector=self._field_selector,
            label_selector=self._label_selector,
        )
        async with contextlib.aclosing(watch) as events:
            async for event in events:
                if event.type == "LISTED":
                    self._replace(event.object.get("items") or [])
                    self.synced.set()
                    continue
                key = self.key(event.object)
                if event.type == "DELETED":
                    self.objects.pop(key, None)
                else:
                    self.objects[key] = event.object
                self._on_change(event.type, event.object)

    def _replace(self, items: list[Obj]) -> None:
        fresh = {self.key(o): o for o in items}
        for key, obj in list(self.objects.items()):
            if key not in fresh:
                del self.objects[key]
                self._on_change("DELETED", obj)
        for key, obj in fresh.items():
            if self.objects.get(key) != obj:
                self.objects[key] = obj
                self._on_change("ADDED", obj)
