"""The trainer's pure parts: data preparation, the estimator allow-list, trusted types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from modelops.api.trainingrun import TrainingRunSpec
from modelops.storage import ArtifactError, ArtifactStore, Location, sha256_hex
from modelops.training import trainer
from modelops.training.estimators import EstimatorError, build, trusted_types
from modelops.training.trainer import TrainingError, make_model, prepare, read_dataset, train


def spec(**dataset: object) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {
            "model": "m",
            "dataset": {"uri": "s3://b/d.csv", "target": "y", **dataset},
            "estimator": {"name": "LogisticRegression"},
        }
    )


def frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "colour": rng.choice(["red", "green"], size=n),
            "y": rng.integers(0, 2, size=n),
        }
    )


def test_missing_target_names_the_column_and_what_exists() -> None:
    with pytest.raises(TrainingError) as err:
        prepare(frame(), spec(target="label"))
    assert err.value.reason == "MissingTarget"
    assert "'label'" in str(err.value) and "colour" in str(err.value)


def test_text_columns_become_categorical() -> None:
    prepared = prepare(frame(), spec())
    assert prepared.features == ["a", "colour"]
    assert prepared.categorical == ["colour"]


def test_high_cardinality_text_cannot_be_encoded() -> None:
    data = frame(200)
    data["id"] = [f"user-{i}" for i in range(200)]
    with pytest.raises(TrainingError) as err:
        prepare(data, spec())
    assert err.value.reason == "UnencodableData"
    assert "'id'" in str(err.value) and "200 distinct" in str(err.value)


def test_missing_numeric_values_are_refused() -> None:
    data = frame()
    data.loc[3, "a"] = np.nan
    with pytest.raises(TrainingError, match="'a' has missing values"):
        prepare(data, spec())


def test_unknown_feature_is_refused() -> None:
    with pytest.raises(TrainingError, match="not in dataset"):
        prepare(frame(), spec(features=["a", "weight"]))


def test_unreadable_parquet_is_a_clear_error() -> None:
    with pytest.raises(TrainingError) as err:
        read_dataset(b"this is not parquet", "s3://b/d.parquet", None)
    assert err.value.reason == "InvalidDataset" and "as parquet" in str(err.value)


def test_categorical_data_gets_an_encoding_pipeline_that_fits() -> None:
    prepared = prepare(frame(), spec())
    model = make_model(spec(), prepared)
    model.fit(prepared.frame, prepared.target)
    assert model.predict(prepared.frame.head(3)).shape == (3,)


def test_estimator_outside_the_allow_list_is_refused() -> None:
    with pytest.raises(EstimatorError, match="not allowed"):
        build("subprocess.Popen", {}, 0)


def test_unknown_estimator_parameter_is_refused() -> None:
    with pytest.raises(EstimatorError, match="no parameter"):
        build("Ridge", {"n_estimators": 3}, 0)


def test_seed_becomes_random_state_unless_given() -> None:
    assert build("RandomForestClassifier", {}, 5).get_params()["random_state"] == 5
    assert build("RandomForestClassifier", {"random_state": 1}, 5).get_params()["random_state"] == 1


def test_trusted_types_accept_sklearn_models() -> None:
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    data = sio.dumps(model)
    loaded = sio.loads(data, trusted=trusted_types(data))
    assert loaded.predict([[1.0]])[0] == 1


def test_trusted_types_refuse_foreign_types() -> None:
    data = sio.dumps({"f": np.float64(1.0), "call": len})
    with pytest.raises(EstimatorError, match="untrusted"):
        trusted_types(data)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("1.0", 1.0),
        ("3", 3),
        ("1e-3", 0.001),
        ("-.5", -0.5),
        ("sqrt", "sqrt"),
        (1, 1),
        (None, None),
    ],
)
def test_a_number_written_as_a_string_reaches_the_estimator_as_that_number(
    written: object, expected: object
) -> None:
    estimator = build("RandomForestClassifier", {"max_features": written}, seed=0)
    value = estimator.get_params()["max_features"]
    assert value == expected and type(value) is type(expected)


# -- metrics that cannot be measured, and failures nobody expected --------------------------


class MemoryStore(ArtifactStore):
    """The store's get/put over a dict, for the trainer's whole path without a server."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(
        self, loc: Location, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        self.objects[loc.uri] = data
        return sha256_hex(data)

    def get(self, loc: Location) -> bytes:
        try:
            return self.objects[loc.uri]
        except KeyError:
            raise ArtifactError("ArtifactMissing", f"{loc.uri} does not exist") from None


def tiny_regression(rows: int = 10) -> bytes:
    x = np.arange(rows, dtype=float)
    return pd.DataFrame({"x": x, "y": 2 * x + 1}).to_csv(index=False).encode()


def regression_spec(test_size: float) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {
            "model": "tiny",
            "dataset": {"uri": "s3://b/tiny.csv", "target": "y"},
            "estimator": {"name": "LinearRegression"},
            "testSize": test_size,
        }
    )


def strict(data: bytes) -> dict[str, object]:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    loaded: dict[str, object] = json.loads(data, parse_constant=refuse)
    return loaded


def test_r2_on_one_test_row_is_reported_unmeasured_not_nan() -> None:
    store = MemoryStore()
    store.put(Location("b", "tiny.csv"), tiny_regression())
    summary = train(regression_spec(0.1), store, Location("b", "out"))
    assert summary["rows"]["test"] == 1
    assert set(summary["metrics"]) == {"mae"}
    assert summary["unmeasured"] == {"r2": "r2 could not be measured (1 test row)"}
    stored = strict(store.objects["s3://b/out/summary.json"])
    assert stored["metrics"] == summary["metrics"]
    assert strict(store.objects["s3://b/out/metrics.json"]) == summary["metrics"]


def test_a_test_size_that_leaves_no_training_rows_is_an_invalid_dataset() -> None:
    store = MemoryStore()
    store.put(Location("b", "tiny.csv"), tiny_regression())
    with pytest.raises(TrainingError) as err:
        train(regression_spec(0.95), store, Location("b", "out"))
    assert err.value.reason == "InvalidDataset"
    assert "testSize 0.95 of 10 rows" in str(err.value)


def test_an_unexpected_exception_is_reported_as_training_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = MemoryStore()

    def explode(*_: object) -> dict[str, object]:
        raise RuntimeError("the disk\nis on fire")

    monkeypatch.setattr(ArtifactStore, "from_env", classmethod(lambda cls: store))
    monkeypatch.setattr(trainer, "train", explode)
    log = tmp_path / "termination-log"
    code = trainer.main(regression_spec(0.2).model_dump_json(by_alias=True), "s3://b/out", log)
    assert code == 1
    failure = {
        "ok": False,
        "reason": "TrainingFailed",
        "message": "RuntimeError: the disk; is on fire",
    }
    assert strict(store.objects["s3://b/out/summary.json"]) == failure
    assert json.loads(log.read_text()) == failure
