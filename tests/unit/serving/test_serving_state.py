"""Routing tables -> serving states: atomic swaps, a rollback never waits for a download, a
newer table supersedes one still loading, and failed versions are retried."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from modelops.serving import state as state_module
from modelops.serving.metrics import ServerMetrics
from modelops.serving.state import ModelManager
from modelops.storage import Location
from unit.serving.test_serving_support import MemoryStore, iris_frame, routing_table, train_version


class SlowStore(MemoryStore):
    """Holds back reads of the keys in ``slow`` until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: set[str] = set()
        self.release = threading.Event()

    def get(self, loc: Location) -> bytes:
        if loc.key in self.slow:
            self.release.wait(10)
        return super().get(loc)


@pytest.fixture(scope="module")
def trained() -> tuple[SlowStore, dict[str, Any], dict[str, Any], dict[str, Any]]:
    store = SlowStore()
    frame = iris_frame()
    v1 = train_version(store, "iris-v1", frame, "species", params={"max_iter": 500})
    v2 = train_version(store, "iris-v2", frame, "species", "DecisionTreeClassifier")
    v3 = train_version(store, "iris-v3", frame, "species", "DecisionTreeClassifier", seed=3)
    return store, v1, v2, v3


async def until(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def weights(manager: ModelManager) -> dict[str, int]:
    return {v.name: v.entry.weight for v in manager.state.versions.values()}


async def test_a_rollback_does_not_wait_behind_a_slow_download(
    trained: tuple[SlowStore, dict[str, Any], dict[str, Any], dict[str, Any]],
) -> None:
    store, v1, v2, v3 = trained
    manager = ModelManager(store, ServerMetrics(), None)
    runner = asyncio.create_task(manager.run())
    try:
        manager.submit(routing_table([(v1, "stable", 90), (v2, "canary", 10)]))
        await until(lambda: manager.state.ready)
        store.slow = {Location.parse(v3["artifact"]["uri"]).key}
        store.release.clear()
        # A new canary whose download hangs ...
        manager.submit(routing_table([(v1, "stable", 50), (v3, "canary", 50)]))
        await asyncio.sleep(0.2)
        assert weights(manager) == {"iris-v1": 90, "iris-v2": 10}  # not before it is loaded
        # ... and the rollback of the current canary takes effect at once.
        before = manager.state
        manager.submit(routing_table([(v1, "stable", 100), (v2, "canary", 0)]))
        await until(lambda: manager.state is not before)
        assert weights(manager) == {"iris-v1": 100, "iris-v2": 0}
        assert manager.state.ready
        store.release.set()
        await asyncio.sleep(0.2)
        assert weights(manager) == {"iris-v1": 100, "iris-v2": 0}  # the superseded stays so
    finally:
        store.release.set()
        store.slow = set()
        runner.cancel()


async def test_a_failed_version_is_retried_until_it_loads(
    trained: tuple[SlowStore, dict[str, Any], dict[str, Any], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, v1, v2, _ = trained
    monkeypatch.setattr(state_module, "RETRY_SECONDS", (0.1,))
    manager = ModelManager(store, ServerMetrics(), None)
    runner = asyncio.create_task(manager.run())
    moved = Location(store_bucket(v2), "later/model.skops")
    canary = {**v2, "artifact": {"uri": moved.uri, "sha256": v2["artifact"]["sha256"]}}
    try:
        manager.submit(routing_table([(v1, "stable", 80), (canary, "canary", 20)]))
        await until(lambda: manager.state.table is not None and "iris-v2" in manager.state.versions)
        await until(lambda: manager.state.versions["iris-v2"].status.state == "Failed")
        assert manager.state.versions["iris-v2"].status.reason == "ArtifactMissing"
        assert manager.state.ready  # stable serves every request meanwhile
        # The object appears (an upload that lagged): the next retry loads it.
        store.put(moved, store.get(Location.parse(v2["artifact"]["uri"])))
        await until(lambda: manager.state.versions["iris-v2"].status.state == "Ready", timeout=5)
        assert manager.state.versions["iris-v2"].model is not None
    finally:
        runner.cancel()


def store_bucket(entry: dict[str, Any]) -> str:
    return Location.parse(entry["artifact"]["uri"]).bucket


async def test_each_request_keeps_the_state_it_started_with(
    trained: tuple[SlowStore, dict[str, Any], dict[str, Any], dict[str, Any]],
) -> None:
    store, v1, v2, _ = trained
    manager = ModelManager(store, ServerMetrics(), None)
    old = await manager.apply(routing_table([(v1, "stable", 100), (v2, "canary", 0)]))
    new = await manager.apply(routing_table([(v1, "stable", 0), (v2, "canary", 100)]))
    assert manager.state is new and old is not new
    assert {old.route(None).name for _ in range(100)} == {"iris-v1"}
    assert {new.route(None).name for _ in range(100)} == {"iris-v2"}
    # Unchanged versions are not loaded again.
    assert old.versions["iris-v1"].model is new.versions["iris-v1"].model
