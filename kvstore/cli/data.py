"""Commands that talk to a cluster: put, get (a key or a range), delete (alias del), status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from kvstore.cli.app import arg_bytes, client_options, fail, main, resolve_target
from kvstore.cli.coord import LEASE_ID
from kvstore.cli.mvcc import range_json, text_fields, write_lines
from kvstore.cli.txn_format import kv_lines, response_lines
from kvstore.client import GetResult, NodeStatus, Op
from kvstore.client.ranges import SORT_TARGETS


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--lease", "lease", type=LEASE_ID, default=None,
              help="Attach KEY to this lease (hex id, as `lease grant` prints it).")
@client_options
def put(key: str, value: str, lease: int | None, endpoints: str | None, directory: str,
        timeout: float, **tls: str | None) -> None:
    """Set KEY to VALUE; prints OK once committed and applied."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        client.put(arg_bytes(key), arg_bytes(value), lease=lease or 0)
    click.echo("OK")


@main.command()
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--from-key", is_flag=True, help="Every key >= KEY.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most N keys (0: all).")
@click.option("--rev", type=click.IntRange(min=0), default=0,
              help="Read at this store revision (0: the latest).")
@click.option("--sort-by", type=click.Choice(SORT_TARGETS, case_sensitive=False), default=None,
              help="Sort by this field (ascending unless --order).")
@click.option("--order", type=click.Choice(("ascend", "descend"), case_sensitive=False),
              default=None, help="Sort order.")
@click.option("--keys-only", is_flag=True, help="Print only the keys.")
@click.option("--count-only", is_flag=True, help="Print only the number of keys.")
@click.option("--stale", is_flag=True, help="Read the first endpoint's local state.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@client_options
def get(key: str, range_end: str | None, prefix: bool, from_key: bool, limit: int, rev: int,
        sort_by: str | None, order: str | None, keys_only: bool, count_only: bool,
        stale: bool, as_json: bool, endpoints: str | None, directory: str, timeout: float,
        **tls: str | None) -> None:
    """Print the value of KEY (exit 1 if it does not exist), or with RANGE_END, --prefix or
    --from-key every key in the range as key and value lines (as etcdctl get)."""
    single = range_end is None and not (prefix or from_key or keys_only or count_only)
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        if single:
            _print_one(key, client.get_result(arg_bytes(key), stale=stale, revision=rev),
                       as_json)
            return
        result = client.range(
            arg_bytes(key), None if range_end is None else arg_bytes(range_end),
            prefix=prefix, from_key=from_key, limit=limit, revision=rev, sort_order=order,
            sort_target=sort_by, keys_only=keys_only, count_only=count_only, stale=stale)
    if as_json:
        click.echo(json.dumps(range_json(result, keys_only)))
    elif count_only:
        click.echo(str(result.count))
    else:
        write_lines(kv_lines(result.kvs, keys_only))


def _print_one(key: str, result: GetResult, as_json: bool) -> None:
    """A single key: its value alone (the old contract), or the contract's JSON fields plus
    the key's revisions and the store revision."""
    if as_json:
        doc: dict[str, Any] = {
            "key": key,
            "value": None,
            "found": result.found,
            "node": result.node,
            "applied_index": result.applied_index,
        }
        if result.value is not None:
            doc.update(text_fields("value", result.value))
        doc.update(create_revision=result.create_revision, mod_revision=result.mod_revision,
                   version=result.version, revision=result.revision)
        click.echo(json.dumps(doc))
    elif result.value is not None:
        write_lines([result.value])
    if not result.found:
        fail(f"key not found: {key}")


@main.command()
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--from-key", is_flag=True, help="Every key >= KEY.")
@click.option("--prev-kv", is_flag=True, help="Also print the deleted keys and values.")
@client_options
def delete(key: str, range_end: str | None, prefix: bool, from_key: bool, prev_kv: bool,
           endpoints: str | None, directory: str, timeout: float, **tls: str | None) -> None:
    """Delete KEY (or a range, as etcdctl del); prints the number of keys deleted."""
    single = range_end is None and not (prefix or from_key or prev_kv)
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        if single:
            click.echo("1" if client.delete(arg_bytes(key)) else "0")
            return
        op = Op.delete(arg_bytes(key), None if range_end is None else arg_bytes(range_end),
                       prefix=prefix, from_key=from_key, prev_kv=prev_kv)
        result = client.txn(success=[op])
    if not result.responses:
        # A retry of a delete the cluster had already applied (sessions keep no counts).
        click.echo("kvstore: deleted by an earlier attempt of this command; the count was "
                   "not kept", err=True)
        return
    write_lines(response_lines(result.responses[0]))


main.add_command(delete, "del")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@client_options
def status(as_json: bool, endpoints: str | None, directory: str, timeout: float,
           **tls: str | None) -> None:
    """Show every node's role, term, commit and applied index, and leader."""
    target = resolve_target(endpoints, directory, **tls)
    with target.client(timeout) as client:
        nodes = client.status()
    nodes = [_named(n, target.names) for n in nodes]
    print_status(nodes, as_json)


def _named(node: NodeStatus, names: dict[str, str]) -> NodeStatus:
    if node.id is None and node.address in names:
        from dataclasses import replace

        return replace(node, id=names[node.address])
    return node


def print_status(
    nodes: Sequence[NodeStatus], as_json: bool, pids: dict[str, int | None] | None = None
) -> None:
    if as_json:
        click.echo(json.dumps({"nodes": [n.to_json() for n in nodes]}))
        return
    header = ["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER", "SNAPSHOT",
              "LOG", "LOG_SIZE"]
    rows = []
    for n in nodes:
        log_entries = (None if n.last_log_index is None or n.snapshot_index is None
                       else n.last_log_index - n.snapshot_index)
        size = None if n.log_bytes is None else _human_bytes(n.log_bytes)
        role = "learner" if n.learner and n.role == "follower" else n.role
        row = [n.id, n.address, role, n.term, n.commit_index, n.applied_index, n.leader_id,
               n.snapshot_index, log_entries, size]
        rows.append(["-" if v is None or v == "" else str(v) for v in row])
    if pids is not None:
        header.append("PID")
        for row, n in zip(rows, nodes, strict=True):
            pid = pids.get(n.id or "")
            row.append(str(pid) if pid else "-")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for n in nodes:
        if n.followers:
            progress = ", ".join(f"{f.id} match {f.match_index} lag {f.lag}" for f in n.followers)
            click.echo(f"followers of {n.id}: {progress}")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


