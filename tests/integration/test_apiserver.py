"""The in-process Kubernetes API server: the behaviours Kopf, our controllers and kubectl need."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf
import pytest

from modelops.local.apiserver import ApiServer

pytestmark = pytest.mark.integration

GROUP = "test.modelops.dev"
WIDGETS = f"/apis/{GROUP}/v1/namespaces/default/widgets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "shortNames": ["wd"],
            "categories": ["modelops"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}
MERGE = "application/merge-patch+json"


class Client:
    """A bare HTTP client: the tests look at status codes and raw bodies, as clients see them."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type}
        async with self.session.request(method, path, data=data, headers=headers) as rsp:
            return rsp.status, await rsp.json(content_type=None)

    async def ok(self, method: str, path: str, body: Any = None, content_type: str = MERGE) -> Any:
        status, obj = await self.call(method, path, body, content_type)
        assert status in (200, 201), obj
        return obj

    async def create(self, path: str, name: str, **fields: Any) -> Any:
        metadata = {"name": name, **fields.pop("metadata", {})}
        return await self.ok("POST", path, {"metadata": metadata, **fields}, "application/json")

    async def watch(self, path: str, stop_at: str, **params: str) -> list[dict[str, Any]]:
        """The events of a watch up to the first of type ``stop_at`` (or to the server's end)."""
        events: list[dict[str, Any]] = []
        query = {"watch": "true", "timeoutSeconds": "5", **params}
        async with self.session.get(path, params=query) as rsp:
            assert (rsp.status, rsp.content_type) == (200, "application/json")
            async for line in rsp.content:
                events.append(json.loads(line))
                if events[-1]["type"] == stop_at:
                    break
        return events


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    async with ApiServer(crds=[WIDGET_CRD]) as server:
        yield server


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(api.url) as session:
        yield Client(session)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Poll until the check passes: the operator works in its own thread, at its own pace."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def test_create_sets_server_owned_metadata(client: Client) -> None:
    first = await client.create(WIDGETS, "w1", spec={"size": 1})
    second = await client.create(WIDGETS, "w2", spec={"size": 1})
    meta = first["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert meta["generation"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["namespace"] == "default"  # taken from the URL
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert (first["apiVersion"], first["kind"]) == (f"{GROUP}/v1", "Widget")


async def test_generate_name_makes_a_unique_name(client: Client) -> None:
    body = {"metadata": {"generateName": "w-"}}
    names = {(await client.ok("POST", WIDGETS, body))["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3 and all(n.startswith("w-") and len(n) > 2 for n in names)


async def test_generation_bumps_on_spec_change_only(client: Client) -> None:
    await client.create(WIDGETS, "w1", spec={"size": 1})
    labelled = await client.ok("PATCH", f"{WIDGETS}/w1", {"metadata": {"labels": {"a": "b"}}})
    status = await client.ok("PATCH", f"{WIDGETS}/w1/status", {"status": {"phase": "Ready"}})
    resized = await client.ok("PATCH", f"{WIDGETS}/w1", {"spec": {"size": 2}})
    assert [o["metadata"]["generation"] for o in (labelled, status, resized)] == [1, 1, 2]


async def test_status_subresource_is_separate(client: Client) -> None:
    created = await client.create(WIDGETS, "w1", spec={"size": 1}, status={"phase": "Fake"})
    main = await client.ok(
        "PATCH", f"{WIDGETS}/w1", {"spec": {"size": 2}, "status": {"phase": "X"}}
    )
    sub = await client.ok(
        "PATCH", f"{WIDGETS}/w1/status", {"spec": {"size": 9}, "status": {"phase": "Y"}}
    )
    assert "status" not in created and "status" not in main
    assert sub["spec"] == {"size": 2} and sub["status"] == {"phase": "Y"}


async def test_put_replaces_the_object_and_the_status(client: Client) -> None:
    obj = await client.create(WIDGETS, "w1", spec={"size": 1, "colour": "red"})
    obj["spec"] = {"size": 5}
    replaced = await client.ok("PUT", f"{WIDGETS}/w1", obj, "application/json")
    replaced["status"] = {"phase": "Ready"}
    with_status = await client.ok("PUT", f"{WIDGETS}/w1/status", replaced, "application/json")
    assert replaced["spec"] == {"size": 5} and replaced["metadata"]["generation"] == 2
    assert with_status["status"] == {"phase": "Ready"}
    stale, _ = await client.call("PUT", f"{WIDGETS}/w1", obj)  # an old resourceVersion
    assert stale == 409


async def test_json_patch_with_a_failed_test_is_422(client: Client) -> None:
    await client.create(WIDGETS, "w1", spec={"size": 1})
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "replace", "path": "/spec/size", "value": 2},
    ]
    status, body = await client.call("PATCH", f"{WIDGETS}/w1", ops, "application/json-patch+json")
    assert (status, body["kind"]) == (422, "Status")
    ops[0]["value"] = (await client.ok("GET", f"{WIDGETS}/w1"))["metadata"]["resourceVersion"]
    patched = await client.ok("PATCH", f"{WIDGETS}/w1", ops, "application/json-patch+json")
    assert patched["spec"] == {"size": 2}


async def test_duplicate_create_is_409_already_exists(client: Client) -> None:
    await client.create(WIDGETS, "w1")
    status, body = await client.call("POST", WIDGETS, {"metadata": {"name": "w1"}})
    assert status == 409
    assert body["kind"] == "Status" and body["reason"] == "AlreadyExists" and body["code"] == 409


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_missing_object_is_404_not_found(client: Client, method: str) -> None:
    status, body = await client.call(
        method, f"{WIDGETS}/nope", {} if method == "PATCH" else None, MERGE
    )
    assert (status, body["kind"], body["reason"]) == (404, "Status", "NotFound")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=gold", ["a"]),
        ("tier==gold", ["a"]),
        ("tier!=gold", ["b", "c"]),
        ("tier in (gold, silver)", ["a", "b"]),
        ("tier notin (gold)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("tier,app=web", ["b"]),
    ],
)
async def test_label_selector_filters_lists(
    client: Client, selector: str, expected: list[str]
) -> None:
    await client.create(WIDGETS, "a", metadata={"labels": {"tier": "gold"}})
    await client.create(WIDGETS, "b", metadata={"labels": {"tier": "silver", "app": "web"}})
    await client.create(WIDGETS, "c", metadata={"labels": {"app": "web"}})
    listed = await client.ok("GET", f"{WIDGETS}?{urlencode({'labelSelector': selector})}")
    assert [item["metadata"]["name"] for item in listed["items"]] == expected


