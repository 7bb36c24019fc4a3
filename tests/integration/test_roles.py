"""The shipped user roles and the approval policy on the real control plane (issue 14, part 5).

Each of ``modelops-viewer``, ``-editor`` and ``-approver`` is bound with a RoleBinding to a
ServiceAccount of the test's namespace; the tests log in as those accounts with kubectl and
check, with ``kubectl auth can-i`` (the API server's authorizer) and with real requests, that
each can do exactly its verbs, and that the ValidatingAdmissionPolicy ``modelops-approvals``
(manifests/base/approval-policy.yaml, applied with the rest of the local overlay) refuses an
approval from anyone without the ``approve`` verb. The last tests drive a canary that requires
approval with the real operator (pods simulated, as in test_deployment.py) and approve it with
``kubectl modelops approve`` as the approver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops import API_VERSION
from modelops.controllers.cluster import Cluster
from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server
from modelops.storage import Location
from support.cluster_fixtures import Kubectl, add_version
from support.models import train_version
from support.operator import OperatorProcess, condition, eventually

pytestmark = pytest.mark.integration
TIMEOUT = 60.0
ROLES = ("viewer", "editor", "approver")
KINDS = ("trainingruns", "modelversions", "deployments", "driftmonitors")
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
         "approve")  # fmt: skip
READ = frozenset({"get", "list", "watch"})
WRITE = frozenset({"create", "update", "patch", "delete", "deletecollection"})
EXPECTED: dict[str, dict[str, frozenset[str]]] = {
    "viewer": dict.fromkeys(KINDS, READ),
    "editor": dict.fromkeys(KINDS, READ | WRITE),
    "approver": dict.fromkeys(KINDS, READ) | {"deployments": READ | {"patch", "approve"}},
}
"""Exactly the verbs each role has on each modelops kind in the namespace."""
APPROVE_REFUSED = "modelops.dev/action=approve needs the approve verb on deployments.modelops.dev"
STEPS = [{"weight": 10, "pause": "1s"}, {"weight": 50, "pause": "1s"}]


@dataclass(frozen=True)
class User:
    """A ServiceAccount bound to one ClusterRole in the test's namespace, as kubectl runs it."""

    name: str
    namespace: str
    kubeconfig: Path
    cache: Path

    @property
    def username(self) -> str:
        """What the API server calls it (``request.userInfo.username``)."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        binary = shutil.which("kubectl")
        assert binary is not None
        command = [binary, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache),
                   "-n", self.namespace, *args]  # fmt: skip
        return subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )

    def can(self, verb: str, resource: str, *flags: str) -> bool:
        """``kubectl auth can-i``: exit 0 yes, 1 no, anything else an error."""
        done = self.kubectl("auth", "can-i", verb, resource, *flags)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode == 0


async def bind(
    admin: Cluster, local_cluster: LocalCluster, namespace: str, tmp: Path, name: str, role: str
) -> User:
    """A ServiceAccount ``name`` bound to ClusterRole ``role`` in ``namespace`` by a
    RoleBinding, and its kubeconfig."""
    meta = {"name": name, "namespace": namespace}
    await admin.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    await admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }
    )  # fmt: skip
    path = local_cluster.control_plane.write_service_account_kubeconfig(
        tmp / f"{name}.kubeconfig", namespace, name
    )
    return User(name, namespace, path, tmp / f"{name}-cache")


@pytest.fixture
async def users(
    admin: Cluster, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> dict[str, User]:
    """One user per shipped role: ``viewer`` holds ``modelops-viewer``, and so on."""
    return {
        role: await bind(admin, local_cluster, namespace, tmp_path, role, f"modelops-{role}")
        for role in ROLES
    }


def deployment(namespace: str, *, require_approval: bool = False) -> dict[str, Any]:
    canary = {"version": "latest", "steps": STEPS, "requireApproval": require_approval}
    return {
        "apiVersion": API_VERSION,
        "kind": "Deployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {"model": "iris", "replicas": 1, "canary": canary},
    }


def annotate(user: User, *pairs: str) -> subprocess.CompletedProcess[str]:
    return user.kubectl("annotate", "--overwrite", "deployments.modelops.dev/iris", *pairs)


def merge_patch(user: User, patch: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return user.kubectl(
        "patch", "deployments.modelops.dev/iris", "--type=merge", "-p", json.dumps(patch)
    )


async def annotations_of(admin: Cluster, namespace: str) -> dict[str, str]:
    dep = await admin.get(API_VERSION, "Deployment", namespace, "iris")
    assert dep is not None
    found: dict[str, str] = dep["metadata"].get("annotations") or {}
    return found


# -- what each role may do: the authorizer ---------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_can_do_exactly_its_verbs(role: str, users: dict[str, User]) -> None:
    user = users[role]
    allowed = {
        kind: frozenset(v for v in VERBS if user.can(v, f"{kind}.modelops.dev")) for kind in KINDS
    }
    assert allowed == EXPECTED[role]


@pytest.mark.parametrize("role", ROLES)
async def test_no_role_grants_anything_outside_modelops(role: str, users: dict[str, User]) -> None:
    user = users[role]
    for probe in [("get", "secrets"), ("list", "pods"), ("create", "deployments.apps"),
                  ("patch", "deployments.modelops.dev", "--subresource=status")]:  # fmt: skip
        assert not user.can(*probe), (role, probe)


async def test_built_in_roles_pick_up_the_modelops_roles_by_aggregation(
    admin: Cluster, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """view reads, edit also writes but cannot approve, admin can approve."""
    got = {
        role: await bind(admin, local_cluster, namespace, tmp_path, f"built-in-{role}", role)
        for role in ("view", "edit", "admin")
    }
    resource = "deployments.modelops.dev"
    verbs = ("get", "patch", "approve")

    async def aggregated() -> dict[str, tuple[bool, ...]] | None:
        found = {role: tuple(u.can(v, resource) for v in verbs) for role, u in got.items()}
        return found if found["admin"] == (True, True, True) else None

    found = await eventually(aggregated, what="the aggregated admin role", timeout=TIMEOUT)
    assert found == {
        "view": (True, False, False),
        "edit": (True, True, False),
        "admin": (True, True, True),
    }


# -- what each role may do: real requests, and the admission policy -------------------------


async def test_viewer_reads_deployments_but_changes_nothing(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    await admin.create(deployment(namespace))
    viewer = users["viewer"]
    got = viewer.kubectl("get", "deployments.modelops.dev", "-o", "name")
    assert (got.returncode, got.stdout) == (0, "deployment.modelops.dev/iris\n"), got.stderr
    for refused in (annotate(viewer, "modelops.dev/action=abort"),
                    merge_patch(viewer, {"spec": {"replicas": 2}}),
                    viewer.kubectl("delete", "deployments.modelops.dev/iris")):  # fmt: skip
        assert refused.returncode != 0
        assert "is forbidden: User" in refused.stderr, refused.stderr
    assert "modelops.dev/action" not in await annotations_of(admin, namespace)


async def test_editor_creates_changes_and_deletes_deployments(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    editor = users["editor"]
    done = editor.kubectl("create", "-f", "-", input=yaml.safe_dump(deployment(namespace)))
    assert done.returncode == 0, done.stderr
    done = merge_patch(editor, {"spec": {"replicas": 2}})
    assert done.returncode == 0, done.stderr
    dep = await admin.get(API_VERSION, "Deployment", namespace, "iris")
    assert dep is not None and dep["spec"]["replicas"] == 2
    done = editor.kubectl("delete", "deployments.modelops.dev/iris", "--wait=false")
    assert done.returncode == 0, done.stderr


async def test_editor_cannot_approve_refused_by_the_admission_policy(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    await admin.create(deployment(namespace, require_approval=True))
    editor = users["editor"]
    done = annotate(editor, "modelops.dev/action=approve")
    assert done.returncode != 0
    assert "(Forbidden)" in done.stderr, done.stderr
    assert "ValidatingAdmissionPolicy 'modelops-approvals'" in done.stderr
    assert APPROVE_REFUSED in done.stderr
    assert f"{editor.username} does not have it" in done.stderr
    assert "modelops.dev/action" not in await annotations_of(admin, namespace)


async def test_editor_cannot_name_an_approver(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    await admin.create(deployment(namespace))
    editor = users["editor"]
    done = annotate(editor, f"modelops.dev/approved-by={editor.username}")
    assert done.returncode != 0
    assert "modelops.dev/approved-by may only be set to your own user name" in done.stderr


@pytest.mark.parametrize(
    "patch,message",
    [
        ({"spec": {"canary": {"requireApproval": False}}}, "switching off spec.canary"),
        ({"spec": {"canary": None}}, "switching off spec.canary"),
        ({"spec": {"stable": {"version": "iris-v2"}}}, "changing spec.model or spec.stable"),
    ],
    ids=["requireApproval-off", "canary-removed", "stable-pinned"],
)
async def test_editor_cannot_route_around_a_required_approval(
    admin: Cluster, namespace: str, users: dict[str, User], patch: dict[str, Any], message: str
) -> None:
    await admin.create(deployment(namespace, require_approval=True))
    done = merge_patch(users["editor"], patch)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


async def test_editor_still_changes_the_rest_of_a_deployment_requiring_approval(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    await admin.create(deployment(namespace, require_approval=True))
    editor = users["editor"]
    assert merge_patch(editor, {"spec": {"replicas": 3}}).returncode == 0
    done = annotate(editor, "modelops.dev/action=abort")
    assert done.returncode == 0, done.stderr


async def test_approver_approves_in_their_own_name(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    await admin.create(deployment(namespace, require_approval=True))
    approver = users["approver"]
    done = annotate(approver, "modelops.dev/action=approve",
                    f"modelops.dev/approved-by={approver.username}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = await annotations_of(admin, namespace)
    assert found["modelops.dev/action"] == "approve"
    assert found["modelops.dev/approved-by"] == approver.username


async def test_approver_cannot_approve_in_someone_elses_name(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    await admin.create(deployment(namespace, require_approval=True))
    done = annotate(users["approver"], "modelops.dev/action=approve",
                    "modelops.dev/approved-by=alice")  # fmt: skip
    assert done.returncode != 0
    assert "modelops.dev/approved-by may only be set to your own user name" in done.stderr
    assert "modelops.dev/action" not in await annotations_of(admin, namespace)


async def test_approver_creates_and_deletes_nothing(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    approver = users["approver"]
    done = approver.kubectl("create", "-f", "-", input=yaml.safe_dump(deployment(namespace)))
    assert done.returncode != 0 and "is forbidden: User" in done.stderr, done.stderr
    await admin.create(deployment(namespace))
    done = approver.kubectl("delete", "deployments.modelops.dev/iris")
    assert done.returncode != 0 and "is forbidden: User" in done.stderr, done.stderr


# -- a canary that requires approval, with the real operator ---------------------------------


@pytest.fixture(scope="module")
def summaries(s3: S3Server) -> dict[int, dict[str, Any]]:
    store = s3.store()
    return {n: train_version(store, n) for n in (1, 2)}


def report_pods_loaded(s3: S3Server, namespace: str, *versions: str) -> None:
    """What a serving pod writes once it holds and has verified the versions."""
    report = {"pod": "iris-server-0", "time": time.time(), "versions": sorted(versions),
              "loaded": list(versions), "failed": {}}  # fmt: skip
    key = f"{namespace}/serving/iris/pods/iris-server-0.json"
    s3.store().put(Location("modelops", key), json.dumps(report).encode())


async def wait_status(
    cluster: Cluster, namespace: str, what: str, **expected: Any
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        dep = await cluster.get(API_VERSION, "Deployment", namespace, "iris")
        status = (dep or {}).get("status", {})
        return dep if all(status.get(k) == v for k, v in expected.items()) else None

    return await eventually(probe, what=what, timeout=TIMEOUT)


async def awaiting_approval(
    admin: Cluster, namespace: str, s3: S3Server, summaries: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Stable iris-v1, then iris-v2 walked through both steps to await approval at 50%."""
    await add_version(admin, namespace, summaries[1], 1)
    await admin.create(deployment(namespace, require_approval=True))
    await wait_status(admin, namespace, "stable iris-v1", stableVersion="iris-v1")
    await add_version(admin, namespace, summaries[2], 2)
    await wait_status(admin, namespace, "canary loading", canaryVersion="iris-v2", canaryWeight=0)
    report_pods_loaded(s3, namespace, "iris-v1", "iris-v2")

    async def waiting() -> dict[str, Any] | None:
        dep = await admin.get(API_VERSION, "Deployment", namespace, "iris")
        return dep if condition(dep, "Progressing").get("reason") == "AwaitingApproval" else None

    return await eventually(waiting, what="AwaitingApproval", timeout=TIMEOUT)


