"""Process entry point of one node: open storage, start gRPC, run the driver until SIGTERM.

A node listens on two ports: the client port (--listen: the KV service and etcd's v3 API,
with the client TLS settings) and the peer port (--listen-peer: Raft streams,
InstallSnapshot, the Admin service and the etcd API's forwarding of followers' requests to
the leader, with mutual peer TLS when configured). See README "Security".
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from kvstore.etcdapi.gateway import GatewayBackend, serve_http
from kvstore.etcdapi.server import add_etcd_api
from kvstore.raft.types import Role
from kvstore.server.admin_service import AdminService
from kvstore.server.config import NodeConfig
from kvstore.server.hash_checker import HashChecker
from kvstore.server.health import NodeHealth, add_health_service
from kvstore.server.identity import IdentityError, PeerGate, settle_cluster_id
from kvstore.server.kv_service import KVService
from kvstore.server.logs import setup_logging
from kvstore.server.metrics import NodeCollector, NodeMetrics, node_registry
from kvstore.server.metrics_http import MetricsServer, parse_metrics_url
from kvstore.server.node import NodeDriver
from kvstore.server.peer_frames import ALPN as PEER_ALPN
from kvstore.server.peer_frames import PeerFrameServer
from kvstore.server.peer_service import RaftPeerService, remove_incoming
from kvstore.server.port_mux import PortMux
from kvstore.server.tls import (
    AllowedCNInterceptor,
    TLSSetupError,
    client_http_ssl_context,
    client_server_credentials,
    peer_channel_credentials,
    peer_server_credentials,
    peer_stream_client_context,
    peer_stream_server_context,
)
from kvstore.server.transport import GRPC_OPTIONS, PeerTransport
from kvstore.state.membership import Member
from kvstore.storage.errors import CorruptLogError, StorageError
from kvstore.storage.lmdb_store import LmdbNodeStore
from kvstore.v1 import admin_pb2_grpc, kv_pb2_grpc, raft_pb2_grpc

log = logging.getLogger("kvstore.server")

# A file in an (empty) data dir: the node was wiped to be rebuilt from the leader.
RESYNC_MARKER = "RESYNC"
REMOVED_GRACE_SECONDS = 0.5
# A file in the data dir of a node that joined and has not installed the leader's snapshot.
JOIN_MARKER = "JOINING"


class StartupError(Exception):
    """The node cannot start; the message says why in one line."""


def serve(config: NodeConfig) -> None:
    """Run a node in the foreground until SIGTERM/SIGINT. Raises StartupError."""
    setup_logging(config.node_id, config.log_format, sys.stderr)
    run_event_loop(_serve(config))


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the node on uvloop (libuv's event loop, in C) when it is installed, as it is
    with kvstore's dependencies on Linux and macOS; else on asyncio's own loop. Measured
    on a 3-node cluster (issue 15): sequential put p50 3.12-3.20 -> 2.62-2.85 ms and the
    servers' CPU per put 3.7 -> 2.9-3.1 ms, throughput +4-10%. KVSTORE_EVENT_LOOP=asyncio
    chooses asyncio's loop (to compare, or to rule uvloop out when debugging)."""
    if os.environ.get("KVSTORE_EVENT_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def _serve(config: NodeConfig) -> None:
    os.makedirs(config.data_dir, exist_ok=True)
    try:
        # TLS files first: a wrong path should not cost opening (and checking) the store.
        client_creds = (None if config.client_tls is None
                        else client_server_credentials(config.client_tls))
        peer_creds = None if config.peer_tls is None else peer_server_credentials(config.peer_tls)
        peer_channel_creds = (None if config.peer_tls is None
                              else peer_channel_credentials(config.peer_tls))
        stream_server_tls = (None if config.peer_tls is None
                             else peer_stream_server_context(config.peer_tls, PEER_ALPN))
        stream_client_tls = (None if config.peer_tls is None
                             else peer_stream_client_context(config.peer_tls, PEER_ALPN))
    except TLSSetupError as err:
        raise StartupError(str(err)) from None
    try:
        store = LmdbNodeStore.open(config.data_dir, shards=config.shards, vnodes=config.vnodes,
                                   quota_bytes=config.quota_backend_bytes)
    except CorruptLogError as err:
        raise StartupError(
            f"{err}. To rebuild this node from the leader, run `kvstore cluster resync "
            f"{config.node_id}` (or move the data dir aside, create it empty with a file "
            f"named {RESYNC_MARKER} in it, and start the node again)") from None
    except StorageError as err:
        raise StartupError(str(err)) from None
    try:
        cluster_id = settle_cluster_id(config.data_dir, config.cluster_id)
    except IdentityError as err:
        store.close()
        raise StartupError(str(err)) from None
    removed = remove_incoming(config.data_dir)
    if removed:
        log.info("removed %d partly received snapshot file(s)", removed)
    marker = os.path.join(config.data_dir, RESYNC_MARKER)
    resync = os.path.exists(marker)
    if resync:
        log.warning("resyncing: this node will not vote or campaign until a leader reaches it")
    # The membership is replicated state once recorded; --peers (or what --join learned)
    # only seeds a data dir that has none.
    join_marker = os.path.join(config.data_dir, JOIN_MARKER)
    if config.initial_members is not None and not store.members():
        # Joining: the leader's state arrives as a snapshot before anything is applied.
        # The marker is durable before the membership is recorded, so a crash in between
        # cannot leave a joined node that would replay the log instead.
        _durable_marker(join_marker)
    if store.seed_members(config.bootstrap_members()):
        log.info("recorded the initial membership: %s",
                 ", ".join(f"{m.id}={m.peer_address}" for m in config.bootstrap_members()))
    joining = os.path.exists(join_marker)
    if joining:
        log.info("joining: waiting for the leader's snapshot")
    members = store.members()
    peers = {m.id: m.peer_address for m in members if m.id != config.node_id}
    gate = PeerGate(config.node_id, cluster_id, frozenset(peers), config.client_address,
                    removed=frozenset(store.removed_members()))
    transport = PeerTransport(peers, metadata=gate.outgoing(),
                              credentials=peer_channel_creds, tls=stream_client_tls)
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    # Metrics only with --listen-metrics: without them the driver's hooks are None.
    metrics = NodeMetrics(config.node_id) if config.listen_metrics else None
    send = transport.send if metrics is None else metrics.round_trips.wrap_send(transport.send)
    driver = NodeDriver(
        config.node_id,
        [m.id for m in members if not m.learner],
        store,
        send,
        rng,
        tick_seconds=config.tick_ms / 1000.0,
        election_ticks=config.election_ticks,
        snapshot_dir=config.data_dir,
        snapshot_entries=config.snapshot_entries,
        send_snapshot=lambda peer, path, term: transport.send_snapshot(
            peer, path, config.node_id, term),
        resync_marker=marker if resync else None,
        join_marker=join_marker if joining else None,
        quota_bytes=config.quota_backend_bytes,
        metrics=metrics,
    )
    transport.on_drop = driver.report_unreachable
    deliver = driver.deliver
    if metrics is not None:
        transport.on_drop = _both(metrics.round_trips.lost, driver.report_unreachable)
        deliver = metrics.round_trips.wrap_deliver(driver.deliver)
    health = NodeHealth(driver, store, lambda: driver.status().rebuilding)
    # Two servers, so that what is served on each port is decided by construction: the
    # client port has the KV services (kvstore's and etcd's); the peer port Raft, the Admin
    # service and the etcd API's forwarding to the leader.
    client_server = grpc.aio.server(options=GRPC_OPTIONS)
    kv_pb2_grpc.add_KVServicer_to_server(
        KVService(config, driver, store, gate.client_address_of, cluster_id), client_server)
    add_health_service(client_server, health.check)
    interceptors = ([] if config.peer_tls is None or config.peer_tls.allowed_cn is None
                    else [AllowedCNInterceptor(config.peer_tls.allowed_cn)])
    peer_server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=interceptors)
    raft_pb2_grpc.add_RaftPeerServicer_to_server(
        RaftPeerService(gate, deliver, transport.receiving_blocked,
                        driver.deliver_snapshot, snapshot_dir=config.data_dir,
                        max_snapshot_bytes=config.max_snapshot_bytes),
        peer_server)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminService(config.node_id, store, transport, config.fault_injection,
                     hash_at=driver.runtime.hash_checks.get), peer_server)
    etcd_api = add_etcd_api(client_server, peer_server, config, cluster_id, driver, store,
                            gate, peer_channel_creds)
    # The client port is shared by gRPC and etcd's JSON gateway (port_mux.py says how and
    # why): gRPC listens on an internal loopback port, the gateway reaches it through a
    # private Unix socket (so no TLS client check is bypassed), the mux owns --listen.
    gateway_dir = tempfile.mkdtemp(prefix="kvstore-gw-")
    gateway_socket = os.path.join(gateway_dir, "grpc.sock")
    try:
        grpc_port = _bind(client_server, "127.0.0.1:0", client_creds, "--listen")
        _bind(client_server, f"unix:{gateway_socket}", None, "--listen")
        # The peer port likewise: Raft's frame streams are served on the event loop,
        # gRPC (snapshots, Admin, the etcd API's forwarding) is spliced to an internal port.
        peer_grpc_port = _bind(peer_server, "127.0.0.1:0", peer_creds, "--listen-peer")
        frames = PeerFrameServer(gate, deliver, transport.receiving_blocked,
                                 None if config.peer_tls is None else config.peer_tls.allowed_cn)
        peer_mux = PortMux(config.listen_peer, peer_grpc_port, frames.handle,
                           stream_server_tls, name="peer-port-mux")
        peer_mux.bind()
        http_tls = (None if config.client_tls is None
                    else client_http_ssl_context(config.client_tls))
        backend = GatewayBackend(f"unix:{gateway_socket}")
        mux = PortMux(config.listen, grpc_port,
                      lambda reader, writer: serve_http(reader, writer, backend), http_tls)
        mux.bind()
        metrics_server = None
        if metrics is not None:
            metrics_server = await _start_metrics(config, metrics, driver, store, transport,
                                                  health)
    except (StartupError, TLSSetupError, OSError) as err:
        store.close()
        shutil.rmtree(gateway_dir, ignore_errors=True)
        if isinstance(err, StartupError):
            raise
        raise StartupError(f"cannot listen on {config.listen} or {config.listen_peer} "
                           f"(--listen, --listen-peer): {err}") from None
    await client_server.start()
    await peer_server.start()
    mux.start()
    peer_mux.start()
    transport.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node %s of cluster %s serving clients on %s (%s) and peers on %s (%s); "
             "peers: %s; data: %s", config.node_id, cluster_id, config.listen,
             _describe(config.client_tls is not None,
                       config.client_tls is not None and config.client_tls.client_cert_auth),
             config.listen_peer, _describe(config.peer_tls is not None, True),
             ",".join(f"{k}={v}" for k, v in peers.items()) or "none", config.data_dir)
    checker = None
    if config.corrupt_check_interval > 0:
        checker = HashChecker(config.node_id, peers, driver, transport.fetch_hash,
                              config.corrupt_check_interval)

    def membership_changed(now: list[Member]) -> None:
        others = {m.id: m.peer_address for m in now if m.id != config.node_id}
        gate.peers = frozenset(others)
        gate.removed = frozenset(store.removed_members())
        transport.set_peers(others)
        etcd_api.set_members(now)
        if checker is not None:
            checker.peers = sorted(others)
        log.info("membership: %s", ", ".join(
            f"{m.id}{' (learner)' if m.learner else ''}={m.peer_address}" for m in now))
        if driver.removed():
            log.warning("this node was removed from the cluster: stopping")
            removed_self.set()

    removed_self = asyncio.Event()

    def told_removed() -> None:
        # A member that applied our removal refused us: the leader stopped replicating to
        # us once it applied the change, so we may never apply it ourselves.
        if not removed_self.is_set():
            log.warning("a peer says this node was removed from the cluster: stopping")
            removed_self.set()

    transport.on_removed = told_removed
    driver.on_membership = membership_changed
    if metrics_server is not None:
        log.info("serving /metrics and /health on %s", config.listen_metrics)
    driver_task = asyncio.create_task(driver.run(), name="raft-driver")
    checker_task = None
    if checker is not None:
        checker_task = asyncio.create_task(checker.run(), name="hash-checker")
    stop_task = asyncio.create_task(stop.wait())
    removed_task = asyncio.create_task(_removed_grace(removed_self))
    done, _ = await asyncio.wait({driver_task, stop_task, removed_task},
                                 return_when=asyncio.FIRST_COMPLETED)
    removed_task.cancel()
    failure = None
    if driver_task in done:
        failure = driver_task.exception()
    elif stop_task in done and driver.role == Role.LEADER:
        await _hand_over_leadership(driver)
    # Clean shutdown: the driver finishes the Ready in hand (its loop checks the flag
    # between turns), then we stop serving and close LMDB.
    if checker_task is not None:
        checker_task.cancel()
    driver.stop()
    if not driver_task.done():
        await driver_task
    stop_task.cancel()
    await mux.stop()
    await peer_mux.stop()
    if metrics_server is not None:
        await metrics_server.stop()
    await backend.close()
    await asyncio.gather(client_server.stop(grace=0.5), peer_server.stop(grace=0.5))
    shutil.rmtree(gateway_dir, ignore_errors=True)
    await etcd_api.forwarder.close()
    await transport.stop()
    store.close()
    if failure is not None:
        log.critical("stopping: %s", failure, exc_info=failure)
        raise StartupError(f"node stopped after a fatal error: {failure}")
    log.info("node %s stopped cleanly", config.node_id)


