"""Which metrics were measured: a number that is not finite is no measurement.

Shared by the trainer (which writes the summary) and the operator (which reads it, perhaps
from an older trainer image): a metric such as R² on one test row comes out NaN, and a NaN
must neither pass a gate (every comparison with it is false) nor reach an API object (the
API server refuses JSON with NaN or Infinity). Only ``math``: the operator imports this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

FAIRNESS_SCALARS = frozenset(
    {
        "demographic_parity_difference",
        "equalized_odds_difference",
        "accuracy_difference",
        "accuracy_group_min",
        "recall_difference",
        "recall_group_min",
        "mae_difference",
        "mae_group_max",
    }
)
"""The scalars the fairness assessment adds to a run's metrics (see
:mod:`modelops.training.fairness`)."""
FAIRNESS_LOWER_IS_BETTER = FAIRNESS_SCALARS - {"accuracy_group_min", "recall_group_min"}
"""Of those, the ones a gate bounds from above: the differences between groups, and the
worst group's MAE. The worst group's accuracy and recall are bounded from below."""


def is_finite(value: Any) -> bool:
    """A real, finite number (not a bool, not a string, not NaN or ±Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def unmeasured_message(name: str, value: Any, test_rows: int | None) -> str:
    """Why ``name`` has no value, e.g. ``r2 could not be measured (1 test row)``."""
    if test_rows is not None and test_rows < 2:
        rows = "1 test row" if test_rows == 1 else f"{test_rows} test rows"
        return f"{name} could not be measured ({rows})"
    if isinstance(value, float):
        return f"{name} could not be measured (it came out {value})"
    return f"{name} could not be measured"


def split_finite(
    raw: Mapping[str, Any], test_rows: int | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """The finite metrics, and for each other one the reason it has no value."""
    finite: dict[str, float] = {}
    unmeasured: dict[str, str] = {}
    for name, value in raw.items():
        if is_finite(value):
            finite[str(name)] = float(value)
        else:
            unmeasured[str(name)] = unmeasured_message(str(name), value, test_rows)
    return finite, unmeasured
