"""Where the time of one sequential put goes, step by step across the client and the three
node processes: `python -m bench.timeline [--puts N]`.

Starts a fresh local 3-node cluster with KVSTORE_TRACE set (kvstore/server/trace.py: each
node appends timestamped steps to a file), puts one key at a time to the leader, and for
every put takes each step of each process inside the client's call (a step's second
occurrence in the same call is "step #2", and so on: the leader plans and writes twice per
put, once to append and once to apply; steps of the previous put that end after the client
sent the next one show too). Followers are told apart per put by which received the
append (for a read, the heartbeat) first: "follower A" is the one whose answer can commit
the write or confirm the read. `--op get` times linearizable gets (a ReadIndex round)
instead. The median offset of each step
from the client's send is printed in time order, with the median of the whole call.

The trace costs a few microseconds per step; the figures are for finding where time
goes, not for comparing with other benchmarks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.localcluster import local_cluster
from kvstore.client import KVClient

WARMUP = 100


def read_traces(directory: Path) -> dict[int, list[tuple[int, str]]]:
    """pid -> [(ns, event)] in time order."""
    out: dict[int, list[tuple[int, str]]] = {}
    for path in directory.glob("trace-*.txt"):
        pid = int(path.stem.split("-")[1])
        lines = []
        for line in path.read_text().splitlines():
            ns, _, name = line.partition(" ")
            lines.append((int(ns), name))
        out[pid] = sorted(lines)
    return out


def timeline(traces: dict[int, list[tuple[int, str]]],
             calls: list[tuple[int, int]]) -> list[tuple[float, str, str, int]]:
    """(median offset in µs, process, step, how many puts had it), in time order."""
    leaders = [pid for pid, evs in traces.items() if any(e == "rpc-in" for _, e in evs)]
    if len(leaders) != 1:
        raise RuntimeError(f"expected one leader among the traced processes, got {leaders}")
    leader = leaders[0]
    offsets: dict[tuple[str, str], list[float]] = defaultdict(list)
    for start, end in calls:
        firsts: dict[int, dict[str, int]] = {}
        for pid, evs in traces.items():
            seen: dict[str, int] = {}
            counts: dict[str, int] = defaultdict(int)
            for ns, name in evs:
                if start <= ns <= end:
                    counts[name] += 1
                    n = counts[name]
                    seen[name if n == 1 else f"{name} #{n}"] = ns
            firsts[pid] = seen
        followers = sorted((pid for pid in traces if pid != leader),
                           key=lambda p: firsts[p].get("recv APP",
                                                       firsts[p].get("recv HEARTBEAT", end + 1)))
        labels = {leader: "leader"}
        labels.update({pid: f"follower {'AB'[i]}" for i, pid in enumerate(followers[:2])})
        for pid, seen in firsts.items():
            for name, ns in seen.items():
                offsets[(labels.get(pid, str(pid)), name)].append((ns - start) / 1000)
        offsets[("client", "answer received")].append((end - start) / 1000)
    rows = [(statistics.median(v), who, name, len(v)) for (who, name), v in offsets.items()]
    return sorted(rows)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    ap.add_argument("--puts", type=int, default=500, help="operations to time")
    ap.add_argument("--op", choices=("put", "get"), default="put",
                    help="put, or linearizable get (ReadIndex)")
    ap.add_argument("--all", action="store_true",
                    help="also steps seen in fewer than half of the puts (heartbeats...)")
    args = ap.parse_args()
    trace_dir = Path(tempfile.mkdtemp(prefix="kvstore-trace-"))
    os.environ["KVSTORE_TRACE"] = str(trace_dir)  # inherited by the nodes `cluster up` starts
    try:
        with local_cluster(3) as cluster:
            with KVClient(cluster.endpoints) as client:
                for i in range(WARMUP):
                    client.put(b"warm-%d" % i, b"v" * 16)
                for path in trace_dir.glob("trace-*.txt"):
                    path.write_text("")  # keep only the measured puts
                calls = []
                for i in range(args.puts):
                    key = b"warm-%d" % (i % 100)
                    start = time.monotonic_ns()
                    if args.op == "put":
                        client.put(key, b"v" * 16)
                    else:
                        client.get(key)
                    calls.append((start, time.monotonic_ns()))
        rows = timeline(read_traces(trace_dir), calls)
    finally:
        os.environ.pop("KVSTORE_TRACE", None)
    what = "16 B puts" if args.op == "put" else "linearizable gets"
    print(f"median step times of {args.puts} sequential {what} (µs from the client's send; "
          f"a step missing from some puts shows how many had it)")
    for offset, who, name, n in rows:
        if n < len(calls) / 2 and not args.all:
            continue
        note = "" if n == len(calls) else f"  ({n} of {len(calls)})"
        print(f"{offset:9.0f}  {who:<11} {name}{note}")
    for path in trace_dir.glob("trace-*.txt"):
        path.unlink()
    trace_dir.rmdir()


if __name__ == "__main__":
    main()
