"""Operator settings, read from the environment (``MODELOPS_*``)."""

from __future__ import annotations

import socket
import string

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELOPS_")

    runtime_image: str = "ghcr.io/modelops-dev/modelops-runtime:0.1.0"
    """Image of trainer and server pods when a resource names none."""
    s3_endpoint: str = "minio.modelops-system.svc:9000"
    """host:port of the S3-compatible object store, as pods reach it."""
    s3_secure: bool = False
    bucket: str = "modelops"
    credentials_secret: str = "modelops-s3"
    """Secret (in each workload namespace) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Prometheus /metrics; 0 disables."""
    health_port: int = Field(default=8081, ge=0, le=65535)
    """Kopf's liveness endpoint /healthz; 0 disables."""
    namespaces: str = ""
    """Comma-separated namespaces to watch; all namespaces when empty."""
    job_poll_seconds: float = Field(default=5.0, gt=0)
    """How often a running TrainingRun looks at its Job."""
    rollout_poll_seconds: float = Field(default=2.0, gt=0)
    """How often a canary still loading looks for its serving pods' reports in the store (the
    store sends no events; everything else wakes a Deployment by watch or at its due time)."""
    max_concurrent_passes: int = Field(default=32, ge=1)
    """Passes of one kind (Deployments, DriftMonitors) run at once, at most: at start-up every
    object has a pass due, and a thousand at once would only queue at the API server (429)."""
    leader_election: bool = True
    """Hold a coordination.k8s.io Lease before reconciling (controllers/leader.py), so that
    replicas > 1 are safe; false runs at once, as the only replica."""
    leader_election_id: str = "modelops-operator"
    """Name of that Lease; the operator's Role (manifests/base/rbac.yaml) names it too."""
    pod_namespace: str = Field(default="modelops-system", validation_alias="POD_NAMESPACE")
    """The operator's own namespace, where its Lease lives (downward API ``POD_NAMESPACE``)."""
    pod_name: str = Field(
        default_factory=socket.gethostname, validation_alias=AliasChoices("POD_NAME", "HOSTNAME")
    )
    """The pod's name (downward API ``POD_NAME``): the Lease holder's identity, plus a suffix."""
    mlflow_tracking_uri: str = ""
    """MLflow tracking server (``http(s)://host:port``) that TrainingRuns, ModelVersions and
    Deployments' aliases are synced to (controllers/mlflow_sync.py); empty: no sync, the
    default. Needs the ``mlflow`` extra (the ``mlflow-skinny`` client)."""
    mlflow_name: str = "{model}"
    """Name of a model's MLflow experiment and registered model: ``{model}`` and ``{namespace}``
    are replaced. ``{namespace}.{model}`` keeps namespaces with models of the same name apart."""
    mlflow_poll_seconds: float = Field(default=5.0, gt=0)
    """How often the MLflow sync looks at unsynced objects and at Deployments' versions."""
    mlflow_max_artifact_bytes: int = Field(default=100 * 2**20, ge=0)
    """Models up to this size (bytes) are uploaded to their MLflow run; a larger one is only
    referenced by its ``s3://`` URI (a run tag, and the registered version's source)."""

    @field_validator("mlflow_name")
    @classmethod
    def _mlflow_name_fields(cls, template: str) -> str:
        # MLflow refuses '/' and ':' in registered model names (mlflow/utils/validation.py).
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        if not template or fields - {"model", "namespace"} or "model" not in fields:
            raise ValueError("must name {model} and may name {namespace}, nothing else")
        if "/" in template or ":" in template:
            raise ValueError("must not contain '/' or ':' (MLflow refuses them in model names)")
        return template
