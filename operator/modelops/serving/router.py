"""Exact weighted routing between the versions of one model.

Two schemes, both over 100 slots (weights are integer percentages that sum to 100):

- With a routing key (the request id, or the value of the routing table's ``stickyHeader``),
  the slot is ``blake2b(key) mod 100`` and canaries own the lowest slots, so
  ``slot < canary weight`` picks the canary: a client's retry (or every request of one user,
  with a sticky header) lands on the same version, and when the canary's weight grows the keys
  it already had stay with it.
- Without an id, a per-process counter walks a fixed cyclic schedule of 100 picks built by
  smooth weighted round-robin: any 100 consecutive requests split exactly by the weights, and
  the picks of each version are spread evenly rather than bunched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Generic, TypeVar

SLOTS = 100
T = TypeVar("T")


def id_slot(key: str) -> int:
    """The slot of a routing key; stable across processes, hosts and Python versions."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SLOTS


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """Indices into ``weights``, one per slot: nginx's smooth weighted round-robin."""
    total = sum(weights)
    if total != SLOTS:
        raise ValueError(f"weights must sum to {SLOTS}, not {total}")
    current = [0] * len(weights)
    schedule = []
    for _ in range(SLOTS):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        schedule.append(best)
    return schedule


class Router(Generic[T]):
    """Picks one of ``targets`` per request; ``canary`` flags say who owns the low id slots."""

    __slots__ = ("_by_id", "_counter", "_schedule")

    def __init__(self, targets: Sequence[T], weights: Sequence[int], canary: Sequence[bool]):
        if not (len(targets) == len(weights) == len(canary)) or not targets:
            raise ValueError("targets, weights and canary flags must be non-empty and aligned")
        # Canaries first so that "slot < canary weight" means canary.
        order = sorted(range(len(targets)), key=lambda i: (not canary[i], i))
        by_id: list[T] = []
        for i in order:
            by_id.extend([targets[i]] * weights[i])
        if len(by_id) != SLOTS:
            raise ValueError(f"weights must sum to {SLOTS}, not {len(by_id)}")
        self._by_id = tuple(by_id)
        self._schedule = tuple(targets[i] for i in smooth_schedule(weights))
        self._counter = 0

    def pick(self, key: str | None = None) -> T:
        """The target of a routing key (a request id or sticky header value), else the next
        of the round-robin schedule."""
        if key:
            return self._by_id[id_slot(key)]
        n = self._counter
        self._counter = n + 1 if n < SLOTS - 1 else 0
        return self._schedule[n]
