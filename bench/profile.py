"""py-spy profiles of kvstore's nodes during a benchmark phase (`python -m bench --profile`).

Each node process is sampled by `py-spy record --format raw` (collapsed stacks of the
threads that are busy: running, or in an uninterruptible system call such as fsync; threads
waiting on a socket or a lock are left out) while the phase runs; the raw files are kept
next to the results, and each is summarised as the functions that most samples end in
(self) and the kvstore functions most samples pass through (inclusive).

py-spy needs ptrace rights over the node processes (root, or a kernel.yama.ptrace_scope
of 0) and is in the `bench` extra: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SAMPLE_HZ = 100
TOP = 12
_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


class ProfilerMissing(RuntimeError):
    """py-spy is not installed."""


def py_spy() -> str:
    """The py-spy next to this Python (a venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    exe = str(beside) if beside.exists() else shutil.which("py-spy")
    if exe is None:
        raise ProfilerMissing("--profile needs py-spy: pip install -e '.[bench]'")
    return exe


@contextmanager
def profiling(pids: Sequence[int], out_dir: Path, label: str) -> Iterator[list[Path]]:
    """Sample every pid while the block runs; yields the raw files written at its end."""
    exe = py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{label}-pid{pid}.txt" for pid in pids]
    procs = [subprocess.Popen([exe, "record", "--format", "raw", "--nonblocking",
                               "-r", str(SAMPLE_HZ), "-p", str(pid), "-o", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for pid, path in zip(pids, paths, strict=True)]
    try:
        yield paths
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _frame(text: str) -> str:
    m = _FRAME.match(text)
    if m is None:
        return text
    return f"{m.group('fn')} ({Path(m.group('file')).name})"


def summarize(path: Path) -> dict[str, Any]:
    """{samples, self: [(share, frame)], kvstore_inclusive: [(share, frame)]} of a raw
    py-spy file (one `frame;frame;... count` line per distinct stack)."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            self_counts[_frame(frames[-1])] += n
            for f in {_frame(f) for f in frames if "kvstore/" in f}:
                inclusive[f] += n

    def top(c: collections.Counter[str]) -> list[list[Any]]:
        return [[round(100 * v / total, 1), k] for k, v in c.most_common(TOP)] if total else []

    return {"samples": total, "self": top(self_counts), "kvstore_inclusive": top(inclusive)}


def render(name: str, summaries: dict[str, dict[str, Any]]) -> str:
    lines = []
    for node, s in summaries.items():
        lines.append(f"{name} {node}: {s['samples']} samples")
        lines += [f"  self {share:5.1f}%  {frame}" for share, frame in s["self"]]
        lines += [f"  incl {share:5.1f}%  {frame}" for share, frame in s["kvstore_inclusive"]]
    return "\n".join(lines)
