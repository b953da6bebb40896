"""Running Debian's etcdctl (v3 API) against kvstore and against a throwaway real etcd.

``run_sequence`` plays one list of etcdctl commands against some endpoints and returns
each command's exit code, stdout and the error line, normalized so that the answers of
kvstore and of real etcd can be compared with ``==``: what legitimately differs (cluster
and member ids, raft term and index, database sizes, version, endpoint addresses,
timings) is masked; revisions, keys, values, counts and errors are not.

``RealEtcd`` starts etcd on free loopback ports with a temporary data dir and always
stops it (by the PID it started). Nothing here sleeps to synchronize: waits poll with a
deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ETCDCTL = shutil.which("etcdctl")
ETCD = shutil.which("etcd")
NO_ETCDCTL = ("etcdctl is not installed (Debian package etcd-client; .ci/run installs it): "
              "the etcd API tests need it")
NO_ETCD = ("etcd is not installed (Debian package etcd-server; .ci/run installs it): the "
           "comparison with real etcd needs it")
MASK = "<masked>"


def etcdctl(endpoints: list[str], *args: str, stdin: str | None = None,
            timeout: float = 30.0, tls: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """One etcdctl command (API v3) against ``endpoints``; ``tls``: {"ca", "cert", "key"}."""
    assert ETCDCTL is not None, NO_ETCDCTL
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    flags = [f"--endpoints={','.join(endpoints)}", "--command-timeout=10s",
             "--dial-timeout=5s"]
    if tls is not None:
        flags += [f"--cacert={tls['ca']}", f"--cert={tls['cert']}", f"--key={tls['key']}"]
    return subprocess.run([ETCDCTL, *flags, *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)


def error_lines(stderr: str) -> list[str]:
    """etcdctl's own lines on stderr (errors, `endpoint health` results), normalized; its
    client library's JSON warning logs dropped."""
    return [normalize(line) for line in stderr.splitlines()
            if line.strip() and not line.startswith("{")]


# -- normalization -----------------------------------------------------------------------

# Fields whose values differ between any two clusters (ids, raft positions, sizes).
_MASKED_FIELDS = {"cluster_id", "member_id", "raft_term", "ID", "leader", "raftIndex",
                  "raftTerm", "raftAppliedIndex", "dbSize", "dbSizeInUse", "version",
                  "Endpoint", "peerURLs", "clientURLs", "name", "Took", "took"}


def mask(value: Any, parent: str = "") -> Any:
    """``value`` (parsed JSON) with the fields that legitimately differ masked. The
    ``version`` of an etcd key (number of writes) is kept; only Status' is masked."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            keep_version = k == "version" and parent != "Status"
            out[k] = MASK if k in _MASKED_FIELDS and not keep_version else mask(v, k)
        return out
    if isinstance(value, list):
        return [mask(v, parent) for v in value]
    return value


_TOOK = re.compile(r"took = \S+")
_REMAINING = re.compile(r"remaining\(\d+s\)")
_ATTACHED = re.compile(r"attached keys\(\[([^]]*)\]\)")  # etcd lists them in map order
_ADDR = re.compile(r"127\.0\.0\.1:\d+")
_HEX_ID = re.compile(r"\b[0-9a-f]{16}\b")


def normalize(stdout: str) -> Any:
    """JSON output parsed and masked; text output with addresses, timings and member
    ids masked."""
    text = stdout.strip()
    if text[:1] in "[{":
        try:
            return mask(json.loads(text))
        except json.JSONDecodeError:
            pass
    text = _TOOK.sub("took = <t>", text)
    text = _REMAINING.sub("remaining(<s>)", text)
    text = _ATTACHED.sub(lambda m: f"attached keys([{' '.join(sorted(m.group(1).split()))}])",
                         text)
    text = _ADDR.sub("<endpoint>", text)
    return _HEX_ID.sub("<id>", text)


@dataclass(frozen=True)
class Step:
    args: tuple[str, ...]
    stdin: str | None = None
    single: bool = False  # per-member command: run against the first endpoint only


def txn_input(compares: list[str], success: list[str], failure: list[str]) -> str:
    """etcdctl txn's non-interactive stdin: compares, success ops, failure ops, each
    block ended by an empty line."""
    return "".join("\n".join(block) + "\n\n" for block in (compares, success, failure))


def _s(*args: str, stdin: str | None = None, single: bool = False) -> Step:
    return Step(tuple(args), stdin, single)


# One sequence for both: every revision in it is what etcd answers on a fresh cluster.
SEQUENCE: list[Step] = [
    _s("put", "a", "1"),
    _s("put", "a/b", "2"),
    _s("put", "a/c", "3"),
    _s("put", "b", "4"),
    _s("put", "c", "5"),
    _s("put", "a", "1b", "--prev-kv", "-w", "json"),
    _s("get", "a", "--prefix", "-w", "json"),
    _s("get", "a", "--prefix"),
    _s("get", "--from-key", "b"),
    _s("get", "--from-key", "a", "--limit", "2", "-w", "json"),
    _s("get", "a", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"),
    _s("get", "", "--prefix", "--sort-by=VALUE", "--order=DESCEND", "-w", "json"),
    _s("get", "a", "--prefix", "--sort-by=CREATE", "--order=ASCEND", "--limit", "2"),
    _s("get", "a", "--prefix", "--sort-by=VERSION", "--order=DESCEND", "--keys-only"),
    _s("get", "a", "--prefix", "--keys-only", "-w", "json"),
    _s("get", "a", "--rev", "2", "-w", "json"),
    _s("get", "a", "--rev", "6"),
    _s("get", "a", "b"),
    _s("get", "missing", "-w", "json"),
    _s("del", "missing"),
    _s("del", "a", "--prefix", "--prev-kv", "-w", "json"),
    _s("del", "c", "--prev-kv"),
    _s("txn", "-w", "json", stdin=txn_input(['mod("b") > "0"'], ["put b 40", "get b"],
                                            ["get c"])),
    _s("txn", stdin=txn_input(['value("b") = "nope"'], ["put x 1"], ["put y 1", "del b"])),
    _s("txn", "-w", "json", stdin=txn_input(['version("y") = "1"', 'create("y") > "0"'],
                                            ["get y", "put z 9"], [])),
    _s("get", "", "--prefix", "-w", "json"),
    _s("compaction", "5"),
    _s("get", "a", "--rev", "4"),
    _s("get", "a/b", "--rev", "5", "-w", "json"),
    _s("get", "b", "--rev", "100"),
    _s("compaction", "3"),
    _s("compaction", "--physical", "9"),
    _s("get", "", "--from-key", "-w", "json"),
    _s("put", "", "x"),
    _s("endpoint", "status", "-w", "json", single=True),
    _s("endpoint", "health", single=True),
    _s("defrag", single=True),
    _s("alarm", "list"),
    _s("get", "z", "-w", "json"),
]


# Leases, after LEASE_ID was granted with a TTL of 600 s (etcdctl cannot choose an id).
LEASE_ID = 0x1234
LEASE_SEQUENCE: list[Step] = [
    _s("put", "--lease=1234", "la", "1"),
    _s("put", "--lease=1234", "lb", "2"),
    _s("put", "lc", "3"),
    _s("put", "--lease=1234", "la", "1b", "--prev-kv", "-w", "json"),
    _s("put", "--lease=999", "ld", "4"),
    _s("lease", "timetolive", "1234", "--keys"),
    _s("get", "l", "--prefix", "-w", "json"),
    _s("lease", "list"),
    _s("lease", "keep-alive", "--once", "1234"),
    _s("lease", "revoke", "1234"),
    _s("get", "l", "--prefix", "-w", "json"),
    _s("lease", "timetolive", "1234"),
    _s("lease", "revoke", "1234"),
    _s("lease", "keep-alive", "--once", "1234"),
    _s("lease", "list"),
]
# Then a replay of all of it: 4 puts and the revoke's 2 deletes, with previous values.
WATCH_REPLAY = ("watch", "l", "--prefix", "--rev", "2", "--prev-kv", "-w", "json")
WATCH_REPLAY_EVENTS = 6


def run_sequence(endpoints: list[str], steps: list[Step] = SEQUENCE,
                 tls: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each step's {"cmd", "rc", "out", "err"} (normalized)."""
    results = []
    for step in steps:
        targets = endpoints[:1] if step.single else endpoints
        r = etcdctl(targets, *step.args, stdin=step.stdin, tls=tls)
        results.append({"cmd": " ".join(step.args), "rc": r.returncode,
                        "out": normalize(r.stdout), "err": error_lines(r.stderr)})
    return results


