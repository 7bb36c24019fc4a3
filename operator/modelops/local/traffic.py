"""A traffic generator: Open Inference Protocol v2 infer requests, each with its own id.

Rows are drawn (seeded) from the dataset. The model server routes a request with an id by a
public hash of the id (:func:`modelops.serving.router.id_slot`: the canary owns the slots below
its weight), so the generator knows which requests the canary will answer. With
``drift_canary`` on, exactly those carry *drifted* rows (every feature shifted by
``shift_stds`` standard deviations): the canary's traffic drifts, the stable's does not, and
the DriftMonitor watching the canary sees it. Every answer is recorded (which version, which
status, how long, what it predicted), so callers can check what clients saw.

Ground truth: with ``labels`` set (one true label per row), each answer also records the true
label of the row it was asked about, and a :class:`Feedback` client sends those labels back to
the model server's feedback endpoint (``POST /v2/models/{model}/feedback``, by request id) a
little after the answers came, in bounded batches, recording every call.
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
    predicted: str | None = None  # the ``predict`` output of the one row (a class name)
    truth: str | None = None  # the row's true label, when the traffic has labels


@dataclass(frozen=True)
class FeedbackCall:
    """One ``POST .../feedback``: when, how many labels, the HTTP status (0: none) and the
    server's counts (``joined``, ``pending``, ``unknown``, ... as it answered them)."""

    sent: float  # time.time()
    labels: int
    status: int
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""


@dataclass
class TrafficStats:
    answers: list[Answer] = field(default_factory=list)
    first_drifted: float | None = None
    feedback: list[FeedbackCall] = field(default_factory=list)

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

    def accuracy(self, version: str, since: float = 0.0) -> tuple[float | None, int]:
        """(share of correct answers, answers with a true label) of ``version`` since then, as
        the clients saw them; (None, 0) without labelled answers."""
        judged = [
            a.predicted == a.truth
            for a in self.answers
            if a.sent >= since and a.status == 200 and a.version == version and a.truth is not None
        ]
        return (sum(judged) / len(judged) if judged else None), len(judged)

    def feedback_errors(self) -> list[FeedbackCall]:
        return [c for c in self.feedback if c.status != 200]

    def labels_sent(self) -> int:
        return sum(c.labels for c in self.feedback if c.status == 200)

    def feedback_counts(self) -> Counter[str]:
        """The feedback endpoint's answers added up (``joined``, ``pending``, ...)."""
        total: Counter[str] = Counter()
        for call in self.feedback:
            total.update(call.counts)
        return total

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
        labels: Sequence[str] | None = None,
    ) -> None:
        self.url = f"{url.rstrip('/')}/v2/models/{model}/infer"
        self.features = list(features)
        self.rows = [list(r) for r in rows]
        self.labels: list[str] | None = list(labels) if labels is not None else None
        """True labels of ``rows`` (None: answers carry none); may be swapped while running."""
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

    def request(self) -> tuple[str, dict[str, object], bool, str | None]:
        """The next request: its id, its OIP v2 body, whether its row is drifted, and the
        row's true label (None without ``labels``)."""
        rid = f"{self.prefix}-{next(self._ids)}"
        index = self._random.randrange(len(self.rows))
        row = self.rows[index]
        truth = self.labels[index] if self.labels is not None else None
        drifted = self.drift_canary and id_slot(rid) < self.canary_weight
        if drifted:
            row = [v + s for v, s in zip(row, self.shift, strict=True)]
        inputs = [
            {"name": name, "datatype": "FP64", "shape": [1], "data": [value]}
            for name, value in zip(self.features, row, strict=True)
        ]
        return rid, {"id": rid, "inputs": inputs}, drifted, truth

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
        rid, body, drifted, truth = self.request()
        sent, started = time.time(), time.perf_counter()
        if drifted and self.stats.first_drifted is None:
            self.stats.first_drifted = sent
        status, version, error, predicted = 0, None, "", None
        try:
            async with session.post(self.url, json=body) as response:
                status = response.status
                doc = await response.json(content_type=None)
                version = doc.get("model_version") if isinstance(doc, dict) else None
                if status != 200:
                    error = str(doc.get("error", doc) if isinstance(doc, dict) else doc)[:300]
                else:
                    predicted = _predicted(doc)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = repr(exc)
        finally:
            slots.release()
        seconds = time.perf_counter() - started
        answer = Answer(sent, seconds, rid, status, version, drifted, error, predicted, truth)
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


def _predicted(doc: object) -> str | None:
    """The first value of an OIP v2 response's ``predict`` output, as text (None if absent)."""
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    for output in outputs if isinstance(outputs, list) else []:
        if isinstance(output, dict) and output.get("name") == "predict" and output.get("data"):
            return str(output["data"][0])
    return None


class Feedback:
    """Sends the true labels of answered requests back, by request id.

    ``start()`` posts, every ``every`` seconds, the labels of the answers in ``stats`` that
    carry one (``Answer.truth``), came back with 200 and are at least ``delay`` seconds old,
    at most ``max_batch`` per call (so at most ``max_batch / every`` labels a second; the rest
    wait for the next call), to ``POST {url}/v2/models/{model}/feedback`` as
    ``{"feedback": [{"id": ..., "label": ...}, ...]}`` (the model server's ground-truth
    endpoint, README "Model server"). Each call is recorded in ``stats.feedback``; a failed
    call is recorded, not retried (its labels are lost, as a client's would be).
    """

    def __init__(
        self,
        url: str,
        model: str,
        stats: TrafficStats,
        *,
        delay: float = 1.0,
        every: float = 0.5,
        max_batch: int = 100,
    ) -> None:
        self.url = f"{url.rstrip('/')}/v2/models/{model}/feedback"
        self.stats = stats
        self.delay = delay
        self.every = every
        self.max_batch = max_batch
        self._next = len(stats.answers)  # answers before the start get no labels
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="feedback")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def due(self, now: float) -> list[Answer]:
        """The next labelled answers old enough to send (at most ``max_batch``), in the order
        they came; answers with no label or no 200 are passed over."""
        batch: list[Answer] = []
        answers = self.stats.answers
        while self._next < len(answers) and len(batch) < self.max_batch:
            answer = answers[self._next]
            if answer.sent + answer.seconds + self.delay > now:
                break
            self._next += 1
            if answer.truth is not None and answer.status == 200:
                batch.append(answer)
        return batch

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if batch := self.due(time.time()):
                    await self.send(session, batch)
                await asyncio.sleep(self.every)

    async def send(self, session: aiohttp.ClientSession, batch: Sequence[Answer]) -> FeedbackCall:
        """Post the labels of ``batch`` in one call and record it."""
        body = {"feedback": [{"id": a.request_id, "label": a.truth} for a in batch]}
        sent = time.time()
        status, counts, error = 0, {}, ""
        try:
            async with session.post(self.url, json=body) as response:
                status = response.status
                doc = await response.json(content_type=None)
                if status == 200 and isinstance(doc, dict):
                    counts = {k: v for k, v in doc.items() if isinstance(v, int)}
                else:
                    error = str(doc.get("error", doc) if isinstance(doc, dict) else doc)[:300]
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = repr(exc)
        call = FeedbackCall(sent, len(batch), status, counts, error)
        self.stats.feedback.append(call)
        return call
