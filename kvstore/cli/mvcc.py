"""Commands of etcd's data model: `txn` (etcdctl's text on stdin) and `compaction REV`, and
the output of range reads that `get` and `delete` share.

Output follows etcdctl's simple format (key line, value line; SUCCESS/FAILURE blocks), so
what an operator knows from etcd reads the same here; `--json` gives the same data with
revisions for scripts. Keys and values go out as raw bytes (they need not be UTF-8); in
JSON a value that is not UTF-8 is base64 with ``"encoding": "base64"``, as `get --json`
always did.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable
from typing import Any

import click

from kvstore.cli.app import client_options, fail, main, resolve_target
from kvstore.cli.txn_format import TxnSyntaxError, parse_txn, txn_lines
from kvstore.client import KeyValue, RangeResult


def write_lines(lines: Iterable[bytes]) -> None:
    """Raw bytes lines on stdout (keys and values need not be UTF-8)."""
    out = sys.stdout.buffer
    for line in lines:
        out.write(line + b"\n")
    out.flush()


def text_fields(name: str, data: bytes) -> dict[str, str]:
    """``{name: text}``, or base64 with ``{name}_encoding`` when not UTF-8. (For the
    contract field `value` the marker keeps its old name, ``encoding``.)"""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        marker = "encoding" if name == "value" else f"{name}_encoding"
        return {name: base64.b64encode(data).decode("ascii"), marker: "base64"}


def kv_json(kv: KeyValue, keys_only: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = text_fields("key", kv.key)
    if not keys_only:
        doc.update(text_fields("value", kv.value))
    doc.update(create_revision=kv.create_revision, mod_revision=kv.mod_revision,
               version=kv.version, lease=kv.lease)
    return doc


def range_json(result: RangeResult, keys_only: bool = False) -> dict[str, Any]:
    """A range read as JSON: kvs, count, more, the store revision, node, applied index."""
    return {
        "kvs": [kv_json(kv, keys_only) for kv in result.kvs],
        "count": result.count,
        "more": result.more,
        "revision": result.revision,
        "node": result.node,
        "applied_index": result.applied_index,
    }


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON object (succeeded, revision, responses).")
@client_options
def txn(as_json: bool, endpoints: str | None, directory: str, timeout: float,
        **tls: str | None) -> None:
    """Run a transaction read from stdin in etcdctl's format.

    Compares (e.g. mod("k") = "5", value("k") != "v", version("k") > "0"), a blank line,
    the requests to run if all hold (put K V, get K [--prefix], del K [--prefix]), a blank
    line, the requests to run otherwise. Prints SUCCESS or FAILURE and each response as
    etcdctl does.
    """
    text = click.get_text_stream("stdin").read()
    try:
        parsed = parse_txn(text)
    except TxnSyntaxError as exc:
        fail(str(exc), 2)
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        result = client.txn(parsed.compare, parsed.success, parsed.failure)
    if as_json:
        click.echo(json.dumps({"succeeded": result.succeeded, "revision": result.revision,
                               "duplicate": result.duplicate,
                               "responses": [_response_json(r) for r in result.responses]}))
    else:
        write_lines(txn_lines(result))


def _response_json(response: Any) -> dict[str, Any]:
    from kvstore.client import DeleteResult, PutResult, TxnResult

    if isinstance(response, RangeResult):
        return {"range": {k: v for k, v in range_json(response).items()
                          if k not in ("node", "applied_index", "revision")}}
    if isinstance(response, PutResult):
        prev = kv_json(response.prev_kv) if response.prev_kv else None
        return {"put": {"prev_kv": prev}}
    if isinstance(response, DeleteResult):
        return {"delete": {"deleted": response.deleted,
                           "prev_kvs": [kv_json(kv) for kv in response.prev_kvs]}}
    assert isinstance(response, TxnResult)
    return {"txn": {"succeeded": response.succeeded,
                    "responses": [_response_json(r) for r in response.responses]}}


@main.command()
@click.argument("revision", type=click.IntRange(min=1))
@click.option("--physical", is_flag=True,
              help="Return only once the space of the removed history is reclaimed.")
@client_options
def compaction(revision: int, physical: bool, endpoints: str | None, directory: str,
               timeout: float, **tls: str | None) -> None:
    """Forget the history below REVISION (reads at older revisions then fail)."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        client.compact(revision, physical=physical)
    click.echo(f"compacted revision {revision}")
