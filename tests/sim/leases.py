"""A simulated lease holder, and the promise it checks: no lease expires early.

The holder grants leases on whichever node is leader, puts keys under them, keeps some of
them alive through that node (a keep-alive goes through the production rule: arrival time,
a ReadIndex round, then the lessor's renewal from the arrival) and abandons others so they
expire. Every expiry decision a leader's lessor makes is recorded; a decision earlier than
a full TTL after the last keep-alive (or grant) that was answered is a violation, whatever
crashes, partitions and elections happened in between. Only decisions that take effect
count: a deposed leader that does not know it yet may decide an expiry too, but its revoke
never commits; so the check runs when a revoke entry is first applied, against the
decision of the leader of that entry's term.

Its keys (L0...) are not the workload's, so the linearizability history is unaffected;
the leases themselves are replicated state and so are covered by the convergence checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvstore.etcdpb import rpc_pb2
from kvstore.raft.types import Entry, Role
from kvstore.server.lessor import Lessor
from kvstore.state.commands import (
    ApplyResult,
    encode_hash_check,
    encode_lease_grant,
    encode_txn,
)
from tests.sim.invariants import Violation
from tests.sim.node import Promise, SimNode
from tests.sim.world import US_PER_MS, US_PER_S, World


@dataclass
class _Held:
    ttl: int
    kept: bool  # we keep it alive; False: abandoned (it should expire)
    last_answered_send_us: int  # send time of the newest answered grant or keep-alive


class SimLeaseHolder:
    def __init__(self, world: World, rng: random.Random, nodes: dict[str, SimNode]) -> None:
        self.world = world
        self.rng = rng
        self.nodes = nodes
        self.held: dict[int, _Held] = {}
        self.stopping = False
        self.granted = self.keepalives = self.expiries = 0
        self._keys = 0
        self._watched: set[tuple[str, int]] = set()  # (node, incarnation) hooked
        self._decided: dict[tuple[int, int], int] = {}  # (term, lease) -> decision time
        self._revoked: set[int] = set()

    def start(self) -> None:
        self.world.schedule(self.rng.randint(50, 300) * US_PER_MS, self._act)

    # -- expiry decisions ----------------------------------------------------------------

    def hook(self) -> None:
        """Record every node's lessor decisions (new incarnations get new lessors)."""
        for node in self.nodes.values():
            rt = node.rt
            if rt is None or (node.id, node.incarnation) in self._watched:
                continue
            self._watched.add((node.id, node.incarnation))
            lessor: Lessor = rt.lessor
            original = lessor.expired

            def expired(original=original, node_id=node.id, rt=rt) -> list[int]:  # noqa: ANN001
                due = original()
                for lease_id in due:
                    self.expiries += 1
                    self._decided[(rt.term, lease_id)] = self.world.now
                    self.world.log(f"lease {lease_id:x} expires at {node_id} (t{rt.term})")
                return due

            lessor.expired = expired  # type: ignore[method-assign]

    def on_applied(self, node_id: str, entries: dict[int, Entry],
                   results: list[ApplyResult]) -> None:
        """A revoke entry applied for the first time: if a leader's expiry decision made
        it, that decision must have come a full TTL after the last answered keep-alive."""
        for r in results:
            if r.lease is None or r.lease.kind != "revoke" or r.lease.id in self._revoked:
                continue
            self._revoked.add(r.lease.id)
            term = entries[r.index].term
            decided = self._decided.get((term, r.lease.id))
            held = self.held.get(r.lease.id)
            if decided is None or held is None:
                continue  # a client's revoke, or not our lease
            earliest = held.last_answered_send_us + held.ttl * US_PER_S
            if decided < earliest:
                raise Violation("Lease expiry", (
                    f"lease {r.lease.id:x} (TTL {held.ttl}s) was revoked at entry {r.index} "
                    f"(term {term}) by an expiry decided at {decided / US_PER_MS:.0f}ms, but "
                    f"a keep-alive sent at {held.last_answered_send_us / US_PER_MS:.0f}ms was "
                    f"answered: it may not expire before {earliest / US_PER_MS:.0f}ms"))

    # -- actions -------------------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        ups = [n for n in self.nodes.values() if n.up and n.rt is not None]
        self.rng.shuffle(ups)
        return next((n for n in ups if n.role == Role.LEADER), ups[0] if ups else None)

    def _act(self) -> None:
        if self.stopping:
            return
        self.hook()
        node = self._leader()
        if node is not None and node.role == Role.LEADER:
            store = node.disk.store
            for lid in [lid for lid in self.held if store.lease(lid) is None]:
                del self.held[lid]  # revoked (expired): make room for new ones
        if node is not None:
            roll = self.rng.random()
            kept = [lid for lid, h in self.held.items() if h.kept]
            if len(self.held) < 3 and roll < 0.3:
                self._grant(node)
            elif kept and roll < 0.6:
                self._put(node, self.rng.choice(kept))
            elif kept and roll < 0.75:
                self.held[self.rng.choice(kept)].kept = False
                self.world.log("lease holder abandons a lease")
            if roll > 0.85 and node.role == Role.LEADER:  # members compare state hashes
                node.propose(encode_hash_check())
            for lid in kept:  # keep-alives every round, mostly to the leader we know
                target = node if self.rng.random() < 0.8 else self.rng.choice(
                    list(self.nodes.values()))
                self._keepalive(target, lid)
        self.world.schedule(self.rng.randint(100, 300) * US_PER_MS, self._act)

    def _grant(self, node: SimNode) -> None:
        rt = node.rt
        if rt is None or not rt.lessor.is_leader:
            return
        lid, ttl = rt.lessor.new_id(), rt.lessor.ttl_for(self.rng.choice((1, 1, 2)))
        sent = self.world.now

        def done(fut: Promise) -> None:
            if fut.error() is None and not fut.result().error:
                self.granted += 1
                self.held[lid] = _Held(ttl, True, sent)
                self.world.log(f"lease holder granted {lid:x} ttl {ttl}s")

        node.propose(encode_lease_grant(lid, ttl)).add_done_callback(done)

    def _put(self, node: SimNode, lid: int) -> None:
        self._keys += 1
        txn = rpc_pb2.TxnRequest()
        txn.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(
            key=f"L{self._keys % 5}".encode(), value=b"v", lease=lid))
        node.propose(encode_txn(b"", 0, 0, txn))

    def _keepalive(self, node: SimNode, lid: int) -> None:
        """NodeDriver.lease_keepalive's steps, on a simulated node: arrival time, a
        ReadIndex round, then the renewal counted from the arrival."""
        rt = node.rt
        if rt is None or not node.up:
            return
        sent = self.world.now
        lessor = rt.lessor
        try:
            since = lessor.start_keepalive(lid)
        except Exception:  # noqa: BLE001 - NotLeader / LeaseNotFound: not answered
            return

        def confirmed(fut: Promise) -> None:
            if fut.error() is not None or node.rt is not rt:
                return
            try:
                lessor.keepalive(lid, since)
            except Exception:  # noqa: BLE001 - lost leadership or the lease meanwhile
                return
            held = self.held.get(lid)
            if held is not None:
                self.keepalives += 1
                held.last_answered_send_us = max(held.last_answered_send_us, sent)

        node.read_index().add_done_callback(confirmed)
