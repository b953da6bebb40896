"""`kvstore serve`: run one node in the foreground.

The flags follow etcd's where etcd has one: --cert-file, --key-file, --trusted-ca-file,
--client-cert-auth for the client port; --peer-cert-file, --peer-key-file,
--peer-trusted-ca-file, --peer-cert-allowed-cn for the peer port. Every combination
that cannot work (a certificate without its key, --client-cert-auth without a CA to
check against, half of the peer settings) is refused here, before anything starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kvstore.cli.app import F, main
from kvstore.client import parse_endpoints

if TYPE_CHECKING:  # the server modules are imported only by `serve` itself
    from kvstore.server.config import PeerTLS, ServerTLS

# Hosts that mean "every interface": a node listening on one cannot tell others how
# clients reach it.
_WILDCARDS = {"0.0.0.0", "[::]", "::", ""}


def _endpoint(text: str, flag: str) -> str:
    try:
        (address,) = parse_endpoints([text])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    return address


def _parse_peers(text: str, node_id: str, listen_peer: str) -> dict[str, str]:
    """``ID=HOST:PEERPORT,...`` -> {id: peer address}; the node itself may be listed (then
    skipped, but it must name --listen-peer)."""
    peers: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        peer_id, sep, address = item.partition("=")
        peer_id = peer_id.strip()
        if not sep or not peer_id:
            raise click.BadParameter(f"{item!r} is not ID=HOST:PORT", param_hint="--peers")
        address = _endpoint(address, "--peers")
        if peer_id in peers:
            raise click.BadParameter(f"node {peer_id} listed twice", param_hint="--peers")
        if peer_id == node_id:
            if address != listen_peer:
                raise click.BadParameter(
                    f"lists {node_id} at {address} but --listen-peer is {listen_peer}",
                    param_hint="--peers",
                )
            continue
        peers[peer_id] = address
    return peers


def _client_tls(cert_file: str | None, key_file: str | None, trusted_ca_file: str | None,
                client_cert_auth: bool) -> ServerTLS | None:
    from kvstore.server.config import ServerTLS

    if cert_file is None and key_file is None:
        if trusted_ca_file is not None or client_cert_auth:
            raise click.UsageError(
                "--trusted-ca-file and --client-cert-auth need TLS: --cert-file and --key-file")
        return None
    if cert_file is None or key_file is None:
        raise click.UsageError("--cert-file and --key-file go together")
    if client_cert_auth and trusted_ca_file is None:
        raise click.UsageError(
            "--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)")
    return ServerTLS(_abs(cert_file), _abs(key_file),
                     None if trusted_ca_file is None else _abs(trusted_ca_file), client_cert_auth)


def _peer_tls(cert_file: str | None, key_file: str | None, trusted_ca_file: str | None,
              allowed_cn: str | None) -> PeerTLS | None:
    from kvstore.server.config import PeerTLS

    given = [f is not None for f in (cert_file, key_file, trusted_ca_file)]
    if not any(given):
        if allowed_cn is not None:
            raise click.UsageError("--peer-cert-allowed-cn needs peer TLS (--peer-cert-file, "
                                   "--peer-key-file, --peer-trusted-ca-file)")
        return None
    if not all(given):
        raise click.UsageError("peer TLS is mutual: give all of --peer-cert-file, "
                               "--peer-key-file and --peer-trusted-ca-file")
    assert cert_file and key_file and trusted_ca_file
    return PeerTLS(_abs(cert_file), _abs(key_file), _abs(trusted_ca_file), allowed_cn)


def _metrics_url(url: str, taken: set[str]) -> str:
    """Check --listen-metrics (http://HOST:PORT, not a port the node already uses)."""
    from kvstore.server.metrics_http import MetricsURLError, parse_metrics_url

    try:
        host, port = parse_metrics_url(url)
    except MetricsURLError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen-metrics") from None
    if f"{host}:{port}" in taken or f"[{host}]:{port}" in taken:
        raise click.BadParameter(f"{url} is the client or peer address",
                                 param_hint="--listen-metrics")
    return url.rstrip("/")


def _abs(path: str) -> str:
    return str(Path(path).resolve())


def _file_option(name: str, help_text: str) -> Callable[[F], F]:
    return click.option(name, default=None, metavar="FILE", help=help_text)


@main.command()
@click.option("--id", "node_id", default=None,
              help="This node's id, e.g. n1 (with --join: found by --listen-peer if omitted).")
@click.option("--listen", required=True, metavar="HOST:PORT",
              help="Client address: the KV service, for clients and the CLI.")
@click.option("--listen-peer", required=True, metavar="HOST:PORT",
              help="Peer address: Raft streams, snapshots and the Admin service.")
@click.option("--advertise-client", default=None, metavar="HOST:PORT",
              help="Client address to tell others (leader hints) [default: --listen].")
@click.option("--peers", default="", metavar="ID=HOST:PEERPORT,...",
              help="The other nodes of the cluster, at their peer addresses.")
@click.option("--join", "join_endpoints", default=None, metavar="H:P,...",
              help="Client addresses of members of a running cluster that this node was "
                   "added to (member add): learn the cluster id and membership from them "
                   "(then --peers is not needed). Harmless on a restart.")
@_file_option("--cacert", "--join: CA certificate of the members' client port [default: "
                          "$KVSTORE_CACERT].")
@_file_option("--cert", "--join: client certificate [default: $KVSTORE_CERT].")
@_file_option("--key", "--join: key of --cert [default: $KVSTORE_KEY].")
@click.option("--cluster-id", default=None, metavar="ID",
              help="The cluster's id (same on every node); stored in the data dir on first "
                   "start, a different one is refused [default: the stored one].")
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
    "--max-snapshot-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse an incoming snapshot larger than this (default 4 GiB).",
)
@click.option(
    "--quota-backend-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Raise the NOSPACE alarm (puts refused) past this many bytes of data (default 2 GiB).",
)
@click.option(
    "--corrupt-check-interval",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds between the leader's checks that members' state hashes agree (default 300; "
    "0: off).",
)
@_file_option("--cert-file", "Client port: this node's certificate (turns on TLS).")
@_file_option("--key-file", "Client port: the key of --cert-file.")
@_file_option("--trusted-ca-file", "Client port: CA that signs client certificates.")
@click.option("--client-cert-auth", is_flag=True,
              help="Client port: require a client certificate signed by --trusted-ca-file.")
@_file_option("--peer-cert-file", "Peer port: this node's certificate (mutual TLS).")
@_file_option("--peer-key-file", "Peer port: the key of --peer-cert-file.")
@_file_option("--peer-trusted-ca-file", "Peer port: CA that signs every node's peer certificate.")
@click.option("--peer-cert-allowed-cn", default=None, metavar="CN",
              help="Peer port: accept only peer certificates with this common name.")
@click.option("--listen-metrics", default=None, metavar="http://HOST:PORT",
              help="Serve /metrics (Prometheus) and /health (JSON) here (etcd's flag).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines as text, or as one JSON object per line.")
@click.option(
    "--fault-injection",
    is_flag=True,
    help="TEST ONLY: let Admin.SetFaults drop Raft traffic to/from chosen peers (drills).",
)
def serve(
    node_id: str | None,
    listen: str,
    listen_peer: str,
    advertise_client: str | None,
    peers: str,
    join_endpoints: str | None,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    cluster_id: str | None,
    data_dir: str,
    tick_ms: int | None,
    election_ticks: int | None,
    shards: int | None,
    max_value_bytes: int | None,
    snapshot_entries: int | None,
    max_snapshot_bytes: int | None,
    quota_backend_bytes: int | None,
    corrupt_check_interval: float | None,
    cert_file: str | None,
    key_file: str | None,
    trusted_ca_file: str | None,
    client_cert_auth: bool,
    peer_cert_file: str | None,
    peer_key_file: str | None,
    peer_trusted_ca_file: str | None,
    peer_cert_allowed_cn: str | None,
    listen_metrics: str | None,
    log_format: str,
    fault_injection: bool,
) -> None:
    """Run one node in the foreground until SIGTERM/SIGINT."""
    from kvstore.server.config import NodeConfig
    from kvstore.server.identity import check_cluster_id

    listen = _endpoint(listen, "--listen")
    listen_peer = _endpoint(listen_peer, "--listen-peer")
    if listen == listen_peer:
        raise click.UsageError("--listen and --listen-peer must differ (clients and peers "
                               "are served on separate ports)")
    if advertise_client is not None:
        advertise_client = _endpoint(advertise_client, "--advertise-client")
    elif listen.rpartition(":")[0] in _WILDCARDS:
        raise click.UsageError(f"--listen {listen} listens on every interface: say where "
                               "clients reach this node with --advertise-client HOST:PORT")
    if listen_metrics is not None:
        listen_metrics = _metrics_url(listen_metrics, {listen, listen_peer})
    if cluster_id is not None:
        try:
            check_cluster_id(cluster_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cluster-id") from None
    initial_members = None
    if join_endpoints is not None:
        from kvstore.cli.app import _explicit_tls
        from kvstore.cli.join import join, parse_join
        from kvstore.state.membership import Member

        joined = join(parse_join(join_endpoints), _explicit_tls(cacert, cert, key), node_id,
                      listen_peer, str(Path(data_dir).resolve()), cluster_id)
        node_id, cluster_id = joined.node_id, joined.cluster_id
        if joined.members is not None:
            initial_members = tuple(Member(*m) for m in joined.members)
    elif node_id is None:
        raise click.UsageError("--id is required (it may be left out only with --join)")
    elif any(f is not None for f in (cacert, cert, key)):
        raise click.UsageError("--cacert, --cert and --key are for --join (the server's own "
                               "certificates are --cert-file, --key-file, ...)")
    optional = {
        "tick_ms": tick_ms,
        "election_ticks": election_ticks,
        "shards": shards,
        "max_value_bytes": max_value_bytes,
        "snapshot_entries": snapshot_entries,
        "max_snapshot_bytes": max_snapshot_bytes,
        "quota_backend_bytes": quota_backend_bytes,
        "corrupt_check_interval": corrupt_check_interval,
    }
    config = NodeConfig(
        node_id=node_id,
        listen=listen,
        listen_peer=listen_peer,
        advertise_client=advertise_client or "",
        peers=_parse_peers(peers, node_id, listen_peer),
        initial_members=initial_members,
        cluster_id=cluster_id,
        data_dir=str(Path(data_dir).resolve()),
        fault_injection=fault_injection,
        listen_metrics=listen_metrics or "",
        log_format=log_format,
        client_tls=_client_tls(cert_file, key_file, trusted_ca_file, client_cert_auth),
        peer_tls=_peer_tls(peer_cert_file, peer_key_file, peer_trusted_ca_file,
                           peer_cert_allowed_cn),
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
