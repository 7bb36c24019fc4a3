"""Ground truth: which version predicted what for each request id, and the true labels clients
send back for those ids, joined into live quality counts per version.

**Ledger.** Every worker remembers, for each inference request that carried an ``id``, the
version(s) that predicted it and their predictions per row (class indices or values, packed
in one flat tuple the garbage collector does not track: about 250 bytes per id with one row),
and, when the answering version's ``spec.fairness.sensitiveFeatures`` names model inputs
(``sensitiveFeatures`` in the routing table), those inputs' values per row as text (one
``bytes`` object, each value cut to :data:`MAX_GROUP_VALUE_LENGTH` characters; nothing else
of the inputs is kept), for at most ``--feedback-ttl`` seconds and
``--feedback-max-ids`` ids, oldest evicted first. A request of more than :data:`MAX_ROWS` rows,
or whose id is longer than :data:`MAX_ID_LENGTH` characters, is not remembered (counted in
``modelops_feedback_ledger_dropped_total{reason="too_large"}``). Evicted ids are kept as
64-bit hashes (as many as ``--feedback-max-ids``), so feedback for them is ``expired`` rather
than ``unknown``.

**Prediction log.** Pods sit behind a Service and each runs several workers, so feedback seldom
reaches the worker that answered. Each worker writes, with every sketch flush, the ledger
entries it added in that window as one object (only when there are some; at most
:data:`LOG_MAX_ROWS` rows a window, the rest counted as dropped)::

    <namespace>/predictions/<deployment>/<start>-<pod>.json
    {"deployment": "iris", "pod": "iris-abc-w0", "start": 1.7e9, "end": 1.7e9, "dropped": 0,
     "classes": {"iris-v1": ["setosa", "versicolor", "virginica"]},
     "entries": [["req-1", 1.7e9, "iris-v1", [0, 2]],               # class indices per row
                 ["req-2", 1.7e9, "iris-v1", [1], "iris-v2", [1]]],  # + a shadow's
     "groups": {"req-1": {"sex": ["F", "M"]}}}   # sensitive inputs per row, when recorded

A worker receiving feedback looks in its own ledger first; for ids it does not know it reads
the deployment's prediction logs it has not read yet (listed by the time prefix of their keys,
so logs older than the TTL are never listed; each read once, indexed in a second ledger with the
same bounds), at most once every :data:`REFRESH_SECONDS`, waiting at most
:data:`REFRESH_TIMEOUT` seconds inside the call. Ids still unknown stay *pending* for
:data:`PENDING_INTERVALS` sketch intervals (the answering worker may not have flushed yet),
retried at each flush, then counted ``unknown`` (never seen) or ``expired`` (seen but evicted
or older than the TTL); at shutdown, ids still pending are counted ``unknown``. Each worker
deletes its own logs once older than the TTL.

**Joins.** A joined label is added to the receiving worker's :class:`QualityCounts` of each
version that predicted the id (the answering one and, in shadow mode, the shadow), written with
its next flush as a quality object (see :class:`modelops.controllers.windows.LiveQuality`)::

    <namespace>/quality/<deployment>/<version>/<start>-<pod>.json
    {"deployment", "version", "pod", "start", "end", "quality": QualityCounts | null,
     "agreement": Agreement | null, "feedback": {"received", "joined", "unknown", "expired",
     "duplicate", "mismatched"}, "groups": {feature: {group: QualityCounts}}}  # when any

**Groups.** A joined label is also counted per sensitive group, for live fairness (a
DriftMonitor's ``spec.fairness``): in ``"groups": {"sex": {"F": QualityCounts, ...}}`` of the
quality object. A row's group of a feature comes from the feedback item's ``groups`` (see
:func:`parse_feedback`), else from the model input of that name recorded at predict time.
Values are grouped as text (``(missing)`` for null or NaN); each feature keeps at most
:data:`~modelops.api.modelversion.MAX_GROUPS` groups per window, later ones counted in
``(other)``; a version's window keeps at most :data:`MAX_GROUP_FEATURES` features, later
ones are not counted per group.

Counters under the pseudo-version ``-`` are the ids no version could be found for. Feedback is
counted per item (one id); the confusion matrix and error sums per row. A label is joined at
most once per worker and version: a second one for the same id is ``duplicate``; a worker that
cannot see the first join (feedback for one id sent to two pods) counts it again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from modelops.api.modelversion import MAX_GROUPS
from modelops.api.trainingrun import MAX_SENSITIVE_FEATURES
from modelops.drift.fairness_live import MISSING_GROUP, OTHER_GROUP
from modelops.drift.quality import MAX_CLASSES, Agreement, QualityCounts
from modelops.serving.protocol import Layout, ProtocolError, Rows
from modelops.storage import ArtifactStore, Location

logger = logging.getLogger(__name__)

MAX_ROWS = 1000
"""Rows of one request the ledger remembers; a request with more is not remembered."""
MAX_ID_LENGTH = 256
"""Characters of a request id the ledger remembers; a longer id is not remembered."""
LOG_MAX_ROWS = 100_000
"""Rows one prediction log (one worker, one window) holds at most; the rest are dropped."""
REFRESH_SECONDS = 1.0
"""A worker lists and reads the prediction logs at most this often."""
REFRESH_TIMEOUT = 2.0
"""A feedback call waits at most this long for the prediction logs to be read."""
PENDING_INTERVALS = 2
"""Sketch intervals an unknown id stays pending before it is counted unknown or expired."""
NO_VERSION = "-"
"""The pseudo-version of the quality objects counting ids no version is known for."""
MIN_WINDOW_SECONDS = 1.0
"""A window ends (but at shutdown) only once this old, so keys of one worker never collide."""

Result = Literal["joined", "duplicate", "mismatched", "unknown", "expired"]
RESULTS: tuple[Result, ...] = ("joined", "duplicate", "mismatched", "unknown", "expired")
COUNTER_KEYS = ("received", *RESULTS)
"""The ``feedback`` counters of a quality object."""
MAX_GROUP_VALUE_LENGTH = 256
"""Characters of a group's name kept (as the trainer's fairness table keeps)."""
MAX_GROUP_FEATURES = 2 * MAX_SENSITIVE_FEATURES
"""Sensitive features one version's window counts groups of; later ones are not counted."""
LABEL_FIELDS = {"label": "classification", "labels": "classification"}
TARGET_FIELDS = {"target": "regression", "targets": "regression"}