def _durable_marker(path: str) -> None:
    """Create an empty marker file and make its directory entry durable."""
    with open(path, "w") as f:
        os.fsync(f.fileno())
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _removed_grace(removed: asyncio.Event) -> None:
    """Returns a moment after this node applied its own removal: long enough for its last
    messages (a removed leader's final commit index and TimeoutNow) to go out."""
    await removed.wait()
    await asyncio.sleep(REMOVED_GRACE_SECONDS)


async def _hand_over_leadership(driver: NodeDriver) -> None:
    """A leader asked to stop (SIGTERM) first hands leadership to the most up-to-date
    voter, so that a planned restart costs the cluster no election timeout (etcd does the
    same). Bounded by two election timeouts; on failure the node stops anyway."""
    st = driver.status()
    voters = [v for v in st.voters if v != driver.node_id]
    if not voters:
        return
    target = max(voters, key=lambda v: st.progress[v].match if v in st.progress else -1)
    timeout = 2 * driver.election_seconds
    log.info("stopping: handing leadership to %s first", target)
    try:
        await driver.transfer_leadership(target, timeout)
    except Exception as err:  # noqa: BLE001 - stopping anyway; the cluster elects as usual
        log.warning("leader transfer before stopping failed: %s", err)
    else:
        log.info("leadership moved to %s", target)


