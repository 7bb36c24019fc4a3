"""The serving state: one immutable snapshot per routing table, swapped atomically.

A request reads ``manager.state`` once and uses that snapshot to the end, so it never sees
half of a new table. A new table becomes the state only after every version it adds has been
downloaded, verified and loaded (or has definitely failed): until then the previous table keeps
serving. A version that failed is not servable: its share of traffic goes to the stable
version (or, without one, to the other servable versions), requests naming it get 503, and
the pod report names it with its reason; loading is retried with backoff while it stays in the
table. ``/v2/health/ready`` asks only for the stable version(s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelops.serving.metrics import ServerMetrics, VersionInfo, VersionStats
from modelops.serving.models import LoadedModel, LoadError, cache_key, load
from modelops.serving.protocol import ProtocolError
from modelops.serving.router import Router
from modelops.serving.sketches import MIN_WINDOW_SECONDS, SketchWindow
from modelops.serving.table import TRANSIENT_REASON, RoutingTable, VersionEntry
from modelops.storage import ArtifactStore

logger = logging.getLogger(__name__)

RETRY_SECONDS = (2.0, 5.0, 15.0, 30.0, 60.0)


@dataclass(frozen=True)
class VersionStatus:
    state: str  # Loading | Ready | Failed
    reason: str
    message: str = ""


LOADING = VersionStatus("Loading", "Loading", "downloading and verifying")


@dataclass(eq=False)
class ServedVersion:
    entry: VersionEntry
    status: VersionStatus
    model: LoadedModel | None
    stats: VersionStats
    window: SketchWindow | None

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass(frozen=True)
class ServingState:
    table: RoutingTable | None
    versions: dict[str, ServedVersion]
    aliases: dict[str, ServedVersion]
    """By name and by number ("2")."""
    router: Router[ServedVersion] | None
    names: frozenset[str] = frozenset()
    """What clients may call the model: its name and the deployment's."""
    shadows: tuple[ServedVersion, ...] = ()
    """In shadow mode, the servable canaries that predict a copy of stable's requests."""
    sticky_header: str | None = None
    """The routing table's ``stickyHeader``, lower-cased."""

    @classmethod
    def empty(cls) -> ServingState:
        return cls(None, {}, {}, None)

    @property
    def ready(self) -> bool:
        """The pod can take traffic: its stable version(s) loaded and verified. A canary still
        loading, or refused, is not a reason to take the pod out of the Service: its share
        goes to stable meanwhile, and the operator rolls a refused canary back."""
        if self.table is None or self.router is None:
            return False
        stable = [v for v in self.versions.values() if v.entry.role == "stable"]
        return all(v.model is not None for v in stable or self.versions.values())

    def knows(self, model: str) -> bool:
        return model in self.names

    def resolve(self, version: str) -> ServedVersion:
        found = self.aliases.get(version)
        if found is None:
            raise ProtocolError(f"model {self.model_name!r} has no version {version!r}", 404)
        if found.model is None:
            raise ProtocolError(_unavailable(found), 503)
        return found

    def route(self, key: str | None) -> ServedVersion:
        """The version for a routing key (sticky header value or request id, or None)."""
        if self.router is None:
            raise ProtocolError(f"model {self.model_name!r} has no version ready to serve", 503)
        return self.router.pick(key)

    def shadows_of(self, answered: ServedVersion) -> tuple[ServedVersion, ...]:
        """The versions that predict a copy of a routed request ``answered`` answered: the
        shadows when stable answered it, else none."""
        if not self.shadows or answered.entry.role != "stable":
            return ()
        return self.shadows

    @property
    def model_name(self) -> str:
        return self.table.model if self.table is not None else ""


def _unavailable(v: ServedVersion) -> str:
    return f"version {v.name} is not available: {v.status.reason}: {v.status.message}".rstrip(": ")


