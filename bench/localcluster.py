"""Bring a local cluster up and down through the public `kvstore cluster` CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kvstore.cluster.layout import METRICS_PORT_OFFSET, PEER_PORT_OFFSET

KVSTORE = [sys.executable, "-m", "kvstore.cli"]


def free_base_port(count: int, start: int = 20000, stop: int = 40000,
                   offsets: tuple[int, ...] = (0,)) -> int:
    """A base port P such that P+o..P+o+count-1 are all free on 127.0.0.1 for every offset
    o (a kvstore cluster needs (0, 100): client ports, then peer ports 100 above)."""
    for base in range(start + os.getpid() % 997 * 13, stop, count + 3):
        if all(_port_free(base + o + i) for o in offsets for i in range(count)):
            return base
    raise RuntimeError("no free port range on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_cli(*args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
    proc = subprocess.run([*KVSTORE, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kvstore {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@dataclass
class LocalCluster:
    directory: Path
    endpoints: list[str]

    def status(self) -> list[dict]:
        out = run_cli("cluster", "status", "--dir", str(self.directory), "--json")
        return json.loads(out.stdout)["nodes"]

    def metrics_urls(self) -> list[str]:
        nodes = json.loads((self.directory / "cluster.json").read_text())["nodes"]
        return [n.get("metrics_url", "") for n in nodes]

    def leader(self) -> str | None:
        for n in self.status():
            if n.get("role") == "leader":
                return n["id"]
        return None

    def pid(self, node_id: str) -> int:
        nodes = json.loads((self.directory / "cluster.json").read_text())["nodes"]
        return next(int(n["pid"]) for n in nodes if n["id"] == node_id)

    def stop(self, node_id: str, kill: bool = False) -> None:
        args = ["cluster", "stop", node_id, "--dir", str(self.directory)]
        run_cli(*args, *(["--kill"] if kill else []))

    def start(self, node_id: str) -> None:
        run_cli("cluster", "start", node_id, "--dir", str(self.directory))


@contextmanager
def local_cluster(nodes: int = 3, directory: str | None = None) -> Iterator[LocalCluster]:
    """A fresh cluster in a temporary directory; always brought down on exit."""
    tmp = Path(directory or tempfile.mkdtemp(prefix="kvstore-bench-"))
    base = free_base_port(nodes, offsets=(0, PEER_PORT_OFFSET, METRICS_PORT_OFFSET))
    try:
        run_cli("cluster", "up", "--nodes", str(nodes), "--dir", str(tmp),
                "--base-port", str(base))
        yield LocalCluster(tmp, [f"127.0.0.1:{base + i}" for i in range(nodes)])
    finally:
        run_cli("cluster", "down", "--dir", str(tmp), check=False)
        if directory is None:
            shutil.rmtree(tmp, ignore_errors=True)
