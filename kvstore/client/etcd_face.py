"""The client's etcd face: etcd's KV, Lease and Watch services, called with the client's
retry policy.

Every kvstore node serves etcd's own v3 services on its client port (one state machine, two
faces), so watches, leases and the lock and election recipes speak *etcd's* API rather than
a native copy of it. That buys three things: one implementation of watch and lease semantics
on the server; recipes that interoperate with ``etcdctl lock``/``elect`` by construction
(same requests, same keys); and a client that can be tested against a real etcd.

Calls go through a ClientCore of their own (same endpoints, deadline and backoff as the
client's, but a separate router): any member serves the etcd API (followers forward to the
leader), so the router here only remembers which endpoint last answered, and the native
calls keep following real leader hints undisturbed.

No etcd call carries a write id: the recipes' writes are idempotent by construction (a Txn
on ``create_revision == 0``, a delete), as in etcd's own clients. A LeaseGrant retried after
a lost answer can leave an unused lease behind; it expires after its TTL.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from kvstore.client._core import (
    Backoff,
    Call,
    ClientCore,
    Operation,
    RpcFailure,
    failure_from_rpc_error,
)
from kvstore.client.errors import InvalidArgument, KVError, LeaseNotFound
from kvstore.client.membership import METHODS as MEMBERSHIP_METHODS
from kvstore.etcdpb import rpc_pb2 as pb

R = TypeVar("R")

KV, LEASE, WATCH = "etcdserverpb.KV", "etcdserverpb.Lease", "etcdserverpb.Watch"
WATCH_PATH = f"/{WATCH}/Watch"
KEEPALIVE_PATH = f"/{LEASE}/LeaseKeepAlive"

# method name -> (wire path, request class, response class); LeaseKeepAlive is a stream
# that the face opens for a single request and answer (etcd's KeepAliveOnce).
METHODS: dict[str, tuple[str, type[Any], type[Any]]] = {
    "Range": (f"/{KV}/Range", pb.RangeRequest, pb.RangeResponse),
    "Txn": (f"/{KV}/Txn", pb.TxnRequest, pb.TxnResponse),
    "LeaseGrant": (f"/{LEASE}/LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse),
    "LeaseRevoke": (f"/{LEASE}/LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse),
    "LeaseTimeToLive": (f"/{LEASE}/LeaseTimeToLive", pb.LeaseTimeToLiveRequest,
                        pb.LeaseTimeToLiveResponse),
    "LeaseLeases": (f"/{LEASE}/LeaseLeases", pb.LeaseLeasesRequest, pb.LeaseLeasesResponse),
    "LeaseKeepAlive": (KEEPALIVE_PATH, pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse),
}
METHODS.update(MEMBERSHIP_METHODS)  # Cluster's calls and MoveLeader (membership.py)
UNHEALTHY = "etcdserver: unhealthy cluster"
STREAMED = frozenset({"LeaseKeepAlive"})


def face_core(core: ClientCore) -> ClientCore:
    """A core with ``core``'s endpoints and policy and a router of its own (see above)."""
    p = core.policy
    return ClientCore(core.endpoints, timeout=p.timeout, attempt_timeout=p.attempt_timeout,
                      backoff_initial=p.backoff_initial, backoff_max=p.backoff_max,
                      rng=core.rng, security=core.security)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A granted lease: its id and the TTL the cluster gave it (which may exceed the TTL
    asked for: kvstore raises TTLs below its minimum, as etcd does)."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """LeaseTimeToLive's answer: seconds left (``ttl``; -1 when the lease does not exist),
    the TTL it was granted with, and with ``keys=True`` the keys attached to it."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...] = ()

    @property
    def exists(self) -> bool:
        return self.ttl >= 0


# --------------------------------------------------------------------------- operations


def _op(name: str, method: str, request: Any, parse: Callable[[Any], R],
        timeout: float | None) -> Operation[R]:
    return Operation(name=name, method=method, build=lambda _wid: request, parse=parse,
                     timeout=timeout)