# -- the ledger ----------------------------------------------------------------------------------


Answer = tuple[str, tuple[str, ...] | None, bytes]
"""One version's predictions for one request: ``(version, class names, values)``; values are
the rows' class indices into the names as int32, or (names None) a regressor's predictions
as float64, in native byte order (see :func:`answer_values`)."""
Entry = tuple[Any, ...]
"""What the ledger knows of one request id, as one flat tuple: ``(time answered (epoch
seconds), versions joined (space-separated), groups, version, names, values, version, names,
values, ...)`` with one :data:`Answer` per version that predicted it, the answering one first
(see :func:`answers_of`); ``groups`` is ``b""`` or the JSON ``{"sex": ["F", "M"]}`` of the
sensitive inputs per row (see :func:`input_groups`).

Flat tuples of strings, numbers, bytes and the shared tuple of a version's class names, never
objects or nested tuples: the cyclic garbage collector stops tracking such a tuple at its
first pass, so a full ledger adds nothing to its collections (100,000 entries as slotted
dataclasses made each full collection ~100 ms: a pause for every request in flight). An entry
changes by being replaced."""
CLASS_INDEX = np.dtype(np.int32)
VALUE = np.dtype(np.float64)


def answers_of(entry: Entry) -> list[Answer]:
    """The answers of a ledger entry, the answering version's first."""
    return [(entry[i], entry[i + 1], entry[i + 2]) for i in range(ANSWERS, len(entry), 3)]


ANSWERS = 3
"""Index of an entry's first answer."""


def groups_of(entry: Entry) -> dict[str, list[str]]:
    """The sensitive inputs an entry recorded, per feature the group of each row ({}: none,
    or not readable)."""
    raw: bytes = entry[2]
    if not raw:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return _valid_groups(doc)


def _valid_groups(doc: Any) -> dict[str, list[str]]:
    if not isinstance(doc, dict):
        return {}
    return {
        str(k): [str(g) for g in v]
        for k, v in list(doc.items())[:MAX_GROUP_FEATURES]
        if isinstance(v, list) and all(isinstance(g, str) for g in v)
    }


