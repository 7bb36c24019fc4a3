"""Integration tests: their fixtures are in ``support.cluster_fixtures`` (shared with faults)."""
