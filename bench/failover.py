"""Leader failover time: `python -m bench.failover [--trials 10] [--nodes 3]`.

Each trial: write a marker key, kill -9 the leader (its pid from cluster.json), and time
from the kill until the next put succeeds through a client that knows every endpoint. Then
check that every acknowledged marker is still readable, restart the killed node, and wait
for it to catch up before the next trial.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from bench.localcluster import local_cluster
from bench.stats import percentile
from kvstore.client import KVClient, KVError


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.failover")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    times: list[float] = []
    acked: dict[str, str] = {}
    with local_cluster(args.nodes) as cluster:
        client = KVClient(cluster.endpoints, timeout=20.0, attempt_timeout=0.5)
        for trial in range(args.trials):
            _wait(lambda: cluster.leader() is not None, 10, "a leader")
            leader = cluster.leader()
            key = f"marker-{trial}"
            client.put(key, f"v{trial}")
            acked[key] = f"v{trial}"
            # Kill by pid from cluster.json so the clock starts at the kill itself, not
            # after the CLI's own start-up; then let the CLI record the node as stopped.
            os.kill(cluster.pid(leader), signal.SIGKILL)
            t0 = time.perf_counter()
            client.put(f"after-{trial}", "x")
            times.append(time.perf_counter() - t0)
            lost = [k for k, v in acked.items() if client.get(k) != v.encode()]
            if lost:
                raise SystemExit(f"acknowledged writes lost after failover: {lost}")
            cluster.stop(leader, kill=True)
            cluster.start(leader)
            endpoint = cluster.endpoints[int(leader[1:]) - 1]
            with KVClient([endpoint], timeout=5.0) as c:
                def caught_up(c=c, key=f"after-{trial}") -> bool:
                    try:
                        return c.get(key, stale=True) == b"x"
                    except KVError:
                        return False
                _wait(caught_up, 20, f"{leader} to catch up")
            print(f"trial {trial + 1}/{args.trials}: killed {leader}, "
                  f"next write after {times[-1] * 1000:.0f} ms")
        client.close()
    s = sorted(t * 1000 for t in times)
    result = {"trials": len(s), "median_ms": percentile(s, 50), "max_ms": s[-1],
              "min_ms": s[0], "samples_ms": s, "acknowledged_markers_checked": len(acked)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
