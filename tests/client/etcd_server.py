"""A throwaway single-member etcd on loopback for the client's watch/lease/lock tests.

The client's coordination features speak etcd's own API, so a real etcd is the reference
they are tested against (kvstore serves the same API). Unlike tests/etcdapi's
``real_etcd`` this one can be killed and restarted on the same ports and data dir (for
watch resume tests). Only the PID it started is ever signalled; ``stop`` always runs.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from tests.etcdapi.etcdctl_util import _free_ports, etcdctl, wait_until

ETCD = shutil.which("etcd")
NO_ETCD = "etcd is not installed (Debian package etcd-server): the client's etcd tests need it"


class Server(Protocol):
    """What the shared coordination tests need of a server: one client address that
    speaks etcd's API (a real etcd here; a kvstore node in the cluster variants)."""

    address: str


class EtcdServer:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client_port, self.peer_port = _free_ports(2)
        self.address = f"127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    def start(self) -> None:
        assert ETCD is not None, NO_ETCD
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "t", "--data-dir", str(self.data_dir),
                 "--listen-client-urls", f"http://{self.address}",
                 "--advertise-client-urls", f"http://{self.address}",
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"t={peer}"],
                stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_until(lambda: proc.poll() is None and etcdctl(
            [self.address], "endpoint", "health").returncode == 0, 30.0, "etcd to serve")

    def kill(self) -> None:
        """SIGKILL (a crash), and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def etcd_server(data_dir: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(data_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
