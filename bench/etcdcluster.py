"""A local etcd cluster on loopback for side-by-side runs (`python -m bench --etcd`).

The suite starts the members itself (data in a temporary directory, free loopback ports,
etcd's default 100 ms heartbeat and 1 s election timeout) and always stops them. etcd is
not a Python dependency: it is Debian's `etcd-server` package (3.4.x) or any etcd binary
given with `--etcd-bin`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench.drivers import TargetSpec
from bench.localcluster import free_base_port
from bench.procs import log_tail, start_process, stop_processes
from bench.sysinfo import etcd_version
from kvstore.client._core import CHANNEL_OPTIONS
from kvstore.etcdapi.methods import MAINTENANCE, stub
from kvstore.etcdpb import rpc_pb2 as pb

INSTALL_HINT = """etcd not found (looked for `etcd` on PATH and /usr/bin/etcd).
Install it on Debian/Ubuntu, as root:
    apt-get update && apt-get install -y etcd-server      # etcd 3.4.x as /usr/bin/etcd
or download a release from https://github.com/etcd-io/etcd/releases and pass --etcd-bin PATH.
The package's own service need not run: the bench starts and stops its own members on
loopback ports, with their data in a temporary directory."""


class EtcdMissing(RuntimeError):
    """No etcd binary; the message says how to install one."""


def find_etcd(binary: str | None) -> str:
    """Path of the etcd binary to use: `binary`, else `etcd` on PATH, else /usr/bin/etcd."""
    candidates = [binary] if binary else ["etcd", "/usr/bin/etcd"]
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    prefix = f"--etcd-bin {binary}: not an executable file.\n" if binary else ""
    raise EtcdMissing(prefix + INSTALL_HINT)


def etcd_command(binary: str, name: str, data_dir: Path, client_port: int, peer_port: int,
                 initial_cluster: str, token: str) -> list[str]:
    """The command line of one member: loopback only, a fresh cluster, warnings-only logs."""
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        binary, "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
    ]


def find_leader(endpoints: list[str], timeout: float) -> str | None:
    """The client endpoint of the member every member agrees is leader, or None."""
    channels = [grpc.insecure_channel(ep, options=CHANNEL_OPTIONS) for ep in endpoints]
    try:
        leaders: set[int] = set()
        member_of: dict[int, str] = {}
        for ep, ch in zip(endpoints, channels, strict=True):
            try:
                st = stub(ch, MAINTENANCE).Status(pb.StatusRequest(), timeout=timeout)
            except grpc.RpcError:
                return None
            leaders.add(st.leader)
            member_of[st.header.member_id] = ep
        if len(leaders) == 1:
            (leader,) = leaders
            return member_of.get(leader) if leader else None
        return None
    finally:
        for ch in channels:
            ch.close()


@contextmanager
def local_etcd(nodes: int, root: Path, binary: str,
               start_timeout: float = 30.0) -> Iterator[TargetSpec]:
    """Start `nodes` etcd members under `root`, wait for a leader, yield, always stop them."""
    directory = root / f"etcd-{nodes}n"
    directory.mkdir(parents=True, exist_ok=True)
    base = free_base_port(2 * nodes)
    clients = [base + i for i in range(nodes)]
    peers = [base + nodes + i for i in range(nodes)]
    names = [f"e{i + 1}" for i in range(nodes)]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peers, strict=True))
    token = f"kvstore-bench-{os.getpid()}-{int(time.time())}"
    endpoints = [f"127.0.0.1:{p}" for p in clients]
    procs = []
    try:
        for name, cport, pport in zip(names, clients, peers, strict=True):
            cmd = etcd_command(binary, name, directory / name, cport, pport, initial, token)
            procs.append(start_process(cmd, directory / f"{name}.log"))
        deadline = time.monotonic() + start_timeout
        leader = None
        while leader is None:
            for name, p in zip(names, procs, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"etcd member {name} exited with {p.returncode}: "
                                       f"{log_tail(directory / f'{name}.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd elected no leader within {start_timeout:g}s")
            leader = find_leader(endpoints, timeout=1.0)
            if leader is None:
                time.sleep(0.2)
        yield TargetSpec(
            name=f"etcd-{nodes}", kind="etcd", nodes=nodes, leader=leader,
            endpoints=tuple(endpoints),
            followers=tuple(e for e in endpoints if e != leader),
            pids=tuple(p.pid for p in procs),
            info={"version": etcd_version(binary) or "unknown", "binary": binary,
                  "heartbeat_ms": "100", "election_ms": "1000"},
        )
    finally:
        stop_processes(procs)
