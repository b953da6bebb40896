"""Certificates for `kvstore cluster up --tls`: two private CAs and every node's keys.

Why two CAs: a node's peer port must accept only other nodes, and its client port
only clients. With one CA, the client certificate handed to every application could
open a peer stream and take part in Raft. So the peer port trusts ``peer-ca.crt``,
which signs only node peer certificates, and the client port trusts ``ca.crt``, which
signs the nodes' client-port certificates and the client certificate. This is the
layout etcd's security guide recommends when peer and client certificates come from
one operator.

Every node certificate names 127.0.0.1 and localhost (a local cluster's addresses):
gRPC checks that the certificate a server presents names the host a caller dialled.
Keys are ECDSA P-256 (fast to make, accepted by gRPC's BoringSSL) and written 0600.

Files under ``DIR/tls/``::

    ca.crt, ca.key                client CA
    peer-ca.crt, peer-ca.key      peer CA
    n1.crt, n1.key                n1's client-port certificate (server)
    n1-peer.crt, n1-peer.key      n1's peer certificate (server and client of peer streams)
    client.crt, client.key        a client certificate (what cluster.json's "tls" names)

The CA keys are kept so that more certificates can be signed later (new nodes,
more clients); anyone holding them can mint certificates the cluster trusts.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported only when certificates are made
    from cryptography.hazmat.primitives.asymmetric import ec

TLS_DIR = "tls"
CLIENT_CN = "kvstore-client"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
CA_DAYS = 3650
LEAF_DAYS = 1825


@dataclass(frozen=True)
class NodeCerts:
    """One node's certificate files (paths)."""

    cert: str
    key: str
    peer_cert: str
    peer_key: str


@dataclass(frozen=True)
class ClusterCerts:
    """Every path a local TLS cluster uses."""

    ca: str
    peer_ca: str
    client_cert: str
    client_key: str
    nodes: dict[str, NodeCerts]


def cert_paths(directory: str | Path, node_ids: Iterable[str]) -> ClusterCerts:
    """Where ``ensure_cluster_certs`` puts (or finds) each file."""
    tls = Path(directory) / TLS_DIR
    return ClusterCerts(
        ca=str(tls / "ca.crt"),
        peer_ca=str(tls / "peer-ca.crt"),
        client_cert=str(tls / "client.crt"),
        client_key=str(tls / "client.key"),
        nodes={
            n: NodeCerts(str(tls / f"{n}.crt"), str(tls / f"{n}.key"),
                         str(tls / f"{n}-peer.crt"), str(tls / f"{n}-peer.key"))
            for n in node_ids
        },
    )


def ensure_cluster_certs(
    directory: str | Path, node_ids: Iterable[str], hosts: Iterable[str] = LOCAL_HOSTS
) -> ClusterCerts:
    """Create the CAs and certificates that are missing under ``directory/tls``; keep
    the ones that exist (a stopped cluster restarts with the certificates it had)."""
    ids = list(node_ids)
    paths = cert_paths(directory, ids)
    tls = Path(directory) / TLS_DIR
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    ca = _ensure_ca(tls / "ca", "kvstore client CA")
    peer_ca = _ensure_ca(tls / "peer-ca", "kvstore peer CA")
    names = list(hosts)
    for node_id, files in paths.nodes.items():
        _ensure_leaf(Path(files.cert), Path(files.key), ca, node_id, names, server=True)
        _ensure_leaf(Path(files.peer_cert), Path(files.peer_key), peer_ca, node_id, names,
                     server=True, client=True)
    _ensure_leaf(Path(paths.client_cert), Path(paths.client_key), ca, CLIENT_CN, [],
                 client=True)
    return paths


def make_ca(common_name: str, directory: str | Path, stem: str) -> tuple[str, str]:
    """A standalone CA (``stem``.crt/.key in ``directory``); for tests and operators who
    want a CA the cluster does not trust. Returns (cert path, key path)."""
    base = Path(directory) / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    _ensure_ca(base, common_name)
    return f"{base}.crt", f"{base}.key"


def make_leaf(
    ca_cert: str | Path, ca_key: str | Path, common_name: str, cert_path: str | Path,
    key_path: str | Path, hosts: Iterable[str] = LOCAL_HOSTS, *, server: bool = True,
    client: bool = True,
) -> None:
    """Sign one certificate with the CA at (``ca_cert``, ``ca_key``)."""
    ca = _load_ca(Path(ca_cert), Path(ca_key))
    _ensure_leaf(Path(cert_path), Path(key_path), ca, common_name, list(hosts),
                 server=server, client=client)


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _CA:
    cert: object  # x509.Certificate (cryptography is imported lazily)
    key: object


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically, a private key never readable by others even for a moment."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_ca(cert_path: Path, key_path: Path) -> _CA:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return _CA(cert, key)


def _ensure_ca(base: Path, common_name: str) -> _CA:
    cert_path, key_path = base.with_suffix(".crt"), base.with_suffix(".key")
    if cert_path.exists() and key_path.exists():
        return _load_ca(cert_path, key_path)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return _CA(cert, key)


def _ensure_leaf(
    cert_path: Path, key_path: Path, ca: _CA, common_name: str, hosts: list[str], *,
    server: bool = False, client: bool = False,
) -> None:
    if cert_path.exists() and key_path.exists():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    ca_cert = ca.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)  # type: ignore[attr-defined]
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()),  # type: ignore[attr-defined]
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
