"""Client RPCs in the simulation: the client<->node link and the KV service's rules.

The rules mirror kvstore.server.kv_service: a write is encoded with the request's write id
and proposed through the node runtime; a linearizable get waits for a ReadIndex point and
then reads the store; a stale get reads the store at once. Outcomes map to the same gRPC
status codes the real service returns (NotLeader -> FAILED_PRECONDITION with leader hints,
LeadershipLost -> UNAVAILABLE, ...), so the real client core makes the same decisions.

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
from kvstore.raft.errors import NotLeader
from kvstore.server.node import LeadershipLost, StaleRequest
from kvstore.state import commands
from kvstore.v1 import kv_pb2
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
        self, world: World, rng: random.Random, nodes: dict[str, SimNode], profile: RpcProfile
    ) -> None:
        self.world = world
        self.rng = rng
        self.nodes = nodes
        self.profile = profile
        # Every stale read served, in serving order: (node, key, value, applied index).
        self.stale_served: list[tuple[str, bytes, bytes | None, int]] = []

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
        if method == "Get":
            self._get(node, request, reply)
            return
        w = request.write_id
        cid, seq, low = w.client_id, w.seq, w.lowest_pending_seq
        if method == "Put":
            data = commands.encode_put(cid, seq, low, request.key, request.value)
        elif method == "Delete":
            data = commands.encode_delete(cid, seq, low, request.key)
        elif method == "CompareAndSwap":
            expected = None if request.expect_absent else request.expected
            data = commands.encode_cas(cid, seq, low, request.key, expected, request.value)
        else:
            raise AssertionError(f"unknown method {method}")
        fut = node.propose(data)
        fut.add_done_callback(lambda f: self._write_done(node, method, f, reply))

    def _write_done(self, node: SimNode, method: str, fut: Promise[Any], reply: Reply) -> None:
        err = fut.error()
        if err is not None:
            self._respond(reply, self._failure(node, err))
            return
        res = fut.result()
        header = self._header(node)
        if method == "Put":
            answer: Any = kv_pb2.PutResponse(header=header)
        elif method == "Delete":
            answer = kv_pb2.DeleteResponse(header=header, existed=res.ok)
        else:
            answer = kv_pb2.CompareAndSwapResponse(header=header, succeeded=res.ok)
        self._respond(reply, answer)

    def _get(self, node: SimNode, request: Any, reply: Reply) -> None:
        def read(fut: Promise[int] | None = None) -> None:
            err = fut.error() if fut is not None else None
            if err is not None:
                self._respond(reply, self._failure(node, err))
                return
            found, value, applied = node.disk.store.get(request.key)
            if request.stale:
                self.stale_served.append((node.id, request.key, value if found else None,
                                          applied))
            self._respond(reply, kv_pb2.GetResponse(
                header=self._header(node, applied), found=found, value=value))

        if request.stale:
            read()
        else:
            node.read_index().add_done_callback(read)

    @staticmethod
    def _header(node: SimNode, applied: int | None = None) -> kv_pb2.ResponseHeader:
        raw = node.raw
        return kv_pb2.ResponseHeader(
            node_id=node.id,
            applied_index=node.applied_index if applied is None else applied,
            leader_id=node.leader,
            term=raw.raft.term if raw is not None else 0,
        )

    @staticmethod
    def _failure(node: SimNode, err: BaseException) -> RpcFailure:
        """kv_service._wait's mapping from runtime exceptions to status codes."""
        if isinstance(err, NotLeader):
            leader = err.leader
            return RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {node.id} is not the leader",
                leader_id=leader,
                leader_address=endpoint_of(leader) if leader else "",
            )
        if isinstance(err, StaleRequest):
            return RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        if isinstance(err, (LeadershipLost, ConnectionLost)):
            return RpcFailure(grpc.StatusCode.UNAVAILABLE, str(err))
        raise err
