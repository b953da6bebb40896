#!/usr/bin/env python3
"""Patroni drill: two Patroni-managed PostgreSQL members kept highly available on a DCS.

Patroni (Debian's package) keeps its leader key, member keys and failover decisions in
etcd through etcd's JSON gateway, with a lease for liveness and a watch for changes. If it
elects a primary, fails over within its TTL when the primary dies, lets the old primary
rejoin and switches over on command with kvstore as its store, kvstore does the job etcd
does under thousands of production databases. Running the same drill on a real etcd gives
the times to compare with.

    python scripts/patroni_drill.py --dcs kvstore     # a `kvstore cluster up` 3-node cluster
    python scripts/patroni_drill.py --dcs etcd        # a throwaway 3-member etcd (/usr/bin/etcd)

Steps, each checked and timed (see STEPS in the README's "Patroni on kvstore"): bootstrap
(a primary elected, the replica streaming), a row replicated, failover after kill -9 of the
primary's Patroni and postmaster, the old primary's rejoin as a replica (pg_rewind),
`patronictl switchover`, then the same failover and rejoin while the DCS leader is killed
and restarted. Everything runs on 127.0.0.1 in one temporary directory; PostgreSQL refuses
to run as root, so Patroni runs as the ``postgres`` user when the drill runs as root.

Every process the drill starts is stopped by its PID, even on failure or SIGTERM: the
drill makes itself a child subreaper, so the postmasters and kvstore nodes that outlive
their parents are adopted by it, reaped (this machine's PID 1 may leave zombies, and a
zombie postmaster's PID in postmaster.pid would block the restart) and, at the end, killed.
Exit status 0 when every step passed; ``--json FILE`` writes the steps for tests.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ETCD = "/usr/bin/etcd"
PATRONI = "/usr/bin/patroni"
PATRONICTL = "/usr/bin/patronictl"

# Short Patroni timings so that the drill is fast. A failover takes about TTL (the leader
# key's lease must expire) plus up to a loop; PROMOTE_LIMIT allows a few more loops and
# one retry_timeout on a 2-core CI machine.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 2, 4
PROMOTE_LIMIT = TTL + 4 * LOOP_WAIT + RETRY_TIMEOUT
SCOPE = "drill"
PASSWORDS = {"superuser": "drill-su", "replication": "drill-rep", "rewind": "drill-rewind"}

T = TypeVar("T")


class DrillError(Exception):
    """A step failed: the drill stops (later steps would start from an unknown state)."""


class Terminated(BaseException):
    """SIGTERM/SIGINT: unwinds through every ``finally`` so that cleanup still runs."""


def wait_until(check: Callable[[], T], timeout: float, what: str, poll: float = 0.2,
               between: Callable[[], None] | None = None) -> T:
    """Poll ``check`` until it returns something truthy (exceptions count as not yet);
    raise DrillError naming ``what`` and the last answer after ``timeout`` seconds.
    ``between`` runs after each poll (the drill reaps adopted zombies there)."""
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
        if between is not None:
            between()
        if time.monotonic() >= deadline:
            raise DrillError(f"timed out after {timeout:.0f}s waiting for {what} "
                             f"(last: {last!r})")
        time.sleep(poll)


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound now (checked, then released)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports below the ephemeral range (so that outgoing
    connections are unlikely to take them before the servers bind them)."""
    rng = random.Random()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(20000, 32000)
        if port not in chosen and port_free(port):
            chosen.append(port)
    return chosen


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 3.0) -> Any:
    """GET (or POST ``body`` as JSON) and decode the JSON answer, also of an HTTP error
    (Patroni answers its REST API with 503 and a useful body for a non-primary)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for failure reports."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


# -- processes ------------------------------------------------------------------------------

def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent PID) from /proc/PID/stat, or None when the PID is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it holds no ports and no files)."""
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


