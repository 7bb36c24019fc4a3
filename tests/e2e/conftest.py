"""The local cluster (real control plane, kubelet, S3, operator), once for the end-to-end tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from modelops.local.cluster import LocalCluster

Kubectl = Callable[..., str]


@pytest.fixture(scope="package")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("local-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def kubectl(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    """``kubectl(*args) -> stdout`` against the local cluster (skips without kubectl)."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not on PATH")
    cache = tmp_path_factory.mktemp("kubectl-cache")  # not the user's ~/.kube/cache
    config = str(local_cluster.kubeconfig)

    def run(*args: str) -> str:
        command = [binary, "--kubeconfig", config, "--cache-dir", str(cache), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
        return done.stdout

    return run
