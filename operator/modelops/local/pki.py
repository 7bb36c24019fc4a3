"""The local cluster's certificates and keys, made with the ``cryptography`` package.

One self-signed CA signs every certificate: the API server's serving certificate, a client
certificate per identity (the subject's CN is the Kubernetes user, each O a group, as the API
server's x509 authenticator reads them), the process kubelet's serving certificate, and the
API server's client certificate for the kubelet. A separate RSA key pair signs and verifies
service-account tokens. Files are PEM, keys mode 0600, under one directory; a directory that
already holds them is reused (a restart keeps the same CA, so kubeconfigs stay valid).

The identities follow kubeadm's (``kubeadm init phase certs`` / ``kubeconfig``): see
https://kubernetes.io/docs/setup/best-practices/certificates/.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
SERVICE_IP = "10.96.0.1"  # the first address of the service CIDR: the `kubernetes` Service
API_SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Identity:
    """A client certificate's subject: CN is the user, each O a group."""

    user: str
    groups: tuple[str, ...] = ()


def identities(node_name: str) -> dict[str, Identity]:
    """The client identities of the local cluster, by file stem."""
    return {
        "admin": Identity("kubernetes-admin", ("system:masters",)),
        "controller-manager": Identity("system:kube-controller-manager"),
        "scheduler": Identity("system:kube-scheduler"),
        "node": Identity(f"system:node:{node_name}", ("system:nodes",)),
        # The Service proxy's identity: bound to ClusterRole system:node-proxier by the
        # bootstrap policy (a node itself may not read EndpointSlices).
        "kube-proxy": Identity("system:kube-proxy"),
        # The API server's identity towards kubelets (logs, exec): kubeadm's
        # apiserver-kubelet-client, authorized by the kubelet as a cluster admin.
        "apiserver-kubelet-client": Identity("kube-apiserver-kubelet-client", ("system:masters",)),
    }


class Pki:
    """PEM files under ``directory``: ``<stem>.crt`` / ``<stem>.key``, ``sa.key`` / ``sa.pub``."""

    def __init__(self, directory: Path, node_name: str) -> None:
        self.directory = directory
        self.node_name = node_name

    def cert(self, stem: str) -> Path:
        return self.directory / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.directory / f"{stem}.key"

    @property
    def ca_cert(self) -> Path:
        return self.cert("ca")

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"

    def ensure(self) -> None:
        """Create whatever is missing; files already there are kept."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.ca_cert.exists() and self.key("ca").exists()):
            ca_key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelops-local-ca")])
            ca = (
                _builder(name, name, ca_key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(ca_key, hashes.SHA256())
            )
            _write_key(self.key("ca"), ca_key)
            self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(self.key("ca").read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signer = (ca_cert, loaded)
        serving_ips = ("127.0.0.1", SERVICE_IP)
        self._leaf("apiserver", Identity("kube-apiserver"), signer, API_SERVER_NAMES, serving_ips)
        self._leaf(
            "kubelet-serving",
            Identity(f"system:node:{self.node_name}", ("system:nodes",)),
            signer,
            ("localhost", self.node_name),
            ("127.0.0.1",),
        )
        for stem, identity in identities(self.node_name).items():
            self._leaf(stem, identity, signer)
        if not self.service_account_key.exists():
            sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_key(self.service_account_key, sa_key)
            self.service_account_pub.write_bytes(
                sa_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def _leaf(
        self,
        stem: str,
        identity: Identity,
        signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> None:
        if self.cert(stem).exists() and self.key(stem).exists():
            return
        ca_cert, ca_key = signer
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in identity.groups]
            + [x509.NameAttribute(NameOID.COMMON_NAME, identity.user)]
        )
        serving = bool(dns or ips)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if serving else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(subject, ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([usage]),
                critical=False,
            )
        )
        if serving:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        _write_key(self.key(stem), key)
        cert = builder.sign(ca_key, hashes.SHA256())
        self.cert(stem).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
