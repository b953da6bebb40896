"""The `kvstore` command line: serve a node, run a local cluster, talk to a cluster.

Error policy: every failure prints ONE line on stderr ("kvstore: ...") and exits
non-zero; never a traceback (set KVSTORE_DEBUG=1 to get one, which node processes
started by `cluster up` do, so their logs keep the details of a crash).
Exit codes: 0 ok, 1 failure (including "key not found"), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from kvstore import __version__
from kvstore.client import DEFAULT_TIMEOUT, KVClient, KVError, NodeStatus, parse_endpoints
from kvstore.cluster.layout import (
    DEFAULT_BASE_PORT,
    DEFAULT_NODES,
    MAX_NODES,
    MIN_NODES,
    Layout,
    LayoutError,
    default_layout,
    load_layout,
)
from kvstore.cluster.manager import (
    DEFAULT_DIR,
    DEFAULT_STOP_GRACE,
    DEFAULT_UP_TIMEOUT,
    ClusterError,
    ClusterManager,
    cluster_file,
    load_state,
)

ENDPOINTS_ENV = "KVSTORE_ENDPOINTS"
DEBUG_ENV = "KVSTORE_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- error handling


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"kvstore: {_one_line(message)}", err=True)
    sys.exit(code)


def _kv_error_text(error: KVError) -> str:
    text = str(error)
    if error.maybe_applied:
        text += " (the write may or may not have been applied)"
    return text


class _Main(click.Group):
    """A click group whose entry point turns every failure into one stderr line."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "kvstore")
        try:
            rv = super().main(*args, **kwargs)
        except SystemExit:
            raise
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _fail(exc.format_message() + hint, 2)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        except KVError as exc:
            self._debug()
            _fail(_kv_error_text(exc))
        except (ClusterError, LayoutError) as exc:
            self._debug()
            _fail(str(exc))
        except BrokenPipeError:
            # Output piped into e.g. `head`: not worth an error line.
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:  # the last line of defence: never a traceback
            self._debug()
            _fail(f"{type(exc).__name__}: {exc}")
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _debug() -> None:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvstore")
def main() -> None:
    """kvstore: a Raft-replicated key-value store."""


# --------------------------------------------------------------------------- shared options


def _dir_option(f: F) -> F:
    return click.option(
        "--dir",
        "directory",
        default=DEFAULT_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Local cluster directory (holds cluster.json).",
    )(f)


def _timeout_option(default: float = DEFAULT_TIMEOUT) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        return click.option(
            "--timeout",
            default=default,
            show_default=True,
            type=click.FloatRange(min=0, min_open=True),
            help="Overall deadline of the command in seconds.",
        )(f)

    return wrap


def _client_options(f: F) -> F:
    f = _timeout_option()(f)
    f = _dir_option(f)
    return click.option(
        "--endpoints",
        default=None,
        metavar="H:P,...",
        help=f"Node addresses (default: ${ENDPOINTS_ENV}, else DIR/cluster.json).",
    )(f)


def _resolve_endpoints(option: str | None, directory: str) -> tuple[list[str], dict[str, str]]:
    """Endpoints from --endpoints, else $KVSTORE_ENDPOINTS, else DIR/cluster.json.

    Also returns address -> node id when the endpoints came from cluster.json, so
    that an unreachable node can still be named.
    """
    for source, text in (("--endpoints", option), (ENDPOINTS_ENV, os.environ.get(ENDPOINTS_ENV))):
        if text is None or (source == ENDPOINTS_ENV and not text.strip()):
            continue
        try:
            return parse_endpoints(text), {}
        except ValueError as exc:
            raise click.UsageError(f"{source}: {exc}") from None
    if not cluster_file(directory).exists():
        raise click.ClickException(
            f"no endpoints: pass --endpoints H:P,..., set {ENDPOINTS_ENV}, "
            f"or start a local cluster ({cluster_file(directory)} not found)"
        )
    state = load_state(directory)
    if not state.nodes:
        raise ClusterError(f"{state.path} lists no nodes")
    return [r.address for r in state.nodes], {r.address: r.id for r in state.nodes}


def _arg_bytes(text: str) -> bytes:
    # surrogateescape round-trips arguments that were not valid UTF-8 on the command line.
    return text.encode("utf-8", "surrogateescape")


