"""Local cluster process manager behind `kvstore cluster ...`.

A cluster lives in one directory::

    DIR/cluster.json     cluster id, client TLS files, and the nodes: their client and peer
                         addresses, pids, data dirs, log files and `serve` arguments
    DIR/n1/              data dir of node n1 (one per node)
    DIR/n1.log           stdout+stderr of node n1 (appended to across restarts)
    DIR/tls/             with `cluster up --tls`: CAs and certificates (see certs.py)
    DIR/.cluster.lock    flock serializing cluster commands on DIR

The cluster id is made once, by the `cluster up` that creates the directory, and
passed to every node (`--cluster-id`), which stores it in its data dir; a stopped
cluster restarts with the id and the TLS setting recorded in cluster.json.

cluster.json is rewritten atomically (temp file + rename) so that a reader never
sees half a file, and every mutating command holds the directory lock, so two
concurrent `cluster start`s cannot both think a node is stopped.

Nodes run in their own session (``start_new_session=True``) so a Ctrl-C in the
shell that ran `cluster up` does not take the cluster down, and they outlive the
CLI process that started them. Liveness checks are zombie- and PID-reuse-aware
(see :mod:`kvstore.cluster.process`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import kvstore
from kvstore.client import KVClient, NodeStatus, TLSConfig
from kvstore.client._core import ClientCore
from kvstore.cluster.certs import ClusterCerts, ensure_cluster_certs
from kvstore.cluster.layout import Layout, LayoutError
from kvstore.cluster.process import is_node_process, send_signal, wait_gone

CLUSTER_FILE = "cluster.json"
LOCK_FILE = ".cluster.lock"
DEFAULT_DIR = "kvstore-cluster"
DEFAULT_UP_TIMEOUT = 10.0
DEFAULT_STOP_GRACE = 10.0
_POLL = 0.05

Reporter = Callable[[str], None]


class ClusterError(Exception):
    """A cluster command failed; the message is one line meant for the user."""


@dataclass
class NodeRecord:
    """One node as stored in cluster.json. ``pid`` is None while it is stopped.
    ``address`` is the client address (all a client needs); ``peer_address`` is where
    the other nodes (and drills, through the Admin service) reach it; ``metrics_url``
    where it serves /metrics and /health ("" in a cluster.json from before metrics)."""

    id: str
    address: str
    peer_address: str
    pid: int | None
    data_dir: str
    log_file: str
    serve_args: list[str] = field(default_factory=list)
    metrics_url: str = ""

    @classmethod
    def from_json(cls, data: Any, source: str) -> NodeRecord:
        try:
            pid = data.get("pid")
            return cls(
                id=str(data["id"]),
                address=str(data["address"]),
                peer_address=str(data.get("peer_address", "")),
                pid=int(pid) if pid is not None else None,
                data_dir=str(data["data_dir"]),
                log_file=str(data.get("log_file", "")),
                serve_args=[str(a) for a in data.get("serve_args", [])],
                metrics_url=str(data.get("metrics_url", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClusterError(f"{source}: malformed node entry ({exc!r})") from None


@dataclass
class ClusterState:
    """The contents of DIR/cluster.json. ``tls``: paths of the client certificate
    ("ca", "cert", "key") every client of this cluster uses, None for plaintext."""

    dir: Path
    name: str
    nodes: list[NodeRecord]
    cluster_id: str | None = None
    tls: dict[str, str] | None = None
    # Membership changes (cluster add-node / remove-node, see membership.py): the i of the
    # next node added (None: one past the highest n{i}), and the ids removed, never reused.
    next_index: int | None = None
    removed: list[str] = field(default_factory=list)

    def client_tls(self) -> TLSConfig | None:
        if self.tls is None:
            return None
        return TLSConfig(ca=self.tls.get("ca"), cert=self.tls.get("cert"),
                         key=self.tls.get("key"))

    @property
    def path(self) -> Path:
        return self.dir / CLUSTER_FILE

    def node(self, node_id: str) -> NodeRecord:
        for record in self.nodes:
            if record.id == node_id:
                return record
        known = ", ".join(r.id for r in self.nodes)
        if node_id in self.removed:
            raise ClusterError(f"node {node_id} was removed from the cluster (nodes: {known})")
        raise ClusterError(f"no node {node_id!r} in {self.path} (nodes: {known})")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": 2, "name": self.name, "cluster_id": self.cluster_id}
        if self.tls is not None:
            doc["tls"] = dict(self.tls)
        if self.next_index is not None:
            doc["next_index"] = self.next_index
        if self.removed:
            doc["removed"] = list(self.removed)
        doc["nodes"] = [asdict(record) for record in self.nodes]
        return doc

    def save(self) -> None:
        tmp = self.path.with_name(f".{CLUSTER_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def cluster_file(directory: str | Path) -> Path:
    return Path(directory) / CLUSTER_FILE


def load_state(directory: str | Path) -> ClusterState:
    """Read DIR/cluster.json; a missing or broken file is a one-line ClusterError."""
    path = cluster_file(directory)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterError(
            f"no cluster in {directory} ({path} not found; start one with 'kvstore cluster up')"
        ) from None
    except OSError as exc:
        raise ClusterError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise ClusterError(f"{path}: expected an object with a 'nodes' list")
    nodes = [NodeRecord.from_json(item, str(path)) for item in data["nodes"]]
    tls = data.get("tls")
    if tls is not None and (
        not isinstance(tls, dict) or not all(isinstance(v, str) for v in tls.values())
        or not set(tls) <= {"ca", "cert", "key"}
    ):
        raise ClusterError(f"{path}: 'tls' must be an object of paths: ca, cert, key")
    cluster_id = data.get("cluster_id")
    next_index, removed = data.get("next_index"), data.get("removed", [])
    if (next_index is not None and (not isinstance(next_index, int) or next_index < 1)) \
            or not isinstance(removed, list):
        raise ClusterError(f"{path}: 'next_index' must be a positive integer and 'removed' "
                           "a list of node ids")
    return ClusterState(Path(directory).resolve(), str(data.get("name", "")), nodes,
                        cluster_id=str(cluster_id) if cluster_id else None, tls=tls,
                        next_index=next_index, removed=[str(r) for r in removed])


def node_running(record: NodeRecord) -> bool:
    """True if the recorded pid is alive, not a zombie, and really this node's server."""
    return record.pid is not None and is_node_process(record.pid, record.data_dir)


