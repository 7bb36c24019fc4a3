"""Adaptive micro-batching: one predict call for the requests of one event-loop tick.

A request queues its validated rows with a callback (or awaits a future). The first request of
a tick schedules the batch with ``call_soon``, which runs after every callback already ready,
i.e. after the other requests whose bytes arrived in the same poll of the sockets. Under light
load a batch is one request (no waiting, no timer); under heavy load the batch grows by itself,
because while one predict runs, the next requests pile up in the socket buffers. Accounting
(rows, class counts, sketch) is done here, once per batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelops.serving.metrics import ServerMetrics
from modelops.serving.protocol import ProtocolError, Rows, concat_rows
from modelops.serving.state import ServedVersion

logger = logging.getLogger(__name__)

MAX_BATCH_ROWS = 1024
"""Rows per predict call at most: bounds the latency one big batch adds to the others."""


@dataclass(slots=True)
class Prediction:
    values: npt.NDArray[Any]
    """Class indices (classifiers) or values (regressors), one per row."""
    proba: npt.NDArray[np.float64] | None


Done = Callable[[Prediction | None, ProtocolError | None], None]
"""Called once per request, on the event loop: ``(prediction, None)`` or ``(None, error)``."""


@dataclass(slots=True, eq=False)
class _Job:
    rows: Rows
    n: int
    proba: bool
    done: Done


class Batcher:
    def __init__(self, metrics: ServerMetrics, max_rows: int = MAX_BATCH_ROWS) -> None:
        self.metrics = metrics
        self.max_rows = max_rows
        self._pending: dict[ServedVersion, list[_Job]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(
        self, version: ServedVersion, rows: Rows, n: int, proba: bool
    ) -> asyncio.Future[Prediction]:
        """Queue ``n`` validated rows for the next batch; a future of their prediction (it
        raises :class:`ProtocolError` when the model refuses them)."""
        future: asyncio.Future[Prediction] = self.loop().create_future()
        self.submit_then(version, rows, n, proba, functools.partial(_settle, future))
        return future

    def submit_then(
        self, version: ServedVersion, rows: Rows, n: int, proba: bool, done: Done
    ) -> None:
        """As :meth:`submit`, answered by calling ``done`` from the batch itself: no future,
        no task and no extra turn of the event loop for each request (the REST hot path)."""
        if not self._pending:
            self.loop().call_soon(self._run)
        jobs = self._pending.get(version)
        if jobs is None:
            self._pending[version] = [_Job(rows, n, proba, done)]
        else:
            jobs.append(_Job(rows, n, proba, done))

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop (looked up once)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _run(self) -> None:
        pending, self._pending = self._pending, {}
        for version, jobs in pending.items():
            group: list[_Job] = []
            rows = 0
            for job in jobs:
                if group and rows + job.n > self.max_rows:
                    self._predict(version, group)
                    group, rows = [], 0
                group.append(job)
                rows += job.n
            self._predict(version, group)

    def _predict(self, version: ServedVersion, jobs: list[_Job]) -> None:
        model = version.model
        assert model is not None
        rows = jobs[0].rows if len(jobs) == 1 else concat_rows([j.rows for j in jobs])
        n = sum(j.n for j in jobs)
        want_proba = any(j.proba for j in jobs)
        try:
            values = model.predictor.predict(rows)
            proba = model.predictor.predict_proba(rows) if want_proba else None
        except Exception as exc:
            if len(jobs) > 1:  # find the request the model rejects; answer the others
                for job in jobs:
                    self._predict(version, [job])
                return
            _fail(jobs[0], exc)
            return
        self.metrics.observe_batch(n)
        version.stats.rows += n
        window = version.window
        if model.classifier:
            counts = np.bincount(values, minlength=len(model.class_names))
            version.stats.add_class_counts(model.class_names, counts)
            if window is not None:
                window.add(rows, n, model.class_names, counts)
        elif window is not None:
            window.add(rows, n)
        start = 0
        for job in jobs:
            end = start + job.n
            prediction = Prediction(
                values[start:end] if len(jobs) > 1 else values,
                proba[start:end] if job.proba and proba is not None else None,
            )
            try:
                job.done(prediction, None)
            except Exception:  # one request's bug must not leave the others of its batch hanging
                logger.exception("answering a predicted request failed")
            start = end


def _fail(job: _Job, exc: Exception) -> None:
    if isinstance(exc, ValueError | TypeError):
        # The input passed validation but the model refused it: still the client's input.
        error = ProtocolError(f"the model rejected the input: {exc}")
    else:
        logger.exception("predict failed", exc_info=exc)
        error = ProtocolError(f"prediction failed: {exc}", 500)
    try:
        job.done(None, error)
    except Exception:
        logger.exception("answering a failed request failed")


def _settle(
    future: asyncio.Future[Prediction], prediction: Prediction | None, error: ProtocolError | None
) -> None:
    if future.done():  # cancelled by its caller
        return
    if error is not None:
        future.set_exception(error)
    elif prediction is not None:
        future.set_result(prediction)
