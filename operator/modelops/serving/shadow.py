"""Shadow traffic: a canary in ``shadow`` mode predicts a copy of every request stable answers,
off the client's path.

The copy is handed over after stable's answer is built and just before it is returned: one
``call_soon`` later (the same event-loop pass that writes the answer) it is queued in the
micro-batcher, whose predict runs in the pass after that, so the client's answer never waits
for the shadow, and a shadow's failure is only counted, never the client's error. Work is
bounded: while :data:`MAX_IN_FLIGHT_ROWS` rows of copies are queued or being predicted, further
copies are shed (``modelops_serving_shadow_requests_total{result="shed"}``) rather than queued.

Each copy goes through the batcher like any request of the shadow version, so its inputs are
counted into the shadow's sketch window (drift monitors work on it) and its rows, classes,
requests, errors and latency (from hand-over to prediction) into its metrics. Its predictions
are compared with stable's (:class:`modelops.drift.quality.Agreement`) and, when the request
had an id, added to the ledger entry so labels join for the shadow too. A shadow whose
signature differs from stable's decodes the request document itself (an input it refuses is a
shadow error counted under 400).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from modelops.drift.quality import Task
from modelops.serving.batcher import Batcher, Prediction
from modelops.serving.feedback import Entry, Feedback, predicted_names
from modelops.serving.metrics import ServerMetrics
from modelops.serving.protocol import ProtocolError, Rows, decode
from modelops.serving.state import ServedVersion

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT_ROWS = 4096
"""Rows of shadow copies queued or being predicted at most; more copies are shed."""


@dataclass(slots=True, eq=False)
class _Copy:
    model: str
    shadow: ServedVersion
    answered: ServedVersion
    rows: Rows
    n: int
    doc: dict[str, Any]
    binary: bytes | memoryview | None
    stable: npt.NDArray[Any]
    """Stable's predictions (class indices or values)."""
    rid: str | None
    entry: Entry | None
    """The request's ledger entry, when it had an id and was remembered."""
    queued: float
    transport: str
    """Of the request copied: the copy's requests, errors and latency are counted under it."""


class Shadows:
    """Runs shadow copies through the batcher; used from the event loop only."""

    def __init__(
        self,
        batcher: Batcher,
        metrics: ServerMetrics,
        feedback: Feedback,
        max_rows: int = MAX_IN_FLIGHT_ROWS,
    ) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.feedback = feedback
        self.max_rows = max_rows
        self.in_flight = 0
        """Rows of copies handed over and not yet predicted."""

    def submit(
        self,
        model: str,
        shadows: tuple[ServedVersion, ...],
        answered: ServedVersion,
        rows: Rows,
        n: int,
        doc: dict[str, Any],
        binary: bytes | memoryview | None,
        stable: npt.NDArray[Any],
        rid: str | None,
        entry: Entry | None,
        transport: str = "rest",
    ) -> None:
        """Hand over a copy of a request ``answered`` (stable) predicted as ``stable``, for
        each of ``shadows``; ``rows`` are its decoded inputs, ``doc`` (and ``binary``) the
        request for a shadow whose inputs differ; ``entry`` what the ledger remembered of its
        id ``rid``. Returns at once."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for shadow in shadows:
            if self.in_flight + n > self.max_rows:
                self.metrics.count_shadow(model, shadow.name, "shed")
                continue
            self.in_flight += n
            copy = _Copy(
                model, shadow, answered, rows, n, doc, binary, stable, rid, entry, now, transport
            )
            loop.call_soon(self._start, copy)

    def _start(self, copy: _Copy) -> None:
        shadow = copy.shadow.model
        stable = copy.answered.model
        assert shadow is not None and stable is not None
        try:
            rows = copy.rows
            if shadow.layout != stable.layout:
                rows = decode(
                    copy.doc, shadow.layout, classifier=shadow.classifier, binary=copy.binary
                ).rows
            future = self.batcher.submit(copy.shadow, rows, copy.n, False)
        except ProtocolError as exc:
            self._done(copy, None, exc.status)
            return
        future.add_done_callback(functools.partial(self._predicted, copy))

    def _predicted(self, copy: _Copy, future: asyncio.Future[Prediction]) -> None:
        if future.cancelled():
            self._done(copy, None, 503)
        elif isinstance(exc := future.exception(), ProtocolError):
            self._done(copy, None, exc.status)
        elif exc is not None:
            logger.error("shadow prediction of %s failed", copy.shadow.name, exc_info=exc)
            self._done(copy, None, 500)
        else:
            self._done(copy, future.result(), 200)

    def _done(self, copy: _Copy, prediction: Prediction | None, status: int) -> None:
        self.in_flight -= copy.n
        shadow = copy.shadow
        shadow.stats.transport(copy.transport).observe(time.perf_counter() - copy.queued, status)
        self.metrics.count_shadow(copy.model, shadow.name, "predicted" if prediction else "error")
        if prediction is None:
            return
        model, stable = shadow.model, copy.answered.model
        assert model is not None and stable is not None
        classes = model.class_names if model.classifier else None
        if model.classifier == stable.classifier:
            task: Task = "classification" if model.classifier else "regression"
            stable_classes = stable.class_names if stable.classifier else None
            self.feedback.agree(
                shadow.name,
                predicted_names(stable_classes, copy.stable),
                predicted_names(classes, prediction.values),
                task,
            )
        if copy.rid is not None and copy.entry is not None:
            self.feedback.record_shadow(
                copy.rid, copy.entry, shadow.name, classes, prediction.values
            )
