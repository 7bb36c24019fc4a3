"""Exact weighted routing: the counter scheme splits every 100 requests exactly, the id scheme
is sticky and within a binomial bound of the weight."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from modelops.serving.router import SLOTS, Router, id_slot, smooth_schedule


@pytest.mark.parametrize("weights", [[90, 10], [50, 50], [99, 1], [100, 0], [0, 100], [70, 20, 10]])
def test_every_window_of_100_requests_splits_exactly(weights: list[int]) -> None:
    targets = [f"v{i}" for i in range(len(weights))]
    router = Router(targets, weights, [i > 0 for i in range(len(weights))])
    picks = [router.pick() for _ in range(1000)]
    for start in range(0, 901, 7):  # aligned or not: the schedule is cyclic
        counts = Counter(picks[start : start + SLOTS])
        assert [counts[t] for t in targets] == weights


def test_the_schedule_spreads_a_small_weight_evenly() -> None:
    schedule = smooth_schedule([90, 10])
    positions = [i for i, v in enumerate(schedule) if v == 1]
    gaps = {b - a for a, b in itertools.pairwise(positions)}
    assert gaps == {10}


def test_id_routing_is_sticky_and_canary_owns_the_low_slots() -> None:
    router = Router(["stable", "canary"], [90, 10], [False, True])
    for i in range(200):
        rid = f"req-{i}"
        first = router.pick(rid)
        assert all(router.pick(rid) == first for _ in range(3))
        assert (first == "canary") == (id_slot(rid) < 10)


def test_ids_that_went_to_the_canary_stay_there_when_its_weight_grows() -> None:
    small = Router(["stable", "canary"], [90, 10], [False, True])
    large = Router(["stable", "canary"], [50, 50], [False, True])
    ids = [f"user-{i}" for i in range(2000)]
    assert all(large.pick(i) == "canary" for i in ids if small.pick(i) == "canary")


@pytest.mark.parametrize("canary_weight", [1, 10, 25, 50])
def test_id_routing_matches_the_weight_within_a_binomial_bound(canary_weight: int) -> None:
    n = 20_000
    router = Router(["stable", "canary"], [100 - canary_weight, canary_weight], [False, True])
    hits = sum(router.pick(f"{i}-{i * 7919}") == "canary" for i in range(n))
    p = canary_weight / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) < 5 * sigma  # false failure odds below 1e-6


def test_id_slots_are_stable_across_processes() -> None:
    # blake2b-64 of the UTF-8 id, big-endian, mod 100: not Python's per-process hash().
    assert [id_slot(x) for x in ("a", "request-1", "ümlaut")] == [43, 40, 2]


def test_weights_must_cover_100_slots() -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        Router(["a", "b"], [50, 49], [False, True])