# -- a throwaway real etcd ---------------------------------------------------------------

def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(check: Any, timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(poll)


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s; reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def real_etcd(data_dir: Path) -> Iterator[str]:
    """A single-member etcd on loopback; yields its client address; always stopped."""
    assert ETCD is not None, NO_ETCD
    client, peer = _free_ports(2)
    log = open(data_dir.parent / f"{data_dir.name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [ETCD, "--name", "cmp", "--data-dir", str(data_dir),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"cmp=http://127.0.0.1:{peer}"],
        stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{client}"
    try:
        wait_until(lambda: proc.poll() is None and etcdctl(
            [address], "endpoint", "health").returncode == 0, 30.0, "etcd to serve")
        yield address
    finally:
        terminate(proc)
        log.close()


# -- long-running etcdctl commands (watch, lease keep-alive, lock, elect) ----------------

class Background:
    """An etcdctl command left running (watch, keep-alive, lock, elect): its stdout lines
    are collected by a thread; ``wait_lines`` polls them with a deadline; ``stop`` sends
    SIGTERM (etcdctl then releases a lock or resigns), then SIGKILL. Use as a context
    manager so that it is stopped even when a test fails."""

    def __init__(self, endpoints: list[str], *args: str) -> None:
        assert ETCDCTL is not None, NO_ETCDCTL
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        self.args = args
        self.proc = subprocess.Popen(
            [ETCDCTL, f"--endpoints={','.join(endpoints)}", "--dial-timeout=5s", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._pump, args=(s, out), daemon=True)
                         for s, out in ((self.proc.stdout, self.lines),
                                        (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, out: list[str]) -> None:
        for line in stream:
            with self._lock:
                out.append(line.rstrip("\n"))

    def output(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def wait_lines(self, count: int, timeout: float = 30.0) -> list[str]:
        """The first ``count`` stdout lines (fails with what came if they do not)."""
        wait_until(lambda: len(self.output()) >= count or self.proc.poll() is not None,
                   timeout, f"{count} lines from etcdctl {' '.join(self.args)}")
        lines = self.output()
        assert len(lines) >= count, (f"etcdctl {' '.join(self.args)} ended "
                                     f"(rc {self.proc.poll()}) after {lines}; "
                                     f"stderr: {self.err}")
        return lines[:count]

    def wait_exit(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def stop(self) -> int:
        terminate(self.proc)
        for t in self._threads:
            t.join(5)
        return self.proc.returncode

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
