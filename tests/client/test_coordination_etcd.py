"""Watch, leases, locks and elections of kvstore's client against a REAL etcd 3.4.

The client speaks etcd's Watch, Lease and KV services for these features, so etcd is the
reference: what passes here is the protocol kvstore's own services must serve (the same
tests run against `kvstore cluster up` in test_coordination_cluster.py). One etcd for the
module, on loopback, always stopped; each test uses its own keys. No sleeps synchronize:
waits poll with deadlines (``get(timeout)``, ``wait_lost``, ``wait_until``).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore.client import (
    AsyncElection,
    AsyncKVClient,
    Compacted,
    Election,
    KVClient,
    LeaseNotFound,
    LockTimeout,
    NotElected,
)
from kvstore.etcdapi.methods import KV, stub
from kvstore.etcdpb import rpc_pb2 as pb
from tests.client.etcd_server import ETCD, NO_ETCD, EtcdServer, Server, etcd_server
from tests.etcdapi.etcdctl_util import ETCDCTL, NO_ETCDCTL, etcdctl, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if ETCD is None or ETCDCTL is None:
        pytest.skip(NO_ETCD if ETCD is None else NO_ETCDCTL)
    with etcd_server(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture
def client(server: Server) -> Iterator[KVClient]:
    with KVClient([server.address], timeout=10.0) as c:
        yield c


class EtcdKV:
    """Plain etcd KV calls (KVClient.put speaks kvstore's native service, not etcd's)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.kv = stub(self.channel, KV)

    def put(self, key: str, value: str, lease: int = 0) -> int:
        return self.kv.Put(pb.PutRequest(key=key.encode(), value=value.encode(), lease=lease),
                           timeout=10).header.revision

    def delete(self, key: str) -> int:
        return self.kv.DeleteRange(pb.DeleteRangeRequest(key=key.encode()),
                                   timeout=10).header.revision

    def get(self, key: str) -> bytes | None:
        kvs = self.kv.Range(pb.RangeRequest(key=key.encode()), timeout=10).kvs
        return bytes(kvs[0].value) if kvs else None

    def compact(self, revision: int) -> None:
        self.kv.Compact(pb.CompactionRequest(revision=revision, physical=True), timeout=10)


@pytest.fixture
def kv(server: Server) -> Iterator[EtcdKV]:
    api = EtcdKV(server.address)
    yield api
    api.channel.close()


# --------------------------------------------------------------------------- leases


def test_lease_calls(client: KVClient, kv: EtcdKV) -> None:
    grant = client.lease_grant(30)
    assert grant.id > 0 and grant.ttl == 30
    kv.put("lease/a", "1", lease=grant.id)
    info = client.lease_time_to_live(grant.id, keys=True)
    assert info.exists and info.granted_ttl == 30 and 0 < info.ttl <= 30
    assert info.keys == (b"lease/a",)
    assert client.lease_keepalive_once(grant.id) == 30
    assert grant.id in client.leases()
    client.lease_revoke(grant.id)
    assert kv.get("lease/a") is None  # revoking deletes the lease's keys
    with pytest.raises(LeaseNotFound):
        client.lease_revoke(grant.id)
    assert client.lease_time_to_live(grant.id).ttl == -1
    assert client.lease_keepalive_once(grant.id) == 0
    assert grant.id not in client.leases()


def test_lease_context_keeps_alive_then_revokes(client: KVClient, kv: EtcdKV) -> None:
    with client.lease(2) as lease:
        kv.put("lease/kept", "x", lease=lease.id)
        # Several TTLs pass while the background thread renews: the key stays.
        renewals = 0
        for _ in range(3):
            assert not lease.wait_lost(2.5)
            renewals += 1
            assert kv.get("lease/kept") == b"x" and lease.ttl() > 0
    assert renewals == 3 and not lease.lost
    assert kv.get("lease/kept") is None  # revoked on exit, at once


def test_lease_expires_after_keepalives_stop(client: KVClient, kv: EtcdKV) -> None:
    lease = client.lease(2).grant()
    kv.put("lease/expiring", "x", lease=lease.id)
    lease.stop_keepalive()
    wait_until(lambda: kv.get("lease/expiring") is None, 20.0, "the lease to expire")
    assert client.lease_time_to_live(lease.id).ttl == -1


def test_lost_lease_is_reported(client: KVClient, server: Server) -> None:
    seen: list[Any] = []
    with KVClient([server.address]) as other, client.lease(3, on_lost=seen.append) as lease:
        other.lease_revoke(lease.id)  # someone else revokes it
        assert lease.wait_lost(10.0)
    assert lease.lost and "expired or was revoked" in lease.lost_reason
    assert seen == [lease]