class Processes:
    """Every process the drill started (Popen children) plus the orphans it adopted as
    subreaper, so that each can be stopped by PID and reaped whatever happens."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        self.subreaper = libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0

    def spawn(self, args: list[str], log: Path, *, user: str | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a long-running process with stdout and stderr appended to ``log``;
        ``user``: run as that user (only when the drill runs as root)."""
        switch = user is not None and os.geteuid() == 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                    user=user if switch else None,
                                    group=user if switch else None,
                                    extra_groups=[] if switch else None,
                                    start_new_session=True)
        self.children.append(proc)
        return proc

    def tracked(self) -> set[int]:
        return {p.pid for p in self.children if p.returncode is None}

    def adopted(self) -> list[int]:
        """PIDs whose parent is the drill but that it did not spawn: orphans of its
        descendants (postmasters, backends, kvstore nodes), adopted as subreaper."""
        me, mine = os.getpid(), self.tracked()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in mine:
                state = proc_state(int(entry.name))
                if state is not None and state[1] == me:
                    found.append(int(entry.name))
        return found

    def reap(self) -> None:
        """Collect adopted zombies and exited children (single-threaded: never races a
        subprocess.run, whose child is reaped before it returns)."""
        for proc in self.children:
            proc.poll()
        for pid in self.adopted():
            state = proc_state(pid)
            if state is not None and state[0] == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def kill(self, pid: int) -> None:
        """SIGKILL one PID the drill started or adopted, and reap it if it is ours."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_until(lambda: not alive(pid), 10.0, f"PID {pid} to die", poll=0.05,
                   between=self.reap)
        self.reap()

    def stop(self, procs: list[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
        """SIGTERM all at once (Patroni then stops PostgreSQL, etcd shuts down), SIGKILL
        whatever is left after ``grace`` seconds; reaped."""
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop_all(self) -> list[int]:
        """Stop every child, then kill every adopted process until none is left; returns
        the PIDs that had to be killed that way (for the report)."""
        self.stop(self.children)
        killed: list[int] = []
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            self.reap()
            left = [pid for pid in self.adopted() if alive(pid)]
            if not left:
                break
            for pid in left:
                killed.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self.reap()
        return killed


# -- the DCS ---------------------------------------------------------------------------------

class Dcs:
    """A 3-member store Patroni talks to through etcd's JSON gateway."""

    kind = ""

    def hosts(self) -> list[str]:
        """host:port of each member's client port (Patroni's ``etcd3: hosts``)."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def leader(self) -> str:
        """The name of the current leader (the member whose loss hurts most)."""
        raise NotImplementedError

    def kill(self, member: str) -> None:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def address(self, member: str) -> str:
        """host:port of one member's client port."""
        raise NotImplementedError

    def start_member(self, member: str) -> None:
        """Start a killed member again on its data."""
        raise NotImplementedError

    def serves(self, member: str) -> bool:
        """The member answers a linearizable range through the JSON gateway, as Patroni
        needs: it has a leader to read from (a member that does not know one answers
        "etcdserver: no leader", and Patroni waits a loop and retries)."""
        answer = http_json(f"http://{self.address(member)}/v3/kv/range",
                           {"key": base64.b64encode(b"/drill-probe").decode()}, timeout=2.0)
        return isinstance(answer, dict) and "header" in answer

    def restart(self, member: str, procs: Processes) -> None:
        """Start a killed member again and return once it serves the gateway."""
        self.start_member(member)
        wait_until(lambda: self.serves(member), 60.0, f"{self.kind} {member} to serve",
                   between=procs.reap)

    def stop(self) -> None:
        raise NotImplementedError

    def logs(self) -> dict[str, Path]:
        raise NotImplementedError


