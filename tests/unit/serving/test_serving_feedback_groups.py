"""Joined labels counted per sensitive group in the model server: the feedback items'
``groups``, the sensitive model inputs recorded at predict time, the cap on groups, the
prediction logs that carry them to another pod, and the quality objects' ``groups``."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from modelops.api.modelversion import MAX_GROUPS, Feature, Signature
from modelops.controllers.windows import LiveQuality
from modelops.drift.quality import QualityCounts
from modelops.serving.feedback import Item, input_groups, parse_feedback
from modelops.serving.protocol import Layout, ProtocolError
from unit.serving.test_serving_feedback import (
    CLASSES,
    Clock,
    MemoryStore,
    quality_of,
    receive,
    service,
)


def item(rid: str, values: list[Any], groups: Any) -> Item:
    return parse_feedback({"id": rid, "labels": values, "groups": groups})[0]


def test_a_single_group_value_applies_to_every_row_of_the_item() -> None:
    assert item("r1", ["setosa", "setosa"], {"sex": "F"}).groups == (("sex", ("F", "F")),)


def test_a_list_gives_one_group_per_row_as_text() -> None:
    found = item("r1", ["a", "b", "c"], {"age": [30, 1.5, None]}).groups
    assert found == (("age", ("30", "1.5", "(missing)")),)


@pytest.mark.parametrize(
    ("groups", "says"),
    [
        ("F", "'groups' must be a non-empty object"),
        ({}, "'groups' must be a non-empty object"),
        ({"sex": ["F"]}, "has 1 values for 2 rows"),
        ({"sex": {"x": 1}}, "takes strings, numbers, booleans or null"),
        ({f"f{i}": "x" for i in range(6)}, "at most 5"),
    ],
    ids=["not-object", "empty", "wrong-length", "nested", "too-many-features"],
)
def test_malformed_groups_are_a_400_naming_the_item(groups: Any, says: str) -> None:
    with pytest.raises(ProtocolError, match="feedback\\[0\\] \\(id 'r1'\\)") as err:
        item("r1", ["a", "b"], groups)
    assert says in str(err.value) and err.value.status == 400


def layout() -> Layout:
    inputs = [Feature(name="x", datatype="FP64"), Feature(name="sex", datatype="INT64")]
    return Layout.of(Signature(task="classification", inputs=inputs, classes=CLASSES))


def test_input_groups_keep_only_the_sensitive_inputs_as_text() -> None:
    rows = np.array([[0.5, 1.0], [2.5, 0.0]])
    assert input_groups(rows, layout(), ["sex", "not-an-input"]) == b'{"sex":["1","0"]}'


def test_no_sensitive_input_records_nothing() -> None:
    assert input_groups(np.zeros((2, 2)), layout(), ["zip"]) == b""


async def test_item_groups_join_into_per_group_counts_of_the_quality_object() -> None:
    store = MemoryStore()
    fb = service(store)
    fb.record("r1", "iris-v1", CLASSES, np.array([0, 1]))
    fb.record("r2", "iris-v1", CLASSES, np.array([2]))
    await receive(fb, item("r1", ["setosa", "setosa"], {"sex": ["F", "M"]}))
    await receive(fb, item("r2", ["virginica"], {"sex": "F"}))
    await fb.flush("default", "iris", final=True)
    groups = quality_of(store, "iris-v1").groups["sex"]
    assert {g: (c.labels, c.value("accuracy")) for g, c in groups.items()} == {
        "F": (2, 1.0),
        "M": (1, 0.0),
    }


async def test_recorded_inputs_give_the_groups_and_item_groups_override_them() -> None:
    store = MemoryStore()
    fb = service(store)
    recorded = b'{"sex":["F","M"]}'
    fb.record("r1", "iris-v1", CLASSES, np.array([0, 0]), groups=recorded)
    fb.record("r2", "iris-v1", CLASSES, np.array([0]), groups=b'{"sex":["F"]}')
    await receive(fb, item("r1", ["setosa", "versicolor"], {"age": "old"}))
    await receive(fb, item("r2", ["setosa"], {"sex": "X"}))
    await fb.flush("default", "iris", final=True)
    groups = quality_of(store, "iris-v1").groups
    assert {g: c.labels for g, c in groups["sex"].items()} == {"F": 1, "M": 1, "X": 1}
    assert {g: c.labels for g, c in groups["age"].items()} == {"old": 2}


async def test_groups_past_the_cap_are_counted_in_other() -> None:
    store = MemoryStore()
    fb = service(store)
    for i in range(MAX_GROUPS + 3):
        fb.record(f"r{i}", "iris-v1", CLASSES, np.array([0]))
        await receive(fb, item(f"r{i}", ["setosa"], {"zip": f"z{i}"}))
    await fb.flush("default", "iris", final=True)
    groups = quality_of(store, "iris-v1").groups["zip"]
    assert len(groups) == MAX_GROUPS + 1 and groups["(other)"].labels == 3


async def test_recorded_groups_travel_in_the_prediction_log_to_another_pod() -> None:
    clock, store = Clock(), MemoryStore()
    a, b = service(store, "pod-a", clock), service(store, "pod-b", clock)
    a.record("r1", "iris-v1", CLASSES, np.array([0, 2]), groups=b'{"sex":["F","M"]}')
    clock.advance(5)
    await a.flush("default", "iris")
    labels = parse_feedback({"id": "r1", "labels": ["setosa", "setosa"]})[0]
    assert (await receive(b, labels))["joined"] == 1
    await b.flush("default", "iris", final=True)
    groups = quality_of(store, "iris-v1").groups["sex"]
    assert {g: c.value("accuracy") for g, c in groups.items()} == {"F": 1.0, "M": 0.0}


def test_ledger_entries_with_groups_are_not_tracked_by_the_garbage_collector() -> None:
    fb = service()
    fb.record("r1", "iris-v1", CLASSES, np.array([0]), groups=b'{"sex":["F"]}')
    gc.collect()
    gc.collect()
    assert not gc.is_tracked(fb.own.peek("r1"))


def counts(n: int) -> dict[str, Any]:
    c = QualityCounts.empty("classification", CLASSES)
    c.add_classification(["setosa"] * n, ["setosa"] * n)
    return c.to_dict()


def test_live_quality_merges_groups_and_folds_the_smallest_past_the_cap() -> None:
    first = LiveQuality.from_dict(
        {"groups": {"zip": {f"z{i}": counts(10) for i in range(MAX_GROUPS)}}}
    )
    second = LiveQuality.from_dict({"groups": {"zip": {"z0": counts(5), "new": counts(1)}}})
    merged = first.merge(second).groups["zip"]
    assert merged["z0"].labels == 15 and "new" not in merged
    assert merged["(other)"].labels == 1 and len(merged) == MAX_GROUPS + 1
