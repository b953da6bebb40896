"""Client RPCs in the simulation: the client<->node link and a virtual-time shell around
the KV service's rules (kvstore.server.kv_rules.KVRules, the same object the gRPC service
uses): validation, command encoding, answers, Batch fan-out and the mapping of outcomes to
status codes all come from there, so the real client core makes the same decisions here as
against a real node. What this shell does is what kv_service does with asyncio: a write
waits for its proposal, a linearizable get for a ReadIndex point, then reads the store.

The link has latency and can lose a request or a response (the client then times out and
cannot know whether a write happened). A request to a node that is down fails fast with
"failed to connect", which the client knows was never sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from kvstore.client._core import RpcFailure
from kvstore.server.kv_rules import KVRules, RequestError
from kvstore.server.outcomes import LeadershipLost
from kvstore.state.mvcc import MvccError
from kvstore.v1 import kv_pb2
from tests.sim.invariants import Invariants
from tests.sim.node import ConnectionLost, Promise, SimNode
from tests.sim.world import US_PER_MS, World

Reply = Callable[[Any], None]  # receives a response message or an RpcFailure


def endpoint_of(node_id: str) -> str:
    """The address a simulated node listens on (must parse as HOST:PORT for the client)."""
    return f"{node_id}:7000"


def node_of(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0]


@dataclass
class RpcProfile:
    min_delay_us: int = 100
    max_delay_us: int = 2 * US_PER_MS
    lose_request: float = 0.0
    lose_response: float = 0.0


class SimService:
    def __init__(
        self, world: World, rng: random.Random, nodes: dict[str, SimNode], profile: RpcProfile,
        invariants: Invariants | None = None,
    ) -> None:
        self.world = world
        self.invariants = invariants
        self.rng = rng
        self.nodes = nodes
        self.profile = profile
        # Every stale read served, in serving order: (node, key, value, applied index).
        self.stale_served: list[tuple[str, bytes, bytes | None, int]] = []
        self.batches = 0
        self.rules = {
            n: KVRules(n, 4096, 1 << 20, endpoint_of)
            for n in nodes
        }

    def _delay(self) -> int:
        return self.rng.randint(self.profile.min_delay_us, self.profile.max_delay_us)

    # -- the link ----------------------------------------------------------------------

    def call(self, endpoint: str, method: str, request: Any, reply: Reply) -> None:
        node = self.nodes[node_of(endpoint)]
        if not node.up:
            failure = RpcFailure(grpc.StatusCode.UNAVAILABLE,
                                 "failed to connect to all addresses")
            self.world.schedule(self._delay(), reply, failure)
            return
        if self.profile.lose_request and self.rng.random() < self.profile.lose_request:
            return
        self.world.schedule(self._delay(), self._arrive, node, method, request, reply)

    def _respond(self, reply: Reply, answer: Any) -> None:
        if self.profile.lose_response and self.rng.random() < self.profile.lose_response:
            return
        self.world.schedule(self._delay(), reply, answer)

    # -- the service -------------------------------------------------------------------

    def _arrive(self, node: SimNode, method: str, request: Any, reply: Reply) -> None:
        if not node.up:
            # It may have crashed after reading the request: the client cannot tell.
            self._respond(reply, RpcFailure(grpc.StatusCode.UNAVAILABLE, "connection reset"))
            return
        rules = self.rules[node.id]

        def answer(outcome: Any) -> None:
            if isinstance(outcome, RequestError):
                meta = dict(outcome.metadata)
                outcome = RpcFailure(outcome.code, outcome.message,
                                     leader_id=meta.get("kvstore-leader-id", ""),
                                     leader_address=meta.get("kvstore-leader-address", ""))
            self._respond(reply, outcome)

        if method == "Batch":
            self._batch(node, rules, request, answer)
        else:
            self._execute(node, rules, method, request, answer)

    def _batch(self, node: SimNode, rules: KVRules, request: Any,
               answer: Callable[[Any], None]) -> None:
        """kv_service.Batch: every operation runs as its own call; the answer goes back
        when the last one is done."""
        try:
            ops = rules.batch_ops(request)
        except RequestError as err:
            answer(err)
            return
        self.batches += 1
        results: list[kv_pb2.OpResult | None] = [None] * len(ops)
        left = [len(ops)]

        def one_done(i: int, method: str | None, outcome: Any) -> None:
            results[i] = KVRules.op_result(method, outcome)
            left[0] -= 1
            if left[0] == 0:
                answer(kv_pb2.BatchResponse(results=results))

        if not ops:
            answer(kv_pb2.BatchResponse())
        for i, op in enumerate(ops):
            if op is None:
                one_done(i, None, None)
            else:
                method, sub = op
                self._execute(node, rules, method, sub,
                              lambda outcome, i=i, method=method: one_done(i, method, outcome))

    def _execute(self, node: SimNode, rules: KVRules, method: str, request: Any,
                 done: Callable[[Any], None]) -> None:
        """kv_service._execute: `done` gets the response or a RequestError."""
        try:
            op = rules.prepare(method, request)
        except RequestError as err:
            done(err)
            return
        if op.write is not None:
            try:
                rules.check_alarms(method, node.disk.store.alarms(), op)
            except RequestError as err:
                done(err)
                return

            def written(fut: Promise[Any]) -> None:
                err = fut.error()
                if err is not None:
                    done(self._failure(rules, err))
                    return
                try:  # (the data model may have refused it: a compaction's retry, say)
                    answer = rules.write_response(method, fut.result(), self._header(node))
                except RequestError as refused:
                    answer = refused
                done(answer)

            node.propose(op.write).add_done_callback(written)
            return

        # Everything committed anywhere before the read arrived must be in what it returns.
        floor = (self.invariants.read_floor()
                 if op.linearizable and self.invariants is not None else 0)

        def read(fut: Promise[int] | None = None) -> None:
            err = fut.error() if fut is not None else None
            if err is not None:
                done(self._failure(rules, err))
                return
            assert op.range is not None
            try:
                result, revision, applied = node.disk.store.range(op.range)
            except MvccError as mvcc_err:
                done(rules.mvcc_failure(mvcc_err.message))
                return
            if op.linearizable and self.invariants is not None:
                self.invariants.check_linearizable_read(node.id, floor, applied)
            if not op.linearizable and method == "Get":
                # A wiped node starts its history over: reads are monotonic per data dir.
                who = node.id if not node.disk.wipes else f"{node.id}/wipe{node.disk.wipes}"
                value = result.kvs[0].value if result.kvs else None
                self.stale_served.append((who, op.range.key, value, applied))
            header = self._header(node, applied)
            header.revision = revision
            done(rules.range_response(method, result, header))

        if op.linearizable:
            node.read_index().add_done_callback(read)
            return
        try:
            rules.check_local_read(node.rt is not None and node.rt.resyncing)
        except RequestError as err:
            done(err)
            return
        read()

    @staticmethod
    def _header(node: SimNode, applied: int | None = None) -> kv_pb2.ResponseHeader:
        rt = node.rt
        return KVRules.header(node.id, node.applied_index if applied is None else applied,
                              node.leader, rt.term if rt is not None else 0)

    @staticmethod
    def _failure(rules: KVRules, err: BaseException) -> RequestError:
        if isinstance(err, ConnectionLost):
            # The node died with the request: the client sees the connection drop.
            err = LeadershipLost(str(err))
        return rules.failure(err)
