"""`kvstore cluster ...`: run a local cluster of node processes (kvstore.cluster)."""

from __future__ import annotations

import click

from kvstore.cli.app import dir_option, main, timeout_option
from kvstore.cli.data import print_status
from kvstore.cluster.layout import (
    DEFAULT_BASE_PORT,
    DEFAULT_NODES,
    MAX_NODES,
    MIN_NODES,
    PEER_PORT_OFFSET,
    Layout,
    default_layout,
    load_layout,
)
from kvstore.cluster.manager import (
    DEFAULT_STOP_GRACE,
    DEFAULT_UP_TIMEOUT,
    ClusterManager,
)
from kvstore.cluster.membership import (
    DEFAULT_ADD_TIMEOUT,
    DEFAULT_REMOVE_TIMEOUT,
    add_node,
    remove_node,
)


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
    help=f"Client port of n1: node i serves clients on base-port+i-1 and peers on "
    f"base-port+{PEER_PORT_OFFSET}+i-1 [default: {DEFAULT_BASE_PORT}].",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Make a CA and certificates under DIR/tls and run mutual TLS on both ports.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A cluster definition (e.g. cluster/local-5.json) instead of --nodes/--base-port.",
)
@timeout_option(DEFAULT_UP_TIMEOUT)
@dir_option
def cluster_up(
    nodes: int | None,
    base_port: int | None,
    tls: bool,
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
    state, leader = _manager(directory).up(layout, timeout=timeout, tls=tls)
    for record in state.nodes:
        click.echo(f"{record.id}  {record.address}  peer {record.peer_address}  "
                   f"pid {record.pid}  log {record.log_file}")
    secured = " (mutual TLS; client certificate in cluster.json)" if state.tls else ""
    click.echo(f"cluster {state.name} ({state.cluster_id}) is up in {state.dir}{secured}: "
               f"leader {leader}")


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@timeout_option(2.0)
@dir_option
def cluster_status(as_json: bool, timeout: float, directory: str) -> None:
    """Show each node's process state and Raft status."""
    state, nodes = _manager(directory).status(timeout=timeout)
    print_status(nodes, as_json, pids={r.id: r.pid for r in state.nodes})


@cluster.command("down")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_STOP_GRACE,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
@dir_option
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
@dir_option
def cluster_stop(node_id: str, kill: bool, grace: float, directory: str) -> None:
    """Stop one node; returns once its process is gone."""
    click.echo(_manager(directory).stop(node_id, kill=kill, grace=grace))


@cluster.command("start")
@click.argument("node_id")
@timeout_option(DEFAULT_UP_TIMEOUT)
@dir_option
def cluster_start(node_id: str, timeout: float, directory: str) -> None:
    """Restart one stopped node on its existing data."""
    record = _manager(directory).start(node_id, timeout=timeout)
    click.echo(f"started {record.id} (pid {record.pid}) on {record.address}")


@cluster.command("resync")
@click.argument("node_id")
@timeout_option(DEFAULT_UP_TIMEOUT)
@dir_option
def cluster_resync(node_id: str, timeout: float, directory: str) -> None:
    """Rebuild one node from the leader (e.g. after it refused to start on damaged data):
    its data dir is moved aside, and it restarts empty and receives a snapshot."""
    moved, record = _manager(directory).resync(node_id, timeout=timeout)
    click.echo(f"moved {record.id}'s old data to {moved}")
    click.echo(f"started {record.id} (pid {record.pid}) on {record.address}; "
               "it catches up from the leader")


@cluster.command("add-node")
@click.option("--learner", is_flag=True, help="Leave it a learner (do not promote it).")
@timeout_option(DEFAULT_ADD_TIMEOUT)
@dir_option
def cluster_add_node(learner: bool, timeout: float, directory: str) -> None:
    """Add the next node n<i> (a removed node's i is never reused): added as a learner
    through the cluster's API, started with `serve --join`, promoted once caught up."""
    added = add_node(_manager(directory), learner=learner, timeout=timeout)
    r = added.record
    what = "a voter" if added.promoted else "a learner"
    click.echo(f"added {r.id} (pid {r.pid}) on {r.address}, peer {r.peer_address}: caught "
               f"up to index {added.caught_up_index}, now {what}, in {added.seconds:.1f}s")


@cluster.command("remove-node")
@click.argument("node_id")
@timeout_option(DEFAULT_REMOVE_TIMEOUT)
@dir_option
def cluster_remove_node(node_id: str, timeout: float, directory: str) -> None:
    """Remove NODE_ID from the cluster (its id is never used again) and stop its process;
    its data dir and log stay. Replace a dead node: remove-node it, then add-node."""
    click.echo(remove_node(_manager(directory), node_id, timeout=timeout))


@cluster.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--nodes", type=click.IntRange(MIN_NODES, MAX_NODES), default=None,
              help=f"Number of nodes [default: {DEFAULT_NODES}].")
@click.option("--base-port", type=click.IntRange(1, 65535), default=None,
              help=f"Client port of n1, as for `cluster up` [default: {DEFAULT_BASE_PORT}].")
@click.option("--tls", is_flag=True, help="As for `cluster up`.")
@timeout_option(DEFAULT_UP_TIMEOUT)
@dir_option
def cluster_restore(file: str, nodes: int | None, base_port: int | None, tls: bool,
                    timeout: float, directory: str) -> None:
    """Start a NEW local cluster whose state is the backup FILE's (revisions included; a
    new cluster id; members n1..nN). DIR must not hold a cluster."""
    from kvstore.cluster.restore import restore_cluster

    layout = default_layout(nodes or DEFAULT_NODES, base_port or DEFAULT_BASE_PORT)
    state, leader, restored = restore_cluster(_manager(directory), file, layout, tls=tls,
                                              timeout=timeout)
    for record in state.nodes:
        click.echo(f"{record.id}  {record.address}  peer {record.peer_address}  "
                   f"pid {record.pid}  log {record.log_file}")
    click.echo(f"restored {file} into new cluster {state.cluster_id} in {state.dir} "
               f"(data dirs built in {restored:.2f}s); leader {leader}")
