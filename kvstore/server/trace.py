"""Timestamps of a write's steps in each node process, for `python -m bench.timeline`.

Off unless the environment variable KVSTORE_TRACE names a directory: then every node
process appends lines "<CLOCK_MONOTONIC ns> <event>" to <dir>/trace-<pid>.txt. The
monotonic clock is one clock for every process of a machine, so the client's and the
nodes' lines merge into one timeline of each write across the processes (issue 15 asked
for that before optimising anything: where do the milliseconds of a put go).

Call sites test `ON` before building an event's text, so a node that is not traced pays
one attribute lookup per step. Worker threads write too: one small O_APPEND write is
atomic, so lines never interleave.
"""

from __future__ import annotations

import os
import time

_DIR = os.environ.get("KVSTORE_TRACE", "")
ON = bool(_DIR)
_fd: int | None = None


def event(name: str) -> None:
    """Record that this process reached step `name` now."""
    global _fd
    if _fd is None:
        _fd = os.open(os.path.join(_DIR, f"trace-{os.getpid()}.txt"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, f"{time.monotonic_ns()} {name}\n".encode())
