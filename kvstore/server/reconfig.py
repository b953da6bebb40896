"""The node runtime's membership rules beyond the core's: which changes a leader refuses
before proposing them, and the bookkeeping of leader-transfer requests. Pure, no I/O:
kvstore.server.runtime.NodeRuntime uses both (so the simulator checks them too)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from kvstore.raft.errors import NotLeader, TransferRefused
from kvstore.raft.rawnode import RawNode, Status
from kvstore.state import membership
from kvstore.state.membership import CT, Member
from kvstore.v1 import raft_pb2

PROMOTE_READY_FRACTION = (9, 10)  # etcd: a learner within 10% of the leader's log


class Waiter(Protocol):
    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


class MembershipRefused(Exception):
    """A membership change or leader transfer that was not made (nothing changed); the
    message says why. `retryable` when it may succeed later as it is (a change or an
    election in progress, a learner still catching up)."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def leader_refusal(cc: raft_pb2.ConfChange, node_id: str, members: Sequence[Member],
                   removed: Sequence[str], st: Status) -> tuple[str | None, bool]:
    """(why the leader `node_id` refuses `cc`, whether a retry may succeed), or (None,
    False). Beyond the state machine's own checks (applied alike on every member, and made
    here first for a clear answer), the leader refuses what would cost the cluster its
    quorum (etcd's strict reconfiguration check: counting the voters it heard from within
    an election timeout) and the promotion of a learner that is not nearly caught up."""
    try:
        membership.check_node_id(cc.node_id)
    except membership.ConfChangeError as err:
        return str(err), False
    if cc.type not in (CT.CONF_ADD_VOTER, CT.CONF_ADD_LEARNER, CT.CONF_PROMOTE,
                       CT.CONF_REMOVE, CT.CONF_UPDATE):
        return "unknown membership change type", False
    if members:
        records = {m.id: raft_pb2.MemberRecord(peer_address=m.peer_address, learner=m.learner)
                   for m in members}
        for gone in removed:
            records[gone] = raft_pb2.MemberRecord(removed=True)
        try:
            membership.check(records, cc)
        except membership.ConfChangeError as err:
            return str(err), False

    def active(node: str) -> bool:
        p = st.progress.get(node)
        return node == node_id or (p is not None and p.active)

    voters = set(st.voters)
    if cc.type == CT.CONF_PROMOTE:
        p = st.progress.get(cc.node_id)
        have = 0 if p is None else p.match
        num, den = PROMOTE_READY_FRACTION
        if have < st.last_index * num // den:
            return (f"learner {cc.node_id} is not ready: it holds the log up to {have} of "
                    f"{st.last_index} (promotion needs {100 * num // den}%)"), True
    if cc.type in (CT.CONF_ADD_VOTER, CT.CONF_PROMOTE):
        after = voters | {cc.node_id}
        up = sum(1 for v in after if active(v))
        if up < len(after) // 2 + 1:
            return (f"the cluster would lose its quorum: {up} of {len(after)} voters "
                    "would be reachable"), True
    if cc.type == CT.CONF_REMOVE and cc.node_id in voters:
        after = voters - {cc.node_id}
        up = sum(1 for v in after if active(v))
        if up < len(after) // 2 + 1:
            return (f"the cluster would lose its quorum: {up} of {len(after)} remaining "
                    "voters are reachable"), True
    return None, False


class Transfers:
    """Leader-transfer requests: queued until the next turn, then waiting until a leader
    is known again (the target: done; anyone else: refused) or the core gives up."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, Waiter]] = []
        self.waiting: list[tuple[str, Waiter]] = []

    def request(self, target: str, waiter: Waiter) -> None:
        self.queued.append((target, waiter))

    def start(self, raw: RawNode, node_id: str) -> None:
        """Hand every queued request to the core."""
        queued, self.queued = self.queued, []
        for target, w in queued:
            if w.done():
                continue
            try:
                raw.transfer_leadership(target)
            except NotLeader as err:
                w.set_exception(NotLeader(err.leader))
            except TransferRefused as err:
                w.set_exception(MembershipRefused(str(err)))
            else:
                if target == node_id:
                    w.set_result(None)
                else:
                    self.waiting.append((target, w))

    def leader_known(self, leader: str) -> None:
        """A leader is known again: the transfers end, well or not."""
        for target, w in self.waiting:
            if target == leader and not w.done():
                w.set_result(None)
        self.fail(f"leadership went to {leader}, not the transfer target")

    def fail(self, why: str) -> None:
        waiting, self.waiting = self.waiting, []
        for _, w in waiting:
            if not w.done():
                w.set_exception(MembershipRefused(why, True))

    def fail_all(self, err: Exception) -> None:
        for _, w in [*self.queued, *self.waiting]:
            if not w.done():
                w.set_exception(err)
        self.queued.clear()
        self.waiting.clear()
