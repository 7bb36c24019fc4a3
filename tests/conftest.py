"""Shared fixtures: real servers on free loopback ports, stopped after use."""

from __future__ import annotations

# The local cluster's fixtures (local_cluster, namespace, operator, ...): see the module.
pytest_plugins = ["support.cluster_fixtures"]
