"""``reproduce``'s pure parts: the probe the trainer writes, the TrainingRun made from a
version's lineage, and the comparison of predictions on the probe rows."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelops.api.modelversion import ModelVersionSpec
from modelops.api.trainingrun import TrainingRun, TrainingRunSpec
from modelops.insight.reproduce import (
    REPRODUCES,
    compare,
    load_probe,
    missing_lineage,
    predict,
    reproduction_run,
)
from modelops.resources.modelversion import model_version
from modelops.storage import Location
from modelops.training.trainer import PROBE_ROWS, train
from unit.test_trainer import MemoryStore

NOW = dt.datetime(2025, 10, 9, 9, 30, tzinfo=dt.UTC)


def frame(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    colour = rng.choice(["red", "green", "blue"], size=n)
    a = rng.normal(size=n)
    return pd.DataFrame(
        {"a": a, "n": rng.integers(0, 5, size=n), "colour": colour,
         # noisy labels: forests of other seeds disagree on some rows
         "y": (a + (colour == "red") + rng.normal(scale=1.5, size=n) > 0.5).astype(int),
         "r": 3 * a + 1}
    )  # fmt: skip


def spec(estimator: str = "RandomForestClassifier", target: str = "y") -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {
            "model": "m",
            "dataset": {"uri": "s3://b/d.csv", "target": target,
                        "features": ["a", "n", "colour"], "categorical": ["n"]},
            "estimator": {"name": estimator, "params": {"n_estimators": 5}}
            if estimator.startswith("RandomForest") else {"name": estimator},
            "seed": 3,
            "testSize": 0.3,
        }
    )  # fmt: skip


def trained(s: TrainingRunSpec, key: str = "out") -> tuple[MemoryStore, dict[str, Any]]:
    store = MemoryStore()
    store.put(Location("b", "d.csv"), frame().to_csv(index=False).encode())
    return store, train(s, store, Location("b", key))


def registered(s: TrainingRunSpec, summary: dict[str, Any]) -> ModelVersionSpec:
    run = TrainingRun.model_validate(
        {"metadata": {"name": "run", "namespace": "ml", "uid": "u"}, "spec": s.wire()}
    )
    return ModelVersionSpec.model_validate(model_version(run, summary, 4, "runtime:1")["spec"])


# -- the probe ---------------------------------------------------------------------------------


def test_the_probe_holds_held_out_rows_and_the_models_predictions() -> None:
    store, summary = trained(spec())
    probe = load_probe(store.objects[summary["probe"]["uri"]])
    assert probe.features == ["a", "n", "colour"] and probe.categorical == ["n", "colour"]
    assert len(probe.predictions) == min(PROBE_ROWS, summary["rows"]["test"])
    model = store.objects[summary["artifact"]["uri"]]
    assert predict(model, probe) == probe.predictions


def test_a_regressor_probe_keeps_numbers() -> None:
    store, summary = trained(spec("Ridge", target="r"))
    probe = load_probe(store.objects[summary["probe"]["uri"]])
    assert probe.task == "regression"
    assert all(isinstance(p, float) for p in probe.predictions)


def test_a_probe_of_other_lengths_is_refused() -> None:
    doc = {"schemaVersion": 1, "task": "classification", "features": ["a"],
           "inputs": {"a": [1.0, 2.0]}, "predictions": ["x"]}  # fmt: skip
    with pytest.raises(ValueError, match="other lengths"):
        load_probe(json.dumps(doc).encode())


# -- the comparison -----------------------------------------------------------------------------


def test_the_same_classes_are_the_same_predictions() -> None:
    result = compare("classification", ["a", "b"], ["a", "b"])
    assert result.same and result.verdict() == "same predictions: 2 of 2 probe rows (exact)"


def test_one_other_class_is_a_difference_named_by_its_row() -> None:
    result = compare("classification", ["a", "b", "c"], ["a", "c", "c"])
    assert (result.same, result.differing, result.first) == (False, 1, (1, "b", "c"))
    assert "1 of 3 probe rows differ" in result.verdict()


def test_regressions_within_allclose_are_the_same() -> None:
    assert compare("regression", [1.0, 2.0], [1.0 + 1e-9, 2.0]).same


def test_regressions_beyond_allclose_differ() -> None:
    result = compare("regression", [1.0, 2.0], [1.0, 2.001])
    assert not result.same and result.max_abs_difference == pytest.approx(0.001)


def test_a_reproduced_model_predicts_the_probe_as_the_registered_one() -> None:
    store, first = trained(spec(), "first")
    again_store, again = trained(spec(), "again")
    probe = load_probe(store.objects[first["probe"]["uri"]])
    model = again_store.objects[again["artifact"]["uri"]]
    assert compare(probe.task, probe.predictions, predict(model, probe)).same


def test_another_seed_is_caught_on_the_probe() -> None:
    store, first = trained(spec(), "first")
    other = spec()
    other.seed = 11
    other_store, second = trained(other, "second")
    probe = load_probe(store.objects[first["probe"]["uri"]])
    model = other_store.objects[second["artifact"]["uri"]]
    assert not compare(probe.task, probe.predictions, predict(model, probe)).same


# -- the TrainingRun made from the lineage -------------------------------------------------------


def test_the_reproduction_run_repeats_the_lineage_with_registration_disabled() -> None:
    s = spec()
    _, summary = trained(s)
    mv = registered(s, summary)
    run = reproduction_run("m-v4", mv, "ml", NOW)
    assert run["metadata"]["name"] == "m-v4-reproduce-20251009-093000"
    assert run["metadata"]["annotations"] == {REPRODUCES: "m-v4"}
    again = TrainingRunSpec.model_validate(run["spec"])
    assert again.dataset.uri == s.dataset.uri and again.dataset.target == "y"
    assert again.dataset.features == ["a", "n", "colour"]
    assert again.dataset.categorical == ["n", "colour"]
    assert again.dataset.sha256 == summary["dataset"]["sha256"]
    assert (again.estimator, again.seed, again.test_size) == (s.estimator, 3, 0.3)
    assert again.image == "runtime:1"
    assert again.registration.enabled is False


def test_a_version_without_target_or_probe_cannot_be_reproduced() -> None:
    s = spec()
    _, summary = trained(s)
    old = registered(s, summary).model_copy(update={"probe": None})
    old.lineage.target = None
    assert missing_lineage(old) == ["lineage.target", "probe"]
    with pytest.raises(ValueError, match=r"no lineage\.target, probe"):
        reproduction_run("m-v4", old, "ml", NOW)
