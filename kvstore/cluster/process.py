"""Liveness of node processes by PID, robust to zombies and PID reuse.

Why not just ``os.kill(pid, 0)``: on these machines PID 1 may not reap orphans,
so a node killed after its launcher exited lingers as a zombie and signal 0 still
succeeds. A zombie (state Z in /proc/PID/stat) counts as stopped. And a PID from
an old cluster.json may by now belong to an unrelated process, so before calling
a PID "our node" we check that its command line is ``kvstore ... serve`` with the
node's data dir. We only ever signal PIDs that pass that check.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

_PROC = Path("/proc")


def proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, or None if unknown/absent."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Format: "pid (comm) S ...": comm may contain spaces and parens, so split at the last ')'.
    _, _, rest = stat.rpartition(")")
    fields = rest.split()
    return fields[0] if fields else None


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0") if part]


def try_reap(pid: int) -> bool:
    """Reap ``pid`` if it is an exited child of this process. True if it was reaped."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reaping it first if it is our child)."""
    if pid <= 0:
        return False
    if try_reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if proc_state(pid) in ("Z", "X"):
        try_reap(pid)  # it may have died just now and be our child after all
        return False
    return True


def is_node_process(pid: int, data_dir: str) -> bool:
    """True if ``pid`` is alive and is a `kvstore serve` process for ``data_dir``.

    Without /proc (not Linux) the command line cannot be checked and liveness alone
    decides.
    """
    if not pid_alive(pid):
        return False
    if not _PROC.is_dir():
        return True
    argv = _cmdline(pid)
    # Right after fork+exec the kernel briefly shows an empty command line.
    deadline = time.monotonic() + 0.5
    while argv == [] and time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.005)
        argv = _cmdline(pid)
    if not argv:
        return False
    return "serve" in argv and data_dir in argv


def wait_gone(pid: int, data_dir: str, timeout: float, poll: float = 0.02) -> bool:
    """Poll until the node process is gone (or a zombie). True if gone within ``timeout``."""
    deadline = time.monotonic() + timeout
    while is_node_process(pid, data_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def send_signal(pid: int, sig: signal.Signals) -> bool:
    """Signal ``pid``; False if it was already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def reap_children(children: dict[int, subprocess.Popen[bytes]]) -> None:
    """Collect exit statuses of children we spawned, so none stays a zombie."""
    for pid, proc in list(children.items()):
        if proc.poll() is not None:
            del children[pid]
