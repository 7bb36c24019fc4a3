"""Pure builders and planners: golden objects, schema validity, decisions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelops.api.common import (
    DNS_1035_PATTERN,
    NAME_PATTERN,
    ResourceRequirements,
    get_condition,
    parse_quantity,
    set_condition,
)
from modelops.api.deployment import Deployment
from modelops.api.trainingrun import TrainingRun
from modelops.resources import autoscaling, serving
from modelops.resources.common import child_name, with_defaults
from modelops.resources.modelversion import model_version, next_number
from modelops.resources.serving import Route
from modelops.resources.training import gate_failures, job_outcome, retrain_run, training_job
from modelops.serving.table import RoutingTable
from modelops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data"
SETTINGS = Settings(runtime_image="registry.example/modelops-runtime:1.0", s3_endpoint="s3:9000")


def iris_run() -> TrainingRun:
    doc = yaml.safe_load((ROOT / "manifests/samples/trainingrun-iris.yaml").read_text())
    doc["metadata"] |= {"namespace": "ml", "uid": "0b8f3c52-6c1e-4a57-9d0e-2f3c1d2e4a11"}
    return TrainingRun.model_validate(doc)


def test_training_job_matches_golden_file() -> None:
    job = training_job(iris_run(), SETTINGS)
    golden = GOLDEN / "training-job.yaml"
    assert job == yaml.safe_load(golden.read_text()), f"update {golden} if this change is wanted"


@pytest.mark.parametrize("version", ["1.28", "1.32", "1.35"])
def test_training_job_is_valid_kubernetes(version: str) -> None:
    kubernetes_validate.validate(training_job(iris_run(), SETTINGS), version, strict=True)


def test_training_job_never_carries_secret_values() -> None:
    job = training_job(iris_run(), SETTINGS)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    secret_vars = [v for v in env if v["name"].startswith("AWS_")]
    assert secret_vars and all("value" not in v and "valueFrom" in v for v in secret_vars)


def test_training_job_meets_restricted_pod_security() -> None:
    pod = training_job(iris_run(), SETTINGS)["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def test_child_names_stay_within_63_characters_and_distinct() -> None:
    a, b = child_name("x" * 70 + "a", "train"), child_name("x" * 70 + "b", "train")
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-train")
    assert child_name("iris", "train") == "iris-train"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, ("Pending", "JobPending")),
        ({"active": 1}, ("Running", "JobRunning")),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, ("Succeeded", "JobComplete")),
        (
            {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]},
            ("Failed", "DeadlineExceeded"),
        ),
        (
            {"conditions": [{"type": "Failed", "status": "False"}], "active": 1},
            ("Running", "JobRunning"),
        ),
    ],
)
def test_job_outcome_reads_job_status(status: dict[str, Any], expected: tuple[str, str]) -> None:
    assert job_outcome({"status": status}) == expected


def test_gates_pass_when_every_metric_reaches_its_bound() -> None:
    assert gate_failures({"accuracy": 0.95, "f1": 0.9}, {"accuracy": 0.9, "f1": 0.9}) == []


def test_gates_name_each_failure_and_treat_errors_as_upper_bounds() -> None:
    failures = gate_failures({"accuracy": 0.5, "mae": 3.0}, {"accuracy": 0.9, "mae": 2.0, "r2": 0})
    assert failures == ["accuracy 0.5 < 0.9", "mae 3 > 2", "r2 was not measured"]


def test_next_version_number_is_highest_plus_one() -> None:
    assert next_number([]) == 1
    assert next_number([{"spec": {"version": 3}}, {"spec": {"version": 1}}]) == 4


def test_model_version_object_carries_lineage_and_labels() -> None:
    run = iris_run()
    summary = {
        "artifact": {"uri": "s3://modelops/ml/iris/u/model.skops", "sha256": "c" * 64},
        "profile": {"uri": "s3://modelops/ml/iris/u/profile.json", "sha256": "d" * 64},
        "signature": {"task": "classification", "inputs": [{"name": "a", "datatype": "FP64"}]},
        "metrics": {"accuracy": 0.97},
        "dataset": {"uri": "s3://modelops/datasets/iris.csv", "sha256": "e" * 64},
    }
    mv = model_version(run, summary, 3, "img:1")
    assert mv["metadata"]["name"] == "iris-v3"
    assert mv["metadata"]["labels"]["modelops.dev/training-run-uid"] == run.metadata["uid"]
    assert mv["spec"]["lineage"]["datasetSha256"] == "e" * 64
    assert mv["spec"]["lineage"]["params"] == {"max_iter": 500, "C": 1.0}


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    conds, changed = set_condition([], "Ready", "False", "JobPending", "", 1)
    assert changed
    first = get_condition(conds, "Ready")
    assert first is not None
    first["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    conds, changed = set_condition(conds, "Ready", "False", "JobRunning", "running", 1)
    same = get_condition(conds, "Ready")
    assert not changed and same is not None
    assert same["lastTransitionTime"] == "2020-01-01T00:00:00Z" and same["reason"] == "JobRunning"
    conds, changed = set_condition(conds, "Ready", "True", "Succeeded", "", 2)
    done = get_condition(conds, "Ready")
    assert changed and done is not None and done["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert done["observedGeneration"] == 2


def test_a_limit_alone_is_also_the_request_as_kubernetes_makes_it() -> None:
    resources = with_defaults({"limits": {"memory": "512Mi"}}, cpu="500m", memory="1Gi")
    assert resources == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"memory": "512Mi"},
    }


def test_defaults_fill_requests_and_limit_memory_at_its_request() -> None:
    assert with_defaults({}, cpu="500m", memory="1Gi") == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "1Gi"},
    }
    given = {"requests": {"memory": "2Gi"}, "limits": {"cpu": "2"}}
    assert with_defaults(given, cpu="500m", memory="1Gi") == {
        "requests": {"cpu": "2", "memory": "2Gi"},
        "limits": {"memory": "2Gi", "cpu": "2"},
    }


def _requests_within_limits(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for name, limit in resources["limits"].items():
        assert parse_quantity(resources["requests"][name]) <= parse_quantity(limit), name


def test_training_job_with_only_a_memory_limit_requests_no_more() -> None:
    run = iris_run()
    run.spec.resources = ResourceRequirements.model_validate({"limits": {"memory": "512Mi"}})
    job = training_job(run, SETTINGS)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["memory"] == "512Mi"
    _requests_within_limits(container)
    kubernetes_validate.validate(job, "1.35", strict=True)


def iris_deployment(name: str = "iris", **spec: Any) -> Deployment:
    doc = yaml.safe_load((ROOT / "manifests/samples/deployment-iris.yaml").read_text())
    doc["metadata"] |= {"name": name, "namespace": "ml", "uid": "4c1e"}
    doc["spec"] |= spec
    return Deployment.model_validate(doc)


def iris_routes(*names: str) -> list[Route]:
    mv = yaml.safe_load((ROOT / "manifests/samples/modelversion-iris-v1.yaml").read_text())
    return [Route(n, "stable" if i == 0 else "canary", 50, mv["spec"]) for i, n in enumerate(names)]


def test_server_deployment_with_only_a_memory_limit_requests_no_more() -> None:
    dep = iris_deployment(resources={"limits": {"memory": "512Mi", "cpu": "1"}})
    server = serving.server_deployment(dep, SETTINGS, "iris-server", "iris-routing")
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "512Mi"},
        "limits": {"memory": "512Mi", "cpu": "1"},
    }
    kubernetes_validate.validate(server, "1.35", strict=True)


DNS_LABEL = re.compile(NAME_PATTERN)
DNS_1035 = re.compile(DNS_1035_PATTERN)


def _label_values(obj: dict[str, Any]) -> list[str]:
    meta = obj["metadata"]
    template = obj.get("spec", {}).get("template", {}).get("metadata", {})
    selector = obj.get("spec", {}).get("selector", {})
    return [
        *meta.get("labels", {}).values(),
        *template.get("labels", {}).values(),
        *selector.get("matchLabels", selector).values(),
    ]


def _assert_names_fit(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.fullmatch(name), (obj["kind"], name)
        if obj["kind"] == "Service":
            assert DNS_1035.fullmatch(name), name
        for value in _label_values(obj):
            assert len(value) <= 63, (obj["kind"], name, value)


@pytest.mark.parametrize("routing", ["model", "gateway"])
def test_every_child_of_the_longest_deployment_name_is_a_valid_name(routing: str) -> None:
    longest = "d" + "9" * 62
    version = "v" * 63  # the longest ModelVersion name
    dep = iris_deployment(longest, routing=routing, gateway={"parentRefs": [{"name": "public"}]})
    objects = serving.children(dep, iris_routes(version, "iris-v2"), SETTINGS)
    _assert_names_fit(objects)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert len(names) == len(objects), "two children share a name"
    if routing == "model":
        assert ("Service", longest) in names


def test_every_child_of_the_longest_training_run_name_is_a_valid_name() -> None:
    run = iris_run()
    run.metadata["name"] = "2" + "t" * 62
    job = training_job(run, SETTINGS)
    _assert_names_fit([job])
    assert job["metadata"]["name"].endswith("-train")


@pytest.mark.parametrize("owner", [1, 20, 55, 56, 63])
@pytest.mark.parametrize("suffix", [1, 8, 52, 53, 63, 70])
def test_child_names_always_fit_start_as_their_owner_and_end_as_their_suffix(
    owner: int, suffix: int
) -> None:
    name = child_name("o" * (owner - 1) + "x", "y" + "s" * (suffix - 1))
    assert len(name) <= 63 and DNS_LABEL.fullmatch(name)
    assert name.startswith("o" if owner > 1 else "x") and name.endswith("s" if suffix > 1 else "y")
    other = child_name("o" * (owner - 1) + "z", "y" + "s" * (suffix - 1))
    assert other != name


def test_the_retrain_run_of_the_longest_monitor_name_is_a_valid_training_run_name() -> None:
    monitor = "2" + "m" * 62
    run = retrain_run(monitor, "ml", 12, {"model": "iris"})
    name = run["metadata"]["name"]
    assert len(name) <= 63 and DNS_LABEL.fullmatch(name) and name.endswith("-retrain-12")
    assert run["metadata"]["labels"]["modelops.dev/drift-monitor"] == monitor


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


AUTOSCALING = {"minReplicas": 2, "maxReplicas": 4, "targetCPUUtilization": 60}


def test_without_autoscaling_the_children_are_left_as_they_are() -> None:
    dep = iris_deployment()
    objects = serving.children(dep, iris_routes("iris-v1"), SETTINGS)
    assert autoscaling.autoscaled(dep, objects) == objects
    assert _by_kind(objects, "Deployment")[0]["spec"]["replicas"] == 2


def test_autoscaling_leaves_replicas_to_an_autoscaler_of_the_server() -> None:
    dep = iris_deployment(autoscaling=AUTOSCALING)
    objects = autoscaling.autoscaled(
        dep, serving.children(dep, iris_routes("iris-v1", "iris-v2"), SETTINGS)
    )
    [server] = _by_kind(objects, "Deployment")
    [hpa] = _by_kind(objects, "HorizontalPodAutoscaler")
    assert "replicas" not in server["spec"]
    assert hpa == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": "iris-server",
            "namespace": "ml",
            "labels": server["metadata"]["labels"],
        },
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "iris-server",
            },
            "minReplicas": 2,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 60},
                    },
                }
            ],
        },
    }
    for version in ("1.30", "1.35"):
        kubernetes_validate.validate(hpa, version, strict=True)
        kubernetes_validate.validate(server, version, strict=True)


def test_gateway_routing_autoscales_each_version_on_its_own() -> None:
    dep = iris_deployment(
        autoscaling=AUTOSCALING, routing="gateway", gateway={"parentRefs": [{"name": "public"}]}
    )
    objects = autoscaling.autoscaled(
        dep, serving.children(dep, iris_routes("iris-v1", "iris-v2"), SETTINGS)
    )
    servers = {d["metadata"]["name"] for d in _by_kind(objects, "Deployment")}
    targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in _by_kind(objects, "HorizontalPodAutoscaler")
    }
    assert servers == targets == {"iris-iris-v1-server", "iris-iris-v2-server"}
    assert all("replicas" not in d["spec"] for d in _by_kind(objects, "Deployment"))


@pytest.mark.parametrize(
    "resources", [{}, {"requests": {"memory": "1Gi"}}, {"limits": {"memory": "1Gi"}}]
)
def test_every_autoscaled_container_requests_cpu_as_a_utilization_target_needs(
    resources: dict[str, Any],
) -> None:
    dep = iris_deployment(autoscaling=AUTOSCALING, resources=resources)
    objects = autoscaling.autoscaled(dep, serving.children(dep, iris_routes("iris-v1"), SETTINGS))
    for server in _by_kind(objects, "Deployment"):
        for container in server["spec"]["template"]["spec"]["containers"]:
            assert parse_quantity(container["resources"]["requests"]["cpu"]) > 0


def test_the_autoscaler_of_the_longest_deployment_name_is_named_as_its_target() -> None:
    dep = iris_deployment("d" + "9" * 62, autoscaling=AUTOSCALING)
    objects = autoscaling.autoscaled(dep, serving.children(dep, iris_routes("v" * 63), SETTINGS))
    _assert_names_fit(objects)
    [hpa] = _by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["metadata"]["name"] == hpa["spec"]["scaleTargetRef"]["name"]


def test_gateway_routing_routes_grpc_with_the_http_weights() -> None:
    dep = iris_deployment(routing="gateway", gateway={"parentRefs": [{"name": "public"}]})
    objects = serving.children(dep, iris_routes("iris-v1", "iris-v2"), SETTINGS)
    [http] = _by_kind(objects, "HTTPRoute")
    [grpc] = _by_kind(objects, "GRPCRoute")
    assert grpc["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert grpc["spec"]["parentRefs"] == http["spec"]["parentRefs"]
    [rule] = grpc["spec"]["rules"]
    assert rule["matches"] == [
        {"method": {"type": "Exact", "service": "inference.GRPCInferenceService"}}
    ]
    weights = [(b["name"], b["weight"]) for b in http["spec"]["rules"][0]["backendRefs"]]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == weights
    assert {b["port"] for b in rule["backendRefs"]} == {serving.GRPC_PORT}


@pytest.mark.parametrize("routing", ["model", "gateway"])
def test_servers_and_services_expose_a_grpc_port_over_h2c(routing: str) -> None:
    dep = iris_deployment(routing=routing, gateway={"parentRefs": [{"name": "public"}]})
    objects = serving.children(dep, iris_routes("iris-v1", "iris-v2"), SETTINGS)
    for server in _by_kind(objects, "Deployment"):
        [container] = server["spec"]["template"]["spec"]["containers"]
        assert {"name": "grpc", "containerPort": serving.GRPC_PORT, "protocol": "TCP"} in container[
            "ports"
        ]
        assert container["args"][-2:] == ["--grpc-port", str(serving.GRPC_PORT)]
    for svc in _by_kind(objects, "Service"):
        [grpc] = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc["targetPort"] == "grpc" and grpc["appProtocol"] == "kubernetes.io/h2c"
    if routing == "model":
        assert not _by_kind(objects, "GRPCRoute")


def routing_json(objects: list[dict[str, Any]], name: str = "iris-routing") -> dict[str, Any]:
    [cm] = [o for o in _by_kind(objects, "ConfigMap") if o["metadata"]["name"] == name]
    table: dict[str, Any] = json.loads(cm["data"][serving.ROUTING_KEY])
    return table


def weighted(stable: int, canary: int | None = None) -> list[Route]:
    mv = yaml.safe_load((ROOT / "manifests/samples/modelversion-iris-v1.yaml").read_text())
    routes = [Route("iris-v1", "stable", stable, mv["spec"])]
    if canary is not None:
        routes.append(Route("iris-v2", "canary", canary, mv["spec"]))
    return routes


def test_routing_table_of_a_plain_canary_says_mode_canary_without_sticky_header() -> None:
    table = routing_json(serving.children(iris_deployment(), weighted(90, 10), SETTINGS))
    assert (table["mode"], table["stickyHeader"]) == ("canary", None)
    assert [(v["name"], v["weight"]) for v in table["versions"]] == [
        ("iris-v1", 90),
        ("iris-v2", 10),
    ]


def test_routing_table_of_a_shadow_gives_the_canary_weight_zero() -> None:
    dep = iris_deployment(canary={"version": "latest", "mode": "shadow"})
    table = routing_json(serving.children(dep, weighted(100, 0), SETTINGS))
    assert table["mode"] == "shadow"
    assert [(v["role"], v["weight"]) for v in table["versions"]] == [
        ("stable", 100),
        ("canary", 0),
    ]


def test_routing_table_of_an_abtest_carries_its_weights_and_sticky_header() -> None:
    canary = {"version": "latest", "mode": "abtest", "analysis": {},
              "abtest": {"weight": 30, "stickyHeader": "x-user-id"}}  # fmt: skip
    table = routing_json(
        serving.children(iris_deployment(canary=canary), weighted(70, 30), SETTINGS)
    )
    assert (table["mode"], table["stickyHeader"]) == ("abtest", "x-user-id")
    assert [v["weight"] for v in table["versions"]] == [70, 30]


def test_routing_table_without_a_canary_in_it_is_plain_whatever_the_mode() -> None:
    """After a rollback or a promotion only stable is routed: nothing to mirror or stick to."""
    dep = iris_deployment(canary={"version": "latest", "mode": "shadow"})
    table = routing_json(serving.children(dep, weighted(100), SETTINGS))
    assert (table["mode"], table["stickyHeader"]) == ("canary", None)


def test_per_version_tables_of_gateway_routing_are_plain() -> None:
    """The Gateway splits between the versions' pods; each pod serves one version."""
    canary = {"version": "latest", "mode": "abtest", "analysis": {}}
    dep = iris_deployment(canary=canary, routing="gateway",
                          gateway={"parentRefs": [{"name": "public"}]})  # fmt: skip
    objects = serving.children(dep, weighted(50, 50), SETTINGS)
    for version in ("iris-v1", "iris-v2"):
        table = routing_json(objects, serving.routing_name("iris", version))
        assert table["mode"] == "canary" and len(table["versions"]) == 1


@pytest.mark.parametrize(
    ("canary", "routes"),
    [
        ({"version": "latest", "mode": "shadow"}, weighted(100, 0)),
        ({"version": "latest", "mode": "abtest", "analysis": {},
          "abtest": {"weight": 30, "stickyHeader": "X-User-Id"}}, weighted(70, 30)),
    ],
    ids=["shadow", "abtest"],
)  # fmt: skip
def test_routing_table_reads_as_the_serving_pods_read_it(
    canary: dict[str, Any], routes: list[Route]
) -> None:
    table = routing_json(serving.children(iris_deployment(canary=canary), routes, SETTINGS))
    parsed = RoutingTable.model_validate(table)
    assert (parsed.mode, parsed.sticky_header) == (table["mode"], table["stickyHeader"])
