"""Wiring of etcd's API into a node's two gRPC servers (called by kvstore.server.app).

Client port: etcdserverpb.KV, .Maintenance, .Cluster, .Watch and .Lease, with the client
port's TLS like kvstore's own API. Peer port: the forward service (forward.py), which
followers use to reach the leader; it admits members only (peer TLS and the PeerGate).

KVSTORE_WATCH_PROGRESS_NOTIFY_INTERVAL (seconds, default 600 as etcd's) sets how often an
idle watch that asked for progress_notify hears the current revision: etcd's hidden
--experimental-watch-progress-notify-interval, for tests and impatient clients.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import grpc

from kvstore.etcdapi.cluster_service import EtcdClusterService
from kvstore.etcdapi.common import EtcdNode, Store
from kvstore.etcdapi.forward import Forwarder, forward_handler
from kvstore.etcdapi.kv_service import EtcdKVService
from kvstore.etcdapi.lease_service import EtcdLeaseService
from kvstore.etcdapi.maintenance_service import EtcdMaintenanceService
from kvstore.etcdapi.members import MemberBook
from kvstore.etcdapi.membership_service import EtcdMembershipService
from kvstore.etcdapi.methods import CLUSTER, KV, LEASE, MAINTENANCE, WATCH, generic_handler
from kvstore.etcdapi.snapshot_service import EtcdSnapshotService
from kvstore.etcdapi.watch_service import DEFAULT_PROGRESS_INTERVAL, EtcdWatchService
from kvstore.server.config import NodeConfig
from kvstore.server.identity import PeerGate
from kvstore.server.node import NodeDriver
from kvstore.state.membership import Member

log = logging.getLogger("kvstore.etcdapi")
PROGRESS_INTERVAL_ENV = "KVSTORE_WATCH_PROGRESS_NOTIFY_INTERVAL"


def progress_interval() -> float:
    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_PROGRESS_INTERVAL
    except ValueError:
        value = 0.0
    if value <= 0:
        log.warning("%s=%r is not a positive number of seconds; using %s", PROGRESS_INTERVAL_ENV,
                    raw, DEFAULT_PROGRESS_INTERVAL)
        value = DEFAULT_PROGRESS_INTERVAL
    return value


@dataclass
class EtcdApi:
    """What the node shell keeps of the etcd API: the forwarder (closed at shutdown) and
    the member book (told of membership changes)."""

    forwarder: Forwarder
    book: MemberBook

    def set_members(self, members: list[Member]) -> None:
        self.book.set_members(members)
        self.forwarder.peers = {m.id: m.peer_address for m in members
                                if m.id != self.book.node_id}


def add_etcd_api(client_server: grpc.aio.Server, peer_server: grpc.aio.Server,
                 config: NodeConfig, cluster_id: str, driver: NodeDriver, store: Store,
                 gate: PeerGate,
                 peer_credentials: grpc.ChannelCredentials | None) -> EtcdApi:
    """Register the etcd services."""
    members = driver.members()
    peers = {m.id: m.peer_address for m in members if m.id != config.node_id}
    book = MemberBook(config.node_id, config.client_address,
                      config.listen_peer, peers, gate.client_address_of,
                      client_tls=config.client_tls is not None,
                      peer_tls=config.peer_tls is not None)
    book.set_members(members)
    node = EtcdNode(driver, store, cluster_id, book, config.max_key_bytes,
                    config.max_value_bytes)
    forwarder = Forwarder(peers, peer_credentials, gate.outgoing())
    kv = EtcdKVService(node, forwarder)
    maintenance = EtcdMaintenanceService(node, forwarder)
    cluster = EtcdClusterService(node, forwarder)
    membership = EtcdMembershipService(node, forwarder)
    snapshots = EtcdSnapshotService(node, cluster_id, config.data_dir)
    watch = EtcdWatchService(node, progress_interval=progress_interval())
    lease = EtcdLeaseService(node, forwarder)
    client_server.add_generic_rpc_handlers((
        generic_handler(KV, kv.handlers()),
        generic_handler(MAINTENANCE, {**maintenance.handlers(),
                                      **membership.maintenance_handlers(),
                                      "Snapshot": snapshots.snapshot}),
        generic_handler(CLUSTER, {**cluster.handlers(), **membership.cluster_handlers()}),
        generic_handler(WATCH, watch.handlers()),
        generic_handler(LEASE, lease.handlers()),
    ))
    peer_server.add_generic_rpc_handlers((forward_handler(gate, {
        **kv.local,
        "Alarm": maintenance.alarm,
        "MemberList": cluster.local_member_list,
        **membership.local,
        **lease.forward_local(),
    }),))
    return EtcdApi(forwarder, book)
