"""Machine facts and CPU accounting recorded with every result.

Why: latency figures mean little without the machine they came from. A 2-core box where
the client, three servers and other people's tests share the CPUs, or a filesystem whose
fsync takes 5 ms instead of 50 µs, changes the numbers more than most code changes do, so
the suite records cores, fsync latency where the data lives, software versions, and per
measurement window the CPU used by the client processes, by the servers and by the whole
machine (which exposes a neighbour's load).
"""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.stats import summary_ms

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
REPO_ROOT = Path(__file__).resolve().parents[1]


def proc_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of a live process (from /proc), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def processes_cpu_seconds(pids: tuple[int, ...] | list[int]) -> float:
    """Sum of proc_cpu_seconds over the processes that still exist."""
    return sum(s for s in (proc_cpu_seconds(p) for p in pids) if s is not None)


@dataclass(frozen=True)
class MachineCpu:
    """Jiffies of the whole machine from /proc/stat: busy and total, all cores together."""

    busy: int
    total: int

    @staticmethod
    def read() -> MachineCpu | None:
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        return MachineCpu(busy=sum(values) - idle, total=sum(values))

    def busy_pct_since(self, earlier: MachineCpu) -> float | None:
        """Busy share of all cores between two readings, in % of the whole machine."""
        total = self.total - earlier.total
        return None if total <= 0 else 100.0 * (self.busy - earlier.busy) / total


def fsync_latency(directory: Path, samples: int = 200, size: int = 128) -> dict[str, object]:
    """Latency of small synced writes in `directory`, two ways a log can do it.

    Why: both kvstore and etcd sync on every commit, so this is the floor under their
    commit latency on this filesystem. `append_fsync` grows a file and fsyncs it (the
    size changes, so the filesystem must commit its journal too); `prealloc_fdatasync`
    overwrites a preallocated file and fdatasyncs it, as etcd's WAL does with its
    preallocated 64 MB segments. A large gap between the two is a hint for a log design.
    """
    directory.mkdir(parents=True, exist_ok=True)
    chunk = b"x" * size
    fd, name = tempfile.mkstemp(prefix=".fsync-probe-", dir=directory)
    appended: list[float] = []
    overwritten: list[float] = []
    try:
        os.close(fd)
        fd = os.open(name, os.O_WRONLY | os.O_APPEND)
        try:
            for _ in range(samples):
                t = time.perf_counter()
                os.write(fd, chunk)
                os.fsync(fd)
                appended.append(time.perf_counter() - t)
        finally:
            os.close(fd)
        fd = os.open(name, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"\0" * (size * samples))
            os.fsync(fd)
            sync = getattr(os, "fdatasync", os.fsync)
            for i in range(samples):
                t = time.perf_counter()
                os.pwrite(fd, chunk, i * size)
                sync(fd)
                overwritten.append(time.perf_counter() - t)
        finally:
            os.close(fd)
    finally:
        os.unlink(name)
    return {"directory": str(directory), "filesystem": filesystem_type(directory),
            "bytes": size, "append_fsync": summary_ms(appended),
            "prealloc_fdatasync": summary_ms(overwritten)}


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, fstype) of the mount holding `path`: the longest /proc/mounts match."""
    best, fstype = "/", "unknown"
    target = str(path.resolve())
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best, fstype
    matched = ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(matched):
            matched, fstype = mount, parts[2]
    return matched or best, fstype


def filesystem_type(path: Path) -> str:
    """The fstype of the mount holding `path`."""
    return mount_of(path)[1]


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if out.returncode == 0 and text else None


def etcd_version(binary: str) -> str | None:
    """'3.4.23' from `etcd --version`, or None."""
    line = _first_line([binary, "--version"])
    return line.split(":", 1)[1].strip() if line and ":" in line else line


def git_revision() -> str | None:
    """Commit of the checkout, with '+dirty' when the tree has local changes."""
    rev = _first_line(["git", "rev-parse", "--short", "HEAD"])
    if rev is None:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine_facts(results_dir: Path, data_dir: Path, etcd_binary: str | None) -> dict[str, object]:
    """Everything about the machine and software a reader needs to weigh the numbers."""
    import google.protobuf
    import grpc

    fsync = {"results_dir": fsync_latency(results_dir)}
    if mount_of(data_dir) != mount_of(results_dir):
        # The servers' data lives elsewhere (e.g. a tmpfs /tmp): that fsync is what counts.
        fsync["data_dir"] = fsync_latency(data_dir)
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "fsync_ms": fsync,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "etcd": etcd_version(etcd_binary) if etcd_binary else None,
        "kvstore_git": git_revision(),
    }
