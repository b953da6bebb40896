"""`kvstore alarm list|disarm` and the put refused under an alarm, against an in-process
fake node (a grpc server on 127.0.0.1, port 0), run as a user would run the CLI."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from cli_util import Run, assert_one_line_error

from kvstore.v1 import kv_pb2, kv_pb2_grpc


class FakeNode(kv_pb2_grpc.KVServicer):
    """A leader holding `alarms` (type, member); puts are refused while any is raised,
    with the status and wording of the real node."""

    def __init__(self) -> None:
        self.alarms: list[tuple[str, str]] = []
        self.requests: list[kv_pb2.AlarmRequest] = []
        self.lock = threading.Lock()

    def _response(self) -> kv_pb2.AlarmResponse:
        return kv_pb2.AlarmResponse(alarms=[kv_pb2.AlarmMember(type=t, member=m)
                                            for t, m in self.alarms])

    def Alarm(self, request: Any, context: Any) -> kv_pb2.AlarmResponse:  # noqa: N802
        with self.lock:
            self.requests.append(request)
            if request.action == kv_pb2.AlarmRequest.DEACTIVATE:
                self.alarms = [(t, m) for t, m in self.alarms
                               if (request.type and t != request.type)
                               or (request.member and m != request.member)]
            return self._response()

    def RegisterSession(self, request: Any, context: Any) -> Any:  # noqa: N802
        return kv_pb2.RegisterSessionResponse(client_id=b"s" + bytes(8))

    def Put(self, request: Any, context: Any) -> kv_pb2.PutResponse:  # noqa: N802
        with self.lock:
            types = {t for t, _ in self.alarms}
        if "NOSPACE" in types:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "etcdserver: mvcc: database space exceeded")
        if "CORRUPT" in types:
            context.abort(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
        return kv_pb2.PutResponse()


@pytest.fixture
def node() -> Iterator[tuple[FakeNode, str]]:
    fake = FakeNode()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    kv_pb2_grpc.add_KVServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(5)


def test_alarm_list_without_alarms(kvstore: Run, node: tuple[FakeNode, str]) -> None:
    _, address = node
    result = kvstore("alarm", "list", "--endpoints", address, "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no alarms\n"
    result = kvstore("alarm", "list", "--json", "--endpoints", address, "--timeout", "5")
    assert json.loads(result.stdout) == {"alarms": []}


def test_alarm_list_prints_type_and_member(kvstore: Run, node: tuple[FakeNode, str]) -> None:
    fake, address = node
    fake.alarms = [("NOSPACE", "n1"), ("CORRUPT", "n3")]
    result = kvstore("alarm", "list", "--endpoints", address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["NOSPACE n1", "CORRUPT n3"]
    result = kvstore("alarm", "list", "--json", "--endpoints", address)
    assert json.loads(result.stdout) == {"alarms": [{"type": "NOSPACE", "member": "n1"},
                                                    {"type": "CORRUPT", "member": "n3"}]}


def test_disarm_sends_type_and_member_and_prints_what_is_left(
    kvstore: Run, node: tuple[FakeNode, str]
) -> None:
    fake, address = node
    fake.alarms = [("NOSPACE", "n1"), ("CORRUPT", "n3")]
    result = kvstore("alarm", "disarm", "--type", "nospace", "--member", "n1",
                     "--endpoints", address)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "CORRUPT n3\n"
    last = fake.requests[-1]
    assert (last.action, last.type, last.member) == (kv_pb2.AlarmRequest.DEACTIVATE,
                                                     "NOSPACE", "n1")
    result = kvstore("alarm", "disarm", "--endpoints", address)
    assert result.returncode == 0 and result.stdout == "no alarms\n"
    assert (fake.requests[-1].type, fake.requests[-1].member) == ("", "")


def test_disarm_rejects_an_unknown_type(kvstore: Run, node: tuple[FakeNode, str]) -> None:
    _, address = node
    result = kvstore("alarm", "disarm", "--type", "FULL", "--endpoints", address)
    assert result.returncode == 2
    assert_one_line_error(result, "FULL")


def test_put_refused_under_nospace_is_one_line(kvstore: Run, node: tuple[FakeNode, str]) -> None:
    fake, address = node
    fake.alarms = [("NOSPACE", "n1")]
    result = kvstore("put", "k", "v", "--endpoints", address, "--timeout", "5")
    line = assert_one_line_error(result, "database space exceeded", "NOSPACE alarm raised",
                                 "kvstore alarm disarm")
    assert "may or may not have been applied" not in line


def test_put_refused_under_corrupt_is_one_line(kvstore: Run, node: tuple[FakeNode, str]) -> None:
    fake, address = node
    fake.alarms = [("CORRUPT", "n2")]
    result = kvstore("put", "k", "v", "--endpoints", address, "--timeout", "5")
    assert_one_line_error(result, "corrupt cluster", "CORRUPT alarm raised",
                          "kvstore cluster resync")
