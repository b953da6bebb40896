"""Certificates made by `cluster up --tls`, and the peer port's TLS rules, in process:
mutual TLS between peers, --peer-cert-allowed-cn, and the two CAs kept apart."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvstore.cluster.certs import ensure_cluster_certs
from kvstore.server.config import PeerTLS
from kvstore.server.tls import (
    AllowedCNInterceptor,
    TLSSetupError,
    peer_channel_credentials,
    peer_server_credentials,
)
from kvstore.v1 import admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.timeout(60)


def _cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_cluster_certificates(tmp_path: Path) -> None:
    certs = ensure_cluster_certs(tmp_path, ["n1", "n2"])
    ca, peer_ca = _cert(certs.ca), _cert(certs.peer_ca)
    n1, n1_peer, client = (_cert(certs.nodes["n1"].cert), _cert(certs.nodes["n1"].peer_cert),
                           _cert(certs.client_cert))
    # Node certificates name the local addresses (gRPC checks the dialled host).
    san = n1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # The client CA signs the client port's certificates and the client's, the peer CA
    # only peer certificates: a client certificate cannot pass for a peer.
    assert n1.issuer == ca.subject and client.issuer == ca.subject
    assert n1_peer.issuer == peer_ca.subject and ca.subject != peer_ca.subject
    peer_usage = n1_peer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(peer_usage)
    assert (_cn(n1), _cn(n1_peer), _cn(client)) == ("n1", "n1", "kvstore-client")
    for key in (certs.client_key, certs.nodes["n1"].key, certs.nodes["n2"].peer_key,
                str(tmp_path / "tls" / "ca.key")):
        assert stat.S_IMODE(Path(key).stat().st_mode) == 0o600, key


def test_existing_certificates_are_kept(tmp_path: Path) -> None:
    first = ensure_cluster_certs(tmp_path, ["n1"])
    before = Path(first.nodes["n1"].cert).read_bytes()
    again = ensure_cluster_certs(tmp_path, ["n1", "n2"])  # n2 is new
    assert Path(again.nodes["n1"].cert).read_bytes() == before
    assert _cert(again.nodes["n2"].cert).issuer == _cert(again.ca).subject


def test_missing_peer_files_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="--peer-key-file"):
        peer_server_credentials(PeerTLS("c", str(tmp_path / "nope.key"), "ca"))


class _Admin(admin_pb2_grpc.AdminServicer):
    async def Digest(self, request, context):  # noqa: N802
        return admin_pb2.DigestResponse(node_id="n1")


async def _peer_server(pki: dict[str, str], allowed_cn: str | None
                       ) -> tuple[grpc.aio.Server, str]:
    tls = PeerTLS(f"{pki['n1']}.crt", f"{pki['n1']}.key", pki["ca"], allowed_cn)
    interceptors = [] if allowed_cn is None else [AllowedCNInterceptor(allowed_cn)]
    server = grpc.aio.server(interceptors=interceptors)
    admin_pb2_grpc.add_AdminServicer_to_server(_Admin(), server)
    port = server.add_secure_port("127.0.0.1:0", peer_server_credentials(tls))
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _digest(address: str, creds: grpc.ChannelCredentials | None) -> str:
    channel = (grpc.aio.insecure_channel(address) if creds is None
               else grpc.aio.secure_channel(address, creds))
    async with channel:
        reply = await admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(),
                                                               timeout=5)
    return reply.node_id


def _as(pki: dict[str, str], who: str, ca: str = "ca") -> grpc.ChannelCredentials:
    return peer_channel_credentials(PeerTLS(f"{pki[who]}.crt", f"{pki[who]}.key", pki[ca]))


@pytest.fixture
async def mutual(pki: dict[str, str]) -> AsyncIterator[str]:
    server, address = await _peer_server(pki, None)
    try:
        yield address
    finally:
        await server.stop(0)


async def test_peers_authenticate_each_other(mutual: str, pki: dict[str, str]) -> None:
    assert await _digest(mutual, _as(pki, "n1")) == "n1"
    for creds in (None,  # plaintext
                  grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes()),  # no certificate
                  _as(pki, "other", ca="ca")):  # a certificate from another CA
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _digest(mutual, creds)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_allowed_cn_narrows_the_peer_port(pki: dict[str, str]) -> None:
    server, address = await _peer_server(pki, "kvstore-peer")
    try:
        assert await _digest(address, _as(pki, "kvstore-peer")) == "n1"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _digest(address, _as(pki, "n1"))  # signed by the peer CA, other CN
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "kvstore-peer" in (info.value.details() or "")
    finally:
        await server.stop(0)