def group_name(value: Any, datatype: str | None = None) -> str:
    """A value as a group's name: text (``str``), an integral number of an ``INT64`` input
    without its ``.0``, ``(missing)`` for None or NaN, cut to MAX_GROUP_VALUE_LENGTH."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_GROUP
    if datatype == "INT64" and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif datatype == "BOOL" and isinstance(value, int | float):
        value = bool(value)
    return str(value)[:MAX_GROUP_VALUE_LENGTH]


def input_groups(rows: Rows, layout: Layout, features: Sequence[str]) -> bytes:
    """The values of the model inputs among ``features`` per row, as an entry's ``groups``
    (``b""`` when none of them is an input)."""
    found: dict[str, list[str]] = {}
    for name in features:
        i = layout.index.get(name)
        if i is None:
            continue
        column = rows[name] if isinstance(rows, dict) else rows[:, i]
        datatype = layout.datatypes[i]
        found[name] = [group_name(v, datatype) for v in np.asarray(column).tolist()]
    return orjson.dumps(found) if found else b""


def joined_of(entry: Entry) -> list[str]:
    """The versions a label was joined for."""
    joined: str = entry[1]
    return joined.split()


def answer_values(answer: Answer) -> npt.NDArray[Any]:
    """Per row: the class index (int32) or the predicted value (float64)."""
    return np.frombuffer(answer[2], CLASS_INDEX if answer[1] is not None else VALUE)


def _encode(classes: object, values: Any) -> bytes:
    return np.asarray(values, CLASS_INDEX if classes is not None else VALUE).tobytes()


class Ledger:
    """Request id -> :data:`Entry`, at most ``max_ids`` of them and none older than ``ttl``
    seconds (oldest evicted first); evicted ids are remembered as hashes (``hash(id)``,
    64-bit, so a collision between two live ids is about one in 10^19), at most ``max_ids``.

    :meth:`add` bounds the count only (it is on the request path); :meth:`get` never returns
    an entry older than the TTL, and :meth:`expire` (each flush) frees them."""

    def __init__(self, max_ids: int, ttl: float) -> None:
        if max_ids < 1 or ttl <= 0:
            raise ValueError("a ledger needs max_ids >= 1 and ttl > 0")
        self.max_ids = max_ids
        self.ttl = ttl
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._evicted: set[int] = set()
        self._evicted_order: collections.deque[int] = collections.deque()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, rid: str, entry: Entry) -> None:
        """Remember ``entry`` for ``rid`` (a newer entry for an id replaces the older)."""
        entries = self._entries
        if rid in entries:
            del entries[rid]
        entries[rid] = entry
        while len(entries) > self.max_ids:
            self._evict(entries.popitem(last=False)[0])

    def replace(self, rid: str, old: Entry, new: Entry) -> bool:
        """Put ``new`` in the place of ``old`` (same age) if ``rid`` still maps to ``old``."""
        if self._entries.get(rid) is not old:
            return False
        self._entries[rid] = new
        return True

    def peek(self, rid: str) -> Entry | None:
        """The entry of ``rid``, whatever its age."""
        return self._entries.get(rid)

    def get(self, rid: str, now: float) -> Entry | None:
        """The entry of ``rid`` if it is remembered and not older than the TTL."""
        entry = self._entries.get(rid)
        if entry is not None and entry[0] < now - self.ttl:
            del self._entries[rid]
            self._evict(rid)
            self.expire(now)
            return None
        return entry

    def was_evicted(self, rid: str) -> bool:
        """``rid`` was remembered once and has been evicted (by count or age)."""
        return hash(rid) in self._evicted

    def expire(self, now: float) -> None:
        """Evict the entries older than the TTL."""
        entries = self._entries
        cutoff = now - self.ttl
        while entries:
            rid, oldest = next(iter(entries.items()))
            if oldest[0] >= cutoff:
                break
            del entries[rid]
            self._evict(rid)

    def remember_evicted(self, rid: str) -> None:
        """Count ``rid`` as seen and evicted (an entry read from a log, already too old)."""
        self._evict(rid)

    def _evict(self, rid: str) -> None:
        key = hash(rid)
        if key in self._evicted:
            return
        self._evicted.add(key)
        self._evicted_order.append(key)
        if len(self._evicted_order) > self.max_ids:
            self._evicted.discard(self._evicted_order.popleft())


# -- feedback bodies -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One feedback item: the true label(s) or target value(s) of one request id."""

    id: str
    task: Literal["classification", "regression"]
    values: tuple[Any, ...]
    """Per row of the request: a class label (str, int, float or bool) or a target value."""
    single: bool
    """Sent as ``label``/``target`` (one row), not as a list."""
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per sensitive feature sent in ``groups``: the group of each row."""


def parse_feedback(doc: Any, task: str | None = None) -> list[Item]:
    """The items of a feedback body ``{"feedback": [{"id": ..., "label"|"labels"|"target"|
    "targets": ..., "groups": {...}}, ...]}``; a single item object without the list is
    accepted too.

    ``groups`` (optional) gives the sensitive groups of the item's rows, for live fairness:
    ``{"sex": "F"}`` (every row of the item in group ``F``) or ``{"sex": ["F", "M"]}`` (one
    per row, as many as labels), at most MAX_SENSITIVE_FEATURES features; values are strings,
    numbers, booleans or null (``(missing)``), grouped as text.

    ``task`` (the model's, when all its versions share one) makes a target for a classifier,
    or a label for a regressor, an error. Raises :class:`ProtocolError` (400) naming the item
    and what is wrong: not an object, no string ``id``, not exactly one of the four fields,
    an unknown field, labels that are not strings, numbers or booleans, targets that are not
    finite numbers, an empty list, or malformed ``groups``.
    """
    if not isinstance(doc, dict):
        raise ProtocolError('feedback body must be a JSON object {"feedback": [...]}')
    if "feedback" in doc:
        extra = sorted(set(doc) - {"feedback"})
        if extra:
            raise ProtocolError(f"unknown field(s) in the feedback body: {', '.join(extra)}")
        raw = doc["feedback"]
        if not isinstance(raw, list) or not raw:
            raise ProtocolError("'feedback' must be a non-empty list of items")
    else:
        raw = [doc]
    return [_item(x, i, task) for i, x in enumerate(raw)]


def _item(x: Any, i: int, task: str | None) -> Item:
    where = f"feedback[{i}]"
    if not isinstance(x, dict):
        raise ProtocolError(f'{where} must be an object {{"id": ..., "label": ...}}')
    rid = x.get("id")
    if not isinstance(rid, str) or not rid:
        raise ProtocolError(f"{where} needs a non-empty string 'id'")
    where = f"{where} (id {rid[:100]!r})"
    given = [k for k in (*LABEL_FIELDS, *TARGET_FIELDS) if k in x]
    unknown = sorted(set(x) - {"id", "groups", *LABEL_FIELDS, *TARGET_FIELDS})
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if len(given) != 1:
        raise ProtocolError(
            f"{where} needs exactly one of 'label', 'labels' (classifiers), "
            f"'target', 'targets' (regressors), not {len(given)}"
        )
    name = given[0]
    kind: Literal["classification", "regression"] = (
        "classification" if name in LABEL_FIELDS else "regression"
    )
    if task is not None and kind != task:
        wanted = "'label'/'labels'" if task == "classification" else "'target'/'targets'"
        raise ProtocolError(f"{where}: this model is a {task} model: send {wanted}, not {name!r}")
    value = x[name]
    single = name in ("label", "target")
    values = [value] if single else value
    if not isinstance(values, list) or not values:
        raise ProtocolError(f"{where}: {name!r} must be a non-empty list")
    check = _label if kind == "classification" else _target
    checked = tuple(check(v, where, name) for v in values)
    groups = _groups(x["groups"], len(checked), where) if "groups" in x else ()
    return Item(rid, kind, checked, single, groups)


def _groups(raw: Any, rows: int, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``groups`` of one item: per feature, the group of each of its ``rows``."""
    shape = '{"feature": value or [one value per row]}'
    if not isinstance(raw, dict) or not raw:
        raise ProtocolError(f"{where}: 'groups' must be a non-empty object {shape}")
    if len(raw) > MAX_SENSITIVE_FEATURES:
        raise ProtocolError(
            f"{where}: 'groups' names {len(raw)} features, at most {MAX_SENSITIVE_FEATURES}"
        )
    found = []
    for feature, value in raw.items():
        if not feature or len(feature) > MAX_GROUP_VALUE_LENGTH:
            raise ProtocolError(f"{where}: a 'groups' feature name must have 1 to 256 characters")
        values = value if isinstance(value, list) else [value] * rows
        if len(values) != rows:
            raise ProtocolError(
                f"{where}: groups[{feature[:100]!r}] has {len(values)} values for {rows} rows"
            )
        for v in values:
            if not (v is None or isinstance(v, str | int | float)):  # bool is an int
                raise ProtocolError(
                    f"{where}: groups[{feature[:100]!r}] takes strings, numbers, booleans or"
                    " null (one, or a list of one per row)"
                )
        found.append((feature, tuple(group_name(v) for v in values)))
    return tuple(found)


def _label(v: Any, where: str, name: str) -> Any:
    if isinstance(v, str | bool | int) or (isinstance(v, float) and math.isfinite(v)):
        return v
    raise ProtocolError(f"{where}: {name!r} takes class labels (strings, numbers or booleans)")


def _target(v: Any, where: str, name: str) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise ProtocolError(f"{where}: {name!r} takes finite numbers")


def class_name(label: Any, classes: Sequence[str]) -> str:
    """The class name a client's label stands for: labels are what ``predict`` answers
    (strings, or the numbers / booleans of models with such classes); ``1`` and ``1.0`` match
    the class ``1.0`` or ``1``. A label matching no class is kept as ``str(label)`` (a class
    the model never predicts: every one of its rows is an error)."""
    if isinstance(label, str):
        return label
    text = str(label)
    if text in classes or isinstance(label, bool):
        return text
    if isinstance(label, int):
        other = str(float(label))
    elif isinstance(label, float) and label.is_integer():
        other = str(int(label))
    else:
        return text
    return other if other in classes else text


# -- the service ---------------------------------------------------------------------------------


@dataclass
class Counts:
    """The answer to one feedback call: how many items came to what (``pending``: decided
    after the next reads of the prediction logs)."""

    received: int = 0
    joined: int = 0
    pending: int = 0
    unknown: int = 0
    expired: int = 0
    duplicate: int = 0
    mismatched: int = 0

    def add(self, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)

    def to_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "joined": self.joined,
            "pending": self.pending,
            "unknown": self.unknown,
            "expired": self.expired,
            "duplicate": self.duplicate,
            "mismatched": self.mismatched,
        }


