"""etcd's grpc-gateway conventions: which URL is which gRPC method, and how messages and
errors look in JSON.

etcd's JSON API is grpc-gateway (v1) in front of its own gRPC server, marshalling with
``JSONPb{OrigName: true}``: the .proto's own field names ("create_revision", and the
camelCase ones etcd declared as such: "dbSize", "peerURLs", "grantedTTL"), bytes in
base64, 64-bit integers as strings, enums by name, default values left out. Requests
take either name of a field, integers as numbers or strings, enums by name or number,
and unknown fields are ignored (checked against etcd 3.4.23). google.protobuf's
json_format does all of that; this module only wraps it and etcd's error shapes, so
that the HTTP layer (gateway.py) has no JSON rules of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from kvstore.etcdapi.maintenance_service import VERSION
from kvstore.etcdapi.methods import CLUSTER, KV, LEASE, MAINTENANCE, SERVICES, WATCH

UNARY, KEEPALIVE, WATCH_STREAM = "unary", "keepalive", "watch"


@dataclass(frozen=True)
class Route:
    """One gateway URL: the gRPC method behind it and how it streams."""

    service: str
    method: str
    kind: str = UNARY

    @property
    def request_class(self) -> type[Message]:
        return SERVICES[self.service][self.method][0]


# etcd's gw/rpc.pb.gw.go paths, without the version prefix (see API_PREFIXES).
ROUTES: dict[str, Route] = {
    "/kv/range": Route(KV, "Range"),
    "/kv/put": Route(KV, "Put"),
    "/kv/deleterange": Route(KV, "DeleteRange"),
    "/kv/txn": Route(KV, "Txn"),
    "/kv/compaction": Route(KV, "Compact"),
    "/lease/grant": Route(LEASE, "LeaseGrant"),
    "/lease/revoke": Route(LEASE, "LeaseRevoke"),
    "/kv/lease/revoke": Route(LEASE, "LeaseRevoke"),
    "/lease/keepalive": Route(LEASE, "LeaseKeepAlive", KEEPALIVE),
    "/lease/timetolive": Route(LEASE, "LeaseTimeToLive"),
    "/kv/lease/timetolive": Route(LEASE, "LeaseTimeToLive"),
    "/lease/leases": Route(LEASE, "LeaseLeases"),
    "/kv/lease/leases": Route(LEASE, "LeaseLeases"),
    "/watch": Route(WATCH, "Watch", WATCH_STREAM),
    "/cluster/member/list": Route(CLUSTER, "MemberList"),
    "/cluster/member/add": Route(CLUSTER, "MemberAdd"),
    "/cluster/member/remove": Route(CLUSTER, "MemberRemove"),
    "/cluster/member/update": Route(CLUSTER, "MemberUpdate"),
    "/cluster/member/promote": Route(CLUSTER, "MemberPromote"),
    "/maintenance/transfer-leadership": Route(MAINTENANCE, "MoveLeader"),
    "/maintenance/status": Route(MAINTENANCE, "Status"),
    "/maintenance/alarm": Route(MAINTENANCE, "Alarm"),
    "/maintenance/defragment": Route(MAINTENANCE, "Defragment"),
    "/maintenance/hash": Route(MAINTENANCE, "Hash"),
    "/maintenance/hashkv": Route(MAINTENANCE, "HashKV"),
}

# etcd 3.4+ serves /v3/ and (deprecated) /v3beta/; clients that read an old version from
# /version (etcd3gw, Patroni) pick /v3alpha/ or /v3beta/, so all three are accepted.
API_PREFIXES = ("/v3", "/v3beta", "/v3alpha")


def route(path: str) -> Route | None:
    """The route of a request path (query string already removed), or None."""
    for prefix in API_PREFIXES:
        if path.startswith(prefix + "/"):
            return ROUTES.get(path[len(prefix):].rstrip("/") or "/")
    return None


def version_body() -> bytes:
    """GET /version: etcd answers its server version and the cluster's major.minor.0;
    clients parse both as plain integer dotted versions to choose the API prefix."""
    major, minor = VERSION.split(".")[:2]
    return _dumps({"etcdserver": VERSION, "etcdcluster": f"{major}.{minor}.0"})


class RequestError(Exception):
    """A request the gateway refuses before any gRPC call: code INVALID_ARGUMENT."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_requests(body: bytes, cls: type[Message], *, stream: bool) -> list[Message]:
    """The request message(s) of a body. A unary call takes one JSON object (an empty body
    is the empty request, as etcd's gateway reads io.EOF); a stream takes every JSON
    object the body holds, one after the other (grpc-gateway decodes the body as a
    sequence and sends each), so an empty stream body sends nothing."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"request body is not UTF-8: {err}") from None
    objects: list[Any] = []
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise RequestError(f"invalid JSON: {err}") from None
        objects.append(obj)
        if not stream:
            break
    if not stream:
        if pos != len(text.rstrip()):
            raise RequestError("invalid JSON: extra data after the request object")
        objects = objects or [{}]
    messages = []
    for obj in objects:
        if obj is None:
            obj = {}
        if not isinstance(obj, dict):
            raise RequestError(f"cannot unmarshal {type(obj).__name__} into "
                               f"{cls.DESCRIPTOR.full_name}")
        try:
            messages.append(json_format.ParseDict(_known_fields(obj, cls.DESCRIPTOR), cls()))
        except (json_format.ParseError, ValueError, TypeError) as err:
            raise RequestError(str(err)) from None
    return messages


def _known_fields(obj: Any, descriptor: Descriptor) -> Any:
    """``obj`` without the fields ``descriptor`` does not have, at every depth: etcd
    ignores unknown fields but refuses an unknown enum name, and json_format's
    ignore_unknown_fields would silently take the enum's default instead."""
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        fd = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if fd is None:
            continue
        if fd.message_type is not None and isinstance(value, list):
            value = [_known_fields(v, fd.message_type) for v in value]
        elif fd.message_type is not None:
            value = _known_fields(value, fd.message_type)
        out[key] = value
    return out


def message_dict(message: Message) -> dict[str, Any]:
    """A response as etcd's gateway marshals it (OrigName, defaults left out)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def message_body(message: Message) -> bytes:
    return _dumps(message_dict(message))


def stream_chunk(message: Message) -> bytes:
    """One message of a streamed answer: grpc-gateway writes {"result": ...} and a
    newline per message; clients (etcd3gw) parse each HTTP chunk as one object."""
    return _dumps({"result": message_dict(message)}) + b"\n"


# grpc-gateway v1.16's HTTPStatusFromCode (etcd 3.5). etcd 3.4 (grpc-gateway 1.9) answered
# FAILED_PRECONDITION with 412 and CANCELLED with 499; 3.5 answers both as below.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def code_number(code: grpc.StatusCode) -> int:
    return int(code.value[0])


def error_body(code: grpc.StatusCode, message: str) -> bytes:
    """A failed unary call, as etcd's gateway answers it (the key order is etcd's)."""
    return _dumps({"error": message, "message": message, "code": code_number(code)})


def stream_error_chunk(code: grpc.StatusCode, message: str) -> bytes:
    """A stream that fails after its 200 went out: grpc-gateway v1 writes one last
    object, {"error": {...}}, in place of a result."""
    status = HTTP_STATUS.get(code, 500)
    return _dumps({"error": {"grpc_code": code_number(code), "http_code": status,
                             "message": message, "http_status": reason(status)}}) + b"\n"


REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def reason(status: int) -> str:
    return REASONS.get(status, "Error")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