def build_state(table: RoutingTable, versions: list[ServedVersion]) -> ServingState:
    by_name = {v.name: v for v in versions}
    aliases = dict(by_name)
    for v in versions:
        number = v.entry.version_number
        if number is not None:
            aliases.setdefault(str(number), v)
    servable = [v for v in versions if v.model is not None]
    shadow_mode = table.mode == "shadow"
    router = None
    if servable:
        # Shadow mode: clients only ever get stable's answers, whatever the canary's weight.
        weights = [
            0 if shadow_mode and v.entry.role == "canary" else v.entry.weight for v in servable
        ]
        missing = 100 - sum(weights)
        if missing:
            # The share of versions that cannot serve goes to stable, else to the heaviest.
            heir = next(
                (i for i, v in enumerate(servable) if v.entry.role == "stable"),
                max(range(len(servable)), key=lambda i: weights[i]),
            )
            weights[heir] += missing
        canary = [v.entry.role == "canary" for v in servable]
        router = Router(servable, weights, canary)
    shadows: tuple[ServedVersion, ...] = ()
    if shadow_mode and any(v.entry.role == "stable" for v in servable):
        shadows = tuple(v for v in servable if v.entry.role == "canary")
    header = table.sticky_header.lower() if table.sticky_header else None
    return ServingState(table, by_name, aliases, router, frozenset(table.names()), shadows, header)


