"""Commands that talk to a cluster: put, get, delete, status."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from kvstore.cli.app import arg_bytes, client_options, fail, main, resolve_target
from kvstore.client import NodeStatus


@main.command()
@click.argument("key")
@click.argument("value")
@client_options
def put(key: str, value: str, endpoints: str | None, directory: str, timeout: float,
        **tls: str | None) -> None:
    """Set KEY to VALUE; prints OK once committed and applied."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        client.put(arg_bytes(key), arg_bytes(value))
    click.echo("OK")


@main.command()
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read the first endpoint's local state.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@client_options
def get(
    key: str,
    stale: bool,
    as_json: bool,
    endpoints: str | None,
    directory: str,
    timeout: float,
    **tls: str | None,
) -> None:
    """Print the value of KEY (exit 1 if it does not exist)."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        result = client.get_result(arg_bytes(key), stale=stale)
    if as_json:
        doc: dict[str, Any] = {
            "key": key,
            "value": None,
            "found": result.found,
            "node": result.node,
            "applied_index": result.applied_index,
        }
        if result.value is not None:
            try:
                doc["value"] = result.value.decode("utf-8")
            except UnicodeDecodeError:
                import base64

                doc["value"] = base64.b64encode(result.value).decode("ascii")
                doc["encoding"] = "base64"
        click.echo(json.dumps(doc))
    elif result.value is not None:
        out = sys.stdout.buffer
        out.write(result.value + b"\n")
        out.flush()
    if not result.found:
        fail(f"key not found: {key}")


@main.command()
@click.argument("key")
@client_options
def delete(key: str, endpoints: str | None, directory: str, timeout: float,
           **tls: str | None) -> None:
    """Delete KEY; prints 1 if it existed, else 0."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        existed = client.delete(arg_bytes(key))
    click.echo("1" if existed else "0")


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
        row = [n.id, n.address, n.role, n.term, n.commit_index, n.applied_index, n.leader_id,
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


