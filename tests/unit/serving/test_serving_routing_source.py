"""Routing tables from a file (polled), kubeconfig reading and the source chosen from the
environment; no network. The ConfigMap source against a real API server is in
tests/integration/test_routing_source.py."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelops.serving.routing_source import (
    ConfigMapSource,
    FileSource,
    KubeAccess,
    from_environment,
)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_file_source_submits_each_new_content_once(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    got: list[str | bytes] = []
    task = asyncio.create_task(FileSource(path, interval=0.01).run(got.append))
    try:
        await asyncio.sleep(0.05)  # missing file: nothing, no crash
        assert got == []
        path.write_text('{"a": 1}')
        await until(lambda: len(got) == 1)
        path.write_text('{"a": 1}')  # touched, same content: not submitted again
        await asyncio.sleep(0.05)
        tmp = tmp_path / "new"
        tmp.write_text('{"a": 2}')
        tmp.replace(path)  # atomic replace, as editors and ConfigMap mounts do
        await until(lambda: len(got) == 2)
        assert got == [b'{"a": 1}', b'{"a": 2}']
    finally:
        task.cancel()


async def test_configmap_source_survives_an_unreachable_api_server() -> None:
    access = KubeAccess(server="http://127.0.0.1:9")  # nothing listens on the discard port
    source = ConfigMapSource(access, "default", "x", max_backoff=0.05)
    task = asyncio.create_task(source.run(lambda text: None))
    await asyncio.sleep(0.3)
    assert not task.done()  # still retrying
    task.cancel()


def test_kubeconfig_with_token_file_and_inline_ca(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a CA certificate")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.crt"),
         "-days", "1", "-subj", "/CN=ca"],
        check=True, capture_output=True,
    )  # fmt: skip
    pem = (tmp_path / "ca.crt").read_bytes()
    token = tmp_path / "token"
    token.write_text("first\n")
    config: dict[str, Any] = {
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://example:6443/",
                    "certificate-authority-data": base64.b64encode(pem).decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": {"tokenFile": str(token)}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "current-context": "x",
    }
    path = tmp_path / "config"
    path.write_text(json.dumps(config))
    access = KubeAccess.from_kubeconfig(path)
    assert access.server == "https://example:6443" and access.namespace == "ml"
    assert isinstance(access.ssl, ssl.SSLContext) and access.ssl.get_ca_certs()
    assert access.auth_headers() == {"Authorization": "Bearer first"}
    token.write_text("rotated")  # bound tokens rotate: read at every connect
    assert access.auth_headers() == {"Authorization": "Bearer rotated"}

    config["clusters"][0]["cluster"] = {"server": "https://x", "insecure-skip-tls-verify": True}
    config["users"][0]["user"] = {"token": "t"}
    path.write_text(json.dumps(config))
    access = KubeAccess.from_kubeconfig(path)
    assert access.ssl is False and access.auth_headers() == {"Authorization": "Bearer t"}


def test_source_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(from_environment(tmp_path / "r.json"), FileSource)
    monkeypatch.delenv("MODELOPS_ROUTING_CONFIGMAP", raising=False)
    with pytest.raises(RuntimeError, match="MODELOPS_ROUTING_CONFIGMAP"):
        from_environment(None)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("MODELOPS_ROUTING_CONFIGMAP", "iris-routing")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    source = from_environment(None)
    assert isinstance(source, ConfigMapSource)
    assert source.url == "http://127.0.0.1:1/api/v1/namespaces/team-a/configmaps"
    assert source.name == "iris-routing"
