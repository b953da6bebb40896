"""The peer port's receiving side, in process over loopback gRPC: who is admitted,
messages that speak for someone else, and InstallSnapshot's size limit and temp file."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from kvstore.raft.types import Message, MessageType
from kvstore.server.identity import PeerGate
from kvstore.server.peer_service import INCOMING_PREFIX, RaftPeerService, remove_incoming
from kvstore.server.wire import message_to_pb
from kvstore.v1 import raft_pb2, raft_pb2_grpc

pytestmark = pytest.mark.timeout(60)

LIMIT = 4096


class Node:
    """A RaftPeerService of node n1 (cluster c1, peers n2 and n3) on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.delivered: list[Message] = []
        self.snapshots: list[tuple[str, int, bytes]] = []
        self.gate = PeerGate("n1", "c1", frozenset({"n2", "n3"}), "127.0.0.1:7001")
        self.service = RaftPeerService(
            self.gate, self.delivered.append, None,
            lambda src, term, data: self.snapshots.append((src, term, data)),
            snapshot_dir=str(directory), max_snapshot_bytes=LIMIT)
        self.server = grpc.aio.server()
        raft_pb2_grpc.add_RaftPeerServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def incoming_files(self) -> list[str]:
        return [p.name for p in self.dir.iterdir() if p.name.startswith(INCOMING_PREFIX)]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path)
    await n.server.start()
    try:
        yield n
    finally:
        await n.server.stop(0)


def _md(node: str = "n2", cluster: str = "c1") -> tuple[tuple[str, str], ...]:
    return (("kvstore-cluster-id", cluster), ("kvstore-node-id", node))


def _heartbeat(src: str, term: int = 1) -> raft_pb2.Message:
    return message_to_pb(Message(MessageType.HEARTBEAT, src=src, dst="n1", term=term))


async def _stream(address: str, md: tuple[tuple[str, str], ...],
                  *batches: list[raft_pb2.Message]) -> None:
    async def gen() -> AsyncIterator[raft_pb2.MessageBatch]:
        for messages in batches:
            yield raft_pb2.MessageBatch(messages=messages)

    async with grpc.aio.insecure_channel(address) as channel:
        await raft_pb2_grpc.RaftPeerStub(channel).Stream(gen(), metadata=md, timeout=10)


async def _snapshot(address: str, md: tuple[tuple[str, str], ...], chunks: list[bytes],
                    src: str = "n2", term: int = 3) -> None:
    async def gen() -> AsyncIterator[raft_pb2.SnapshotChunk]:
        for data in chunks:
            yield raft_pb2.SnapshotChunk(term=term, data=data, **{"from": src})

    async with grpc.aio.insecure_channel(address) as channel:
        await raft_pb2_grpc.RaftPeerStub(channel).InstallSnapshot(gen(), metadata=md, timeout=10)


async def test_a_member_stream_is_delivered(node: Node) -> None:
    await _stream(node.address, _md(), [_heartbeat("n2")], [_heartbeat("n2", 2)])
    assert [(m.src, m.term) for m in node.delivered] == [("n2", 1), ("n2", 2)]


@pytest.mark.parametrize(
    ("md", "code"),
    [
        (_md(cluster="other"), grpc.StatusCode.FAILED_PRECONDITION),
        ((), grpc.StatusCode.FAILED_PRECONDITION),
        (_md(node="intruder"), grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["other-cluster", "no-identity", "unknown-sender"],
)
async def test_streams_from_outside_the_cluster_are_refused(
    node: Node, md: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _stream(node.address, md, [_heartbeat("n2")])
    assert info.value.code() == code
    assert node.delivered == []


async def test_a_member_cannot_speak_for_another(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        await _stream(node.address, _md("n2"), [_heartbeat("n3"), _heartbeat("n2")])
    assert [m.src for m in node.delivered] == ["n2"]
    assert "claims to be from 'n3'" in caplog.text


async def test_a_malformed_message_is_dropped_and_the_stream_goes_on(node: Node) -> None:
    bad = _heartbeat("n2")
    bad.type = 99  # no such message type
    await _stream(node.address, _md(), [bad, _heartbeat("n2", 5)])
    assert [m.term for m in node.delivered] == [5]


async def test_a_snapshot_goes_through_a_temp_file_to_the_driver(node: Node) -> None:
    await _snapshot(node.address, _md(), [b"a" * 1000, b"b" * 1000])
    assert node.snapshots == [("n2", 3, b"a" * 1000 + b"b" * 1000)]
    assert node.incoming_files() == []


async def test_a_snapshot_over_the_limit_is_refused_and_its_file_removed(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as info:
        await _snapshot(node.address, _md(), [b"x" * 1024] * 5)  # 5 KiB > 4 KiB
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-snapshot-bytes" in (info.value.details() or "")
    assert node.snapshots == []
    assert node.incoming_files() == []
    assert "larger than --max-snapshot-bytes 4096" in caplog.text


@pytest.mark.parametrize(
    ("md", "src", "code"),
    [
        (_md(cluster="other"), "n2", grpc.StatusCode.FAILED_PRECONDITION),
        (_md(node="intruder"), "intruder", grpc.StatusCode.PERMISSION_DENIED),
        (_md(node="n2"), "n3", grpc.StatusCode.INVALID_ARGUMENT),  # chunks claim another
    ],
    ids=["other-cluster", "unknown-sender", "chunk-from-another"],
)
async def test_snapshots_from_outside_the_cluster_are_refused(
    node: Node, md: tuple[tuple[str, str], ...], src: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _snapshot(node.address, md, [b"x" * 100], src=src)
    assert info.value.code() == code
    assert node.snapshots == []
    assert node.incoming_files() == []


def test_leftover_incoming_files_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / f"{INCOMING_PREFIX}abc.tmp").write_bytes(b"partial")
    (tmp_path / "data.mdb").write_bytes(b"keep")
    assert remove_incoming(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == ["data.mdb"]


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)
