"""Reconciling by events: the object loop, its wake-ups and when each kind falls due."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits import aioenums

from modelops.api.deployment import Deployment, DeploymentSpec
from modelops.controllers import loop
from modelops.controllers.deployment import (
    LOADING_POLL_SECONDS,
    PROGRESS_POLL_SECONDS,
    RESYNC_SECONDS,
    requeue_after,
)
from modelops.controllers.driftmonitor import MIN_WAIT_SECONDS, next_check
from modelops.controllers.loop import Signatures, Wakeups, fresher
from modelops.rollout import State, next_due


def spec(**canary: Any) -> DeploymentSpec:
    steps = [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "1m"}]
    return DeploymentSpec.model_validate(
        {"model": "iris", "canary": {"version": "latest", "steps": steps} | canary}
    )


def at_step(step: int | None, started: float | None = 100.0) -> State:
    return State("Progressing", "iris-v1", "iris-v2", 10, step, started)


# -- next_due / requeue_after ------------------------------------------------------------------


def test_a_step_falls_due_when_its_pause_ends() -> None:
    assert next_due(spec(), at_step(0), 110) == 130
    assert next_due(spec(), at_step(1), 110) == 160


def test_nothing_is_due_while_loading_or_once_the_pause_ended_without_a_timeout() -> None:
    assert next_due(spec(), at_step(None, None), 110) is None
    assert next_due(spec(), at_step(0), 131) is None


def test_after_the_pause_the_analysis_timeout_falls_due() -> None:
    analysed = spec(analysis={"timeout": "5m"})
    assert next_due(analysed, at_step(0), 131) == 130 + 300


def test_abtest_and_shadow_fall_due_at_their_durations() -> None:
    abtest = spec(mode="abtest", analysis={}, abtest={"weight": 30, "maxDuration": "1h"})
    shadow = spec(mode="shadow", shadow={"duration": "10m"})
    assert next_due(abtest, at_step(0), 110) == 100 + 3600
    assert next_due(shadow, at_step(0), 110) == 100 + 600


def deployment(s: DeploymentSpec) -> Deployment:
    return Deployment.model_validate(
        {"metadata": {"name": "iris", "namespace": "ns"}, "spec": s.model_dump(by_alias=True)}
    )


def test_a_pass_requeues_at_the_step_end_when_that_comes_before_the_poll() -> None:
    assert requeue_after(deployment(spec()), at_step(0), 128) == pytest.approx(2.05)


def test_a_loading_canary_polls_the_store_and_a_step_in_flight_polls_it_less() -> None:
    dep = deployment(spec())
    assert requeue_after(dep, at_step(None, None), 110) == LOADING_POLL_SECONDS
    assert requeue_after(dep, at_step(0), 110) == PROGRESS_POLL_SECONDS


def test_with_no_canary_in_flight_only_the_resync_is_due() -> None:
    steady = State("Promoted", "iris-v2")
    assert requeue_after(deployment(spec()), steady, 110) == RESYNC_SECONDS


# -- DriftMonitor due time ---------------------------------------------------------------------


def test_a_monitor_is_due_its_interval_after_its_last_check() -> None:
    monitor = {"spec": {"interval": "30s"}, "status": {"lastCheckTime": "1970-01-01T00:01:40Z"}}
    assert next_check(monitor, 110) == 20
    assert next_check(monitor, 500) == MIN_WAIT_SECONDS
    assert next_check({"spec": {"interval": "30s"}}, 110) == 30


# -- fresher -----------------------------------------------------------------------------------


def obj(rv: str, uid: str = "u1", phase: str = "") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "resourceVersion": rv}, "status": {"phase": phase}}


def test_the_written_object_wins_until_the_watch_delivers_a_newer_one() -> None:
    written = obj("12", phase="Promoted")
    assert fresher(obj("11"), written) is written
    newer = obj("13")
    assert fresher(newer, written) is newer
    assert fresher(obj("12"), written)["status"]["phase"] == ""  # the echo: the body


def test_a_write_to_another_object_of_the_same_name_is_ignored() -> None:
    body = obj("5", uid="u2")
    assert fresher(body, obj("12", uid="u1")) is body
    assert fresher(body, None) is body


def test_opaque_resource_versions_trust_the_write() -> None:
    written = obj("b")
    assert fresher(obj("a"), written) is written


# -- signatures and the loop -------------------------------------------------------------------


def test_signatures_change_only_when_the_value_does() -> None:
    seen = Signatures()
    assert seen.changed("k", (1, "a"))
    assert not seen.changed("k", (1, "a"))
    assert seen.changed("k", (2, "a"))
    seen.forget("k")
    assert seen.changed("k", (2, "a"))


def flag() -> tuple[aioenums.FlagSetter[Any], kopf.DaemonStopped]:
    setter: aioenums.FlagSetter[Any] = aioenums.FlagSetter()
    return setter, aioenums.AsyncFlagWaiter(setter)


async def test_a_wake_runs_the_next_pass_at_once_and_a_stop_ends_the_loop() -> None:
    setter, stopped = flag()
    passes: list[float] = []

    async def one_pass() -> float:
        passes.append(asyncio.get_running_loop().time())
        return 3600.0

    task = asyncio.create_task(loop.run("k1", stopped, one_pass))
    await asyncio.sleep(0.05)
    assert len(passes) == 1
    loop.wakeups.wake("k1")
    await asyncio.sleep(0.05)
    assert len(passes) == 2
    setter.set()
    await asyncio.wait_for(task, 1)
    assert len(loop.wakeups) == 0  # forgotten once stopped


def counted(effect: Callable[[int], None]) -> tuple[list[int], Callable[[], Awaitable[float]]]:
    """A pass that calls ``effect(n)`` on its n-th call (which may raise), then asks for an
    hour; and the list of its calls so far."""
    calls: list[int] = []

    async def one_pass() -> float:
        calls.append(len(calls) + 1)
        effect(len(calls))
        return 3600.0

    return calls, one_pass


async def test_a_wake_during_a_pass_is_not_lost() -> None:
    setter, stopped = flag()

    def effect(n: int) -> None:
        if n == 1:
            loop.wakeups.wake("k2")  # e.g. a watch event while the pass awaits the API

    calls, one_pass = counted(effect)
    task = asyncio.create_task(loop.run("k2", stopped, one_pass))
    await asyncio.sleep(0.1)
    assert len(calls) == 2
    setter.set()
    await asyncio.wait_for(task, 1)


async def test_a_failing_pass_is_retried_after_a_back_off_and_the_loop_survives() -> None:
    setter, stopped = flag()

    def effect(n: int) -> None:
        if n == 1:
            raise kopf.TemporaryError("API unavailable", delay=0.05)
        if n == 2:
            raise RuntimeError("a bug")  # retried after RETRY_FIRST

    calls, one_pass = counted(effect)
    task = asyncio.create_task(loop.run("k3", stopped, one_pass))
    await asyncio.sleep(0.2)
    assert len(calls) == 2
    await asyncio.sleep(loop.RETRY_FIRST)
    assert len(calls) == 3
    setter.set()
    await asyncio.wait_for(task, 1)


def test_a_wake_for_a_key_without_a_loop_does_nothing() -> None:
    registry = Wakeups()
    registry.wake("nobody")
    assert len(registry) == 0


async def test_slots_bound_the_passes_running_at_once() -> None:
    setter, stopped = flag()
    slots = asyncio.Semaphore(2)
    running = peak = 0

    async def one_pass() -> float:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return 3600.0

    tasks = [
        asyncio.create_task(loop.run(f"s{i}", stopped, one_pass, slots=slots)) for i in range(6)
    ]
    await asyncio.sleep(0.2)
    assert peak == 2
    setter.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
