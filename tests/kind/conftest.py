"""A real cluster for the ``kind`` tier, or a clear reason to skip it.

Runs against, in order of preference:

- the cluster of ``MODELOPS_KIND_KUBECONFIG`` (an existing cluster you chose; the ambient
  ``KUBECONFIG`` is never used, so these tests cannot touch a cluster by accident), or
- a new kind cluster made with pytest-kind (``pip install -e '.[kind]'``), which needs a Docker
  engine (``docker info``) and the ``kind`` and ``kubectl`` binaries on PATH (pytest-kind would
  otherwise download them). ``MODELOPS_KIND_KEEP=1`` keeps it afterwards.

Images are built from images/ (skip with ``MODELOPS_KIND_SKIP_BUILD=1`` when they exist) and
loaded into kind; the operator and MinIO come from manifests/overlays/dev.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_NAME = "modelops-e2e"
IMAGES = {
    "modelops-operator:dev": "images/operator/Dockerfile",
    "modelops-runtime:dev": "images/runtime/Dockerfile",
}


def skip_reason() -> str | None:
    """Why the kind tier cannot run here; None when it can."""
    if os.environ.get("MODELOPS_KIND_KUBECONFIG"):
        return None if shutil.which("kubectl") else "kubectl is not on PATH"
    missing = [b for b in ("docker", "kind", "kubectl") if shutil.which(b) is None]
    if missing:
        return (
            f"no real cluster: {', '.join(missing)} not on PATH (needs a Docker engine with "
            "kind and kubectl, or MODELOPS_KIND_KUBECONFIG=<kubeconfig of a cluster to use>)"
        )
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return f"no real cluster: `docker info` failed (no Docker engine): {info.stderr[-200:]}"
    if importlib.util.find_spec("pytest_kind") is None:
        return "pytest-kind is not installed: pip install -e '.[kind]' (or make e2e-kind)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("kind") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def _kind_cluster(tmp: Path) -> Iterator[Path]:
    from pytest_kind import KindCluster  # the kind extra; skip_reason checked it is installed

    options = {"kubeconfig": tmp / "kubeconfig"}
    accepted = inspect.signature(KindCluster).parameters
    for name, binary in (("kind_path", "kind"), ("kubectl_path", "kubectl")):
        if name in accepted:  # so pytest-kind downloads nothing
            options[name] = Path(shutil.which(binary) or binary)
    cluster = KindCluster(CLUSTER_NAME, **options)
    cluster.create()
    try:
        if not os.environ.get("MODELOPS_KIND_SKIP_BUILD"):
            for image, dockerfile in IMAGES.items():
                subprocess.run(
                    ["docker", "build", "-f", dockerfile, "-t", image, "."], cwd=ROOT, check=True
                )
        for image in IMAGES:
            cluster.load_docker_image(image)
        yield Path(cluster.kubeconfig_path)
    finally:
        if not os.environ.get("MODELOPS_KIND_KEEP"):
            cluster.delete()


@pytest.fixture(scope="session")
def kind_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The kubeconfig of the real cluster to use (made, and deleted after, when needed)."""
    given = os.environ.get("MODELOPS_KIND_KUBECONFIG")
    if given:
        yield Path(given)
        return
    yield from _kind_cluster(tmp_path_factory.mktemp("kind"))
