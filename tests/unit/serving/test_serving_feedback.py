"""Ground truth in the model server: the ledger's bounds, feedback bodies, joins of classifier
and regressor rows (checked against scikit-learn and numpy), unknown / expired / duplicate /
mismatched ids, the prediction logs another pod joins from, and the quality objects written;
the endpoint over real HTTP with models trained by the real trainer."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
import skops.io as sio
from sklearn.metrics import confusion_matrix

from modelops.controllers.windows import LiveQuality
from modelops.drift.quality import ABS_ERROR_EDGES
from modelops.serving import feedback as feedback_module
from modelops.serving.feedback import (
    Feedback,
    Item,
    Ledger,
    class_name,
    log_prefixes,
    parse_feedback,
)
from modelops.serving.protocol import ProtocolError
from modelops.serving.router import id_slot
from modelops.serving.server import ModelServer
from modelops.storage import Location
from unit.serving.test_serving_support import (
    BUCKET,
    IRIS_FEATURES,
    MemoryStore,
    get,
    iris_frame,
    matrix_request,
    post,
    routing_table,
    serve_in_process,
    train_version,
)

CLASSES = ["setosa", "versicolor", "virginica"]
T0 = 1_700_000_000.0


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads per key and can delete."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def get(self, loc: Location) -> bytes:
        self.reads[loc.key] = self.reads.get(loc.key, 0) + 1
        return super().get(loc)

    def delete_prefix(self, loc: Location) -> int:
        keys = self.list(loc)
        for key in keys:
            del self.objects[(loc.bucket, key)]
        return len(keys)


def service(
    store: MemoryStore | None = None, pod: str = "pod-a", clock: Clock | None = None, **kw: Any
) -> Feedback:
    return Feedback(store, BUCKET, pod, 5.0, clock=clock or Clock(), **kw)


def labels(rid: str, *values: Any) -> Item:
    return parse_feedback({"id": rid, "labels": list(values)})[0]


def targets(rid: str, *values: float) -> Item:
    return parse_feedback({"id": rid, "targets": list(values)})[0]


async def receive(fb: Feedback, *items: Item, version: str | None = None) -> dict[str, int]:
    counts = await fb.receive("iris", "default", "iris", list(items), version)
    return counts.to_dict()


def objects(store: Any, path: str) -> dict[str, Any]:
    """The objects under ``default/<path>/``, parsed, by key."""
    prefix = Location(BUCKET, f"default/{path}/")
    return {key: orjson.loads(store.get(Location(BUCKET, key))) for key in store.list(prefix)}


def quality_of(store: Any, version: str, deployment: str = "iris") -> LiveQuality:
    """Every quality object of ``version``, added up as the operator does."""
    total = LiveQuality()
    for doc in objects(store, f"quality/{deployment}/{version}").values():
        total = total.merge(LiveQuality.from_dict(doc))
    return total


# -- the ledger ------------------------------------------------------------------------------------


def test_ledger_evicts_the_oldest_id_past_max_ids() -> None:
    ledger = Ledger(max_ids=2, ttl=100)
    for i, rid in enumerate("abc"):
        ledger.add(rid, (T0 + i, ""))
    assert len(ledger) == 2
    assert ledger.get("a", T0 + 3) is None and ledger.was_evicted("a")
    assert ledger.get("c", T0 + 3) is not None and not ledger.was_evicted("c")


def test_ledger_forgets_ids_older_than_the_ttl() -> None:
    ledger = Ledger(max_ids=10, ttl=60)
    ledger.add("old", (T0, ""))
    ledger.add("new", (T0 + 30, ""))
    assert ledger.get("old", T0 + 61) is None and ledger.was_evicted("old")
    assert ledger.get("new", T0 + 61) is not None


def test_ledger_remembers_at_most_max_ids_evicted_ids() -> None:
    ledger = Ledger(max_ids=2, ttl=100)
    for i, rid in enumerate("abcde"):
        ledger.add(rid, (T0 + i, ""))
    # a, b and c were evicted; only the last two of them are still remembered.
    assert [ledger.was_evicted(r) for r in "abcde"] == [False, True, True, False, False]


def test_ledger_entries_are_not_tracked_by_the_garbage_collector() -> None:
    fb = service()
    entry = fb.record("r1", "iris-v1", CLASSES, np.array([0, 2]))
    assert entry is not None
    fb.record_shadow("r1", entry, "iris-v2", None, np.array([1.5, 2.5]))
    fb.record("r2", "house-v1", None, np.array([3.0]))
    # A pass untracks a tuple once what it holds is untracked: the version's new tuple of
    # class names in the first, the entries holding it in the second.
    gc.collect()
    gc.collect()
    # A tracked entry would be walked by every full collection: 100k of them, ~100 ms.
    assert [gc.is_tracked(fb.own.peek(r)) for r in ("r1", "r2")] == [False, False]


# -- feedback bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([{"id": "a", "label": "x"}], "must be a JSON object"),
        ({"feedback": []}, "non-empty list"),
        ({"feedback": {"id": "a"}}, "non-empty list"),
        ({"feedback": [{"id": "a", "label": "x"}], "extra": 1}, "unknown field(s) in the"),
        ({"feedback": ["a"]}, "feedback[0] must be an object"),
        ({"feedback": [{"label": "x"}]}, "needs a non-empty string 'id'"),
        ({"feedback": [{"id": 7, "label": "x"}]}, "needs a non-empty string 'id'"),
        ({"feedback": [{"id": "a"}]}, "exactly one of"),
        ({"feedback": [{"id": "a", "label": "x", "labels": ["x"]}]}, "exactly one of"),
        ({"feedback": [{"id": "a", "lable": "x"}]}, "unknown field(s) lable"),
        ({"feedback": [{"id": "a", "labels": []}]}, "'labels' must be a non-empty list"),
        ({"feedback": [{"id": "a", "labels": "x"}]}, "'labels' must be a non-empty list"),
        ({"feedback": [{"id": "a", "label": None}]}, "takes class labels"),
        ({"feedback": [{"id": "a", "label": {"c": 1}}]}, "takes class labels"),
        ({"feedback": [{"id": "a", "target": "3.2"}]}, "takes finite numbers"),
        ({"feedback": [{"id": "a", "targets": [1.0, True]}]}, "takes finite numbers"),
    ],
)
def test_malformed_feedback_is_refused_with_a_message(body: Any, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_feedback(body)
    assert caught.value.status == 400 and message in str(caught.value)


def test_a_target_for_a_classifier_model_is_refused() -> None:
    with pytest.raises(ProtocolError, match="classification model: send 'label'/'labels'"):
        parse_feedback({"feedback": [{"id": "a", "target": 1.0}]}, "classification")


def test_feedback_items_come_as_a_list_or_one_object() -> None:
    many = parse_feedback(
        {"feedback": [{"id": "a", "label": "x"}, {"id": "b", "targets": [1, 2.5]}]}
    )
    one = parse_feedback({"id": "a", "label": "x"})
    assert many == [
        Item("a", "classification", ("x",), True),
        Item("b", "regression", (1.0, 2.5), False),
    ]
    assert one == many[:1]


@pytest.mark.parametrize(
    ("label", "classes", "name"),
    [
        ("setosa", CLASSES, "setosa"),
        (1, ["0", "1"], "1"),
        (1, ["0.0", "1.0"], "1.0"),
        (1.0, ["0", "1"], "1"),
        ("1", ["0", "1"], "1"),
        (True, ["False", "True"], "True"),
        (0, CLASSES, "0"),  # an integer is a label, never an index into the classes
    ],
)
def test_labels_name_the_class_predict_answers(label: Any, classes: list[str], name: str) -> None:
    assert class_name(label, classes) == name


# -- joins -----------------------------------------------------------------------------------------


async def test_classifier_labels_join_into_the_confusion_matrix_of_the_answering_version() -> None:
    rng = np.random.default_rng(7)
    predicted = rng.integers(0, 3, size=(30, 4))
    true = rng.integers(0, 3, size=(30, 4))
    store = MemoryStore()
    fb = service(store)
    for i in range(30):
        fb.record(f"r{i}", "iris-v1", CLASSES, predicted[i])
    items = [labels(f"r{i}", *(CLASSES[j] for j in true[i])) for i in range(30)]
    assert (await receive(fb, *items))["joined"] == 30
    await fb.flush("default", "iris", final=True)
    quality = quality_of(store, "iris-v1").quality
    assert quality is not None and quality.classes == CLASSES
    expected = confusion_matrix(true.ravel(), predicted.ravel(), labels=[0, 1, 2])
    np.testing.assert_array_equal(quality.confusion, expected)


async def test_regressor_targets_join_into_error_sums_and_the_abs_error_histogram() -> None:
    rng = np.random.default_rng(3)
    predicted = rng.normal(10, 3, size=(25, 2))
    true = predicted + rng.normal(0, 2, size=(25, 2))
    store = MemoryStore()
    fb = service(store)
    for i in range(25):
        fb.record(f"r{i}", "house-v1", None, predicted[i])
    assert (await receive(fb, *(targets(f"r{i}", *true[i]) for i in range(25))))["joined"] == 25
    await fb.flush("default", "iris", final=True)
    quality = quality_of(store, "house-v1").quality
    assert quality is not None
    error = (predicted - true).ravel()
    assert quality.labels == 50
    assert quality.sum_error == pytest.approx(error.sum())
    assert quality.sum_abs_error == pytest.approx(np.abs(error).sum())
    assert quality.sum_squared_error == pytest.approx(np.square(error).sum())
    bins = np.searchsorted(ABS_ERROR_EDGES, np.abs(error), side="right")
    expected = np.bincount(bins, minlength=len(ABS_ERROR_EDGES) + 1)
    np.testing.assert_array_equal(quality.abs_error_counts, expected)


async def test_a_second_label_for_an_id_is_a_duplicate_and_not_counted() -> None:
    store = MemoryStore()
    fb = service(store)
    fb.record("r1", "iris-v1", CLASSES, np.array([0]))
    first = await receive(fb, labels("r1", "setosa"))
    again = await receive(fb, labels("r1", "versicolor"), labels("r1", "setosa"))
    await fb.flush("default", "iris", final=True)
    assert (first["joined"], again["duplicate"], again["joined"]) == (1, 2, 0)
    quality = quality_of(store, "iris-v1")
    assert quality.quality is not None and quality.quality.labels == 1
    assert quality.feedback["duplicate"] == 2


async def test_labels_that_do_not_fit_the_prediction_are_mismatched() -> None:
    store = MemoryStore()
    fb = service(store)
    fb.record("rows", "iris-v1", CLASSES, np.array([0, 1, 2]))
    fb.record("kind", "iris-v1", CLASSES, np.array([0]))
    counts = await receive(fb, labels("rows", "setosa", "setosa"), targets("kind", 1.0))
    assert counts["mismatched"] == 2 and counts["joined"] == 0
    # Not joined, so a correct label still joins afterwards.
    assert (await receive(fb, labels("rows", "setosa", "versicolor", "setosa")))["joined"] == 1


async def test_the_version_in_the_url_joins_only_ids_that_version_predicted() -> None:
    fb = service()
    fb.record("r1", "iris-v1", CLASSES, np.array([0]))
    assert (await receive(fb, labels("r1", "setosa"), version="iris-v2"))["mismatched"] == 1
    assert (await receive(fb, labels("r1", "setosa"), version="iris-v1"))["joined"] == 1


async def test_feedback_for_an_evicted_or_too_old_id_is_expired() -> None:
    clock = Clock()
    fb = service(clock=clock, max_ids=1, ttl=60)
    fb.record("evicted", "iris-v1", CLASSES, np.array([0]))
    fb.record("aged", "iris-v1", CLASSES, np.array([0]))
    assert (await receive(fb, labels("evicted", "setosa")))["expired"] == 1
    clock.advance(61)
    assert (await receive(fb, labels("aged", "setosa")))["expired"] == 1


async def test_an_id_never_seen_is_pending_then_counted_unknown() -> None:
    clock = Clock()
    store = MemoryStore()
    fb = service(store, clock=clock)
    assert (await receive(fb, labels("nobody", "setosa")))["pending"] == 1
    clock.advance(5)
    await fb.flush("default", "iris")
    assert fb.pending == 1  # the worker that answered may not have written its log yet
    clock.advance(6.5)  # two intervals and a second after it came
    await fb.flush("default", "iris")
    assert fb.pending == 0
    assert quality_of(store, "-").feedback == {
        "received": 1,
        "joined": 0,
        "duplicate": 0,
        "mismatched": 0,
        "unknown": 1,
        "expired": 0,
    }


async def test_too_large_requests_are_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[tuple[str, int]] = []
    fb = service(dropped=lambda reason, n: dropped.append((reason, n)))
    assert fb.record("big", "iris-v1", CLASSES, np.zeros(1001, np.intp)) is None
    assert fb.record("x" * 257, "iris-v1", CLASSES, np.zeros(1, np.intp)) is None
    assert dropped == [("too_large", 1), ("too_large", 1)] and len(fb.own) == 0


# -- prediction logs and other pods ----------------------------------------------------------------


async def test_an_id_another_pod_answered_joins_from_its_prediction_log() -> None:
    clock, store = Clock(), CountingStore()
    a, b = service(store, "pod-a", clock), service(store, "pod-b", clock)
    a.record("r1", "iris-v1", CLASSES, np.array([0, 2]))
    a.record("r2", "iris-v1", CLASSES, np.array([1]))
    clock.advance(5)
    await a.flush("default", "iris")
    assert (await receive(b, labels("r1", "setosa", "versicolor")))["joined"] == 1
    clock.advance(1)
    assert (await receive(b, labels("r2", "versicolor")))["joined"] == 1
    await b.flush("default", "iris", final=True)
    (log_key,) = store.list(Location(BUCKET, "default/predictions/iris/"))
    assert store.reads[log_key] == 1  # each log is read once
    docs = objects(store, "quality/iris/iris-v1")
    assert [d["pod"] for d in docs.values()] == ["pod-b"]
    quality = quality_of(store, "iris-v1").quality
    assert quality is not None
    # (true, predicted): (setosa, setosa), (versicolor, virginica), (versicolor, versicolor)
    np.testing.assert_array_equal(quality.confusion, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])


async def test_a_shadow_answer_in_another_pods_log_joins_for_both_versions() -> None:
    clock, store = Clock(), MemoryStore()
    a, b = service(store, "pod-a", clock), service(store, "pod-b", clock)
    entry = a.record("r1", "iris-v1", CLASSES, np.array([0]))
    assert entry is not None
    a.record_shadow("r1", entry, "iris-v2", ["setosa", "virginica"], np.array([1]))
    clock.advance(5)
    await a.flush("default", "iris")
    assert (await receive(b, labels("r1", "setosa")))["joined"] == 1
    await b.flush("default", "iris", final=True)
    v1, v2 = quality_of(store, "iris-v1").quality, quality_of(store, "iris-v2").quality
    assert v1 is not None and v1.value("accuracy") == 1.0
    assert v2 is not None and v2.classes == ["setosa", "virginica"]
    np.testing.assert_array_equal(v2.confusion, [[0, 1], [0, 0]])


async def test_a_restarted_worker_joins_ids_its_predecessor_of_the_same_name_answered() -> None:
    clock, store = Clock(), MemoryStore()
    before = service(store, "pod-a-w0", clock)
    before.record("r1", "iris-v1", CLASSES, np.array([0]))
    clock.advance(5)
    await before.flush("default", "iris", final=True)
    after = service(store, "pod-a-w0", clock)
    assert (await receive(after, labels("r1", "setosa")))["joined"] == 1


async def test_a_malformed_prediction_log_is_skipped() -> None:
    clock, store = Clock(), MemoryStore()
    for i, body in enumerate(
        [b"not json", b'{"entries": 3}', b'{"classes": {}, "entries": [[1]]}']
    ):
        key = f"default/predictions/iris/{int(T0) - i}-pod-x.json"
        store.put(Location(BUCKET, key), body)
    b = service(store, "pod-b", clock)
    assert (await receive(b, labels("r1", "setosa")))["pending"] == 1


async def test_an_id_whose_log_is_not_written_yet_joins_at_a_later_flush() -> None:
    clock, store = Clock(), MemoryStore()
    a, b = service(store, "pod-a", clock), service(store, "pod-b", clock)
    a.record("r1", "iris-v1", CLASSES, np.array([2]))
    assert (await receive(b, labels("r1", "virginica")))["pending"] == 1
    clock.advance(5)
    await a.flush("default", "iris")
    await b.flush("default", "iris")
    assert b.pending == 0
    quality = quality_of(store, "iris-v1")
    assert quality.feedback["joined"] == 1
    assert quality.quality is not None and quality.quality.value("accuracy") == 1.0


async def test_prediction_logs_older_than_the_ttl_are_never_read() -> None:
    clock, store = Clock(), CountingStore()
    a = service(store, "pod-a", clock, ttl=60)
    a.record("r1", "iris-v1", CLASSES, np.array([0]))
    clock.advance(5)
    await a.flush("default", "iris")
    (log_key,) = store.list(Location(BUCKET, "default/predictions/iris/"))
    clock.advance(100)
    b = service(store, "pod-b", clock, ttl=60)
    assert (await receive(b, labels("r1", "setosa")))["pending"] == 1
    assert log_key not in store.reads


async def test_a_worker_deletes_its_own_logs_once_older_than_the_ttl() -> None:
    clock, store = Clock(), CountingStore()
    a = service(store, "pod-a", clock, ttl=60)
    a.record("r1", "iris-v1", CLASSES, np.array([0]))
    clock.advance(5)
    await a.flush("default", "iris")
    assert len(objects(store, "predictions/iris")) == 1
    clock.advance(71)  # the TTL and two intervals
    await a.flush("default", "iris")
    assert objects(store, "predictions/iris") == {}


async def test_a_full_prediction_log_drops_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feedback_module, "LOG_MAX_ROWS", 3)
    dropped: list[str] = []
    clock, store = Clock(), MemoryStore()
    a = service(store, "pod-a", clock, dropped=lambda reason, n: dropped.append(reason))
    a.record("r1", "iris-v1", CLASSES, np.array([0, 1]))
    a.record("r2", "iris-v1", CLASSES, np.array([0, 1]))
    clock.advance(5)
    await a.flush("default", "iris")
    (log,) = objects(store, "predictions/iris").values()
    assert [e[0] for e in log["entries"]] == ["r1"] and log["dropped"] == 1
    assert dropped == ["log_full"]
    assert a.own.get("r2", clock()) is not None  # still joins on this worker


def test_log_prefixes_cover_the_ttl_with_few_listings() -> None:
    prefixes = log_prefixes("ns/predictions/iris/", 1_700_003_500.0, 3600)
    assert prefixes == [f"ns/predictions/iris/{b}" for b in range(1_699_999, 1_700_004)]
    day = log_prefixes("p/", 1_700_003_500.0, 86400)
    assert len(day) <= 12 and all(len(p) == len("p/") + 6 for p in day)


# -- quality objects -------------------------------------------------------------------------------


async def test_quality_objects_follow_the_live_quality_contract() -> None:
    clock, store = Clock(), MemoryStore()
    fb = service(store, "pod-a-w1", clock)
    fb.record("r1", "iris-v1", CLASSES, np.array([0, 1]))
    await receive(fb, labels("r1", "setosa", "virginica"))
    fb.agree("iris-v2", ["setosa", "virginica"], ["setosa", "versicolor"], "classification")
    clock.advance(5)
    assert await fb.flush("default", "iris") == 3  # the log, and two versions' objects
    docs = objects(store, "quality/iris")
    assert sorted(docs) == [
        f"default/quality/iris/iris-v1/{int(T0)}-pod-a-w1.json",
        f"default/quality/iris/iris-v2/{int(T0)}-pod-a-w1.json",
    ]
    v1, v2 = (docs[k] for k in sorted(docs))
    assert (v1["deployment"], v1["version"], v1["pod"]) == ("iris", "iris-v1", "pod-a-w1")
    assert (v1["start"], v1["end"]) == (T0, T0 + 5)
    assert v1["quality"] == {
        "task": "classification",
        "classes": CLASSES,
        "confusion": [[1, 0, 0], [0, 0, 0], [0, 1, 0]],
    }
    assert v1["agreement"] is None and v1["feedback"]["joined"] == 1
    assert v2["quality"] is None
    assert v2["agreement"] == {"compared": 2, "agreed": 1, "sumAbsDifference": 0.0}


async def test_a_window_without_labels_or_comparisons_writes_no_quality_object() -> None:
    clock, store = Clock(), MemoryStore()
    fb = service(store, clock=clock)
    fb.record("r1", "iris-v1", CLASSES, np.array([0]))
    clock.advance(5)
    await fb.flush("default", "iris")
    assert objects(store, "quality/iris") == {} and len(objects(store, "predictions/iris")) == 1


# -- the endpoint, shadow and sticky routing over HTTP ---------------------------------------------


class Models:
    def __init__(self) -> None:
        self.store = MemoryStore()
        frame = iris_frame()
        self.frame = frame
        self.v1 = train_version(self.store, "iris-v1", frame, "species", params={"max_iter": 500})
        self.v2 = train_version(self.store, "iris-v2", frame, "species", "DecisionTreeClassifier")
        three = frame.drop(columns=["petal_width"])
        self.narrow = train_version(self.store, "iris-v3", three, "species")

    def table(self, *versions: tuple[Mapping[str, Any], str, int], **extra: Any) -> Any:
        return {**routing_table(versions), **extra}

    def predict(self, entry: Mapping[str, Any], rows: Any) -> list[str]:
        """What the version's estimator, loaded apart, predicts for ``rows``."""
        data = self.store.get(Location.parse(entry["artifact"]["uri"]))
        estimator = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
        return [str(label) for label in estimator.predict(rows)]


