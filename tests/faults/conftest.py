"""Fault tests: their fixtures are in ``support.cluster_fixtures`` (a cluster of their own);
here, the fault proxy in front of its API server and an operator that talks through it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelops.local.cluster import LocalCluster
from modelops.local.s3server import S3Server
from support.faultproxy import FaultProxy
from support.operator import OperatorProcess


@pytest.fixture
def proxy(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the package's API server, with no rule yet; its
    random seed is the test's indirect parameter (0 without one)."""
    pki = local_cluster.control_plane.pki
    seed = getattr(request, "param", 0)
    with FaultProxy(
        local_cluster.api_url,
        str(pki.ca_cert),
        str(pki.cert("apiserver")),  # signed by the cluster CA for 127.0.0.1
        str(pki.key("apiserver")),
        seed=seed,
    ) as running:
        yield running


@pytest.fixture
def operator_via_proxy(
    operator_kubeconfig: Path, proxy: FaultProxy, s3: S3Server, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The real operator, scoped to the test's namespace, whose API calls all go through
    ``proxy``; the test fails if it exited by itself under the faults."""
    config = yaml.safe_load(operator_kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = proxy.url
    kubeconfig = tmp_path / "via-proxy.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    process = OperatorProcess(kubeconfig, s3, tmp_path / "logs", MODELOPS_NAMESPACES=namespace)
    process.start()
    yield process
    alive = process.alive()
    process.stop()
    assert alive, f"the operator exited under faults:\n{process.logs()[-3000:]}"
