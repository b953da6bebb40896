"""`kvstore cluster add-node` and `remove-node`: membership changes of a local cluster.

Both go through the cluster's own API (etcd's MemberAdd/MemberPromote/MemberRemove, see
kvstore.client.membership), exactly as an operator of a real deployment would, and then
bring cluster.json in line: the local cluster is only the processes and the file that
finds them.

add-node takes the next i (cluster.json's ``next_index``; a removed node's i is never
taken again, so neither its id, which the cluster refuses forever, nor its data dir is
reused), names the node n{i}, and gives it the ports of the contract (client base+i-1,
peer base+100+i-1). It is added as a LEARNER first, whatever is asked: a new voter with
an empty log would count towards the quorum before it holds anything, so a cluster of
three plus one empty voter tolerates no failure until the newcomer has caught up. The
node is started with `serve --join` (it learns the membership and cluster id from the
cluster); once its applied index reaches the leader's commit index as of the add, it is
promoted (retried while the leader still says it is not in sync, or that a change is
still being applied). Its recorded serve arguments keep --join: a restart on its data
ignores the flag, and a `cluster resync` (empty data dir) joins again.

remove-node removes the member through the API, then waits for its process, which stops
itself once it applies its own removal, and stops it if it does not; the node leaves
cluster.json's nodes (its id goes to ``removed``; its data dir and log stay).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvstore.client import KVClient, KVError, MemberInfo, NodeStatus
from kvstore.cluster.certs import ensure_cluster_certs
from kvstore.cluster.layout import SETTING_FLAGS, SETTING_OPTIONS
from kvstore.cluster.manager import (
    ClusterError,
    ClusterManager,
    ClusterState,
    NodeRecord,
    _port_in_use,
    _tls_args,
    load_state,
    node_running,
)
from kvstore.cluster.process import wait_gone

DEFAULT_ADD_TIMEOUT = 60.0
DEFAULT_REMOVE_TIMEOUT = 30.0
SELF_STOP_SECONDS = 3.0  # how long a removed node gets to stop itself
_POLL = 0.1
_INDEXED = re.compile(r"^n(\d+)$")
# Refusals of a promotion that go away by themselves (the learner is catching up; the
# add is still being applied).
_PROMOTE_LATER = ("in sync", "still being applied", "UNAVAILABLE")


@dataclass(frozen=True)
class Added:
    record: NodeRecord
    promoted: bool
    caught_up_index: int
    seconds: float


def _index(node_id: str) -> int | None:
    m = _INDEXED.match(node_id)
    return int(m.group(1)) if m else None


def _shift(address: str, by: int) -> str:
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + by}"


def _ports(state: ClusterState, i: int) -> tuple[str, str, str]:
    """Client and peer address and metrics URL ("" if the cluster has none) of node i,
    from any node n{j} (the contract: client base+i-1, peer base+100+i-1, metrics
    base+200+i-1, all relative to the existing nodes' ports)."""
    for record in state.nodes:
        j = _index(record.id)
        if j is None or not record.peer_address:
            continue
        metrics = ""
        if record.metrics_url:
            scheme, _, rest = record.metrics_url.partition("://")
            metrics = f"{scheme}://{_shift(rest.rstrip('/'), i - j)}"
        return _shift(record.address, i - j), _shift(record.peer_address, i - j), metrics
    raise ClusterError(f"{state.path}: no node named n<i> with a peer address to derive "
                       "the new node's ports from")


def _settings(args: list[str]) -> list[str]:
    """The cluster-wide settings among a node's serve arguments (tick, shards, ...)."""
    valued, flags = set(SETTING_OPTIONS.values()), set(SETTING_FLAGS.values())
    kept: list[str] = []
    for k, arg in enumerate(args):
        if arg in valued and k + 1 < len(args):
            kept += [arg, args[k + 1]]
        elif arg in flags:
            kept.append(arg)
    return kept


def _join_tls(state: ClusterState) -> list[str]:
    """--cacert/--cert/--key of `serve --join`: the cluster's client certificate."""
    if state.tls is None:
        return []
    return [arg for flag, key in (("--cacert", "ca"), ("--cert", "cert"), ("--key", "key"))
            if key in state.tls for arg in (flag, state.tls[key])]


def _client(state: ClusterState, records: list[NodeRecord], timeout: float) -> KVClient:
    return KVClient([r.address for r in records], timeout=timeout, tls=state.client_tls())


def _leader_commit(client: KVClient, deadline: float) -> int:
    """The leader's commit index (polled until some node reports being leader)."""
    while True:
        leaders = [s for s in client.status(timeout=2.0) if s.reachable and s.role == "leader"]
        if leaders:
            return max(s.commit_index or 0 for s in leaders)
        if time.monotonic() >= deadline:
            raise ClusterError("add-node: no leader to catch up with")
        time.sleep(_POLL)


def _change(client: KVClient, node_id: str, done: Callable[[MemberInfo | None], bool],
            change: Callable[[], object]) -> None:
    """Make a membership change; if its answer is lost (the call failed), ask the member
    list whether it was made after all (a retry of an applied change is refused)."""
    try:
        change()
    except KVError:
        if not done(_named(client.member_list(), node_id)):
            raise


def _named(members: list[MemberInfo], node_id: str) -> MemberInfo | None:
    return next((m for m in members if m.name == node_id), None)


def add_node(manager: ClusterManager, *, learner: bool = False,
             timeout: float = DEFAULT_ADD_TIMEOUT) -> Added:
    """Add the next node (see the module docstring); returns once it is a caught-up
    learner, or a voter unless ``learner``."""
    started = time.monotonic()
    deadline = started + timeout
    with manager._locked():
        state = load_state(manager.dir)
        running = [r for r in state.nodes if node_running(r)]
        if not running:
            raise ClusterError(f"no node of {state.dir} is running: start the cluster first")
        known = [i for i in (_index(n) for n in [*(r.id for r in state.nodes), *state.removed])
                 if i is not None]
        i = max(state.next_index or 1, max(known, default=0) + 1)
        node_id = f"n{i}"
        address, peer_address, metrics_url = _ports(state, i)
        wanted = [address, peer_address, *([metrics_url.partition("://")[2]] if metrics_url
                                           else [])]
        busy = [a for a in wanted if _port_in_use(a)]
        if busy:
            raise ClusterError(f"address already in use: {', '.join(busy)} (wanted for {node_id})")
        state.next_index = i + 1  # taken even if what follows fails: the cluster may know it
        state.save()
        data_dir = str(state.dir / node_id)
        extra = ["--cluster-id", state.cluster_id] if state.cluster_id else []
        if state.tls is not None:
            extra += _tls_args(ensure_cluster_certs(state.dir, [node_id]), node_id)
        record = NodeRecord(
            id=node_id, address=address, peer_address=peer_address, pid=None,
            data_dir=data_dir, log_file=str(state.dir / f"{node_id}.log"),
            metrics_url=metrics_url,
            serve_args=[
                "--id", node_id, "--listen", address, "--listen-peer", peer_address,
                *(["--listen-metrics", metrics_url] if metrics_url else []),
                "--join", ",".join(r.address for r in running), "--data-dir", data_dir,
                *extra, *_join_tls(state), *_settings(running[0].serve_args)])  # fmt: skip
        scheme = "https" if state.tls is not None else "http"
        with _client(state, running, max(1.0, deadline - time.monotonic())) as client:
            _change(client, node_id, lambda m: m is not None,
                    lambda: client.member_add([f"{scheme}://{peer_address}"], learner=True,
                                              name=node_id))
            state.nodes.append(record)
            state.save()
            target = _leader_commit(client, deadline)
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            record.pid = manager._spawn(record)
            state.save()
            hint = f"; remove it with: kvstore cluster remove-node {node_id}"
            _wait_caught_up(manager, state, record, target, deadline, hint)
            if learner:
                return Added(record, False, target, time.monotonic() - started)
            _promote(client, node_id, deadline, hint)
        return Added(record, True, target, time.monotonic() - started)


def _wait_caught_up(manager: ClusterManager, state: ClusterState, record: NodeRecord,
                    target: int, deadline: float, hint: str) -> NodeStatus:
    """Poll the new node's Status until its applied index reaches ``target``."""
    with _client(state, [record], 2.0) as client:
        while True:
            reason = manager._exited(record)
            if reason:
                raise ClusterError(f"add-node: {reason}{hint}")
            status = client.status(timeout=1.0)[0]
            if status.reachable and (status.applied_index or 0) >= target:
                return status
            if time.monotonic() >= deadline:
                where = (f"applied index {status.applied_index}" if status.reachable
                         else f"not answering ({status.error})")
                raise ClusterError(
                    f"add-node: {record.id} did not catch up to index {target} in time "
                    f"({where}; log {record.log_file}){hint}")
            time.sleep(_POLL)


def _promote(client: KVClient, node_id: str, deadline: float, hint: str) -> None:
    """Promote ``node_id``, retrying while the leader says it is not in sync yet."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClusterError(f"add-node: {node_id} could not be promoted in time{hint}")
        try:
            member = _named(client.member_list(timeout=left), node_id)
            if member is None:
                raise ClusterError(f"add-node: {node_id} is no longer a member")
            if not member.learner:
                return
            client.member_promote(member.id, timeout=max(0.5, deadline - time.monotonic()))
            return
        except KVError as exc:
            if not any(text in str(exc) for text in _PROMOTE_LATER):
                raise ClusterError(f"add-node: promoting {node_id} failed: {exc}{hint}") \
                    from None
        time.sleep(_POLL)


def remove_node(manager: ClusterManager, node_id: str,
                timeout: float = DEFAULT_REMOVE_TIMEOUT) -> str:
    """Remove ``node_id`` from the cluster and from cluster.json; returns what happened."""
    deadline = time.monotonic() + timeout
    load_state(manager.dir).node(node_id)  # fail before taking the lock in a wrong dir
    with manager._locked():
        state = load_state(manager.dir)
        record = state.node(node_id)
        others = [r for r in state.nodes if r.id != node_id and node_running(r)]
        asked = others or [record]
        with _client(state, asked, max(1.0, deadline - time.monotonic())) as client:
            member = _named(client.member_list(), node_id)
            if member is not None:
                mid = member.id
                _change(client, node_id, lambda m: m is None,
                        lambda: client.member_remove(mid))
        how = "removed from the cluster" if member is not None else "was not a member"
        stopped = "was not running"
        if node_running(record):
            assert record.pid is not None
            left = max(0.0, min(SELF_STOP_SECONDS, deadline - time.monotonic()))
            if wait_gone(record.pid, record.data_dir, left):
                manager._reap(record.pid)
                stopped = f"stopped itself (pid {record.pid})"
            else:
                stopped = manager._stop_nodes(state, [record], kill=False, grace=5.0)[0]
        state.nodes = [r for r in state.nodes if r.id != node_id]
        if node_id not in state.removed:
            state.removed.append(node_id)
        state.save()
        return f"{node_id} {how}; {stopped}; data kept in {record.data_dir}"