@pytest.fixture(scope="module")
def models() -> Models:
    return Models()


@asynccontextmanager
async def served(
    models: Models, table: Mapping[str, Any], **config: Any
) -> AsyncIterator[tuple[ModelServer, str, aiohttp.ClientSession]]:
    """The server on a copy of the models' store (``server.store``): each test's objects
    are its own."""
    store = MemoryStore()
    store.objects = dict(models.store.objects)
    async with (
        serve_in_process(store, table, **config) as (server, url),
        aiohttp.ClientSession() as session,
    ):
        yield server, url, session


ROWS = iris_frame()[IRIS_FEATURES].to_numpy()


async def infer(
    s: aiohttp.ClientSession, url: str, rows: Any, rid: str | None = None, **headers: str
) -> dict[str, Any]:
    body = orjson.dumps(matrix_request(rows, rid))
    async with s.post(url + "/v2/models/iris/infer", data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = orjson.loads(await r.read())
        return answer


async def settle(server: ModelServer) -> None:
    """Until the shadow copies handed over are predicted."""
    for _ in range(1000):
        if server.shadows.in_flight == 0:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("shadow copies still in flight")


async def test_the_feedback_endpoint_joins_labels_of_requests_the_server_answered(
    models: Models,
) -> None:
    frame = models.frame.iloc[::5]
    batches = [frame.iloc[i : i + 3] for i in range(0, len(frame), 3)]
    async with served(models, models.table((models.v1, "stable", 100))) as (server, url, s):
        predicted, true, items = [], [], []
        for i, batch in enumerate(batches):
            answer = await infer(s, url, batch[IRIS_FEATURES].to_numpy(), f"req-{i}")
            predicted += answer["outputs"][0]["data"]
            true += batch["species"].tolist()
            items.append({"id": f"req-{i}", "labels": batch["species"].tolist()})
        items.append({"id": "never-sent", "label": "setosa"})
        status, counts = await post(s, url + "/v2/models/iris/feedback", {"feedback": items})
        await server.flush_sketches(final=True)
    assert status == 200
    assert counts == {
        "received": len(batches) + 1,
        "joined": len(batches),
        "pending": 1,
        "unknown": 0,
        "expired": 0,
        "duplicate": 0,
        "mismatched": 0,
    }
    quality = quality_of(server.store, "iris-v1").quality
    assert quality is not None
    expected = confusion_matrix(true, predicted, labels=CLASSES)
    np.testing.assert_array_equal(quality.confusion, expected)
    assert quality_of(server.store, "-").feedback["unknown"] == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"feedback": [{"id": "a"}]}', "exactly one of"),
        (b'{"feedback": [{"id": "a", "target": 1.5}]}', "classification model"),
    ],
)
async def test_a_malformed_feedback_body_is_a_400_with_an_error(
    models: Models, raw: bytes, message: str
) -> None:
    async with served(models, models.table((models.v1, "stable", 100))) as (_, url, s):
        status, body = await post(s, url + "/v2/models/iris/feedback", None, raw=raw)
    assert status == 400 and message in body["error"]


