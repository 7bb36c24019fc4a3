"""The process kubelet: a Node of a real control plane whose pods are local processes.

The control plane (:mod:`modelops.local.controlplane`) runs the real controllers: Jobs,
ReplicaSets, Deployments, EndpointSlices, garbage collection, and the scheduler binds pods to
this node. What is left of a kubelet is done here, with the node's own credentials (so the
Node authorizer and ``NodeRestriction`` apply to it as to a real kubelet):

1. register the Node, renew its Lease in ``kube-node-lease`` and refresh its ``Ready``
   heartbeat, so the node-lifecycle controller never taints it;
2. watch the pods bound to the node and run each one's container as a local process group
   (:class:`~modelops.local.pods.LocalPod`) when its image is one of ``images``; any other image
   waits with ``ErrImagePull``. The pod is translated to this machine: env from Secrets,
   ConfigMaps and the downward API (with the pod's own IP), ``--port N`` rewritten to a free
   loopback port, volume mounts and the termination-message path to per-pod directories,
   in-cluster Service names and ``aliases`` to loopback addresses, a CPU limit to CPU
   affinity, and ``KUBECONFIG`` to a kubeconfig holding the pod's ServiceAccount token (from
   the TokenRequest API, never the node's credentials);
3. write each pod's status as the kubelet does, only when it changed; stop the processes of
   pods being deleted within their grace, write a final status and delete them with grace 0;
4. give every Service port with a selector a loopback address
   (:class:`~modelops.local.proxy.ServiceProxy`) over the ready endpoints of its
   EndpointSlices; an endpoint's pod IP (from 10.244.0.0/16: EndpointSlices refuse loopback)
   is resolved to the pod's loopback port;
5. serve ``/containerLogs`` over HTTPS (client certificates signed by the cluster CA), so
   ``kubectl logs`` works through the API server.

Simplifications: one container per pod (init containers and sidecars are not run), httpGet
probes only, no exec/attach/port-forward, a pod's image is read once, ServiceAccount tokens are
not rotated (they last a day).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import math
import os
import platform
import re
import shutil
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import yaml
from aiohttp import web

from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.informer import Informer
from modelops.local.podenv import (
    PodSpecError,
    container_env,
    expand,
    field_value,
    local_command,
    referenced_config_maps,
    referenced_secrets,
)
from modelops.local.pods import Launch, LocalPod, now_iso
from modelops.local.proxy import ServiceProxy
from modelops.local.s3server import free_port
from modelops.local.simpods import PodSimulator, Simulation

__all__ = ["KubeletConfig", "PodSpecError", "ProcessKubelet"]

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
TICK = 0.25  # seconds between status and Service passes when nothing wakes the loop
LEASE_SECONDS = 40  # the Lease's duration; renewed every LEASE_RENEW seconds
LEASE_RENEW = 10.0
NODE_STATUS_EVERY = 2  # Lease renewals per Ready heartbeat (well within the grace period)
HOST_IP = "127.0.0.1"
POD_NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
LOG_FOLLOW_POLL = 0.2
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TOKEN_SECONDS = 86400

_SERVICE_HOST = re.compile(
    r"\b(?P<svc>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"
    r"\.svc(?:\.cluster\.local)?(?::(?P<port>\d+))?\b"
)


_PORT_FLAG = re.compile(r"--(?:[a-z0-9]+-)*port")  # --port, --grpc-port, --metrics-port


@dataclass
class KubeletConfig:
    """What the process kubelet needs: the API server, the node's identity, what it runs.

    ``cpu_capacity`` is what the Node advertises to the scheduler; the pods' processes share
    this machine's real CPUs (a CPU limit becomes CPU affinity), so it is a scheduling budget,
    not a reservation.
    """

    api_url: str  # https://127.0.0.1:PORT
    ca_file: Path  # the cluster CA: verifies the API server, and clients of the kubelet server
    client_cert: Path  # the node's identity: CN=system:node:<node_name>, O=system:nodes
    client_key: Path
    serving_cert: Path  # the kubelet server's certificate (SAN 127.0.0.1), signed by the CA
    serving_key: Path
    node_name: str  # "local"
    state_dir: Path  # pods/<namespace>/<pod>/: working dirs and container.log
    # The only images that run: image -> entrypoint argv when the container has no command.
    images: dict[str, list[str]]
    aliases: dict[str, str] = field(default_factory=dict)  # "host:port" -> "127.0.0.1:port"
    services_file: Path | None = None
    pod_env: dict[str, str] = field(default_factory=dict)  # added to every pod's env
    grace_max: float = 10.0  # cap on a pod's termination grace period
    cpu_capacity: int = 16
    # kube-proxy's identity (CN=system:kube-proxy, bound to system:node-proxier) for the
    # Service and EndpointSlice watches: the Node authorizer lets no node read EndpointSlices.
    # None: the node's own (then something else must grant it that read).
    proxy_cert: Path | None = None
    proxy_key: Path | None = None
    # No-process mode (modelops.local.simpods): every pod Running and Ready without a process,
    # serving pods writing reports and sketch windows; no Service proxies. None: run processes.
    simulation: Simulation | None = None
    max_pods: int = 110  # the Node's pods capacity


def cpu_count(quantity: Any) -> int | None:
    """Whole CPUs for a CPU limit (``500m`` -> 1, ``2`` -> 2); None without a limit."""
    if quantity is None:
        return None
    text = str(quantity)
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(value))


def _micro_time() -> str:
    """A ``MicroTime`` (the Lease's renewTime)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _port_key(port: Mapping[str, Any]) -> str:
    return str(port.get("name") or port["port"])


class PodAddresses:
    """Pod IPs from :data:`POD_NETWORK`, handed out in turn and given back when a pod goes."""

    def __init__(self) -> None:
        self._hosts = list(POD_NETWORK.hosts())[1:]  # .0.1 is the "gateway"
        self._next = 0
        self.used: dict[str, LocalPod] = {}

    def take(self) -> str:
        for _ in range(len(self._hosts)):
            ip = str(self._hosts[self._next % len(self._hosts)])
            self._next += 1
            if ip not in self.used:
                return ip
        raise RuntimeError(f"no pod IP left in {POD_NETWORK}")


class ProcessKubelet:
    def __init__(self, config: KubeletConfig) -> None:
        self.config = config
        self.pods: dict[str, LocalPod] = {}  # by the Pod's uid, until the object is deleted
        self.proxies: dict[tuple[str, str], dict[str, ServiceProxy]] = {}
        self.cluster: Cluster | None = None  # the node's identity
        self._proxy_cluster: Cluster | None = None  # kube-proxy's, for Services and slices
        self.port = 0  # the kubelet server's HTTPS port, once started
        self._addresses = PodAddresses()
        self._terminating: set[str] = set()  # uids whose termination has begun
        self._sent: dict[str, Obj] = {}  # pod status last written, by uid
        self._status_lock = asyncio.Lock()
        self._services: dict[tuple[str, str], Obj] = {}
        self._written_services: Obj | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._cpu_turn = 0
        self._node_uid = ""
        self._version = "v0.0.0"
        self._ready_since = now_iso()
        self._informers: dict[str, Informer] = {}
        self._runner: web.AppRunner | None = None
        self.simulator: PodSimulator | None = None  # in no-process mode

    # -- running --

    async def start(self) -> None:
        """Serve, register the Node, renew its Lease, and take on the pods bound to it."""
        cfg = self.config
        self.cluster = _client(cfg.api_url, cfg.ca_file, cfg.client_cert, cfg.client_key)
        self._proxy_cluster = proxy = _client(
            cfg.api_url,
            cfg.ca_file,
            cfg.proxy_cert or cfg.client_cert,
            cfg.proxy_key or cfg.client_key,
        )
        await self._serve()
        if cfg.simulation is not None:
            self.simulator = PodSimulator(
                cfg.simulation,
                api_url=cfg.api_url,
                ca_file=cfg.ca_file,
                node=self.cluster,
                aliases=cfg.aliases,
            )
            await self.simulator.start()
        self._version = str((await self._api("GET", "/version")).get("gitVersion", "v0.0.0"))
        await self._register_node()
        await self._renew_lease()
        self._loops.append(asyncio.create_task(self._heartbeat(), name="kubelet heartbeat"))

        # Services and EndpointSlices first: a pod prepared later finds their addresses.
        try:
            await proxy.request("GET", "/apis/discovery.k8s.io/v1/endpointslices?limit=1")
        except ApiError as exc:
            if exc.status != 403:
                raise
            raise PermissionError(
                "the kubelet may not read EndpointSlices (the Node authorizer never lets a "
                "node): give it kube-proxy's identity (proxy_cert/proxy_key, "
                "CN=system:kube-proxy) or bind system:node-proxier to the node"
            ) from exc
        self._informers = {
            "services": Informer(proxy, "v1", "Service", self._on_change),
            "slices": Informer(
                proxy,
                "discovery.k8s.io/v1",
                "EndpointSlice",
                self._on_change,
                label_selector=SERVICE_NAME_LABEL,
            ),
        }
        for informer in self._informers.values():
            informer.start()
        await asyncio.gather(*(i.synced.wait() for i in self._informers.values()))
        await self._sync_services()
        pods = Informer(
            self.cluster,
            "v1",
            "Pod",
            self._on_pod,
            field_selector=f"spec.nodeName={cfg.node_name}",
        )
        self._informers["pods"] = pods
        pods.start()
        await pods.synced.wait()
        self._loops.append(asyncio.create_task(self._loop(), name="kubelet"))
        logger.info("node %s is up; kubelet server on 127.0.0.1:%d", cfg.node_name, self.port)

    async def stop(self) -> None:
        """Stop every pod's processes (SIGTERM, grace, SIGKILL), the proxies and the servers.

        Each step on its own: one failing (the API server already gone, say) must not leave
        the others running.
        """
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await asyncio.gather(*(i.stop() for i in self._informers.values()), return_exceptions=True)
        results = await asyncio.gather(
            *(pod.stop() for pod in self.pods.values()), return_exceptions=True
        )
        for task in self._tasks:  # terminations in flight: their processes are stopped now
            task.cancel()
        results += await asyncio.gather(*self._tasks, return_exceptions=True)
        proxies = [proxy for ports in self.proxies.values() for proxy in ports.values()]
        self.proxies.clear()
        results += await asyncio.gather(*(p.stop() for p in proxies), return_exceptions=True)
        if self.simulator is not None:
            results += await asyncio.gather(self.simulator.stop(), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.warning("stopping the kubelet: %r", result)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
        for client in (self.cluster, self._proxy_cluster):
            if client is not None:
                await client.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                logger.error("kubelet task %s failed: %r", name, exc)

        task.add_done_callback(done)

    def _on_change(self, _type: str, _obj: Obj) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            try:
                await self._sync_services()
                for pod in list(self.pods.values()):
                    if pod.version != pod.reported:
                        await self._write_status(pod)
                self._write_services_file()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the kubelet's pass failed; retrying")
                await asyncio.sleep(1)

    async def _api(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
    ) -> Obj:
        """One call to the API server as the node; raises ApiError for 4xx/5xx."""
        assert self.cluster is not None
        return await self.cluster.request(method, url, json=body, content_type=content_type)

    # -- the Node and its Lease --

    def _node(self) -> Obj:
        name = self.config.node_name
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": arch,
                },
            },
            "spec": {},
            "status": self._node_status(arch),
        }

    def _node_status(self, arch: str) -> Obj:
        heartbeat = now_iso()
        capacity = {
            "cpu": str(self.config.cpu_capacity),
            "memory": f"{_mem_total_kib()}Ki",
            "pods": str(self.config.max_pods),
            "ephemeral-storage": f"{_disk_kib(self.config.state_dir)}Ki",
        }
        conditions = [
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "KubeletReady", "kubelet is posting ready status"),
        ]
        return {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                {
                    "type": type_,
                    "status": "True" if type_ == "Ready" else "False",
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": heartbeat,
                    "lastTransitionTime": self._ready_since,
                }
                for type_, reason, message in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"),
                "systemUUID": _read("/sys/class/dmi/id/product_uuid"),
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": "local-process://1",
                "kubeletVersion": self._version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        }

    async def _register_node(self) -> None:
        node = self._node()
        try:
            created = await self._api("POST", "/api/v1/nodes", node)
        except ApiError as exc:
            if exc.status != 409:
                raise
            labels = {"metadata": {"labels": node["metadata"]["labels"]}}
            created = await self._api(
                "PATCH",
                f"/api/v1/nodes/{self.config.node_name}",
                labels,
                content_type="application/merge-patch+json",
            )
        self._node_uid = created["metadata"]["uid"]
        await self._patch_node_status(node["status"])

    async def _patch_node_status(self, status: Obj | None = None) -> None:
        if status is None:
            status = self._node()["status"]
        await self._api(
            "PATCH",
            f"/api/v1/nodes/{self.config.node_name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    async def _renew_lease(self) -> None:
        name = self.config.node_name
        url = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        try:
            await self._api(
                "PATCH",
                url,
                {"spec": {"holderIdentity": name, "renewTime": _micro_time()}},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": name, "uid": self._node_uid}
                    ],
                },
                "spec": {
                    "holderIdentity": name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": _micro_time(),
                },
            }
            await self._api("POST", url.rsplit("/", 1)[0], lease)

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(LEASE_RENEW)
            beats += 1
            try:
                await self._renew_lease()
                if beats % NODE_STATUS_EVERY == 0:
                    await self._patch_node_status()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("node heartbeat failed: %r", exc)

    # -- pods --

    def _on_pod(self, kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        uid = meta["uid"]
        local = self.pods.get(uid)
        if kind == "DELETED":
            if local is not None:
                self._forget(local)
            return
        if meta.get("deletionTimestamp"):
            if uid not in self._terminating:
                self._terminating.add(uid)
                self._spawn(self._terminate(local, obj), f"terminate {meta['name']}")
            return
        if local is None and obj.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            self._admit(obj)

    def _admit(self, obj: Obj) -> None:
        """Take a new pod on: its IP, its directory, its process (or ErrImagePull)."""
        image = obj["spec"]["containers"][0].get("image", "")
        runnable = image in self.config.images
        make = LocalPod if self.simulator is None else self.simulator.pod
        local = make(
            obj,
            prepare=self._prepare,
            on_change=self._wake.set,
            runnable=runnable,
            image_message=(
                f'Failed to pull image "{image}": this node runs only the images '
                f"{sorted(self.config.images)}, as local processes"
            ),
            grace_max=self.config.grace_max,
            pod_ip=self._addresses.take(),
            host_ip=HOST_IP,
        )
        self._addresses.used[local.pod_ip] = local
        workdir = self._workdir(local)
        shutil.rmtree(workdir, ignore_errors=True)  # a new pod of an old name starts afresh
        workdir.mkdir(parents=True, exist_ok=True)
        self.pods[local.uid] = local
        local.start()
        logger.info("started pod %s/%s (%s)", local.namespace, local.name, local.pod_ip)

    def _forget(self, local: LocalPod) -> None:
        """The Pod object is gone: stop what still runs, free its IP."""
        self.pods.pop(local.uid, None)
        self._sent.pop(local.uid, None)
        self._terminating.discard(local.uid)
        if self._addresses.used.get(local.pod_ip) is local:
            del self._addresses.used[local.pod_ip]
        self._spawn(local.stop(), f"stop {local.name}")
        self._wake.set()

    async def _terminate(self, local: LocalPod | None, obj: Obj) -> None:
        """Stop the pod within its grace, write its final status, delete it with grace 0."""
        meta = obj["metadata"]
        if local is not None:
            grace = meta.get("deletionGracePeriodSeconds")
            await local.stop(None if grace is None else float(grace))
            await self._write_status(local)
            logger.info("stopped pod %s/%s", local.namespace, local.name)
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        with contextlib.suppress(ApiError):  # gone already, or a new pod of the same name
            await self._api(
                "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", options
            )

    async def _write_status(self, pod: LocalPod) -> None:
        """PATCH pods/status when the status differs from what was last written."""
        assert self.cluster is not None
        async with self._status_lock:
            version, status = pod.version, pod.status()
            if self._sent.get(pod.uid) == status or pod.uid not in self.pods:
                pod.reported = version
                return
            try:
                await self.cluster.patch(
                    "v1", "Pod", pod.namespace, pod.name, {"status": status}, subresource="status"
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
                return  # deleted: the watch's DELETED event forgets it
            self._sent[pod.uid] = status
            pod.reported = version

    def _workdir(self, pod: LocalPod) -> Path:
        return self.config.state_dir / "pods" / pod.namespace / pod.name

    async def _prepare(self, pod: LocalPod) -> Launch:
        """Translate the pod's container to a local process (called when it first starts)."""
        assert self.cluster is not None
        container, ns = pod.container, pod.namespace
        secrets = await referenced_secrets(self.cluster, ns, container)
        config_maps = await referenced_config_maps(self.cluster, ns, container)
        fields = {
            "metadata": pod.meta,
            "spec": pod.spec,
            "status": {
                "podIP": pod.pod_ip,
                "podIPs": [{"ip": pod.pod_ip}],
                "hostIP": pod.host_ip,
                "hostIPs": [{"ip": pod.host_ip}],
            },
        }
        env = container_env(container, secrets, config_maps, fields)
        workdir = self._workdir(pod)
        mounts = self._mounts(pod, workdir)
        kubeconfig = await self._service_account(pod, workdir, fields)

        ports: dict[int, int] = {}
        names: dict[str, int] = {}
        for p in container.get("ports", []):
            if "name" in p:
                names[p["name"]] = int(p["containerPort"])
        entrypoint = self.config.images[container.get("image", "")]
        command = [expand(arg, env) for arg in local_command(container, entrypoint)]
        command = self._rewrite_ports(command, ports)
        env = self._rewrite_port_env(env, container, ports)
        log_path = container.get("terminationMessagePath", "/dev/termination-log")
        termination_log = workdir / "termination-log"
        # The executable is this machine's already (local_command); only the arguments move.
        command = command[:1] + [
            str(termination_log) if arg == log_path else self._translate(arg, mounts)
            for arg in command[1:]
        ]
        env = {k: self._translate(v, mounts) for k, v in env.items()}
        base = {"PATH": os.environ.get("PATH", ""), "HOSTNAME": pod.name, "PYTHONUNBUFFERED": "1"}
        if kubeconfig is not None:
            base["KUBECONFIG"] = str(kubeconfig)
        for var in ("LANG", "LC_ALL", "SYSTEMROOT"):
            if var in os.environ:
                base[var] = os.environ[var]
        if "/tmp" in mounts:
            base["TMPDIR"] = mounts["/tmp"]
        limits = (container.get("resources") or {}).get("limits") or {}
        return Launch(
            command=command,
            env={**base, **self.config.pod_env, **env},
            workdir=workdir,
            ports=ports,
            port_names=names,
            cpus=self._cpus(cpu_count(limits.get("cpu"))),
            termination_log=termination_log,
        )

    async def _service_account(
        self, pod: LocalPod, workdir: Path, fields: Mapping[str, Any]
    ) -> Path | None:
        """The pod's kubeconfig with a bound ServiceAccount token; None when not mounted.

        The ServiceAccount admission plugin has already decided (from the pod's and the
        ServiceAccount's ``automountServiceAccountToken``): it adds a projected
        ``kube-api-access-*`` volume with a token source exactly when the token is mounted.
        That volume is filled in too (token, ca.crt, namespace), for code that reads it from a
        translated path.
        """
        sa = pod.spec.get("serviceAccountName") or "default"
        mounted = any(
            "serviceAccountToken" in source
            for volume in pod.spec.get("volumes") or []
            for source in (volume.get("projected") or {}).get("sources") or []
        )
        if not (mounted or pod.spec.get("automountServiceAccountToken") is True):
            return None
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.name,
                    "uid": pod.uid,
                },
            },
        }
        answer = await self._api(
            "POST", f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{sa}/token", request
        )
        token = str(answer["status"]["token"])
        self._project(pod, workdir, token, fields)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cluster",
                    "cluster": {
                        "server": self.config.api_url,
                        "certificate-authority": str(self.config.ca_file),
                    },
                }
            ],
            "users": [{"name": f"{pod.namespace}:{sa}", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {
                        "cluster": "cluster",
                        "user": f"{pod.namespace}:{sa}",
                        "namespace": pod.namespace,
                    },
                }
            ],
            "current-context": "pod",
        }
        path = workdir / "kubeconfig"
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _project(self, pod: LocalPod, workdir: Path, token: str, fields: Mapping[str, Any]) -> None:
        for volume in pod.spec.get("volumes") or []:
            target = workdir / "volumes" / volume["name"]
            if "projected" not in volume or not target.is_dir():
                continue  # not mounted by the container that runs
            for source in volume["projected"].get("sources") or []:
                files: dict[str, str] = {}
                if "serviceAccountToken" in source:
                    files[source["serviceAccountToken"].get("path", "token")] = token
                if source.get("configMap", {}).get("name") == "kube-root-ca.crt":
                    files["ca.crt"] = self.config.ca_file.read_text()
                for item in (source.get("downwardAPI") or {}).get("items") or []:
                    if "fieldRef" in item:
                        files[item["path"]] = field_value(item["fieldRef"]["fieldPath"], fields)
                for name, text in files.items():
                    (target / name).write_text(text)

    def _mounts(self, pod: LocalPod, workdir: Path) -> dict[str, str]:
        """Each volume mount as a directory of the pod's own (emptyDir semantics for all)."""
        mounts = {}
        for mount in pod.container.get("volumeMounts", []):
            local = workdir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/") or "/"] = str(local)
        return mounts

    @staticmethod
    def _rewrite_ports(command: list[str], ports: dict[int, int]) -> list[str]:
        """``--port N``, ``--grpc-port N`` (any ``--*-port``), and their ``=N`` forms get a free
        loopback port each; ``ports`` records containerPort -> loopback port."""
        out: list[str] = []
        i = 0
        while i < len(command):
            arg = command[i]
            flag, _, value = arg.partition("=")
            if _PORT_FLAG.fullmatch(flag):
                if value.isdigit():
                    out.append(f"{flag}={ports.setdefault(int(value), free_port())}")
                    i += 1
                    continue
                if not value and i + 1 < len(command) and command[i + 1].isdigit():
                    out += [arg, str(ports.setdefault(int(command[i + 1]), free_port()))]
                    i += 2
                    continue
            out.append(arg)
            i += 1
        return out

    @staticmethod
    def _rewrite_port_env(
        env: dict[str, str], container: Mapping[str, Any], ports: dict[int, int]
    ) -> dict[str, str]:
        """``*_PORT`` variables naming a declared containerPort move with it to a free port.

        Processes share this machine's loopback: two pods (or two local clusters) must not
        both listen on 8080. The port is taken from ``ports`` when ``--port`` already moved
        it, else chosen here; probes and Services then find it through ``ports``.
        """
        declared = {int(p["containerPort"]) for p in container.get("ports", [])}
        out = dict(env)
        for name, value in env.items():
            if name.endswith("_PORT") and value.isdigit() and int(value) in declared:
                out[name] = str(ports.setdefault(int(value), free_port()))
        return out

    def _translate(self, text: str, mounts: Mapping[str, str]) -> str:
        """Mount paths to the pod's directories; Service names and aliases to loopback."""
        for path in sorted(mounts, key=len, reverse=True):
            if text == path or text.startswith(path + "/"):
                text = mounts[path] + text[len(path) :]
                break
        for alias, target in self.config.aliases.items():
            text = text.replace(alias, target)

        def service(m: re.Match[str]) -> str:
            if not self.proxies.get((m["ns"], m["svc"])):
                return m.group(0)
            if m["port"] is None:
                return "127.0.0.1"
            address = self.service_address(m["ns"], m["svc"], int(m["port"]))
            return m.group(0) if address is None else address

        return _SERVICE_HOST.sub(service, text)

    def _cpus(self, count: int | None) -> frozenset[int] | None:
        if count is None or not hasattr(os, "sched_getaffinity"):
            return None
        available = sorted(os.sched_getaffinity(0))
        if count >= len(available):
            return None
        start = self._cpu_turn % len(available)
        self._cpu_turn += count
        return frozenset((available * 2)[start : start + count])

    # -- Services --

    def _service_ports(self, ns: str, name: str) -> list[tuple[ServiceProxy, int]]:
        svc = self._services.get((ns, name))
        proxies = self.proxies.get((ns, name), {})
        if svc is None:
            return []
        return [
            (proxies[_port_key(p)], int(p["port"]))
            for p in svc["spec"].get("ports", [])
            if _port_key(p) in proxies
        ]

    async def _sync_services(self) -> None:
        """A loopback proxy per port of each Service with a selector; none for the rest."""
        if self.simulator is not None:
            return  # no processes: nothing to proxy to
        live = {
            Informer.key(s): s
            for s in self._informers["services"].objects.values()
            if s.get("spec", {}).get("selector")
        }
        self._services = live
        for key in list(self.proxies):
            wanted = {_port_key(p) for p in live.get(key, {}).get("spec", {}).get("ports", [])}
            for pkey in [p for p in self.proxies[key] if p not in wanted]:
                await self.proxies[key].pop(pkey).stop()
            if not self.proxies[key]:
                del self.proxies[key]
        for key, svc in live.items():
            for port in svc["spec"].get("ports", []):
                pkey = _port_key(port)
                if pkey in self.proxies.get(key, {}):
                    continue
                http = str(port.get("name", "")).startswith("http") or str(
                    port.get("appProtocol", "")
                ).startswith("http")
                label = f"{key[0]}/{key[1]}:{port['port']}"
                proxy = ServiceProxy(label, self._endpoints_of(key, pkey), http=http)
                await proxy.start()
                self.proxies.setdefault(key, {})[pkey] = proxy
                logger.info("service %s -> 127.0.0.1:%d", label, proxy.port)

    def _endpoints_of(self, key: tuple[str, str], pkey: str) -> Callable[[], list[int]]:
        """The loopback ports of the ready endpoints of one Service port, when asked."""

        def endpoints() -> list[int]:
            svc = self._services.get(key)
            if svc is None:
                return []
            port = next((p for p in svc["spec"].get("ports", []) if _port_key(p) == pkey), None)
            if port is None:
                return []
            found = []
            for slice_ in list(self._informers["slices"].objects.values()):
                meta = slice_["metadata"]
                if (meta.get("namespace"), meta["labels"].get(SERVICE_NAME_LABEL)) != key:
                    continue
                number = next(
                    (
                        p.get("port")
                        for p in slice_.get("ports") or []
                        if (p.get("name") or "") == (port.get("name") or "")
                    ),
                    None,
                )
                if number is None:
                    continue
                for endpoint in slice_.get("endpoints") or []:
                    if (endpoint.get("conditions") or {}).get("ready") is False:
                        continue
                    for address in endpoint.get("addresses") or []:
                        pod = self._addresses.used.get(address)
                        if pod is None or not pod.ready or pod.terminating or pod.launch is None:
                            continue
                        if (local := pod.launch.local_port(int(number))) is not None:
                            found.append(local)
            return found

        return endpoints

    def service_address(self, namespace: str, name: str, port: int | None = None) -> str | None:
        """``127.0.0.1:<port>`` of a Service port (its first port when none is named)."""
        for proxy, number in self._service_ports(namespace, name):
            if port is None or number == port:
                return f"127.0.0.1:{proxy.port}"
        return None

    def services(self) -> Obj:
        """The loopback address of every Service port, by ``<namespace>/<name>`` and port."""
        result: Obj = {}
        for ns, name in sorted(self.proxies):
            for proxy, number in self._service_ports(ns, name):
                address = f"127.0.0.1:{proxy.port}"
                result.setdefault(f"{ns}/{name}", {})[str(number)] = {
                    "dns": f"{name}.{ns}.svc:{number}",
                    "address": address,
                    "url": f"http://{address}" if proxy.http else None,
                }
        return result

    def _write_services_file(self) -> None:
        path = self.config.services_file
        snapshot = self.services()
        if path is None or snapshot == self._written_services:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        self._written_services = snapshot

    # -- the kubelet server: logs for `kubectl logs`, health --

    async def _serve(self) -> None:
        cfg = self.config
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cfg.ca_file))
        context.load_cert_chain(str(cfg.serving_cert), str(cfg.serving_key))
        context.verify_mode = ssl.CERT_REQUIRED  # the API server's kubelet-client certificate
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST_IP, 0, ssl_context=context).start()
        self.port = int(self._runner.addresses[0][1])

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        ns, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        pod = next((p for p in self.pods.values() if p.key == (ns, name)), None)
        if pod is None or pod.container["name"] != container:
            raise web.HTTPNotFound(text=f'container "{container}" in pod "{name}" is not found\n')
        path = pod.log_path
        if path is None or not path.exists():
            waiting = pod.state.get("waiting", {})
            reason = waiting.get("reason", "ContainerCreating")
            raise web.HTTPBadRequest(
                text=f'container "{container}" in pod "{name}" is waiting to start: {reason}\n'
            )
        data = path.read_bytes()
        offset = len(data)
        if (tail := request.query.get("tailLines")) is not None and tail.isdigit():
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[len(lines) - int(tail) :]) if int(tail) else b""
        if (limit := request.query.get("limitBytes")) is not None and limit.isdigit():
            data = data[: int(limit)]
        if request.query.get("follow") not in ("true", "1"):
            return web.Response(body=data, content_type="text/plain")
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        await response.write(data)
        while True:
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            if chunk:
                offset += len(chunk)
                await response.write(chunk)
            elif pod.done or pod.uid not in self.pods:
                break
            await asyncio.sleep(LOG_FOLLOW_POLL)
        await response.write_eof()
        return response


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def _mem_total_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 8 * 1024 * 1024


def _disk_kib(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).total // 1024


def _client(server: str, ca: Path, cert: Path, key: Path) -> Cluster:
    """The API client of one identity (a client certificate signed by the cluster CA)."""
    return Cluster(
        kopf.ConnectionInfo(
            server=server,
            ca_path=str(ca),
            certificate_path=str(cert),
            private_key_path=str(key),
        )
    )