async def _start_metrics(config: NodeConfig, metrics: NodeMetrics, driver: NodeDriver,
                         store: LmdbNodeStore, transport: PeerTransport,
                         health: NodeHealth) -> MetricsServer:
    """Listen on --listen-metrics; StartupError naming the flag."""
    collector = NodeCollector(
        metrics, driver.status, store,
        watchers=lambda: len(driver.watch_hub.subs),
        peer_drops=lambda: {p: s.dropped for p, s in transport.senders.items()},
        quota_bytes=config.quota_backend_bytes)
    host, port = parse_metrics_url(config.listen_metrics)
    server = MetricsServer(host, port, node_registry(metrics, collector), health.check)
    try:
        await server.start()
    except OSError as err:
        raise StartupError(f"cannot listen on {config.listen_metrics} (--listen-metrics): "
                           f"{err}") from None
    return server


def _both(first: Callable[[str], None], second: Callable[[str], None]) -> Callable[[str], None]:
    def call(arg: str) -> None:
        first(arg)
        second(arg)

    return call


def _bind(server: grpc.aio.Server, address: str,
          credentials: grpc.ServerCredentials | None, flag: str) -> int:
    """Listen on ``address`` (TLS with ``credentials``); returns the port; StartupError
    naming ``flag``."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as err:
        raise StartupError(f"cannot listen on {address} ({flag}): {err}") from None
    if port == 0 and not address.startswith("unix:"):
        raise StartupError(f"cannot listen on {address} ({flag})")
    return port


def _describe(tls: bool, mutual: bool) -> str:
    if not tls:
        return "plaintext"
    return "mutual TLS" if mutual else "TLS"
