"""The local cluster's PKI: what the API server's x509 authenticator and TLS clients read."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelops.local.pki import Pki, identities


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_client_certificate_names_its_user_and_groups_and_chains_to_the_ca(
    tmp_path: Path,
) -> None:
    pki = Pki(tmp_path, "local")
    pki.ensure()
    ca = load(pki.ca_cert)
    for stem, identity in identities("local").items():
        cert = load(pki.cert(stem))
        cert.verify_directly_issued_by(ca)
        subject = cert.subject
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity.user
        groups = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        assert groups == list(identity.groups)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert identities("local")["node"].user == "system:node:local"
    assert identities("local")["node"].groups == ("system:nodes",)


def test_the_api_server_certificate_covers_loopback_and_the_kubernetes_service(
    tmp_path: Path,
) -> None:
    pki = Pki(tmp_path, "local")
    pki.ensure()
    names = load(pki.cert("apiserver")).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    ips = names.value.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("10.96.0.1") in ips
    assert "kubernetes.default.svc.cluster.local" in names.value.get_values_for_type(x509.DNSName)


def test_keys_are_private_and_a_second_ensure_keeps_everything(tmp_path: Path) -> None:
    pki = Pki(tmp_path, "local")
    pki.ensure()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert all(
        (tmp_path / name).stat().st_mode & 0o077 == 0 for name in before if name.endswith(".key")
    )
    pki.ensure()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    key = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(load_pem_public_key(pki.service_account_pub.read_bytes()), rsa.RSAPublicKey)
