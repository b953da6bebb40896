"""`kvstore watch`, `lease ...`, `lock` and `elect` as a user runs them, against a real etcd
3.4 (these commands speak etcd's API, which kvstore serves too; the same commands run
against `kvstore cluster up` in test_cli_coordination_cluster.py).

Long-running commands are started as processes and always stopped (by the PID started
here). Waits poll with deadlines; nothing sleeps to synchronize.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_util import Run, assert_one_line_error, cli_env

from tests.client.etcd_server import ETCD, NO_ETCD, EtcdServer, Server, etcd_server
from tests.etcdapi.etcdctl_util import ETCDCTL, NO_ETCDCTL, etcdctl, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if ETCD is None or ETCDCTL is None:
        pytest.skip(NO_ETCD if ETCD is None else NO_ETCDCTL)
    with etcd_server(tmp_path_factory.mktemp("etcd-cli") / "data") as server:
        yield server


def spawn(tmp_path: Path, endpoint: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvstore.cli", *args, "--endpoints", endpoint],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str, str]:
    """Send ``sig``, wait; returns (exit code, rest of stdout, stderr). Always reaps."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    return proc.returncode, out, err


def put(server: Server, *args: str) -> None:
    assert etcdctl([server.address], "put", *args).returncode == 0


def test_watch_prints_one_line_per_event_and_ctrl_c_exits_0(
        tmp_path: Path, server: Server) -> None:
    proc = spawn(tmp_path, server.address, "watch", "cw/", "--prefix", "--prev-kv", "--json")
    try:
        assert proc.stdout is not None
        # The watch exists once the command runs; a write before that may be missed, so
        # keep writing until the first event shows (then every later one must show).
        wait_until(lambda: etcdctl([server.address], "put", "cw/probe", "p").returncode == 0
                   and _ready(proc), 30.0, "the watch to start")
        put(server, "cw/a", "1")
        put(server, "cw/a", "2")
        assert etcdctl([server.address], "del", "cw/a").returncode == 0
        lines = []
        while len(lines) < 3:
            doc = json.loads(proc.stdout.readline())
            if doc["key"] != "cw/probe":
                lines.append(doc)
    finally:
        code, _, err = stop(proc)
    assert code == 0 and err == ""
    assert [(d["type"], d["key"], d["value"], d["prev_value"]) for d in lines] == [
        ("PUT", "cw/a", "1", None), ("PUT", "cw/a", "2", "1"), ("DELETE", "cw/a", None, "2")]
    assert lines[0]["mod_revision"] < lines[1]["mod_revision"] < lines[2]["mod_revision"]


def _ready(proc: subprocess.Popen[str]) -> bool:
    """True once the watch printed an event (the probe)."""
    import select

    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 0.2)
    if not readable:
        return False
    assert "cw/probe" in proc.stdout.readline()
    return True


def test_watch_replays_history_as_text(tmp_path: Path, server: Server) -> None:
    put(server, "ct", "one")
    rev = json.loads(etcdctl([server.address], "get", "ct", "-w", "json").stdout)[
        "kvs"][0]["mod_revision"]
    put(server, "ct", "two")
    proc = spawn(tmp_path, server.address, "watch", "ct", "--rev", str(rev))
    try:
        assert proc.stdout is not None
        assert [proc.stdout.readline(), proc.stdout.readline()] == ["PUT ct one\n",
                                                                    "PUT ct two\n"]
    finally:
        code, _, err = stop(proc)
    assert code == 0 and err == ""