@dataclass(slots=True)
class _Pending:
    item: Item
    version: str | None
    deadline: float
    model: str


@dataclass
class _Window:
    """What one worker joined and compared since its last flush."""

    start: float
    quality: dict[str, QualityCounts] = field(default_factory=dict)
    groups: dict[str, dict[str, dict[str, QualityCounts]]] = field(default_factory=dict)
    """Per version, per sensitive feature, per group: the labels joined."""
    agreement: dict[str, Agreement] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    """Ids answered in the window (their entries are read from the ledger when written)."""
    log_rows: int = 0
    log_dropped: int = 0

    def count(self, version: str, result: str) -> None:
        counters = self.counters.get(version)
        if counters is None:
            counters = self.counters[version] = dict.fromkeys(COUNTER_KEYS, 0)
        counters["received"] += 1
        counters[result] += 1


Counter = Callable[[str, str, str], None]
"""``(model, version, result)``: a metric increment."""


def prediction_log_key(namespace: str, deployment: str, start: float, pod: str) -> str:
    return f"{namespace}/predictions/{deployment}/{int(start)}-{pod}.json"


def quality_key(namespace: str, deployment: str, version: str, start: float, pod: str) -> str:
    return f"{namespace}/quality/{deployment}/{version}/{int(start)}-{pod}.json"


