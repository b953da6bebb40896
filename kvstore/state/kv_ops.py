"""etcd's Range, Put, DeleteRange and Txn semantics over the multi-version key space.

A Put or DeleteRange travels in the log as a Txn with no compares (see commands.py), so
`apply_txn` is the one write path of both APIs, and `range_` the one read path. The rules
follow etcd's v3 applier:

* A Txn's compares, including those of nested Txns on the branch taken, are all evaluated
  against the state before the Txn; then its operations run in order, each seeing the
  writes before it. The whole Txn takes one revision (only if it changed something), its
  changes sub-revisions 0, 1, 2 ... A delete of nothing changes nothing.
* Before anything is written, the operations that will run are checked against the state
  (ignore_value / ignore_lease on a missing key, a lease, a range at a compacted or future
  revision): one failure refuses the whole Txn and nothing changes.
* Range: count is the number of keys in the range at that revision; the min/max filters
  and sorting apply before `limit`; `more` says the limit cut something.
"""

from __future__ import annotations

from kvstore.etcdpb import kv_pb2, rpc_pb2
from kvstore.state import leases
from kvstore.state.mvcc import (
    ERR_KEY_NOT_FOUND,
    ERR_LEASE_NOT_FOUND,
    KeySpace,
    MvccError,
    Record,
    Revisions,
    Txn,
)

RangeRequest = rpc_pb2.RangeRequest
Compare = rpc_pb2.Compare

_SORT_FIELD = {
    RangeRequest.KEY: lambda kv: kv.key,
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
}


