"""Process entry point of one node: open storage, start gRPC, run the driver until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys

import grpc

from kvstore.server.admin_service import AdminService
from kvstore.server.config import NodeConfig
from kvstore.server.kv_service import KVService
from kvstore.server.node import NodeDriver
from kvstore.server.transport import GRPC_OPTIONS, PeerTransport, RaftPeerService
from kvstore.storage.errors import CorruptLogError, StorageError
from kvstore.storage.lmdb_store import LmdbNodeStore
from kvstore.v1 import admin_pb2_grpc, kv_pb2_grpc, raft_pb2_grpc

log = logging.getLogger("kvstore.server")

# A file in an (empty) data dir: the node was wiped to be rebuilt from the leader.
RESYNC_MARKER = "RESYNC"


class StartupError(Exception):
    """The node cannot start; the message says why in one line."""


def serve(config: NodeConfig) -> None:
    """Run a node in the foreground until SIGTERM/SIGINT. Raises StartupError."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_serve(config))


async def _serve(config: NodeConfig) -> None:
    os.makedirs(config.data_dir, exist_ok=True)
    try:
        store = LmdbNodeStore.open(config.data_dir, shards=config.shards, vnodes=config.vnodes)
    except CorruptLogError as err:
        raise StartupError(
            f"{err}. To rebuild this node from the leader, run `kvstore cluster resync "
            f"{config.node_id}` (or move the data dir aside, create it empty with a file "
            f"named {RESYNC_MARKER} in it, and start the node again)") from None
    except StorageError as err:
        raise StartupError(str(err)) from None
    marker = os.path.join(config.data_dir, RESYNC_MARKER)
    resync = os.path.exists(marker)
    if resync:
        log.warning("resyncing: this node will not vote or campaign until a leader reaches it")
    transport = PeerTransport(config.peers)
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    driver = NodeDriver(
        config.node_id,
        [config.node_id, *config.peers],
        store,
        transport.send,
        rng,
        tick_seconds=config.tick_ms / 1000.0,
        election_ticks=config.election_ticks,
        snapshot_dir=config.data_dir,
        snapshot_entries=config.snapshot_entries,
        send_snapshot=lambda peer, path, term: transport.send_snapshot(
            peer, path, config.node_id, term),
        resync_marker=marker if resync else None,
    )
    transport.on_drop = driver.report_unreachable
    server = grpc.aio.server(options=GRPC_OPTIONS)
    kv_pb2_grpc.add_KVServicer_to_server(KVService(config, driver, store), server)
    raft_pb2_grpc.add_RaftPeerServicer_to_server(
        RaftPeerService(driver.deliver, transport.receiving_blocked, driver.deliver_snapshot),
        server)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminService(config.node_id, store, transport, config.fault_injection), server)
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as err:
        store.close()
        raise StartupError(f"cannot listen on {config.listen}: {err}") from None
    if port == 0:
        store.close()
        raise StartupError(f"cannot listen on {config.listen}")
    await server.start()
    transport.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("node %s serving on %s (peers: %s, data: %s)", config.node_id, config.listen,
             ",".join(f"{k}={v}" for k, v in config.peers.items()), config.data_dir)
    driver_task = asyncio.create_task(driver.run(), name="raft-driver")
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({driver_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    failure = None
    if driver_task in done:
        failure = driver_task.exception()
    # Clean shutdown: the driver finishes the Ready in hand (its loop checks the flag
    # between turns), then we stop serving and close LMDB.
    driver.stop()
    if not driver_task.done():
        await driver_task
    stop_task.cancel()
    await server.stop(grace=0.5)
    await transport.stop()
    store.close()
    if failure is not None:
        log.critical("stopping: %s", failure, exc_info=failure)
        raise StartupError(f"node stopped after a fatal error: {failure}")
    log.info("node %s stopped cleanly", config.node_id)
