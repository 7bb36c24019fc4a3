"""Leader election: the pure decision (acquire / renew / wait) and the Lease it writes, and the
elector's rounds against an in-memory API with resourceVersion checks (a 409 loses)."""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelops.controllers.cluster import ApiError
from modelops.controllers.leader import (
    Action,
    Elector,
    Timing,
    claimed,
    decide,
    holder,
    identity,
    released,
)

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
NS, NAME = "modelops-system", "modelops-operator"
FAST = Timing(lease_duration=1.5, renew_deadline=1.0, renew_period=0.5, retry_period=0.2)


def lease(holder: str, renewed: datetime, *, duration: int = 15, transitions: int = 0) -> Any:
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


# --- the decision -------------------------------------------------------------------------------


def test_an_absent_lease_is_created() -> None:
    assert decide(None, NOW, "me") is Action.CREATE


def test_our_own_lease_is_renewed_even_when_expired() -> None:
    assert decide(lease("me", NOW - timedelta(minutes=5)), NOW, "me") is Action.RENEW


def test_a_lease_another_holds_and_renewed_in_time_is_waited_for() -> None:
    assert decide(lease("other", NOW - timedelta(seconds=14)), NOW, "me") is Action.WAIT


def test_a_lease_whose_renewal_plus_duration_has_passed_is_taken() -> None:
    assert decide(lease("other", NOW - timedelta(seconds=16)), NOW, "me") is Action.TAKE


def test_the_holders_own_duration_decides_expiry() -> None:
    assert decide(lease("other", NOW - timedelta(seconds=16), duration=60), NOW, "me") is (
        Action.WAIT
    )


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(released(lease("other", NOW), NOW), NOW, "me") is Action.TAKE


def test_a_lease_never_renewed_is_taken() -> None:
    never = lease("other", NOW)
    del never["spec"]["renewTime"]
    assert decide(never, NOW, "me") is Action.TAKE


# --- the lease written --------------------------------------------------------------------------


def test_a_new_lease_names_us_with_no_transitions() -> None:
    spec = claimed(None, NOW, "me", NS, NAME, Timing())["spec"]
    assert spec == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": "2025-01-01T12:00:00.000000Z",
        "renewTime": "2025-01-01T12:00:00.000000Z",
        "leaseTransitions": 0,
    }


def test_taking_over_counts_a_transition_and_keeps_the_resource_version() -> None:
    before = lease("other", NOW - timedelta(seconds=20), transitions=3)
    taken = claimed(before, NOW, "me", NS, NAME, Timing())
    assert taken["metadata"]["resourceVersion"] == "7"
    assert taken["spec"]["leaseTransitions"] == 4
    assert taken["spec"]["acquireTime"] == taken["spec"]["renewTime"]


def test_renewing_moves_renew_time_only() -> None:
    before = lease("me", NOW - timedelta(seconds=5), transitions=2)
    after = claimed(before, NOW, "me", NS, NAME, Timing())["spec"]
    assert after["acquireTime"] == before["spec"]["acquireTime"]
    assert after["renewTime"] == "2025-01-01T12:00:00.000000Z"
    assert after["leaseTransitions"] == 2


def test_releasing_empties_the_holder_and_keeps_the_count() -> None:
    spec = released(lease("me", NOW, transitions=5), NOW)["spec"]
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (
        "",
        1,
        5,
    )


def test_identities_of_one_pod_differ_between_starts() -> None:
    first, second = identity("op-abc"), identity("op-abc")
    assert first.startswith("op-abc_") and first != second


# --- the elector against an in-memory API -------------------------------------------------------


class FakeLeases:
    """get, create_new and replace (PUT) of one Lease; stale writes get 409, as from the server."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ApiError(0, "connection refused")

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(obj)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    async def get(self, *_: Any) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    async def create_new(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self._check()
        return None if self.lease is not None else self._store(obj)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert (obj["metadata"]["namespace"], obj["metadata"]["name"]) == (NS, NAME)
        assert self.lease is not None
        if obj["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "the object has been modified")
        return self._store(obj)


def elector(api: FakeLeases, me: str, clock: list[datetime] | None = None) -> Elector:
    now = clock or [NOW]
    return Elector(api, NS, NAME, me, timing=FAST, clock=lambda: now[0])  # type: ignore[arg-type]


async def test_the_first_candidate_creates_the_lease_and_the_second_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelops.leader")
    api = FakeLeases()
    assert await elector(api, "a").try_acquire_or_renew()
    b = elector(api, "b")
    assert not await b.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert holder(api.lease) == "a"
    assert [r.message for r in caplog.records if "waiting" in r.message] == [
        "waiting for the lease held by a"
    ]


async def test_a_write_with_a_stale_resource_version_loses() -> None:
    api = FakeLeases()
    clock = [NOW]
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert await a.try_acquire_or_renew()
    clock[0] = NOW + timedelta(seconds=10)  # a's lease (1.5 s) lapsed
    stale = copy.deepcopy(api.lease)
    assert await b.try_acquire_or_renew()  # b takes it; a now writes what it read before
    assert stale is not None
    assert not await a._replace(claimed(stale, clock[0], "a", NS, NAME, FAST))
    assert holder(api.lease) == "b"
    assert api.lease is not None and api.lease["spec"]["leaseTransitions"] == 1


async def test_released_lease_goes_to_the_standby_at_its_next_try() -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    assert await a.try_acquire_or_renew()
    await a.release()
    assert holder(api.lease) == ""
    assert await b.try_acquire_or_renew()


async def test_renewal_gives_up_after_the_renew_deadline_when_the_api_is_gone() -> None:
    api = FakeLeases()
    a = elector(api, "a")
    assert await a.try_acquire_or_renew()
    api.down = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(a.keep_renewing(), timeout=5)
    assert FAST.renew_deadline - 0.1 <= loop.time() - started < FAST.lease_duration
    assert not a.is_leader


async def test_renewal_stops_when_another_replica_holds_the_lease() -> None:
    api = FakeLeases()
    a = elector(api, "a")
    assert await a.try_acquire_or_renew()
    assert api.lease is not None
    api.lease["spec"]["holderIdentity"] = "b"  # e.g. after a long pause of ours
    api.lease["spec"]["renewTime"] = "2025-01-01T12:00:00.000000Z"
    await asyncio.wait_for(a.keep_renewing(), timeout=FAST.renew_period + 0.5)
    assert not a.is_leader


async def test_acquire_returns_false_once_told_to_stop() -> None:
    api = FakeLeases()
    assert await elector(api, "a").try_acquire_or_renew()
    stop = asyncio.Event()
    waiting = asyncio.create_task(elector(api, "b").acquire(stop))
    await asyncio.sleep(FAST.retry_period * 1.5)
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=1) is False
