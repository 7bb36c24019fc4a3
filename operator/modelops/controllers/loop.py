"""Reconcile by events: one loop per object that sleeps until woken or due.

Kopf timers wake every object every interval whatever happened, and wait the interval again
after each pass; at a thousand objects that is hundreds of passes a second doing nothing, and a
change waits for the next tick. Here, as in controller-runtime's work queue
(https://pkg.go.dev/sigs.k8s.io/controller-runtime/pkg/reconcile, ``Result.RequeueAfter``), each
object has one long-lived loop (a Kopf daemon) that runs a pass, then sleeps until

- it is woken: a watch event that matters to it (its spec or annotations changed, a
  ModelVersion of its model, a DriftMonitor guarding it, its serving pods), through
  :class:`Wakeups`; or
- the pass's requeue-after has passed (a canary step falls due, a monitor's interval ends,
  data in the store needs another look); or
- the object is deleted or the operator stops.

A pass that raises is retried after a back-off (1 s doubling to 60 s), never abandoned.
One loop per object keeps passes of one object sequential, as Kopf's timers did.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, cast

import kopf

logger = logging.getLogger(__name__)

RETRY_FIRST = 1.0
RETRY_MAX = 60.0
"""Back-off of a pass that raised, in seconds: doubling from the first to the most."""


class Wakeups:
    """One :class:`asyncio.Event` per object loop, by key (``(kind, namespace, name)``).

    ``wake`` on a key with no loop is remembered only until that loop starts: a loop always
    runs a pass when it starts, so nothing is lost.
    """

    def __init__(self) -> None:
        self._events: dict[Hashable, asyncio.Event] = {}

    def event(self, key: Hashable) -> asyncio.Event:
        """The key's event, made on first use."""
        found = self._events.get(key)
        if found is None:
            found = self._events[key] = asyncio.Event()
        return found

    def wake(self, key: Hashable) -> None:
        """Make the key's loop run a pass now (or once its current pass ends)."""
        found = self._events.get(key)
        if found is not None:
            found.set()

    def forget(self, key: Hashable) -> None:
        self._events.pop(key, None)

    def __len__(self) -> int:
        return len(self._events)


wakeups = Wakeups()
"""The operator's one registry: watch handlers wake, object loops wait."""


class Signatures:
    """The last seen signature of each object, to wake only on changes that matter (a watch
    event per status write would otherwise wake the writer again)."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, Hashable] = {}

    def changed(self, key: Hashable, signature: Hashable) -> bool:
        """Whether ``signature`` differs from the key's last one (the first always does)."""
        if self._seen.get(key) == signature:
            return False
        self._seen[key] = signature
        return True

    def forget(self, key: Hashable) -> None:
        self._seen.pop(key, None)


async def run(
    key: Hashable,
    stopped: kopf.DaemonStopped,
    one_pass: Callable[[], Awaitable[float]],
    log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    slots: asyncio.Semaphore | None = None,
) -> None:
    """Run ``one_pass`` (which returns its requeue-after, seconds) until ``stopped``; with
    ``slots``, each pass first takes one (the kind's bound on passes at once, as
    controller-runtime's ``MaxConcurrentReconciles``).

    Between passes, sleep until the requeue-after ends, ``wakeups.wake(key)`` is called or the
    loop is stopped, whichever comes first. A wake during a pass makes the next pass start as
    soon as this one ends. :class:`kopf.TemporaryError` retries after its ``delay``; any other
    exception is logged and retried with a doubling back-off.
    """
    event = wakeups.event(key)
    stop = asyncio.ensure_future(stopped.wait())
    failures = 0
    try:
        while not stopped:
            event.clear()
            try:
                async with slots or contextlib.nullcontext():
                    delay = await one_pass()
                failures = 0
            except kopf.TemporaryError as exc:
                delay = exc.delay or RETRY_FIRST
                log.warning(f"reconciliation failed; retrying in {delay:g} s: {exc}")
            except Exception:
                log.exception("reconciliation failed; retrying")
                delay = min(RETRY_MAX, RETRY_FIRST * 2**failures)
                failures += 1
            if stopped:
                break
            woken = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait(
                    {woken, stop}, timeout=max(0.0, delay), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                woken.cancel()
    finally:
        stop.cancel()
        wakeups.forget(key)
        with contextlib.suppress(asyncio.CancelledError):
            await stop


def snapshot(body: Mapping[str, Any], written: dict[str, Any] | None) -> kopf.Body:
    """A pass's own copy of the object: the :func:`fresher` of the watched body and our last
    write, deep-copied (the watched body changes under a pass as events arrive)."""
    return kopf.Body(cast(kopf.RawBody, copy.deepcopy(fresher(dict(body), written))))


def fresher(body: dict[str, Any], written: dict[str, Any] | None) -> dict[str, Any]:
    """The newer of the watched ``body`` and the object our last write returned.

    After a status write, the watch delivers its echo a moment later; a pass woken in between
    (by another object's event) must start from what was written, or it would repeat the last
    transition. resourceVersions are opaque strings in the API's contract, but every API
    server built on etcd gives integers that grow with each write: compared as integers when
    both are, else the written one (it was returned after the body was seen) wins.
    """
    if written is None or written.get("metadata", {}).get("uid") != body.get("metadata", {}).get(
        "uid"
    ):
        return body
    mine = str(body.get("metadata", {}).get("resourceVersion", ""))
    theirs = str(written.get("metadata", {}).get("resourceVersion", ""))
    if mine.isdigit() and theirs.isdigit():
        return written if int(theirs) > int(mine) else body
    return written
