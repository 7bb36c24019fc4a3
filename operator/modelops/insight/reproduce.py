"""``modelops reproduce mv/NAME``: train a ModelVersion again from its lineage and check that
the new model answers its probe rows as the registered one did.

1. The version's dataset is downloaded and hashed (sha256 of the bytes, as the trainer hashes
   them); when it no longer matches ``lineage.datasetSha256`` the command refuses, saying
   both digests, and creates nothing.
2. A TrainingRun is created from the lineage (:func:`reproduction_run`): the same model name,
   dataset (its digest pinned in ``dataset.sha256``, so a dataset overwritten meanwhile fails
   the run with ``DatasetChanged``), target, features and categorical columns (the
   signature's inputs, ``BYTES`` ones categorical), format, estimator, params, seed, test size
   and image; registration disabled (a reproduction is a check, not a new version);
   annotated and labelled ``modelops.dev/reproduces: <version>``.
3. With ``--wait`` (or ``--run NAME``, to check a reproduction made earlier) it waits for the
   run to finish, loads the run's model (digest-verified, skops with the trainer's trusted
   types) and predicts the version's probe rows (``probe.json``, digest-verified): a
   classifier must give exactly the same classes, a regressor numbers within
   ``numpy.allclose`` (rtol 1e-05, atol 1e-08: the same code on another BLAS may differ in
   the last bits).

Exit status 0 for the same predictions (or a run created without ``--wait``), 1 for a
refusal, different predictions or a failed run; errors a user can fix are one line.
RBAC in the namespace: get modelversions, create and get trainingruns.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from minio.error import S3Error
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from modelops import API_VERSION, GROUP
from modelops.api.modelversion import ModelVersionSpec
from modelops.insight.plugin import (
    Session,
    UserError,
    object_name,
    store_from_env,
    store_problem,
)
from modelops.storage import ArtifactError, ArtifactStore, Location, sha256_hex

REPRODUCES = f"{GROUP}/reproduces"
"""Annotation and label of a reproduction TrainingRun: the ModelVersion it reproduces."""
VERSION_KINDS = frozenset(
    {"mv", "modelversion", "modelversions", "modelversion.modelops.dev",
     "modelversions.modelops.dev"}
)  # fmt: skip
RTOL, ATOL = 1e-05, 1e-08
"""``numpy.allclose``'s defaults, for a regressor's predictions."""
POLL_SECONDS = 2.0
HELP = "train a ModelVersion again from its lineage and compare predictions on its probe rows"


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    """The ``reproduce`` command's arguments."""
    cmd.add_argument("name", metavar="NAME", help="ModelVersion (NAME or mv/NAME)")
    cmd.add_argument(
        "--wait", action="store_true", help="wait for the run and compare its predictions"
    )
    cmd.add_argument(
        "--run",
        metavar="RUN",
        dest="earlier_run",  # `run` is the plugin's command function
        help="compare a reproduction TrainingRun made earlier (waits)",
    )
    cmd.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds to wait for the run (1800)"
    )


# -- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """``probe.json``: held-out rows (column lists) and the model's predictions on them."""

    task: str
    features: list[str]
    categorical: list[str]
    inputs: dict[str, list[Any]]
    predictions: list[Any]


def load_probe(data: bytes) -> Probe:
    """Parse ``probe.json`` (layout in :mod:`modelops.training.trainer`); ValueError names
    what is wrong."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 1:
        raise ValueError("probe.json is not a schemaVersion 1 probe")
    features = [str(f) for f in doc.get("features") or []]
    inputs = doc.get("inputs") or {}
    predictions = list(doc.get("predictions") or [])
    lengths = {len(inputs.get(f) or []) for f in features}
    if not features or lengths != {len(predictions)}:
        raise ValueError("probe.json has columns of other lengths than its predictions")
    return Probe(
        str(doc.get("task")), features, [str(c) for c in doc.get("categorical") or []],
        {f: list(inputs[f]) for f in features}, predictions,
    )  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Probe predictions of the registered model against the reproduced one's."""

    rows: int
    differing: int
    rule: str
    """``exact`` (classes) or ``allclose`` (numbers)."""
    first: tuple[int, Any, Any] | None = None
    """(row, expected, got) of the first differing row."""
    max_abs_difference: float | None = None
    """Regressors: the largest |expected - got|."""

    @property
    def same(self) -> bool:
        return self.differing == 0

    def verdict(self) -> str:
        """One line: ``same predictions: 38 of 38 probe rows (exact)``."""
        how = "exact" if self.rule == "exact" else f"numpy.allclose rtol={RTOL:g} atol={ATOL:g}"
        extra = ""
        if self.max_abs_difference is not None:
            extra = f", largest |difference| {self.max_abs_difference:.3g}"
        if self.same:
            return f"same predictions: {self.rows} of {self.rows} probe rows ({how}{extra})"
        assert self.first is not None
        row, expected, got = self.first
        return (
            f"different predictions: {self.differing} of {self.rows} probe rows differ ({how}"
            f"{extra}); first: row {row}, expected {expected!r}, got {got!r}"
        )