def test_async_lease(server: Server, kv: EtcdKV) -> None:
    async def main() -> None:
        async with AsyncKVClient([server.address]) as c:
            async with c.lease(2) as lease:
                kv.put("lease/async", "x", lease=lease.id)
                assert not await lease.wait_lost(2.5)
                assert kv.get("lease/async") == b"x" and await lease.ttl() > 0
                assert lease.id in await c.leases()
            assert kv.get("lease/async") is None

    asyncio.run(main())


# --------------------------------------------------------------------------- watch


def test_watch_events_in_order_with_prev_kv(client: KVClient, kv: EtcdKV) -> None:
    with client.watch("w1/", prefix=True, prev_kv=True) as events:
        r1 = kv.put("w1/a", "1")
        r2 = kv.put("w1/a", "2")
        kv.put("w1-other", "not in the prefix")
        r3 = kv.delete("w1/a")
        got = [events.get(10.0) for _ in range(3)]
        assert events.get(0.2) is None
    assert [(e.type, e.key, e.value, e.mod_revision) for e in got if e] == [
        ("PUT", b"w1/a", b"1", r1), ("PUT", b"w1/a", b"2", r2), ("DELETE", b"w1/a", b"", r3)]
    assert got[0] and got[0].prev_kv is None
    assert got[2] and got[2].prev_kv and got[2].prev_kv.value == b"2"
    assert events.closed and list(events) == []  # a closed watch iterates to its end


def test_watch_replays_from_a_revision_and_filters(client: KVClient, kv: EtcdKV) -> None:
    first = kv.put("w2", "1")
    kv.delete("w2")
    kv.put("w2", "3")
    with client.watch("w2", start_revision=first) as events:
        assert [e.value for e in (events.get(10.0) for _ in range(3)) if e] == [
            b"1", b"", b"3"]
    with client.watch("w2", start_revision=first, filters=["noput"]) as events:
        event = events.get(10.0)
        assert event is not None and event.type == "DELETE"
        assert events.get(0.2) is None


def test_watch_from_a_compacted_revision_raises(client: KVClient, kv: EtcdKV) -> None:
    old = kv.put("w3", "1")
    now = kv.put("w3", "2")
    kv.compact(now)
    with client.watch("w3", start_revision=old) as events, pytest.raises(Compacted) as info:
        events.get(10.0)
    assert info.value.compact_revision == now


def test_async_watch(server: Server, kv: EtcdKV) -> None:
    async def main() -> list[bytes]:
        async with AsyncKVClient([server.address]) as c, c.watch("w4/", prefix=True) as events:
            kv.put("w4/a", "1")
            kv.put("w4/b", "2")
            got = [await events.get(10.0) for _ in range(2)]
            assert await events.get(0.2) is None
            return [e.key for e in got if e]

    assert asyncio.run(main()) == [b"w4/a", b"w4/b"]


# --------------------------------------------------------------------------- locks


def test_lock_mutual_exclusion_and_increasing_tokens(server: Server) -> None:
    inside: list[int] = []
    overlaps: list[str] = []
    tokens: list[int] = []
    guard = threading.Lock()

    def worker(name: str) -> None:
        with KVClient([server.address]) as c:
            for _ in range(4):
                with c.lock("mx", ttl=10) as held:
                    with guard:
                        if inside:
                            overlaps.append(name)
                        inside.append(1)
                        tokens.append(held.token)
                    assert held.key.startswith(b"mx/") and held.held
                    with guard:
                        inside.pop()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert overlaps == [] and len(tokens) == 12
    assert tokens == sorted(tokens) and len(set(tokens)) == 12  # strictly increasing


def test_lock_timeout_leaves_nothing_behind(client: KVClient, kv: EtcdKV,
                                            server: Server) -> None:
    with client.lock("lt", ttl=10) as held, KVClient([server.address]) as other:
        waiter = other.lock("lt", ttl=10)
        with pytest.raises(LockTimeout):
            waiter.acquire(timeout=0.5)
        assert not waiter.held and waiter.lease is None
        # Only the holder's key is left under the prefix.
        keys = stub(kv.channel, KV).Range(pb.RangeRequest(key=b"lt/", range_end=b"lt0"),
                                          timeout=10).kvs
        assert [bytes(k.key) for k in keys] == [held.key]


def test_lock_lost_when_its_lease_is_revoked(client: KVClient, server: Server) -> None:
    lost: list[Any] = []
    held = client.lock("ll", ttl=5, on_lost=lost.append).acquire()
    try:
        with KVClient([server.address]) as other:
            assert held.lease is not None
            other.lease_revoke(held.lease.id)
        assert held.lease.wait_lost(10.0)
        assert held.lost and not held.held and lost == [held.lease]
    finally:
        held.release()