def range_op(request: pb.RangeRequest, timeout: float | None = None
             ) -> Operation[pb.RangeResponse]:
    return _op("range", "Range", request, lambda r: r, timeout)


def txn_op(request: pb.TxnRequest, timeout: float | None = None) -> Operation[pb.TxnResponse]:
    return _op("txn", "Txn", request, lambda r: r, timeout)


def lease_grant_op(ttl: int, lease_id: int = 0, timeout: float | None = None
                   ) -> Operation[LeaseGrant]:
    if ttl <= 0:
        raise ValueError("a lease TTL must be a positive number of seconds")
    if lease_id < 0:
        raise ValueError("a lease id is a positive int64 (0: let the cluster choose)")

    def parse(r: pb.LeaseGrantResponse) -> LeaseGrant:
        if r.error:
            raise KVError(f"lease grant: {r.error}")
        return LeaseGrant(r.ID, r.TTL)

    return _op("lease grant", "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl, ID=lease_id),
               parse, timeout)


def lease_revoke_op(lease_id: int, timeout: float | None = None) -> Operation[None]:
    return _op("lease revoke", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id),
               lambda _r: None, timeout)


def keepalive_once_op(lease_id: int, timeout: float | None = None) -> Operation[int]:
    """One keep-alive; the result is the renewed TTL, 0 if the lease is gone."""
    return _op("lease keep-alive", "LeaseKeepAlive", pb.LeaseKeepAliveRequest(ID=lease_id),
               lambda r: int(r.TTL), timeout)


def time_to_live_op(lease_id: int, keys: bool = False, timeout: float | None = None
                    ) -> Operation[LeaseInfo]:
    return _op("lease timetolive", "LeaseTimeToLive",
               pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys),
               lambda r: LeaseInfo(r.ID or lease_id, r.TTL, r.grantedTTL,
                                   tuple(bytes(k) for k in r.keys)), timeout)


def leases_op(timeout: float | None = None) -> Operation[list[int]]:
    return _op("lease list", "LeaseLeases", pb.LeaseLeasesRequest(),
               lambda r: [lease.ID for lease in r.leases], timeout)


# --------------------------------------------------------------------------- failures


