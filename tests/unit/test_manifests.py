"""The shipped manifests render, validate, and agree with the code they deploy."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops.settings import Settings
from support.manifests import (
    BUILDERS,
    KUBECTL,
    KUSTOMIZATIONS,
    MANIFESTS,
    ROOT,
    Builder,
    Doc,
    exported_metric_families,
    ident,
    metric_family,
    pod_spec,
    referenced_metrics,
    rendered,
    validate,
)

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="needs kubectl (`kubectl kustomize`)")

OVERLAYS = ("overlays/dev", "overlays/prod")
DEPLOYABLE = ("base", "minio", *OVERLAYS)


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _operator(overlay: str) -> Doc:
    return _one(rendered(overlay), "Deployment", "modelops-operator")


def _operator_config(overlay: str) -> dict[str, str]:
    """The operator's MODELOPS_* settings: its ConfigMap (hashed name) found via envFrom."""
    [source] = _operator(overlay)["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    config_map = _one(rendered(overlay), "ConfigMap", source["configMapRef"]["name"])
    config: dict[str, str] = config_map["data"]
    return config


WORKLOAD_SOURCES = (
    *DEPLOYABLE,
    *(b.name for b in BUILDERS if any(pod_spec(d) is not None for d in b.build())),
)


def _workloads(source: str) -> list[Doc]:
    """The objects with a pod template of a kustomization or of a builder."""
    builders = {b.name: b for b in BUILDERS}
    docs = builders[source].build() if source in builders else rendered(source)
    found = [d for d in docs if pod_spec(d) is not None]
    assert found, f"{source} has no workload"
    return found


# --- rendering and validation -----------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders(name: str) -> None:
    assert rendered(name), f"manifests/{name} renders nothing"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_object_validates_against_its_schema(name: str) -> None:
    for doc in rendered(name):
        validate(doc)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.name)
def test_every_object_the_operator_builds_validates_against_its_schema(builder: Builder) -> None:
    for doc in builder.build():
        validate(doc)


def test_every_kind_we_ship_or_build_is_validated_by_something() -> None:
    kinds: dict[tuple[str, str], str] = {}
    docs = [d for name in KUSTOMIZATIONS for d in rendered(name)]
    docs += [d for b in BUILDERS for d in b.build()]
    for doc in docs:
        kinds[(doc["apiVersion"], doc["kind"])] = validate(doc)
    # the three routes are all in use: schemas of Kubernetes, of our CRDs, of our own
    assert set(kinds.values()) == {"kubernetes", "crd", "schema"}