def _client(endpoints: str | None, directory: str, timeout: float) -> KVClient:
    resolved, _ = _resolve_endpoints(endpoints, directory)
    return KVClient(resolved, timeout=timeout)


# --------------------------------------------------------------------------- data commands


@main.command()
@click.argument("key")
@click.argument("value")
@_client_options
def put(key: str, value: str, endpoints: str | None, directory: str, timeout: float) -> None:
    """Set KEY to VALUE; prints OK once committed and applied."""
    with _client(endpoints, directory, timeout) as client:
        client.put(_arg_bytes(key), _arg_bytes(value))
    click.echo("OK")


@main.command()
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read the first endpoint's local state.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@_client_options
def get(
    key: str,
    stale: bool,
    as_json: bool,
    endpoints: str | None,
    directory: str,
    timeout: float,
) -> None:
    """Print the value of KEY (exit 1 if it does not exist)."""
    with _client(endpoints, directory, timeout) as client:
        result = client.get_result(_arg_bytes(key), stale=stale)
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
        _fail(f"key not found: {key}")


@main.command()
@click.argument("key")
@_client_options
def delete(key: str, endpoints: str | None, directory: str, timeout: float) -> None:
    """Delete KEY; prints 1 if it existed, else 0."""
    with _client(endpoints, directory, timeout) as client:
        existed = client.delete(_arg_bytes(key))
    click.echo("1" if existed else "0")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@_client_options
def status(as_json: bool, endpoints: str | None, directory: str, timeout: float) -> None:
    """Show every node's role, term, commit and applied index, and leader."""
    resolved, names = _resolve_endpoints(endpoints, directory)
    with KVClient(resolved, timeout=timeout) as client:
        nodes = client.status()
    nodes = [_named(n, names) for n in nodes]
    _print_status(nodes, as_json)


def _named(node: NodeStatus, names: dict[str, str]) -> NodeStatus:
    if node.id is None and node.address in names:
        from dataclasses import replace

        return replace(node, id=names[node.address])
    return node


