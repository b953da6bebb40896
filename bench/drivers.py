"""One operation interface over kvstore, etcd and the floor server.

Why: the comparison is only fair if the same load generator drives every system. The
workloads in bench/suite.py and bench/load.py call `put`, `get` (linearizable) and
`stale_get` on a driver and never know which system is behind it:

- kvstore and the floor server are driven through the real `KVClient` /
  `AsyncKVClient`, so the client's own cost (retry core, write ids) is part of what is
  measured, exactly as a user would pay it; the floor server shows that cost alone.
- etcd is driven through raw gRPC stubs of `etcdserverpb.KV` (no retry layer), with the
  same channel options. Writes and linearizable reads go to the leader (the best case for
  etcd, and what the kvstore client does after its first call); stale reads
  (`serializable=true`) are spread over the followers, like kvstore's.
- Through the etcd API with a Python etcd client (aetcd, bench/aetcd_drivers.py), on
  kvstore and on etcd alike: a TargetSpec with `client="aetcd"`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import grpc.aio

from kvstore.client import AsyncKVClient, KVClient
from kvstore.client._core import CHANNEL_OPTIONS
from kvstore.etcdapi.methods import KV as ETCD_KV
from kvstore.etcdapi.methods import stub as etcd_stub
from kvstore.etcdpb import rpc_pb2 as etcd_pb

OPS: tuple[str, ...] = ("put", "linearizable_get", "stale_get")
RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class TargetSpec:
    """A running system under test; picklable, so worker processes can connect to it.

    `leader` takes writes and linearizable reads, `followers` serve stale reads (for the
    single-process floor server both are its one endpoint), `pids` are the server
    processes whose CPU use is recorded. `client` is how the load generator talks to it:
    "native" (kvstore's client; raw stubs for etcd) or "aetcd" (the etcd API through aetcd).
    """

    name: str  # "kvstore-3", "kvstore-5", "etcd-3", "floor", "kvstore-3-etcdapi", ...
    kind: str  # "kvstore" | "etcd" | "floor"
    nodes: int
    leader: str
    endpoints: tuple[str, ...]
    followers: tuple[str, ...]
    pids: tuple[int, ...] = ()
    info: dict[str, str] = field(default_factory=dict)
    client: str = "native"

    def ordered_endpoints(self) -> list[str]:
        """The leader first, so a client's first attempt needs no redirect."""
        return [self.leader, *(e for e in self.endpoints if e != self.leader)]


class SyncDriver(Protocol):
    """Blocking operations, for sequential latency from one client."""

    def put(self, key: bytes, value: bytes) -> None: ...
    def get(self, key: bytes) -> None: ...
    def stale_get(self, key: bytes, follower: int) -> None: ...
    def close(self) -> None: ...


class AsyncDriver(Protocol):
    """asyncio operations, for many writers in flight from one process."""

    async def put(self, key: bytes, value: bytes) -> None: ...
    async def get(self, key: bytes) -> None: ...
    async def stale_get(self, key: bytes, follower: int) -> None: ...
    async def close(self) -> None: ...


class TimedDriver(SyncDriver, Protocol):
    """A blocking driver over an asyncio client that times a series inside its own event
    loop (so that starting the loop for each call is not counted): the latencies (s) of
    `op` on key(0..n-1), `progress(done)` after each."""

    def timed(self, op: str, n: int, key: Callable[[int], bytes], value: bytes,
              progress: Callable[[int], None]) -> list[float]: ...


def call_sync(driver: SyncDriver, op: str, key: bytes, value: bytes, follower: int) -> None:
    """One operation of OPS on a blocking driver (`follower` picks a stale read's node)."""
    if op == "put":
        driver.put(key, value)
    elif op == "linearizable_get":
        driver.get(key)
    elif op == "stale_get":
        driver.stale_get(key, follower)
    else:
        raise ValueError(f"unknown operation {op!r}")


async def call_async(driver: AsyncDriver, op: str, key: bytes, value: bytes,
                     follower: int) -> None:
    """call_sync for an asyncio driver."""
    if op == "put":
        await driver.put(key, value)
    elif op == "linearizable_get":
        await driver.get(key)
    elif op == "stale_get":
        await driver.stale_get(key, follower)
    else:
        raise ValueError(f"unknown operation {op!r}")


# --------------------------------------------------------------------------- kvstore / floor


class KvstoreSync:
    """KVClient to the cluster plus one pinned KVClient per follower for stale reads."""

    def __init__(self, spec: TargetSpec) -> None:
        self.client = KVClient(spec.ordered_endpoints(), timeout=RPC_TIMEOUT)
        self.followers = [KVClient([f], timeout=RPC_TIMEOUT) for f in spec.followers]

    def put(self, key: bytes, value: bytes) -> None:
        self.client.put(key, value)

    def get(self, key: bytes) -> None:
        self.client.get(key)

    def stale_get(self, key: bytes, follower: int) -> None:
        self.followers[follower % len(self.followers)].get(key, stale=True)

    def close(self) -> None:
        for c in (self.client, *self.followers):
            c.close()


class KvstoreAsync:
    """AsyncKVClient counterpart of KvstoreSync; create inside the worker's event loop."""

    def __init__(self, spec: TargetSpec) -> None:
        self.client = AsyncKVClient(spec.ordered_endpoints(), timeout=RPC_TIMEOUT)
        self.followers = [AsyncKVClient([f], timeout=RPC_TIMEOUT) for f in spec.followers]

    async def put(self, key: bytes, value: bytes) -> None:
        await self.client.put(key, value)

    async def get(self, key: bytes) -> None:
        await self.client.get(key)

    async def stale_get(self, key: bytes, follower: int) -> None:
        await self.followers[follower % len(self.followers)].get(key, stale=True)

    async def close(self) -> None:
        for c in (self.client, *self.followers):
            await c.close()


# --------------------------------------------------------------------------- etcd


class EtcdSync:
    """Blocking etcdserverpb.KV stubs: Put and Range to the leader, serializable Range
    to the followers."""

    def __init__(self, spec: TargetSpec) -> None:
        self.pb = etcd_pb
        self.channels = {ep: grpc.insecure_channel(ep, options=CHANNEL_OPTIONS)
                         for ep in spec.endpoints}
        stubs = {ep: etcd_stub(ch, ETCD_KV) for ep, ch in self.channels.items()}
        self.leader = stubs[spec.leader]
        self.followers = [stubs[f] for f in spec.followers]

    def put(self, key: bytes, value: bytes) -> None:
        self.leader.Put(self.pb.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT)

    def get(self, key: bytes) -> None:
        self.leader.Range(self.pb.RangeRequest(key=key), timeout=RPC_TIMEOUT)

    def stale_get(self, key: bytes, follower: int) -> None:
        stub = self.followers[follower % len(self.followers)]
        stub.Range(self.pb.RangeRequest(key=key, serializable=True), timeout=RPC_TIMEOUT)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


class EtcdAsync:
    """grpc.aio counterpart of EtcdSync; create inside the worker's event loop."""

    def __init__(self, spec: TargetSpec) -> None:
        self.pb = etcd_pb
        self.channels = {ep: grpc.aio.insecure_channel(ep, options=CHANNEL_OPTIONS)
                         for ep in spec.endpoints}
        stubs = {ep: etcd_stub(ch, ETCD_KV) for ep, ch in self.channels.items()}
        self.leader = stubs[spec.leader]
        self.followers = [stubs[f] for f in spec.followers]

    async def put(self, key: bytes, value: bytes) -> None:
        await self.leader.Put(self.pb.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT)

    async def get(self, key: bytes) -> None:
        await self.leader.Range(self.pb.RangeRequest(key=key), timeout=RPC_TIMEOUT)

    async def stale_get(self, key: bytes, follower: int) -> None:
        stub = self.followers[follower % len(self.followers)]
        await stub.Range(self.pb.RangeRequest(key=key, serializable=True), timeout=RPC_TIMEOUT)

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


def sync_driver(spec: TargetSpec) -> SyncDriver:
    """The blocking driver for a target."""
    if spec.client == "aetcd":
        from bench.aetcd_drivers import AetcdSync

        return AetcdSync(spec)
    return EtcdSync(spec) if spec.kind == "etcd" else KvstoreSync(spec)


def async_driver(spec: TargetSpec) -> AsyncDriver:
    """The asyncio driver for a target (call from inside a running event loop)."""
    if spec.client == "aetcd":
        from bench.aetcd_drivers import AetcdAsync

        return AetcdAsync(spec)
    return EtcdAsync(spec) if spec.kind == "etcd" else KvstoreAsync(spec)
