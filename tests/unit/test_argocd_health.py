"""The Argo CD health checks (manifests/argocd/health/*.lua) on real status examples.

The scripts run in Lua 5.1, as in Argo CD (gopher-lua), without the libraries Argo CD
withholds; tests/data/argocd/<kind>.yaml holds, per kind, objects shaped as the controllers
write them and the health Argo CD must show for each.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from modelops.api.deployment import DeploymentPhase
from modelops.api.driftmonitor import DriftPhase
from modelops.api.modelversion import ModelVersionPhase
from modelops.api.trainingrun import TrainingPhase
from support.manifests import KUBECTL, MANIFESTS, ROOT, kustomize

lupa = pytest.importorskip("lupa.lua51", reason="lupa (Lua for Python) is not installed")

HEALTH = MANIFESTS / "argocd" / "health"
DATA = ROOT / "tests" / "data" / "argocd"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
KEY = "resource.customizations.health.modelops.dev_{kind}"
PHASES = {
    "TrainingRun": get_args(TrainingPhase),
    "ModelVersion": get_args(ModelVersionPhase),
    "Deployment": get_args(DeploymentPhase),
    "DriftMonitor": get_args(DriftPhase),
}


def _examples() -> dict[str, list[dict[str, Any]]]:
    found = {}
    for path in sorted(DATA.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        found[doc["kind"]] = doc["cases"]
    return found


EXAMPLES = _examples()
CASES = [(kind, case) for kind, cases in EXAMPLES.items() for case in cases]


def _scripts() -> dict[str, Path]:
    """Kind -> Lua file, as the Component maps them (`<argocd-cm key>=<file>`)."""
    component = yaml.safe_load((HEALTH / "kustomization.yaml").read_text())
    files = component["configMapGenerator"][0]["files"]
    prefix = KEY.format(kind="")
    return {
        key.removeprefix(prefix): HEALTH / name for key, name in (f.split("=", 1) for f in files)
    }


def health(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Run one health script on one object the way Argo CD does: `obj` in, a table out."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD opens only base, table, string, math (and a safe os); nothing may rely on more.
    lua.execute("io, os, debug, package, require, dofile, loadfile, load = nil")
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return {key: result[key] for key in result}


def test_every_kind_has_a_health_script() -> None:
    assert set(_scripts()) == set(PHASES)


def test_every_kind_has_status_examples() -> None:
    assert set(EXAMPLES) == set(PHASES)


@pytest.mark.parametrize("kind", sorted(PHASES))
def test_every_phase_of_the_api_has_a_status_example(kind: str) -> None:
    seen = {case["object"].get("status", {}).get("phase") for case in EXAMPLES[kind]}
    assert set(PHASES[kind]) <= seen
    assert None in seen, "an object the operator has not seen yet"


@pytest.mark.parametrize(
    "kind,case", CASES, ids=[f"{kind}: {case['name']}" for kind, case in CASES]
)
def test_health_script_reports_the_expected_health(kind: str, case: dict[str, Any]) -> None:
    result = health(_scripts()[kind].read_text(), case["object"])
    assert result["status"] == case["health"], result
    assert case.get("message", "") in result["message"], result


@pytest.mark.parametrize("kind", sorted(PHASES))
def test_health_script_never_fails_on_a_sparse_status(kind: str) -> None:
    script = _scripts()[kind].read_text()
    meta = {"name": "x", "namespace": "ml", "generation": 1}
    sparse: list[dict[str, Any]] = [{}, {"conditions": []}]
    for phase in (*PHASES[kind], "SomethingNew"):
        sparse += [{"phase": phase}, {"phase": phase, "observedGeneration": 1}]
        for type_ in ("Ready", "Registered", "Drifted"):
            for status in ("True", "False", "Unknown"):
                condition = {"type": type_, "status": status}
                sparse.append({"phase": phase, "observedGeneration": 1, "conditions": [condition]})
    for status in sparse:
        result = health(script, {"kind": kind, "metadata": meta, "status": status})
        assert result["status"] in ARGO_STATUSES, (status, result)
        assert isinstance(result["message"], str), (status, result)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (for `kubectl kustomize`) is missing")
def test_component_puts_each_script_unchanged_under_its_argocd_key(tmp_path: Path) -> None:
    stand_in = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {"url": "https://argocd.example.com"},
    }
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump(stand_in))
    component = os.path.relpath(HEALTH, tmp_path)  # kustomize refuses absolute paths here
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["argocd-cm.yaml"], "components": [component]})
    )
    [cm] = kustomize(tmp_path)
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"].pop("url") == "https://argocd.example.com"
    assert cm["data"] == {
        KEY.format(kind=kind): path.read_text() for kind, path in _scripts().items()
    }
