"""The Alarm RPC's rules (KVRules.prepare / alarm_response): GET is a read that proposes
nothing; DEACTIVATE becomes one AlarmOp entry per type asked for; bad input is refused up
front with INVALID_ARGUMENT, before anything reaches the log."""

from __future__ import annotations

import grpc
import pytest

from kvstore.server.kv_rules import KVRules, RequestError
from kvstore.state import commands
from kvstore.state.alarms import CORRUPT, NOSPACE, Alarm
from kvstore.v1 import kv_pb2, raft_pb2

R = kv_pb2.AlarmRequest


def _rules() -> KVRules:
    return KVRules("n1", max_key_bytes=4096, max_value_bytes=1 << 20, address_of=lambda _: "")


def _decoded(entries: tuple[bytes, ...]) -> list[tuple[int, int, str]]:
    ops = []
    for data in entries:
        cmd = raft_pb2.Command.FromString(data)
        ops.append((cmd.alarm.action, cmd.alarm.type, cmd.alarm.member))
    return ops


def test_get_proposes_nothing() -> None:
    op = _rules().prepare("Alarm", R(action=R.GET))
    assert op.method == "Alarm" and op.write is None and op.disarm == ()


def test_deactivate_of_one_type_and_member_is_one_entry() -> None:
    op = _rules().prepare("Alarm", R(action=R.DEACTIVATE, type="nospace", member="n2"))
    assert op.write is None  # not a write: alarm refusals must not apply to a disarm
    assert op.disarm == (commands.encode_alarm(False, NOSPACE, "n2"),)


def test_deactivate_of_every_type_clears_each_for_every_member() -> None:
    op = _rules().prepare("Alarm", R(action=R.DEACTIVATE))
    off = raft_pb2.AlarmOp.DEACTIVATE
    assert _decoded(op.disarm) == [(off, NOSPACE, ""), (off, CORRUPT, "")]


@pytest.mark.parametrize(("request_", "needle"), [
    (R(action=R.DEACTIVATE, type="FULL"), "unknown alarm type"),
    (R(action=R.DEACTIVATE, member="n" * 256), "at most 255 bytes"),
    (R(action=7), "unknown alarm action"),  # type: ignore[arg-type]
])
def test_bad_requests_are_refused_up_front(request_: kv_pb2.AlarmRequest, needle: str) -> None:
    with pytest.raises(RequestError) as info:
        _rules().prepare("Alarm", request_)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.message


def test_response_names_type_and_member() -> None:
    header = KVRules.header("n1", 5, "n1", 2)
    response = KVRules.alarm_response([Alarm(NOSPACE, "n1"), Alarm(CORRUPT, "n3")], header)
    assert [(a.type, a.member) for a in response.alarms] == [("NOSPACE", "n1"), ("CORRUPT", "n3")]
    assert response.header.applied_index == 5