class KvstoreDcs(Dcs):
    """`kvstore cluster up` in the drill's directory, driven by the kvstore CLI (the same
    stop/start a human runs); its nodes are adopted by the drill when the CLI exits."""

    kind = "kvstore"

    def __init__(self, root: Path, procs: Processes) -> None:
        self.dir = root / "kvstore"
        self.procs = procs
        venv_cli = REPO / ".venv" / "bin" / "kvstore"
        found = str(venv_cli) if venv_cli.exists() else shutil.which("kvstore")
        if found is None:
            raise DrillError("no kvstore CLI (expected .venv/bin/kvstore: run "
                             "scripts/test.sh or pip install -e . first)")
        self.cli = found

    def run(self, *args: str, timeout: float = 60.0) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        r = subprocess.run([self.cli, *args, "--dir", str(self.dir)], capture_output=True,
                           text=True, timeout=timeout, env=env)
        if r.returncode != 0:
            raise DrillError(f"kvstore {' '.join(args)}: {r.stderr.strip() or r.stdout}")
        return r.stdout

    def cluster(self) -> dict[str, Any]:
        return json.loads((self.dir / "cluster.json").read_text())

    def start(self) -> None:
        for _ in range(50):
            base = random.Random().randrange(20000, 31700)
            if all(port_free(base + off + i) for off in (0, 100, 200) for i in range(3)):
                break
        else:
            raise DrillError("no free base port for a 3-node kvstore cluster")
        self.run("cluster", "up", "--nodes", "3", "--base-port", str(base),
                 "--timeout", "60", timeout=90)

    def hosts(self) -> list[str]:
        return [n["address"] for n in self.cluster()["nodes"]]

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.run("cluster", "status", "--json", "--timeout", "3"))["nodes"]

    def leader(self) -> str:
        return wait_until(lambda: next((n["id"] for n in self.status()
                                        if n.get("role") == "leader"), None),
                          30.0, "a kvstore leader", between=self.procs.reap)

    def kill(self, member: str) -> None:
        self.run("cluster", "stop", member, "--kill")
        self.procs.reap()

    def names(self) -> list[str]:
        return [n["id"] for n in self.cluster()["nodes"]]

    def address(self, member: str) -> str:
        return next(n["address"] for n in self.cluster()["nodes"] if n["id"] == member)

    def start_member(self, member: str) -> None:
        self.run("cluster", "start", member)

    def stop(self) -> None:
        if not (self.dir / "cluster.json").exists():
            return
        try:
            self.run("cluster", "down", timeout=60)
        except (DrillError, subprocess.TimeoutExpired) as exc:
            print(f"kvstore cluster down failed ({exc}); killing its nodes by PID",
                  file=sys.stderr)
        for node in self.cluster()["nodes"]:
            pid = node.get("pid")
            if pid and alive(pid) and pid in self.procs.adopted():
                self.procs.kill(pid)

    def logs(self) -> dict[str, Path]:
        try:
            return {n["id"]: Path(n["log_file"]) for n in self.cluster()["nodes"]
                    if n.get("log_file")}
        except (OSError, ValueError, KeyError):
            return {}


class EtcdDcs(Dcs):
    """A throwaway 3-member etcd (Debian's 3.4) on loopback: the reference."""

    kind = "etcd"

    def __init__(self, root: Path, procs: Processes) -> None:
        if not Path(ETCD).exists():
            raise DrillError(f"{ETCD} is missing: apt-get install etcd-server")
        self.dir = root / "etcd"
        self.procs = procs
        ports = free_ports(6)
        self.members = {f"e{i + 1}": (ports[2 * i], ports[2 * i + 1]) for i in range(3)}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def args(self, name: str) -> list[str]:
        client, peer = self.members[name]
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, (_, p) in self.members.items())
        return [ETCD, "--name", name, "--data-dir", str(self.dir / name),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"drill-{os.getpid()}"]

    def launch(self, name: str) -> None:
        self.running[name] = self.procs.spawn(self.args(name), self.dir / f"{name}.log")

    def healthy(self, name: str) -> bool:
        return http_json(f"http://127.0.0.1:{self.members[name][0]}/health",
                         timeout=2.0).get("health") == "true"

    def start(self) -> None:
        self.dir.mkdir()
        for name in self.members:
            self.launch(name)
        for name in self.members:
            wait_until(lambda n=name: self.healthy(n), 60.0, f"etcd {name} to be healthy",
                       between=self.procs.reap)

    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{client}" for client, _ in self.members.values()]

    def leader(self) -> str:
        def find() -> str | None:
            for name, (client, _) in self.members.items():
                if name in self.running and self.running[name].poll() is None:
                    st = http_json(f"http://127.0.0.1:{client}/v3/maintenance/status", {})
                    if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                        return name
            return None
        return wait_until(find, 30.0, "an etcd leader", between=self.procs.reap)

    def kill(self, member: str) -> None:
        self.procs.kill(self.running[member].pid)
        self.running[member].wait(10)

    def names(self) -> list[str]:
        return list(self.members)

    def address(self, member: str) -> str:
        return f"127.0.0.1:{self.members[member][0]}"

    def start_member(self, member: str) -> None:
        self.launch(member)

    def stop(self) -> None:
        # A throwaway etcd: no need to wait for leadership transfers between members
        # that are all stopping.
        self.procs.stop(list(self.running.values()), grace=3.0)

    def logs(self) -> dict[str, Path]:
        return {name: self.dir / f"{name}.log" for name in self.members}


# -- Patroni members --------------------------------------------------------------------------

