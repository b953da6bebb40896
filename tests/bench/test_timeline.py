"""bench.timeline's merge of per-process traces into one median timeline (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.timeline import read_traces, timeline


def test_steps_are_labelled_by_role_and_ordered_by_median_offset(tmp_path: Path) -> None:
    # Two puts: [1000, 9000] and [20000, 29000] ns. Pid 1 leads; pid 2 gets the append
    # first in the first put, pid 3 in the second: "follower A" is whichever was first.
    (tmp_path / "trace-1.txt").write_text(
        "2000 rpc-in\n8000 answered\n21000 rpc-in\n28000 answered\n")
    (tmp_path / "trace-2.txt").write_text("3000 recv APP\n4000 write-end\n25000 recv APP\n")
    (tmp_path / "trace-3.txt").write_text("3500 recv APP\n23000 recv APP\n24000 write-end\n")
    rows = timeline(read_traces(tmp_path), [(1000, 9000), (20000, 29000)])
    assert rows == [
        (1.0, "leader", "rpc-in", 2),
        (2.5, "follower A", "recv APP", 2),
        (3.5, "follower A", "write-end", 2),
        (3.75, "follower B", "recv APP", 2),
        (7.5, "leader", "answered", 2),
        (8.5, "client", "answer received", 2),
    ]


def test_a_trace_without_one_leader_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trace-1.txt").write_text("10 recv APP\n")
    with pytest.raises(RuntimeError, match="one leader"):
        timeline(read_traces(tmp_path), [(0, 100)])
