"""Client TLS settings: checked when the client is made, and the hint on a connection
that a TLS node broke off."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from kvstore.client import AsyncKVClient, KVClient, TLSConfig, TLSConfigError
from kvstore.client._core import (
    MUTUAL_TLS,
    PLAINTEXT,
    SERVER_TLS,
    RpcFailure,
    connection_hint,
)
from kvstore.cluster.certs import ensure_cluster_certs


def test_cert_and_key_go_together() -> None:
    with pytest.raises(TLSConfigError, match="cert and key"):
        TLSConfig(ca="ca.crt", cert="client.crt")


def test_bad_files_fail_when_the_client_is_made(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="missing.crt"):
        KVClient(["127.0.0.1:1"], tls=TLSConfig(ca=tmp_path / "missing.crt"))
    (tmp_path / "junk.crt").write_text("junk")
    with pytest.raises(TLSConfigError, match="not a PEM"):
        AsyncKVClient(["127.0.0.1:1"], tls=TLSConfig(ca=tmp_path / "junk.crt"))


def test_good_files_make_a_client(tmp_path: Path) -> None:
    certs = ensure_cluster_certs(tmp_path, ["n1"])
    tls = TLSConfig(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    assert tls.mutual and not TLSConfig(ca=certs.ca).mutual
    KVClient(["127.0.0.1:1"], tls=tls).close()


CLOSED = RpcFailure(grpc.StatusCode.UNAVAILABLE,
                    "failed to connect to all addresses; last error: UNAVAILABLE: "
                    "ipv4:127.0.0.1:7001: Socket closed")


@pytest.mark.parametrize(
    ("security", "needle"),
    [(PLAINTEXT, "may require TLS"), (SERVER_TLS, "client certificate: --cert"),
     (MUTUAL_TLS, "may not trust this client certificate")],
)
def test_a_connection_closed_during_setup_gets_a_hint(security: str, needle: str) -> None:
    assert needle in connection_hint(CLOSED, security)


def test_other_failures_get_no_hint() -> None:
    refused = RpcFailure(grpc.StatusCode.UNAVAILABLE,
                         "failed to connect to all addresses; last error: Connection refused")
    assert connection_hint(refused, PLAINTEXT) == ""
    mid_call = RpcFailure(grpc.StatusCode.UNAVAILABLE, "Socket closed")  # after it was sent
    assert connection_hint(mid_call, PLAINTEXT) == ""