async def test_feedback_for_unknown_models_and_versions_is_404_and_get_is_405(
    models: Models,
) -> None:
    body = {"feedback": [{"id": "a", "label": "setosa"}]}
    async with served(models, models.table((models.v1, "stable", 100))) as (_, url, s):
        unknown_model = await post(s, url + "/v2/models/nope/feedback", body)
        unknown_version = await post(s, url + "/v2/models/iris/versions/9/feedback", body)
        wrong_method = await get(s, url + "/v2/models/iris/feedback")
    assert unknown_model[0] == 404 and "unknown model 'nope'" in unknown_model[1]["error"]
    assert unknown_version[0] == 404 and "no version '9'" in unknown_version[1]["error"]
    assert wrong_method[0] == 405


async def test_feedback_results_are_counted_in_the_metrics(models: Models) -> None:
    async with served(models, models.table((models.v1, "stable", 100))) as (_, url, s):
        await infer(s, url, ROWS[:1], "m1")
        await post(s, url + "/v2/models/iris/feedback", {"id": "m1", "label": "setosa"})
        await post(s, url + "/v2/models/iris/feedback", {"id": "m1", "label": "setosa"})
        _, text = await get(s, url + "/metrics")
    lines = text.splitlines()
    joined = 'modelops_feedback_labels_total{model="iris",result="joined",version="iris-v1"} 1.0'
    duplicate = joined.replace("joined", "duplicate")
    assert joined in lines and duplicate in lines
    assert "modelops_feedback_ledger_ids 1.0" in lines


