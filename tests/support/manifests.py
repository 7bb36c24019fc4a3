"""Offline checks of what we ship and what the operator builds.

- :func:`kustomize` renders a kustomization under ``manifests/`` with ``kubectl kustomize``.
- :func:`validate` routes one object to whatever can validate it: the official Kubernetes
  schemas (``kubernetes-validate``) for built-in kinds, our CRDs (:class:`CrdValidator`) for
  our kinds, and the small schemas below for the third-party kinds we ship or build
  (Prometheus Operator, Argo CD, Gateway API). An object nothing validates is an error.
- :data:`BUILDERS` lists every pure builder of :mod:`modelops.resources` with sample input,
  and which ``Cluster`` call of which controller writes its output; extend it with each new
  builder (tests/unit/test_manifests.py, test_checkov.py and test_rbac.py all read it).
- :func:`checkov_bin` finds checkov, or installs it into its own venv (``.venv-checkov``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from support.crdschema import CrdValidator

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SAMPLES = MANIFESTS / "samples"
KUBECTL = shutil.which("kubectl")
KUBERNETES_VERSIONS = ("1.30", "1.33")
"""Every built-in object must be valid for the oldest and a recent supported Kubernetes."""

KUSTOMIZATIONS = (
    "base",
    "minio",
    "overlays/dev",
    "overlays/prod",
    "argocd",
    "monitoring",
    "samples",
)
"""Every kustomization under manifests/ (the Component argocd/health is rendered by the tests
of the health checks, over a stand-in argocd-cm)."""

CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = ROOT / ".venv-checkov"

Doc = dict[str, Any]


# --- rendering --------------------------------------------------------------------------------


def kustomize(path: Path) -> list[Doc]:
    """``kubectl kustomize PATH``, parsed; raises with kustomize's own message on failure."""
    assert KUBECTL, "kubectl is not on PATH"
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        hint = ""
        if not (ROOT / "crds" / "kustomization.yaml").exists():
            hint = "\n(crds/kustomization.yaml is missing: `make crds` writes it)"
        raise AssertionError(f"kubectl kustomize {path} failed:\n{result.stderr}{hint}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered(name: str) -> tuple[Doc, ...]:
    return tuple(kustomize(MANIFESTS / name))


def rendered(name: str) -> list[Doc]:
    """The objects of ``manifests/<name>`` (rendered once per test session; a fresh copy)."""
    return copy.deepcopy(list(_rendered(name)))


def ident(doc: Doc) -> str:
    meta = doc.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{doc.get('kind')} {where}{meta.get('name')}"


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec inside a workload, or None for other kinds."""
    spec = doc.get("spec", {})
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return spec.get("template", {}).get("spec") if "template" in spec else None


# --- validation -------------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}


def _kind_schema(spec: Doc, required: tuple[str, ...] = ("spec",)) -> Doc:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *required],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": _META,
            "spec": spec,
        },
    }


_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
    "properties": {
        "port": {"type": "string"},
        "targetPort": {"type": ["string", "integer"]},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
    },
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string"},
        "expr": {"type": "string", "minLength": 1},
        "for": _DURATION,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}

EXTRA_SCHEMAS: dict[tuple[str, str], Doc] = {
    # Prometheus Operator (the fields we use, as in its CRDs; unknown fields are errors)
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _kind_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _kind_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _kind_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": _DURATION,
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                    },
                }
            },
        }
    ),
    # Argo CD
    ("argoproj.io/v1alpha1", "Application"): _kind_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["project", "source", "destination"],
            "properties": {
                "project": {"type": "string"},
                "source": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["repoURL", "path"],
                    "properties": {
                        "repoURL": {"type": "string", "pattern": "^(https://|ssh://|git@)"},
                        "targetRevision": {"type": "string"},
                        "path": {"type": "string"},
                    },
                },
                "destination": {
                    "type": "object",
                    "additionalProperties": False,
                    "oneOf": [{"required": ["server"]}, {"required": ["name"]}],
                    "properties": {
                        "server": {"type": "string"},
                        "name": {"type": "string"},
                        "namespace": {"type": "string"},
                    },
                },
                "syncPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "automated": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "prune": {"type": "boolean"},
                                "selfHeal": {"type": "boolean"},
                            },
                        },
                        "syncOptions": {
                            "type": "array",
                            "items": {"type": "string", "pattern": "^[A-Za-z]+=[A-Za-z]+$"},
                        },
                    },
                },
            },
        }
    ),
    # Gateway API (what resources/serving.py builds)
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _kind_schema(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["parentRefs", "rules"],
            "properties": {
                "parentRefs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "group": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string", "minLength": 1},
                            "namespace": {"type": "string"},
                            "sectionName": {"type": "string"},
                            "port": _PORT,
                        },
                    },
                },
                "hostnames": {"type": "array", "items": {"type": "string"}},
                "rules": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 16,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matches": {
                                "type": "array",
                                "maxItems": 64,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "path": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "Exact",
                                                        "PathPrefix",
                                                        "RegularExpression",
                                                    ]
                                                },
                                                "value": {"type": "string", "pattern": "^/"},
                                            },
                                        }
                                    },
                                },
                            },
                            "backendRefs": {
                                "type": "array",
                                "maxItems": 16,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name", "port"],
                                    "properties": {
                                        "group": {"type": "string"},
                                        "kind": {"type": "string"},
                                        "name": {"type": "string", "minLength": 1},
                                        "namespace": {"type": "string"},
                                        "port": _PORT,
                                        "weight": {
                                            "type": "integer",
                                            "minimum": 0,
                                            "maximum": 1000000,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    ),
}


def _grpc_route_schema() -> Doc:
    """Gateway API's GRPCRoute: an HTTPRoute whose matches name a gRPC service/method."""
    schema = copy.deepcopy(EXTRA_SCHEMAS[("gateway.networking.k8s.io/v1", "HTTPRoute")])
    rule = schema["properties"]["spec"]["properties"]["rules"]["items"]["properties"]
    rule["matches"]["items"]["properties"] = {
        "method": {
            "type": "object",
            "additionalProperties": False,
            "anyOf": [{"required": ["service"]}, {"required": ["method"]}],
            "properties": {
                "type": {"enum": ["Exact", "RegularExpression"]},
                "service": {"type": "string", "minLength": 1, "maxLength": 1024},
                "method": {"type": "string", "minLength": 1, "maxLength": 1024},
            },
        }
    }
    return schema


EXTRA_SCHEMAS[("gateway.networking.k8s.io/v1", "GRPCRoute")] = _grpc_route_schema()


@functools.cache
def crd_validator() -> CrdValidator:
    return CrdValidator()


def validate(doc: Doc) -> str:
    """Validate one object; return what validated it. Raises when invalid or unvalidatable."""
    return _validate(json.dumps(doc, sort_keys=True))


@functools.cache
def _validate(text: str) -> str:
    doc = json.loads(text)
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if crd_validator().knows(doc):
        errors = crd_validator().errors(doc)
        assert not errors, f"{ident(doc)} fails its CRD: {errors}"
        return "crd"
    if key in EXTRA_SCHEMAS:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(EXTRA_SCHEMAS[key]).iter_errors(doc)
        )
        assert error is None, f"{ident(doc)}: {error.message} at {list(error.absolute_path)}"
        return "schema"
    group = key[0].rsplit("/", 1)[0] if "/" in key[0] else ""
    assert group not in {"modelops.dev", "monitoring.coreos.com", "argoproj.io"}, (
        f"{ident(doc)}: no schema for {key}"
    )
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            raise AssertionError(f"nothing validates {key} ({ident(doc)})") from None
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            message = f"{ident(doc)} on Kubernetes {version}: {exc.message} at {where}"
            raise AssertionError(message) from None
    return "kubernetes"


