"""The operator's Prometheus metrics (served on MODELOPS_METRICS_PORT at /metrics)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("modelops_reconcile_total", "Reconciliations run", ["kind"])
RECONCILE_ERRORS = Counter(
    "modelops_reconcile_errors_total", "Reconciliations that raised", ["kind"]
)
RECONCILE_SECONDS = Histogram(
    "modelops_reconcile_duration_seconds",
    "Time spent in one reconciliation",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_CREATED = Counter("modelops_jobs_created_total", "Training Jobs created")
RUNS_FINISHED = Counter(
    "modelops_training_runs_finished_total", "TrainingRuns finished", ["outcome"]
)
STATUS_WRITE_ERRORS = Counter(
    "modelops_status_write_errors_total",
    "Status writes the API server refused or did not answer (code 0: no answer)",
    ["kind", "code"],
)
STATUS_WRITES_SKIPPED = Counter(
    "modelops_status_writes_skipped_total",
    "Passes whose status was already what they would write (no request made)",
    ["kind"],
)
STATUS_VALUES_DROPPED = Counter(
    "modelops_status_values_dropped_total",
    "Non-finite numbers (NaN, Inf) replaced by null before a status write: JSON has none",
    ["kind"],
)
STATUS_FIELDS_PRUNED = Counter(
    "modelops_status_fields_pruned_total",
    "Status fields the API server pruned (the CRD schema lacks them): a bug to report",
    ["kind"],
)
VERSIONS_REGISTERED = Counter(
    "modelops_model_versions_registered_total", "ModelVersions created", ["model"]
)


@contextmanager
def observed(kind: str) -> Iterator[None]:
    """Count and time one reconciliation; errors are counted and re-raised."""
    RECONCILES.labels(kind).inc()
    start = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.labels(kind).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - start)


CANARY_WEIGHT = Gauge(
    "modelops_canary_weight",
    "Percent of requests each served version answers",
    ["namespace", "deployment", "version"],
)
ROLLBACKS = Counter(
    "modelops_rollbacks_total", "Canaries rolled back", ["namespace", "deployment", "reason"]
)
DRIFT_SCORE = Gauge(
    "modelops_drift_score",
    "Latest drift score per feature",
    ["namespace", "monitor", "feature", "method"],
)
DRIFT_DETECTED = Gauge(
    "modelops_drift_detected", "1 while the monitor finds dataset drift", ["namespace", "monitor"]
)
SKETCH_WINDOWS_READ = Counter(
    "modelops_sketch_windows_read_total",
    "Serving-pod sketch windows read from the store, by drift monitors or for a canary's"
    " request counts (each is read once per operator process)",
)
QUALITY_WINDOWS_MALFORMED = Counter(
    "modelops_quality_windows_malformed_total",
    "Serving-pod quality objects skipped because they could not be parsed",
)
RETRAINS = Counter(
    "modelops_retrains_total", "TrainingRuns created by drift monitors", ["namespace", "monitor"]
)
MODEL_QUALITY = Gauge(
    "modelops_model_quality",
    "Live quality of the monitored version on joined labels (accuracy and f1, or mae and rmse)",
    ["namespace", "monitor", "metric"],
)
QUALITY_LABELS = Gauge(
    "modelops_quality_labels",
    "True labels joined for the monitored version in the monitor's quality window",
    ["namespace", "monitor"],
)
UNDERPERFORMING = Gauge(
    "modelops_underperforming",
    "1 while a quality rule of the monitor fires (Underperforming=True)",
    ["namespace", "monitor"],
)
STORE_REQUESTS = Counter(
    "modelops_store_requests_total",
    "Requests the operator made to the object store for what serving pods write (sketch "
    "windows, quality objects, pod reports), by operation (list: one listing, a ListObjectsV2 "
    "request per 1000 keys; get) and purpose (sketches, canary-counts, quality, pod-reports)",
    ["op", "purpose"],
)
STORE_KEYS_LISTED = Counter(
    "modelops_store_keys_listed_total",
    "Keys those store listings returned, by purpose: a listing from start_after returns only "
    "the keys at or after the first window still wanted",
    ["purpose"],
)
FAIRNESS = Gauge(
    "modelops_drift_fairness",
    "Live fairness metric of a DriftMonitor's version across the groups of its sensitive"
    " feature (fairlearn's definition, from joined labels)",
    ["namespace", "monitor", "metric"],
)
FAIRNESS_VIOLATED = Gauge(
    "modelops_drift_fairness_violated",
    "1 while the DriftMonitor's FairnessViolated condition is True",
    ["namespace", "monitor"],
)


def remove_series(gauge: Gauge, *labels: str) -> None:
    """Remove the gauge's series with these label values, if it was ever set."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
