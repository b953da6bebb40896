"""The floor: a kvstore KV gRPC service that answers at once and does nothing.

`python -m bench.floor --listen 127.0.0.1:PORT` runs it. Why: a kvstore put costs the
client library, gRPC on both sides, the Python server's event loop, Raft, the network
round trips to the followers, and fsync. This server keeps the first three and removes
the rest (same grpc.aio server and options as a kvstore node, same client), so the
difference between it and kvstore is what replication and storage cost; nothing
written in Python on this transport can be faster than it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import grpc.aio

from bench.drivers import TargetSpec
from bench.localcluster import free_base_port
from bench.procs import log_tail, start_process, stop_processes
from bench.sysinfo import REPO_ROOT
from kvstore.client import KVClient, KVError
from kvstore.client.membership import MEMBER_LIST_PATH
from kvstore.etcdpb import rpc_pb2 as etcd_pb
from kvstore.v1 import kv_pb2, kv_pb2_grpc

try:  # the options of a kvstore node's gRPC server, so that the floor's transport is the same
    from kvstore.server.transport import GRPC_OPTIONS as SERVER_OPTIONS
except ImportError:  # the server was reorganized: its values when this file was written
    SERVER_OPTIONS = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.keepalive_time_ms", 10_000),
    ]

NODE_ID = "floor"
# The one session every client of the floor gets (a kvstore write names its session).
SESSION_ID = b"floor-session"
# Reads return a value of the suite's default size so that they carry the same payload.
READ_VALUE = b"v" * 16


class FloorKV(kv_pb2_grpc.KVServicer):
    """Every RPC succeeds immediately with a constant answer; nothing is stored."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.header = kv_pb2.ResponseHeader(node_id=NODE_ID, leader_id=NODE_ID, term=1)

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext
                  ) -> kv_pb2.PutResponse:
        return kv_pb2.PutResponse(header=self.header)

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext
                  ) -> kv_pb2.GetResponse:
        return kv_pb2.GetResponse(header=self.header, found=True, value=READ_VALUE)

    async def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext
                     ) -> kv_pb2.DeleteResponse:
        return kv_pb2.DeleteResponse(header=self.header, existed=True)

    async def CompareAndSwap(self, request: kv_pb2.CompareAndSwapRequest,
                             context: grpc.aio.ServicerContext
                             ) -> kv_pb2.CompareAndSwapResponse:
        return kv_pb2.CompareAndSwapResponse(header=self.header, succeeded=True)

    async def RegisterSession(self, request: kv_pb2.RegisterSessionRequest,
                              context: grpc.aio.ServicerContext
                              ) -> kv_pb2.RegisterSessionResponse:
        """The client opens a session before its first write (kvstore's write ids)."""
        return kv_pb2.RegisterSessionResponse(header=self.header, client_id=SESSION_ID)

    async def Alarm(self, request: kv_pb2.AlarmRequest, context: grpc.aio.ServicerContext
                    ) -> kv_pb2.AlarmResponse:
        return kv_pb2.AlarmResponse(header=self.header)

    async def Range(self, request: kv_pb2.RangeRequest, context: grpc.aio.ServicerContext
                    ) -> kv_pb2.RangeResponse:
        return kv_pb2.RangeResponse(header=self.header)

    async def Txn(self, request: kv_pb2.TxnRequest, context: grpc.aio.ServicerContext
                  ) -> kv_pb2.TxnResponse:
        return kv_pb2.TxnResponse(header=self.header,
                                  result=etcd_pb.TxnResponse(succeeded=True))

    async def Compact(self, request: kv_pb2.CompactRequest, context: grpc.aio.ServicerContext
                      ) -> kv_pb2.CompactResponse:
        return kv_pb2.CompactResponse(header=self.header)

    def batch_result(self, op: kv_pb2.Op) -> kv_pb2.OpResult:
        """The answer to one operation of a Batch: the unary call's answer."""
        kind = op.WhichOneof("op")
        if kind == "get":
            return kv_pb2.OpResult(get=kv_pb2.GetResponse(
                header=self.header, found=True, value=READ_VALUE))
        if kind == "put":
            return kv_pb2.OpResult(put=kv_pb2.PutResponse(header=self.header))
        if kind == "delete":
            return kv_pb2.OpResult(delete=kv_pb2.DeleteResponse(header=self.header,
                                                                existed=True))
        if kind == "cas":
            return kv_pb2.OpResult(cas=kv_pb2.CompareAndSwapResponse(header=self.header,
                                                                     succeeded=True))
        if kind == "range":
            return kv_pb2.OpResult(range=kv_pb2.RangeResponse(header=self.header))
        if kind == "txn":
            return kv_pb2.OpResult(txn=kv_pb2.TxnResponse(
                header=self.header, result=etcd_pb.TxnResponse(succeeded=True)))
        return kv_pb2.OpResult(code=grpc.StatusCode.UNIMPLEMENTED.value[0],
                               message=f"the floor does not know batch operation {kind!r}")

    async def Batch(self, request: kv_pb2.BatchRequest, context: grpc.aio.ServicerContext
                    ) -> kv_pb2.BatchResponse:
        """The same answers, many per call, as the coalescing AsyncKVClient sends them."""
        return kv_pb2.BatchResponse(results=[self.batch_result(op) for op in request.ops])

    async def Status(self, request: kv_pb2.StatusRequest, context: grpc.aio.ServicerContext
                     ) -> kv_pb2.StatusResponse:
        return kv_pb2.StatusResponse(id=NODE_ID, address=self.address, role="leader", term=1,
                                     leader_id=NODE_ID, leader_address=self.address)


