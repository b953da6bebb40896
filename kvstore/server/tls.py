"""gRPC credentials of a node's two ports, and the peer port's common-name check.

The client port takes etcd's --cert-file/--key-file/--trusted-ca-file/--client-cert-auth;
the peer port etcd's --peer-* flags. Peer TLS is always mutual: a node presents its
certificate when it dials a peer and requires one from whoever dials it, so only holders
of a certificate signed by the peer CA can open a Raft stream, send a snapshot or call
the Admin service. --peer-cert-allowed-cn narrows that to certificates with one common
name, for a peer CA that also signs other certificates.

Files are read (and checked to be PEM) at start-up, so a wrong path stops the node with
a message naming the flag instead of surfacing later as failed handshakes.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kvstore.client.tls import TLSConfigError, read_pem
from kvstore.server.config import PeerTLS, ServerTLS

log = logging.getLogger(__name__)


class TLSSetupError(Exception):
    """A TLS setting cannot be used; the message names the flag and the file."""


def _pem(path: str, flag: str, marker: str) -> bytes:
    try:
        return read_pem(path, flag, marker)
    except TLSConfigError as exc:
        raise TLSSetupError(str(exc)) from None


def client_server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials of the client port."""
    key = _pem(tls.key_file, "--key-file", "PRIVATE KEY")
    cert = _pem(tls.cert_file, "--cert-file", "CERTIFICATE")
    root = None
    if tls.trusted_ca_file is not None:
        root = _pem(tls.trusted_ca_file, "--trusted-ca-file", "CERTIFICATE")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=tls.client_cert_auth)


def client_http_ssl_context(tls: ServerTLS) -> ssl.SSLContext:
    """The client port's TLS for HTTP/1.1 clients of the JSON gateway: the same
    certificate, key and client-certificate rule as the gRPC credentials above, offering
    only HTTP/1.1 by ALPN (see port_mux)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.trusted_ca_file is not None:
            ctx.load_verify_locations(tls.trusted_ca_file)
    except (OSError, ssl.SSLError) as err:
        raise TLSSetupError(f"client port TLS files: {err}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.client_cert_auth else ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def peer_server_credentials(tls: PeerTLS) -> grpc.ServerCredentials:
    """Credentials of the peer port: a client certificate signed by the peer CA required."""
    key, cert, root = _peer_files(tls)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=root,
                                       require_client_auth=True)


def peer_channel_credentials(tls: PeerTLS) -> grpc.ChannelCredentials:
    """Credentials of this node's streams and snapshots to its peers."""
    key, cert, root = _peer_files(tls)
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                        certificate_chain=cert)


def peer_stream_server_context(tls: PeerTLS, alpn: str) -> ssl.SSLContext:
    """The peer port's TLS for Raft frame streams (peer_frames.py), which the port's
    multiplexer terminates: the same certificate, key and peer CA as the gRPC credentials
    above, a client certificate required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_peer_files(ctx, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([alpn])
    return ctx


def peer_stream_client_context(tls: PeerTLS, alpn: str) -> ssl.SSLContext:
    """This node's TLS when it dials a peer's frame stream: it presents its peer
    certificate and checks the peer's against the peer CA and the address it dialled,
    as the gRPC channel credentials do."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_peer_files(ctx, tls)
    ctx.set_alpn_protocols([alpn])
    return ctx


def _load_peer_files(ctx: ssl.SSLContext, tls: PeerTLS) -> None:
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        ctx.load_verify_locations(tls.trusted_ca_file)
    except (OSError, ssl.SSLError) as err:
        raise TLSSetupError(f"peer TLS files (--peer-cert-file, --peer-key-file, "
                            f"--peer-trusted-ca-file): {err}") from None


def _peer_files(tls: PeerTLS) -> tuple[bytes, bytes, bytes]:
    return (
        _pem(tls.key_file, "--peer-key-file", "PRIVATE KEY"),
        _pem(tls.cert_file, "--peer-cert-file", "CERTIFICATE"),
        _pem(tls.trusted_ca_file, "--peer-trusted-ca-file", "CERTIFICATE"),
    )


def peer_common_names(context: Any) -> list[str]:
    """Common names of the certificate the caller presented (empty without TLS)."""
    auth = context.auth_context() or {}
    return [cn.decode("utf-8", "replace") for cn in auth.get("x509_common_name", [])]


Handler = Callable[[Any, Any], Awaitable[Any]]


class AllowedCNInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call on the peer port whose client certificate lacks the allowed CN.

    An interceptor rather than a check in each service so that a method added later is
    covered too. The certificate is only known inside the call (its auth context), so
    each handler is wrapped rather than refused from the call details.
    """

    def __init__(self, allowed_cn: str) -> None:
        self.allowed_cn = allowed_cn

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._guard(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        # The peer port serves no streaming responses; refuse rather than pass unchecked.
        return grpc.unary_unary_rpc_method_handler(self._refuse_kind)

    def _guard(self, behaviour: Handler, method: str) -> Handler:
        async def guarded(request: Any, context: Any) -> Any:
            names = peer_common_names(context)
            if self.allowed_cn not in names:
                log.warning("refused %s from %s: certificate CN %s is not the allowed %r",
                            method, context.peer(), ",".join(names) or "(none)",
                            self.allowed_cn)
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"peer certificate CN {','.join(names) or '(none)'} is not allowed "
                    f"(--peer-cert-allowed-cn {self.allowed_cn})")
            return await behaviour(request, context)

        return guarded

    @staticmethod
    async def _refuse_kind(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served on the peer port")
