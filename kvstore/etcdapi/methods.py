"""etcd's services, registered by hand under etcd's own names.

kvstore.etcdpb has etcd's messages (field numbers) in kvstore's own proto package and no
service stubs, so that an etcd client library's generated code can live in the same
process. The wire paths must still be etcd's (/etcdserverpb.KV/Range, ...): they are
spelled here, with each method's request and response classes, and served through
grpc.method_handlers_generic_handler. ``stub`` is the matching client side (tests, and
the forwarding of a follower to its leader).

FORWARD_SERVICE is kvstore's own, served on the peer port only: what a follower cannot
do itself (a write, a linearizable read, a lease renewal) it sends there, to the leader
(see forward.py). It is unary only: a follower's LeaseKeepAlive stream sends each
keep-alive as one LeaseKeepAliveOnce call, as etcd's followers renew over HTTP one by one.

STREAMS names the bidirectional methods (Watch, LeaseKeepAlive); every other method is
unary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf.message import Message

from kvstore.etcdpb import rpc_pb2 as pb

KV = "etcdserverpb.KV"
MAINTENANCE = "etcdserverpb.Maintenance"
CLUSTER = "etcdserverpb.Cluster"
WATCH = "etcdserverpb.Watch"
LEASE = "etcdserverpb.Lease"
FORWARD_SERVICE = "kvstore.etcdapi.Forward"

MessageTypes = tuple[type[Message], type[Message]]

# service -> method -> (request class, response class)
SERVICES: dict[str, dict[str, MessageTypes]] = {
    KV: {
        "Range": (pb.RangeRequest, pb.RangeResponse),
        "Put": (pb.PutRequest, pb.PutResponse),
        "DeleteRange": (pb.DeleteRangeRequest, pb.DeleteRangeResponse),
        "Txn": (pb.TxnRequest, pb.TxnResponse),
        "Compact": (pb.CompactionRequest, pb.CompactionResponse),
    },
    MAINTENANCE: {
        "Alarm": (pb.AlarmRequest, pb.AlarmResponse),
        "Status": (pb.StatusRequest, pb.StatusResponse),
        "Defragment": (pb.DefragmentRequest, pb.DefragmentResponse),
        "Hash": (pb.HashRequest, pb.HashResponse),
        "HashKV": (pb.HashKVRequest, pb.HashKVResponse),
        "MoveLeader": (pb.MoveLeaderRequest, pb.MoveLeaderResponse),
        "Snapshot": (pb.SnapshotRequest, pb.SnapshotResponse),
    },
    CLUSTER: {
        "MemberList": (pb.MemberListRequest, pb.MemberListResponse),
        "MemberAdd": (pb.MemberAddRequest, pb.MemberAddResponse),
        "MemberRemove": (pb.MemberRemoveRequest, pb.MemberRemoveResponse),
        "MemberUpdate": (pb.MemberUpdateRequest, pb.MemberUpdateResponse),
        "MemberPromote": (pb.MemberPromoteRequest, pb.MemberPromoteResponse),
    },
    WATCH: {
        "Watch": (pb.WatchRequest, pb.WatchResponse),
    },
    LEASE: {
        "LeaseGrant": (pb.LeaseGrantRequest, pb.LeaseGrantResponse),
        "LeaseRevoke": (pb.LeaseRevokeRequest, pb.LeaseRevokeResponse),
        "LeaseKeepAlive": (pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse),
        "LeaseTimeToLive": (pb.LeaseTimeToLiveRequest, pb.LeaseTimeToLiveResponse),
        "LeaseLeases": (pb.LeaseLeasesRequest, pb.LeaseLeasesResponse),
    },
}

# Bidirectional streams: (service, method).
STREAMS = frozenset({(WATCH, "Watch"), (LEASE, "LeaseKeepAlive")})
# Server streams (one request, a stream of answers).
SERVER_STREAMS = frozenset({(MAINTENANCE, "Snapshot")})

# What a follower forwards to its leader: the KV service's methods, the alarm (it goes
# through the log), the member list (a node asks a peer for its own client address),
# membership changes and MoveLeader (the leader makes them), the
# lease calls (grants and revokes go through the log; renewals and the remaining TTL are
# the leader's clock) and single keep-alives.
SERVICES[FORWARD_SERVICE] = {
    **SERVICES[KV],
    "Alarm": SERVICES[MAINTENANCE]["Alarm"],
    **SERVICES[CLUSTER],
    "MoveLeader": SERVICES[MAINTENANCE]["MoveLeader"],
    **{m: t for m, t in SERVICES[LEASE].items() if (LEASE, m) not in STREAMS},
    "LeaseKeepAliveOnce": SERVICES[LEASE]["LeaseKeepAlive"],
}

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamHandler = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]


def generic_handler(service: str, handlers: Mapping[str, Handler | StreamHandler]
                    ) -> grpc.GenericRpcHandler:
    """The handlers of ``service`` (one per method name; a method of SERVICES left out
    answers UNIMPLEMENTED, as any unknown path). A method of STREAMS takes a stream
    handler: ``fn(request_iterator, context)``, an async generator of responses."""
    table = SERVICES[service]
    unknown = set(handlers) - set(table)
    if unknown:
        raise ValueError(f"{service} has no method(s) {sorted(unknown)}")
    return grpc.method_handlers_generic_handler(service, {
        name: (grpc.stream_stream_rpc_method_handler if (service, name) in STREAMS
               else grpc.unary_stream_rpc_method_handler if (service, name) in SERVER_STREAMS
               else grpc.unary_unary_rpc_method_handler)(
            fn,
            request_deserializer=table[name][0].FromString,
            response_serializer=table[name][1].SerializeToString)
        for name, fn in handlers.items()
    })


def path(service: str, method: str) -> str:
    return f"/{service}/{method}"


def stub(channel: grpc.Channel | grpc.aio.Channel, service: str) -> SimpleNamespace:
    """Callables for every method of ``service`` on ``channel`` (sync or asyncio):
    ``stub(ch, KV).Range(pb.RangeRequest(key=b"a"), timeout=5)``; a method of STREAMS is
    a stream-stream callable (``stub(ch, WATCH).Watch()`` -> a call to write and read)."""
    return SimpleNamespace(**{
        name: (channel.stream_stream if (service, name) in STREAMS
               else channel.unary_stream if (service, name) in SERVER_STREAMS
               else channel.unary_unary)(
            path(service, name),
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString)
        for name, (req, resp) in SERVICES[service].items()
    })
