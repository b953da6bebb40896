"""The node processes of one drill: start, kill -9, restart, pause, resume, partition.

This is the only code of the drills that signals processes, and it only signals
PIDs that the drill's own cluster.json records and that are confirmed to be that
node's `kvstore serve` process (see :mod:`kvstore.cluster.process`). Process
lifecycle goes through :class:`kvstore.cluster.manager.ClusterManager`, the same
code as `kvstore cluster stop --kill` / `cluster start`, so a drill exercises
the operator's path; it is used in-process rather than through the CLI because
a CLI round trip costs a Python start-up (about a second on a loaded 2-core
machine), which would blur the nemesis's timing.

Nodes are started from a cluster definition whose settings carry
``"fault_injection": true`` (passed on as `serve --fault-injection`), so that
Admin.SetFaults works; the definition is left in the run directory so a failed
drill's cluster can be started again by hand with `kvstore cluster up --config`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from kvstore.client import KVClient, NodeStatus
from kvstore.client._core import CHANNEL_OPTIONS
from kvstore.cluster.layout import load_layout
from kvstore.cluster.manager import ClusterError, ClusterManager, load_state, node_running
from kvstore.cluster.process import is_node_process
from kvstore.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.cluster_util import Cluster, free_port_range, node_pids

Log = Callable[[str], None]

ADMIN_TIMEOUT = 3.0  # one Admin RPC; a loaded node answers in milliseconds
START_TIMEOUT = 30.0  # `cluster up` / `cluster start`: generous for a loaded 2-core box
STOP_GRACE = 5.0


class DrillCluster:
    """A fault-injection cluster in ``directory`` (one sub-directory per start attempt)."""

    def __init__(
        self, directory: Path, size: int, *, settings: dict[str, Any] | None = None,
        log: Log | None = None,
    ) -> None:  # fmt: skip
        self.root = directory
        self.size = size
        self.settings = {"fault_injection": True, **(settings or {})}
        self._log: Log = log or (lambda _msg: None)
        self.cluster: Cluster | None = None
        self._attempts: list[tuple[Cluster, ClusterManager]] = []
        self.manager: ClusterManager | None = None
        self.paused: dict[str, int] = {}  # node id -> pid we sent SIGSTOP
        self._channels: dict[str, grpc.Channel] = {}
        # The nemesis's threads and the main thread all call in: _lock serializes process
        # changes, _net_lock partition changes (so a slow restart does not hold up a cut).
        self._lock = threading.Lock()
        self._net_lock = threading.Lock()
        self._channel_lock = threading.Lock()
        self._starting: set[str] = set()
        self.links: set[tuple[str, str]] = set()  # the partition in force

    # -- lifecycle

    def up(self) -> None:
        """Start every node and wait for a leader; retries if a chosen port got taken."""
        last: Exception | None = None
        for attempt in range(3):
            base = free_port_range(self.size)
            directory = self.root / f"cluster{attempt}"
            directory.mkdir(parents=True, exist_ok=True)
            definition = directory / "definition.json"
            definition.write_text(json.dumps({
                "name": f"drill-{self.size}",
                "host": "127.0.0.1",
                "nodes": [
                    {"id": f"n{i + 1}", "port": base + i, "peer_port": base + 100 + i}
                    for i in range(self.size)
                ],
                "settings": self.settings,
            }, indent=2) + "\n")  # fmt: skip
            self.cluster = Cluster(directory, base, self.size, directory)
            self.manager = ClusterManager(directory, report=self._log)
            self._attempts.append((self.cluster, self.manager))
            try:
                _, leader = self.manager.up(load_layout(definition), timeout=START_TIMEOUT)
            except ClusterError as exc:
                last = exc
                if "in use" not in str(exc) and "cannot listen" not in str(exc):
                    raise
                continue
            self._log(
                f"cluster up in {directory} (ports {base}..{base + self.size - 1}), leader {leader}"
            )
            return
        raise ClusterError(f"could not start the drill cluster: {last}")

    def close(self) -> list[int]:
        """Stop everything this drill started, even after a failure; return survivors' PIDs.

        Paused nodes are resumed first: a stopped process would hold SIGTERM pending
        until the grace period ran out.
        """
        with contextlib.suppress(Exception):
            self.resume_all()
        survivors: list[int] = []
        # Every start attempt, not only the last: a failed one should have cleaned up after
        # itself, but nothing may be left behind.
        for cluster, manager in self._attempts:
            if (cluster.dir / "cluster.json").exists():
                try:
                    manager.down(grace=STOP_GRACE)
                except Exception as exc:  # keep going: kill_leftovers is the last resort
                    self._log(f"cluster down failed: {exc}")
            cluster.kill_leftovers()
            survivors += node_pids(cluster.dir)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        return survivors

    # -- facts

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None, "the cluster is not up"
        return self.cluster

    @property
    def ids(self) -> list[str]:
        return self.c.ids

    @property
    def endpoints(self) -> list[str]:
        return self.c.endpoints

    def address(self, node_id: str) -> str:
        return self.c.address(node_id)

    def running(self, node_id: str) -> bool:
        return node_running(load_state(self.c.dir).node(node_id))

    def statuses(self, timeout: float = 1.0) -> list[NodeStatus]:
        with KVClient(self.endpoints, timeout=timeout) as client:
            return client.status(timeout=timeout)

    def leader(self) -> str | None:
        """The node that says it leads in the highest term (one poll, no waiting)."""
        leaders = [s for s in self.statuses() if s.reachable and s.role == "leader" and s.id]
        if not leaders:
            return None
        return max(leaders, key=lambda s: s.term or 0).id

    def log_tails(self, lines: int = 40) -> str:
        return self.cluster.log_tails(lines) if self.cluster is not None else ""

    # -- process faults

    def kill(self, node_id: str) -> str:
        """kill -9 one node; returns once its process is gone."""
        with self._lock:
            self.paused.pop(node_id, None)
            assert self.manager is not None
            return self.manager.stop(node_id, kill=True, grace=STOP_GRACE)

    def start(self, node_id: str) -> str:
        """Restart a stopped node on its data; returns once it answers Status.

        A restarted node has forgotten its fault settings, so it is told the current
        partition again (the other ends still drop its traffic meanwhile).
        """
        with self._lock:
            assert self.manager is not None
            self._starting.add(node_id)
            try:
                record = self.manager.start(node_id, timeout=START_TIMEOUT)
            finally:
                self._starting.discard(node_id)
        return f"started {node_id} (pid {record.pid}){self._retell(node_id)}"

    def pause(self, node_id: str) -> str:
        """SIGSTOP one node: it keeps its sockets but answers nothing (a GC pause, a VM stall)."""
        with self._lock:
            record = load_state(self.c.dir).node(node_id)
            if record.pid is None or not node_running(record):
                return f"{node_id} is not running; not paused"
            os.kill(record.pid, signal.SIGSTOP)
            self.paused[node_id] = record.pid
            return f"paused {node_id} (pid {record.pid})"

    def resume(self, node_id: str) -> str:
        """SIGCONT a paused node, and tell it the current partition (it may have missed
        changes while it was stopped)."""
        with self._lock:
            pid = self.paused.pop(node_id, None)
            if pid is None:
                return f"{node_id} was not paused"
            record = load_state(self.c.dir).node(node_id)
            if not is_node_process(pid, record.data_dir):
                return f"{node_id} (pid {pid}) is gone; nothing to resume"
            os.kill(pid, signal.SIGCONT)
        return f"resumed {node_id} (pid {pid}){self._retell(node_id)}"

    def resume_all(self) -> list[str]:
        return [self.resume(node_id) for node_id in list(self.paused)]

    # -- network faults (Admin.SetFaults; only nodes started with --fault-injection obey)

    def _admin(self, node_id: str) -> admin_pb2_grpc.AdminStub:
        with self._channel_lock:
            channel = self._channels.get(node_id)
            if channel is None:
                # The Admin service is served on the peer port only.
                channel = grpc.insecure_channel(self.c.peer_address(node_id),
                                                options=CHANNEL_OPTIONS)
                self._channels[node_id] = channel
        return admin_pb2_grpc.AdminStub(channel)

    def set_faults(self, node_id: str, drop_to: Iterable[str], drop_from: Iterable[str]) -> None:
        self._admin(node_id).SetFaults(
            admin_pb2.SetFaultsRequest(drop_to=sorted(drop_to), drop_from=sorted(drop_from)),
            timeout=ADMIN_TIMEOUT,
        )

    def _tell(self, node_id: str) -> None:
        links = self.links
        drop_to = {dst for src, dst in links if src == node_id}
        drop_from = {src for src, dst in links if dst == node_id}
        self.set_faults(node_id, drop_to, drop_from)

    def _retell(self, node_id: str) -> str:
        with self._net_lock:
            try:
                self._tell(node_id)
            except grpc.RpcError as exc:
                return f" (could not re-apply its faults: {exc.code().name})"
        return ""

    def cut(self, links: set[tuple[str, str]]) -> list[str]:
        """Drop Raft traffic on each directed link (src, dst); every other link is healed.

        Both ends are told (src drops to dst, dst drops from src), so the cut holds even
        if one end's setting is lost. Nodes that are down, starting or paused cannot be
        told now; they are told when they come back (:meth:`start`, :meth:`resume`).
        Returns the nodes that should have answered but did not.
        """
        missed = []
        with self._net_lock:
            self.links = set(links)
            for node_id in self.ids:
                if node_id in self.paused or node_id in self._starting:
                    continue
                if not self.running(node_id):
                    continue
                try:
                    self._tell(node_id)
                except grpc.RpcError as exc:
                    if node_id in self.paused or node_id in self._starting:
                        continue  # paused or killed meanwhile (overlapping faults): told later
                    if not self.running(node_id):
                        continue
                    missed.append(f"{node_id} ({exc.code().name})")
        return missed

    def digest(self, node_id: str) -> admin_pb2.DigestResponse:
        return self._admin(node_id).Digest(admin_pb2.DigestRequest(), timeout=ADMIN_TIMEOUT)
