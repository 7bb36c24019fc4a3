"""An in-process Kubernetes API server for the integration tests and ``modelops local``.

kmock's ``KubernetesEmulator`` (objects in memory, served over HTTP) plus what Kopf, our
controllers and kubectl rely on: server-owned metadata, Status errors, label and field
selectors, the status subresource, merge/JSON patches and PUT, finalizers, ownerReference
cascade, and watches that resume from a resourceVersion::

    async with ApiServer(crds=[crd]) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

A development and test harness: no admission, no schema validation, no RBAC, JSON only.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import copy
import datetime
import json
import logging
import random
import re
import string
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Self

import aiohttp.web
import attrs
import kmock
from kmock import Response  # type: ignore[attr-defined]  # exported, but missing in __all__

from modelops.local import tables

logger = logging.getLogger(__name__)
_MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")

Obj = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]  # (storage resource, namespace, name)
Matcher = Callable[[Mapping[str, Any]], bool]

# Fields a client cannot write; `name` and `namespace` only come from the request on create.
_SERVER_OWNED = frozenset(
    ("uid", "name", "namespace", "creationTimestamp", "generation", "resourceVersion")
) | {"deletionTimestamp", "deletionGracePeriodSeconds"}


@dataclass(frozen=True)
class ResourceSpec:
    """What discovery announces and the store needs to know about one served group/version."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    storage_version: str = ""  # objects of all served versions of a CRD live in this one
    # A CRD version's additionalPrinterColumns, for the Tables that `kubectl get` prints.
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), hash=False, compare=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_api_version(self) -> str:
        version = self.storage_version or self.version
        return f"{self.group}/{version}" if self.group else version

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    @property
    def storage(self) -> kmock.resource:
        return kmock.resource(self.group, self.storage_version or self.version, self.plural)

    @property
    def label(self) -> str:  # as Kubernetes names a resource in its messages
        return f"{self.plural}.{self.group}" if self.group else self.plural


# group/version plural Kind flags short-names
_BUILTINS = """
    v1 namespaces Namespace cluster,status ns
    v1 events Event - ev
    v1 configmaps ConfigMap - cm
    v1 secrets Secret -
    v1 services Service status,all svc
    v1 pods Pod status,all po
    v1 serviceaccounts ServiceAccount - sa
    v1 endpoints Endpoints - ep
    batch/v1 jobs Job status,all
    apps/v1 deployments Deployment status,all deploy
    apps/v1 replicasets ReplicaSet status,all rs
    rbac.authorization.k8s.io/v1 roles Role -
    rbac.authorization.k8s.io/v1 rolebindings RoleBinding -
    coordination.k8s.io/v1 leases Lease -
    events.k8s.io/v1 events Event - ev
    apiextensions.k8s.io/v1 customresourcedefinitions CustomResourceDefinition cluster,status crd
    gateway.networking.k8s.io/v1 httproutes HTTPRoute status
"""
BUILTIN_RESOURCES = tuple(
    ResourceSpec(
        group=gv.rpartition("/")[0],
        version=gv.rpartition("/")[2],
        plural=plural,
        kind=kind,
        namespaced="cluster" not in flags,
        status_subresource="status" in flags,
        short_names=tuple(short),
        categories=("all",) if "all" in flags else (),
    )
    for gv, plural, kind, flags, *short in (line.split() for line in _BUILTINS.strip().splitlines())
)
# Kopf's resource observer waits for the CRD resource before it serves any handler.
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = kmock.resource("", "v1", "namespaces")


