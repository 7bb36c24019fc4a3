"""Fault tests: their fixtures are in ``support.cluster_fixtures`` (a cluster of their own)."""