class NoAnswer(Exception):
    """A stream ended (or was cut) before the answer came; carries the failure to report."""

    def __init__(self, failure: RpcFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def _pre_check(op: Operation[Any], endpoint: str, failure: RpcFailure) -> KVError | None:
    """etcd's own failures that the native core would misread: FAILED_PRECONDITION is not a
    leader hint here (kvstore forwards etcd calls itself; etcd says e.g. "lease already
    exists"), and OUT_OF_RANGE of a lease call is "TTL too large", not a compacted read."""
    if failure.code is grpc.StatusCode.FAILED_PRECONDITION:
        return KVError(f"{op.name} failed on {endpoint}: {failure.describe()}")
    if failure.code is grpc.StatusCode.UNAVAILABLE and UNHEALTHY in failure.details:
        # A membership change that would cost the quorum: final, as etcd answers it.
        return KVError(f"{op.name} refused by {endpoint}: {failure.describe()}")
    if failure.code is grpc.StatusCode.OUT_OF_RANGE and op.method.startswith("Lease"):
        return InvalidArgument(f"{op.name} rejected by {endpoint}: {failure.describe()}")
    return None


def refine(error: KVError) -> KVError:
    """The core reports etcd's "requested lease not found" as InvalidArgument; callers of
    the lease API want to tell it apart."""
    if isinstance(error, InvalidArgument) and "lease not found" in error.message:
        return LeaseNotFound(error.message, maybe_applied=error.maybe_applied)
    return error


def fail_attempt(call: Call[Any], endpoint: str, failure: RpcFailure) -> KVError | None:
    """Record a failed attempt of ``call``: the error to raise, or None to retry."""
    error = _pre_check(call.op, endpoint, failure)
    if error is not None:
        call.close()
        return error
    error = call.on_failure(endpoint, failure, time.monotonic())
    return None if error is None else refine(error)


# --------------------------------------------------------------------------- shells


class SyncFace:
    """Runs etcd operations over a KVClient's channels (the same retry loop as KVClient)."""

    def __init__(self, core: ClientCore, channel: Callable[[str], grpc.Channel]) -> None:
        self.core = face_core(core)
        self.channel = channel

    def run(self, op: Operation[R]) -> R:
        call = self.core.start(op, time.monotonic())
        try:
            while True:
                step = call.next_step(time.monotonic())
                if isinstance(step, Backoff):
                    time.sleep(step.seconds)
                    continue
                try:
                    response = self._invoke(step.endpoint, call.method, call.request,
                                            step.timeout)
                except grpc.RpcError as exc:
                    failure = failure_from_rpc_error(exc)
                except NoAnswer as exc:
                    failure = exc.failure
                else:
                    return call.on_success(step.endpoint, response)  # type: ignore[return-value]
                error = fail_attempt(call, step.endpoint, failure)
                if error is not None:
                    raise error
        except KVError as exc:
            raise refine(exc) from None
        finally:
            call.close()

    def _invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        path, req_cls, resp_cls = METHODS[method]
        channel = self.channel(endpoint)
        if method not in STREAMED:
            rpc = channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                                      response_deserializer=resp_cls.FromString)
            return rpc(request, timeout=timeout)
        # One request on a stream, kept open until the answer is read (a half-close first
        # could let a server end the stream before it answers).
        answered = threading.Event()

        def requests() -> Any:
            yield request
            answered.wait(timeout)

        stream = channel.stream_stream(path, request_serializer=req_cls.SerializeToString,
                                       response_deserializer=resp_cls.FromString)
        responses = stream(requests(), timeout=timeout)
        try:
            for response in responses:
                return response
            raise NoAnswer(RpcFailure(grpc.StatusCode.UNAVAILABLE,
                                      "stream ended without an answer"))
        finally:
            answered.set()
            responses.cancel()


class AsyncFace:
    """Runs etcd operations over an AsyncKVClient's channels."""

    def __init__(self, core: ClientCore, channel: Callable[[str], grpc.aio.Channel]) -> None:
        self.core = face_core(core)
        self.channel = channel

    async def run(self, op: Operation[R]) -> R:
        call = self.core.start(op, time.monotonic())
        try:
            while True:
                step = call.next_step(time.monotonic())
                if isinstance(step, Backoff):
                    await asyncio.sleep(step.seconds)
                    continue
                try:
                    response = await self._invoke(step.endpoint, call.method, call.request,
                                                  step.timeout)
                except grpc.RpcError as exc:
                    failure = failure_from_rpc_error(exc)
                except NoAnswer as exc:
                    failure = exc.failure
                else:
                    return call.on_success(step.endpoint, response)  # type: ignore[return-value]
                error = fail_attempt(call, step.endpoint, failure)
                if error is not None:
                    raise error
        except KVError as exc:
            raise refine(exc) from None
        finally:
            call.close()

    async def _invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        path, req_cls, resp_cls = METHODS[method]
        channel = self.channel(endpoint)
        if method not in STREAMED:
            rpc = channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                                      response_deserializer=resp_cls.FromString)
            return await rpc(request, timeout=timeout)
        stream = channel.stream_stream(path, request_serializer=req_cls.SerializeToString,
                                       response_deserializer=resp_cls.FromString)
        call = stream(timeout=timeout)
        try:
            await call.write(request)
            response = await call.read()
            if response is grpc.aio.EOF:
                raise NoAnswer(RpcFailure(grpc.StatusCode.UNAVAILABLE,
                                          "stream ended without an answer"))
            return response
        finally:
            call.cancel()


__all__ = ["AsyncFace", "LeaseGrant", "LeaseInfo", "SyncFace", "face_core", "refine"]
