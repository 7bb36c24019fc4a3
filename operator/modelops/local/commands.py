"""``python -m modelops local up|demo|down``.

``up`` runs the local cluster in the foreground (state in ``./.modelops``) until Ctrl-C,
SIGTERM or ``modelops local down``; ``demo`` runs the narrated demo; ``down`` stops a running
``up`` (and any of its processes an abrupt end left behind).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from modelops.local import processes
from modelops.local.cluster import LocalCluster

STATE_DIR = Path(".modelops")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM and SIGHUP end the cluster like Ctrl-C does: through the same clean-up path.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(action: str, state_dir: Path = STATE_DIR) -> int:
    # Ctrl-C even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if action == "down":
            return down(state_dir)
        if (running := _running(state_dir)) is not None:
            print(
                f"a local cluster (pid {running}) already runs in {state_dir}/: "
                "stop it with `modelops local down`",
                file=sys.stderr,
            )
            return 1
        if action == "up":
            return up(state_dir)
        from modelops.local.demo import run_demo

        return run_demo(state_dir, on_start=_register)
    except KeyboardInterrupt:
        print("\ninterrupted: everything the local cluster started is stopped", file=sys.stderr)
        return 130


def _running(state_dir: Path) -> int | None:
    try:
        pid = int(json.loads((state_dir / "local.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if pid != os.getpid() else None


def up(state_dir: Path) -> int:
    cluster = LocalCluster(state_dir)
    print("starting the local cluster (control plane, S3 server, kubelet, operator) ...")
    try:
        cluster.start()
        info = _register(cluster)
        seeded = seed_datasets(cluster)
        version = cluster.control_plane.version()["gitVersion"]
        print(
            f"""
API server   {info["api"]}  (Kubernetes {version}, RBAC on)
kubeconfig   export KUBECONFIG={info["kubeconfig"]}
             kubectl apply -k manifests/samples; kubectl get modelops
operator     kubectl -n modelops-system logs deploy/modelops-operator
S3           {info["s3"]["endpoint"]}  bucket {info["s3"]["bucket"]}  datasets: {seeded}
             (AWS_ACCESS_KEY_ID={info["s3"]["accessKey"]}
              AWS_SECRET_ACCESS_KEY={info["s3"]["secretKey"]})
images       only {info["runtimeImage"]} and the operator's run (as local processes)
services     {info["services"]} (each Service's loopback address, listed below as they come)
logs         {info["logs"]}, {info["controlPlaneLogs"]}, kubectl logs <pod>

Ctrl-C or `modelops local down` stops everything.""",
            flush=True,
        )
        shown: dict[str, str] = {}
        while True:
            time.sleep(1)
            assert cluster.kubelet is not None
            for service, ports in cluster.kubelet.services().items():
                for port, where in ports.items():
                    line = f"{where['dns']} -> {where['url'] or where['address']}"
                    if shown.get(f"{service}:{port}") != line:
                        shown[f"{service}:{port}"] = line
                        print(f"service {service}:{port}  {line}", flush=True)
            if (why := cluster.failure()) is not None:
                print(f"the local cluster stopped working: {why}", file=sys.stderr)
                return 1
    finally:
        cluster.stop()
        with contextlib.suppress(OSError):
            (state_dir / "local.json").unlink()


def seed_datasets(cluster: LocalCluster) -> str:
    """The samples' datasets, from scikit-learn's bundled data: iris (CSV) and wine (Parquet)."""
    import io

    from sklearn.datasets import load_wine

    from modelops.local.scenario import DATASET_KEY, iris_frame
    from modelops.storage import Location

    store = cluster.store()
    store.put(Location("modelops", DATASET_KEY), iris_frame().to_csv(index=False).encode())
    buffer = io.BytesIO()
    load_wine(as_frame=True).frame.to_parquet(buffer)
    store.put(Location("modelops", "datasets/wine.parquet"), buffer.getvalue())
    return f"s3://modelops/{DATASET_KEY}, s3://modelops/datasets/wine.parquet"


def _register(cluster: LocalCluster) -> dict[str, Any]:
    """Write ``local.json``: how to reach the cluster, and what ``down`` must stop."""
    info = cluster.info()
    info["groups"] = sorted(processes.tracked())
    (cluster.state_dir / "local.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _ours(pgid: int) -> bool:
    """Whether the group still runs one of ours (and not something that reused the id)."""
    try:
        command = Path(f"/proc/{pgid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"weed" in command or b"modelops" in command or b"controlplane" in command


def down(state_dir: Path) -> int:
    info_path = state_dir / "local.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        print(f"no local cluster runs in {state_dir}/", file=sys.stderr)
        return 0
    pid = int(info["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises ProcessLookupError once it is gone
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    # A clean stop removes local.json; if it is still there, `up` ended abruptly: stop the
    # groups it left (pods die with their parent thread, the S3 server and operator may not).
    if info_path.exists():
        for pgid in info.get("groups", []):
            if _ours(int(pgid)):
                processes.kill_group(int(pgid), grace=5)
    with contextlib.suppress(OSError):
        info_path.unlink()
    print("the local cluster is stopped")
    return 0