def test_lock_excludes_etcdctl_lock(client: KVClient, server: Server) -> None:
    """`etcdctl lock` waits for our lock and then holds it under the same key layout."""
    held = client.lock("shared", ttl=10).acquire()
    proc = subprocess.Popen(
        [str(ETCDCTL), f"--endpoints={server.address}", "lock", "shared"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    try:
        # It queues behind us: its key appears under the prefix, after ours.
        wait_until(lambda: len(_keys(server, "shared/")) == 2, 20.0, "etcdctl to queue")
        held.release()
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # printed once it holds the lock
        assert line.startswith("shared/") and int(line.split("/")[1], 16) > 0
        with pytest.raises(LockTimeout):
            client.lock("shared", ttl=10).acquire(timeout=0.5)
    finally:
        proc.terminate()  # etcdctl unlocks and revokes its session on SIGTERM
        proc.wait(10)
    with client.lock("shared", ttl=10).acquire(timeout=20) as again:
        assert again.token > held.token


def _keys(server: Server, prefix: str) -> list[str]:
    result = etcdctl([server.address], "get", prefix, "--prefix", "--keys-only")
    return [line for line in result.stdout.splitlines() if line]


def test_async_lock(server: Server) -> None:
    async def main() -> list[int]:
        async with AsyncKVClient([server.address]) as a, AsyncKVClient([server.address]) as b:
            first = await a.lock("al", ttl=10).acquire()
            second = b.lock("al", ttl=10)
            waiting = asyncio.ensure_future(second.acquire())
            done, _ = await asyncio.wait([waiting], timeout=0.3)
            assert not done  # still waiting for the first holder
            await first.release()
            await asyncio.wait_for(waiting, 20)
            await second.release()
            return [first.token, second.token]

    one, two = asyncio.run(main())
    assert two > one


# --------------------------------------------------------------------------- elections


def test_election(client: KVClient, server: Server) -> None:
    with KVClient([server.address]) as other:
        first, second = Election(client, "el", ttl=10), Election(other, "el", ttl=10)
        observer = Election(client, "el").observe()
        try:
            first.campaign("one")
            assert next(observer).value == b"one"
            winner = threading.Thread(target=second.campaign, args=("two",))
            winner.start()
            first.proclaim("one again")
            assert next(observer).value == b"one again"
            leader = first.leader()
            assert leader is not None and leader.key == first.key
            first.resign()
            winner.join(20)
            assert not winner.is_alive() and second.is_leader
            assert next(observer).value == b"two"
            assert second.leader_revision > first.leader_revision
            with pytest.raises(NotElected):
                first.proclaim("not mine")
        finally:
            observer.close()  # type: ignore[attr-defined]
            first.close()
            second.close()
        assert first.leader() is None


def test_election_interoperates_with_etcdctl_elect(client: KVClient,
                                                   server: Server) -> None:
    listener = subprocess.Popen(
        [str(ETCDCTL), f"--endpoints={server.address}", "elect", "-l", "ee"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    try:
        with Election(client, "ee", ttl=10) as ours:
            ours.campaign("from-kvstore")
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == ours.key.decode()
            assert listener.stdout.readline().strip() == "from-kvstore"
    finally:
        listener.terminate()
        listener.wait(10)
    campaigner = subprocess.Popen(
        [str(ETCDCTL), f"--endpoints={server.address}", "elect", "ee", "from-etcdctl"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    try:
        assert campaigner.stdout is not None
        campaigner.stdout.readline()  # elected: its key, then its value
        leader = Election(client, "ee").leader()
        assert leader is not None and leader.value == b"from-etcdctl"
    finally:
        campaigner.terminate()
        campaigner.wait(10)


def test_async_election(server: Server) -> None:
    async def main() -> None:
        async with AsyncKVClient([server.address]) as c:
            async with AsyncElection(c, "ae", ttl=10) as e:
                observed = AsyncElection(c, "ae").observe()
                await e.campaign("a")
                assert (await observed.__anext__()).value == b"a"
                await e.proclaim("b")
                assert (await observed.__anext__()).value == b"b"
                leader = await e.leader()
                assert leader is not None and leader.value == b"b"
                await observed.aclose()  # type: ignore[attr-defined]
            assert await AsyncElection(c, "ae").leader() is None

    asyncio.run(main())


def test_watch_resumes_after_the_member_is_killed(server: EtcdServer, kv: EtcdKV,
                                                  tmp_path: Path) -> None:
    """kill -9 of the only member mid-watch, restart: the watch resumes from its last
    revision, and sees every event exactly once, in order. (Last: it restarts etcd.)"""
    with KVClient([server.address], timeout=30.0) as c, c.watch("wr/", prefix=True) as events:
        before = [kv.put(f"wr/{i}", str(i)) for i in range(3)]
        seen = [events.get(10.0) for _ in range(3)]
        server.kill()
        server.start()
        kv.channel.close()
        fresh = EtcdKV(server.address)
        try:
            after = [fresh.put(f"wr/{i}", f"again {i}") for i in range(3)]
        finally:
            fresh.channel.close()
        seen += [events.get(30.0) for _ in range(3)]
        assert events.get(0.3) is None
        assert events.reconnects >= 1
    assert [e.mod_revision for e in seen if e] == before + after