def crd_resources(crd: Mapping[str, Any]) -> list[ResourceSpec]:
    """The served versions of an apiextensions.k8s.io/v1 CustomResourceDefinition."""
    spec, names = crd["spec"], crd["spec"]["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    storage = next((v["name"] for v in spec["versions"] if v.get("storage")), served[0]["name"])
    return [
        ResourceSpec(
            group=spec["group"],
            version=v["name"],
            plural=names["plural"],
            kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            status_subresource="status" in (v.get("subresources") or {}),
            short_names=tuple(names.get("shortNames", ())),
            categories=tuple(names.get("categories", ())),
            storage_version=storage,
            printer_columns=tuple(v.get("additionalPrinterColumns") or ()),
        )
        for v in served
    ]


def api_error(
    code: int, reason: str, message: str, spec: ResourceSpec | None = None, name: str = ""
) -> kmock.KubernetesError:
    """A failure that kmock renders as a ``kind: Status`` body, which clients parse."""
    details = {"name": name, "group": spec.group, "kind": spec.plural} if spec else {"name": name}
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


# -- selectors ------------------------------------------------------------------------------------

_WORD = r"[\w./-]+"
_REQUIREMENT = re.compile(
    rf"""\s*(?:
        !\s*(?P<absent>{_WORD})
      | (?P<set_key>{_WORD})\s+(?P<set_op>in|notin)\s*\((?P<values>[^)]*)\)
      | (?P<eq_key>{_WORD})\s*(?P<eq_op>==|=|!=)\s*(?P<value>[\w./-]*)
      | (?P<present>{_WORD})
    )\s*(?:,|$)""",
    re.VERBOSE,
)
Requirement = tuple[str, str, frozenset[str]]  # key, "in" | "notin" | "exists" | "absent", values


def parse_label_selector(text: str) -> list[Requirement]:
    """``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``."""
    reqs: list[Requirement] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _REQUIREMENT.match(text, pos)
        if m is None or m.end() == pos:
            raise api_error(400, "BadRequest", f"unable to parse requirement: {text[pos:]!r}")
        pos = m.end()
        if m["absent"] or m["present"]:
            reqs.append((m["absent"] or m["present"], "absent" if m["absent"] else "exists", _NONE))
        elif m["set_key"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            reqs.append((m["set_key"], m["set_op"], values))
        else:
            op = "notin" if m["eq_op"] == "!=" else "in"
            reqs.append((m["eq_key"], op, frozenset([m["value"]])))
    return reqs


def parse_field_selector(text: str) -> list[Requirement]:
    """``fieldSelector`` on any dotted path, e.g. ``metadata.name=x,status.phase!=Done``."""
    reqs: list[Requirement] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if (m := re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)) is None:
            raise api_error(400, "BadRequest", f"invalid field selector: {term!r}")
        reqs.append((m[1], "notin" if m[2] == "!=" else "in", frozenset([m[3]])))
    return reqs


def satisfies(values: Mapping[str, str], reqs: Iterable[Requirement]) -> bool:
    """Whether labels (or fields) meet all requirements; ``!=`` and ``notin`` match absence."""
    for key, op, allowed in reqs:
        if op in ("exists", "absent"):
            if (key in values) != (op == "exists"):
                return False
        elif (values.get(key) in allowed) != (op == "in"):
            return False
    return True


def _field(obj: Any, path: str) -> str:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    return "" if obj is None else json.dumps(obj) if isinstance(obj, bool) else str(obj)


_NONE: frozenset[str] = frozenset()

# -- patches --------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_GONE = object()  # what _put stores to remove


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902; Kopf guards its JSON patches with a ``test`` of the resourceVersion."""
    doc = copy.deepcopy(doc)
    try:
        for op in ops:
            kind, path = op["op"], _pointer(op["path"])
            if kind not in ("add", "remove", "replace", "move", "copy", "test"):
                raise ValueError(f"unknown op {kind!r}")
            if kind == "test":
                if _walk(doc, path) != op["value"]:
                    raise api_error(422, "Invalid", f"test failed at {op['path']!r}")
                continue
            value = (
                _walk(doc, _pointer(op["from"])) if kind in ("move", "copy") else op.get("value")
            )
            value = copy.deepcopy(value)
            if kind in ("remove", "replace", "move"):
                doc = _put(doc, _pointer(op["from"]) if kind == "move" else path, _GONE)
            if kind != "remove":
                doc = _put(doc, path, value)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise api_error(422, "Invalid", f"cannot apply the JSON patch: {exc!r}") from exc
    return doc


def _pointer(text: str) -> list[str]:
    if text and not text.startswith("/"):
        raise ValueError(f"not a JSON pointer: {text!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in text.split("/")[1:]]


def _walk(doc: Any, path: list[str]) -> Any:
    for token in path:
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc


def _put(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return None if value is _GONE else value
    parent, last = _walk(doc, path[:-1]), path[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if value is _GONE:
            del parent[index]
        else:
            parent.insert(index, value)
    elif value is _GONE:
        del parent[last]
    else:
        parent[last] = value
    return doc


# -- the emulator ---------------------------------------------------------------------------------


class _Path(NamedTuple):
    resource: kmock.resource | None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_path(path: str) -> _Path:
    """Split an API URL; kmock's parser takes ``/api/v1/namespaces/x`` for a namespace prefix."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or parts[0] not in ("api", "apis"):
        return _Path(None)
    version: str | None
    if parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    else:
        group, version, rest = parts[1], (parts[2] if len(parts) > 2 else None), parts[3:]
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    padded: list[str | None] = [*rest, None, None]
    resource = kmock.resource(group=group, version=version, plural=padded[0])
    return _Path(resource, namespace, padded[1], "/".join(rest[2:]) or None)


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: kmock.resource  # the storage resource
    type: str
    obj: Obj
    old: Obj | None  # the previous state: selector watchers see objects enter and leave


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class ApiEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with Kubernetes semantics for objects' lifecycle and for watches."""

    # kmock keeps every request for assertions, and matches each new request against its
    # reactions by scanning that log: a long log makes every request slow (a busy local
    # cluster wants a short one).
    request_log_limit: int = 20
    history_limit: int = 50  # versions kept per object in ``.objects[...].history``
    event_log_limit: int = 10_000  # a watch resuming from before the kept events gets 410

    _specs: dict[kmock.resource, ResourceSpec] = attrs.field(factory=dict, init=False)
    _columns: dict[kmock.resource, list[tables.Column]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, Key] = attrs.field(factory=dict, init=False)  # the live objects
    _rv: int = attrs.field(default=0, init=False)
    _log: list[_Event] = attrs.field(factory=list, init=False)
    _log_floor: int = attrs.field(default=0, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # Where a pod's log is (``kubectl logs``): set by whoever runs the pods (the local executor).
    pod_logs: Callable[[str, str], Path | None] | None = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for spec in BUILTIN_RESOURCES:
            self.declare(spec)

    def declare(self, spec: ResourceSpec) -> None:
        """Serve a resource: announce it in discovery and accept its objects."""
        self._specs[spec.resource] = spec
        self._columns[spec.resource] = (
            tables.printer_columns(spec.printer_columns)
            if spec.printer_columns or spec.storage_version
            else tables.builtin_columns(spec.group, spec.plural)
        )
        self.resources[spec.resource] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.kind.lower(),
            namespaced=spec.namespaced,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            shortnames=set(spec.short_names),
            categories=set(spec.categories),
            subresources={"status"} if spec.status_subresource else set(),
        )

    def spec(self, resource: kmock.resource | None) -> ResourceSpec:
        """The declared resource, or the 404 that the API gives for an unknown one."""
        if resource is None or (spec := self._specs.get(resource)) is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        return spec

    def close_watches(self) -> None:
        """End every open watch stream, so that the HTTP server can stop without waiting."""
        self._closing = True
        self._changed.set()

    # -- HTTP plumbing --

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Replaces kmock's entry point only to parse URLs correctly (see parse_path) and to route
        # PUT to the update handler; kmock's routing does the rest, user reactions first.
        body = await raw_request.read()
        if body and "protobuf" in raw_request.content_type:  # kubectl's typed `create` sends it
            error = api_error(415, "UnsupportedMediaType", "this server speaks JSON, not protobuf")
            return await self._render_error(error)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        path = parse_path(raw_request.path)
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=raw_request.headers,  # case-insensitive, unlike kmock's copy into a dict
            body=body,
            data=data,
            action=self._guess_action(raw_request.method, path, raw_request.query),
            resource=path.resource,
            namespace=path.namespace,
            name=path.name,
            subresource=path.subresource,
        )
        self._requests.append(request)
        if len(self._requests) > 2 * self.request_log_limit:
            del self._requests[: -self.request_log_limit]
            for reaction in self._payloads:
                del reaction._requests[: -self.request_log_limit]
        try:
            return await self._handle(request)
        except Exception as exc:
            # kmock wraps a failure inside a started stream with its response: the headers are
            # gone, so end that stream and let the client reconnect.
            started = [a for a in exc.args if isinstance(a, aiohttp.web.StreamResponse)]
            if started and started[0].prepared:
                return started[0]
            if not isinstance(exc, kmock.KubernetesError):
                logger.exception("The API emulator failed on %s %s", request.method, request.url)
                if self._errors:
                    self._errors[-1].append(exc)
            return await self._render_error(exc)

    @staticmethod
    def _guess_action(method: str, path: _Path, query: Mapping[str, str]) -> kmock.action | None:
        if path.resource is None or path.resource.plural is None:
            return None  # discovery: served by the path routes of kmock's scaffold
        if method == "GET" and query.get("watch") in ("true", "1"):
            return kmock.action.WATCH
        if path.name is None:
            return {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
        actions = {"GET": "FETCH", "PATCH": "UPDATE", "PUT": "UPDATE", "DELETE": "DELETE"}
        return kmock.action(actions[method]) if method in actions else None

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skips KubernetesEmulator._handle, which changes objects before routing with plain dict
        # merges: here, the fallback handlers below make every change.
        return await kmock.KubernetesScaffold._handle(self, request)

    # -- discovery --

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        result = await super()._serve_version(request)
        assert isinstance(result, dict)
        result["groupVersion"] = result["groupVersion"].lstrip("/")  # kubectl rejects "/v1"
        for res in result["resources"]:
            if "/" in res["name"]:  # kmock copies these; kubectl then finds "x/status" ambiguous
                res.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
        return result

    # -- reading --

    def _key(self, spec: ResourceSpec, namespace: str | None, name: str) -> Key:
        return (spec.storage, namespace if spec.namespaced else None, name)

    def _current(self, key: Key) -> Obj | None:
        live = key in self._objects and not self._objects[key].deleted
        return self._objects[key].raw if live else None

    def _existing(self, request: kmock.Request) -> tuple[ResourceSpec, Key, Obj]:
        spec = self.spec(request.resource)
        key = self._key(spec, request.namespace, request.name or "")
        obj = self._current(key)
        if obj is None or request.subresource not in (None, "status"):
            raise api_error(404, "NotFound", f'{spec.label} "{key[2]}" not found', spec, key[2])
        return spec, key, copy.deepcopy(obj)

    def _matcher(self, spec: ResourceSpec, request: kmock.Request) -> Matcher:
        namespace = request.namespace if spec.namespaced else None
        labels = parse_label_selector(request.params.get("labelSelector", ""))
        fields = parse_field_selector(request.params.get("fieldSelector", ""))

        def match(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (
                namespace in (None, meta.get("namespace"))
                and request.name in (None, meta.get("name"))
                and satisfies(meta.get("labels") or {}, labels)
                and satisfies({path: _field(obj, path) for path, _, _ in fields}, fields)
            )

        return match

    def _select(self, spec: ResourceSpec, match: Matcher) -> list[Obj]:
        found = [self._current(key) for key in self._uids.values() if key[0] == spec.storage]
        chosen = [obj for obj in found if obj is not None and match(obj)]
        return sorted(
            chosen, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    def _present(self, spec: ResourceSpec, obj: Obj) -> Obj:
        # A multi-version CRD is stored once; its served versions differ only in apiVersion
        # (conversion strategy None).
        same = obj.get("apiVersion") == spec.api_version
        return obj if same else {**obj, "apiVersion": spec.api_version}

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        if request.subresource == "log":
            return self._serve_log(request)
        spec, _, obj = self._existing(request)
        if self._tabular(request):
            return Response(status=200, payload=self._table(spec, request, [obj]))
        return Response(status=200, payload=self._present(spec, obj))

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        spec = self.spec(request.resource)
        items = [self._present(spec, o) for o in self._select(spec, self._matcher(spec, request))]
        if self._tabular(request):
            return Response(status=200, payload=self._table(spec, request, items))
        meta = {"resourceVersion": str(self._rv)}
        payload = {"apiVersion": spec.api_version, "kind": f"{spec.kind}List", "metadata": meta}
        return Response(status=200, payload={**payload, "items": items})

    def _serve_log(self, request: kmock.Request) -> kmock.Payload:
        """``pods/<name>/log``: the text so far; with ``follow``, then what is appended."""
        spec = self.spec(request.resource)
        name = request.name or ""
        if spec.resource != kmock.resource("", "v1", "pods"):
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        key = self._key(spec, request.namespace, name)
        if self._current(key) is None:
            raise api_error(404, "NotFound", f'pods "{name}" not found', spec, name)
        path = self.pod_logs(request.namespace or "", name) if self.pod_logs else None
        if path is None or not path.exists():
            message = f'container in pod "{name}" is waiting to start: no log yet'
            raise api_error(400, "BadRequest", message, spec, name)
        text = path.read_bytes()
        if (tail := request.params.get("tailLines", "")).isdigit():
            text = b"".join(text.splitlines(keepends=True)[-int(tail) :]) if int(tail) else b""
        headers = {"Content-Type": "text/plain"}
        if request.params.get("follow") not in ("true", "1"):
            return Response(status=200, headers=headers, payload=text)
        return Response(status=200, headers=headers, payload=self._follow(key, path, text))

    async def _follow(self, key: Key, path: Path, first: bytes) -> AsyncIterator[bytes]:
        yield first
        offset = path.stat().st_size
        while not self._closing and self._current(key) is not None:
            await asyncio.sleep(0.5)
            with path.open("rb") as handle:
                handle.seek(offset)
                if chunk := handle.read():
                    offset += len(chunk)
                    yield chunk

    # -- server-side printing (kubectl get) --

    @staticmethod
    def _tabular(request: kmock.Request) -> bool:
        return tables.wants_table(request.headers.get("Accept", ""))

    def _table(
        self, spec: ResourceSpec, request: kmock.Request, objs: Iterable[Obj], headers: bool = True
    ) -> Obj:
        return tables.table(
            self._columns[spec.resource],
            [self._present(spec, o) for o in objs],
            resource_version=str(self._rv),
            include_object=request.params.get("includeObject", "Metadata"),
            headers=headers,
        )

    # kmock's watch is an async generator; this one returns a Response to set the content type.
    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:  # type: ignore[override]
        spec = self.spec(request.resource)
        match = self._matcher(spec, request)
        since = request.params.get("resourceVersion", "")
        timeout = float(request.params.get("timeoutSeconds", "inf"))
        # Decided before any await: no write can slip between the snapshot and the cursor.
        backlog: list[Obj] = []

        # `kubectl get -w` asks for Tables: each event then carries a one-row Table.
        def as_table(spec: ResourceSpec, obj: Obj) -> Obj:
            return self._table(spec, request, [obj])

        present = as_table if self._tabular(request) else self._present
        if since in ("", "0"):  # "from now", after the current objects as ADDED
            objs = self._select(spec, match)
            backlog = [{"type": "ADDED", "object": present(spec, o)} for o in objs]
        elif not since.isdigit():
            raise api_error(400, "BadRequest", f"invalid resourceVersion {since!r}")
        cursor = self._rv if backlog or since in ("", "0") else int(since)
        stream = self._stream(spec, match, cursor, backlog, timeout, present)
        # client-go decodes a watch only if it is labelled as JSON (kmock says octet-stream).
        return Response(status=200, headers={"Content-Type": "application/json"}, payload=stream)

    async def _stream(
        self,
        spec: ResourceSpec,
        match: Matcher,
        cursor: int,
        backlog: list[Obj],
        timeout: float,
        present: Callable[[ResourceSpec, Obj], Obj],
    ) -> AsyncIterator[kmock.Payload]:
        yield b""  # sends the headers now: a quiet watch must still look connected
        for initial in backlog:
            yield initial
        deadline = asyncio.get_running_loop().time() + min(timeout, 1e9)
        while not self._closing:
            if cursor < self._log_floor:  # Kopf and client-go re-list on this
                message = f"too old resource version: {cursor}"
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410}
                yield {
                    "type": "ERROR",
                    "object": {**status, "reason": "Expired", "message": message},
                }
                return
            changed = self._changed
            start = bisect.bisect_right(self._log, cursor, key=lambda e: e.rv)
            for event in self._log[start:]:
                cursor = event.rv
                if (typed := self._retype(event, spec, match, present)) is not None:
                    yield typed
            if start == len(self._log):
                try:
                    async with asyncio.timeout_at(deadline):
                        await changed.wait()
                except TimeoutError:
                    return

    def _retype(
        self,
        event: _Event,
        spec: ResourceSpec,
        match: Matcher,
        present: Callable[[ResourceSpec, Obj], Obj],
    ) -> Obj | None:
        # As in Kubernetes: an object that enters a watcher's selection is ADDED for it, and one
        # that leaves it is DELETED.
        if event.resource != spec.storage:
            return None
        now, before = match(event.obj), event.old is not None and match(event.old)
        kind = event.type if now else "DELETED" if before else ""
        kind = "ADDED" if kind == "MODIFIED" and not before else kind
        return {"type": kind, "object": present(spec, event.obj)} if kind else None

    # -- writing --

    def _commit(self, spec: ResourceSpec, key: Key, obj: Obj, kind: str, old: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if key not in self._objects:
            self._objects[key] = obj
        else:
            history = self._objects[key].history
            history.append(None if kind == "DELETED" else obj)  # kmock's soft deletion
            del history[: -self.history_limit]
        self._log.append(_Event(self._rv, spec.storage, kind, obj, old))
        if len(self._log) > 2 * self.event_log_limit:
            self._log_floor = self._log[-self.event_log_limit - 1].rv
            del self._log[: -self.event_log_limit]
        self._changed.set()
        self._changed = asyncio.Event()
        return obj

    def create_object(self, spec: ResourceSpec, body: Any, namespace: str | None = None) -> Obj:
        """Create an object as a POST does; the server also seeds its objects with it."""
        if not isinstance(body, Mapping):
            raise api_error(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        namespace = (namespace or meta.get("namespace")) if spec.namespaced else None
        if spec.namespaced and (not namespace or meta.get("namespace", namespace) != namespace):
            raise api_error(400, "BadRequest", "the namespace is missing or does not match")
        if not meta.get("name") and meta.get("generateName"):
            alphabet = string.ascii_lowercase + string.digits
            meta["name"] = meta["generateName"] + "".join(random.choices(alphabet, k=5))
        if not (name := meta.get("name")):
            raise api_error(422, "Invalid", "metadata.name or metadata.generateName is required")
        key = self._key(spec, namespace, name)
        if self._current(key) is not None:
            raise api_error(
                409, "AlreadyExists", f'{spec.label} "{name}" already exists', spec, name
            )
        meta = obj["metadata"] = {k: v for k, v in meta.items() if k not in _SERVER_OWNED}
        meta.update(name=name, uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now())
        if namespace:
            meta["namespace"] = namespace
        obj.update(apiVersion=spec.storage_api_version, kind=spec.kind)
        if spec.status_subresource:
            obj.pop("status", None)  # status is written only through /status
        if spec.resource == NAMESPACES:
            obj["status"] = {"phase": "Active"}
        if spec.resource == CRDS:
            self._establish(obj)
        self._uids[meta["uid"]] = key
        return self._commit(spec, key, obj, "ADDED", None)

    def _establish(self, crd: Obj) -> None:
        # A CRD created at runtime (kubectl apply) is served at once and says so, like k8s.
        specs = crd_resources(crd)
        for spec in specs:
            self.declare(spec)
        conditions = [
            {"type": t, "status": "True", "reason": t, "lastTransitionTime": _now()}
            for t in ("NamesAccepted", "Established")
        ]
        names, stored = crd["spec"]["names"], [specs[0].storage_version]
        crd["status"] = {"acceptedNames": names, "conditions": conditions, "storedVersions": stored}

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        spec = self.spec(request.resource)
        obj = self.create_object(spec, request.data, request.namespace)
        return Response(status=201, payload=self._present(spec, obj))

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        spec, key, old = self._existing(request)
        to_status = request.subresource == "status"
        if to_status and not spec.status_subresource:
            raise api_error(404, "NotFound", f"{spec.label} has no status subresource", spec)
        new = self._patched(old, request)
        if not isinstance(new, dict) or not isinstance(new.setdefault("metadata", {}), dict):
            raise api_error(422, "Invalid", "the result is not a Kubernetes object")
        # Optimistic concurrency: a resourceVersion that the client sends must be the current one.
        sent = new["metadata"].get("resourceVersion")
        if sent is not None and sent != old["metadata"]["resourceVersion"]:
            message = f'the object has been modified: {spec.label} "{key[2]}"'
            raise api_error(409, "Conflict", message, spec, key[2])
        if to_status:  # each endpoint writes its own part only
            new = {**old, "status": new.get("status")}
        elif spec.status_subresource:
            new["status"] = old.get("status")
        new = {k: v for k, v in new.items() if v is not None or k != "status"}
        own = {k: v for k, v in new["metadata"].items() if k not in _SERVER_OWNED}
        kept = {k: v for k, v in old["metadata"].items() if k in _SERVER_OWNED}
        meta = new["metadata"] = own | kept
        new.update(apiVersion=old["apiVersion"], kind=old["kind"])
        finalizers = set(meta.get("finalizers") or ())
        dying = "deletionTimestamp" in meta
        if dying and finalizers - set(old["metadata"].get("finalizers") or ()):
            raise api_error(422, "Invalid", "no new finalizers can be added while deleting")
        if new == old:  # a no-op: no new resourceVersion, no watch event, as in Kubernetes
            return Response(status=200, payload=self._present(spec, old))
        # The generation counts changes of anything but metadata and status (spec, data, ...).
        if {**new, "metadata": 0, "status": 0} != {**old, "metadata": 0, "status": 0}:
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        if dying and not finalizers:  # as in Kubernetes, this update is the deletion itself
            self._remove(key, new)
        else:
            self._commit(spec, key, new, "MODIFIED", old)
        return Response(status=200, payload=self._present(spec, new))

    def _patched(self, old: Obj, request: kmock.Request) -> Any:
        if request.method == kmock.method.PUT:
            return copy.deepcopy(request.data)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type == "application/json-patch+json":
            return json_patch(old, request.data)
        if content_type in _MERGE_PATCHES:  # strategic: approximated, lists are replaced
            return merge_patch(old, request.data)
        raise api_error(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        spec, key, _ = self._existing(request)
        return Response(status=200, payload=self._present(spec, self.delete_object(key)))

    def delete_object(self, key: Key) -> Obj:
        """Delete as the API does: finalizers keep the object, marked, until they are removed."""
        obj = self._current(key)
        if obj is None or "deletionTimestamp" in obj["metadata"]:
            return obj or {}
        new = copy.deepcopy(obj)
        if not obj["metadata"].get("finalizers"):
            return self._remove(key, new)
        new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
        return self._commit(self._specs[key[0]], key, new, "MODIFIED", obj)

    def _remove(self, key: Key, obj: Obj) -> Obj:
        uid = obj["metadata"]["uid"]
        del self._uids[uid]
        self._commit(self._specs[key[0]], key, obj, "DELETED", None)
        # The garbage collector: dependents go once none of their owners exists any more; and
        # a namespace takes its objects with it.
        for dep_key in list(self._uids.values()):
            refs = (self._current(dep_key) or {}).get("metadata", {}).get("ownerReferences") or []
            ownerless = any(r.get("uid") == uid for r in refs) and not any(
                r.get("uid") in self._uids for r in refs
            )
            if ownerless or (key[0] == NAMESPACES and dep_key[1] == key[2]):
                self.delete_object(dep_key)
        return obj


# -- the server -----------------------------------------------------------------------------------


class ApiServer:
    """The emulator served over HTTP on a free loopback port, from a thread with its own loop.

    Why a thread: ``kopf.operator()``, when it stops, cancels every task created in its loop
    since it started (it cannot tell its own from others'), so an in-loop server would lose its
    connection handlers and both would hang. ``emulator`` belongs to the server's thread: talk to
    it over HTTP (reading ``emulator.objects`` for assertions is fine).
    """

    def __init__(
        self,
        crds: Iterable[Mapping[str, Any]] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        request_log_limit: int | None = None,
    ) -> None:
        self.crds = [copy.deepcopy(dict(crd)) for crd in crds]
        self.host, self.port = host, port
        self.emulator = ApiEmulator()
        if request_log_limit is not None:
            self.emulator.request_log_limit = request_log_limit
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("The API server is not running.")
        return self._url

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self.stop)

    def start(self) -> None:
        """Serve from a background thread (once per instance); return when the port is open."""
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        serve = self._serve(ready)
        self._thread = threading.Thread(target=asyncio.run, args=(serve,), daemon=True)
        self._thread.start()
        self._url = ready.result()

    def stop(self) -> None:
        """End the watch streams, stop serving, and wait for the thread to finish."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join()
        self._thread = self._loop = self._stopping = self._url = None

    async def _serve(self, ready: concurrent.futures.Future[str]) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        # Not kmock.Server: it patches aiohttp's process-wide resolver (and must be exited LIFO),
        # while the same process runs the operator's own HTTP clients.
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self.emulator), shutdown_timeout=1)
        try:
            async with self.emulator:
                default = {"metadata": {"name": "default"}}
                self.emulator.create_object(self.emulator.spec(NAMESPACES), default)
                for crd in self.crds:
                    self.emulator.create_object(self.emulator.spec(CRDS), crd)
                await runner.setup()
                await aiohttp.web.TCPSite(runner, self.host, self.port).start()
                host, port = runner.addresses[0][:2]
                ready.set_result(f"http://{host}:{port}")
                await self._stopping.wait()
                self.emulator.close_watches()
        except BaseException as exc:
            if ready.done():
                raise
            ready.set_exception(exc)
        finally:
            await runner.cleanup()

    def write_kubeconfig(self, path: str | Path) -> Path:
        """A kubeconfig for this server, for kubectl and for Kopf's kubeconfig login alike."""
        name = "modelops-local"
        context = {"cluster": name, "user": name, "namespace": "default"}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}
            ],
            # A token only because some clients refuse a user without credentials.
            "users": [{"name": name, "user": {"token": "modelops-local"}}],
            "contexts": [{"name": name, "context": context}],
            "current-context": name,
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML, for both readers
        return path
