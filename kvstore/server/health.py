"""Whether a node is healthy, and the standard gRPC health service that reports it.

One rule serves both /health (metrics_http.py) and grpc.health.v1.Health on the client
port, so a load balancer and an operator's curl never disagree. A node is unhealthy when:
  * it knows no leader (an election is going on, or it is cut off from a majority):
    linearizable reads and writes through it would fail;
  * a cluster alarm is raised (NOSPACE or CORRUPT): writes are refused cluster-wide;
  * its durable write waits for disk space (out of space: writes stall);
  * it was resynced and holds no data from a leader yet.
etcd's /health also refuses on alarms and a missing leader; it additionally runs a
linearizable read, which we skip so that a probe costs no Raft round.

The gRPC service answers for "" (the server) and "kvstore.v1.KV"; Check computes the
status when asked, Watch re-evaluates it every WATCH_POLL_SECONDS and sends changes.
The generated messages and stubs come from grpcio-health-checking; the servicer is ours
because that package's servicer only reports statuses someone sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvstore.state.alarms import Alarm

SERVICES = frozenset({"", "kvstore.v1.KV"})
WATCH_POLL_SECONDS = 0.25
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthView(Protocol):
    """What the health rule reads of a node (NodeDriver offers it, with its store)."""

    @property
    def leader(self) -> str: ...

    out_of_space: str


class AlarmSource(Protocol):
    def alarms(self) -> list[Alarm]: ...


class NodeHealth:
    """The health rule over one node's driver and store; ``check`` is cheap (no I/O
    beyond one LMDB read of the alarms)."""

    def __init__(self, node: HealthView, store: AlarmSource,
                 rebuilding: Callable[[], bool] = lambda: False) -> None:
        self._node = node
        self._store = store
        self._rebuilding = rebuilding

    def check(self) -> tuple[bool, str]:
        """(healthy, reason); the reason is "" when healthy."""
        if not self._node.leader:
            return False, "no leader"
        alarms = self._store.alarms()
        if alarms:
            raised = ", ".join(f"{a.name} (member {a.member})" for a in alarms)
            return False, f"alarm raised: {raised}"
        if self._node.out_of_space:
            return False, f"writes wait for disk space: {self._node.out_of_space}"
        if self._rebuilding():
            return False, "resyncing: no data from the leader yet"
        return True, ""


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health: SERVING when NodeHealth says healthy, NOT_SERVING otherwise."""

    def __init__(self, check: Callable[[], tuple[bool, str]],
                 poll_seconds: float = WATCH_POLL_SECONDS) -> None:
        self._check = check
        self._poll = poll_seconds

    def _status(self) -> int:
        healthy, _ = self._check()
        return SERVING if healthy else NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 (gRPC name)
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status())

    async def Watch(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 (gRPC name)
                    context: Any) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The current status at once, then every change, until the client goes away.
        An unknown service is SERVICE_UNKNOWN (the protocol keeps such a watch open)."""
        known = request.service in SERVICES
        last = None
        while True:
            status = (self._status() if known
                      else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(self._poll)


def add_health_service(server: grpc.aio.Server, check: Callable[[], tuple[bool, str]]) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(check), server)
