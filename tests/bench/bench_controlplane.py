"""Control-plane benchmark: `python tests/bench/bench_controlplane.py [--runs N]` prints numbers.

For each run: start the control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) in a fresh directory, time start -> ``/readyz`` and start -> the ``default``
ServiceAccount (the controller-manager working), read each component's resident memory
after 5 s, and time the stop. Then the same for the whole local cluster (control plane, S3
server, kubelet, the operator's Deployment available). No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import modelops.local  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))

from modelops.local.cluster import LocalCluster
from modelops.local.controlplane import ControlPlane


def one_control_plane(directory: Path) -> dict[str, float]:
    cp = ControlPlane(directory)
    started = time.monotonic()
    cp.start()
    ready = cp.ready_seconds
    time.sleep(5)
    memory = cp.memory_bytes()
    stop_started = time.monotonic()
    cp.stop()
    return {
        "start to default ServiceAccount (s)": ready,
        "start to return (s)": stop_started - started - 5,
        "stop (s)": time.monotonic() - stop_started,
        **{f"RSS {name} (MiB)": value / 2**20 for name, value in memory.items()},
        "RSS total (MiB)": sum(memory.values()) / 2**20,
    }


def one_local_cluster(directory: Path) -> dict[str, float]:
    cluster = LocalCluster(directory)
    started = time.monotonic()
    cluster.start()
    up = time.monotonic() - started
    stop_started = time.monotonic()
    cluster.stop()
    return {
        "local cluster up, operator available (s)": up,
        "local cluster stop (s)": time.monotonic() - stop_started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, value in one_control_plane(Path(tmp) / f"cp-{run}").items():
                rows.setdefault(name, []).append(value)
            for name, value in one_local_cluster(Path(tmp) / f"lc-{run}").items():
                rows.setdefault(name, []).append(value)
    width = max(map(len, rows))
    print(f"control plane, {args.runs} runs: median (min..max)")
    for name, values in rows.items():
        print(
            f"  {name.ljust(width)}  {statistics.median(values):8.1f}"
            f"  ({min(values):.1f}..{max(values):.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
