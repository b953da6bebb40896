"""Start and stop the server processes the suite owns (etcd members, the floor server).

Why a helper: every run must stop what it started, even when it fails or is interrupted.
Children get PR_SET_PDEATHSIG so that even a `kill -9` of the benchmark does not leave
etcd members listening on loopback; normal exits stop them with SIGTERM, then SIGKILL.
(kvstore nodes are started and stopped by `kvstore cluster up/down` instead.)
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM if we die."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux/glibc: the finally blocks still stop children on normal exits


def start_process(cmd: Sequence[str], log_file: Path, cwd: Path | None = None,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` with stdout+stderr appended to `log_file` and no stdin."""
    log = open(log_file, "ab")  # closed below; the child keeps its own copy
    try:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                preexec_fn=_die_with_parent)
    finally:
        log.close()


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    """SIGTERM every process we started, wait up to `grace` s, then SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=grace)


def log_tail(log_file: Path, lines: int = 5) -> str:
    """The last lines of a child's log, for a one-line error when it fails to start."""
    try:
        text = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