def _print_status(
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


# --------------------------------------------------------------------------- serve


def _parse_peers(text: str, node_id: str, listen: str) -> dict[str, str]:
    """``ID=HOST:PORT,...`` -> {id: address}; the node itself may be listed (then skipped)."""
    peers: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        peer_id, sep, address = item.partition("=")
        peer_id = peer_id.strip()
        if not sep or not peer_id:
            raise click.BadParameter(f"{item!r} is not ID=HOST:PORT", param_hint="--peers")
        try:
            (address,) = parse_endpoints([address])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--peers") from None
        if peer_id in peers:
            raise click.BadParameter(f"node {peer_id} listed twice", param_hint="--peers")
        if peer_id == node_id:
            if address != listen:
                raise click.BadParameter(
                    f"lists {node_id} at {address} but --listen is {listen}", param_hint="--peers"
                )
            continue
        peers[peer_id] = address
    return peers


@main.command()
@click.option("--id", "node_id", required=True, help="This node's id, e.g. n1.")
@click.option("--listen", required=True, metavar="HOST:PORT", help="Address to serve on.")
@click.option(
    "--peers", default="", metavar="ID=HOST:PORT,...", help="The other nodes of the cluster."
)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Data dir.")
@click.option("--tick-ms", type=click.IntRange(min=1), default=None, help="Raft tick (ms).")
@click.option(
    "--election-ticks", type=click.IntRange(min=2), default=None, help="Election timeout ticks."
)
@click.option("--shards", type=click.IntRange(min=1), default=None, help="Shards (new data).")
@click.option(
    "--max-value-bytes", type=click.IntRange(min=1), default=None, help="Largest value accepted."
)
@click.option(
    "--snapshot-entries",
    type=click.IntRange(min=10),
    default=None,
    help="Compact the log once it holds this many applied entries (default 10000).",
)
@click.option(
    "--fault-injection",
    is_flag=True,
    help="TEST ONLY: let Admin.SetFaults drop Raft traffic to/from chosen peers (drills).",
)
def serve(
    node_id: str,
    listen: str,
    peers: str,
    data_dir: str,
    tick_ms: int | None,
    election_ticks: int | None,
    shards: int | None,
    max_value_bytes: int | None,
    snapshot_entries: int | None,
    fault_injection: bool,
) -> None:
    """Run one node in the foreground until SIGTERM/SIGINT."""
    from kvstore.server.config import NodeConfig

    try:
        (listen,) = parse_endpoints([listen])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    optional = {
        "tick_ms": tick_ms,
        "election_ticks": election_ticks,
        "shards": shards,
        "max_value_bytes": max_value_bytes,
        "snapshot_entries": snapshot_entries,
    }
    config = NodeConfig(
        node_id=node_id,
        listen=listen,
        peers=_parse_peers(peers, node_id, listen),
        data_dir=str(Path(data_dir).resolve()),
        fault_injection=fault_injection,
        **{k: v for k, v in optional.items() if v is not None},
    )
    try:
        # Imported here so that every other command works without the server module.
        from kvstore.server.app import serve as run_server
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("kvstore.server"):
            raise click.ClickException(f"the server is not available ({exc})") from None
        raise
    run_server(config)


# --------------------------------------------------------------------------- cluster


@main.group()
def cluster() -> None:
    """Run a local cluster of node processes (one directory per cluster)."""


def _manager(directory: str) -> ClusterManager:
    return ClusterManager(directory, report=lambda msg: click.echo(msg, err=True))


@cluster.command("up")
@click.option(
    "--nodes",
    type=click.IntRange(MIN_NODES, MAX_NODES),
    default=None,
    help=f"Number of nodes [default: {DEFAULT_NODES}].",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Port of n1; node i listens on base-port+i-1 [default: {DEFAULT_BASE_PORT}].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A cluster definition (e.g. cluster/local-5.json) instead of --nodes/--base-port.",
)
@_timeout_option(DEFAULT_UP_TIMEOUT)
@_dir_option
def cluster_up(
    nodes: int | None,
    base_port: int | None,
    config_path: str | None,
    timeout: float,
    directory: str,
) -> None:
    """Start N nodes in the background; return once a leader is elected."""
    layout: Layout
    if config_path is not None:
        if nodes is not None or base_port is not None:
            raise click.UsageError("--config cannot be combined with --nodes or --base-port")
        layout = load_layout(config_path)
    else:
        layout = default_layout(nodes or DEFAULT_NODES, base_port or DEFAULT_BASE_PORT)
    state, leader = _manager(directory).up(layout, timeout=timeout)
    for record in state.nodes:
        click.echo(f"{record.id}  {record.address}  pid {record.pid}  log {record.log_file}")
    click.echo(f"cluster {state.name} is up in {state.dir}: leader {leader}")


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@_timeout_option(2.0)
@_dir_option
def cluster_status(as_json: bool, timeout: float, directory: str) -> None:
    """Show each node's process state and Raft status."""
    state, nodes = _manager(directory).status(timeout=timeout)
    _print_status(nodes, as_json, pids={r.id: r.pid for r in state.nodes})


@cluster.command("down")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_STOP_GRACE,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
@_dir_option
def cluster_down(grace: float, directory: str) -> None:
    """Stop every node (nodes already dead are fine); data and logs are kept."""
    for line in _manager(directory).down(grace=grace):
        click.echo(line)


@cluster.command("stop")
@click.argument("node_id")
@click.option("--kill", is_flag=True, help="SIGKILL instead of SIGTERM.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_STOP_GRACE,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
@_dir_option
def cluster_stop(node_id: str, kill: bool, grace: float, directory: str) -> None:
    """Stop one node; returns once its process is gone."""
    click.echo(_manager(directory).stop(node_id, kill=kill, grace=grace))


@cluster.command("start")
@click.argument("node_id")
@_timeout_option(DEFAULT_UP_TIMEOUT)
@_dir_option
def cluster_start(node_id: str, timeout: float, directory: str) -> None:
    """Restart one stopped node on its existing data."""
    record = _manager(directory).start(node_id, timeout=timeout)
    click.echo(f"started {record.id} (pid {record.pid}) on {record.address}")


@cluster.command("resync")
@click.argument("node_id")
@_timeout_option(DEFAULT_UP_TIMEOUT)
@_dir_option
def cluster_resync(node_id: str, timeout: float, directory: str) -> None:
    """Rebuild one node from the leader (e.g. after it refused to start on damaged data):
    its data dir is moved aside, and it restarts empty and receives a snapshot."""
    moved, record = _manager(directory).resync(node_id, timeout=timeout)
    click.echo(f"moved {record.id}'s old data to {moved}")
    click.echo(f"started {record.id} (pid {record.pid}) on {record.address}; "
               "it catches up from the leader")


if __name__ == "__main__":
    main()
