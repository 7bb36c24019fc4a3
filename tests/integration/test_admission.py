"""What admission refuses, and what it lets through the real server down to the children.

Names: a name the children cannot carry (a Service named ``2024-iris``, a label value over 63
characters) is refused at ``kubectl apply`` with the CRD's message; the longest names allowed
get every child created. Resources: a limit alone is also the request, as Kubernetes makes
it, so the Job and the serving Deployment built from it are accepted; a malformed quantity or
a request above its limit is refused at apply.

The operator here names an image the process kubelet does not run: the children are created
and their pods scheduled, but nothing is trained or served, which these tests do not need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.s3server import S3Server
from modelops.resources import serving
from modelops.resources.common import child_name
from support.cluster_fixtures import Kubectl, add_version, assert_refused_at_apply, sample
from support.models import train_version
from support.operator import OperatorProcess, eventually

pytestmark = pytest.mark.integration

LONGEST = 63


@pytest.fixture(scope="module")
def summary(s3: S3Server) -> dict[str, Any]:
    return train_version(s3.store(), 1)


def named(name: str) -> Callable[[dict[str, Any]], None]:
    def rename(doc: dict[str, Any]) -> None:
        doc["metadata"]["name"] = name

    rename.__name__ = f"named_{name[:12]}_{len(name)}"
    return rename


def with_resources(**resources: Any) -> Callable[[dict[str, Any]], None]:
    def set_resources(doc: dict[str, Any]) -> None:
        doc["spec"]["resources"] = resources

    set_resources.__name__ = "resources_" + "_".join(
        f"{k}_{'_'.join(f'{n}_{v}' for n, v in r.items())}" for k, r in resources.items()
    )
    return set_resources


DEPLOYMENT_NAME = (
    "metadata: Invalid value: a Deployment's name must be a DNS-1035 label of at most 63"
    " characters (lowercase letters, digits and '-', starting with a letter): its Service is"
    " named after it"
)


def dns_label(kind: str, why: str) -> str:
    return (
        f"metadata: Invalid value: a {kind}'s name must be a DNS label of at most 63 characters"
        f" (lowercase letters, digits and '-'): {why}"
    )


RUN_NAME = dns_label("TrainingRun", "its Job and pods carry it as a label value")
REQUESTS = "spec.resources: Invalid value: resource requests must not exceed limits"

INVALID = [
    ("deployment-iris.yaml", named("2024-iris"), DEPLOYMENT_NAME),
    ("deployment-iris.yaml", named("d" * (LONGEST + 1)), DEPLOYMENT_NAME),
    ("trainingrun-iris.yaml", named("t" * (LONGEST + 1)), RUN_NAME),
    ("trainingrun-iris.yaml", named("iris.logreg"), RUN_NAME),
    (
        "modelversion-iris-v1.yaml",
        named("m" * (LONGEST + 1)),
        dns_label("ModelVersion", "the serving objects of a Deployment carry it as a label value"),
    ),
    (
        "driftmonitor-iris.yaml",
        named("m" * (LONGEST + 1)),
        dns_label("DriftMonitor", "the TrainingRuns it creates carry it as a label value"),
    ),
    (
        "trainingrun-iris.yaml",
        with_resources(limits={"memory": "lots"}),
        'spec.resources.limits.memory: Invalid value: "lots": spec.resources.limits.memory in'
        " body should match",
    ),
    (
        "deployment-iris.yaml",
        with_resources(requests={"memory": "lots"}),
        'spec.resources.requests.memory: Invalid value: "lots"',
    ),
    (
        "trainingrun-iris.yaml",
        with_resources(requests={"cpu": -1}),
        "spec.resources.requests.cpu in body should be greater than or equal to 0",
    ),
    (
        "deployment-iris.yaml",
        with_resources(requests={"memory": "2Gi"}, limits={"memory": "1Gi"}),
        REQUESTS,
    ),
    (
        "trainingrun-iris.yaml",
        with_resources(requests={"cpu": 2}, limits={"cpu": "1500m"}),
        REQUESTS,
    ),
]


@pytest.mark.parametrize(
    ("name", "break_it", "message"), INVALID, ids=[f.__name__ for _, f, _ in INVALID]
)
def test_invalid_resource_is_refused_at_apply_with_its_message(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    break_it: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    doc = sample(name, namespace)
    break_it(doc)
    assert_refused_at_apply(kubectl, doc, message)


def test_quantities_as_whole_numbers_and_equal_requests_are_accepted(
    kubectl: Kubectl, namespace: str
) -> None:
    doc = sample("trainingrun-iris.yaml", namespace)
    doc["spec"]["resources"] = {
        "requests": {"cpu": 1, "memory": "1Gi"},
        "limits": {"cpu": 1, "memory": "1024Mi"},
    }
    done = kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(doc))
    assert done.returncode == 0, done.stderr


async def created(cluster: Cluster, api_version: str, kind: str, namespace: str, name: str) -> Any:
    async def probe() -> dict[str, Any] | None:
        return await cluster.get(api_version, kind, namespace, name)

    return await eventually(probe, what=f"{kind} {name}")


async def pods_of(cluster: Cluster, namespace: str, labels: dict[str, str]) -> list[Any]:
    async def probe() -> list[Any]:
        return await cluster.list("v1", "Pod", namespace, labels)

    return await eventually(probe, what=f"pods labelled {labels}")


def resources_of(obj: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]["resources"]
    return resources


async def test_a_memory_limit_alone_gives_a_job_the_server_creates(
    cluster: Cluster, namespace: str, operator_without_pods: OperatorProcess
) -> None:
    run = sample("trainingrun-iris.yaml", namespace)
    run["spec"]["resources"] = {"limits": {"memory": "512Mi"}}
    await cluster.create(run)
    job = await created(cluster, "batch/v1", "Job", namespace, "iris-logreg-train")
    assert resources_of(job) == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"memory": "512Mi"},
    }
    [pod, *_] = await pods_of(cluster, namespace, {"job-name": "iris-logreg-train"})
    assert pod["spec"]["containers"][0]["resources"] == resources_of(job)


def iris_deployment(namespace: str, name: str = "iris", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": "iris", "replicas": 1, **spec},
    }


async def test_a_memory_limit_alone_gives_a_serving_deployment_the_server_creates(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summary: dict[str, Any],
) -> None:
    await add_version(cluster, namespace, summary, 1)
    limits = {"memory": "512Mi", "cpu": "1"}
    await cluster.create(iris_deployment(namespace, resources={"limits": limits}))
    server = await created(cluster, "apps/v1", "Deployment", namespace, "iris-server")
    assert resources_of(server) == {"requests": limits, "limits": limits}
    [pod, *_] = await pods_of(cluster, namespace, {serving.DEPLOYMENT_LABEL: "iris"})
    assert pod["spec"]["containers"][0]["resources"] == resources_of(server)


async def test_every_child_of_the_longest_names_is_created(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summary: dict[str, Any],
) -> None:
    run_name = "2" + "t" * (LONGEST - 1)  # a TrainingRun's name may start with a digit
    run = sample("trainingrun-iris.yaml", namespace)
    run["metadata"]["name"] = run_name
    await cluster.create(run)
    dep_name = "d" + "9" * (LONGEST - 1)
    await add_version(cluster, namespace, summary, 1)
    await cluster.create(iris_deployment(namespace, dep_name))

    job = await created(cluster, "batch/v1", "Job", namespace, child_name(run_name, "train"))
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == run_name
    await pods_of(cluster, namespace, {"job-name": job["metadata"]["name"]})
    children = [
        ("v1", "ServiceAccount", serving.server_name(dep_name)),
        ("rbac.authorization.k8s.io/v1", "Role", serving.server_name(dep_name)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", serving.server_name(dep_name)),
        ("v1", "ConfigMap", serving.routing_name(dep_name)),
        ("apps/v1", "Deployment", serving.server_name(dep_name)),
        ("v1", "Service", dep_name),
    ]
    for api_version, kind, name in children:
        obj = await created(cluster, api_version, kind, namespace, name)
        assert obj["metadata"]["labels"][serving.DEPLOYMENT_LABEL] == dep_name
    await pods_of(cluster, namespace, {serving.DEPLOYMENT_LABEL: dep_name})


async def test_every_gateway_child_of_the_longest_names_is_created(
    cluster: Cluster,
    namespace: str,
    operator_without_pods: OperatorProcess,
    summary: dict[str, Any],
    gateway_api: None,
) -> None:
    version = await add_version(cluster, namespace, summary, 1, "v" * LONGEST)
    dep_name = "g" + "9" * (LONGEST - 1)
    gateway = {"parentRefs": [{"name": "public"}]}
    await cluster.create(iris_deployment(namespace, dep_name, routing="gateway", gateway=gateway))

    children = [
        ("v1", "ServiceAccount", serving.server_name(dep_name)),
        ("v1", "ConfigMap", serving.routing_name(dep_name, version)),
        ("apps/v1", "Deployment", serving.server_name(dep_name, version)),
        ("v1", "Service", child_name(dep_name, version)),
        ("gateway.networking.k8s.io/v1", "HTTPRoute", dep_name),
    ]
    for api_version, kind, name in children:
        obj = await created(cluster, api_version, kind, namespace, name)
        assert len(name) <= LONGEST, name
        assert obj["metadata"]["labels"][serving.DEPLOYMENT_LABEL] == dep_name
    route = await created(cluster, *children[-1][:2], namespace, dep_name)
    [backend] = route["spec"]["rules"][0]["backendRefs"]
    assert backend["name"] == child_name(dep_name, version)
    pods = await pods_of(cluster, namespace, {serving.ROLE_LABEL: version})
    assert pods[0]["metadata"]["labels"][serving.DEPLOYMENT_LABEL] == dep_name
