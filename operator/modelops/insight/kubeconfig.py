"""The user's kubeconfig, read as kubectl reads it, into credentials for the API client.

Files: ``--kubeconfig``, else ``$KUBECONFIG`` (a ``:``-separated list, merged: the first file
to set a name or ``current-context`` wins), else ``~/.kube/config``. The context is
``--context`` or ``current-context``; its namespace is the default namespace (else
``default``). Relative file paths in a kubeconfig are relative to that file, as kubectl
resolves them. Users authenticate with a client certificate, a bearer token (or
``tokenFile``), basic auth, or an ``exec`` credential plugin
(``client.authentication.k8s.io`` ExecCredential: the plugin's ``status.token`` or client
certificate is used); ``auth-provider`` entries are read for a cached ``access-token`` only.
See https://kubernetes.io/docs/concepts/configuration/organize-cluster-access-kubeconfig/.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import yaml

EXEC_TIMEOUT = 60.0


class KubeconfigError(Exception):
    """The kubeconfig is missing, unreadable, or names what it does not define."""


@dataclass(frozen=True)
class Login:
    """Credentials for :class:`~modelops.controllers.cluster.Cluster` and the namespace the
    context names (``default`` when none)."""

    info: kopf.ConnectionInfo
    namespace: str
    context: str


def kubeconfig_paths(explicit: str | None = None) -> list[Path]:
    """The files to merge, in order; raises KubeconfigError when there is none."""
    if explicit:
        return [Path(explicit).expanduser()]
    listed = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in listed.split(os.pathsep) if p.strip()]
    if paths:
        return paths
    home = Path("~/.kube/config").expanduser()
    if home.exists():
        return [home]
    raise KubeconfigError(
        "no kubeconfig: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config"
    )


def load(kubeconfig: str | None = None, context: str | None = None) -> Login:
    """Read the kubeconfig(s) and log in as the chosen context's user.

    Raises KubeconfigError (one line, naming the file or entry) for a missing or malformed
    file, an unknown context, cluster or user, or a failing exec plugin.
    """
    current: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {
        "contexts": {},
        "clusters": {},
        "users": {},
    }
    paths = kubeconfig_paths(kubeconfig)
    for path in paths:
        if not path.exists():
            if kubeconfig:  # a file named on purpose must exist; a listed one may not
                raise KubeconfigError(f"kubeconfig {path} does not exist")
            continue
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeconfigError(f"cannot read kubeconfig {path}: {exc}") from None
        if not isinstance(config, dict):
            raise KubeconfigError(f"kubeconfig {path} is not a mapping")
        current = current or config.get("current-context") or None
        for section, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in config.get(section) or []:
                if isinstance(item, dict) and "name" in item:
                    entries[section].setdefault(str(item["name"]), (item.get(key) or {}, path))
    name = context or current
    if not name:
        raise KubeconfigError(f"no current-context in {_names(paths)}; pass --context")
    ctx, _ = _entry(entries, "contexts", name, paths)
    cluster, cluster_file = _entry(entries, "clusters", str(ctx.get("cluster", "")), paths)
    user, user_file = _entry(entries, "users", str(ctx.get("user", "")), paths)
    credentials = _user_credentials(user, user_file.parent)
    info = kopf.ConnectionInfo(
        server=str(cluster.get("server") or ""),
        ca_path=_file(cluster.get("certificate-authority"), cluster_file.parent),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        username=user.get("username"),
        password=user.get("password"),
        default_namespace=ctx.get("namespace"),
        **credentials,
    )
    if not info.server:
        raise KubeconfigError(f"cluster {ctx.get('cluster')!r} has no server")
    return Login(info, str(ctx.get("namespace") or "default"), name)


def _entry(
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]],
    section: str,
    name: str,
    paths: list[Path],
) -> tuple[dict[str, Any], Path]:
    found = entries[section].get(name)
    if found is None:
        raise KubeconfigError(f"{section[:-1]} {name!r} is not in {_names(paths)}")
    return found


def _user_credentials(user: dict[str, Any], base: Path) -> dict[str, Any]:
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token_path = _file(user["tokenFile"], base)
        try:
            token = Path(str(token_path)).read_text().strip()
        except OSError as exc:
            raise KubeconfigError(f"cannot read tokenFile {token_path}: {exc}") from None
    token = token or (user.get("auth-provider") or {}).get("config", {}).get("access-token")
    found: dict[str, Any] = {
        "token": token,
        "certificate_path": _file(user.get("client-certificate"), base),
        "certificate_data": user.get("client-certificate-data"),
        "private_key_path": _file(user.get("client-key"), base),
        "private_key_data": user.get("client-key-data"),
    }
    if user.get("exec"):
        status = _exec(user["exec"])
        found["token"] = status.get("token") or found["token"]
        found["certificate_data"] = status.get("clientCertificateData") or found["certificate_data"]
        found["private_key_data"] = status.get("clientKeyData") or found["private_key_data"]
    return found


def _exec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run an exec credential plugin; its ExecCredential's ``status``."""
    command = spec.get("command")
    if not command:
        raise KubeconfigError("exec credential plugin without a command")
    env = dict(os.environ)
    env.update({str(e["name"]): str(e["value"]) for e in spec.get("env") or []})
    api_version = spec.get("apiVersion", "client.authentication.k8s.io/v1")
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        done = subprocess.run(
            [str(command), *map(str, spec.get("args") or [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=EXEC_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubeconfigError(f"exec credential plugin {command}: {exc}") from None
    if done.returncode != 0:
        raise KubeconfigError(
            f"exec credential plugin {command} failed ({done.returncode}): {done.stderr.strip()}"
        )
    try:
        status = json.loads(done.stdout).get("status") or {}
    except (ValueError, AttributeError):
        message = f"exec credential plugin {command} printed no ExecCredential"
        raise KubeconfigError(message) from None
    return dict(status)


def _file(value: Any, base: Path) -> str | None:
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)


def _names(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)