async def test_field_selector_on_name(client: Client) -> None:
    await client.create(WIDGETS, "a")
    await client.create(WIDGETS, "b")
    listed = await client.ok("GET", f"{WIDGETS}?fieldSelector=metadata.name=b")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["b"]


async def test_list_carries_kind_and_resource_version(client: Client) -> None:
    created = await client.create(WIDGETS, "a")
    listed = await client.ok("GET", WIDGETS)
    assert (listed["kind"], listed["apiVersion"]) == ("WidgetList", f"{GROUP}/v1")
    assert listed["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_watch_from_a_list_version_sends_only_newer_events(client: Client) -> None:
    await client.create(WIDGETS, "old")
    since = (await client.ok("GET", WIDGETS))["metadata"]["resourceVersion"]
    await client.create(WIDGETS, "new")  # between the list and the watch, as Kopf may see it
    events = await client.watch(WIDGETS, stop_at="ADDED", resourceVersion=since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "new")]


async def test_watch_without_a_version_starts_with_the_current_objects(client: Client) -> None:
    await client.create(WIDGETS, "existing")
    events = await client.watch(WIDGETS, stop_at="ADDED")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "existing")]


async def test_watch_sees_objects_enter_and_leave_its_label_selection(client: Client) -> None:
    await client.create(WIDGETS, "w1")
    since = (await client.ok("GET", WIDGETS))["metadata"]["resourceVersion"]
    await client.ok("PATCH", f"{WIDGETS}/w1", {"metadata": {"labels": {"tier": "gold"}}})
    await client.ok("PATCH", f"{WIDGETS}/w1", {"spec": {"size": 2}})
    await client.ok("PATCH", f"{WIDGETS}/w1", {"metadata": {"labels": None}})
    query = {"resourceVersion": since, "labelSelector": "tier=gold"}
    events = await client.watch(WIDGETS, stop_at="DELETED", **query)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


async def test_watch_from_a_forgotten_version_is_410_expired(
    api: ApiServer, client: Client
) -> None:
    api.emulator.event_log_limit = 2  # Kopf and client-go re-list when told so
    for name in "abcdef":
        await client.create(WIDGETS, name)
    events = await client.watch(WIDGETS, stop_at="ERROR", resourceVersion="1")
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]


async def test_finalizers_hold_a_deleted_object_until_removed(client: Client) -> None:
    await client.create(WIDGETS, "w1", metadata={"finalizers": ["test/hold"]})
    since = (await client.ok("GET", WIDGETS))["metadata"]["resourceVersion"]
    await client.ok("DELETE", f"{WIDGETS}/w1")
    held = await client.ok("GET", f"{WIDGETS}/w1")
    await client.ok("PATCH", f"{WIDGETS}/w1", {"metadata": {"finalizers": None}})
    status, _ = await client.call("GET", f"{WIDGETS}/w1")
    events = await client.watch(WIDGETS, stop_at="DELETED", resourceVersion=since)
    assert "deletionTimestamp" in held["metadata"] and status == 404
    marked = [(e["type"], "deletionTimestamp" in e["object"]["metadata"]) for e in events]
    assert marked == [("MODIFIED", True), ("DELETED", True)]