class ModelManager:
    """Turns routing tables into serving states; owns the loaded-model cache."""

    def __init__(
        self,
        store: ArtifactStore | None,
        metrics: ServerMetrics,
        sketch_executor: ThreadPoolExecutor | None,
        on_swap: Callable[[ServingState], None] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.sketch_executor = sketch_executor
        self.on_swap = on_swap
        self.state = ServingState.empty()
        self.table_error: str | None = None
        self._cache: dict[str, LoadedModel] = {}
        self._failed: dict[str, LoadError] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._windows: dict[str, SketchWindow] = {}
        self._latest: Any = None
        self._latest_seq = 0
        self._wake = asyncio.Event()
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None

    def submit(self, raw: Any) -> None:
        """A new routing table (JSON text, or parsed) from a source; the latest one wins."""
        self._latest = raw
        self._latest_seq += 1
        self._wake.set()

    async def run(self) -> None:
        """Apply each submitted table; a newer table supersedes one still loading."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.apply(self._latest, supersedable=True)
            except Exception:
                logger.exception("applying the routing table failed")

    async def apply(self, raw: Any, *, supersedable: bool = False) -> ServingState:
        """Make ``raw`` the serving state once each of its versions is loaded or has failed.

        A table that only changes weights or roles needs no loading and swaps at once, so a
        rollback never waits behind a download. With ``supersedable``, a newer submitted
        table abandons this one (its downloads go on, for whichever table needs them).
        """
        table = self._parse(raw)
        if table is None:
            return self.state
        if self.state.table is None:
            # Nothing serves yet: show the table as loading (metadata works, not ready).
            loading = [self._served(table, e, None, LOADING) for e in table.versions]
            self._swap(build_state(table, loading))
        waiting = [
            self._start_load(e)
            for e in table.versions
            if cache_key(e) not in self._cache and cache_key(e) not in self._failed
        ]
        if waiting:
            everything: asyncio.Future[Any] = asyncio.gather(*waiting)
            if supersedable:
                newer: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({everything, newer}, return_when=asyncio.FIRST_COMPLETED)
                newer.cancel()
                if not everything.done():
                    logger.info("routing table superseded while loading")
                    return self.state
            else:
                await everything
        return self._install(table, raw)

    def _parse(self, raw: Any) -> RoutingTable | None:
        try:
            if isinstance(raw, str | bytes):
                table = RoutingTable.model_validate_json(raw)
            else:
                table = RoutingTable.model_validate(raw)
        except ValidationError as exc:
            self.table_error = str(exc).replace("\n", "; ")
            self.metrics.table_updates["invalid"] += 1
            logger.error("ignoring invalid routing table: %s", self.table_error)
            return None
        self.table_error = None
        return table

    def _install(self, table: RoutingTable, raw: Any) -> ServingState:
        served = []
        for entry in table.versions:
            key = cache_key(entry)
            model = self._cache.get(key)
            if model is not None:
                status = VersionStatus("Ready", "Verified", f"sha256 {entry.artifact.sha256}")
            else:
                error = self._failed[key]
                status = VersionStatus("Failed", error.reason, str(error))
            served.append(self._served(table, entry, model, status))
        state = build_state(table, served)
        self._swap(state)
        self.metrics.table_updates["applied"] += 1
        keep = {cache_key(e) for e in table.versions}
        self._cache = {k: m for k, m in self._cache.items() if k in keep}
        self._schedule_retry(raw if any(v.model is None for v in served) else None)
        return state

    def _start_load(self, entry: VersionEntry) -> asyncio.Task[None]:
        key = cache_key(entry)
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.create_task(self._load(key, entry))
        return task

    async def _load(self, key: str, entry: VersionEntry) -> None:
        started = time.monotonic()
        try:
            if self.store is None:
                raise LoadError("NoStore", "no object store is configured")
            self._cache[key] = await asyncio.to_thread(load, self.store, entry)
        except LoadError as exc:
            logger.error("version %s refused: %s: %s", entry.name, exc.reason, exc)
            self._failed[key] = exc
        except Exception as exc:  # the store unreachable, and the like: retried
            logger.error("version %s could not be loaded: %s", entry.name, exc)
            self._failed[key] = LoadError(TRANSIENT_REASON, str(exc))
        else:
            logger.info("version %s ready in %.2fs", entry.name, time.monotonic() - started)
        finally:
            self._loading.pop(key, None)

    def _served(
        self,
        table: RoutingTable,
        entry: VersionEntry,
        model: LoadedModel | None,
        status: VersionStatus,
    ) -> ServedVersion:
        stats = self.metrics.stats(table.model, entry.name)
        window = None
        if model is not None and model.profile is not None and self.sketch_executor is not None:
            window = self._windows.get(entry.name)
            if window is None or window.fingerprint != model.profile.get("fingerprint"):
                window = SketchWindow(self.sketch_executor, model.profile, stats, time.time())
                self._windows[entry.name] = window
        return ServedVersion(entry, status, model, stats, window)

    def _swap(self, state: ServingState) -> None:
        self.state = state  # one reference assignment: the atomic swap
        assert state.table is not None
        self.metrics.ready = state.ready
        self.metrics.info = [
            VersionInfo(
                state.table.model,
                v.name,
                v.entry.role,
                v.entry.weight,
                v.entry.artifact.sha256,
                v.status.state,
                v.status.reason,
            )
            for v in state.versions.values()
        ]
        summary = (f"{v.name}={v.entry.weight}% {v.status.state}" for v in state.versions.values())
        logger.info("routing: %s", ", ".join(summary))
        if self.on_swap is not None:
            self.on_swap(state)

    def windows(self, *, final: bool = False) -> list[tuple[str, str, SketchWindow]]:
        """``(namespace, deployment, window)`` of the windows due to close: those open for at
        least MIN_WINDOW_SECONDS (every one when ``final``), including those of versions that
        left the table, which are then forgotten."""
        table = self.state.table
        namespace = table.namespace if table else "default"
        deployment = table.deployment if table else ""
        current = {v.name for v in self.state.versions.values()}
        now = time.time()
        due = {
            name: w
            for name, w in self._windows.items()
            if final or now - w.start >= MIN_WINDOW_SECONDS
        }
        self._windows = {k: w for k, w in self._windows.items() if k in current or k not in due}
        return [(namespace, deployment, w) for w in due.values()]

    def _schedule_retry(self, raw: Any) -> None:
        """Load the failed versions of ``raw`` again later (None: nothing failed)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if raw is None:
            self._failures = 0
            return
        delay = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS) - 1)]
        self._failures += 1
        seq = self._latest_seq

        def retry() -> None:
            self._failed.clear()
            if self._latest_seq == seq:  # else a newer table is on its way anyway
                self.submit(raw)

        self._retry = asyncio.get_running_loop().call_later(delay, retry)
