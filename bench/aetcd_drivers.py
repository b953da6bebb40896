"""Drivers that go through etcd's API with a Python etcd client: aetcd (PyPI, asyncio).

Why: users of the etcd API call kvstore through an etcd client library, not through
kvstore's own client, so the suite measures that path too, on kvstore and on etcd with
the same client (targets `kvstore-N-etcdapi` and `etcd-N-aetcd`, beside the native
`kvstore-N` and the raw-stub `etcd-N`).

Like the other drivers: puts and linearizable gets go to the leader (aetcd talks to the
one endpoint it is given; kvstore's followers would forward, etcd's too, at the cost of
a hop), stale gets are aetcd's serializable gets spread over the followers, and the
channels get the same options as every other driver.

aetcd is asyncio only. The blocking driver owns an event loop; its put/get/stale_get run
one call to completion on it (warm-up, preloading), while its `timed` series run inside
the loop and time each `await`: starting the loop for every call costs 40-60 µs (seen
against etcd on a 2-core box), which is the harness's, not the client's. The asyncio
driver runs in the load worker's loop like the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bench.drivers import RPC_TIMEOUT, TargetSpec, call_async
from kvstore.client._core import CHANNEL_OPTIONS

T = TypeVar("T")
CLIENT = "aetcd"
INSTALL_HINT = "needs aetcd: pip install -e '.[bench]'"


def aetcd_available() -> bool:
    """True if aetcd can be imported (it is in the bench and test extras)."""
    try:
        import aetcd  # noqa: F401
    except ImportError:
        return False
    return True


def _client(endpoint: str) -> Any:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=RPC_TIMEOUT,
                        options=dict(CHANNEL_OPTIONS))


class AetcdAsync:
    """aetcd clients: one to the leader, one per follower; create inside a running loop."""

    def __init__(self, spec: TargetSpec) -> None:
        self.leader = _client(spec.leader)
        self.followers = [_client(f) for f in spec.followers] or [self.leader]

    async def put(self, key: bytes, value: bytes) -> None:
        await self.leader.put(key, value)

    async def get(self, key: bytes) -> None:
        await self.leader.get(key)

    async def stale_get(self, key: bytes, follower: int) -> None:
        await self.followers[follower % len(self.followers)].get(key, serializable=True)

    async def close(self) -> None:
        for c in {id(c): c for c in (self.leader, *self.followers)}.values():
            await c.close()


class AetcdSync:
    """AetcdAsync behind an event loop of its own, for the sequential workloads."""

    def __init__(self, spec: TargetSpec) -> None:
        self.loop = asyncio.new_event_loop()

        async def make() -> AetcdAsync:
            return AetcdAsync(spec)

        self.driver = self._run(make())

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(call)

    def put(self, key: bytes, value: bytes) -> None:
        self._run(self.driver.put(key, value))

    def get(self, key: bytes) -> None:
        self._run(self.driver.get(key))

    def stale_get(self, key: bytes, follower: int) -> None:
        self._run(self.driver.stale_get(key, follower))

    def timed(self, op: str, n: int, key: Callable[[int], bytes], value: bytes,
              progress: Callable[[int], None]) -> list[float]:
        """Latencies (s) of `op` on key(0..n-1), one at a time, timed inside the loop."""

        async def series() -> list[float]:
            out: list[float] = []
            for i in range(n):
                k = key(i)
                t = time.perf_counter()
                await call_async(self.driver, op, k, value, i)
                out.append(time.perf_counter() - t)
                progress(i + 1)
            return out

        return self._run(series())

    def close(self) -> None:
        try:
            self._run(self.driver.close())
        finally:
            self.loop.close()