# --- the operator's builders ------------------------------------------------------------------


@dataclass(frozen=True)
class Builder:
    """A pure builder with sample input, and the Cluster call that writes its output."""

    name: str
    build: Callable[[], list[Doc]]
    controller: str
    """The controller module (under operator/modelops) that writes the objects ..."""
    method: str
    """... with this ``Cluster`` method (controllers/cluster.py)."""


def _settings() -> Any:
    from modelops.settings import Settings

    return Settings(runtime_image="registry.example/modelops-runtime:1.0", s3_endpoint="s3:9000")


def _sample(name: str, namespace: str = "ml", **meta: str) -> Doc:
    doc: Doc = yaml.safe_load((SAMPLES / name).read_text())
    doc["metadata"] |= {"namespace": namespace, **meta}
    return doc


RUN_UID = "0b8f3c52-6c1e-4a57-9d0e-2f3c1d2e4a11"


def _training_job() -> list[Doc]:
    from modelops.api.trainingrun import TrainingRun
    from modelops.resources.training import training_job

    run = TrainingRun.model_validate(_sample("trainingrun-iris.yaml", uid=RUN_UID))
    return [training_job(run, _settings())]


def _model_version() -> list[Doc]:
    from modelops.api.trainingrun import TrainingRun
    from modelops.resources.modelversion import model_version

    run = TrainingRun.model_validate(_sample("trainingrun-iris.yaml", uid=RUN_UID))
    spec = _sample("modelversion-iris-v1.yaml")["spec"]
    summary = {
        "artifact": spec["artifact"],
        "profile": spec["profile"],
        "signature": spec["signature"],
        "metrics": spec["metrics"],
        "dataset": {"uri": spec["lineage"]["datasetUri"], "sha256": "ab" * 32},
    }
    return [model_version(run, summary, 1, "registry.example/modelops-runtime:1.0")]


