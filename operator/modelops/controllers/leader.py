"""Leader election: only the replica holding a Lease runs Kopf, so replicas > 1 are safe.

The semantics are client-go's ``tools/leaderelection`` with a ``coordination.k8s.io/v1``
Lease lock (https://kubernetes.io/docs/concepts/architecture/leases/,
https://github.com/kubernetes/client-go/tree/master/tools/leaderelection):

- a replica takes the Lease when it is absent (create), expired (``renewTime`` +
  ``leaseDurationSeconds`` < now), released (no ``holderIdentity``) or already its own;
  otherwise it waits, trying again every ``retry_period``;
- every write is a PUT carrying the ``resourceVersion`` read just before (optimistic
  concurrency): a 409 means another replica wrote first, and it has won this round;
- a change of holder sets ``acquireTime`` and counts one more ``leaseTransitions``;
- the leader renews every ``renew_period``; when it has not renewed for ``renew_deadline`` it
  stops reconciling and the process exits non-zero (client-go's OnStoppedLeading), before the
  Lease can expire for the others (``lease_duration`` > ``renew_deadline``);
- on SIGTERM the leader stops Kopf, then releases the Lease (empty holder, 1 s duration), so a
  standby takes over at its next try instead of after ``lease_duration``.

One difference from client-go: expiry is judged from the Lease's ``renewTime`` against our
clock (as the Leases page describes), not from when this replica last saw the Lease change;
replicas' clocks must agree to well within the 5 s between ``renew_deadline`` and
``lease_duration``, which NTP-synchronised nodes do.

``decide``, ``claimed`` and ``released`` are the pure part; ``Elector`` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from modelops.controllers.cluster import ApiError, Cluster, JsonDict

logger = logging.getLogger("modelops.leader")

LEASE_API = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class Timing:
    """client-go's defaults for controllers (kube-controller-manager uses 15/10/2)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    renew_period: float = 5.0
    retry_period: float = 2.0


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # expired or released: write ourselves in as the new holder
    RENEW = "renew"  # ours: move renewTime on
    WAIT = "wait"  # another replica holds it


def identity(pod_name: str) -> str:
    """The pod's name plus a random suffix: a restarted container is a new candidate."""
    return f"{pod_name}_{secrets.token_hex(4)}"


def holder(lease: JsonDict | None) -> str:
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _micro_time(now: datetime) -> str:
    """A MicroTime as the API server writes it: RFC 3339, microseconds, UTC."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expires(lease: JsonDict) -> datetime | None:
    """When the Lease lapses (None: it has never been renewed, so it has)."""
    spec = lease.get("spec") or {}
    renewed = _time(spec.get("renewTime"))
    if renewed is None:
        return None
    return renewed + timedelta(seconds=spec.get("leaseDurationSeconds") or 0)


def decide(lease: JsonDict | None, now: datetime, me: str) -> Action:
    """What a candidate ``me`` does with the Lease it has just read."""
    if lease is None:
        return Action.CREATE
    current = holder(lease)
    if current == me:
        return Action.RENEW
    end = expires(lease)
    if not current or end is None or end < now:
        return Action.TAKE
    return Action.WAIT


def claimed(
    lease: JsonDict | None, now: datetime, me: str, namespace: str, name: str, timing: Timing
) -> JsonDict:
    """The Lease to write for ``me`` (a PUT when ``lease`` was read: its resourceVersion
    comes along, and makes the write conditional)."""
    spec = (lease or {}).get("spec") or {}
    stamp = _micro_time(now)
    ours = holder(lease) == me
    transitions = int(spec.get("leaseTransitions") or 0)
    metadata = dict((lease or {}).get("metadata") or {"name": name, "namespace": namespace})
    return {
        "apiVersion": LEASE_API,
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": int(timing.lease_duration),
            "acquireTime": spec.get("acquireTime", stamp) if ours else stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions + 1 if lease is not None and not ours else transitions,
        },
    }


def released(lease: JsonDict, now: datetime) -> JsonDict:
    """The Lease given up (client-go's release): no holder, a 1 s duration, renewed now."""
    stamp = _micro_time(now)
    spec = lease.get("spec") or {}
    return {
        **lease,
        "spec": {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0),
        },
    }


