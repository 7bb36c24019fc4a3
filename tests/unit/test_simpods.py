"""What the no-process kubelet's simulated serving pods count (``modelops.local.simpods``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelops.drift import detect
from modelops.drift.profile import build_profile
from modelops.local.simpods import _Rows, latency_buckets
from support.models import iris_frame


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    frame = iris_frame()
    return build_profile(frame.drop(columns=["species"]), predictions=frame["species"])


def test_a_window_counts_the_rows_asked_for(profile: dict[str, Any]) -> None:
    sketch = _Rows(profile, np.random.default_rng(0)).sketch(321, 0.0, drifted=False)
    assert (sketch.n_rows, sketch.fingerprint) == (321, profile["fingerprint"])


def test_rows_drawn_from_the_profile_do_not_drift_from_it(profile: dict[str, Any]) -> None:
    rows = _Rows(profile, np.random.default_rng(1))
    verdicts = [
        detect(profile, rows.sketch(500, 0.0, drifted=False)).dataset_drift for _ in range(20)
    ]
    assert not any(verdicts)


def test_drifted_rows_drift_from_the_profile(profile: dict[str, Any]) -> None:
    rows = _Rows(profile, np.random.default_rng(2))
    assert detect(profile, rows.sketch(500, 0.0, drifted=True)).dataset_drift


def test_every_simulated_request_falls_in_the_five_millisecond_bucket() -> None:
    buckets = latency_buckets(7)
    assert (buckets["0.002"], buckets["0.005"], buckets["+Inf"]) == (0, 7, 7)
