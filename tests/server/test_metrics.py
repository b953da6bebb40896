"""Metrics, health and log format of one node, in process (no node processes started).

The collector is checked against a fake status and store, the hooks against a real
NodeDriver on a MemoryNodeStore, the HTTP and gRPC endpoints on 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvstore.raft.rawnode import PeerStatus, Status
from kvstore.raft.types import Message, MessageType, Role
from kvstore.server.health import HealthService, NodeHealth
from kvstore.server.logs import setup_logging
from kvstore.server.metrics import (
    DISK_BUCKETS,
    NodeCollector,
    NodeMetrics,
    node_registry,
)
from kvstore.server.metrics_http import MetricsServer, MetricsURLError, parse_metrics_url
from kvstore.server.node import NodeDriver
from kvstore.state import commands
from kvstore.state.alarms import NOSPACE, Alarm
from kvstore.storage.memory_store import MemoryNodeStore

pytestmark = pytest.mark.timeout(60)


def samples(registry_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(registry_text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def status(role: Role = Role.LEADER, leader: str = "n1", **kw: object) -> Status:
    base: dict[str, object] = dict(
        id="n1", role=role, term=3, vote="n1", leader=leader, commit=40, applied=38,
        first_index=1, last_index=42, passive=False, rebuilding=False, progress={})
    base.update(kw)
    return Status(**base)  # type: ignore[arg-type]


@dataclass
class FakeStore:
    leases_held: list[tuple[int, int]] = field(default_factory=list)
    raised: list[Alarm] = field(default_factory=list)

    def size_bytes(self) -> int:
        return 4096

    def file_bytes(self) -> int:
        return 65536

    def revisions(self) -> tuple[int, int]:
        return 17, 5

    def leases(self) -> list[tuple[int, int]]:
        return list(self.leases_held)

    def alarms(self) -> list[Alarm]:
        return list(self.raised)


def scrape(metrics: NodeMetrics, st: Callable[[], Status], store: FakeStore,
           **kw: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = node_registry(metrics, NodeCollector(metrics, st, store, **kw))  # type: ignore[arg-type]
    return samples(generate_latest(registry).decode())


def test_collector_reports_the_leader_view() -> None:
    progress = {"n1": PeerStatus(42, 43, "replicate"), "n2": PeerStatus(42, 43, "replicate"),
                "n3": PeerStatus(30, 31, "probe")}
    got = scrape(NodeMetrics("n1"), lambda: status(progress=progress),
                 FakeStore(leases_held=[(1, 10), (2, 20)]), watchers=lambda: 3,
                 peer_drops=lambda: {"n2": 0, "n3": 4}, quota_bytes=1 << 20)
    assert got[("kvstore_server_id", (("server_id", "n1"),))] == 1
    assert got[("kvstore_server_has_leader", ())] == 1
    assert got[("kvstore_server_is_leader", ())] == 1
    assert got[("kvstore_server_proposals_committed_total", ())] == 40
    assert got[("kvstore_server_proposals_applied_total", ())] == 38
    assert got[("kvstore_server_follower_lag_entries", (("follower", "n2"),))] == 0
    assert got[("kvstore_server_follower_lag_entries", (("follower", "n3"),))] == 12
    assert ("kvstore_server_follower_lag_entries", (("follower", "n1"),)) not in got
    assert got[("kvstore_server_watchers", ())] == 3
    assert got[("kvstore_server_leases", ())] == 2
    assert got[("kvstore_server_quota_backend_bytes", ())] == 1 << 20
    assert got[("kvstore_mvcc_db_total_size_in_bytes", ())] == 65536
    assert got[("kvstore_mvcc_db_total_size_in_use_in_bytes", ())] == 4096
    assert got[("kvstore_mvcc_current_revision", ())] == 17
    assert got[("kvstore_mvcc_compact_revision", ())] == 5
    assert got[("kvstore_network_peer_sent_failures_total", (("To", "n3"),))] == 4
    assert got[("kvstore_server_leader_changes_seen_total", ())] == 0


def test_collector_on_a_follower_without_leader() -> None:
    got = scrape(NodeMetrics("n2"), lambda: status(Role.FOLLOWER, leader="", id="n2"),
                 FakeStore())
    assert got[("kvstore_server_has_leader", ())] == 0
    assert got[("kvstore_server_is_leader", ())] == 0
    assert not any(name == "kvstore_server_follower_lag_entries" for name, _ in got)
    assert ("kvstore_server_quota_backend_bytes", ()) not in got


async def test_event_hooks_count_leaders_proposals_snapshots_and_writes() -> None:
    m = NodeMetrics("n1")
    for leader in ["", "n2", "n2", "", "n2", "n3"]:
        m.leader_seen(leader)
    assert m.leader_changes == 3  # as etcd: n2, n2 again after none, n3
    loop = asyncio.get_running_loop()
    ok, bad, gone = loop.create_future(), loop.create_future(), loop.create_future()
    for fut in (ok, bad, gone):
        m.proposal(fut)
    assert m.proposals_pending == 3
    ok.set_result(None)
    bad.set_exception(RuntimeError("leadership lost"))
    gone.cancel()  # the client went away: not a failed proposal
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert (m.proposals_pending, m.proposals_failed) == (0, 1)
    m.snapshot_sent(True)
    m.snapshot_sent(False)
    m.snapshot_received()
    m.snapshot_installed()
    m.log_compacted()
    m.durable_write(0.003)
    got = scrape(m, status, FakeStore())
    assert got[("kvstore_server_snapshots_sent_total", ())] == 1
    assert got[("kvstore_server_snapshot_send_failures_total", ())] == 1
    assert got[("kvstore_server_snapshots_received_total", ())] == 1
    assert got[("kvstore_server_snapshots_installed_total", ())] == 1
    assert got[("kvstore_server_log_compactions_total", ())] == 1
    for name in ("kvstore_disk_wal_fsync_duration_seconds",
                 "kvstore_disk_backend_commit_duration_seconds"):
        assert got[(f"{name}_count", ())] == 1
        assert got[(f"{name}_bucket", (("le", "0.002"),))] == 0
        assert got[(f"{name}_bucket", (("le", "0.004"),))] == 1
    assert len(DISK_BUCKETS) == 14 and DISK_BUCKETS[-1] == pytest.approx(8.192)


def test_heartbeat_round_trips_are_matched_in_order_and_forgotten_when_lost() -> None:
    now = [100.0]
    m = NodeMetrics("n1", clock=lambda: now[0])
    rtt = m.round_trips

    def hb(dst: str) -> Message:
        return Message(MessageType.HEARTBEAT, "n1", dst, 1)

    def resp(src: str) -> Message:
        return Message(MessageType.HEARTBEAT_RESP, src, "n1", 1)

    sent: list[Message] = []
    send = rtt.wrap_send(sent.extend)
    delivered: list[Message] = []
    deliver = rtt.wrap_deliver(delivered.append)
    send([hb("n2"), hb("n3"), Message(MessageType.APP, "n1", "n2", 1)])
    now[0] += 0.010
    send([hb("n2")])
    now[0] += 0.002
    deliver(resp("n2"))  # answers the first heartbeat: 12 ms
    deliver(Message(MessageType.APP_RESP, "n2", "n1", 1))  # not a heartbeat answer
    rtt.lost("n3")  # the transport dropped n3's batch: its heartbeat will not be answered
    deliver(resp("n3"))
    assert len(sent) == 4 and len(delivered) == 3  # everything still passes through
    got = scrape(m, status, FakeStore())
    assert got[("kvstore_network_peer_round_trip_time_seconds_count", (("To", "n2"),))] == 1
    assert got[("kvstore_network_peer_round_trip_time_seconds_sum", (("To", "n2"),))] == \
        pytest.approx(0.012)
    assert ("kvstore_network_peer_round_trip_time_seconds_count", (("To", "n3"),)) not in got
    now[0] += 60  # the second heartbeat to n2 is answered after a minute: not a round trip
    deliver(resp("n2"))
    got = scrape(m, status, FakeStore())
    assert got[("kvstore_network_peer_round_trip_time_seconds_count", (("To", "n2"),))] == 1


@dataclass
class FakeNode:
    leader: str = "n1"
    out_of_space: str = ""


def test_health_rule() -> None:
    node, store, rebuilding = FakeNode(), FakeStore(), [False]
    health = NodeHealth(node, store, lambda: rebuilding[0])
    assert health.check() == (True, "")
    node.leader = ""
    assert health.check() == (False, "no leader")
    node.leader = "n2"
    store.raised.append(Alarm(NOSPACE, "n3"))
    assert health.check() == (False, "alarm raised: NOSPACE (member n3)")
    store.raised.clear()
    node.out_of_space = "out of space writing /d"
    assert health.check()[0] is False and "disk space" in health.check()[1]
    node.out_of_space = ""
    rebuilding[0] = True
    assert health.check()[0] is False


@pytest.mark.parametrize("url", ["http://127.0.0.1:9201", "http://127.0.0.1:9201/",
                                 "http://localhost:1", "http://[::1]:65535"])
def test_metrics_url_accepted(url: str) -> None:
    host, port = parse_metrics_url(url)
    assert host and 0 < port < 65536


@pytest.mark.parametrize("url", ["127.0.0.1:9201", "https://127.0.0.1:9201", "http://127.0.0.1",
                                 "http://127.0.0.1:0", "http://127.0.0.1:70000",
                                 "http://127.0.0.1:x", "http://:9201", "http://h:1/metrics",
                                 "http://u@h:1"])
def test_metrics_url_refused(url: str) -> None:
    with pytest.raises(MetricsURLError):
        parse_metrics_url(url)


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_http_endpoints() -> None:
    metrics = NodeMetrics("n1")
    healthy = [True, ""]
    registry = node_registry(metrics, NodeCollector(metrics, status, FakeStore()))
    server = MetricsServer("127.0.0.1", 0, registry, lambda: (healthy[0], healthy[1]))
    port = await server.start()
    try:
        code, headers, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        assert int(headers["Content-Length"]) == len(body)
        assert samples(body.decode())[("kvstore_server_is_leader", ())] == 1
        code, headers, body = await http(port, b"GET /health HTTP/1.1\r\n\r\n")
        assert (code, json.loads(body)) == (200, {"health": "true", "reason": ""})
        healthy[:] = [False, "no leader"]
        code, _, body = await http(port, b"GET /health?x=1 HTTP/1.0\r\n\r\n")
        assert (code, json.loads(body)) == (503, {"health": "false", "reason": "no leader"})
        code, headers, body = await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0
        assert (await http(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await http(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await http(port, b"nonsense\r\n\r\n"))[0] == 400
    finally:
        await server.stop()


async def test_grpc_health_service() -> None:
    state = [True]
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(
        HealthService(lambda: (state[0], ""), poll_seconds=0.01), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "kvstore.v1.KV"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                         timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            state[0] = False
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        await server.stop(None)


def test_json_log_lines_are_one_object_each_even_with_a_traceback() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("n7", "json", out)
        logging.getLogger("kvstore.test").info("hello %s", "world\nsecond line")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("kvstore.test").exception("it failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "node", "logger", "msg"}
    assert (first["node"], first["level"], first["logger"]) == ("n7", "INFO", "kvstore.test")
    assert first["msg"] == "hello world\nsecond line"
    assert second["msg"] == "it failed" and "ValueError: boom" in second["exc"]


async def test_driver_reports_to_its_metrics() -> None:
    """A real NodeDriver (single node, in memory) with metrics: its leadership, writes
    and proposals show up in a scrape."""
    store = MemoryNodeStore(shards=4, vnodes=16)
    metrics = NodeMetrics("n1")
    driver = NodeDriver("n1", ["n1"], store, lambda msgs: None, random.Random(1),
                        tick_seconds=0.001, election_ticks=2, metrics=metrics)
    registry = node_registry(metrics, NodeCollector(
        metrics, driver.status, store, watchers=lambda: len(driver.watch_hub.subs)))
    task = asyncio.create_task(driver.run())
    try:
        deadline = time.monotonic() + 10
        while driver.role != Role.LEADER:
            assert time.monotonic() < deadline, "no leader within 10 s"
            await asyncio.sleep(0.005)
        for i in range(3):
            result = await asyncio.wait_for(
                driver.propose(commands.encode_put(b"", i + 1, i + 1, b"k%d" % i, b"v")), 10)
            assert result.ok
        got = samples(generate_latest(registry).decode())
    finally:
        driver.stop()
        await task
    assert got[("kvstore_server_is_leader", ())] == 1
    assert got[("kvstore_server_leader_changes_seen_total", ())] == 1
    assert got[("kvstore_server_proposals_applied_total", ())] >= 3
    assert got[("kvstore_server_proposals_pending", ())] == 0
    assert got[("kvstore_server_proposals_failed_total", ())] == 0
    assert got[("kvstore_disk_wal_fsync_duration_seconds_count", ())] >= 3
    assert got[("kvstore_mvcc_current_revision", ())] >= 4
