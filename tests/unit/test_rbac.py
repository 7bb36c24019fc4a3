"""The operator's RBAC grants exactly what its code and Kopf use, and nothing by wildcard.

NEEDS is the table of record: each row names the (apiGroup, resources, verbs) and the code
that needs them, either a call through the one Kubernetes client (``Call``: controllers/
cluster.py's methods, found in the source by the AST) or a line of our code or of Kopf's
(``Code``); a row with ``names`` is granted on those objects only (``resourceNames``). The tests
hold the table, the rendered Roles and ClusterRoles bound to the operator and the code together:

- nothing is granted that the table does not justify, and nothing in the table is missing;
- every cited call and line exists (so the table cannot outlive the code);
- every ``runtime.cluster`` call in the controllers is cited (so new code needs a new row);
- every kind a builder makes is granted the verbs of the call that writes it.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import pytest

from modelops.controllers.cluster import _PLURALS
from support.manifests import BUILDERS, KUBECTL, ROOT, Doc, rendered

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="needs kubectl (`kubectl kustomize`)")

PACKAGE = ROOT / "operator" / "modelops"
KOPF = Path(kopf.__file__).parent
SERVICE_ACCOUNT = ("modelops-system", "modelops-operator")

METHOD_VERBS = {
    "get": ("get",),
    "list": ("list",),
    "create": ("create", "get"),  # GET first; POST only when absent
    "create_new": ("create",),
    "apply": ("create", "patch"),  # server-side apply: a PATCH that creates what is absent
    "patch": ("patch",),
    "replace": ("update",),
    "delete": ("delete",),
}
"""API verbs of each controllers/cluster.py Cluster method."""
NOT_API_CALLS = {"close"}


@dataclass(frozen=True)
class Call:
    """``runtime.cluster.<method>(...)`` inside ``function`` of ``path`` (under modelops/)."""

    path: str
    function: str
    method: str


@dataclass(frozen=True)
class Code:
    """A line of ``path`` (under modelops/, or under Kopf's package when it starts with kopf/)."""

    path: str
    snippet: str


@dataclass(frozen=True)
class Need:
    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    because: tuple[Call | Code, ...]
    names: tuple[str, ...] = ()
    """``resourceNames`` of the grant; empty: every object of the resources."""


KINDS = ("trainingruns", "modelversions", "deployments", "driftmonitors")

NEEDS: tuple[Need, ...] = (
    # --- Kopf ---------------------------------------------------------------------------------
    # The resource observer watches CRDs; with clusterwide=True (MODELOPS_NAMESPACES empty) the
    # namespace observer never calls the API, so namespaces need no grant. Standalone: no
    # peering objects. Discovery (/apis) is open to every authenticated user.
    Need(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        (Code("kopf/_core/reactor/observation.py", "wait_for(references.CRDS)"),),
    ),
    # One list+watch stream per kind with handlers; patches of Kopf's annotations (progress,
    # diff-base) and of the finalizer.
    *(
        Need(
            "modelops.dev",
            (plural,),
            ("list", "watch", "patch"),
            (
                # a handler (on.*, timer) on the kind: Kopf watches it
                Code(f"controllers/{plural[:-1]}.py", f'(GROUP, VERSION, "{plural}"'),
                Code("controllers/main.py", "settings.persistence.finalizer"),
            ),
        )
        for plural in KINDS
    ),
    Need(
        "modelops.dev",
        tuple(f"{plural}/status" for plural in KINDS),
        ("patch",),
        (
            Call("controllers/status.py", "_write_status", "patch"),
            Code("kopf/_cogs/clients/patching.py", "subresource='status'"),
        ),
    ),
    # kopf.adopt() sets blockOwnerDeletion: the OwnerReferencesPermissionEnforcement admission
    # plugin then wants update on the owner's finalizers.
    Need(
        "modelops.dev",
        ("trainingruns/finalizers",),
        ("update",),
        (
            Code("controllers/trainingrun.py", "kopf.adopt(job, owner=body)"),
            Code("kopf/_kits/hierarchies.py", "block_owner_deletion: bool | None = True"),
        ),
    ),
    Need(
        "modelops.dev",
        ("deployments/finalizers",),
        ("update",),
        (Code("controllers/deployment.py", "kopf.adopt(child, owner=body)"),),
    ),
    Need(
        "modelops.dev",
        ("driftmonitors/finalizers",),
        ("update",),
        (Code("controllers/triggers.py", "kopf.adopt(run, owner=body)"),),
    ),
    Need(
        "",
        ("events",),
        ("create",),
        (
            Code("controllers/status.py", "kopf.warn(self.body, reason=reason, message=message)"),
            Code("controllers/deployment.py", "kopf.info(status.body, reason=event.reason"),
            Code("controllers/triggers.py", 'kopf.info(body, reason="RetrainStarted"'),
            Code("controllers/status.py", "kopf.warn(status.body, reason=detected"),
            Code("controllers/status.py", "kopf.info(status.body, reason=recovered"),
            Code("kopf/_cogs/structs/references.py", "EVENTS = Selector('v1', 'events')"),
        ),
    ),
    # --- TrainingRun controller ---------------------------------------------------------------
    Need(
        "batch",
        ("jobs",),
        ("create", "get"),
        (Call("controllers/trainingrun.py", "_reconcile", "create"),),
    ),
    Need(
        "modelops.dev",
        ("modelversions",),
        ("list",),
        (Call("controllers/trainingrun.py", "_register", "list"),),
    ),
    Need(
        "modelops.dev",
        ("modelversions",),
        ("create",),
        (Call("controllers/trainingrun.py", "_register", "create_new"),),
    ),
    # --- Deployment controller ----------------------------------------------------------------
    # ModelVersions and DriftMonitors are read from Kopf's indexes (controllers/watches.py), on
    # the watch streams above; an obeyed modelops.dev/action annotation is removed by a patch.
    Need(
        "modelops.dev",
        ("deployments",),
        ("patch",),
        (Call("controllers/deployment.py", "_patch_metadata", "patch"),),
    ),
    # The children of resources/serving.py children(): server-side applied every reconciliation.
    *(
        Need(
            group,
            (resource,),
            ("create", "patch"),
            (Call("controllers/deployment.py", "_apply", "apply"),),
        )
        for group, resource in (
            ("apps", "deployments"),
            ("", "services"),
            ("", "configmaps"),
            ("", "serviceaccounts"),
            ("rbac.authorization.k8s.io", "roles"),
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("gateway.networking.k8s.io", "httproutes"),
            ("gateway.networking.k8s.io", "grpcroutes"),
        )
    ),
    # Replicas handed to an autoscaler at their live value (read once per operator start).
    Need(
        "apps",
        ("deployments",),
        ("get",),
        (Code("resources/autoscaling.py", 'await cluster.get("apps/v1", "Deployment"'),),
    ),
    # The serving Deployments' readiness, from Kopf's index on their own watch stream.
    Need(
        "apps",
        ("deployments",),
        ("list", "watch"),
        (Code("controllers/watches.py", '@kopf.index("apps", "v1", "deployments"'),),
    ),
    Need(
        "",
        ("services", "configmaps"),
        ("list", "delete"),
        (
            Call("controllers/deployment.py", "_prune", "list"),
            Call("controllers/deployment.py", "_prune", "delete"),
        ),
    ),
    Need(
        "apps",
        ("deployments",),
        ("list", "delete"),
        (
            Call("controllers/deployment.py", "_prune", "list"),
            Call("controllers/deployment.py", "_prune", "delete"),
        ),
    ),
    Need(
        "gateway.networking.k8s.io",
        ("httproutes", "grpcroutes"),
        ("list", "delete"),
        (
            Call("controllers/deployment.py", "_prune", "list"),
            Call("controllers/deployment.py", "_prune", "delete"),
        ),
    ),
    # spec.autoscaling: an autoscaler per serving Deployment (resources/autoscaling.py), applied,
    # read for the replicas in status, and pruned once autoscaling is removed.
    Need(
        "autoscaling",
        ("horizontalpodautoscalers",),
        ("create", "patch"),
        (Call("controllers/deployment.py", "_apply", "apply"),),
    ),
    Need(
        "autoscaling",
        ("horizontalpodautoscalers",),
        ("list", "delete"),
        (
            Call("controllers/deployment.py", "_prune", "list"),
            Call("controllers/deployment.py", "_prune", "delete"),
        ),
    ),
    # RBAC escalation prevention: nobody may create a Role granting more than they hold, and
    # the serving pods' Role grants get/list/watch on their routing ConfigMaps.
    Need(
        "",
        ("configmaps",),
        ("get", "list", "watch"),
        (Code("resources/serving.py", '"verbs": ["get", "list", "watch"]'),),
    ),
    # --- DriftMonitor controller --------------------------------------------------------------
    # Its ModelVersion and its Deployment's status come from Kopf's indexes (watches.py).
    Need(
        "modelops.dev",
        ("trainingruns",),
        ("create", "get"),
        (Call("controllers/triggers.py", "_start", "create"),),
    ),
    # --- MLflow sync (controllers/mlflow_sync.py; loaded only with MODELOPS_MLFLOW_TRACKING_URI)
    # Its annotations (mlflow-run-id, mlflow-model-version) and its MlflowSynced condition, each
    # written after a GET of the object as stored; the TrainingRun a ModelVersion came from and
    # the ModelVersions a Deployment serves, read by name. No verb beyond the controllers' own.
    Need(
        "modelops.dev",
        ("trainingruns", "modelversions"),
        ("patch",),
        (Call("controllers/mlflow_sync.py", "_annotate", "patch"),),
    ),
    Need(
        "modelops.dev",
        ("trainingruns/status", "modelversions/status"),
        ("patch",),
        (Call("controllers/mlflow_sync.py", "_condition", "patch"),),
    ),
    Need(
        "modelops.dev",
        ("trainingruns", "modelversions"),
        ("get",),
        (Call("controllers/mlflow_sync.py", "_condition", "get"),),
    ),
    Need(
        "modelops.dev",
        ("trainingruns",),
        ("get",),
        (Call("controllers/mlflow_sync.py", "_training_run_id", "get"),),
    ),
    Need(
        "modelops.dev",
        ("modelversions",),
        ("get",),
        (Call("controllers/mlflow_sync.py", "_sync_aliases", "get"),),
    ),
    # --- Leader election (controllers/leader.py, a Role in modelops-system) --------------------
    # The Lease is read, then renewed or taken by a PUT with its resourceVersion (verb update),
    # by its name: MODELOPS_LEADER_ELECTION_ID's default.
    Need(
        "coordination.k8s.io",
        ("leases",),
        ("get", "update"),
        (
            Code("controllers/leader.py", 'await self.cluster.get(LEASE_API, "Lease"'),
            Code("controllers/leader.py", "await self.cluster.replace(lease)"),
            Code("settings.py", 'leader_election_id: str = "modelops-operator"'),
        ),
        names=("modelops-operator",),
    ),
    # The first replica creates it; a create cannot be limited by resourceNames (the POST goes
    # to the collection, so the authorizer sees no name).
    Need(
        "coordination.k8s.io",
        ("leases",),
        ("create",),
        (Code("controllers/leader.py", "await self.cluster.create_new(body)"),),
    ),
)

Triple = tuple[str, str, str, str]
"""(apiGroup, resource, verb, resource name): the name is empty for every object."""


def _triples(
    group: str, resources: tuple[str, ...] | list[str], verbs: Any, names: Any = ()
) -> set[Triple]:
    return {(group, r, v, n) for r in resources for v in verbs for n in names or ("",)}


def table() -> set[Triple]:
    return {
        t for need in NEEDS for t in _triples(need.group, need.resources, need.verbs, need.names)
    }


def _roles_of_the_operator(docs: list[Doc]) -> list[Doc]:
    """The Roles and ClusterRoles bound to the operator's ServiceAccount."""
    bound = set()
    for doc in docs:
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            subjects = {
                (s.get("namespace"), s["name"])
                for s in doc.get("subjects", [])
                if s["kind"] == "ServiceAccount"
            }
            if SERVICE_ACCOUNT in subjects:
                bound.add((doc["roleRef"]["kind"], doc["roleRef"]["name"]))
    return [d for d in docs if (d["kind"], d["metadata"]["name"]) in bound]


def granted(overlay: str = "overlays/prod") -> set[Triple]:
    found: set[Triple] = set()
    for role in _roles_of_the_operator(rendered(overlay)):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, rule
            for group in rule["apiGroups"]:
                names = rule.get("resourceNames", ())
                found |= _triples(group, rule["resources"], rule["verbs"], names)
    return found


@functools.cache
def cluster_calls() -> frozenset[Call]:
    """Every ``runtime.cluster.<method>(...)`` in the controllers, with its function."""
    calls = set()
    for path in sorted((PACKAGE / "controllers").glob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == "cluster"
                    and isinstance(node.func.value.value, ast.Name)
                    and node.func.value.value.id == "runtime"
                    and node.func.attr not in NOT_API_CALLS
                ):
                    rel = path.relative_to(PACKAGE).as_posix()
                    calls.add(Call(rel, function.name, node.func.attr))
    return frozenset(calls)


def _cited() -> set[Call | Code]:
    return {source for need in NEEDS for source in need.because}


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/prod"])
def test_no_role_uses_a_wildcard(overlay: str) -> None:
    for doc in rendered(overlay):
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc.get("rules", []):
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), (doc["metadata"]["name"], rule)


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/prod"])
def test_operator_is_granted_nothing_the_table_does_not_justify(overlay: str) -> None:
    assert granted(overlay) - table() == set()


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/prod"])
def test_operator_is_granted_everything_the_table_needs(overlay: str) -> None:
    assert table() - granted(overlay) == set()