def log_prefixes(base: str, now: float, ttl: float, skew: float = 60.0) -> list[str]:
    """Key prefixes that together list the logs under ``base`` started within the last
    ``ttl`` seconds (and up to ``skew`` seconds ahead): keys start with whole epoch seconds,
    so a prefix of all but the last ``d`` digits covers ``10**d`` seconds; ``d`` is chosen for
    at most about a dozen prefixes whatever the TTL."""
    digits = max(1, math.ceil(math.log10(max(ttl, 10.0) / 10.0)))
    low = int(now - ttl) // 10**digits
    high = int(now + skew) // 10**digits
    return [f"{base}{b}" for b in range(low, high + 1)]


class Feedback:
    """The ledger, the prediction logs and the quality windows of one worker.

    Used from the event loop only (reading and writing the store happens in threads).
    ``count`` is called for each decided item with ``(model, version, result)``;
    ``dropped`` with a reason and a number when the ledger or a log refuses entries;
    ``written`` with the kind of object (``predictions``, ``quality``) and whether it was.
    """

    def __init__(
        self,
        store: ArtifactStore | None,
        bucket: str,
        pod: str,
        interval: float,
        *,
        max_ids: int = 100_000,
        ttl: float = 3600.0,
        count: Counter | None = None,
        dropped: Callable[[str, int], None] | None = None,
        written: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        """Epoch seconds (tests pass their own)."""
        self.store = store
        self.bucket = bucket
        self.pod = pod
        self.interval = interval
        self.ttl = ttl
        self.own = Ledger(max_ids, ttl)
        self.remote = Ledger(max_ids, ttl)
        self._count = count or (lambda model, version, result: None)
        self._dropped = dropped or (lambda reason, n: None)
        self._written = written or (lambda kind, ok: None)
        self._window = _Window(self.clock())
        self._pending: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self._read: dict[str, float] = {}
        """Prediction logs already read, by key, with their start."""
        self._mine: collections.deque[tuple[float, str]] = collections.deque()
        """Prediction logs this worker wrote: deleted once older than the TTL."""
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed = -math.inf
        self._where: tuple[str, str] | None = None
        self._class_names: dict[str, tuple[str, ...]] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the request path -------------------------------------------------------------------------

    def record(
        self,
        rid: str,
        version: str,
        classes: Sequence[str] | None,
        values: npt.NDArray[Any],
        now: float | None = None,
        groups: bytes = b"",
    ) -> Entry | None:
        """Remember what ``version`` predicted for request ``rid`` (``values``: class indices
        into ``classes``, or values with ``classes`` None; ``groups``: the sensitive inputs
        of its rows, from :func:`input_groups`); the entry, or None when the request is too
        large or its id too long to remember."""
        n = len(values)
        if n > MAX_ROWS or len(rid) > MAX_ID_LENGTH:
            self._dropped("too_large", 1)
            return None
        names = self._names(version, classes)
        entry: Entry = (
            self.clock() if now is None else now,
            "",
            groups,
            version,
            names,
            _encode(names, values),
        )
        self.own.add(rid, entry)
        window = self._window
        if window.log_rows + n > LOG_MAX_ROWS:
            window.log_dropped += 1
            self._dropped("log_full", 1)
        else:
            window.log.append(rid)
            window.log_rows += n
        return entry

    def _names(self, version: str, classes: Sequence[str] | None) -> tuple[str, ...] | None:
        """The class names as one shared tuple per version (a version's classes never
        change: its name stands for one artifact)."""
        if classes is None:
            return None
        names = self._class_names.get(version)
        if names is None or len(names) != len(classes):
            names = self._class_names[version] = tuple(classes)
        return names

    def record_shadow(
        self,
        rid: str,
        entry: Entry,
        version: str,
        classes: Sequence[str] | None,
        values: npt.NDArray[Any],
    ) -> None:
        """Add a shadow version's predictions to the ledger entry ``record`` returned for
        ``rid`` (nothing when it is no longer there, or a newer request took the id)."""
        current = self.own.peek(rid)
        if current is None or current[0] != entry[0]:
            return
        names = self._names(version, classes)
        self.own.replace(rid, current, (*current, version, names, _encode(names, values)))

    def agree(
        self,
        version: str,
        stable: Sequence[Any],
        shadow: Sequence[Any],
        task: Literal["classification", "regression"],
    ) -> None:
        """Compare a shadow version's predictions of one request with stable's (class names,
        or values) into this window's :class:`Agreement` of ``version``."""
        agreement = self._window.agreement.get(version)
        if agreement is None:
            agreement = self._window.agreement[version] = Agreement()
        agreement.add(stable, shadow, task)

    # -- feedback calls ---------------------------------------------------------------------------

    async def receive(
        self,
        model: str,
        namespace: str,
        deployment: str,
        items: Sequence[Item],
        version: str | None = None,
    ) -> Counts:
        """Join ``items``; ``version`` (from the URL) joins only into that version. Never
        raises for what the store does: ids that cannot be looked up stay pending."""
        self._where = (namespace, deployment)
        counts = Counts(received=len(items))
        now = self.clock()
        unresolved = []
        for item in items:
            result = self._resolve(model, item, version, now)
            if result is None:
                unresolved.append(item)
            else:
                counts.add(result)
        if unresolved:
            await self._refresh(wait=REFRESH_TIMEOUT)
            now = self.clock()
            for item in unresolved:
                result = self._resolve(model, item, version, now)
                if result is None:
                    result = self._pend(model, item, version, now)
                counts.add(result)
        return counts

    def _resolve(self, model: str, item: Item, version: str | None, now: float) -> str | None:
        """The item's result now, or None when its id is not known (yet)."""
        rid = item.id
        if len(rid) > MAX_ID_LENGTH:
            return self._decide(model, NO_VERSION, "unknown")
        for ledger in (self.own, self.remote):
            entry = ledger.get(rid, now)
            if entry is not None:
                return self._join(model, item, ledger, entry, version)
        if self.own.was_evicted(rid) or self.remote.was_evicted(rid):
            return self._decide(model, NO_VERSION, "expired")
        return None

    def _pend(self, model: str, item: Item, version: str | None, now: float) -> str:
        if item.id in self._pending:
            return self._decide(model, NO_VERSION, "duplicate")
        if len(self._pending) >= self.own.max_ids:
            return self._decide(model, NO_VERSION, "unknown")
        deadline = now + PENDING_INTERVALS * self.interval + MIN_WINDOW_SECONDS
        self._pending[item.id] = _Pending(item, version, deadline, model)
        return "pending"

    def _join(
        self, model: str, item: Item, ledger: Ledger, entry: Entry, version: str | None
    ) -> Result:
        """Join one item with the entry of its id; the result, counted under the version
        that answered (or, with ``version``, that one)."""
        answers, joined = answers_of(entry), joined_of(entry)
        chosen = [a for a in answers if version is None or a[0] == version]
        if not chosen:  # the URL names a version that did not predict this id
            return self._decide(model, answers[0][0], "mismatched")
        owner = chosen[0][0]
        todo = [a for a in chosen if a[0] not in joined]
        if not todo:
            return self._decide(model, owner, "duplicate")
        if any(not self._fits(item, a) for a in todo):
            return self._decide(model, owner, "mismatched")
        quality = self._window.quality
        groups = _row_groups(item, entry)
        for answer in todo:
            name, classes, values = answer[0], answer[1], answer_values(answer)
            counts = quality.get(name)
            if classes is None:
                counts = counts or QualityCounts.empty("regression")
                counts.add_regression(item.values, values)
            else:
                counts = counts or QualityCounts.empty("classification", classes)
                true = [class_name(v, classes) for v in item.values]
                counts.add_classification(true, [classes[i] for i in values.tolist()])
            quality[name] = counts
            if groups:
                self._count_groups(name, classes, item, values, groups)
            if name != owner:  # a shadow's join: its own counters
                self._decide(model, name, "joined")
        now_joined = " ".join([*joined, *(a[0] for a in todo)])
        ledger.replace(item.id, entry, (entry[0], now_joined, *entry[2:]))
        return self._decide(model, owner, "joined")

    def _count_groups(
        self,
        version: str,
        classes: tuple[str, ...] | None,
        item: Item,
        values: npt.NDArray[Any],
        groups: dict[str, list[str]],
    ) -> None:
        """Add the item's rows to the counts of their group of each sensitive feature (at
        most MAX_GROUPS groups a feature, later ones in ``(other)``)."""
        features = self._window.groups.setdefault(version, {})
        for feature, names in groups.items():
            table = features.get(feature)
            if table is None:
                if len(features) >= MAX_GROUP_FEATURES:
                    continue
                table = features[feature] = {}
            rows: dict[str, list[int]] = {}
            for i, group in enumerate(names):
                if group not in table and len(table) - (OTHER_GROUP in table) >= MAX_GROUPS:
                    group = OTHER_GROUP
                rows.setdefault(group, []).append(i)
                if group not in table:  # reserve its place so the cap counts it
                    table[group] = _empty(classes)
            for group, index in rows.items():
                counts = table[group]
                if classes is None:
                    counts.add_regression([item.values[i] for i in index], values[index])
                else:
                    true = [class_name(item.values[i], classes) for i in index]
                    counts.add_classification(true, [classes[int(values[i])] for i in index])

    def _fits(self, item: Item, answer: Answer) -> bool:
        """The item's labels are of the answer's kind and one per predicted row (and a
        classifier's confusion matrix can take its new labels)."""
        name, classes = answer[0], answer[1]
        if len(item.values) != len(answer_values(answer)):
            return False
        if classes is None:
            return item.task == "regression"
        if item.task != "classification":
            return False
        counts = self._window.quality.get(name)
        known = set(counts.classes if counts is not None else classes)
        new = {class_name(v, classes) for v in item.values} - known
        return len(known) + len(new) <= MAX_CLASSES

    def _decide(self, model: str, version: str, result: Result) -> Result:
        self._window.count(version, result)
        self._count(model, version if version != NO_VERSION else "", result)
        return result

    # -- reading the prediction logs --------------------------------------------------------------

    async def _refresh(self, wait: float) -> None:
        """Read the prediction logs not read yet (at most once every REFRESH_SECONDS; callers
        at the same time share one read), waiting at most ``wait`` seconds."""
        if self.store is None or self._where is None:
            return
        if self._refreshing is None:
            if self.clock() - self._refreshed < REFRESH_SECONDS:
                return
            self._refreshing = asyncio.ensure_future(self._read_logs(*self._where))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._refreshing), wait)

    async def _read_logs(self, namespace: str, deployment: str) -> None:
        try:
            now = self.clock()
            oldest = now - self.ttl - self.interval
            self._read = {k: s for k, s in self._read.items() if s >= oldest}
            base = f"{namespace}/predictions/{deployment}/"
            skip = set(self._read) | {key for _, key in self._mine}
            found = await asyncio.to_thread(self._list_new, base, now, oldest, skip)
            for key, start in found:
                docs = await asyncio.to_thread(self._get, key)
                self._read[key] = start
                if docs is not None:
                    self._index(docs, self.clock())
        except Exception as exc:  # the store unreachable: ids stay pending, retried later
            logger.warning("could not read the prediction logs: %s", exc)
        finally:
            self._refreshing = None
            self._refreshed = self.clock()

    def _list_new(
        self, base: str, now: float, oldest: float, skip: set[str]
    ) -> list[tuple[str, float]]:
        """Keys and starts of the logs to read: not read yet, not written by this process
        (a restarted worker of the same name does read its predecessor's), not too old."""
        assert self.store is not None
        found = []
        for prefix in log_prefixes(base, now, self.ttl + self.interval):
            for key in self.store.list(Location(self.bucket, prefix)):
                start = _start_of(key)
                if start is None or start < oldest or key in skip:
                    continue
                found.append((key, start))
        found.sort(key=lambda kv: kv[1])
        return found

    def _get(self, key: str) -> dict[str, Any] | None:
        assert self.store is not None
        try:
            doc = orjson.loads(self.store.get(Location(self.bucket, key)))
        except orjson.JSONDecodeError:
            logger.warning("prediction log %s is not JSON: skipped", key)
            return None
        return doc if isinstance(doc, dict) else None

    def _index(self, doc: dict[str, Any], now: float) -> None:
        """Put the entries of one prediction log into the remote ledger (malformed entries,
        or a malformed object, are skipped)."""
        classes = doc.get("classes")
        entries = doc.get("entries")
        groups = doc.get("groups")
        if not isinstance(groups, dict):
            groups = None
        if not isinstance(classes, dict) or not isinstance(entries, list):
            logger.warning("a prediction log of pod %r is malformed: skipped", doc.get("pod"))
            return
        # One list per version, shared by the entries (not one per entry).
        names = {v: tuple(str(c) for c in c_) for v, c_ in classes.items() if isinstance(c_, list)}
        cutoff = now - self.ttl
        for raw in entries:
            parsed = _parse_entry(raw, names, groups)
            if parsed is None:
                continue
            rid, entry = parsed
            if entry[0] < cutoff:
                self.remote.remember_evicted(rid)
            else:
                self.remote.add(rid, entry)

    # -- flushing ---------------------------------------------------------------------------------

    async def flush(self, namespace: str, deployment: str, *, final: bool = False) -> int:
        """Decide the pending ids that are due (all of them when ``final``), close the window
        (only once at least a second old, unless ``final``) and write its prediction log and
        quality objects; returns how many objects were written."""
        self._where = (namespace, deployment)
        now = self.clock()
        if self._pending:
            await self._refresh(wait=REFRESH_TIMEOUT)
            self._settle(self.clock(), final)
        window = self._window
        if not final and now - window.start < MIN_WINDOW_SECONDS:
            return 0
        self._window = _Window(now)
        self.own.expire(now)
        self.remote.expire(now)
        written = 0
        entries = self._logged(window.log)
        if entries:
            doc = await asyncio.to_thread(_log_document, entries, window, deployment, self.pod, now)
            key = prediction_log_key(namespace, deployment, window.start, self.pod)
            if await self._put(key, doc, "predictions"):
                written += 1
                self._mine.append((window.start, key))
        for version, doc_ in _quality_documents(window, deployment, self.pod, now):
            key = quality_key(namespace, deployment, version, window.start, self.pod)
            written += await self._put(key, orjson.dumps(doc_), "quality")
        await self._forget_old_logs(now)
        return written

    def _logged(self, rids: list[str]) -> list[tuple[str, Entry]]:
        """The entries of the ids answered in a window, each once, as the ledger has them now
        (with the shadows' answers); those already evicted are counted as dropped."""
        found = []
        for rid in dict.fromkeys(rids):
            entry = self.own.peek(rid)
            if entry is not None:
                found.append((rid, entry))
        if len(found) < len(set(rids)):
            self._dropped("evicted", len(set(rids)) - len(found))
        return found

    def _settle(self, now: float, final: bool) -> None:
        for rid, waiting in list(self._pending.items()):
            result = self._resolve(waiting.model, waiting.item, waiting.version, now)
            if result is None and (final or now >= waiting.deadline):
                result = self._decide(waiting.model, NO_VERSION, "unknown")
            if result is not None:
                del self._pending[rid]

    async def _put(self, key: str, data: bytes, kind: str) -> bool:
        if self.store is None:
            return False
        try:
            await asyncio.to_thread(
                self.store.put, Location(self.bucket, key), data, "application/json"
            )
        except Exception as exc:
            logger.warning("could not write %s: %s", key, exc)
            self._written(kind, False)
            return False
        self._written(kind, True)
        return True

    async def _forget_old_logs(self, now: float) -> None:
        """Delete this worker's prediction logs older than the TTL (best effort: the logs of
        pods that are gone stay; a bucket lifecycle rule on ``predictions/`` removes them)."""
        old = []
        while self._mine and self._mine[0][0] < now - self.ttl - 2 * self.interval:
            old.append(self._mine.popleft()[1])
        if not old or self.store is None:
            return
        store = self.store

        def delete() -> None:
            for key in old:
                store.delete_prefix(Location(self.bucket, key))

        try:
            await asyncio.to_thread(delete)
        except Exception as exc:
            logger.warning("could not delete old prediction logs: %s", exc)


