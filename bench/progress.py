"""A plain-text progress indicator for long benchmark runs, written to stderr.

Why stderr: stdout carries the result tables (people pipe it into files and issues).
Why two styles: on a terminal one line is rewritten in place; in a log (CI, `| tee`) a
carriage-return line would be a mess, so a new line is printed only every ~25 %.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_T0 = time.monotonic()


def _clock() -> str:
    elapsed = int(time.monotonic() - _T0)
    return f"[{elapsed // 60:02d}:{elapsed % 60:02d}]"


def note(message: str, stream: TextIO | None = None) -> None:
    """One timestamped line (time since the suite started), e.g. a phase starting."""
    out = stream or sys.stderr
    out.write(f"{_clock()} {message}\n")
    out.flush()


class Progress:
    """Counts completed operations of one phase and reports them at a bounded rate."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 min_interval: float = 0.5) -> None:
        self.label = label
        self.total = max(1, total)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self._last = 0.0
        self._next_quarter = 0.25

    def update(self, done: int) -> None:
        """Report `done` of `total`; cheap enough to call after every operation."""
        fraction = done / self.total
        if self.tty:
            now = time.monotonic()
            if now - self._last >= self.min_interval:
                self._last = now
                self.stream.write(f"\r{_clock()} {self.label}: {done}/{self.total} "
                                  f"({fraction:.0%})")
                self.stream.flush()
        elif fraction >= self._next_quarter and done < self.total:
            while fraction >= self._next_quarter:
                self._next_quarter += 0.25
            self.stream.write(f"{_clock()} {self.label}: {done}/{self.total} "
                              f"({fraction:.0%})\n")
            self.stream.flush()

    def finish(self, summary: str = "") -> None:
        """End the phase with one line (replacing the in-place line on a terminal)."""
        prefix = "\r\x1b[K" if self.tty else ""
        tail = f" {summary}" if summary else ""
        self.stream.write(f"{prefix}{_clock()} {self.label}: done{tail}\n")
        self.stream.flush()
