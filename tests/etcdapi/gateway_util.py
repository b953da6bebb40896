"""HTTP helpers of the JSON gateway tests: one call, a sequence of calls compared between
a real etcd and kvstore (masked as etcdctl_util.mask masks), and a watch read with a
deadline. Plain http.client, so that what is tested is what an HTTP-only client sees."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

from tests.etcdapi.etcdctl_util import MASK, mask, wait_until

TIMEOUT = 15.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def call(address: str, path: str, body: Any = None, method: str = "POST"
         ) -> tuple[int, Any]:
    """(status, answer): JSON parsed; a chunked stream as the list of its objects."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        data = None if body is None else body if isinstance(body, str) else json.dumps(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read().decode()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            if resp.getheader("Transfer-Encoding") == "chunked" and raw.endswith("\n"):
                return resp.status, [json.loads(line) for line in raw.splitlines()]
            return resp.status, json.loads(raw)
        return resp.status, raw
    finally:
        conn.close()


@dataclass(frozen=True)
class Step:
    name: str
    path: str
    body: Any = None
    masked: tuple[str, ...] = ()   # extra fields whose values differ (a TTL counting down)
    shape_only: bool = False       # compare only which fields the answer has


FOO, FOP = b64("foo"), b64("fop")
SEQUENCE = [
    Step("put", "/v3/kv/put", {"key": FOO, "value": b64("bar")}),
    Step("put prev_kv", "/v3/kv/put", {"key": FOO, "value": b64("bar2"), "prev_kv": True}),
    Step("put foo/a", "/v3/kv/put", {"key": b64("foo/a"), "value": b64("a")}),
    Step("put foo/b", "/v3/kv/put", {"key": b64("foo/b"), "value": b64("b")}),
    Step("range prefix", "/v3/kv/range", {"key": FOO, "range_end": FOP}),
    Step("range count_only", "/v3/kv/range", {"key": FOO, "range_end": FOP, "count_only": True}),
    Step("range keys_only, desc, limit", "/v3/kv/range",
         {"key": FOO, "range_end": FOP, "keys_only": True, "limit": "1",
          "sort_order": "DESCEND", "sort_target": "KEY"}),
    Step("range at revision 2 (numbers)", "/v3/kv/range", {"key": FOO, "revision": 2}),
    Step("range missing", "/v3/kv/range", {"key": b64("nope")}),
    Step("deleterange prev_kv", "/v3/kv/deleterange", {"key": b64("foo/a"), "prev_kv": True}),
    Step("deleterange nothing", "/v3/kv/deleterange", {"key": b64("nope")}),
    Step("txn succeeds", "/v3/kv/txn", {
        "compare": [{"target": "VERSION", "key": FOO, "version": "2", "result": "EQUAL"}],
        "success": [{"request_put": {"key": b64("foo/c"), "value": b64("c")}},
                    {"request_range": {"key": FOO, "range_end": FOP}}],
        "failure": [{"request_delete_range": {"key": FOO}}]}),
    Step("txn fails", "/v3/kv/txn", {
        "compare": [{"target": "VALUE", "key": FOO, "value": b64("x"), "result": "EQUAL"}],
        "success": [{"request_delete_range": {"key": FOO}}],
        "failure": [{"request_delete_range": {"key": b64("foo/c"), "prev_kv": True}},
                    {"request_range": {"key": b64("foo/c")}}]}),
    Step("range future revision", "/v3/kv/range", {"key": FOO, "revision": "1000"}),
    Step("range without a key", "/v3/kv/range", {}),
    Step("compaction", "/v3/kv/compaction", {"revision": "3"}),
    Step("range compacted revision", "/v3/kv/range", {"key": FOO, "revision": 2}),
    Step("lease grant", "/v3/lease/grant", {"ID": 1234, "TTL": 600}),
    Step("lease grant again", "/v3/lease/grant", {"ID": "1234", "TTL": "600"}),
    Step("put with lease", "/v3/kv/put", {"key": b64("lk"), "value": b64("l"), "lease": "1234"}),
    Step("keepalive", "/v3/lease/keepalive", {"ID": "1234"}),
    Step("timetolive keys", "/v3/lease/timetolive", {"ID": 1234, "keys": True}, ("TTL",)),
    Step("timetolive (kv alias)", "/v3/kv/lease/timetolive", {"ID": 1234}, ("TTL",)),
    Step("leases", "/v3/lease/leases", {}),
    Step("leases (kv alias)", "/v3/kv/lease/leases", {}),
    Step("revoke", "/v3/lease/revoke", {"ID": 1234}),
    Step("revoke again (kv alias)", "/v3/kv/lease/revoke", {"ID": 1234}),
    Step("keepalive revoked", "/v3/lease/keepalive", {"ID": 1234}),
    Step("timetolive revoked", "/v3/lease/timetolive", {"ID": 1234}),
    Step("put with revoked lease", "/v3/kv/put",
         {"key": b64("lk"), "value": b64("l"), "lease": "1234"}),
    Step("range after revoke", "/v3/kv/range", {"key": b64("lk")}),
    Step("bad JSON", "/v3/kv/range", "{not json", ("error", "message")),
    Step("bad enum", "/v3/kv/range", {"key": FOO, "sort_order": "SIDEWAYS"},
         ("error", "message")),
    Step("unknown path", "/v3/kv/nothing", {}),
    Step("status", "/v3/maintenance/status", {}, shape_only=True),
    Step("member list", "/v3/cluster/member/list", {}, shape_only=True),
]


def _masked(value: Any, extra: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: MASK if k in extra else _masked(v, extra) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, extra) for v in value]
    return value


def _shape(value: Any) -> Any:
    """Which fields an answer has (and its members have), not their values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return sorted({json.dumps(_shape(v), sort_keys=True) for v in value})
    return MASK


def run_sequence(addresses: list[str], steps: list[Step] = SEQUENCE) -> list[dict[str, Any]]:
    """Each step against the next address in turn; answers masked.

    etcd 3.4's gateway (grpc-gateway 1.9) answers FAILED_PRECONDITION with 412, the 3.5
    one (grpc-gateway 1.16) with 400, as kvstore does: 412 is recorded as 400."""
    results = []
    for i, step in enumerate(steps):
        status, answer = call(addresses[i % len(addresses)], step.path, step.body)
        answer = _masked(mask(answer), step.masked)
        if step.shape_only:
            answer = _shape(answer)
        results.append({"step": step.name, "status": 400 if status == 412 else status,
                        "answer": answer})
    return results


class Watch:
    """A POST /v3/watch left open: a thread reads its lines (one JSON object each) until
    the connection is closed by ``close`` (also on a failure: use as a context manager)."""

    def __init__(self, address: str, request: dict[str, Any]) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        self.conn.request("POST", "/v3/watch", body=json.dumps(request))
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self._sock = self.conn.sock
        if self._sock is not None:
            self._sock.settimeout(None)  # a watch may be quiet for long; close() ends it
        self.objects: list[Any] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while line := self.resp.readline():
                with self._lock:
                    self.objects.append(json.loads(line))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed by close() (http.client may trip over its own closed file)

    def events(self) -> list[Any]:
        with self._lock:
            return [e for o in self.objects for e in o.get("result", {}).get("events", [])]

    def wait_events(self, count: int, timeout: float = 30.0) -> list[Any]:
        def enough() -> list[Any] | None:
            events = self.events()
            return events if len(events) >= count else None

        return wait_until(enough, timeout, f"{count} watch events")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # wakes the reading thread
                self._sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self._thread.join(TIMEOUT)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