def test_operator_holds_no_verb_that_escalates_privileges() -> None:
    risky = {"escalate", "bind", "impersonate", "approve", "deletecollection"}
    assert {t for t in granted() if t[2] in risky or t[1] in ("secrets", "pods/exec")} == set()


def test_every_cited_call_is_in_the_code() -> None:
    cited_calls = {c for c in _cited() if isinstance(c, Call)}
    assert cited_calls - cluster_calls() == set()


def test_every_cited_line_is_in_the_code() -> None:
    for code in (c for c in _cited() if isinstance(c, Code)):
        base = KOPF.parent if code.path.startswith("kopf/") else PACKAGE
        assert code.snippet in (base / code.path).read_text(), code


def test_every_kubernetes_call_of_the_controllers_is_justified_by_the_table() -> None:
    assert cluster_calls() - _cited() == set()


def test_every_row_resting_on_calls_needs_no_verb_those_calls_do_not_use() -> None:
    for need in NEEDS:
        if all(isinstance(c, Call) for c in need.because):
            used = {v for c in need.because if isinstance(c, Call) for v in METHOD_VERBS[c.method]}
            assert set(need.verbs) <= used, need


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.name)
def test_every_kind_a_builder_makes_is_granted_the_verbs_that_write_it(builder: Any) -> None:
    calls = {(c.path, c.method) for c in cluster_calls()}
    assert (builder.controller, builder.method) in calls, "the builder's writer is not in the code"
    for doc in builder.build():
        api_version = doc["apiVersion"]
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        plural = _PLURALS[doc["kind"]]
        needed = _triples(group, (plural,), METHOD_VERBS[builder.method])
        assert needed - granted() == set(), doc["kind"]


def test_operator_roles_are_bound_to_its_service_account_cluster_wide() -> None:
    docs = rendered("overlays/prod")
    names = {d["metadata"]["name"] for d in _roles_of_the_operator(docs)}
    # (and the leader-election Role, bound in the operator's own namespace only)
    assert names == {
        "modelops-operator",
        "modelops-operator-cluster",
        "modelops-operator-leader-election",
    }
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT[1]


def test_user_roles_grant_only_our_kinds_and_view_only_reads() -> None:
    docs = {d["metadata"]["name"]: d for d in rendered("base") if d["kind"] == "ClusterRole"}
    for name in ("modelops-editor", "modelops-viewer"):
        for rule in docs[name]["rules"]:
            assert rule["apiGroups"] == ["modelops.dev"]
            assert set(rule["resources"]) == set(KINDS)
    assert {v for r in docs["modelops-viewer"]["rules"] for v in r["verbs"]} == {
        "get",
        "list",
        "watch",
    }
    labels = docs["modelops-editor"]["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
