"""Child processes that never outlive the local cluster.

Every process the local cluster starts runs in its own process group (so a pod's own children,
such as the model server's workers, go with it) and is recorded here. Three nets catch them:
the owner stops each one (SIGTERM to the group, then SIGKILL), an ``atexit`` hook kills any
group still recorded, and on Linux the kernel sends SIGKILL to a child whose parent thread
dies (``PR_SET_PDEATHSIG``), which covers a parent killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Self

_PR_SET_PDEATHSIG = 1
_groups: dict[int, str] = {}  # process-group id -> what it is, for the atexit net
_lock = threading.Lock()


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Resolved once, before any fork: the child must not load libraries between fork and exec.
_prctl = _load_prctl()


def child_setup(cpus: Iterable[int] | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: die with the parent, and run on these CPUs (a pod's CPU limit)."""
    chosen = frozenset(cpus) if cpus is not None else None

    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if chosen and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, chosen)

    return setup


def track(pid: int, what: str) -> None:
    """Record a process group (its leader's pid) started with ``start_new_session=True``."""
    with _lock:
        _groups[pid] = what


def untrack(pid: int) -> None:
    with _lock:
        _groups.pop(pid, None)


def tracked() -> dict[int, str]:
    with _lock:
        return dict(_groups)


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when it is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid was reused by someone else's group: not ours any more
        return False
    return True


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


def kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds for it to empty, then SIGKILL it.

    Blocking: for the exit path and synchronous owners. Zombie leaders still count as members
    until reaped, so this also stops waiting once only zombies are left.
    """
    if not signal_group(pgid, signal.SIGTERM):
        untrack(pgid)
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _has_live_member(pgid):
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)
    untrack(pgid)


def _has_live_member(pgid: int) -> bool:
    if not group_alive(pgid):
        return False
    if not os.path.isdir("/proc"):
        return True
    # /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def kill_all(grace: float = 3.0) -> None:
    """Stop every recorded group: TERM all at once, one shared grace period, then KILL."""
    groups = tracked()
    for pgid in groups:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_has_live_member(g) for g in groups):
        time.sleep(0.05)
    for pgid in groups:
        signal_group(pgid, signal.SIGKILL)
        untrack(pgid)


atexit.register(kill_all)


class Lifecycle:
    """``start()`` runs ``_start()`` and, when it fails half-way, ``stop()``s what it began;
    ``with thing:`` starts and stops it. Subclasses write ``_start`` and an idempotent ``stop``.
    """

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
