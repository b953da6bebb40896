"""TLS settings of a client: which CA to trust, and an optional client certificate.

    from kvstore.client import KVClient, TLSConfig
    tls = TLSConfig(ca="tls/ca.crt", cert="tls/client.crt", key="tls/client.key")
    with KVClient(["127.0.0.1:7001"], tls=tls) as client: ...

The files are read once, when the client is made, so a wrong path fails at once
with a clear message instead of as a connection error on every attempt. The server's
certificate must name the host in the endpoint (an IP address or a DNS name), as
gRPC checks it; `kvstore cluster up --tls` makes certificates for 127.0.0.1 and
localhost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

# Environment variables the CLI reads when no --cacert/--cert/--key is given (etcdctl has
# ETCDCTL_CACERT etc.).
CACERT_ENV = "KVSTORE_CACERT"
CERT_ENV = "KVSTORE_CERT"
KEY_ENV = "KVSTORE_KEY"


class TLSConfigError(ValueError):
    """A TLS file is missing, unreadable, or not PEM; the message names it in one line."""


@dataclass(frozen=True)
class TLSConfig:
    """Connect over TLS. ``ca``: PEM file of the CA(s) that signed the nodes' client-port
    certificates (None: the system's roots). ``cert``/``key``: a client certificate and
    its private key, for nodes started with ``--client-cert-auth`` (both or neither)."""

    ca: str | os.PathLike[str] | None = None
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TLSConfigError("a client certificate needs both cert and key (--cert, --key)")

    @property
    def mutual(self) -> bool:
        """True if the client presents a certificate of its own."""
        return self.cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; raises TLSConfigError naming a bad file."""
        root = None if self.ca is None else read_pem(self.ca, "CA certificate", "CERTIFICATE")
        chain = key = None
        if self.cert is not None and self.key is not None:
            chain = read_pem(self.cert, "client certificate", "CERTIFICATE")
            key = read_pem(self.key, "client key", "PRIVATE KEY")
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                            certificate_chain=chain)


def read_pem(path: str | os.PathLike[str], what: str, marker: str) -> bytes:
    """The bytes of a PEM file that contains ``-----BEGIN ...marker``; TLSConfigError if it
    cannot be read or does not look like one (gRPC's own error would come much later, as
    a failed handshake with no file name)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data or marker.encode() not in data:
        raise TLSConfigError(f"{what} {path} is not a PEM file with a {marker}")
    return data


def security_of(tls: TLSConfig | None) -> str:
    """How a client with ``tls`` connects, in the client core's terms (for its hints)."""
    from kvstore.client._core import MUTUAL_TLS, PLAINTEXT, SERVER_TLS

    if tls is None:
        return PLAINTEXT
    return MUTUAL_TLS if tls.mutual else SERVER_TLS


def tls_from_environment() -> TLSConfig | None:
    """TLSConfig from $KVSTORE_CACERT, $KVSTORE_CERT, $KVSTORE_KEY; None if none is set."""
    values = [os.environ.get(name) or None for name in (CACERT_ENV, CERT_ENV, KEY_ENV)]
    if not any(values):
        return None
    return TLSConfig(*values)