def _empty(classes: tuple[str, ...] | None) -> QualityCounts:
    if classes is None:
        return QualityCounts.empty("regression")
    return QualityCounts.empty("classification", classes)


def _row_groups(item: Item, entry: Entry) -> dict[str, list[str]]:
    """Per sensitive feature, the group of each row of a joined item: the item's own
    ``groups``, else the inputs recorded with its prediction (one per row, or not used)."""
    found = groups_of(entry)
    found.update((feature, list(names)) for feature, names in item.groups)
    rows = len(item.values)
    return {f: names for f, names in found.items() if len(names) == rows}


def _start_of(key: str) -> float | None:
    """The window start a ``<start>-<pod>.json`` key names (None: not such a key)."""
    start, _, rest = key.rsplit("/", 1)[-1].partition("-")
    if not start.isdigit() or not rest.endswith(".json"):
        return None
    return float(start)


def _parse_entry(
    raw: Any, classes: dict[str, tuple[str, ...]], groups: Mapping[str, Any] | None = None
) -> tuple[str, Entry] | None:
    """``[id, time, version, [values], version, [values], ...]`` -> an entry (None: invalid);
    ``classes``: the log's class names per classifier version; ``groups``: the log's
    sensitive inputs by id."""
    if not isinstance(raw, list) or len(raw) < 4 or len(raw) % 2:
        return None
    rid, when = raw[0], raw[1]
    if not isinstance(rid, str) or not isinstance(when, int | float):
        return None
    found = _valid_groups((groups or {}).get(rid))
    entry: list[Any] = [float(when), "", orjson.dumps(found) if found else b""]
    for version, values in zip(raw[2::2], raw[3::2], strict=True):
        if not isinstance(version, str) or not isinstance(values, list) or not values:
            return None
        names = classes.get(version)
        if names is not None:
            if not all(type(i) is int and 0 <= i < len(names) for i in values):
                return None
        elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return None
        entry += [version, names, _encode(names, values)]
    return rid, tuple(entry)