def member_list_handler(address: str) -> grpc.GenericRpcHandler:
    """etcd's Cluster.MemberList, which kvstore's clients ask to follow membership changes
    (after trouble, and every 30 s): the floor is the one voter, at its own address."""
    member = etcd_pb.Member(ID=1, name=NODE_ID, peerURLs=[f"http://{address}"],
                            clientURLs=[f"http://{address}"])

    async def member_list(request: etcd_pb.MemberListRequest,
                          context: grpc.aio.ServicerContext) -> etcd_pb.MemberListResponse:
        return etcd_pb.MemberListResponse(members=[member])

    service, method = MEMBER_LIST_PATH.strip("/").split("/")
    return grpc.method_handlers_generic_handler(service, {
        method: grpc.unary_unary_rpc_method_handler(
            member_list, request_deserializer=etcd_pb.MemberListRequest.FromString,
            response_serializer=etcd_pb.MemberListResponse.SerializeToString)})


def add_floor_services(server: grpc.aio.Server, address: str) -> None:
    """The floor's services on a grpc.aio server (also used by the unit tests)."""
    kv_pb2_grpc.add_KVServicer_to_server(FloorKV(address), server)
    server.add_generic_rpc_handlers((member_list_handler(address),))


async def serve(listen: str) -> None:
    """Serve until SIGTERM/SIGINT, the way a kvstore node does (grpc.aio, same options)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_floor_services(server, listen)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.2)


@contextmanager
def floor_server(root: Path | None = None, start_timeout: float = 20.0) -> Iterator[TargetSpec]:
    """Run the floor server in its own process (like a node), yield, always stop it."""
    directory = Path(tempfile.mkdtemp(prefix="floor-", dir=root))
    address = f"127.0.0.1:{free_base_port(1)}"
    log = directory / "floor.log"
    proc = start_process([sys.executable, "-m", "bench.floor", "--listen", address], log,
                         cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + start_timeout
        with KVClient([address], timeout=1.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"floor server exited with {proc.returncode}: "
                                       f"{log_tail(log)}")
                try:
                    client.put(b"ping", b"x")
                    break
                except KVError as exc:
                    if time.monotonic() > deadline:
                        # The last error says why (e.g. an RPC the floor lacks).
                        raise RuntimeError(f"floor server did not answer: {exc}") from None
        yield TargetSpec(name="floor", kind="floor", nodes=1, leader=address,
                         endpoints=(address,), followers=(address,), pids=(proc.pid,),
                         info={"server": "grpc.aio no-op KV service"})
    finally:
        stop_processes([proc])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT, e.g. 127.0.0.1:7999")
    asyncio.run(serve(ap.parse_args().listen))


if __name__ == "__main__":
    main()