async def test_owner_deletion_cascades_to_dependents(client: Client) -> None:
    def owned_by(owner: dict[str, Any]) -> dict[str, Any]:
        meta = owner["metadata"]
        ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"]}
        return {"ownerReferences": [{**ref, "uid": meta["uid"]}]}

    owner = await client.create(WIDGETS, "owner")
    child = await client.create(CONFIGMAPS, "child", metadata=owned_by(owner))
    await client.create(CONFIGMAPS, "grandchild", metadata=owned_by(child))
    held = {**owned_by(owner), "finalizers": ["test/hold"]}
    await client.create(CONFIGMAPS, "held", metadata=held)
    await client.create(CONFIGMAPS, "unrelated")
    await client.ok("DELETE", f"{WIDGETS}/owner")
    remaining = (await client.ok("GET", CONFIGMAPS))["items"]
    assert [(o["metadata"]["name"], "deletionTimestamp" in o["metadata"]) for o in remaining] == [
        ("held", True),
        ("unrelated", False),
    ]


@pytest.fixture
def registry(
    api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> kopf.OperatorRegistry:
    """Handlers of a tiny operator that logs in with the server's kubeconfig, as Kopf does."""
    monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    return registry


@pytest.fixture
def start_operator(registry: kopf.OperatorRegistry) -> Iterator[Callable[[], None]]:
    """Starts the real Kopf operator once the test has registered its handlers.

    In its own thread and loop, as Kopf recommends for embedding: on exit, ``kopf.operator()``
    cancels every task started in its loop after it (here: pytest-asyncio's fixture tasks).
    """
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    settings.networking.error_backoffs = [0.1]
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    stop = threading.Event()
    kwargs = dict(registry=registry, settings=settings, standalone=True, clusterwide=True)
    thread = threading.Thread(target=kopf.run, kwargs={**kwargs, "stop_flag": stop})
    yield thread.start
    stop.set()
    if thread.is_alive():
        thread.join(timeout=15)
    assert not thread.is_alive(), "the operator did not stop"


async def test_a_real_kopf_operator_writes_status(
    client: Client, registry: kopf.OperatorRegistry, start_operator: Callable[[], None]
) -> None:
    @kopf.on.create(GROUP, "v1", "widgets", registry=registry)
    def reconcile(body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        patch.status["observedSize"] = spec["size"]
        kopf.info(body, reason="Reconciled", message="posted with metadata.generateName")

    start_operator()
    await client.create(WIDGETS, "w1", spec={"size": 3})

    async def reconciled() -> bool:
        obj = await client.ok("GET", f"{WIDGETS}/w1")
        return bool(obj.get("status", {}).get("observedSize") == 3)

    async def reported() -> bool:
        events = await client.ok("GET", "/api/v1/namespaces/default/events")
        return any(e["reason"] == "Reconciled" for e in events["items"])

    await eventually(reconciled)
    await eventually(reported)


async def test_a_real_kopf_finalizer_holds_deletion_until_its_handler_ran(
    client: Client, registry: kopf.OperatorRegistry, start_operator: Callable[[], None]
) -> None:
    deleted: list[str] = []

    @kopf.on.delete(GROUP, "v1", "widgets", registry=registry)
    def cleanup(name: str, **_: Any) -> None:
        deleted.append(name)

    start_operator()
    await client.create(WIDGETS, "w1", spec={"size": 3})

    async def finalized() -> bool:  # Kopf adds its finalizer with a guarded JSON patch
        return bool((await client.ok("GET", f"{WIDGETS}/w1"))["metadata"].get("finalizers"))

    async def gone() -> bool:
        return (await client.call("GET", f"{WIDGETS}/w1"))[0] == 404

    await eventually(finalized)
    await client.ok("DELETE", f"{WIDGETS}/w1")
    await eventually(gone)
    assert deleted == ["w1"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
async def test_kubectl_gets_custom_objects(api: ApiServer, client: Client, tmp_path: Path) -> None:
    await client.create(WIDGETS, "shown-by-kubectl", spec={"size": 1})
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    cache = tmp_path / "kubectl-cache"  # not the user's ~/.kube/cache
    command = [
        "kubectl",
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(cache),
        "get",
        "widgets",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "shown-by-kubectl" in done.stdout