async def events(admin: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    """Events of the modelops Deployment iris with this reason."""
    return [
        e
        for e in await admin.list("v1", "Event", namespace, {})
        if e.get("reason") == reason
        and e.get("involvedObject", {}).get("apiVersion") == API_VERSION
        and e.get("involvedObject", {}).get("name") == "iris"
    ]


def plugin(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl modelops <args>`` as ``user`` runs it (the venv's bin first on PATH)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(user.kubeconfig),
    }
    return subprocess.run(
        ["kubectl", "modelops", *args, "-n", user.namespace],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


async def test_plugin_approve_by_an_editor_is_refused_with_the_policys_reason(
    admin: Cluster, namespace: str, users: dict[str, User]
) -> None:
    await admin.create(deployment(namespace, require_approval=True))
    in_flight = {"status": {"phase": "Progressing", "canaryVersion": "iris-v2"}}
    await admin.patch(API_VERSION, "Deployment", namespace, "iris", in_flight, subresource="status")
    done = plugin(users["editor"], "approve", "iris")
    assert done.returncode == 1
    refused = 'error: forbidden: deployments.modelops.dev "iris" is forbidden: '
    assert done.stderr.startswith(refused + "ValidatingAdmissionPolicy 'modelops-approvals'")
    assert APPROVE_REFUSED in done.stderr
    assert "modelops.dev/action" not in await annotations_of(admin, namespace)


async def test_canary_requiring_approval_waits_at_its_last_step_until_approved(
    admin: Cluster,
    namespace: str,
    users: dict[str, User],
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
) -> None:
    dep = await awaiting_approval(admin, namespace, s3, summaries)
    status = dep["status"]
    assert (status["phase"], status["canaryWeight"], status["step"]) == ("Progressing", 50, 1)
    assert condition(dep, "Progressing")["status"] == "True"
    assert "kubectl modelops approve" in condition(dep, "Progressing")["message"]
    assert [h["event"] for h in status["history"]][-1] == "CanaryStep"
    assert len(await eventually(lambda: events(admin, namespace, "AwaitingApproval"),
                                what="an AwaitingApproval Event")) == 1  # fmt: skip


async def test_approval_by_the_approver_promotes_and_is_recorded(
    admin: Cluster,
    namespace: str,
    users: dict[str, User],
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
) -> None:
    await awaiting_approval(admin, namespace, s3, summaries)
    approver = users["approver"]
    done = plugin(approver, "approve", "iris")
    assert done.returncode == 0, done.stderr
    assert f"modelops.dev/approved-by={approver.username}" in done.stdout
    dep = await wait_status(admin, namespace, "promoted", phase="Promoted")
    assert dep["status"]["stableVersion"] == "iris-v2"
    last = dep["status"]["history"][-1]
    assert (last["event"], last["version"], last["approvedBy"]) == (
        "Approved",
        "iris-v2",
        approver.username,
    )
    assert last["message"].startswith(
        f"iris-v2 promoted to stable: approved by {approver.username}"
    )
    [event] = await eventually(lambda: events(admin, namespace, "Approved"), what="Event Approved")
    assert approver.username in event["message"]

    async def consumed() -> bool:
        found = await annotations_of(admin, namespace)
        return not {"modelops.dev/action", "modelops.dev/approved-by"} & set(found)

    await eventually(consumed, what="both annotations removed")


async def test_promote_on_a_canary_requiring_approval_is_ignored(
    admin: Cluster,
    namespace: str,
    users: dict[str, User],
    operator_without_pods: OperatorProcess,
    s3: S3Server,
    summaries: dict[int, dict[str, Any]],
) -> None:
    await awaiting_approval(admin, namespace, s3, summaries)
    done = annotate(users["editor"], "modelops.dev/action=promote")
    assert done.returncode == 0, done.stderr
    [event] = await eventually(
        lambda: events(admin, namespace, "ActionIgnored"), what="Event ActionIgnored"
    )
    assert "spec.canary.requireApproval is set" in event["message"]

    async def consumed() -> bool:
        return "modelops.dev/action" not in await annotations_of(admin, namespace)

    await eventually(consumed, what="the promote annotation removed")
    dep = await admin.get(API_VERSION, "Deployment", namespace, "iris")
    assert (dep or {})["status"]["phase"] == "Progressing"
    assert condition(dep, "Progressing")["reason"] == "AwaitingApproval"


async def test_approval_policy_is_shipped_by_the_local_overlay(kubectl: Kubectl) -> None:
    """What the tests above rely on is the manifests' doing, not the test's."""
    policy = kubectl("get", "validatingadmissionpolicy", "modelops-approvals", "-o", "json")
    assert policy.returncode == 0, policy.stderr
    doc = json.loads(policy.stdout)
    assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "modelops"
    binding = kubectl("get", "validatingadmissionpolicybinding", "modelops-approvals", "-o", "json")
    assert json.loads(binding.stdout)["spec"]["validationActions"] == ["Deny"]