def test_lease_commands(kvstore: Run, server: Server) -> None:
    ep = ["--endpoints", server.address]
    granted = kvstore("lease", "grant", "30", *ep)
    assert granted.returncode == 0, granted.stderr
    words = granted.stdout.split()  # lease 694d7e... granted with TTL(30s)
    assert words[0] == "lease" and words[2:] == ["granted", "with", "TTL(30s)"]
    lease = words[1]
    assert len(lease) == 16
    assert etcdctl([server.address], "put", "cl/k", "v", f"--lease={lease}").returncode == 0
    ttl = kvstore("lease", "timetolive", lease, "--keys", *ep)
    assert ttl.stdout.startswith(f"lease {lease} granted with TTL(30s), remaining(")
    assert ttl.stdout.rstrip().endswith(', attached keys(["cl/k"])')
    once = kvstore("lease", "keep-alive", lease, "--once", *ep)
    assert once.stdout == f"lease {lease} keepalived with TTL(30)\n"
    listed = kvstore("lease", "list", *ep).stdout.splitlines()
    assert listed[0].startswith("found ") and lease in listed[1:]
    assert kvstore("lease", "revoke", lease, *ep).stdout == f"lease {lease} revoked\n"
    assert etcdctl([server.address], "get", "cl/k").stdout == ""
    assert kvstore("lease", "timetolive", lease, *ep).stdout == (
        f"lease {lease} already expired\n")
    assert_one_line_error(kvstore("lease", "revoke", lease, *ep), "lease not found")
    assert_one_line_error(kvstore("lease", "keep-alive", lease, "--once", *ep),
                          "expired or revoked")
    assert_one_line_error(kvstore("lease", "revoke", "xyz", *ep), "hexadecimal")


def test_lock_runs_the_command_and_exits_with_its_code(kvstore: Run,
                                                       server: Server) -> None:
    script = 'import os, sys; print(os.environ["KVSTORE_LOCK_KEY"], ' \
             'os.environ["KVSTORE_LOCK_TOKEN"]); sys.exit(3)'
    result = kvstore("lock", "cmdlock", "--endpoints", server.address, "--",
                     sys.executable, "-c", script)
    assert result.returncode == 3, result.stderr
    key, token = result.stdout.split()
    assert key.startswith("cmdlock/") and int(token) > 0
    # Released afterwards: the lock is free again.
    assert etcdctl([server.address], "get", "cmdlock/", "--prefix").stdout == ""
    missing = kvstore("lock", "cmdlock", "--endpoints", server.address, "--",
                      "/nonexistent/command")
    assert_one_line_error(missing, "cannot run")


def test_lock_mutual_exclusion_between_processes(tmp_path: Path, server: Server) -> None:
    """Processes take the lock in turns; each critical section checks a marker file that
    only one may hold, and logs its fencing token: no overlap, tokens strictly increase."""
    worker = tmp_path / "critical.py"
    worker.write_text(textwrap.dedent(f"""
        import os, sys, time
        marker = {str(tmp_path / 'inside')!r}
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            sys.exit(99)  # someone else is inside
        time.sleep(0.05)  # widen the window an overlap would need
        with open({str(tmp_path / 'tokens')!r}, "a") as log:
            log.write(os.environ["KVSTORE_LOCK_TOKEN"] + "\\n")
        os.close(fd)
        os.unlink(marker)
    """))
    loop = (f"for i in 1 2 3; do {sys.executable} -m kvstore.cli lock mx "
            f"--endpoints {server.address} -- {sys.executable} {worker} || exit $?; done")
    procs = [subprocess.Popen(["sh", "-c", loop], cwd=tmp_path, env=cli_env(),
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        results = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert [p.returncode for p in procs] == [0, 0], results
    tokens = [int(t) for t in (tmp_path / "tokens").read_text().split()]
    assert len(tokens) == 6 and tokens == sorted(set(tokens))


def test_lock_without_command_holds_until_interrupted(tmp_path: Path,
                                                     server: Server) -> None:
    proc = spawn(tmp_path, server.address, "lock", "hold")
    try:
        assert proc.stdout is not None
        key = proc.stdout.readline().strip()
        assert key.startswith("hold/")
        assert etcdctl([server.address], "get", key, "--keys-only").stdout.strip() == key
    finally:
        code, _, err = stop(proc)
    assert code == 0 and err == ""
    assert etcdctl([server.address], "get", "hold/", "--prefix").stdout == ""


def test_elect_campaigns_and_listens(tmp_path: Path, server: Server) -> None:
    leader = spawn(tmp_path, server.address, "elect", "cel", "first")
    listener = spawn(tmp_path, server.address, "elect", "cel", "--listen")
    try:
        assert leader.stdout is not None and listener.stdout is not None
        key = leader.stdout.readline().strip()
        assert key.startswith("cel/") and leader.stdout.readline().strip() == "first"
        assert [listener.stdout.readline().strip() for _ in range(2)] == [key, "first"]
    finally:
        code, _, err = stop(leader)
        stop(listener)
    assert code == 0 and err == ""
    assert etcdctl([server.address], "get", "cel/", "--prefix").stdout == ""