def range_(space: KeySpace, txn: Txn, revs: Revisions,
           req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
    """Answer a RangeRequest (without header); raises MvccError."""
    at = revs.check_read(req.revision)
    kvs: list[kv_pb2.KeyValue] = []
    for rec in space.records(txn, req.key, req.range_end):
        kv = space.at(txn, rec, at, revs.current)
        if kv is not None:
            kvs.append(kv)
    count = len(kvs)
    kvs = [kv for kv in kvs if _passes_filters(kv, req)]
    order = req.sort_order
    if order == RangeRequest.NONE and req.sort_target != RangeRequest.KEY:
        order = RangeRequest.ASCEND  # etcd: a sort target without an order sorts ascending
    if order == RangeRequest.DESCEND and req.sort_target == RangeRequest.KEY:
        kvs.reverse()
    elif order != RangeRequest.NONE and req.sort_target != RangeRequest.KEY:
        kvs.sort(key=_SORT_FIELD[req.sort_target], reverse=order == RangeRequest.DESCEND)
    more = False
    if req.limit > 0 and len(kvs) > req.limit:
        kvs = kvs[:req.limit]
        more = True
    resp = rpc_pb2.RangeResponse(more=more, count=count)
    if not req.count_only:
        if req.keys_only:
            for kv in kvs:
                kv.value = b""
        resp.kvs.extend(kvs)
    return resp


def _passes_filters(kv: kv_pb2.KeyValue, req: rpc_pb2.RangeRequest) -> bool:
    if req.min_mod_revision and kv.mod_revision < req.min_mod_revision:
        return False
    if req.max_mod_revision and kv.mod_revision > req.max_mod_revision:
        return False
    if req.min_create_revision and kv.create_revision < req.min_create_revision:
        return False
    return not (req.max_create_revision and kv.create_revision > req.max_create_revision)


# -- compares ------------------------------------------------------------------------------


def _compare_one(kv: kv_pb2.KeyValue | None, cmp: rpc_pb2.Compare) -> bool:
    """etcd's compare of one key: a missing key has version, create and mod revision 0 and
    lease 0; a value compare on a missing key is false."""
    target = cmp.target
    if target == Compare.VALUE:
        if kv is None:
            return False
        have: bytes | int = kv.value
        want: bytes | int = cmp.value
    else:
        field = {Compare.VERSION: ("version", "version"),
                 Compare.CREATE: ("create_revision", "create_revision"),
                 Compare.MOD: ("mod_revision", "mod_revision"),
                 Compare.LEASE: ("lease", "lease")}.get(target)
        if field is None:
            return False
        have = 0 if kv is None else getattr(kv, field[0])
        want = getattr(cmp, field[1])
    result = cmp.result
    if result == Compare.EQUAL:
        return have == want
    if result == Compare.NOT_EQUAL:
        return have != want
    if result == Compare.GREATER:
        return have > want  # type: ignore[operator]
    if result == Compare.LESS:
        return have < want  # type: ignore[operator]
    return False


def _compare(space: KeySpace, txn: Txn, cmp: rpc_pb2.Compare) -> bool:
    """A compare over a key, or over every key of a range (true iff it holds for all of
    them; etcd: an empty range compares like one missing key)."""
    if not cmp.range_end:
        rec = space.current(txn, cmp.key)
        return _compare_one(None if rec is None else rec.kv(), cmp)
    kvs = [r.kv() for r in space.records(txn, cmp.key, cmp.range_end) if r.alive]
    if not kvs:
        return _compare_one(None, cmp)
    return all(_compare_one(kv, cmp) for kv in kvs)


def txn_path(space: KeySpace, txn: Txn, req: rpc_pb2.TxnRequest) -> list[bool]:
    """The branch each Txn takes, outer first then nested ones on the taken branch in
    order, all evaluated against the state before any of them writes."""
    ok = all(_compare(space, txn, c) for c in req.compare)
    path = [ok]
    for op in (req.success if ok else req.failure):
        if op.WhichOneof("request") == "request_txn":
            path.extend(txn_path(space, txn, op.request_txn))
    return path


def _check_ops(space: KeySpace, txn: Txn, revs: Revisions, req: rpc_pb2.TxnRequest,
               path: list[bool], at: int) -> int:
    """Check the operations that will run before anything is written; raises MvccError.
    Returns the next position in `path`."""
    ok = path[at]
    at += 1
    for op in (req.success if ok else req.failure):
        kind = op.WhichOneof("request")
        if kind == "request_range":
            revs.check_read(op.request_range.revision)
        elif kind == "request_put":
            put = op.request_put
            if put.lease and not leases.exists(txn, put.lease):
                raise MvccError(ERR_LEASE_NOT_FOUND)
            if (put.ignore_value or put.ignore_lease) and space.current(txn, put.key) is None:
                raise MvccError(ERR_KEY_NOT_FOUND)
        elif kind == "request_txn":
            at = _check_ops(space, txn, revs, op.request_txn, path, at)
    return at


class _Writer:
    """Applies one Txn's operations: the revision they share and the next sub-revision."""

    def __init__(self, space: KeySpace, txn: Txn, revs: Revisions) -> None:
        self.space = space
        self.txn = txn
        self.revs = revs
        self.rev = revs.current + 1
        self.sub = 0

    def put(self, req: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
        prev = self.space.record(self.txn, req.key)
        alive = prev if prev is not None and prev.alive else None
        value = alive.value if req.ignore_value and alive is not None else req.value
        lease = alive.lease if req.ignore_lease and alive is not None else req.lease
        if alive is not None and alive.lease and alive.lease != lease:
            leases.detach(self.txn, alive.lease, req.key)
        if lease:
            leases.attach(self.txn, lease, req.key)
        self.space.put(self.txn, req.key, value, lease, self.rev, self.sub, prev)
        self.sub += 1
        resp = rpc_pb2.PutResponse()
        if req.prev_kv and alive is not None:
            resp.prev_kv.CopyFrom(alive.kv())
        return resp

    def delete_range(self, req: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
        victims = [r for r in self.space.records(self.txn, req.key, req.range_end) if r.alive]
        resp = rpc_pb2.DeleteRangeResponse(deleted=len(victims))
        for rec in victims:
            if req.prev_kv:
                resp.prev_kvs.append(rec.kv())
            self.delete(rec)
        return resp

    def delete(self, rec: Record) -> None:
        """Delete one alive key (detaching it from its lease)."""
        if rec.lease:
            leases.detach(self.txn, rec.lease, rec.key)
        self.space.delete(self.txn, rec, self.rev, self.sub)
        self.sub += 1

    def revision(self) -> int:
        """The store revision as this Txn's operations see it so far."""
        return self.rev if self.sub else self.revs.current

    def run(self, req: rpc_pb2.TxnRequest, path: list[bool], at: int
            ) -> tuple[rpc_pb2.TxnResponse, int]:
        ok = path[at]
        at += 1
        resp = rpc_pb2.TxnResponse(succeeded=ok)
        for op in (req.success if ok else req.failure):
            out = resp.responses.add()
            kind = op.WhichOneof("request")
            if kind == "request_range":
                r = range_(self.space, self.txn, self.revs.as_of(self.revision()),
                           op.request_range)
                out.response_range.CopyFrom(r)
                out.response_range.header.revision = self.revision()
            elif kind == "request_put":
                out.response_put.CopyFrom(self.put(op.request_put))
                out.response_put.header.revision = self.rev
            elif kind == "request_delete_range":
                out.response_delete_range.CopyFrom(self.delete_range(op.request_delete_range))
                out.response_delete_range.header.revision = self.revision()
            elif kind == "request_txn":
                nested, at = self.run(op.request_txn, path, at)
                out.response_txn.CopyFrom(nested)
                out.response_txn.header.revision = self.revision()
        return resp, at


def apply_txn(space: KeySpace, txn: Txn, revs: Revisions,
              req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
    """Apply a Txn (a Put or DeleteRange is a Txn of one operation). Raises MvccError
    before writing anything when an operation on the taken branch is refused."""
    path = txn_path(space, txn, req)
    _check_ops(space, txn, revs, req, path, 0)
    writer = _Writer(space, txn, revs)
    resp, _ = writer.run(req, path, 0)
    if writer.sub:
        revs.current = writer.rev
        revs.dirty = True
    return resp


def revoke_lease(space: KeySpace, txn: Txn, revs: Revisions, lease_id: int) -> int:
    """Revoke a lease: delete its keys in one revision and forget it. Returns how many
    keys were deleted; raises MvccError when there is no such lease."""
    if not leases.exists(txn, lease_id):
        raise MvccError(ERR_LEASE_NOT_FOUND)
    writer = _Writer(space, txn, revs)
    for key in leases.keys(txn, lease_id):
        rec = space.current(txn, key)
        if rec is not None and rec.lease == lease_id:
            writer.delete(rec)
    leases.drop(txn, lease_id)
    if writer.sub:
        revs.current = writer.rev
        revs.dirty = True
    return writer.sub


def has_put(req: rpc_pb2.TxnRequest) -> bool:
    """Whether any branch of the Txn (nested ones included) may put: what a raised alarm
    refuses (deletes stay allowed: they free space)."""
    for op in [*req.success, *req.failure]:
        kind = op.WhichOneof("request")
        if kind == "request_put" or kind == "request_txn" and has_put(op.request_txn):
            return True
    return False
