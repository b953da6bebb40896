"""Client-visible unavailability when the leader goes away:
`python -m bench.failover [--trials 10] [--nodes 3] [--mode kill|term|both]`.

A writer thread puts distinct keys back to back through a client that knows every
endpoint and records when each put was acknowledged. Each trial stops the leader —
`kill`: SIGKILL (the cluster must notice and elect: an election timeout and more);
`term`: SIGTERM, a planned restart (the leader hands leadership to an up-to-date voter
first) — and the figure is the longest gap between two consecutive acknowledgements from
the signal on: how long no write could complete. Then the node is restarted, caught up,
and every acknowledged write is checked to still be readable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time

from bench.localcluster import LocalCluster, local_cluster
from bench.stats import percentile
from kvstore.client import KVClient, KVError


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


class Writer(threading.Thread):
    """Sequential puts of distinct keys; remembers each acknowledgement's time."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = KVClient(endpoints, timeout=30.0, attempt_timeout=0.5)
        self.acks: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            key = f"w/{i:08d}"
            try:
                self.client.put(key, str(i))
            except KVError as err:
                self.errors.append(f"{type(err).__name__}: {err}")
            else:
                self.acks.append((time.perf_counter(), key))
            i += 1

    def gap_after(self, t0: float) -> float:
        """The longest wait between acknowledgements from t0 on (the first gap counts
        from t0 itself)."""
        times = [t for t, _ in self.acks if t >= t0]
        if not times:
            return float("inf")
        gaps = [times[0] - t0] + [b - a for a, b in zip(times, times[1:], strict=False)]
        return max(gaps)


def _trial(cluster: LocalCluster, writer: Writer, mode: str) -> tuple[str, float]:
    _wait(lambda: cluster.leader() is not None, 10, "a leader")
    leader = cluster.leader()
    assert leader is not None
    n_before = len(writer.acks)
    _wait(lambda: len(writer.acks) > n_before + 20, 10, "writes before the trial")
    t0 = time.perf_counter()
    os.kill(cluster.pid(leader), signal.SIGKILL if mode == "kill" else signal.SIGTERM)
    # Measure over a window long enough for any election, then restart the node.
    time.sleep(3.0)
    gap = writer.gap_after(t0)
    if mode == "term":
        _wait(lambda: not _alive(cluster.pid(leader)), 15, f"{leader} to exit")
    cluster.stop(leader, kill=True)  # records it as stopped (a no-op if it exited)
    cluster.start(leader)
    endpoint = cluster.endpoints[int(leader[1:]) - 1]
    last_key = writer.acks[-1][1]
    with KVClient([endpoint], timeout=5.0) as c:
        def caught_up() -> bool:
            try:
                return c.get(last_key, stale=True) is not None
            except KVError:
                return False
        _wait(caught_up, 30, f"{leader} to catch up")
    return leader, gap


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def measure(nodes: int, trials: int, mode: str) -> dict:
    with local_cluster(nodes) as cluster:
        writer = Writer(cluster.endpoints)
        writer.start()
        gaps: list[float] = []
        try:
            for trial in range(trials):
                leader, gap = _trial(cluster, writer, mode)
                gaps.append(gap)
                print(f"{mode} trial {trial + 1}/{trials}: stopped leader {leader}, "
                      f"longest wait for a write {gap * 1000:.0f} ms", flush=True)
        finally:
            writer.stop_flag.set()
            writer.join(timeout=40)
        with KVClient(cluster.endpoints, timeout=10.0) as c:
            lost = [k for _, k in writer.acks if c.get(k) is None]
        writer.client.close()
    if lost:
        raise SystemExit(f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}")
    s = sorted(g * 1000 for g in gaps)
    return {"mode": mode, "trials": len(s), "median_ms": round(percentile(s, 50), 1),
            "max_ms": round(s[-1], 1), "min_ms": round(s[0], 1),
            "samples_ms": [round(x, 1) for x in s], "writes_acknowledged": len(writer.acks),
            "writes_checked_after": len(writer.acks), "client_errors": writer.errors[:5],
            "client_error_count": len(writer.errors)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.failover")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--mode", choices=("kill", "term", "both"), default="kill")
    args = ap.parse_args()
    modes = ("term", "kill") if args.mode == "both" else (args.mode,)
    results = [measure(args.nodes, args.trials, m) for m in modes]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