def _log_document(
    entries: list[tuple[str, Entry]], window: _Window, deployment: str, pod: str, end: float
) -> bytes:
    classes: dict[str, tuple[str, ...]] = {}
    rows = []
    groups: dict[str, Any] = {}
    for rid, entry in entries:
        if entry[2]:
            groups[rid] = orjson.Fragment(entry[2])
        row: list[Any] = [rid, round(entry[0], 3)]
        for answer in answers_of(entry):
            if answer[1] is not None:
                classes.setdefault(answer[0], answer[1])
            row.append(answer[0])
            row.append(answer_values(answer).tolist())
        rows.append(row)
    return orjson.dumps(
        {
            "deployment": deployment,
            "pod": pod,
            "start": window.start,
            "end": end,
            "dropped": window.log_dropped,
            "classes": classes,
            "entries": rows,
            **({"groups": groups} if groups else {}),
        }
    )


def _quality_documents(
    window: _Window, deployment: str, pod: str, end: float
) -> Iterable[tuple[str, dict[str, Any]]]:
    versions = sorted(set(window.quality) | set(window.agreement) | set(window.counters))
    for version in versions:
        quality = window.quality.get(version)
        agreement = window.agreement.get(version)
        groups = {
            feature: {g: c.to_dict() for g, c in table.items() if c.labels}
            for feature, table in window.groups.get(version, {}).items()
        }
        yield (
            version,
            {
                "deployment": deployment,
                "version": version,
                "pod": pod,
                "start": window.start,
                "end": end,
                "quality": quality.to_dict() if quality is not None else None,
                "agreement": agreement.to_dict() if agreement is not None else None,
                "feedback": window.counters.get(version) or dict.fromkeys(COUNTER_KEYS, 0),
                **({"groups": groups} if groups else {}),
            },
        )


def predicted_names(classes: Sequence[str] | None, values: npt.NDArray[Any]) -> list[Any]:
    """Class names per row (``values`` class indices into ``classes``), or the values."""
    if classes is None:
        return list(np.asarray(values, dtype=np.float64).tolist())
    return [classes[i] for i in values.tolist()]
