"""Loading one version: download, verify the sha256, load with skops' trusted types only.

Nothing reaches ``skops.io.loads`` unless its bytes hash to the digest in the routing table,
and skops only rebuilds the types :func:`modelops.training.estimators.trusted_types` allows
(scikit-learn, numpy, scipy), so a tampered or foreign file is refused, never executed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
import skops.io as sio

from modelops.drift.sketch import Sketch
from modelops.serving.predictors import Predictor, build
from modelops.serving.protocol import Layout
from modelops.serving.table import VersionEntry
from modelops.storage import ArtifactError, ArtifactStore, Location
from modelops.training.estimators import EstimatorError, trusted_types

logger = logging.getLogger(__name__)


class LoadError(Exception):
    """A version that cannot be served; ``reason`` is CamelCase, as in conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded model and what serving it needs, computed once."""

    artifact_sha256: str
    predictor: Predictor
    layout: Layout
    profile: dict[str, Any] | None
    output_datatype: str
    labels: tuple[Any, ...]
    """Per class, the label as it goes into JSON (str, int, float or bool)."""
    class_names: list[str]
    """Per class, ``str(label)``: metric labels, and what sketches count."""

    @property
    def classifier(self) -> bool:
        return self.predictor.classes is not None


def cache_key(entry: VersionEntry) -> str:
    """Everything a LoadedModel depends on; an unchanged version is never reloaded."""
    return entry.model_dump_json(include={"artifact", "profile", "signature"})


def load(store: ArtifactStore, entry: VersionEntry) -> LoadedModel:
    """Blocking (run it in a thread); raises :class:`LoadError`."""
    data = _fetch(store, entry.artifact.uri, entry.artifact.sha256, "")
    try:
        trusted = trusted_types(data)
        estimator = sio.loads(data, trusted=trusted)
    except EstimatorError as exc:
        raise LoadError("UntrustedTypes", f"{entry.artifact.uri}: {exc}") from None
    except Exception as exc:  # a corrupt file can fail anywhere inside skops
        raise LoadError("LoadFailed", f"{entry.artifact.uri} is not a skops model: {exc}") from None
    profile = None
    if entry.profile is not None:
        raw = _fetch(store, entry.profile.uri, entry.profile.sha256, "Profile")
        try:
            profile = orjson.loads(raw)
            Sketch.empty(profile)  # the profile must be one sketches can be built from
        except Exception as exc:
            raise LoadError(
                "ProfileInvalid", f"{entry.profile.uri} is not a usable profile: {exc}"
            ) from None
    layout = Layout.of(entry.signature)
    width = getattr(estimator, "n_features_in_", None)
    if width is not None and width != layout.width:
        raise LoadError(
            "SignatureMismatch",
            f"the model takes {width} features, the signature lists {layout.width}",
        )
    if not hasattr(estimator, "predict"):
        raise LoadError("LoadFailed", f"{entry.artifact.uri} holds no estimator")
    predictor = build(estimator, layout, profile)
    datatype, labels, names = _labels(predictor)
    if (entry.signature.task == "classification") != predictor.classifier:
        raise LoadError(
            "SignatureMismatch",
            f"the signature says {entry.signature.task}, the model is "
            f"{'a classifier' if predictor.classifier else 'a regressor'}",
        )
    logger.info(
        "loaded %s (sha256 %s, %s, predictor %s)",
        entry.name,
        entry.artifact.sha256[:12],
        type(estimator).__name__,
        predictor.kind,
    )
    return LoadedModel(entry.artifact.sha256, predictor, layout, profile, datatype, labels, names)


def _fetch(store: ArtifactStore, uri: str, sha256: str, what: str) -> bytes:
    try:
        return store.get_verified(Location.parse(uri), sha256)
    except ArtifactError as exc:
        raise LoadError(f"{what}{exc.reason}", str(exc)) from None
    except ValueError as exc:
        raise LoadError(f"{what}InvalidUri", str(exc)) from None


def _labels(predictor: Predictor) -> tuple[str, tuple[Any, ...], list[str]]:
    classes = predictor.classes
    if classes is None:
        return "FP64", (), []
    kind = classes.dtype.kind
    labels: tuple[Any, ...]
    if kind in "iu":
        datatype, labels = "INT64", tuple(int(c) for c in classes)
    elif kind == "f":
        datatype, labels = "FP64", tuple(float(c) for c in classes)
    elif kind == "b":
        datatype, labels = "BOOL", tuple(bool(c) for c in classes)
    else:
        datatype, labels = "BYTES", tuple(str(c) for c in classes)
    # str() of the estimator's own labels: what the trainer's profile counted.
    return datatype, labels, [str(c) for c in classes]
