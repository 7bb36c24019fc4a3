"""Retraining triggers of a DriftMonitor: drift, quality, new data and a cron schedule.

One place creates retraining TrainingRuns, :func:`start_retrain`, whatever started them; the
drift check and the quality rules call it, and :func:`check_triggers` (every monitor
interval, with or without live traffic) calls it for new data and the schedule.

Restart-safe, no duplicates: a run's name ``<monitor>-retrain-<n>`` follows from
``status.retrains``, and the decision state (``dataVersion``, ``lastScheduleTime``,
``lastRetrainTime``) is written in the same status patch as ``retrains``; an operator that
dies between creating a run and writing its status creates the same name again, which
exists, so nothing is repeated; one that was down misses nothing.

Cooldown (``spec.retrain.cooldown``), one for every trigger, at most one run per pass:

- drift and quality are level-triggered: inside the cooldown nothing is remembered, the next
  check that still fires after it retrains;
- new data inside the cooldown stays pending (``dataVersion`` keeps the old object) and is
  trained on by the first pass after it, once, on the newest object then;
- a schedule slot inside the cooldown is skipped (a run just happened; the next slot comes).

The first look at the data (a new monitor, or a changed ``dataset.uri``) and at the schedule
is a baseline, never a trigger. Slots missed while the operator was down give one run, for
the latest of them, as a Kubernetes CronJob does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Literal

import kopf
from cronsim import CronSim, CronSimError

from modelops.api.common import get_condition, parse_duration
from modelops.api.driftmonitor import DataVersion, DriftMonitor
from modelops.api.trainingrun import RetrainTrigger
from modelops.controllers.deployment import iso, parse_time
from modelops.controllers.main import runtime
from modelops.controllers.metrics import RETRAINS
from modelops.controllers.status import StatusWriter
from modelops.resources.training import retrain_run
from modelops.storage import ArtifactError, ArtifactStore, Location, ObjectInfo

CONDITION = "Retraining"
"""True: the triggers are armed (Watching, CooldownPending); False: they cannot run
(InvalidSpec, NoDataset, NotConfigured); Unknown: the store did not answer (StoreUnavailable)."""
DATASET_SUFFIXES = (".csv", ".parquet", ".pq")
"""Under a prefix, only objects the trainer reads count as data (not ``_SUCCESS`` markers)."""

DataChange = Literal["baseline", "new", "unchanged"]


# -- the schedule: pure -----------------------------------------------------------------------


def schedule_error(expr: str) -> str:
    """Why ``expr`` is not a usable five-field cron expression; "" when it is.

    Parsed by cronsim (Vixie cron semantics: day-of-month and day-of-week match when either
    does); an expression that never matches (``0 0 30 2 *``) is refused too.
    """
    if len(expr.split()) != 5:
        return f"{expr!r} is not a cron expression of five fields (minute hour day month weekday)"
    try:
        next(CronSim(expr, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    except (CronSimError, StopIteration) as exc:
        return f"{expr!r} is not a valid cron expression: {exc or 'it never matches'}"
    return ""


def last_slot(expr: str, now: dt.datetime) -> dt.datetime:
    """The latest slot of ``expr`` at or before ``now`` (aware, UTC).

    Raises ValueError for an invalid expression (see :func:`schedule_error`).
    """
    # cronsim's reverse iteration excludes its start; slots are whole minutes.
    start = now.astimezone(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
    return _slot(expr, start, reverse=True)


def next_slot(expr: str, now: dt.datetime) -> dt.datetime:
    """The first slot of ``expr`` after ``now`` (aware, UTC); ValueError when invalid."""
    return _slot(expr, now.astimezone(dt.UTC), reverse=False)


def _slot(expr: str, start: dt.datetime, reverse: bool) -> dt.datetime:
    if problem := schedule_error(expr):
        raise ValueError(problem)
    return next(CronSim(expr, start, reverse=reverse))


@dataclass(frozen=True)
class ScheduleDecision:
    """What the schedule asks at one moment."""

    due: dt.datetime | None
    """The slot to retrain for now; None when no slot came since the last one handled."""
    handled: dt.datetime
    """The last slot handled once this decision is carried out (``status.lastScheduleTime``)."""
    next: dt.datetime
    """The next slot (``status.nextScheduleTime``)."""


def schedule_decision(expr: str, handled: dt.datetime | None, now: dt.datetime) -> ScheduleDecision:
    """Whether a slot of ``expr`` came after ``handled`` (the last one handled) up to ``now``.

    No slot handled yet is the baseline: the latest slot counts as handled, nothing is due.
    Several slots missed give one due slot, the latest. Raises ValueError when invalid.
    """
    latest = last_slot(expr, now)
    upcoming = next_slot(expr, now)
    if handled is None or latest <= handled:
        return ScheduleDecision(None, handled or latest, upcoming)
    return ScheduleDecision(latest, latest, upcoming)


# -- new data: pure ---------------------------------------------------------------------------


def is_prefix(uri: str) -> bool:
    return uri.endswith("/")


def newest(objects: list[ObjectInfo]) -> ObjectInfo | None:
    """The newest dataset object of a listing (by last-modified time, then key); objects
    whose names do not end in .csv, .parquet or .pq are ignored. None when none is left."""
    data = [o for o in objects if o.location.key.lower().endswith(DATASET_SUFFIXES)]
    return max(data, key=lambda o: (o.last_modified, o.location.key), default=None)


def data_version(found: ObjectInfo | None, source: str) -> DataVersion:
    """What ``status.dataVersion`` records of ``found`` (or of an empty ``source``)."""
    if found is None:
        return DataVersion(uri=source)
    return DataVersion(
        uri=found.location.uri,
        etag=found.etag,
        last_modified=found.last_modified.isoformat().replace("+00:00", "Z"),
        size=found.size,
    )


def data_change(seen: DataVersion | None, found: ObjectInfo | None, source: str) -> DataChange:
    """Whether ``found`` (the object at ``source``, or the newest under the prefix) is new
    data compared with ``seen``, the object last accounted for.

    ``baseline`` when nothing was seen yet or ``source`` changed since; ``new`` when an
    object appeared where there was none, or the newest differs in name or ETag and is not
    older than ``seen`` (an older one becoming the newest, as when ``seen`` was deleted, is
    not new data); else ``unchanged`` (also when nothing is there now).
    """
    if seen is None or not (
        seen.uri == source or (is_prefix(source) and seen.uri.startswith(source))
    ):
        return "baseline"
    if found is None:
        return "unchanged"
    if seen.etag is None:
        return "new"
    if (found.location.uri, found.etag) == (seen.uri, seen.etag):
        return "unchanged"
    before = _parse(seen.last_modified)
    if before is not None and found.last_modified < before:
        return "unchanged"
    return "new"


def find_dataset(store: ArtifactStore, source: str) -> ObjectInfo | None:
    """The dataset object ``source`` names: the object itself (one HEAD), or the newest under
    a prefix (one listing per 1000 keys). None when absent; ArtifactError when the store
    does not answer."""
    loc = Location.parse(source)
    if is_prefix(source):
        return newest(store.list_objects(loc))
    return store.stat(loc)


# -- the cooldown and names: pure -------------------------------------------------------------


def cooldown_left(last_retrain: str | None, cooldown: str, now: float) -> float:
    """Seconds until another retraining may start (0 when one may now); ``last_retrain`` is
    ``status.lastRetrainTime`` (``%Y-%m-%dT%H:%M:%SZ``), ``now`` a Unix time."""
    if not last_retrain:
        return 0.0
    return max(0.0, parse_time(last_retrain) + parse_duration(cooldown) - now)


def run_number(retrains: Any) -> int:
    """The number of the next retraining run, from ``status.retrains``."""
    return int(retrains or 0) + 1


# -- the controller side ----------------------------------------------------------------------


async def start_retrain(
    monitor: DriftMonitor,
    body: kopf.Body,
    status: StatusWriter,
    current: dict[str, Any],
    trigger: RetrainTrigger,
    detail: str,
    dataset_uri: str | None = None,
) -> str | None:
    """Create the monitor's next retraining TrainingRun, unless the cooldown forbids it.

    For the drift check (``trigger="drift"``) and quality rules (``"quality"``) as well as
    the triggers here. ``current`` is the monitor's stored status (``body["status"]``),
    ``detail`` one line saying why (annotation ``modelops.dev/trigger-detail``, cut to 1024
    characters). ``dataset_uri`` replaces the template's ``dataset.uri``; when omitted and
    the monitor has ``onNewData``, the run trains on the object the template names (for a
    prefix: the newest under it, recorded as ``status.dataVersion``).

    Returns the run's name (``<monitor>-retrain-<n>``, created now or found created by a pass
    that died before writing its status), or None when nothing was started: inside the
    cooldown, a run already started in this pass, or no dataset object under the prefix
    (then ``Retraining=False, reason=NoDataset``). Raises ApiError when the API server
    refuses the TrainingRun. Needs ``monitor.spec.retrain``.
    """
    retrain = monitor.spec.retrain
    assert retrain is not None, "the CRD requires spec.retrain for every trigger"
    found: ObjectInfo | None = None
    if dataset_uri is None and retrain.on_new_data:
        source = retrain.template.dataset.uri
        try:
            found = await asyncio.to_thread(find_dataset, runtime.store, source)
        except ArtifactError as exc:
            status.condition(CONDITION, "Unknown", exc.reason, f"{trigger}: {exc}")
            return None
        if _no_dataset(status, trigger, source, found):
            return None
    return await _start(monitor, body, status, current, trigger, detail, found, dataset_uri)


async def _start(
    monitor: DriftMonitor,
    body: kopf.Body,
    status: StatusWriter,
    current: dict[str, Any],
    trigger: RetrainTrigger,
    detail: str,
    found: ObjectInfo | None,
    dataset_uri: str | None = None,
) -> str | None:
    """Create the run unless one started in this pass or the cooldown holds (then None)."""
    retrain = monitor.spec.retrain
    assert retrain is not None
    if "lastRetrain" in status.patch.status:
        return None  # one run per pass, whatever fired
    if cooldown_left(_stored(status, current, "lastRetrainTime"), retrain.cooldown, time.time()):
        return None
    template = retrain.template.wire()
    source = retrain.template.dataset.uri
    template["dataset"]["uri"] = found.location.uri if found else (dataset_uri or source)
    meta = monitor.metadata
    number = run_number(current.get("retrains"))
    run = retrain_run(meta["name"], meta["namespace"], number, template, trigger, detail)
    name: str = run["metadata"]["name"]
    kopf.adopt(run, owner=body)
    _, created = await runtime.cluster.create(run)
    if created:
        RETRAINS.labels(meta["namespace"], meta["name"]).inc()
        message = f"created TrainingRun {name} on {template['dataset']['uri']}: {trigger}, {detail}"
        kopf.info(body, reason="RetrainStarted", message=message[:1024])
    status.set(
        retrains=number, lastRetrain=name, lastRetrainTime=iso(time.time()), lastTrigger=trigger
    )
    if retrain.on_new_data and found is not None:
        status.set(dataVersion=_dump(data_version(found, source)))
    return name


async def check_triggers(
    monitor: DriftMonitor,
    body: kopf.Body,
    status: StatusWriter,
    current: dict[str, Any],
    now: dt.datetime | None = None,
) -> None:
    """Start a retraining run when new data arrived or a scheduled slot came; report on the
    ``Retraining`` condition. One store request at most (with ``onNewData``); ``now``
    defaults to the clock. Raises ApiError when the API server refuses the TrainingRun."""
    retrain = monitor.spec.retrain
    if retrain is None or (retrain.schedule is None and not retrain.on_new_data):
        if get_condition(status.conditions, CONDITION):
            status.condition(CONDITION, "False", "NotConfigured", "no schedule and no onNewData")
        return
    if retrain.schedule is not None and (problem := schedule_error(retrain.schedule)):
        status.condition(CONDITION, "False", "InvalidSpec", f"spec.retrain.schedule: {problem}")
        return
    # 1: new data first: a store that does not answer leaves the schedule's slot due
    try:
        found, data_due, data_note = await _check_data(monitor, status)
    except ArtifactError as exc:
        status.condition(CONDITION, "Unknown", exc.reason, str(exc))
        return
    # 2: the schedule
    slot, schedule_note = _check_schedule(monitor, status, now or dt.datetime.now(dt.UTC))
    due: list[tuple[RetrainTrigger, str]] = []
    if data_due:
        due.append(("new-data", data_due))
    if slot is not None:
        due.append(("schedule", f"schedule {retrain.schedule!r}, slot {_iso(slot)}"))
    if not due:
        notes = [n for n in (data_note, schedule_note) if n]
        status.condition(CONDITION, "True", "Watching", "; ".join(notes))
        return
    # 3: act, once for all that is due
    trigger, detail = due[0][0], "; ".join(d for _, d in due)
    if _no_dataset(status, trigger, retrain.template.dataset.uri, found):
        return
    if name := await _start(monitor, body, status, current, trigger, detail, found):
        status.condition(CONDITION, "True", "Watching", f"started {name}: {detail}")
        return
    left = cooldown_left(_stored(status, current, "lastRetrainTime"), retrain.cooldown, time.time())
    until = iso(time.time() + left)
    pending = [f"{data_due}: pending until the cooldown ends at {until}"] if data_due else []
    skipped = [f"slot {_iso(slot)} skipped: in the cooldown until {until}"] if slot else []
    reason = "CooldownPending" if pending else "Watching"
    status.condition(CONDITION, "True", reason, "; ".join(pending + skipped))


async def _check_data(
    monitor: DriftMonitor, status: StatusWriter
) -> tuple[ObjectInfo | None, str, str]:
    """(the dataset object now, why it is new data or "", a note for the condition)."""
    retrain = monitor.spec.retrain
    if retrain is None or not retrain.on_new_data:
        return None, "", ""
    source = retrain.template.dataset.uri
    found = await asyncio.to_thread(find_dataset, runtime.store, source)
    what = _describe(found) if found else f"{source} (empty)"
    change = data_change(monitor.status.data_version, found, source)
    if change == "baseline":
        status.set(dataVersion=_dump(data_version(found, source)))
        return found, "", f"data baseline {what}"
    if change == "new":
        return found, f"new data {what}", ""
    return found, "", f"data {what}"


def _check_schedule(
    monitor: DriftMonitor, status: StatusWriter, now: dt.datetime
) -> tuple[dt.datetime | None, str]:
    """(the slot due now or None, a note for the condition); records the slots in status."""
    retrain = monitor.spec.retrain
    if retrain is None or retrain.schedule is None:
        return None, ""
    handled = _parse(monitor.status.last_schedule_time)
    decision = schedule_decision(retrain.schedule, handled, now)
    if decision.handled != handled:  # written only on change: a slot handled stays handled
        status.set(lastScheduleTime=_iso(decision.handled))
    status.set(nextScheduleTime=_iso(decision.next))
    return decision.due, f"next slot {_iso(decision.next)}"


def _no_dataset(
    status: StatusWriter, trigger: RetrainTrigger, source: str, found: ObjectInfo | None
) -> bool:
    """A prefix with no dataset object under it gives a run nothing to train on: say so."""
    if found is not None or not is_prefix(source):
        return False
    message = f"{trigger}: no dataset object ({', '.join(DATASET_SUFFIXES)}) under {source}"
    status.condition(CONDITION, "False", "NoDataset", message)
    return True


def _stored(status: StatusWriter, current: dict[str, Any], key: str) -> Any:
    """A status field as this pass leaves it: written earlier in the pass, else stored."""
    return status.patch.status.get(key, current.get(key))


def _describe(found: ObjectInfo) -> str:
    return f"{found.location.uri} (ETag {found.etag}, {found.size} bytes)"


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str | None) -> dt.datetime | None:
    """An ISO 8601 time of our status; None when absent or unreadable (edited by hand)."""
    try:
        when = dt.datetime.fromisoformat(text or "")
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _dump(version: DataVersion) -> dict[str, Any]:
    # Nulls kept: in a merge patch they delete what an earlier version had (RFC 7396).
    return version.model_dump(by_alias=True, mode="json")