def _child_env() -> dict[str, str]:
    """Environment for node processes: make `kvstore` importable even when not installed."""
    env = dict(os.environ)
    root = str(Path(kvstore.__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in parts if p != root]])
    env["PYTHONUNBUFFERED"] = "1"
    env["KVSTORE_DEBUG"] = "1"  # node logs keep full tracebacks of crashes
    return env


def _log_tail(path: str, lines: int = 1) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(tail[-lines:])


def _tls_args(certs: ClusterCerts, node_id: str) -> list[str]:
    """`serve` flags of one node of a `--tls` cluster: mutual TLS on both ports."""
    node = certs.nodes[node_id]
    return [
        "--cert-file", node.cert, "--key-file", node.key,
        "--trusted-ca-file", certs.ca, "--client-cert-auth",
        "--peer-cert-file", node.peer_cert, "--peer-key-file", node.peer_key,
        "--peer-trusted-ca-file", certs.peer_ca,
    ]  # fmt: skip


def _port_in_use(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            return True
    return False


class ClusterManager:
    """Start, stop and inspect the node processes of the cluster in one directory."""

    def __init__(self, directory: str | Path, report: Reporter | None = None) -> None:
        self.dir = Path(directory).resolve()
        self._report: Reporter = report or (lambda _msg: None)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- locking

    @contextlib.contextmanager
    def _locked(self, timeout: float = 30.0) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_FILE, "a+b") as lock:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ClusterError(
                            f"another kvstore cluster command is still running on {self.dir}"
                        ) from None
                    time.sleep(_POLL)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # -- commands

    def up(
        self, layout: Layout, timeout: float = DEFAULT_UP_TIMEOUT, *, tls: bool = False,
        cluster_id: str | None = None,
    ) -> tuple[ClusterState, str]:
        """Start every node of ``layout`` (with ``tls``: mutual TLS on both ports, with
        certificates made under DIR/tls); return once a leader is elected (with its id).
        ``cluster_id``: the id of a new cluster (default: a random one)."""
        with self._locked():
            state = self._prepare_up(layout, tls, cluster_id)
            started: list[NodeRecord] = []
            try:
                for record in state.nodes:
                    record.pid = self._spawn(record)
                    started.append(record)
                    state.save()  # so `cluster down` can clean up even if we die now
                leader = self._wait_for_leader(state, time.monotonic() + timeout, timeout)
            except BaseException:
                self._stop_quietly(state, started)
                raise
            return state, leader

    def status(self, timeout: float = 2.0) -> tuple[ClusterState, list[NodeStatus]]:
        """Per node: the node's own Status if its process runs and answers, else "down"."""
        state = load_state(self.dir)
        running = [r for r in state.nodes if node_running(r)]
        answers: dict[str, NodeStatus] = {}
        if running:
            with KVClient([r.address for r in running], timeout=timeout,
                          tls=state.client_tls()) as client:
                answers = {s.address: s for s in client.status()}
        result: list[NodeStatus] = []
        for record in state.nodes:
            answer = answers.get(record.address)
            if answer is None:
                answer = ClientCore.unreachable(record.address, "process not running")
            result.append(replace(answer, id=record.id))
        return state, result

    def stop(self, node_id: str, *, kill: bool = False, grace: float = DEFAULT_STOP_GRACE) -> str:
        """Stop one node (SIGTERM, or SIGKILL with ``kill``); returns once it is gone."""
        load_state(self.dir).node(node_id)  # fail before creating a lock file in a wrong dir
        with self._locked():
            state = load_state(self.dir)
            record = state.node(node_id)
            message = self._stop_nodes(state, [record], kill=kill, grace=grace)[0]
            return message

    def down(self, grace: float = DEFAULT_STOP_GRACE) -> list[str]:
        """Stop every node (already-dead nodes are fine); data and logs are kept."""
        load_state(self.dir)
        with self._locked():
            state = load_state(self.dir)
            return self._stop_nodes(state, state.nodes, kill=False, grace=grace)

    def resync(self, node_id: str, timeout: float = DEFAULT_UP_TIMEOUT) -> tuple[str, NodeRecord]:
        """Rebuild one node from the leader: stop it, move its data dir aside (kept as
        evidence), start it on an empty data dir marked RESYNC; it then receives a
        snapshot and the log tail. Returns (where the old data went, the new record)."""
        load_state(self.dir).node(node_id)
        with self._locked():
            state = load_state(self.dir)
            record = state.node(node_id)
            if node_running(record):
                self._stop_nodes(state, [record], kill=False, grace=DEFAULT_STOP_GRACE)
            data_dir = Path(record.data_dir)
            moved = data_dir.with_name(f"{data_dir.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            if data_dir.exists():
                data_dir.rename(moved)
            data_dir.mkdir(parents=True)
            (data_dir / "RESYNC").write_text("rebuild this node from the leader\n")
            state.save()
        return str(moved), self.start(node_id, timeout=timeout)

    def start(self, node_id: str, timeout: float = DEFAULT_UP_TIMEOUT) -> NodeRecord:
        """Restart one stopped node on its existing data; returns once it answers Status."""
        load_state(self.dir).node(node_id)
        with self._locked():
            state = load_state(self.dir)
            record = state.node(node_id)
            if node_running(record):
                raise ClusterError(f"node {node_id} is already running (pid {record.pid})")
            if not record.serve_args:
                raise ClusterError(f"{state.path} has no serve_args for node {node_id}")
            record.pid = self._spawn(record)
            state.save()
            try:
                self._wait_answering(state, record, time.monotonic() + timeout, timeout)
            except BaseException:
                self._stop_quietly(state, [record])
                raise
            return record

    # -- internals

    def _prepare_up(self, layout: Layout, tls: bool,
                    new_cluster_id: str | None = None) -> ClusterState:
        path = self.dir / CLUSTER_FILE
        cluster_id: str | None = None
        shape = [(s.id, s.address, s.peer_address) for s in layout.nodes]
        if path.exists():
            old = load_state(self.dir)
            alive = [f"{r.id} (pid {r.pid})" for r in old.nodes if node_running(r)]
            if alive:
                raise ClusterError(
                    f"{self.dir} already has running nodes: {', '.join(alive)}; "
                    f"use 'kvstore cluster down --dir {self.dir}' first"
                )
            # A cluster.json from before peer ports existed records none: its nodes restart
            # with the layout's (their data dirs are the same either way).
            old_shape = [(r.id, r.address, r.peer_address or spec[2])
                         for r, spec in zip(old.nodes, shape, strict=False)]
            if len(old.nodes) != len(shape) or old_shape != shape:
                raise ClusterError(
                    f"{self.dir} holds a stopped cluster with a different layout "
                    f"({', '.join(f'{i}={a}' for i, a, _ in old_shape)}); "
                    "remove the directory or choose another --dir"
                )
            if (old.tls is not None) != tls:
                was = "with --tls" if old.tls is not None else "without --tls"
                raise ClusterError(
                    f"{self.dir} holds a stopped cluster created {was}; start it the same "
                    "way, or remove the directory"
                )
            cluster_id = old.cluster_id
            self._report(f"restarting the stopped cluster in {self.dir} on its existing data")
        busy = [a for s in layout.nodes for a in (s.address, s.peer_address, s.metrics_address)
                if _port_in_use(a)]
        if busy:
            raise ClusterError(f"address already in use: {', '.join(busy)}")
        # A new cluster (or one recorded before cluster ids existed; its nodes adopt it).
        cluster_id = cluster_id or new_cluster_id or secrets.token_hex(8)
        certs = ensure_cluster_certs(self.dir, [s.id for s in layout.nodes]) if tls else None
        records = []
        for spec in layout.nodes:
            data_dir = str(self.dir / spec.id)
            extra = ["--cluster-id", cluster_id]
            if certs is not None:
                extra += _tls_args(certs, spec.id)
            records.append(NodeRecord(
                id=spec.id,
                address=spec.address,
                peer_address=spec.peer_address,
                metrics_url=spec.metrics_url,
                pid=None,
                data_dir=data_dir,
                log_file=str(self.dir / f"{spec.id}.log"),
                serve_args=layout.serve_args(spec.id, data_dir, extra),
            ))  # fmt: skip
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        client_tls = None
        if certs is not None:
            client_tls = {"ca": certs.ca, "cert": certs.client_cert, "key": certs.client_key}
        state = ClusterState(self.dir, layout.name, records, cluster_id, client_tls)
        state.save()
        return state

    def _spawn(self, record: NodeRecord) -> int:
        cmd = [sys.executable, "-m", "kvstore.cli", "serve", *record.serve_args]
        with open(record.log_file, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} kvstore cluster: starting {record.id}: {cmd}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env=_child_env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise ClusterError(f"cannot start {record.id}: {exc}") from None
        self._children[proc.pid] = proc
        return proc.pid

    def _exited(self, record: NodeRecord) -> str | None:
        """If a node we started has exited, a one-line reason naming its log."""
        proc = self._children.get(record.pid or -1)
        if proc is None or proc.poll() is None:
            return None
        tail = _log_tail(record.log_file)
        detail = f": {tail}" if tail else ""
        code = proc.returncode
        return f"node {record.id} exited with status {code} (log {record.log_file}){detail}"

    def _wait_for_leader(self, state: ClusterState, deadline: float, timeout: float) -> str:
        """Poll Status until a leader is known to a majority; fail fast if a node dies."""
        majority = len(state.nodes) // 2 + 1
        with KVClient([r.address for r in state.nodes], timeout=timeout,
                      tls=state.client_tls()) as client:
            while True:
                for record in state.nodes:
                    reason = self._exited(record)
                    if reason:
                        raise ClusterError(f"cluster up failed: {reason}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClusterError(
                        f"cluster up failed: no leader elected within {timeout:g}s "
                        f"(logs in {self.dir}/*.log)"
                    )
                statuses = client.status(timeout=min(0.5, remaining))
                leader = _agreed_leader(statuses, majority)
                if leader:
                    return leader
                time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))

    def _wait_answering(
        self, state: ClusterState, record: NodeRecord, deadline: float, timeout: float
    ) -> None:
        with KVClient([record.address], timeout=timeout, tls=state.client_tls()) as client:
            while True:
                reason = self._exited(record)
                if reason:
                    raise ClusterError(f"cluster start failed: {reason}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClusterError(
                        f"cluster start failed: node {record.id} did not answer on "
                        f"{record.address} within {timeout:g}s (log {record.log_file})"
                    )
                if client.status(timeout=min(0.5, remaining))[0].reachable:
                    return
                time.sleep(_POLL)

    def _stop_nodes(
        self, state: ClusterState, records: list[NodeRecord], *, kill: bool, grace: float
    ) -> list[str]:
        """Signal every running node at once, then wait for each; escalate after ``grace``."""
        sig = signal.SIGKILL if kill else signal.SIGTERM
        messages: dict[str, str] = {}
        signalled: list[NodeRecord] = []
        for record in records:
            if node_running(record):
                assert record.pid is not None
                send_signal(record.pid, sig)
                signalled.append(record)
            else:
                messages[record.id] = f"{record.id} was not running"
                record.pid = None
        deadline = time.monotonic() + grace
        for record in signalled:
            assert record.pid is not None
            pid, how = record.pid, sig.name
            if not wait_gone(pid, record.data_dir, max(0.0, deadline - time.monotonic())):
                self._report(f"{record.id} (pid {pid}) ignored {sig.name} for {grace:g}s; killing")
                send_signal(pid, signal.SIGKILL)
                how = "SIGKILL"
                if not wait_gone(pid, record.data_dir, 5.0):
                    state.save()
                    raise ClusterError(f"node {record.id} (pid {pid}) did not exit after SIGKILL")
            self._reap(pid)
            record.pid = None
            messages[record.id] = f"stopped {record.id} (pid {pid}, {how})"
        state.save()
        return [messages[r.id] for r in records]

    def _stop_quietly(self, state: ClusterState, records: list[NodeRecord]) -> None:
        """Best-effort cleanup after a failed up/start: kill what we started, keep the logs."""
        with contextlib.suppress(Exception):
            self._stop_nodes(state, records, kill=False, grace=3.0)

    def _reap(self, pid: int) -> None:
        proc = self._children.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=1.0)


def _agreed_leader(statuses: list[NodeStatus], majority: int) -> str | None:
    """The id of a leader that a majority of nodes (itself included) recognise."""
    for candidate in statuses:
        if candidate.role != "leader" or not candidate.id:
            continue
        votes = sum(
            1
            for s in statuses
            if s.reachable
            and s.term == candidate.term
            and (s is candidate or s.leader_id == candidate.id)
        )
        if votes >= majority:
            return candidate.id
    return None


__all__ = [
    "CLUSTER_FILE",
    "DEFAULT_DIR",
    "ClusterError",
    "ClusterManager",
    "ClusterState",
    "LayoutError",
    "NodeRecord",
    "cluster_file",
    "load_state",
    "node_running",
]
