"""Cluster membership as replicated state: who the voters and learners are, and where
their peer ports are.

Membership changes travel through the log as ENTRY_CONF_CHANGE entries (one server at a
time, Raft thesis ch. 4) and take effect on each node when it APPLIES them, in the same
LMDB transaction as the applied index (as etcd does). Why at apply, not at append: the
configuration then lives with the data it governs — a snapshot carries it, a restart
reads it from the same transaction as the applied index, and a log suffix replaced after
a leader change can never leave a node on a configuration that was never committed. The
price is that a leader must not propose a change before it has applied every change
already in its log; kvstore.raft.core enforces that (see Raft.propose_conf_change).

A removed id stays as a tombstone: it is never admitted again, so a stale process of a
removed node can never be mistaken for a new member of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from kvstore.v1 import raft_pb2

MEMBERS_DB = "members"
CT = raft_pb2.ConfChangeType
MAX_NODE_ID_BYTES = 64


@dataclass(frozen=True, slots=True, order=True)
class Member:
    id: str
    peer_address: str
    learner: bool = False


class ConfChangeError(ValueError):
    """A membership change that does not fit the current membership (nothing changed)."""


def encode_change(kind: int, node_id: str, peer_address: str = "") -> bytes:
    return raft_pb2.ConfChange(type=kind, node_id=node_id,
                               peer_address=peer_address).SerializeToString()


def decode_change(data: bytes) -> raft_pb2.ConfChange:
    """Raises ConfChangeError for data that is not a ConfChange of a known type."""
    try:
        cc = raft_pb2.ConfChange.FromString(data)
    except DecodeError:
        raise ConfChangeError("membership change entry is not a ConfChange") from None
    if cc.type not in (CT.CONF_ADD_VOTER, CT.CONF_ADD_LEARNER, CT.CONF_PROMOTE,
                       CT.CONF_REMOVE, CT.CONF_UPDATE):
        raise ConfChangeError(f"unknown membership change type {cc.type}")
    check_node_id(cc.node_id)
    return cc


def check_node_id(node_id: str) -> None:
    if not node_id or len(node_id.encode()) > MAX_NODE_ID_BYTES or not node_id.isprintable() \
            or any(c in node_id for c in " ,="):
        raise ConfChangeError(f"invalid node id {node_id!r}")


def _records(txn) -> dict[str, raft_pb2.MemberRecord]:
    return {k.decode(): raft_pb2.MemberRecord.FromString(v) for k, v in txn.items(MEMBERS_DB)}


def members(txn) -> list[Member]:
    """The current members (tombstones excluded), sorted by id."""
    return sorted(Member(nid, r.peer_address, r.learner)
                  for nid, r in _records(txn).items() if not r.removed)


def removed_ids(txn) -> list[str]:
    """Ids removed from the cluster (tombstones), sorted."""
    return sorted(nid for nid, r in _records(txn).items() if r.removed)


def seed(txn, initial: Iterable[Member]) -> bool:
    """Record the cluster's initial membership (from `--peers`, or learned when joining)
    if none is recorded yet; True if it wrote it."""
    if txn.first_key(MEMBERS_DB, b"") is not None:
        return False
    for m in initial:
        _put(txn, m.id, raft_pb2.MemberRecord(peer_address=m.peer_address, learner=m.learner))
    return True


def reset(txn, new: Iterable[Member]) -> None:
    """Replace the whole membership, tombstones included (a restore into a new cluster)."""
    for key, _ in list(txn.items(MEMBERS_DB)):
        txn.delete(MEMBERS_DB, key)
    for m in new:
        _put(txn, m.id, raft_pb2.MemberRecord(peer_address=m.peer_address, learner=m.learner))


def _put(txn, node_id: str, rec: raft_pb2.MemberRecord) -> None:
    txn.put(MEMBERS_DB, node_id.encode(), rec.SerializeToString())


def check(current: dict[str, raft_pb2.MemberRecord], cc: raft_pb2.ConfChange) -> None:
    """Raises ConfChangeError if `cc` does not fit the membership `current`."""
    rec = current.get(cc.node_id)
    live = rec is not None and not rec.removed
    if cc.type in (CT.CONF_ADD_VOTER, CT.CONF_ADD_LEARNER):
        if rec is not None and rec.removed:
            raise ConfChangeError(f"{cc.node_id} was removed from the cluster; a removed "
                                  "id cannot be added again (use a new id)")
        if live:
            raise ConfChangeError(f"{cc.node_id} is already a member")
        if not cc.peer_address:
            raise ConfChangeError("a new member needs a peer address")
        taken = [n for n, r in current.items()
                 if not r.removed and r.peer_address == cc.peer_address]
        if taken:
            raise ConfChangeError(f"peer address {cc.peer_address} is already used by "
                                  f"{taken[0]}")
        return
    if not live:
        raise ConfChangeError(f"{cc.node_id} is not a member")
    assert rec is not None
    if cc.type == CT.CONF_PROMOTE and not rec.learner:
        raise ConfChangeError(f"{cc.node_id} is not a learner")
    if cc.type == CT.CONF_REMOVE and not rec.learner:
        voters = [n for n, r in current.items() if not r.removed and not r.learner]
        if voters == [cc.node_id]:
            raise ConfChangeError("cannot remove the last voter")
    if cc.type == CT.CONF_UPDATE and not cc.peer_address:
        raise ConfChangeError("an update needs a peer address")


def apply_change(txn, data: bytes) -> list[Member]:
    """Apply one ENTRY_CONF_CHANGE entry; returns the new membership. Raises
    ConfChangeError (and changes nothing) if it does not fit: the same on every replica,
    since they all apply the same entries to the same membership."""
    cc = decode_change(data)
    current = _records(txn)
    check(current, cc)
    rec = current.get(cc.node_id, raft_pb2.MemberRecord())
    if cc.type in (CT.CONF_ADD_VOTER, CT.CONF_ADD_LEARNER):
        rec = raft_pb2.MemberRecord(peer_address=cc.peer_address,
                                    learner=cc.type == CT.CONF_ADD_LEARNER)
    elif cc.type == CT.CONF_PROMOTE:
        rec.learner = False
    elif cc.type == CT.CONF_REMOVE:
        rec = raft_pb2.MemberRecord(peer_address=rec.peer_address, removed=True)
    else:
        rec.peer_address = cc.peer_address
    _put(txn, cc.node_id, rec)
    return members(txn)


def voters_and_learners(ms: Iterable[Member]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ms = list(ms)
    return (tuple(sorted(m.id for m in ms if not m.learner)),
            tuple(sorted(m.id for m in ms if m.learner)))


def describe(cc: raft_pb2.ConfChange) -> str:
    """A change for a log line or an error message."""
    what = {CT.CONF_ADD_VOTER: "add voter", CT.CONF_ADD_LEARNER: "add learner",
            CT.CONF_PROMOTE: "promote", CT.CONF_REMOVE: "remove",
            CT.CONF_UPDATE: "update"}.get(cc.type, f"change {cc.type}")
    where = f" at {cc.peer_address}" if cc.peer_address else ""
    return f"{what} {cc.node_id}{where}"
