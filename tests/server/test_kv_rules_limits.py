"""Client input limits in KVRules.prepare: a write id the cluster would store in every log entry
and session record is bounded, and one that contradicts itself is refused up front with
INVALID_ARGUMENT (definitely not applied) instead of being proposed."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from kvstore.server.kv_rules import MAX_CLIENT_ID_BYTES, KVRules, RequestError
from kvstore.state import commands
from kvstore.v1 import kv_pb2

SESSION_ID = b"s" + (7).to_bytes(8, "big")


def _rules() -> KVRules:
    return KVRules("n1", max_key_bytes=4096, max_value_bytes=1 << 20, address_of=lambda _: "")


def _requests(client_id: bytes, seq: int, low: int) -> list[tuple[str, Any]]:
    wid = kv_pb2.WriteId(client_id=client_id, seq=seq, lowest_pending_seq=low)
    return [
        ("Put", kv_pb2.PutRequest(key=b"k", value=b"v", write_id=wid)),
        ("Delete", kv_pb2.DeleteRequest(key=b"k", write_id=wid)),
        ("CompareAndSwap", kv_pb2.CompareAndSwapRequest(key=b"k", expect_absent=True,
                                                        value=b"v", write_id=wid)),
    ]


@pytest.mark.parametrize("size", [MAX_CLIENT_ID_BYTES + 1, 4096])
def test_an_oversized_client_id_is_refused(size: int) -> None:
    for method, req in _requests(b"x" * size, 1, 1):
        with pytest.raises(RequestError) as info:
            _rules().prepare(method, req)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_CLIENT_ID_BYTES} bytes, got {size}" in info.value.message


def test_lowest_pending_seq_beyond_seq_is_refused() -> None:
    for method, req in _requests(SESSION_ID, 5, 6):
        with pytest.raises(RequestError) as info:
            _rules().prepare(method, req)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "lowest_pending_seq (6) must not exceed write_id.seq (5)" in info.value.message


@pytest.mark.parametrize("client_id, seq, low", [
    (SESSION_ID, 5, 5),
    (SESSION_ID, 5, 1),
    (SESSION_ID, 5, 0),
    (b"c" * MAX_CLIENT_ID_BYTES, 2**64 - 1, 2**64 - 1),
])
def test_valid_write_ids_pass_unchanged(client_id: bytes, seq: int, low: int) -> None:
    for method, req in _requests(client_id, seq, low):
        op = _rules().prepare(method, req)
        assert op.write is not None
        cmd = commands.decode(op.write)
        assert (cmd.client_id, cmd.seq, cmd.lowest_pending_seq) == (client_id, seq, low)


def test_a_write_without_a_client_id_ignores_the_other_fields() -> None:
    """No session, no de-duplication: seq and lowest_pending_seq mean nothing then."""
    for method, req in _requests(b"", 1, 9):
        op = _rules().prepare(method, req)
        assert op.write is not None
        assert commands.decode(op.write).client_id == b""
