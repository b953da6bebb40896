"""Helpers for tests that run a real local cluster through the `kvstore` CLI.

Nothing here sleeps to synchronize: waits poll a condition against a deadline.
Only PIDs recorded in the test's own cluster.json, and confirmed to be that
node's `kvstore serve` process, are ever signalled.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kvstore.client import KVClient, TLSConfig
from kvstore.cluster.layout import METRICS_PORT_OFFSET, PEER_PORT_OFFSET
from kvstore.cluster.process import is_node_process, wait_gone

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
StartCluster = Callable[..., "Cluster"]  # the start_cluster fixture: (nodes=3) -> Cluster


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port_range(count: int, attempts: int = 100) -> int:
    """A base port such that base..base+count-1 (client ports), the peer ports
    base+100..base+100+count-1 and the metrics ports base+200.. are all free on 127.0.0.1.

    Chosen below Linux's ephemeral range (32768+) so that outgoing connections of
    other processes are unlikely to grab them between this check and `cluster up`.
    """
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 32000 - METRICS_PORT_OFFSET - count)
        socks: list[socket.socket] = []
        ports = [*range(base, base + count),
                 *range(base + PEER_PORT_OFFSET, base + PEER_PORT_OFFSET + count),
                 *range(base + METRICS_PORT_OFFSET, base + METRICS_PORT_OFFSET + count)]
        try:
            for port in ports:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found on 127.0.0.1")


def wait_until(check: Callable[[], T | None], timeout: float, what: str, poll: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # a check may fail while the cluster settles
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(poll)


def node_pids(directory: Path) -> list[int]:
    """PIDs of live (non-zombie) `kvstore serve` processes whose data dir is under ``directory``.

    Read-only: used to assert that nothing was left running, never to signal.
    """
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X") or b"serve" not in argv:
            continue
        if any(arg.startswith(str(directory).encode() + b"/") for arg in argv):
            found.append(int(proc.name))
    return found


@dataclass
class Cluster:
    """A cluster started by `kvstore cluster up` in ``dir``."""

    dir: Path
    base_port: int
    size: int
    cwd: Path

    @property
    def endpoints(self) -> list[str]:
        """Client addresses (what clients and the CLI use)."""
        return [f"127.0.0.1:{self.base_port + i}" for i in range(self.size)]

    @property
    def peer_endpoints(self) -> list[str]:
        """Peer addresses (Raft, snapshots, the Admin service)."""
        return [f"127.0.0.1:{self.base_port + PEER_PORT_OFFSET + i}" for i in range(self.size)]

    @property
    def ids(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.size)]

    def address(self, node_id: str) -> str:
        return self.endpoints[self.ids.index(node_id)]

    def peer_address(self, node_id: str) -> str:
        return self.peer_endpoints[self.ids.index(node_id)]

    def tls(self) -> TLSConfig | None:
        """The client certificate cluster.json records (a `cluster up --tls` cluster)."""
        tls = self.state().get("tls")
        return None if tls is None else TLSConfig(tls["ca"], tls["cert"], tls["key"])

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a `kvstore` command; cluster commands get --dir, data commands too."""
        return run_cli(*args, "--dir", str(self.dir), cwd=self.cwd, timeout=timeout)

    def ok(self, *args: str, timeout: float = 60.0) -> str:
        result = self.cli(*args, timeout=timeout)
        assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        return result.stdout

    def client(self, **kw: Any) -> KVClient:
        kw.setdefault("timeout", 10.0)
        kw.setdefault("tls", self.tls())
        return KVClient(self.endpoints, **kw)

    def state(self) -> dict[str, Any]:
        return json.loads((self.dir / "cluster.json").read_text())

    def pid(self, node_id: str) -> int | None:
        for node in self.state()["nodes"]:
            if node["id"] == node_id:
                return node["pid"]
        raise KeyError(node_id)

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.ok("cluster", "status", "--json"))["nodes"]

    def leader(self, timeout: float = 15.0, exclude: str | None = None) -> str:
        """Wait until the reachable nodes agree on one leader (other than ``exclude``)."""

        def agreed() -> str | None:
            with KVClient(self.endpoints, timeout=2.0, tls=self.tls()) as client:
                nodes = [n for n in client.status() if n.reachable]
            leaders = {n.id for n in nodes if n.role == "leader"}
            if len(leaders) != 1:
                return None
            (leader,) = leaders
            if leader == exclude:
                return None
            if all(n.leader_id == leader for n in nodes):
                return leader
            return None

        return wait_until(agreed, timeout, "an agreed leader")

    def kill_leftovers(self) -> None:
        """SIGKILL any node process of this cluster that is still alive (teardown only)."""
        path = self.dir / "cluster.json"
        if not path.exists():
            return
        for node in json.loads(path.read_text()).get("nodes", []):
            pid, data_dir = node.get("pid"), node.get("data_dir", "")
            if pid and data_dir and is_node_process(pid, data_dir):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, data_dir, 10.0)

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for log in sorted(self.dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"==== {log.name} ====\n" + "\n".join(text))
        return "\n".join(parts)


def start_local_cluster(
    directory: Path, cwd: Path, nodes: int = 3, settings: dict[str, object] | None = None,
    tls: bool = False,
) -> Cluster:
    """`kvstore cluster up` in ``directory`` on free ports (retrying if another process
    takes a port meanwhile); raises AssertionError with the node logs if it fails. The
    caller stops it with ``stop_local_cluster`` (also after a failure: a failed `up`
    may have left its cluster.json)."""
    last = ""
    cluster: Cluster | None = None
    for attempt in range(3):  # another process may take a port between choosing and binding
        base = free_port_range(nodes)
        cluster = Cluster(directory, base, nodes, cwd)
        if settings:
            definition = cwd / f"{directory.name}-{attempt}.json"
            definition.write_text(json.dumps({
                "name": "test", "host": "127.0.0.1", "settings": settings,
                "nodes": [{"id": f"n{i + 1}", "port": base + i} for i in range(nodes)],
            }))
            layout_args = ["--config", str(definition)]
        else:
            layout_args = ["--nodes", str(nodes), "--base-port", str(base)]
        result = run_cli(
            "cluster", "up", *layout_args, *(["--tls"] if tls else []), "--dir", str(directory),
            cwd=cwd, timeout=60,
        )  # fmt: skip
        if result.returncode == 0:
            return cluster
        last = result.stderr
        if "in use" not in last:
            break
    assert cluster is not None
    raise AssertionError(f"kvstore cluster up failed: {last}\n{cluster.log_tails()}")


def stop_local_cluster(cluster: Cluster) -> list[int]:
    """`kvstore cluster down`, then SIGKILL anything left; returns the PIDs that survived."""
    if (cluster.dir / "cluster.json").exists():
        run_cli("cluster", "down", "--grace", "5", "--dir", str(cluster.dir), cwd=cluster.cwd)
    cluster.kill_leftovers()
    return node_pids(cluster.dir)
