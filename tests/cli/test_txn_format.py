"""etcdctl's txn text: parsing compares and requests, and printing answers as etcdctl."""

from __future__ import annotations

import pytest

from kvstore.cli.txn_format import (
    TxnSyntaxError,
    go_unquote,
    parse_compare,
    parse_request,
    parse_txn,
    split_args,
    txn_lines,
)
from kvstore.client import DeleteResult, KeyValue, PutResult, RangeResult, TxnResult
from kvstore.etcdpb import rpc_pb2

C = rpc_pb2.Compare
R = rpc_pb2.RangeRequest


def test_go_unquote_escapes_and_raw_strings() -> None:
    assert go_unquote('"a\\nb\\x00\\xff\\101\\u00e9\\"q"') == (b"a\nb\x00\xffA\xc3\xa9\"q", 27)
    assert go_unquote("`raw \\n`") == (b"raw \\n", 8)
    for bad in ('"open', '"\\q"', '"\\x1"', "noquote", "`open"):
        with pytest.raises(ValueError):
            go_unquote(bad)


def test_split_args_like_etcdctl() -> None:
    assert split_args('put k "a b\\tc"') == [b"put", b"k", b"a b\tc"]
    assert split_args("put  'k x'   v") == [b"put", b"k x", b"v"]
    assert split_args("get k --prefix") == [b"get", b"k", b"--prefix"]


@pytest.mark.parametrize(("line", "target", "result", "field", "value"), [
    ('mod("k") = "5"', C.MOD, C.EQUAL, "mod_revision", 5),
    ('m("k") > "0"', C.MOD, C.GREATER, "mod_revision", 0),
    ('create("k") < "7"', C.CREATE, C.LESS, "create_revision", 7),
    ('c("k") != "7"', C.CREATE, C.NOT_EQUAL, "create_revision", 7),
    ('version("k") = "0"', C.VERSION, C.EQUAL, "version", 0),
    ('ver("k") > "2"', C.VERSION, C.GREATER, "version", 2),
    ('value("k") = "v"', C.VALUE, C.EQUAL, "value", b"v"),
    ('val("k") != "a b"', C.VALUE, C.NOT_EQUAL, "value", b"a b"),
    ('lease("k") = "1f"', C.LEASE, C.EQUAL, "lease", 0x1F),
])
def test_compares(line: str, target: int, result: int, field: str, value: object) -> None:
    proto = parse_compare(line).proto
    assert (proto.key, proto.target, proto.result) == (b"k", target, result)
    assert proto.WhichOneof("target_union") == field
    assert getattr(proto, field) == value


@pytest.mark.parametrize(("line", "needle"), [
    ('mod "k" = "5"', "malformed comparison"),
    ('foo("k") = "5"', "unknown target foo"),
    ('mod("k") = 5', "malformed comparison"),
    ('mod("k") = "x"', "is not a number"),
    ('mod("k") >= "5"', "unknown operator"),
    ('value("k") = "v" extra', "unexpected text"),
])
def test_bad_compares(line: str, needle: str) -> None:
    with pytest.raises(TxnSyntaxError, match=needle):
        parse_compare(line)


def test_requests() -> None:
    put = parse_request('put k "v 1" --prev-kv').proto.request_put
    assert (put.key, put.value, put.prev_kv) == (b"k", b"v 1", True)
    get = parse_request("get a --prefix --limit 2 --sort-by=MODIFY --order descend "
                        "--rev 4 --keys-only").proto.request_range
    assert (get.key, get.range_end, get.limit, get.revision) == (b"a", b"b", 2, 4)
    assert (get.sort_target, get.sort_order, get.keys_only) == (R.MOD, R.DESCEND, True)
    get = parse_request("get a c --count-only").proto.request_range
    assert (get.key, get.range_end, get.count_only) == (b"a", b"c", True)
    get = parse_request("get '' --from-key").proto.request_range
    assert (get.key, get.range_end) == (b"\0", b"\0")
    for cmd in ("del", "delete"):
        d = parse_request(f"{cmd} p --prefix --prev-kv").proto.request_delete_range
        assert (d.key, d.range_end, d.prev_kv) == (b"p", b"q", True)


@pytest.mark.parametrize(("line", "needle"), [
    ("put k", "put takes KEY VALUE"),
    ("put", "invalid txn request"),
    ("watch k", "unknown command watch"),
    ("get k --lease 5", "unknown flag --lease"),
    ("get k --limit", "needs a value"),
    ("get k --limit x", "takes a number"),
    ("get k --order sideways", "unknown sort order"),
    ("get k z --prefix", "at most one of"),
    ('put k "v', "unterminated"),
])
def test_bad_requests(line: str, needle: str) -> None:
    with pytest.raises(TxnSyntaxError, match=needle):
        parse_request(line)


def test_whole_text() -> None:
    parsed = parse_txn('mod("k") = "5"\nvalue("j") = "x"\n\nput k v\nget k\n\ndel k\n\n')
    assert len(parsed.compare) == 2
    assert [o.proto.WhichOneof("request") for o in parsed.success] == [
        "request_put", "request_range"]
    assert [o.proto.WhichOneof("request") for o in parsed.failure] == [
        "request_delete_range"]
    # Leading blank line: no compares. The end of input ends a section.
    parsed = parse_txn("\nput k v")
    assert (len(parsed.compare), len(parsed.success), len(parsed.failure)) == (0, 1, 0)
    assert parse_txn("") == parse_txn("\n\n\n")
    with pytest.raises(TxnSyntaxError, match="unexpected input after"):
        parse_txn("\n\n\n\nput k v\n")


def test_output_is_etcdctls() -> None:
    kv = KeyValue(b"k", b"v", 2, 3, 2)
    result = TxnResult(True, (
        PutResult(),
        PutResult(prev_kv=kv),
        RangeResult((kv,), False, 1, 3),
        DeleteResult(1, (kv,)),
        TxnResult(False, (DeleteResult(0),), 3),
    ), 3)
    assert txn_lines(result) == [
        b"SUCCESS", b"", b"OK", b"", b"OK", b"k", b"v", b"", b"k", b"v",
        b"", b"1", b"k", b"v", b"", b"FAILURE", b"", b"0",
    ]
    assert txn_lines(TxnResult(False, (), 9)) == [b"FAILURE"]