def test_base_ships_the_generated_crds_unchanged_but_for_the_prune_guard() -> None:
    shipped = {d["metadata"]["name"]: d for d in rendered("base") if d["kind"].startswith("Custom")}
    generated = {}
    for path in sorted((ROOT / "crds").glob("modelops.dev_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        generated[crd["metadata"]["name"]] = crd
    assert shipped.keys() == generated.keys()
    for name, crd in shipped.items():
        meta = crd["metadata"]
        assert meta.pop("annotations") == {"argocd.argoproj.io/sync-options": "Prune=false"}
        assert meta.pop("labels") == {"app.kubernetes.io/part-of": "modelops"}
        assert crd == generated[name], f"{name} differs from crds/"


# --- the operator's Deployment ----------------------------------------------------------------


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = _one(rendered("base"), "Namespace", "modelops-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_every_namespaced_object_lands_in_modelops_system(name: str) -> None:
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for doc in rendered(name):
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"].get("namespace") == "modelops-system", ident(doc)


@pytest.mark.parametrize("overlay", ["base", "overlays/prod"])  # dev debugs one replica
def test_operator_runs_two_replicas_one_leading_and_rolls_without_a_gap(overlay: str) -> None:
    # Leader election (controllers/leader.py): only the Lease holder reconciles, so a second
    # replica is a warm standby and a rolling update never leaves none.
    spec = _operator(overlay)["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_every_operator_setting_in_the_manifests_is_a_real_setting() -> None:
    # pydantic-settings ignores unknown MODELOPS_* variables: a typo would pass silently.
    known = {f"MODELOPS_{name.upper()}" for name in Settings.model_fields}
    for overlay in ("base", *OVERLAYS):
        config = _operator_config(overlay)
        assert set(config) <= known, f"{overlay}: unknown settings {set(config) - known}"
        Settings.model_validate({k.removeprefix("MODELOPS_").lower(): v for k, v in config.items()})


def test_operator_probes_and_ports_follow_its_settings() -> None:
    config = _operator_config("overlays/prod")
    container = _operator("overlays/prod")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "metrics": int(config["MODELOPS_METRICS_PORT"]),
        "health": int(config["MODELOPS_HEALTH_PORT"]),
    }
    # Kopf's liveness endpoint is /healthz (controllers/main.py run_operator)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_reads_store_credentials_by_reference_from_the_modelops_s3_secret() -> None:
    env = _operator("overlays/prod")["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if e["name"].startswith("AWS")}
    assert refs == {
        key: {"name": "modelops-s3", "key": key}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }


@pytest.mark.parametrize("overlay", ["base", "overlays/prod"])
def test_no_secret_ships_outside_the_dev_overlay(overlay: str) -> None:
    assert [ident(d) for d in rendered(overlay) if d["kind"] == "Secret"] == []


def test_dev_overlay_generates_the_secret_the_operator_references_for_minio() -> None:
    secret = _one(rendered("overlays/dev"), "Secret", "modelops-s3")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for env_file in (MANIFESTS / "minio").glob("*.env"):
        assert "DEVELOPMENT ONLY" in env_file.read_text(), f"{env_file.name} must say dev-only"


def test_prod_pins_every_image_to_a_release_tag() -> None:
    images = [c["image"] for d in _workloads("overlays/prod") for c in _containers(d)]
    images.append(_operator_config("overlays/prod")["MODELOPS_RUNTIME_IMAGE"])
    for image in images:
        tag = image.rsplit("@", 1)[0].rsplit(":", 1)
        assert len(tag) == 2 and re.fullmatch(r"v?[0-9]+\.[0-9]+\.[0-9]+", tag[1]), image


def test_runtime_image_setting_matches_the_operator_release() -> None:
    operator_tag = _operator("overlays/prod")["spec"]["template"]["spec"]["containers"][0]["image"]
    runtime = _operator_config("overlays/prod")["MODELOPS_RUNTIME_IMAGE"]
    assert operator_tag.rsplit(":", 1)[1] == runtime.rsplit(":", 1)[1]


def _containers(doc: Doc) -> list[dict[str, Any]]:
    spec = pod_spec(doc) or {}
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# --- every pod we ship or build ---------------------------------------------------------------


@pytest.mark.parametrize("source", WORKLOAD_SOURCES)
def test_every_pod_meets_the_restricted_pod_security_standard(source: str) -> None:
    for doc in _workloads(source):
        spec = pod_spec(doc)
        assert spec is not None
        assert spec["securityContext"]["runAsNonRoot"] is True, ident(doc)
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, ident(doc)
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), ident(doc)
        assert all("hostPath" not in v for v in spec.get("volumes", [])), ident(doc)
        for container in _containers(doc):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, ident(doc)
            assert context["capabilities"] == {"drop": ["ALL"]}, ident(doc)
            assert context.get("privileged", False) is False, ident(doc)


@pytest.mark.parametrize("source", WORKLOAD_SOURCES)
def test_every_container_has_a_read_only_root_and_memory_bounds(source: str) -> None:
    for doc in _workloads(source):
        for container in _containers(doc):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, ident(doc)
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), ident(doc)
            assert "memory" in resources["limits"], ident(doc)


# --- monitoring -------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    rule = _one(rendered("monitoring"), "PrometheusRule", "modelops")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _dashboard() -> dict[str, Any]:
    cm = _one(rendered("monitoring"), "ConfigMap", "modelops-dashboard")
    board: dict[str, Any] = json.loads(cm["data"]["modelops.json"])
    return board


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def test_alerts_the_issue_asks_for_fire_on_their_metrics() -> None:
    exprs = {r["alert"]: " ".join(r["expr"].split()) for r in _rules()}
    assert exprs["ModelOpsDriftDetected"] == "modelops_drift_detected == 1"
    assert exprs["ModelOpsRollback"] == "increase(modelops_rollbacks_total[10m]) > 0"
    assert exprs["ModelOpsTrainingFailed"] == (
        'increase(modelops_training_runs_finished_total{outcome="failed"}[1h]) > 0'
    )
    assert "modelops_reconcile_errors_total" in exprs["ModelOpsReconcileErrors"]


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in _rules():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_alerts_and_dashboard_query_only_metrics_the_code_exports() -> None:
    exprs = [r["expr"] for r in _rules()]
    exprs += [t["expr"] for p in _panels() for t in p["targets"]]
    exprs += [v["definition"] for v in _dashboard()["templating"]["list"] if "definition" in v]
    unknown = {
        name
        for expr in exprs
        for name in referenced_metrics(expr)
        if metric_family(name) not in exported_metric_families()
    }
    assert unknown == set()


def test_every_promql_expression_has_balanced_brackets() -> None:
    exprs = [r["expr"] for r in _rules()] + [t["expr"] for p in _panels() for t in p["targets"]]
    for expr in exprs:
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), expr


def test_dashboard_shows_weights_traffic_latency_and_drift() -> None:
    used = {name for p in _panels() for t in p["targets"] for name in referenced_metrics(t["expr"])}
    assert {
        "modelops_canary_weight",
        "modelops_serving_requests_total",
        "modelops_serving_errors_total",
        "modelops_serving_request_duration_seconds_bucket",
        "modelops_drift_score",
    } <= used


def test_dashboard_panels_have_unique_ids_and_query_the_datasource_variable() -> None:
    board = _dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_podmonitor_selects_the_serving_pods_the_operator_builds() -> None:
    monitor = _one(rendered("monitoring"), "PodMonitor", "modelops-servers")["spec"]
    servers = [d for b in BUILDERS for d in b.build() if d["kind"] == "Deployment"]
    assert servers
    for server in servers:
        template = server["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert monitor["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert {e["port"] for e in monitor["podMetricsEndpoints"]} <= ports
    assert monitor["namespaceSelector"] == {"any": True}


def test_servicemonitor_selects_the_operator_metrics_service() -> None:
    monitor = _one(rendered("monitoring"), "ServiceMonitor", "modelops-operator")["spec"]
    service = _one(rendered("base"), "Service", "modelops-operator-metrics")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == [
        p["name"] for p in service["spec"]["ports"]
    ]


# --- Argo CD Applications ---------------------------------------------------------------------


def test_argocd_applications_point_at_kustomizations_in_this_repository() -> None:
    for app in rendered("argocd"):
        path = ROOT / app["spec"]["source"]["path"]
        assert (path / "kustomization.yaml").exists(), app["metadata"]["name"]


# --- images -----------------------------------------------------------------------------------

DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _final_stage(path: Path) -> list[tuple[str, str]]:
    steps = _instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_both_images_have_a_dockerfile() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["operator", "runtime"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_builds_from_a_pinned_slim_python(path: Path) -> None:
    bases = [arg.split()[0] for op, arg in _instructions(path) if op == "FROM"]
    assert bases == ["python:3.11-slim-bookworm"] * 2


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_final_stage_copies_only_the_venv_and_runs_as_10001(path: Path) -> None:
    final = _final_stage(path)
    copies = [arg for op, arg in final if op == "COPY"]
    assert copies == ["--from=builder /opt/modelops /opt/modelops"]
    assert ("USER", "10001:10001") in final
    runs = " ".join(arg for op, arg in final if op == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs)


def test_operator_image_runs_the_operator() -> None:
    final = dict(_final_stage(ROOT / "images/operator/Dockerfile"))
    assert json.loads(final["ENTRYPOINT"]) == ["python", "-m", "modelops", "run"]


def test_runtime_image_has_no_fixed_entrypoint() -> None:
    # Jobs set `python -m modelops train`, serving Deployments `python -m modelops serve`.
    assert "ENTRYPOINT" not in dict(_instructions(ROOT / "images/runtime/Dockerfile"))
    builders_commands = {
        tuple(c["command"])
        for b in BUILDERS
        for d in b.build()
        if pod_spec(d) is not None
        for c in _containers(d)
    }
    assert builders_commands == {
        ("python", "-m", "modelops", "train"),
        ("python", "-m", "modelops", "serve"),
    }


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_build_context_sends_only_the_wheel_sources(path: Path) -> None:
    text = path.with_name("Dockerfile.dockerignore").read_text()
    patterns = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert patterns[:4] == ["*", "!pyproject.toml", "!README.md", "!operator/"]
