"""Encoding of replicated commands (`kvstore.v1.Command`) and the result of applying one.

Commands travel inside log entries, so their encoding is part of the durable format: it is
protobuf, which tolerates added fields, rather than pickle or an ad-hoc struct.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from kvstore.etcdpb import rpc_pb2
from kvstore.state.leases import LeaseChange
from kvstore.state.membership import Member
from kvstore.v1 import raft_pb2


class CommandDecodeError(ValueError):
    """The entry's data is not a valid Command (no operation set, or not protobuf)."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """Outcome of applying one committed entry, reported back to the waiting RPC.

    ok: put -> True; delete -> the key existed; cas -> it swapped. NOOP entries report True.
    stale: the request's seq is below its session's lowest_pending_seq, so it was answered
        before and its result forgotten; it was NOT applied and ok is False. The client must
        treat this as an error (it is retrying something it already saw answered).
    duplicate: (client_id, seq) had been applied before; ok is the recorded result and the
        state did not change.
    malformed: the entry could not be decoded; nothing changed. Reported, never raised, so a
        bad entry cannot halt every replica forever.
    expired: the command names a session that does not exist (evicted, or never
        registered). It was NOT applied now; an earlier attempt may have been, and a
        session that is gone can no longer tell a retry from a first attempt, so the
        client must not retry under that id (it registers a new session).
    registered: a register entry created a new session; client_id is its id (seq is 0).
    digest: a hash-check entry: the hash of this member's shards right after applying the
        entries before it (equal on members in sync).
    alarm: a put or compare-and-swap refused because an alarm is raised (its AlarmOp type:
        NOSPACE or CORRUPT); NOT applied and not recorded, so a retry after the alarm is
        cleared applies it (once).
        Not the application of a client write.
    revision: the store revision right after this entry (client writes and compactions).
    response: a client write's answer as the etcd Txn it was applied as (header unset);
        None for duplicates (results are not kept in sessions) and refusals.
    error: the write, compaction or lease operation was refused by the data model (a
        kvstore.state.mvcc.ERR_* or leases.ERR_* message); nothing changed and ok is False.
    lease: a lease granted or revoked by this entry (the leader's lessor follows these).
    members: the membership after a membership change entry that applied (the runtime
        hands it to the core); a change that did not fit has ok False and `error`.
    """

    index: int
    client_id: bytes
    seq: int
    ok: bool
    stale: bool
    duplicate: bool = False
    malformed: bool = False
    expired: bool = False
    registered: bool = False
    alarm: int = 0
    digest: str = ""
    revision: int = 0
    response: rpc_pb2.TxnResponse | None = None
    error: str = ""
    lease: LeaseChange | None = None
    members: tuple[Member, ...] | None = None


def _command(client_id: bytes, seq: int, lowest_pending_seq: int) -> raft_pb2.Command:
    return raft_pb2.Command(client_id=client_id, seq=seq, lowest_pending_seq=lowest_pending_seq)


def encode_put(
    client_id: bytes, seq: int, lowest_pending_seq: int, key: bytes, value: bytes
) -> bytes:
    """Entry data that sets `key` to `value`."""
    cmd = _command(client_id, seq, lowest_pending_seq)
    cmd.put.key = key
    cmd.put.value = value
    return cmd.SerializeToString()


def encode_delete(client_id: bytes, seq: int, lowest_pending_seq: int, key: bytes) -> bytes:
    """Entry data that removes `key`; the result says whether it existed."""
    cmd = _command(client_id, seq, lowest_pending_seq)
    cmd.delete.key = key
    return cmd.SerializeToString()


def encode_cas(
    client_id: bytes,
    seq: int,
    lowest_pending_seq: int,
    key: bytes,
    expected: bytes | None,
    value: bytes,
) -> bytes:
    """Entry data that sets `key` to `value` only if it currently equals `expected`, or,
    when `expected` is None, only if `key` is absent (CasOp.expect_absent)."""
    cmd = _command(client_id, seq, lowest_pending_seq)
    cmd.cas.key = key
    cmd.cas.expect_absent = expected is None
    cmd.cas.expected = expected or b""
    cmd.cas.value = value
    return cmd.SerializeToString()


def encode_txn(client_id: bytes, seq: int, lowest_pending_seq: int,
               txn: rpc_pb2.TxnRequest) -> bytes:
    """Entry data for an etcd Txn (a Put or DeleteRange is sent as a Txn of one operation).
    client_id b"": no session, as for every etcd client."""
    cmd = _command(client_id, seq, lowest_pending_seq)
    cmd.txn.CopyFrom(txn)
    return cmd.SerializeToString()


def encode_compact(revision: int, physical: bool = False) -> bytes:
    """Entry data that compacts history below `revision` (applied synchronously, so
    `physical` changes nothing; kept for the record)."""
    cmd = raft_pb2.Command()
    cmd.compact.revision = revision
    cmd.compact.physical = physical
    return cmd.SerializeToString()


def encode_lease_grant(lease_id: int, ttl: int) -> bytes:
    """Entry data that creates lease `lease_id` (chosen by the leader) with `ttl` seconds."""
    cmd = raft_pb2.Command()
    cmd.lease_grant.ID = lease_id
    cmd.lease_grant.TTL = ttl
    return cmd.SerializeToString()


def encode_lease_revoke(lease_id: int) -> bytes:
    """Entry data that revokes a lease, deleting its keys in one revision: sent for a
    client's LeaseRevoke, and by the leader when the lease expired on its clock."""
    cmd = raft_pb2.Command()
    cmd.lease_revoke.ID = lease_id
    return cmd.SerializeToString()


def encode_alarm(activate: bool, alarm_type: int, member: str) -> bytes:
    """Entry data that raises (or clears) a cluster alarm; see kvstore.state.alarms. A
    DEACTIVATE with member "" clears that alarm type for every member."""
    cmd = raft_pb2.Command()
    cmd.alarm.action = (raft_pb2.AlarmOp.ACTIVATE if activate
                        else raft_pb2.AlarmOp.DEACTIVATE)
    cmd.alarm.type = alarm_type  # type: ignore[assignment]
    cmd.alarm.member = member
    return cmd.SerializeToString()


def encode_hash_check() -> bytes:
    """Entry data asking every member to hash its state at this log index."""
    cmd = raft_pb2.Command()
    cmd.hash_check.SetInParent()
    return cmd.SerializeToString()


def encode_register() -> bytes:
    """Entry data that opens a new client session (Raft thesis 6.3, RegisterClient).

    It carries nothing: the session's id is derived from the index of the entry when it
    is applied, so every replica assigns the same id and an id is never handed out twice
    (a client-chosen id could collide with, or resurrect, an evicted session).
    """
    cmd = raft_pb2.Command()
    cmd.register.SetInParent()
    return cmd.SerializeToString()


def decode(data: bytes) -> raft_pb2.Command:
    """Parse entry data; raises CommandDecodeError unless it is a Command with an operation."""
    cmd = raft_pb2.Command()
    try:
        cmd.ParseFromString(data)
    except DecodeError as exc:
        raise CommandDecodeError(f"not a Command: {exc}") from exc
    if cmd.WhichOneof("op") is None:
        raise CommandDecodeError("Command has no operation")
    return cmd