class Elector:
    """One candidate for one Lease, through the operator's API client."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        name: str,
        me: str,
        *,
        timing: Timing = Timing(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cluster = cluster
        self.namespace, self.name, self.me = namespace, name, me
        self.timing = timing
        self.clock = clock
        self.is_leader = False
        self.last_action: Action | None = None
        self._waiting_for = ""

    async def _read(self) -> JsonDict | None:
        return await self.cluster.get(LEASE_API, "Lease", self.namespace, self.name)

    async def _replace(self, lease: JsonDict) -> bool:
        """PUT (verb ``update``) with the resourceVersion read before; False on 409."""
        try:
            await self.cluster.replace(lease)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease and, if it is free or ours, write ourselves in."""
        self.last_action = None
        lease = await self._read()
        now = self.clock()
        action = self.last_action = decide(lease, now, self.me)
        if action is Action.WAIT:
            if holder(lease) != self._waiting_for:
                self._waiting_for = holder(lease)
                logger.info("waiting for the lease held by %s", self._waiting_for)
            self.is_leader = False
            return False
        body = claimed(lease, now, self.me, self.namespace, self.name, self.timing)
        if action is Action.CREATE:
            won = await self.cluster.create_new(body) is not None
        else:
            won = await self._replace(body)
        if won and not self.is_leader:
            logger.info("acquired the lease %s/%s as %s", self.namespace, self.name, self.me)
        self.is_leader = won
        return won

    async def _round(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout=timeout)
        except (ApiError, TimeoutError) as exc:
            logger.warning("lease %s/%s: %s", self.namespace, self.name, exc or "timed out")
            return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try every ``retry_period`` until we lead (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if await self._round(self.timing.retry_period * 2):
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.timing.retry_period)
        return False

    async def keep_renewing(self) -> None:
        """Renew until a renewal is ``renew_deadline`` late or another replica took over."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        delay = self.timing.renew_period
        while True:
            deadline = renewed + self.timing.renew_deadline
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            if (left := deadline - loop.time()) <= 0:
                logger.error("could not renew the lease for %.0f s", self.timing.renew_deadline)
                break
            if await self._round(left):
                renewed, delay = loop.time(), self.timing.renew_period
            elif self.last_action is Action.WAIT:
                logger.error("the lease was taken by %s", self._waiting_for)
                break
            else:
                delay = self.timing.retry_period
        self.is_leader = False

    async def release(self) -> None:
        """Give the Lease up if it is still ours, so a standby need not wait for expiry."""
        try:
            lease = await asyncio.wait_for(self._read(), timeout=self.timing.retry_period)
            if lease is not None and holder(lease) == self.me:
                await asyncio.wait_for(
                    self._replace(released(lease, self.clock())), self.timing.retry_period
                )
                logger.info("released the lease %s/%s", self.namespace, self.name)
        except (ApiError, TimeoutError) as exc:
            logger.warning("could not release the lease (it expires by itself): %s", exc)
        self.is_leader = False


async def _standby_health(port: int) -> web.AppRunner | None:
    """``/healthz`` while waiting (Kopf serves it once it runs): a standby is alive, and
    ready to take over, so probes and a rolling update do not wait for leadership."""
    if not port:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="standby")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, reuse_address=True).start()
    return runner


Operate = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
"""Runs Kopf until the event is set (``kopf.operator(stop_flag=...)``)."""


async def run_as_leader(
    operate: Operate,
    *,
    namespace: str,
    name: str,
    pod_name: str,
    health_port: int = 0,
    timing: Timing = Timing(),
) -> int:
    """Wait for the Lease, run ``operate`` while we hold it; the process's exit code.

    0 after SIGTERM/SIGINT (the Lease released); 1 when leadership was lost (the pod
    restarts and stands by again, as client-go's callers exit on OnStoppedLeading).
    """
    cluster = Cluster.login()
    elector = Elector(cluster, namespace, name, identity(pod_name), timing=timing)
    loop = asyncio.get_running_loop()
    signalled, stop_kopf = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        signalled.set()
        stop_kopf.set()  # a signal just before Kopf installs its own handlers still stops it

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)  # Kopf replaces these once it runs
    try:
        # 1: stand by until we lead (or are told to stop)
        health = await _standby_health(health_port)
        try:
            leading = await elector.acquire(signalled)
        finally:
            if health is not None:
                await health.cleanup()
        if not leading:
            return 0
        # 2: reconcile while renewing
        kopf_task = asyncio.create_task(operate(stop_kopf), name="kopf")
        renew_task = asyncio.create_task(elector.keep_renewing(), name="lease renewal")
        await asyncio.wait({kopf_task, renew_task}, return_when=asyncio.FIRST_COMPLETED)
        if renew_task.done():
            # 3a: lost: stop reconciling before the Lease lapses for the others
            stop_kopf.set()
            grace = max(1.0, timing.lease_duration - timing.renew_deadline - 1.0)
            _, pending = await asyncio.wait({kopf_task}, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(kopf_task, return_exceptions=True)
            logger.error("lost the lease %s/%s; exiting", namespace, name)
            return 1
        # 3b: Kopf stopped (SIGTERM, or it failed): hand over at once
        renew_task.cancel()
        await asyncio.gather(renew_task, return_exceptions=True)
        await elector.release()
        kopf_task.result()  # re-raise what made Kopf fail
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await cluster.close()
