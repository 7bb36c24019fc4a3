"""Reference profiles, live sketches and drift statistics (numpy and scipy only).

Typical flow: the trainer calls :func:`build_profile` on the training frame and stores the JSON;
each serving pod keeps ``Sketch.empty(profile)``, calls ``update`` per request batch and writes
``to_dict()`` every few seconds; the DriftMonitor loads the pods' windows with
``Sketch.from_dict``, merges them and calls :func:`detect`.
"""

from modelops.drift.detect import (
    METHODS,
    PREDICTION,
    DriftReport,
    FeatureDrift,
    Method,
    default_method,
    detect,
)
from modelops.drift.profile import SCHEMA_VERSION, build_profile
from modelops.drift.sketch import MAX_UNSEEN, FeatureCounts, Sketch

__all__ = [
    "MAX_UNSEEN",
    "METHODS",
    "PREDICTION",
    "SCHEMA_VERSION",
    "DriftReport",
    "FeatureCounts",
    "FeatureDrift",
    "Method",
    "Sketch",
    "build_profile",
    "default_method",
    "detect",
]