@dataclass
class Member:
    """One Patroni + PostgreSQL member: its directory, ports and current Patroni process."""

    name: str
    dir: Path
    rest_port: int
    pg_port: int
    proc: subprocess.Popen[bytes] | None = None
    postmasters: set[int] = field(default_factory=set)

    @property
    def config(self) -> Path:
        return self.dir / "patroni.yml"

    @property
    def log(self) -> Path:
        return self.dir / "patroni.log"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def postmaster_pid(self) -> int | None:
        """The postmaster's PID from postmaster.pid (None before it has started)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        if alive(pid):
            self.postmasters.add(pid)
            return pid
        return None

    def status(self) -> dict[str, Any]:
        """Patroni's own view (GET /patroni): role, state, timeline, replication."""
        return http_json(f"http://127.0.0.1:{self.rest_port}/patroni", timeout=2.0)


def patroni_config(m: Member, hosts: list[str], debug: bool) -> dict[str, Any]:
    """The member's Patroni configuration (JSON is YAML, so it is written as JSON)."""
    hba = ["local all all trust",
           "host replication replicator 127.0.0.1/32 md5",
           "host all all 127.0.0.1/32 md5"]
    users = {"superuser": "postgres", "replication": "replicator", "rewind": "rewinder"}
    return {
        "scope": SCOPE,
        "namespace": "/service/",
        "name": m.name,
        "log": {"level": "DEBUG" if debug else "INFO"},
        "restapi": {"listen": f"127.0.0.1:{m.rest_port}",
                    "connect_address": f"127.0.0.1:{m.rest_port}"},
        "etcd3": {"hosts": hosts},
        "bootstrap": {
            "dcs": {
                "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 1048576,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    # pg_rewind needs wal_log_hints (or data checksums).
                    "parameters": {"wal_log_hints": "on", "max_connections": 20,
                                   "max_wal_senders": 5, "max_replication_slots": 5,
                                   "wal_keep_size": "64MB"},
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            "pg_hba": hba,
        },
        "postgresql": {
            "listen": f"127.0.0.1:{m.pg_port}",
            "connect_address": f"127.0.0.1:{m.pg_port}",
            "data_dir": str(m.data),
            "bin_dir": str(PG_BIN),
            "pgpass": str(m.dir / "pgpass"),
            "authentication": {kind: {"username": users[kind], "password": pw}
                               for kind, pw in PASSWORDS.items()},
            "parameters": {"unix_socket_directories": str(m.dir), "shared_buffers": "16MB"},
            "pg_hba": hba,
        },
        "watchdog": {"mode": "off"},
    }


@dataclass
class Step:
    """One timed step of the drill, as printed in the table and written with --json."""

    name: str
    ok: bool
    seconds: float | None
    detail: str = ""


class Drill:
    """Runs the steps in order against one DCS; stops at the first failed step."""

    def __init__(self, dcs_kind: str, root: Path, debug: bool) -> None:
        self.root = root
        self.debug = debug
        self.procs = Processes()
        self.dcs: Dcs = (KvstoreDcs if dcs_kind == "kvstore" else EtcdDcs)(root, self.procs)
        self.steps: list[Step] = []
        ports = free_ports(4)
        self.members = {f"pg{i + 1}": Member(f"pg{i + 1}", root / f"pg{i + 1}",
                                             ports[2 * i], ports[2 * i + 1])
                        for i in range(2)}
        self.rows = 0
        self.dcs_victim = ""  # the DCS member killed and restarted mid-drill

    # helpers

    def reap(self) -> None:
        self.procs.reap()

    def wait(self, check: Callable[[], T], timeout: float, what: str) -> T:
        return wait_until(check, timeout, what, between=self.reap)

    def sql(self, m: Member, query: str) -> str:
        """Run one statement through psql over TCP as the superuser; its output."""
        env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": PASSWORDS["superuser"],
               "PGCONNECT_TIMEOUT": "3"}
        r = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(m.pg_port),
                            "-U", "postgres", "-d", "postgres", "-X", "-Atqc", query],
                           capture_output=True, text=True, timeout=15, env=env)
        if r.returncode != 0:
            raise DrillError(f"psql on {m.name}: {r.stderr.strip()}")
        return r.stdout.strip()

    def patronictl(self, *args: str) -> str:
        any_member = next(iter(self.members.values()))
        r = subprocess.run([PATRONICTL, "-c", str(any_member.config), *args],
                           capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.root)})
        if r.returncode != 0:
            raise DrillError(f"patronictl {' '.join(args)}: {r.stderr.strip() or r.stdout}")
        return r.stdout

    def is_primary(self, m: Member) -> bool:
        """Patroni says primary and PostgreSQL accepts writes (out of recovery)."""
        return (m.status().get("role") in ("master", "primary")
                and self.sql(m, "select pg_is_in_recovery()") == "f")

    def streams(self, primary: Member, replica: Member) -> bool:
        """The primary's pg_stat_replication shows the replica streaming."""
        return any(r.get("application_name") == replica.name and r.get("state") == "streaming"
                   for r in primary.status().get("replication", []))

    def insert(self, primary: Member, label: str) -> int:
        self.rows += 1
        self.sql(primary, f"insert into drill(id, step) values ({self.rows}, '{label}')")
        return self.rows

    def has_row(self, m: Member, row: int) -> bool:
        return self.sql(m, f"select count(*) from drill where id = {row}") == "1"

    def primary_and_replica(self) -> tuple[Member, Member]:
        """(primary, replica) once exactly one member is primary."""
        return self.wait(self._one_primary, 30.0, "a primary")

    def launch(self, m: Member) -> None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": str(m.dir), "PYTHONDONTWRITEBYTECODE": "1"}
        with open(m.log, "a") as log:
            log.write(f"--- drill: starting Patroni {m.name} at {time.strftime('%T')}\n")
        m.proc = self.procs.spawn([PATRONI, str(m.config)], m.log, user="postgres",
                                  env=env, cwd=m.dir)

    def kill_member(self, m: Member) -> str:
        """kill -9 the member's Patroni, then its postmaster (the backends exit on their
        own when the postmaster dies; they are adopted and reaped)."""
        postmaster = m.postmaster_pid()
        assert m.proc is not None
        self.procs.kill(m.proc.pid)
        m.proc.wait(10)
        if postmaster is not None:
            self.procs.kill(postmaster)
        self.wait(lambda: not any(alive(p) for p in m.postmasters), 10.0,
                  f"{m.name}'s postmaster to be gone")
        return f"killed Patroni {m.proc.pid} and postmaster {postmaster}"

    def step(self, name: str, action: Callable[[], str]) -> None:
        """Time ``action`` (which returns a detail line); record it; stop on failure."""
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            detail = action()
        except (DrillError, subprocess.TimeoutExpired, OSError) as exc:
            self.steps.append(Step(name, False, round(time.monotonic() - t0, 2), str(exc)))
            raise
        self.steps.append(Step(name, True, round(time.monotonic() - t0, 2), detail))
        print(f"   ok in {self.steps[-1].seconds:.2f}s: {detail}", flush=True)

    # steps

    def setup(self) -> None:
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        for m in self.members.values():
            m.dir.mkdir()
            if owner is not None:
                os.chown(m.dir, owner.pw_uid, owner.pw_gid)
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    def start_dcs(self) -> str:
        self.dcs.start()
        for name in self.dcs.names():
            self.wait(lambda n=name: self.dcs.serves(n), 60.0, f"{self.dcs.kind} {name} to serve")
        hosts = self.dcs.hosts()
        for m in self.members.values():
            m.config.write_text(json.dumps(patroni_config(m, hosts, self.debug), indent=1))
        return f"{self.dcs.kind} at {','.join(hosts)}"

    def bootstrap(self) -> str:
        for m in self.members.values():
            self.launch(m)
        primary, replica = self.wait(self._one_primary, 120.0, "a primary")
        self.wait(lambda: self.streams(primary, replica), 120.0,
                  f"{replica.name} to stream from {primary.name}")
        return f"{primary.name} primary, {replica.name} streaming"

    def _one_primary(self) -> tuple[Member, Member] | None:
        a, b = self.members.values()
        return (a, b) if self.is_primary(a) else (b, a) if self.is_primary(b) else None

    def replicate(self) -> str:
        primary, replica = self.primary_and_replica()
        self.sql(primary, "create table drill (id int primary key, step text, "
                          "at timestamptz default now())")
        row = self.insert(primary, "replicate")
        self.wait(lambda: self.has_row(replica, row), 30.0, f"row {row} on {replica.name}")
        return f"row {row} written on {primary.name} read on {replica.name}"

    def failover(self) -> str:
        primary, replica = self.primary_and_replica()
        killed = self.kill_member(primary)
        t0 = time.monotonic()
        self.wait(lambda: self.is_primary(replica), 90.0, f"{replica.name} to be promoted")
        took = time.monotonic() - t0
        if took > PROMOTE_LIMIT:
            raise DrillError(f"{replica.name} promoted after {took:.1f}s, more than "
                             f"TTL {TTL}s plus a few loops ({PROMOTE_LIMIT}s)")
        row = self.insert(replica, "after-failover")
        return f"{killed}; {replica.name} promoted after {took:.1f}s, row {row} written"

    def rejoin(self) -> str:
        down = next(m for m in self.members.values() if m.proc is None or m.proc.poll() is not None)
        primary = next(m for m in self.members.values() if m is not down)
        log_from = down.log.stat().st_size
        self.launch(down)
        self.wait(lambda: self.streams(primary, down), 120.0,
                  f"{down.name} to stream from {primary.name}")
        self.wait(lambda: self.has_row(down, self.rows), 30.0, f"row {self.rows} on {down.name}")
        if down.status().get("role") != "replica":
            raise DrillError(f"{down.name} rejoined as {down.status().get('role')}")
        with open(down.log, errors="replace") as log:
            log.seek(log_from)
            rewound = "pg_rewind exit code=0" in log.read()
        return (f"{down.name} streams from {primary.name} with row {self.rows}"
                f"{' (pg_rewind ran)' if rewound else ' (no rewind needed)'}")

    def switchover(self) -> str:
        primary, replica = self.primary_and_replica()
        out = self.patronictl("switchover", "--leader", primary.name,
                              "--candidate", replica.name, "--force")
        self.wait(lambda: self.is_primary(replica), 60.0, f"{replica.name} to be primary")
        self.wait(lambda: self.streams(replica, primary), 90.0,
                  f"{primary.name} to stream from {replica.name}")
        row = self.insert(replica, "after-switchover")
        self.wait(lambda: self.has_row(primary, row), 30.0, f"row {row} on {primary.name}")
        said = next((line.strip() for line in out.splitlines() if "switched over" in line),
                    out.strip()[-200:])
        return f"{replica.name} primary, {primary.name} streaming (patronictl: {said})"

    def failover_dcs_down(self) -> str:
        self.dcs_victim = self.dcs.leader()
        self.dcs.kill(self.dcs_victim)
        return f"{self.dcs.kind} leader {self.dcs_victim} killed; " + self.failover()

    def dcs_restart(self) -> str:
        self.dcs.restart(self.dcs_victim, self.procs)
        return f"{self.dcs.kind} {self.dcs_victim} answers a gateway range again"

    def final_check(self) -> str:
        primary, replica = self.primary_and_replica()
        want = ",".join(str(i) for i in range(1, self.rows + 1))
        for m in (primary, replica):
            self.wait(lambda m=m: self.sql(m, "select string_agg(id::text, ',' order by id) "
                                              "from drill") == want,
                      30.0, f"rows {want} on {m.name}")
        # Member keys are rewritten every loop: wait for both to say running.
        def listed() -> list[dict[str, Any]] | None:
            rows = json.loads(self.patronictl("list", "--format", "json"))
            roles = {r["Member"]: (r["Role"], r["State"]) for r in rows}
            ok = (roles.get(primary.name) == ("Leader", "running")
                  and roles.get(replica.name) == ("Replica", "running"))
            return rows if ok else None
        self.wait(listed, 30.0, "patronictl list to show a running Leader and Replica")
        print(self.patronictl("list"), flush=True)
        return f"rows {want} on both; {primary.name} primary, {replica.name} streaming"

    def run(self) -> None:
        self.setup()
        self.step("DCS up", self.start_dcs)
        self.step("bootstrap: primary elected, replica streaming", self.bootstrap)
        self.step("row replicated", self.replicate)
        self.step("failover after kill -9 of primary", self.failover)
        self.step("old primary rejoins as replica", self.rejoin)
        self.step("patronictl switchover", self.switchover)
        self.step("failover with the DCS leader killed", self.failover_dcs_down)
        self.step("DCS member restarted", self.dcs_restart)
        self.step("old primary rejoins (DCS whole again)", self.rejoin)
        self.step("all rows on both, patronictl list", self.final_check)

    def cleanup(self) -> list[int]:
        """Stop Patroni (it stops PostgreSQL), then any postmaster left, then the DCS,
        then whatever was adopted; returns the PIDs that needed the final sweep."""
        t0 = time.monotonic()
        running = [m for m in self.members.values() if m.proc is not None and m.proc.poll() is None]
        for m in running:
            m.postmaster_pid()  # remember it, in case Patroni dies before stopping it
            assert m.proc is not None
            m.proc.terminate()
        # Patroni stops PostgreSQL within a second or two, but 3.0.2 then often lingers for
        # a long time (seen on real etcd as on kvstore): once its postmaster is gone and a
        # short grace has passed, it has nothing left to do here and is killed.
        try:
            self.wait(lambda: all(m.proc is None or m.proc.poll() is not None
                                  or not any(alive(p) for p in m.postmasters)
                                  for m in running), 20.0, "PostgreSQL to stop")
            self.wait(lambda: all(m.proc is None or m.proc.poll() is not None
                                  for m in running), 2.0, "Patroni to exit")
        except DrillError:
            pass
        self.procs.stop([m.proc for m in running if m.proc is not None], grace=0.0)
        for m in self.members.values():
            for pid in list(m.postmasters) + [p for p in [m.postmaster_pid()] if p]:
                if alive(pid) and pid in self.procs.adopted():
                    self.procs.kill(pid)
        t1 = time.monotonic()
        try:
            self.dcs.stop()
        except Exception as exc:  # noqa: BLE001 - the sweep below still kills the rest
            print(f"stopping the DCS failed: {exc}", file=sys.stderr)
        t2 = time.monotonic()
        swept = self.procs.stop_all()
        print(f"cleanup: Patroni and PostgreSQL {t1 - t0:.1f}s, {self.dcs.kind} {t2 - t1:.1f}s, "
              f"sweep {time.monotonic() - t2:.1f}s", file=sys.stderr)
        return swept

    def report(self) -> None:
        """The failure's logs: each Patroni's and each DCS member's tail."""
        for m in self.members.values():
            print(f"\n--- {m.log} (tail)\n{tail(m.log)}", file=sys.stderr)
        for name, path in self.dcs.logs().items():
            print(f"\n--- {self.dcs.kind} {name}: {path} (tail)\n{tail(path, 15)}",
                  file=sys.stderr)


