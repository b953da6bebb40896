"""A drill client that speaks etcd's v3 API (Range, Put, DeleteRange, Txn) instead of
kvstore's own, with the KVClient methods the workload calls.

It behaves like an etcd client, not like kvstore's: no write ids, so a write is never
retried once sent (an error after sending leaves its outcome unknown, as it does with
etcd); reads are retried on the next endpoint until the deadline. Compare-and-swap is a
Txn: compare the value (or version 0 for "absent"), then put. Stale reads are serializable
Ranges; the header's revision stands in for the applied index in the stale-read checks
(per member it only grows, and one revision is one state everywhere).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc

from kvstore.client import KVError
from kvstore.etcdapi.methods import stub
from kvstore.etcdpb import rpc_pb2 as pb

KV = "etcdserverpb.KV"
# Statuses that say the request was refused before it could be applied.
_NOT_APPLIED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNIMPLEMENTED}


@dataclass(frozen=True)
class StaleResult:
    node: str
    value: bytes | None
    applied_index: int


class EtcdApiClient:
    """Same call shapes as KVClient for get/put/delete/cas/get_result."""

    def __init__(self, endpoints: list[str], *, timeout: float, attempt_timeout: float,
                 rng: random.Random | None = None) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._rng = rng or random.Random()
        self._at = self._rng.randrange(len(self.endpoints))
        self._channels = {ep: grpc.insecure_channel(ep) for ep in self.endpoints}
        self._stubs = {ep: stub(ch, KV) for ep, ch in self._channels.items()}

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def __enter__(self) -> EtcdApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------------

    def _read(self, req: pb.RangeRequest) -> pb.RangeResponse:
        deadline = time.monotonic() + self.timeout
        while True:
            ep = self.endpoints[self._at]
            left = deadline - time.monotonic()
            if left <= 0:
                raise KVError(f"range of {req.key!r}: no endpoint answered in time")
            try:
                return self._stubs[ep].Range(req, timeout=min(self.attempt_timeout, left))
            except grpc.RpcError as err:
                if err.code() in _NOT_APPLIED:
                    raise KVError(f"range refused: {err.details()}") from None
                self._at = (self._at + 1) % len(self.endpoints)

    def _write(self, method: str, req: object) -> object:
        """One attempt on the current endpoint; after a send, never retried."""
        ep = self.endpoints[self._at]
        try:
            return getattr(self._stubs[ep], method)(req, timeout=self.timeout)
        except grpc.RpcError as err:
            self._at = (self._at + 1) % len(self.endpoints)
            raise KVError(f"{method} failed at {ep}: {err.code().name} {err.details()}",
                          maybe_applied=err.code() not in _NOT_APPLIED) from None

    def get(self, key: str) -> bytes | None:
        resp = self._read(pb.RangeRequest(key=key.encode()))
        return resp.kvs[0].value if resp.kvs else None

    def get_result(self, key: str, stale: bool = True) -> StaleResult:
        resp = self._read(pb.RangeRequest(key=key.encode(), serializable=stale))
        return StaleResult(str(resp.header.member_id), resp.kvs[0].value if resp.kvs else None,
                           resp.header.revision)

    def put(self, key: str, value: str) -> None:
        self._write("Put", pb.PutRequest(key=key.encode(), value=value.encode()))

    def delete(self, key: str) -> bool:
        resp = self._write("DeleteRange", pb.DeleteRangeRequest(key=key.encode()))
        return resp.deleted > 0  # type: ignore[attr-defined]

    def cas(self, key: str, expected: str | None, value: str) -> bool:
        txn = pb.TxnRequest()
        if expected is None:
            txn.compare.add(key=key.encode(), target=pb.Compare.VERSION,
                            result=pb.Compare.EQUAL, version=0)
        else:
            txn.compare.add(key=key.encode(), target=pb.Compare.VALUE,
                            result=pb.Compare.EQUAL, value=expected.encode())
        txn.success.add().request_put.CopyFrom(pb.PutRequest(key=key.encode(),
                                                             value=value.encode()))
        resp = self._write("Txn", txn)
        return resp.succeeded  # type: ignore[attr-defined]
