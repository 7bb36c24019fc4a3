"""The API of modelops.dev/v1alpha1, typed once: CRDs are generated from these models."""

from modelops.api.common import Condition, parse_duration
from modelops.api.deployment import Deployment, DeploymentSpec, DeploymentStatus
from modelops.api.driftmonitor import DriftMonitor, DriftMonitorSpec, DriftMonitorStatus
from modelops.api.modelversion import ModelVersion, ModelVersionSpec, ModelVersionStatus
from modelops.api.trainingrun import TrainingRun, TrainingRunSpec, TrainingRunStatus

__all__ = [
    "Condition",
    "Deployment",
    "DeploymentSpec",
    "DeploymentStatus",
    "DriftMonitor",
    "DriftMonitorSpec",
    "DriftMonitorStatus",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "TrainingRun",
    "TrainingRunSpec",
    "TrainingRunStatus",
    "parse_duration",
]
