"""The local S3 server picks listen ports where its own connections cannot take them."""

from __future__ import annotations

from modelops.local.s3server import S3Server


def test_listen_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    ports = S3Server._pick_ports()
    assert len(set(ports.values())) == len(ports)
    assert all(20000 <= p <= 32000 for p in ports.values())
