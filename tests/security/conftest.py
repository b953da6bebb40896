"""Shared fixtures of the security tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.cluster.certs import make_ca, make_leaf


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A peer CA ("ca") with certificates of CN "n1", "n2" and "kvstore-peer", and a
    foreign CA ("other-ca") with one of CN "kvstore-peer" ("other"); each certificate
    entry is the path stem of its .crt and .key."""
    ca, ca_key = make_ca("peer CA", tmp_path, "peer-ca")
    files = {"ca": ca}
    for cn in ("n1", "n2", "kvstore-peer"):
        make_leaf(ca, ca_key, cn, tmp_path / f"{cn}.crt", tmp_path / f"{cn}.key")
        files[cn] = str(tmp_path / cn)
    other, other_key = make_ca("other CA", tmp_path, "other-ca")
    make_leaf(other, other_key, "kvstore-peer", tmp_path / "other.crt", tmp_path / "other.key")
    files["other-ca"], files["other"] = other, str(tmp_path / "other")
    return files
