"""The process executor: kubelet, Job and Deployment controllers and Services, for one machine.

It watches batch/v1 Jobs, apps/v1 Deployments, Services and Pods through the API, and:

- creates the Pods a Job or a Deployment needs (owned by it, so deleting the owner removes
  them), and runs each one whose image is the runtime image as a local process group
  (:class:`~modelops.local.pods.LocalPod`); any other image is reported as ``ErrImagePull``;
- translates the pod to this machine: env from Secrets, ConfigMaps and the downward API,
  ``--port N`` rewritten to a free port (so replicas do not clash), volume mounts and the
  termination-message path to per-pod directories, in-cluster Service names and configured
  aliases (the object store's in-cluster address) to loopback addresses, ``KUBECONFIG`` set to
  the local API server, and a CPU limit turned into CPU affinity (as a cgroup limit would);
- reports Pod, Job and Deployment status like the kubelet and the controllers do, restarts
  containers per ``restartPolicy``, replaces pods when the template changes (rolling, within
  maxSurge/maxUnavailable), scales, and stops the processes of deleted objects;
- gives each Service port a loopback address (:class:`~modelops.local.proxy.ServiceProxy`)
  over the ready pods its selector matches, and writes the mapping to ``services_file``.

Simplifications: one container per pod (init containers and sidecars are not run), no
ReplicaSets (pods are owned by the Deployment), Job pods run one at a time, no TTL clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import random
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from modelops.controllers.cluster import ApiError, Cluster
from modelops.local.informer import Informer
from modelops.local.kubelet import (
    container_env,
    expand,
    local_command,
    referenced_config_maps,
    referenced_secrets,
)
from modelops.local.pods import Launch, LocalPod, now_iso
from modelops.local.proxy import ServiceProxy
from modelops.local.s3server import free_port

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
TICK = 0.25  # seconds between reconciliations when nothing wakes the loop

_SERVICE_HOST = re.compile(
    r"\b(?P<svc>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"
    r"\.svc(?:\.cluster\.local)?(?::(?P<port>\d+))?\b"
)


@dataclass
class ExecutorConfig:
    api_url: str
    kubeconfig: Path
    state_dir: Path  # pods' working directories and logs
    runtime_image: str  # the only image run; any other is ErrImagePull
    aliases: dict[str, str] = field(default_factory=dict)  # "host:port" -> "127.0.0.1:port"
    services_file: Path | None = None
    pod_env: dict[str, str] = field(default_factory=dict)  # added to every pod's env
    grace_max: float = 10.0  # cap on terminationGracePeriodSeconds


def template_hash(template: Mapping[str, Any]) -> str:
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _suffix(n: int = 5) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))


def _int_or_percent(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        share = total * float(value[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


def cpu_count(quantity: Any) -> int | None:
    """Whole CPUs for a CPU limit (``500m`` -> 1, ``2`` -> 2); None without a limit."""
    if quantity is None:
        return None
    text = str(quantity)
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(value))


def _condition(type_: str, ok: bool, reason: str, message: str = "") -> Obj:
    now = now_iso()
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "lastUpdateTime": now,
    }


class Executor:
    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self.pods: dict[str, LocalPod] = {}  # by the Pod's uid
        self.proxies: dict[tuple[str, str], dict[str, ServiceProxy]] = {}
        self._services: dict[tuple[str, str], Obj] = {}
        self._sent: dict[str, Obj] = {}  # status last written, by owner uid
        self._wake = asyncio.Event()
        self._stopping: set[asyncio.Task[None]] = set()
        self._cpu_turn = 0
        self._written_services: Obj | None = None
        self._task: asyncio.Task[None] | None = None
        self.cluster: Cluster | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        self._informers: dict[str, Informer] = {}

    # -- running --

    async def start(self) -> None:
        """Connect, sync the informers, and reconcile in the background until ``stop``."""
        self.cluster = Cluster(kopf.ConnectionInfo(server=self.config.api_url, insecure=True))
        self._watch_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
        )
        for key, (api_version, kind) in {
            "jobs": ("batch/v1", "Job"),
            "deployments": ("apps/v1", "Deployment"),
            "services": ("v1", "Service"),
            "pods": ("v1", "Pod"),
        }.items():
            informer = Informer(
                self._watch_session, self.config.api_url, api_version, kind, self._changed
            )
            self._informers[key] = informer
            informer.start()
        await asyncio.gather(*(i.synced.wait() for i in self._informers.values()))
        self._task = asyncio.create_task(self._loop(), name="executor")

    async def stop(self) -> None:
        """Stop every pod's processes (SIGTERM, then SIGKILL after the grace), and proxies."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Each step on its own: one failing must not leave the others running.
        await asyncio.gather(
            *(pod.stop() for pod in self.pods.values()), *self._stopping, return_exceptions=True
        )
        await asyncio.gather(*(i.stop() for i in self._informers.values()), return_exceptions=True)
        proxies = [proxy for ports in self.proxies.values() for proxy in ports.values()]
        self.proxies.clear()
        for result in await asyncio.gather(*(p.stop() for p in proxies), return_exceptions=True):
            if isinstance(result, Exception):
                logger.warning("stopping a service proxy failed: %r", result)
        if self._watch_session is not None:
            await self._watch_session.close()
        if self.cluster is not None:
            await self.cluster.close()

    def wake(self) -> None:
        self._wake.set()

    def _changed(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED" and obj.get("kind") == "Pod":
            pod = self.pods.get(obj["metadata"].get("uid", ""))
            if pod is not None and not pod.terminating:
                self._retire(pod, delete=False)  # deleted by someone else: stop its process
        self.wake()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the executor's reconciliation failed; retrying")
                await asyncio.sleep(1)

    async def _reconcile(self) -> None:
        jobs = list(self._informers["jobs"].objects.values())
        deployments = list(self._informers["deployments"].objects.values())
        owners = {o["metadata"]["uid"] for o in jobs + deployments}
        for pod in list(self.pods.values()):
            if pod.owner_uid not in owners and not pod.terminating:
                self._retire(pod, delete=True)  # its owner is gone
        # Services first: a pod prepared in this pass finds their loopback addresses.
        await self._sync_services()
        for job in jobs:
            await self._sync_job(job)
        for dep in deployments:
            await self._sync_deployment(dep)
        await self._report_pods()
        self._write_services_file()

    # -- pods --

    def owned(self, uid: str) -> list[LocalPod]:
        return [p for p in self.pods.values() if p.owner_uid == uid and not p.terminating]

    async def _create_pod(self, owner: Obj, name: str, labels: dict[str, str]) -> None:
        assert self.cluster is not None
        meta = owner["metadata"]
        template = owner["spec"]["template"]
        tmeta = template.get("metadata") or {}
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": {**(tmeta.get("labels") or {}), **labels},
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": owner["apiVersion"],
                        "kind": owner["kind"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": "local"},
        }
        created = await self.cluster.create_new(pod)
        if created is None:
            return  # the name was taken: the next reconciliation picks another
        image = pod["spec"]["containers"][0].get("image", "")
        runnable = image == self.config.runtime_image
        local = LocalPod(
            created,
            prepare=self._prepare,
            on_change=self.wake,
            runnable=runnable,
            image_message=(
                f"image {image!r} cannot run on the local cluster, which runs only "
                f"{self.config.runtime_image!r} (as local processes)"
            ),
            grace_max=self.config.grace_max,
        )
        self.pods[created["metadata"]["uid"]] = local
        local.start()
        logger.info("started pod %s/%s", local.namespace, local.name)

    def _retire(self, pod: LocalPod, *, delete: bool) -> None:
        """Out of Services at once; the Pod object deleted; the process stopped in the back."""
        pod.terminating = True
        pod.ready = False
        self.pods.pop(pod.meta["uid"], None)

        async def retire() -> None:
            if delete and self.cluster is not None:
                with contextlib.suppress(ApiError):
                    await self.cluster.delete("v1", "Pod", pod.namespace, pod.name)
            await pod.stop()
            logger.info("stopped pod %s/%s", pod.namespace, pod.name)

        task = asyncio.create_task(retire(), name=f"retire {pod.name}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _prepare(self, pod: LocalPod) -> Launch:
        """Translate the pod's container to a local process (called when it first starts)."""
        assert self.cluster is not None
        container, ns = pod.container, pod.namespace
        secrets = await referenced_secrets(self.cluster, ns, container)
        config_maps = await referenced_config_maps(self.cluster, ns, container)
        fields = {
            "metadata": pod.meta,
            "spec": {**pod.spec, "nodeName": "local"},
            "status": {"podIP": "127.0.0.1", "hostIP": "127.0.0.1"},
        }
        env = container_env(container, secrets, config_maps, fields)
        workdir = self.config.state_dir / "pods" / ns / pod.name
        mounts = self._mounts(pod, workdir)

        ports: dict[int, int] = {}
        names: dict[str, int] = {}
        for p in container.get("ports", []):
            if "name" in p:
                names[p["name"]] = int(p["containerPort"])
        command = [expand(arg, env) for arg in local_command(container)]
        command = self._rewrite_ports(command, ports)
        log_path = container.get("terminationMessagePath", "/dev/termination-log")
        termination_log = workdir / "termination-log"
        # The executable is this machine's already (local_command); only the arguments move.
        command = command[:1] + [
            str(termination_log) if arg == log_path else self._translate(arg, mounts)
            for arg in command[1:]
        ]
        env = {k: self._translate(v, mounts) for k, v in env.items()}
        base = {
            "PATH": os.environ.get("PATH", ""),
            "HOSTNAME": pod.name,
            "PYTHONUNBUFFERED": "1",
            "KUBECONFIG": str(self.config.kubeconfig),
        }
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
        """``--port N`` and ``--port=N`` get a free loopback port each; ports records it."""
        out: list[str] = []
        i = 0
        while i < len(command):
            arg = command[i]
            if arg == "--port" and i + 1 < len(command) and command[i + 1].isdigit():
                port = ports.setdefault(int(command[i + 1]), free_port())
                out += [arg, str(port)]
                i += 2
                continue
            if arg.startswith("--port=") and arg[7:].isdigit():
                arg = f"--port={ports.setdefault(int(arg[7:]), free_port())}"
            out.append(arg)
            i += 1
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
            proxies = self.proxies.get((m["ns"], m["svc"]))
            if not proxies:
                return m.group(0)
            if m["port"] is None:
                return "127.0.0.1"
            for proxy, port in self._service_ports(m["ns"], m["svc"]):
                if port == int(m["port"]):
                    return f"127.0.0.1:{proxy.port}"
            return m.group(0)

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

    async def _report_pods(self) -> None:
        assert self.cluster is not None
        for pod in list(self.pods.values()):
            if pod.terminating or pod.version == pod.reported:
                continue
            version = pod.version
            try:
                await self.cluster.patch(
                    "v1",
                    "Pod",
                    pod.namespace,
                    pod.name,
                    {"status": pod.status()},
                    subresource="status",
                )
            except ApiError as exc:
                if exc.status == 404:
                    self._retire(pod, delete=False)
                    continue
                raise
            pod.reported = version

    async def _patch_status(self, owner: Obj, status: Obj) -> None:
        """Write an owner's status when it changed since the last write (not on every tick)."""
        assert self.cluster is not None
        meta = owner["metadata"]
        if self._sent.get(meta["uid"]) == status:
            return
        api_version, kind = owner["apiVersion"], owner["kind"]
        with contextlib.suppress(ApiError):  # deleted meanwhile
            await self.cluster.patch(
                api_version,
                kind,
                meta["namespace"],
                meta["name"],
                {"status": status},
                subresource="status",
            )
            self._sent[meta["uid"]] = status

    # -- Jobs --

    async def _sync_job(self, job: Obj) -> None:
        meta, spec = job["metadata"], job["spec"]
        uid = meta["uid"]
        current = job.get("status") or {}
        sent = self._sent.get(uid, {})
        conditions = sent.get("conditions") or current.get("conditions") or []
        finished = any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in conditions
        )
        pods = [p for p in self.pods.values() if p.owner_uid == uid]
        active = [p for p in pods if not p.done and not p.terminating]
        if finished:
            for pod in active:
                self._retire(pod, delete=False)
            return
        if spec.get("suspend"):
            return
        succeeded = sum(p.phase == "Succeeded" for p in pods)
        failed = sum(p.phase == "Failed" for p in pods)
        completions = int(spec.get("completions") or 1)
        backoff_limit = int(spec.get("backoffLimit", 6))
        start = sent.get("startTime") or current.get("startTime") or now_iso()
        deadline = spec.get("activeDeadlineSeconds")
        elapsed = _seconds_since(start)

        status: Obj = {"startTime": start}
        outcome: tuple[str, str, str] | None = None
        if succeeded >= completions:
            outcome = ("Complete", "", "")
        elif failed > backoff_limit:
            outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the backoff limit")
        elif deadline is not None and elapsed > float(deadline):
            outcome = ("Failed", "DeadlineExceeded", "Job was active longer than its deadline")
        if outcome is not None:
            for pod in active:
                self._retire(pod, delete=False)
            type_, reason, message = outcome
            extra = "SuccessCriteriaMet" if type_ == "Complete" else "FailureTarget"
            status["conditions"] = [
                {**_condition(extra, True, reason or "CompletionsReached", message)},
                {**_condition(type_, True, reason or "CompletionsReached", message)},
            ]
            if type_ == "Complete":
                status["completionTime"] = now_iso()
            active = []
        elif not active:
            await self._create_pod(
                job,
                f"{meta['name'][:56]}-{_suffix()}",
                {"batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]},
            )
            active = [p for p in self.owned(uid) if not p.done]
        status |= {
            "active": len(active) or None,
            "ready": sum(p.ready for p in active),
            "succeeded": succeeded or None,
            "failed": failed or None,
        }
        await self._patch_status(job, status)

    # -- Deployments --

    async def _sync_deployment(self, dep: Obj) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        if meta.get("deletionTimestamp"):
            return
        wanted = int(spec.get("replicas", 1))
        current_hash = template_hash(spec["template"])
        pods = self.owned(meta["uid"])
        new = [p for p in pods if p.template_hash == current_hash]
        old = [p for p in pods if p.template_hash != current_hash]
        strategy = spec.get("strategy") or {}
        recreate = strategy.get("type") == "Recreate"
        rolling = strategy.get("rollingUpdate") or {}
        surge = _int_or_percent(rolling.get("maxSurge", "25%"), wanted, round_up=True)
        unavailable = _int_or_percent(rolling.get("maxUnavailable", "25%"), wanted, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1  # as the API server's validation would insist

        if recreate and old:
            for pod in old:
                self._retire(pod, delete=True)
            old = []
        # Old pods: the unready go first; the ready go while enough others stay ready.
        ready = sum(p.ready for p in new + old)
        for pod in sorted(old, key=lambda p: (p.ready, p.created)):
            if not pod.ready:
                self._retire(pod, delete=True)
                old.remove(pod)
            elif ready - 1 >= wanted - unavailable:
                self._retire(pod, delete=True)
                old.remove(pod)
                ready -= 1
        # New pods: up to the replicas, within the surge while old ones remain.
        room = wanted + surge - len(new) - len(old) if old else wanted - len(new)
        for _ in range(max(0, min(room, wanted - len(new)))):
            labels = {"pod-template-hash": current_hash}
            await self._create_pod(dep, f"{meta['name'][:46]}-{current_hash}-{_suffix()}", labels)
        # Scaled down: surplus new pods, unready and youngest first.
        new = [p for p in self.owned(meta["uid"]) if p.template_hash == current_hash]
        surplus = sorted(new, key=lambda p: (p.ready, -p.created))[: max(0, len(new) - wanted)]
        for pod in surplus:
            self._retire(pod, delete=True)

        pods = self.owned(meta["uid"])
        updated = [p for p in pods if p.template_hash == current_hash]
        ready = sum(p.ready for p in pods)
        available = ready >= wanted - unavailable
        complete = len(updated) == wanted == len(pods) and all(p.ready for p in updated)
        status: Obj = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, wanted - ready) or None,
            "conditions": self._deployment_conditions(dep, available, complete),
        }
        await self._patch_status(dep, status)

    def _deployment_conditions(self, dep: Obj, available: bool, complete: bool) -> list[Obj]:
        previous = {
            c["type"]: c for c in self._sent.get(dep["metadata"]["uid"], {}).get("conditions", [])
        }
        wanted = [
            (
                "Available",
                available,
                "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
            ),
            (
                "Progressing",
                True,
                "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                "The pods of the current template are available."
                if complete
                else "The pods of the current template are progressing.",
            ),
        ]
        result = []
        for type_, ok, reason, message in wanted:
            old = previous.get(type_)
            same = old is not None and (old["status"], old["reason"]) == (
                "True" if ok else "False",
                reason,
            )
            result.append(
                old if same and old is not None else _condition(type_, ok, reason, message)
            )
        return result

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
        live = {Informer.key(s): s for s in self._informers["services"].objects.values()}
        self._services = live
        for key in [k for k in self.proxies if k not in live]:
            for proxy in self.proxies.pop(key).values():
                await proxy.stop()
        for key, svc in live.items():
            ports = self.proxies.setdefault(key, {})
            for port in svc.get("spec", {}).get("ports", []):
                pkey = _port_key(port)
                if pkey in ports:
                    continue
                http = str(port.get("name", "")).startswith("http") or str(
                    port.get("appProtocol", "")
                ).startswith("http")
                label = f"{key[0]}/{key[1]}:{port['port']}"
                proxy = ServiceProxy(label, self._endpoints_of(key, pkey), http=http)
                await proxy.start()
                ports[pkey] = proxy
                logger.info("service %s -> 127.0.0.1:%d", label, proxy.port)

    def _endpoints_of(self, key: tuple[str, str], pkey: str) -> Any:
        def endpoints() -> list[int]:
            svc = self._services.get(key)
            if svc is None:
                return []
            port = next((p for p in svc["spec"].get("ports", []) if _port_key(p) == pkey), None)
            selector = svc["spec"].get("selector") or {}
            if port is None or not selector:
                return []
            target = port.get("targetPort", port["port"])
            found = []
            for pod in list(self.pods.values()):
                if pod.namespace != key[0] or not pod.ready or pod.terminating:
                    continue
                if pod.launch is None or any(pod.labels.get(k) != v for k, v in selector.items()):
                    continue
                if (local := pod.launch.local_port(target)) is not None:
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


def _port_key(port: Mapping[str, Any]) -> str:
    return str(port.get("name") or port["port"])


def _seconds_since(timestamp: str) -> float:
    started = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    return (datetime.datetime.now(datetime.UTC) - started).total_seconds()
