"""What serving metrics costs the put path: `python -m bench.metrics_cost [--puts 1000]`.

One fresh 3-node cluster (every node serves /metrics, as `cluster up` starts it). Phases of
sequential 16-byte puts to the leader through the kvstore client, alternating so drift in
the machine's speed falls on all of them alike:

    idle      nobody scrapes
    scrape-1s a scraper fetches every node's /metrics once a second (Prometheus scrapes
              every 15-60 s: this is far harsher than real use)
    scrape-0.1s  ten scrapes of every node per second (a stress figure)

Prints p50/p99 per phase and the scrape's own size and time.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request

from bench.localcluster import local_cluster
from bench.stats import percentile
from kvstore.client import KVClient


class Scraper(threading.Thread):
    def __init__(self, urls: list[str], interval: float) -> None:
        super().__init__(daemon=True)
        self.urls = [u.rstrip("/") + "/metrics" for u in urls]
        self.interval = interval
        self.stop_flag = threading.Event()
        self.durations: list[float] = []
        self.size = 0

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for url in self.urls:
                t0 = time.perf_counter()
                with urllib.request.urlopen(url, timeout=5) as resp:
                    self.size = len(resp.read())
                self.durations.append(time.perf_counter() - t0)
            self.stop_flag.wait(self.interval)


def _puts(client: KVClient, n: int, tag: str) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        client.put(f"m/{tag}/{i % 1000}", "v" * 16)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.metrics_cost")
    ap.add_argument("--puts", type=int, default=1000, help="puts per phase and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    phases = {"idle": None, "scrape-1s": 1.0, "scrape-0.1s": 0.1}
    samples: dict[str, list[float]] = {p: [] for p in phases}
    scrape: dict[str, list[float]] = {p: [] for p in phases}
    size = 0
    with local_cluster(3) as cluster:
        leader = None
        deadline = time.monotonic() + 10
        while leader is None and time.monotonic() < deadline:
            leader = cluster.leader()
        assert leader is not None, "no leader"
        urls = cluster.metrics_urls()
        assert all(urls), "nodes without metrics_url"
        with KVClient([cluster.endpoints[int(leader[1:]) - 1]], timeout=10.0) as client:
            _puts(client, 200, "warm")
            for r in range(args.rounds):
                for phase, interval in phases.items():
                    scraper = None
                    if interval is not None:
                        scraper = Scraper(urls, interval)
                        scraper.start()
                    samples[phase] += _puts(client, args.puts, f"{phase}{r}")
                    if scraper is not None:
                        scraper.stop_flag.set()
                        scraper.join()
                        scrape[phase] += scraper.durations
                        size = scraper.size
    result = {}
    for phase in phases:
        s = sorted(x * 1000 for x in samples[phase])
        d = sorted(x * 1000 for x in scrape[phase])
        result[phase] = {"puts": len(s), "p50_ms": round(percentile(s, 50), 3),
                         "p99_ms": round(percentile(s, 99), 3),
                         "scrapes": len(d),
                         "scrape_p50_ms": round(percentile(d, 50), 2) if d else None}
    result["metrics_bytes_per_node"] = size
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