def _serving(routing: str) -> list[Doc]:
    from modelops.api.deployment import Deployment
    from modelops.resources import serving

    doc = _sample("deployment-iris.yaml")
    if routing == "gateway":
        doc["spec"] |= {"routing": "gateway", "gateway": {"parentRefs": [{"name": "public"}]}}
    dep = Deployment.model_validate(doc)
    stable = _sample("modelversion-iris-v1.yaml")["spec"]
    canary = copy.deepcopy(stable) | {"version": 2}
    routes = [
        serving.Route("iris-v1", "stable", 90, stable),
        serving.Route("iris-v2", "canary", 10, canary),
    ]
    return serving.children(dep, routes, _settings())


def _autoscaled(routing: str) -> list[Doc]:
    from modelops.api.deployment import Deployment
    from modelops.resources import autoscaling

    doc = _sample("deployment-iris.yaml")
    doc["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4}
    return autoscaling.autoscaled(Deployment.model_validate(doc), _serving(routing))


BUILDERS: tuple[Builder, ...] = (
    Builder("training_job", _training_job, "controllers/trainingrun.py", "create"),
    Builder("model_version", _model_version, "controllers/trainingrun.py", "create_new"),
    Builder(
        "serving.children[model]", lambda: _serving("model"), "controllers/deployment.py", "apply"
    ),
    Builder(
        "serving.children[gateway]",
        lambda: _serving("gateway"),
        "controllers/deployment.py",
        "apply",
    ),
    Builder(
        "serving.children[model]+autoscaling",
        lambda: _autoscaled("model"),
        "controllers/deployment.py",
        "apply",
    ),
)


def built_objects() -> Iterator[tuple[Builder, Doc]]:
    for builder in BUILDERS:
        for doc in builder.build():
            yield builder, doc


# --- checkov ----------------------------------------------------------------------------------


def checkov_bin() -> Path:
    """checkov from ``$CHECKOV_BIN``, else ``.venv-checkov``, installed there when missing.

    checkov pins many libraries of its own, so it never shares the project's environment.
    The first install takes about a minute (see docs/INSTALL.md, Development checks).
    """
    if os.environ.get("CHECKOV_BIN"):
        return Path(os.environ["CHECKOV_BIN"])
    binary = CHECKOV_VENV / "bin" / "checkov"
    if binary.exists():
        return binary
    subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True)
    pip = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    result = subprocess.run(
        [*pip, f"checkov=={CHECKOV_VERSION}"], capture_output=True, text=True, timeout=1200
    )
    if result.returncode != 0:
        shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
        raise AssertionError(f"installing checkov into {CHECKOV_VENV} failed:\n{result.stderr}")
    return binary


@dataclass(frozen=True)
class Finding:
    check_id: str
    check_name: str
    resource: str
    file: str

    def where(self) -> str:
        return f"{self.file}:{self.resource}"


@dataclass(frozen=True)
class CheckovReport:
    failed: list[Finding]
    resources: int
    """How many resources checkov parsed and checked."""
    parsing_errors: int


def checkov(files: list[Path], framework: str = "kubernetes") -> CheckovReport:
    """Run checkov offline on the given files: failed checks, and what it looked at."""
    args = [str(checkov_bin())]
    for path in files:
        args += ["-f", str(path)]
    args += ["--framework", framework, "--compact", "--quiet", "--skip-download"]
    args += ["--output", "json"]
    # --skip-download and BC_SKIP_MAPPING: nothing is fetched from the checkov platform
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    # checkov exits 1 when a check fails; anything else is an error of its own
    if result.returncode not in (0, 1):
        raise AssertionError(f"checkov failed ({result.returncode}):\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout)
    failed, resources, parsing_errors = [], 0, 0
    for one in report if isinstance(report, list) else [report]:
        summary = one.get("summary", one)
        resources += summary.get("resource_count", 0)
        parsing_errors += summary.get("parsing_errors", 0)
        for check in one.get("results", {}).get("failed_checks", []):
            failed.append(
                Finding(
                    check["check_id"],
                    check["check_name"],
                    check["resource"],
                    Path(check["file_path"]).name,
                )
            )
    return CheckovReport(failed, resources, parsing_errors)


# --- metrics ----------------------------------------------------------------------------------

_METRIC_LITERAL = re.compile(r"[\"'](modelops_[a-z0-9_]+)[\"']")
_METRIC_REFERENCE = re.compile(r"\b(modelops_[a-z0-9_]+)\b")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def metric_family(name: str) -> str:
    """``modelops_x_total`` / ``modelops_x_bucket`` -> ``modelops_x``."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@functools.cache
def exported_metric_families() -> frozenset[str]:
    """Every metric name the package defines (operator and serving pods)."""
    names = set()
    for path in (ROOT / "operator" / "modelops").rglob("*.py"):
        names.update(_METRIC_LITERAL.findall(path.read_text()))
    return frozenset(metric_family(n) for n in names)


def referenced_metrics(promql: str) -> set[str]:
    return set(_METRIC_REFERENCE.findall(promql))