async def test_shadow_mode_answers_with_stable_and_the_shadow_predicts_a_copy(
    models: Models,
) -> None:
    table = models.table((models.v1, "stable", 50), (models.v2, "canary", 50), mode="shadow")
    rng = np.random.default_rng(1)
    requests = [ROWS[rng.choice(len(ROWS), 2)] for _ in range(30)]
    async with served(models, table) as (server, url, s):
        answers = [await infer(s, url, rows, f"s{i}") for i, rows in enumerate(requests)]
        await settle(server)
        feedback = [
            {"id": f"s{i}", "labels": a["outputs"][0]["data"]} for i, a in enumerate(answers)
        ]
        status, counts = await post(s, url + "/v2/models/iris/feedback", {"feedback": feedback})
        shadow_stats = server.metrics.stats("iris", "iris-v2")
        await server.flush_sketches(final=True)
    assert {a["model_version"] for a in answers} == {"iris-v1"}
    assert shadow_stats.requests == 30 and shadow_stats.rows == 60
    stable = [label for a in answers for label in a["outputs"][0]["data"]]
    x = np.concatenate(requests)
    shadow = models.predict(models.v2, x)
    agreement = quality_of(server.store, "iris-v2").agreement
    assert agreement is not None
    assert (agreement.compared, agreement.agreed) == (60, sum(map(str.__eq__, stable, shadow)))
    # Labels (here stable's own answers) join for both versions.
    assert status == 200 and counts["joined"] == 30
    v1, v2 = quality_of(server.store, "iris-v1"), quality_of(server.store, "iris-v2")
    assert v1.quality is not None and v1.quality.value("accuracy") == 1.0
    assert v2.quality is not None and v2.quality.labels == 60
    windows = objects(server.store, "sketches/iris/iris-v2")
    assert sum(w["nRows"] for w in windows.values()) == 60


