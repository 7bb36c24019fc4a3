"""A traffic generator: Open Inference Protocol v2 infer requests, each with its own id.

Rows are drawn (seeded) from the dataset. The model server routes a request with an id by a
public hash of the id (:func:`modelops.serving.router.id_slot`: the canary owns the slots below
its weight), so the generator knows which requests the canary will answer. With
``drift_canary`` on, exactly those carry *drifted* rows (every feature shifted by
``shift_stds`` standard deviations): the canary's traffic drifts, the stable's does not, and
the DriftMonitor watching the canary sees it. Every answer is recorded (which version, which
status, how long), so callers can check what clients saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from modelops.serving.router import id_slot


@dataclass(frozen=True)
class Answer:
    sent: float  # time.time() when sent
    seconds: float
    request_id: str
    status: int  # HTTP status; 0 when the request failed without one
    version: str | None  # the response's model_version
    drifted: bool  # whether the row sent was drifted
    error: str = ""


@dataclass
class TrafficStats:
    answers: list[Answer] = field(default_factory=list)
    first_drifted: float | None = None

    def ok(self, since: float = 0.0) -> list[Answer]:
        return [a for a in self.answers if a.status == 200 and a.sent >= since]

    def errors(self, since: float = 0.0) -> list[Answer]:
        return [a for a in self.answers if a.status != 200 and a.sent >= since]

    def by_version(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(
            a.version or "?" for a in self.answers if since <= a.sent < until and a.status == 200
        )

    def drifted(self) -> list[Answer]:
        return [a for a in self.answers if a.drifted]

    def latency_ms(self, quantile: float) -> float:
        seconds = sorted(a.seconds for a in self.answers if a.status == 200)
        if not seconds:
            return 0.0
        if len(seconds) == 1:
            return seconds[0] * 1000
        return (
            statistics.quantiles(seconds, n=100, method="inclusive")[int(quantile * 100) - 1] * 1000
        )


class Traffic:
    """``start()`` sends ``rate`` requests per second (at most ``concurrency`` in flight)."""

    def __init__(
        self,
        url: str,
        model: str,
        features: Sequence[str],
        rows: Sequence[Sequence[float]],
        *,
        stds: Sequence[float],
        rate: float = 40.0,
        concurrency: int = 4,
        shift_stds: float = 1.5,
        seed: int = 7,
        prefix: str = "req",
    ) -> None:
        self.url = f"{url.rstrip('/')}/v2/models/{model}/infer"
        self.features = list(features)
        self.rows = [list(r) for r in rows]
        self.shift = [shift_stds * s for s in stds]
        self.rate = rate
        self.concurrency = concurrency
        self.prefix = prefix
        self.stats = TrafficStats()
        self.canary_weight = 0  # the Deployment's current canary weight (set by the caller)
        self.drift_canary = False
        self._random = random.Random(seed)
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="traffic")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def request(self) -> tuple[str, dict[str, object], bool]:
        """The next request: its id, its OIP v2 body, and whether its row is drifted."""
        rid = f"{self.prefix}-{next(self._ids)}"
        row = self._random.choice(self.rows)
        drifted = self.drift_canary and id_slot(rid) < self.canary_weight
        if drifted:
            row = [v + s for v, s in zip(row, self.shift, strict=True)]
        inputs = [
            {"name": name, "datatype": "FP64", "shape": [1], "data": [value]}
            for name, value in zip(self.features, row, strict=True)
        ]
        return rid, {"id": rid, "inputs": inputs}, drifted

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task[Answer]] = set()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                next_at = time.monotonic()
                while True:
                    await slots.acquire()
                    task = asyncio.create_task(self._send(session, slots))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    next_at += 1.0 / self.rate
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finally:
                # Let requests in flight finish: a cancelled request is not a client error.
                if pending:
                    await asyncio.wait(pending, timeout=10)

    async def _send(self, session: aiohttp.ClientSession, slots: asyncio.Semaphore) -> Answer:
        rid, body, drifted = self.request()
        sent, started = time.time(), time.perf_counter()
        if drifted and self.stats.first_drifted is None:
            self.stats.first_drifted = sent
        status, version, error = 0, None, ""
        try:
            async with session.post(self.url, json=body) as response:
                status = response.status
                doc = await response.json(content_type=None)
                version = doc.get("model_version") if isinstance(doc, dict) else None
                if status != 200:
                    error = str(doc.get("error", doc) if isinstance(doc, dict) else doc)[:300]
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = repr(exc)
        finally:
            slots.release()
        answer = Answer(sent, time.perf_counter() - started, rid, status, version, drifted, error)
        self.stats.answers.append(answer)
        return answer

    async def batch(self, n: int) -> list[Answer]:
        """Send ``n`` requests now (``concurrency`` at a time) and return their answers."""
        slots = asyncio.Semaphore(self.concurrency)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def one() -> Answer:
                await slots.acquire()
                return await self._send(session, slots)

            return list(await asyncio.gather(*(one() for _ in range(n))))