def compare(task: str, expected: Sequence[Any], actual: Sequence[Any]) -> Comparison:
    """Compare predictions row by row: classes as text, exactly; numbers with
    ``numpy.isclose`` (rtol 1e-05, atol 1e-08). Raises ValueError when the lengths differ."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(actual)} predictions for {len(expected)} probe rows")
    if task == "classification":
        want, got = [str(v) for v in expected], [str(v) for v in actual]
        bad = [i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b]
        first: tuple[int, Any, Any] | None = (bad[0], want[bad[0]], got[bad[0]]) if bad else None
        return Comparison(len(want), len(bad), "exact", first)
    want_n = np.asarray(expected, dtype=np.float64)
    got_n = np.asarray(actual, dtype=np.float64)
    close = np.isclose(got_n, want_n, rtol=RTOL, atol=ATOL)
    bad = np.flatnonzero(~close).tolist()
    first = (bad[0], float(want_n[bad[0]]), float(got_n[bad[0]])) if bad else None
    largest = float(np.max(np.abs(want_n - got_n))) if want_n.size else 0.0
    return Comparison(int(want_n.size), len(bad), "allclose", first, largest)


def predict(model_bytes: bytes, probe: Probe) -> list[Any]:
    """The predictions of a skops model on the probe's rows, built as the trainer built its
    input (categorical columns as text, else a float64 matrix). Raises
    :class:`~modelops.training.estimators.EstimatorError` for a file with untrusted types."""
    import pandas as pd
    import skops.io as sio

    from modelops.training.estimators import trusted_types
    from modelops.training.trainer import model_input

    model = sio.loads(model_bytes, trusted=trusted_types(model_bytes))
    frame = pd.DataFrame({name: probe.inputs[name] for name in probe.features})
    for name in probe.categorical:
        frame[name] = frame[name].astype(str)
    predicted = model.predict(model_input(frame, probe.categorical))
    if probe.task == "classification":
        return [str(p) for p in predicted]
    return [float(p) for p in predicted]


def missing_lineage(spec: ModelVersionSpec) -> list[str]:
    """What the version lacks to be reproduced (recorded since fairness and cards came in)."""
    lineage = spec.lineage
    wanted = {
        "lineage.datasetSha256": lineage.dataset_sha256,
        "lineage.target": lineage.target,
        "lineage.testSize": lineage.test_size,
        "probe": spec.probe,
    }
    return [name for name, value in wanted.items() if value is None]


def reproduction_run(
    version: str, spec: ModelVersionSpec, namespace: str, now: dt.datetime
) -> dict[str, Any]:
    """The TrainingRun that trains ``version`` again (see the module docstring), named
    ``<version>-reproduce-<UTC time>``. Raises ValueError when the lineage lacks a field."""
    from modelops.resources.common import child_name

    if missing := missing_lineage(spec):
        raise ValueError(f"its spec has no {', '.join(missing)}")
    lineage = spec.lineage
    inputs = spec.signature.inputs
    dataset: dict[str, Any] = {
        "uri": lineage.dataset_uri,
        "target": lineage.target,
        "features": [f.name for f in inputs],
        "sha256": lineage.dataset_sha256,
    }
    if categorical := [f.name for f in inputs if f.datatype == "BYTES"]:
        dataset["categorical"] = categorical
    if lineage.dataset_format:
        dataset["format"] = lineage.dataset_format
    run_spec: dict[str, Any] = {
        "model": spec.model,
        "dataset": dataset,
        "estimator": {"name": lineage.estimator, "params": dict(lineage.params)},
        "seed": lineage.seed,
        "testSize": lineage.test_size,
        "register": {"enabled": False},
    }
    if lineage.image:
        run_spec["image"] = lineage.image
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {
            "name": child_name(version, f"reproduce-{now.strftime('%Y%m%d-%H%M%S')}"),
            "namespace": namespace,
            "labels": {REPRODUCES: version, f"{GROUP}/model": spec.model},
            "annotations": {REPRODUCES: version},
        },
        "spec": run_spec,
    }


# -- the command ------------------------------------------------------------------------------


async def reproduce(session: Session, args: argparse.Namespace) -> int:
    """``reproduce NAME [--wait | --run RUN] [--timeout S]``; see the module docstring."""
    name = object_name(args.name, VERSION_KINDS, "ModelVersion")
    obj = await session.get("ModelVersion", name)
    try:
        spec = ModelVersionSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        raise UserError(f"ModelVersion {name}: {exc}".splitlines()[0]) from None
    if missing := missing_lineage(spec):
        return _refuse(
            f"ModelVersion {name} cannot be reproduced: its spec has no {', '.join(missing)}"
            " (registered by an operator that did not record them)"
        )
    store = store_from_env()
    if args.earlier_run:
        run_name = args.earlier_run
        run = await session.get("TrainingRun", run_name)
        if (run["metadata"].get("annotations") or {}).get(REPRODUCES) != name:
            raise UserError(f"TrainingRun {run_name} is not a reproduction of {name}")
    else:
        actual = await asyncio.to_thread(_dataset_digest, store, spec.lineage.dataset_uri)
        if actual != spec.lineage.dataset_sha256:
            return _refuse(
                f"the dataset changed: {spec.lineage.dataset_uri} has sha256 {actual} now, "
                f"{name} was trained on sha256 {spec.lineage.dataset_sha256}"
            )
        print(f"dataset {spec.lineage.dataset_uri}: sha256 {actual[:12]} as in the lineage")
        run = reproduction_run(name, spec, session.namespace, dt.datetime.now(dt.UTC))
        run_name = run["metadata"]["name"]
        if await session.cluster.create_new(run) is None:
            raise UserError(f"TrainingRun {run_name} already exists in {session.namespace}")
        lineage = spec.lineage
        print(
            f"trainingrun.modelops.dev/{run_name} created ({lineage.estimator}, seed "
            f"{lineage.seed}, testSize {lineage.test_size:g}, registration disabled)"
        )
        if not args.wait:
            print(f"check it later: modelops reproduce mv/{name} --run {run_name}")
            return 0
    done = await _finished(session, run_name, args.timeout)
    status = done.get("status") or {}
    if status.get("phase") != "Succeeded":
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        print(
            f"reproduction failed: TrainingRun {run_name} {status.get('phase')}: "
            f"{ready.get('reason', '')}: {status.get('message') or ready.get('message', '')}",
            file=sys.stderr,
        )
        return 1
    comparison = await asyncio.to_thread(_compare, store, spec, status)
    print(f"{name} reproduced by TrainingRun {run_name}: {comparison.verdict()}")
    return 0 if comparison.same else 1


def _refuse(reason: str) -> int:
    print(f"refused: {reason}", file=sys.stderr)
    return 1


def _dataset_digest(store: ArtifactStore, uri: str) -> str:
    try:
        return sha256_hex(store.get(Location.parse(uri)))
    except ArtifactError as exc:
        raise UserError(f"the dataset is gone: {exc}") from None
    except (S3Error, HTTPError, OSError) as exc:
        raise UserError(store_problem(exc)) from None


async def _finished(session: Session, run: str, timeout: float) -> dict[str, Any]:
    """The run once Succeeded or Failed; UserError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    print(f"waiting for TrainingRun {run} (up to {timeout:g} s)", flush=True)
    while True:
        obj = await session.get("TrainingRun", run)
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return obj
        if time.monotonic() > deadline:
            phase = (obj.get("status") or {}).get("phase") or "Pending"
            raise UserError(f"TrainingRun {run} still {phase} after {timeout:g} s")
        await asyncio.sleep(POLL_SECONDS)


def _compare(store: ArtifactStore, spec: ModelVersionSpec, status: Mapping[str, Any]) -> Comparison:
    from modelops.training.estimators import EstimatorError

    artifact = status.get("artifact") or {}
    assert spec.probe is not None  # missing_lineage checked it
    try:
        probe = load_probe(store.get_verified(Location.parse(spec.probe.uri), spec.probe.sha256))
        model = store.get_verified(Location.parse(artifact["uri"]), artifact["sha256"])
        return compare(probe.task, probe.predictions, predict(model, probe))
    except (KeyError, ValueError, EstimatorError) as exc:
        raise UserError(f"cannot compare: {exc}") from None
    except ArtifactError as exc:
        raise UserError(str(exc)) from None
    except (S3Error, HTTPError, OSError) as exc:
        raise UserError(store_problem(exc)) from None
