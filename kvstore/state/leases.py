"""Leases in the replicated state: which leases exist, their granted TTL, and their keys.

Only what every member must agree on lives here: a lease exists from the entry that
grants it until the entry that revokes it, and revoking deletes its keys in one revision
(so watchers see one DELETE per key at one revision). When a lease expires is NOT state:
the leader's clock decides (kvstore.server.lessor), and an expiry reaches the state only
as a revoke entry, so all members apply it at the same point of the log.

Layout of the `leases` database:
    b"l" + id (8 bytes, big-endian signed)         -> granted TTL (8 bytes)
    b"k" + id + key                                -> b""   (the keys attached to it)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvstore.state.mvcc import Txn

LEASES_DB = "leases"
ERR_LEASE_EXISTS = "etcdserver: lease already exists"
ERR_LEASE_TTL_TOO_LARGE = "etcdserver: too large lease TTL"
MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL, seconds

_ID = struct.Struct(">q")
_LEASE = b"l"
_KEY = b"k"


@dataclass(frozen=True, slots=True)
class LeaseChange:
    """A lease granted or revoked by an applied entry (the leader's lessor follows these)."""

    kind: str  # "grant" | "revoke"
    id: int
    ttl: int = 0


def granted_ttl(txn: Txn, lease_id: int) -> int | None:
    """The TTL the lease was granted with, or None if it does not exist."""
    raw = txn.get(LEASES_DB, _LEASE + _ID.pack(lease_id))
    return None if raw is None else _ID.unpack(raw)[0]


def exists(txn: Txn, lease_id: int) -> bool:
    return granted_ttl(txn, lease_id) is not None


def grant(txn: Txn, lease_id: int, ttl: int) -> None:
    txn.put(LEASES_DB, _LEASE + _ID.pack(lease_id), _ID.pack(ttl))


def drop(txn: Txn, lease_id: int) -> None:
    """Forget the lease and its key list (its keys are deleted by the caller)."""
    for key in keys(txn, lease_id):
        txn.delete(LEASES_DB, _KEY + _ID.pack(lease_id) + key)
    txn.delete(LEASES_DB, _LEASE + _ID.pack(lease_id))


def attach(txn: Txn, lease_id: int, key: bytes) -> None:
    txn.put(LEASES_DB, _KEY + _ID.pack(lease_id) + key, b"")


def detach(txn: Txn, lease_id: int, key: bytes) -> None:
    txn.delete(LEASES_DB, _KEY + _ID.pack(lease_id) + key)


def keys(txn: Txn, lease_id: int) -> list[bytes]:
    """The keys attached to the lease, in byte order."""
    prefix = _KEY + _ID.pack(lease_id)
    out: list[bytes] = []
    for k, _ in txn.seek(LEASES_DB, prefix):
        if not k.startswith(prefix):
            break
        out.append(bytes(k[len(prefix):]))
    return out


def all_leases(txn: Txn) -> list[tuple[int, int]]:
    """(id, granted TTL) of every lease, ordered by id."""
    out: list[tuple[int, int]] = []
    for k, v in txn.seek(LEASES_DB, _LEASE):
        if not k.startswith(_LEASE):
            break
        out.append((_ID.unpack(k[1:])[0], _ID.unpack(v)[0]))
    return out
