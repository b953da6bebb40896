"""Cluster alarms, kept in the replicated state (as etcd's alarm store).

An alarm is raised and cleared only by applying an AlarmOp log entry, so every member
agrees from which log index on writes are refused and from which on they work again:
  * NOSPACE: a member's database passed its quota (`--quota-backend-bytes`). Puts and
    compare-and-swaps are refused ("database space exceeded"); reads, deletes and session
    registrations keep working, so an operator can free space and then disarm.
  * CORRUPT: members' state hashes differ at one applied index. Writes are refused until an
    operator has investigated and disarmed it.

Alarms live in the sessions database under their own key prefix, so snapshots carry them
and shard digests do not see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from kvstore.v1 import raft_pb2

SESSIONS_DB = "sessions"
_ALARM = b"a"  # _ALARM + type byte + member id -> b"" (presence is the alarm)

NOSPACE = raft_pb2.AlarmOp.NOSPACE
CORRUPT = raft_pb2.AlarmOp.CORRUPT
TYPE_NAMES = {NOSPACE: "NOSPACE", CORRUPT: "CORRUPT"}
MAX_MEMBER_BYTES = 255


class AlarmTxn(Protocol):
    def get(self, db: str, key: bytes) -> bytes | None: ...

    def put(self, db: str, key: bytes, value: bytes) -> None: ...

    def delete(self, db: str, key: bytes) -> bool: ...

    def first_key(self, db: str, prefix: bytes) -> bytes | None: ...

    def items(self, db: str) -> Iterator[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, order=True)
class Alarm:
    type: int
    member: str

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"TYPE{self.type}")


def _key(alarm_type: int, member: str) -> bytes:
    return _ALARM + bytes([alarm_type]) + member.encode()


def apply(txn: AlarmTxn, op: raft_pb2.AlarmOp) -> bool:
    """Apply an AlarmOp; returns whether anything changed. Unknown types change nothing."""
    if op.type not in TYPE_NAMES or len(op.member.encode()) > MAX_MEMBER_BYTES:
        return False
    if op.action == raft_pb2.AlarmOp.ACTIVATE:
        if not op.member or txn.get(SESSIONS_DB, _key(op.type, op.member)) is not None:
            return False
        txn.put(SESSIONS_DB, _key(op.type, op.member), b"")
        return True
    if op.member:
        return txn.delete(SESSIONS_DB, _key(op.type, op.member))
    doomed = [a for a in active(txn) if a.type == op.type]
    for a in doomed:
        txn.delete(SESSIONS_DB, _key(a.type, a.member))
    return bool(doomed)


def active(txn: AlarmTxn) -> list[Alarm]:
    """Every raised alarm, in (type, member) order."""
    if txn.first_key(SESSIONS_DB, _ALARM) is None:
        return []  # the common case, one cursor step
    found = []
    for key, _ in txn.items(SESSIONS_DB):
        if key.startswith(_ALARM) and len(key) >= 2:
            found.append(Alarm(key[1], key[2:].decode(errors="replace")))
    return sorted(found)


def writes_blocked(txn: AlarmTxn) -> bool:
    """Whether puts and compare-and-swaps are refused now (any alarm is raised)."""
    return txn.first_key(SESSIONS_DB, _ALARM) is not None