async def test_a_failing_shadow_is_never_the_clients_error(models: Models) -> None:
    table = models.table((models.v1, "stable", 100), (models.narrow, "canary", 0), mode="shadow")
    async with served(models, table) as (server, url, s):
        answer = await infer(s, url, ROWS[:2], "f1")  # four features: the shadow takes three
        await settle(server)
        _, text = await get(s, url + "/metrics")
    assert answer["model_version"] == "iris-v1"
    error = 'modelops_serving_shadow_requests_total{model="iris",result="error",version="iris-v3"}'
    assert f"{error} 1.0" in text.splitlines()
    # counted under the transport of the request copied
    assert server.metrics.stats("iris", "iris-v3").rest.errors == {400: 1}


async def test_shadow_copies_over_the_in_flight_bound_are_shed(models: Models) -> None:
    table = models.table((models.v1, "stable", 100), (models.v2, "canary", 0), mode="shadow")
    async with served(models, table) as (server, url, s):
        server.shadows.max_rows = 2
        await infer(s, url, ROWS[:3])
        await infer(s, url, ROWS[:2])
        await settle(server)
    shed = server.metrics.shadow
    assert shed == {("iris", "iris-v2", "shed"): 1, ("iris", "iris-v2", "predicted"): 1}


async def test_a_request_naming_the_shadow_is_answered_by_it_without_a_copy(
    models: Models,
) -> None:
    table = models.table((models.v1, "stable", 100), (models.v2, "canary", 0), mode="shadow")
    async with served(models, table) as (server, url, s):
        status, answer = await post(
            s, url + "/v2/models/iris/versions/iris-v2/infer", matrix_request(ROWS[:1])
        )
        await settle(server)
    assert status == 200 and answer["model_version"] == "iris-v2"
    assert server.metrics.shadow == {}


async def test_a_sticky_header_keeps_each_user_on_one_version(models: Models) -> None:
    table = models.table(
        (models.v1, "stable", 50), (models.v2, "canary", 50), mode="abtest", stickyHeader="X-User"
    )
    users = [f"user-{i}" for i in range(16)]
    async with served(models, table) as (_, url, s):
        seen = {
            user: {
                (await infer(s, url, ROWS[:1], f"{user}-{k}", **{"x-user": user}))["model_version"]
                for k in range(4)
            }
            for user in users
        }
    expected = {u: {"iris-v2" if id_slot(u) < 50 else "iris-v1"} for u in users}
    assert seen == expected
    assert {v for s_ in seen.values() for v in s_} == {"iris-v1", "iris-v2"}