def table(steps: list[Step], dcs: str) -> str:
    width = max(len(s.name) for s in steps) if steps else 10
    lines = [f"{'step (' + dcs + ')':<{width}}  {'seconds':>8}  result"]
    for s in steps:
        secs = f"{s.seconds:8.2f}" if s.seconds is not None else f"{'-':>8}"
        lines.append(f"{s.name:<{width}}  {secs}  {'ok' if s.ok else 'FAILED'}")
    return "\n".join(lines)


def missing_prerequisites() -> list[str]:
    """What the drill needs but this machine lacks (the test skips with this list)."""
    missing = [p for p in (PATRONI, PATRONICTL, str(PG_BIN / "postgres"),
                           str(PG_BIN / "pg_rewind"), str(PG_BIN / "psql"))
               if not Path(p).exists()]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("a postgres user (PostgreSQL refuses to run as root)")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dcs", choices=("kvstore", "etcd"), default="kvstore")
    parser.add_argument("--json", type=Path, help="write the steps as JSON to this file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, data, logs)")
    parser.add_argument("--debug", action="store_true",
                        help="Patroni logs at DEBUG (each request it sends to the DCS)")
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print(f"cannot run the drill, missing: {', '.join(missing)} "
              "(apt-get install patroni postgresql)", file=sys.stderr)
        return 2

    def terminated(signum: int, _frame: Any) -> None:
        raise Terminated(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, terminated)
    root = Path(tempfile.mkdtemp(prefix="patroni-drill-"))
    drill: Drill | None = None
    failed = True
    try:
        drill = Drill(args.dcs, root, args.debug)
        drill.run()
        failed = False
    except (DrillError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"drill failed: {exc}", file=sys.stderr)
    except Terminated as exc:
        print(f"drill interrupted ({exc}); cleaning up", file=sys.stderr)
    finally:
        if drill is not None:
            if failed:
                drill.report()
            swept = drill.cleanup()
            if swept:
                print(f"cleanup killed leftover processes {swept}", file=sys.stderr)
        if args.keep or (failed and drill is not None and args.debug):
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    steps = drill.steps if drill is not None else []
    print(table(steps, args.dcs))
    if args.json is not None:
        args.json.write_text(json.dumps({"dcs": args.dcs, "ok": not failed,
                                         "steps": [asdict(s) for s in steps]}, indent=1))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
