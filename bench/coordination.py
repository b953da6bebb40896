"""Watch and lock figures on fresh local 3-node clusters: `python -m bench.coordination`.

    --latency   write acknowledged by the leader -> event received by a watch on a follower
    --fanout    N watches on one follower while sequential writes continue: the writes'
                latency, and whether every watch got every event (N from --watchers)
    --failover  a lock holder while the leader is killed (does it keep the lock?), and a
                waiter's wait when the holder's process dies (about the lease TTL)

Every cluster is started on loopback in a temporary directory and always brought down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import subprocess
import sys
import threading
import time

import grpc

from bench.localcluster import LocalCluster, local_cluster
from bench.stats import percentile
from kvstore.client import KVClient
from kvstore.etcdapi.methods import stub
from kvstore.etcdpb import rpc_pb2 as pb


def _pcts(samples: list[float]) -> str:
    s = sorted(samples)
    return (f"p50 {percentile(s, 50) * 1000:.2f} ms, p99 {percentile(s, 99) * 1000:.2f} ms "
            f"({len(s)} samples)")


def _leader_and_follower(cluster: LocalCluster) -> tuple[int, int]:
    leader = cluster.leader()
    assert leader is not None
    li = int(leader.lstrip("n")) - 1
    return li, (li + 1) % len(cluster.endpoints)


def latency(writes: int) -> None:
    with local_cluster(3) as cluster:
        li, fi = _leader_and_follower(cluster)
        received: dict[bytes, float] = {}
        ready = threading.Event()

        def watch() -> None:
            with grpc.insecure_channel(cluster.endpoints[fi]) as ch:
                requests: queue.Queue = queue.Queue()
                requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"lat/", range_end=b"lat0")))
                for resp in stub(ch, "etcdserverpb.Watch").Watch(iter(requests.get, None)):
                    if resp.created:
                        ready.set()
                    now = time.perf_counter()
                    for ev in resp.events:
                        received[ev.kv.key] = now
                    if len(received) >= writes:
                        requests.put(None)
                        return

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        ready.wait(10)
        acked: dict[bytes, float] = {}
        with KVClient([cluster.endpoints[li]]) as client:
            for i in range(writes):
                key = b"lat/%06d" % i
                client.put(key, b"v")
                acked[key] = time.perf_counter()
        t.join(30)
        lags = [received[k] - acked[k] for k in acked if k in received]
        print(f"watch event latency, put acknowledged -> event on follower n{fi + 1}, "
              f"sequential puts: {_pcts(lags)}; {len(received)}/{writes} events")


def fanout(watchers: int, writes: int, per_stream: int = 100) -> None:
    with local_cluster(3) as cluster:
        li, fi = _leader_and_follower(cluster)
        counts = [0] * watchers
        created = [0]
        done = threading.Event()

        async def streams() -> None:
            async with grpc.aio.insecure_channel(cluster.endpoints[fi]) as ch:
                w = stub(ch, "etcdserverpb.Watch")

                async def one(first: int, n: int) -> None:
                    async def reqs():  # noqa: ANN202
                        for i in range(first, first + n):
                            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(
                                key=b"fan/", range_end=b"fan0", watch_id=i + 1))
                        while not done.is_set():
                            await asyncio.sleep(0.1)
                    call = w.Watch(reqs())
                    try:
                        async for resp in call:
                            if resp.created:
                                created[0] += 1
                            if resp.events:
                                counts[resp.watch_id - 1] += len(resp.events)
                            if done.is_set():
                                call.cancel()
                                return
                    except grpc.aio.AioRpcError:
                        return  # the channel closed under it at the end
                await asyncio.gather(*(one(s, min(per_stream, watchers - s))
                                       for s in range(0, watchers, per_stream)))

        loop_thread = threading.Thread(target=lambda: asyncio.run(streams()), daemon=True)
        if watchers:
            loop_thread.start()
            deadline = time.monotonic() + 60
            while created[0] < watchers and time.monotonic() < deadline:
                time.sleep(0.05)
        lat = []
        with KVClient([cluster.endpoints[li]]) as client:
            for i in range(writes):
                t0 = time.perf_counter()
                client.put(b"fan/%06d" % i, b"v")
                lat.append(time.perf_counter() - t0)
        deadline = time.monotonic() + 60
        while watchers and min(counts) < writes and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        complete = sum(1 for c in counts if c == writes)
        print(f"{watchers} watches on follower n{fi + 1} ({created[0]} created), {writes} "
              f"sequential puts to the leader: put {_pcts(lat)}; {complete}/{watchers} "
              f"watches got every event")


HOLDER = """
import sys, time
from kvstore.client import KVClient
with KVClient(sys.argv[1].split(",")) as c, c.lock("bench-lock", ttl=int(sys.argv[2])) as lk:
    print(lk.token, flush=True)
    time.sleep(600)
"""


def failover(ttl: int) -> None:
    with local_cluster(3) as cluster:
        with KVClient(cluster.endpoints) as client:
            lost: list[float] = []
            with client.lock("bench-lock", ttl=ttl, on_lost=lambda *_: lost.append(
                    time.monotonic())) as lock:
                leader = cluster.leader()
                assert leader is not None
                killed = time.monotonic()
                cluster.stop(leader, kill=True)
                # Hold on for three TTLs: a kept-alive lease must survive the failover.
                time.sleep(3 * ttl)
                new_leader = cluster.leader()
                still = client.range("bench-lock", prefix=True).kvs
                mine = any(kv.create_revision == lock.token for kv in still)
                print(f"lock holder across kill -9 of leader {leader} (new leader "
                      f"{new_leader}), TTL {ttl}s: lease lost: "
                      f"{'yes, after %.2f s' % (lost[0] - killed) if lost else 'no'}; "
                      f"lock key still held after {3 * ttl}s: {mine}")
            cluster.start(leader)
        # A holder process killed: how long until a waiter gets the lock.
        env = dict(os.environ)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, ",".join(cluster.endpoints),
                                   str(ttl)], stdout=subprocess.PIPE, text=True, env=env)
        try:
            token = int(holder.stdout.readline())  # type: ignore[union-attr]
            holder.kill()
            killed = time.monotonic()
            with KVClient(cluster.endpoints) as client, client.lock("bench-lock",
                                                                   ttl=ttl) as lock:
                waited = time.monotonic() - killed
                print(f"holder process killed (kill -9) holding token {token}: a waiter got "
                      f"the lock after {waited:.2f} s (TTL {ttl}s), token {lock.token}")
        finally:
            holder.kill()
            holder.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--fanout", action="store_true")
    ap.add_argument("--failover", action="store_true")
    ap.add_argument("--writes", type=int, default=500)
    ap.add_argument("--watchers", default="0,100,1000")
    ap.add_argument("--ttl", type=int, default=5)
    args = ap.parse_args()
    every = not (args.latency or args.fanout or args.failover)
    if args.latency or every:
        latency(args.writes)
    if args.fanout or every:
        for n in (int(x) for x in args.watchers.split(",")):
            fanout(n, args.writes)
    if args.failover or every:
        failover(args.ttl)


if __name__ == "__main__":
    main()
