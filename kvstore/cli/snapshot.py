"""`kvstore snapshot save|status|restore`: backups and disaster recovery.

save     asks ONE member (the first endpoint) for etcd's Maintenance.Snapshot stream and
         writes it to FILE (through FILE.part, fsynced, checked, renamed), as
         `etcdctl snapshot save` does; the cluster keeps serving meanwhile.
status   checks a file's SHA-256 and prints what it holds; a truncated or altered file
         fails with one line.
restore  builds the data dir of one member of a NEW cluster from a file (new cluster id,
         membership from --peers, revisions preserved); `kvstore cluster restore` does it
         for every node of a local cluster and starts them. The file format and what a
         restore keeps are described in kvstore.storage.backup.
"""

from __future__ import annotations

import json
import os
import time

import click
import grpc

from kvstore.cli.app import client_options, main, resolve_target
from kvstore.client.tls import TLSConfigError
from kvstore.etcdapi.methods import MAINTENANCE, stub
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.server.identity import check_cluster_id
from kvstore.state.membership import ConfChangeError, Member, check_node_id
from kvstore.storage.backup import BackupError, read_backup, restore_data_dir


@main.group()
def snapshot() -> None:
    """Save, check and restore backups of the cluster's state."""


def _fetch(endpoint: str, tls, path: str, timeout: float) -> int:  # noqa: ANN001
    """Stream one member's snapshot into `path`; returns the bytes written."""
    if tls is None:
        channel = grpc.insecure_channel(endpoint)
    else:
        channel = grpc.secure_channel(endpoint, tls.credentials())
    written = 0
    with channel, open(path, "wb") as out:
        call = stub(channel, MAINTENANCE).Snapshot(pb.SnapshotRequest(), timeout=timeout)
        for resp in call:
            out.write(resp.blob)
            written += len(resp.blob)
        out.flush()
        os.fsync(out.fileno())
    return written


@snapshot.command("save")
@click.argument("file", type=click.Path(dir_okay=False))
@client_options
def snapshot_save(file: str, endpoints: str | None, directory: str, timeout: float,
                  **tls: str | None) -> None:
    """Save the state of one member (the first endpoint) to FILE."""
    target = resolve_target(endpoints, directory, **tls)
    endpoint = target.endpoints[0]
    part = f"{file}.part"
    started = time.monotonic()
    try:
        size = _fetch(endpoint, target.tls, part, max(timeout, 60.0))
        header, _, sha = read_backup(part)
    except grpc.RpcError as err:
        _remove(part)
        raise click.ClickException(
            f"snapshot from {endpoint} failed: {err.code().name}: {err.details()}") from None
    except (BackupError, TLSConfigError) as err:
        _remove(part)
        raise click.ClickException(str(err)) from None
    except OSError as err:
        _remove(part)
        raise click.ClickException(f"cannot write {file}: {err.strerror}") from None
    os.replace(part, file)
    click.echo(f"saved {file} from {endpoint}: revision {header.revision}, raft index "
               f"{header.raft_index} (term {header.raft_term}), {header.keys} keys, "
               f"{size} bytes, sha256 {sha}, in {time.monotonic() - started:.2f}s")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@snapshot.command("status")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def snapshot_status(file: str, as_json: bool) -> None:
    """Check FILE (its SHA-256 and header) and print what it holds."""
    try:
        header, _, sha = read_backup(file)
    except BackupError as err:
        raise click.ClickException(f"{file}: {err}") from None
    size = os.path.getsize(file)
    if as_json:
        click.echo(json.dumps({**header.to_json(), "size": size, "sha256": sha}))
        return
    click.echo(f"revision {header.revision} (compacted {header.compact_revision}), raft index "
               f"{header.raft_index} term {header.raft_term}, {header.keys} keys, "
               f"{header.members} members ({', '.join(header.member_ids)}), cluster "
               f"{header.cluster_id}, {size} bytes, sha256 {sha}")


def parse_members(text: str) -> list[Member]:
    """`id=HOST:PORT,...` (every member of the new cluster, with its peer address)."""
    members: list[Member] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        node_id, sep, address = part.partition("=")
        if not sep or not address:
            raise click.BadParameter(f"{part!r}: expected ID=HOST:PORT", param_hint="--peers")
        try:
            check_node_id(node_id)
        except ConfChangeError as err:
            raise click.BadParameter(str(err), param_hint="--peers") from None
        members.append(Member(node_id, address.removeprefix("http://")
                              .removeprefix("https://").rstrip("/")))
    if len({m.id for m in members}) != len(members):
        raise click.BadParameter("a member is named twice", param_hint="--peers")
    if not members:
        raise click.BadParameter("give every member of the new cluster", param_hint="--peers")
    return members


@snapshot.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--data-dir", required=True, help="The new member's data dir (must not hold data).")
@click.option("--id", "node_id", required=True, help="This member's node id.")
@click.option("--peers", required=True, metavar="ID=HOST:PORT,...",
              help="EVERY member of the new cluster (this one too) with its peer address.")
@click.option("--cluster-id", default=None,
              help="The new cluster's id (default: derived from the file and --peers, so "
                   "every member restored alike agrees on it).")
def snapshot_restore(file: str, data_dir: str, node_id: str, peers: str,
                     cluster_id: str | None) -> None:
    """Build DATA_DIR for member ID of a new cluster from FILE; start the member with
    `kvstore serve --id ID --data-dir DATA_DIR --peers (the others) ...`."""
    members = parse_members(peers)
    if cluster_id is not None:
        try:
            check_cluster_id(cluster_id)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--cluster-id") from None
    started = time.monotonic()
    try:
        header, cid = restore_data_dir(file, data_dir, node_id, members, cluster_id)
    except BackupError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"restored {data_dir} for {node_id} of new cluster {cid}: revision "
               f"{header.revision}, raft index {header.raft_index}, {header.keys} keys, "
               f"members {','.join(m.id for m in members)}, in "
               f"{time.monotonic() - started:.2f}s")
