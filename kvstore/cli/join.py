"""`kvstore serve --join ENDPOINTS`: start a node that was added to a running cluster.

Before the node opens its store it asks the cluster (any of ENDPOINTS, client HOST:PORTs)
for its cluster id (native Status) and its members (etcd's MemberList: names are node
ids, peer URLs the peer addresses, isLearner), and starts with exactly that membership
and id. Why ask instead of taking --peers: the membership is whatever the cluster's log
says now (members may have come and gone since the cluster was made), and the new node
must start from the same configuration the leader replicates to it, with itself in it as
the learner (or voter) it was added as.

The node finds its own entry by --id, or without --id by its peer address (--listen-peer)
matching a member's peer URL: that is how a member added by `etcdctl member add`, which
gets a generated id, is started (as an etcd member finds itself by its peer URLs).

A data dir that already holds data is not re-seeded: the membership recorded there wins
(it is replicated state), so --join on a restart only checks, if the cluster answers, that
the data dir belongs to that cluster. Every refusal is one line (click.ClickException).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import click

from kvstore.client import KVClient, KVError, TLSConfig, parse_endpoints
from kvstore.client.membership import MemberInfo

JOIN_SECONDS = 5.0  # asking the cluster on a first start
RESTART_CHECK_SECONDS = 2.0  # the check on a restart; an absent cluster is fine then
JOIN_RETRY_SECONDS = 0.2  # between member lists while this node is not in them yet
CLUSTER_ID_FILE = "CLUSTER_ID"  # kvstore.server.identity's, not imported: server-only module


@dataclass(frozen=True)
class Joined:
    """What a joining node starts with; ``members`` is None on a restart (the data dir's
    recorded membership wins)."""

    node_id: str
    cluster_id: str | None
    members: tuple[tuple[str, str, bool], ...] | None  # (id, peer address, learner)


def stored_cluster_id(data_dir: str) -> str | None:
    try:
        with open(os.path.join(data_dir, CLUSTER_ID_FILE), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def parse_join(text: str) -> list[str]:
    try:
        return parse_endpoints(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--join") from None


def ask_cluster(endpoints: list[str], tls: TLSConfig | None, timeout: float
                ) -> tuple[str, list[MemberInfo]]:
    """(cluster id, members) from the cluster; ClickException if nobody answers."""
    where = ",".join(endpoints)
    with KVClient(endpoints, timeout=timeout, tls=tls) as client:
        statuses = client.status(timeout=timeout)
        cluster_ids = {s.cluster_id for s in statuses if s.reachable and s.cluster_id}
        if not cluster_ids:
            errors = "; ".join(f"{s.address}: {s.error}" for s in statuses if s.error)
            raise click.ClickException(
                f"cannot join: no member answered at {where} (--join): {errors or 'no answer'}")
        if len(cluster_ids) > 1:
            raise click.ClickException(
                f"cannot join: the --join endpoints belong to different clusters "
                f"({', '.join(sorted(cluster_ids))})")
        try:
            members = client.member_list(timeout=timeout)
        except KVError as exc:
            raise click.ClickException(f"cannot join: member list from {where} failed: "
                                       f"{exc}") from None
    return cluster_ids.pop(), members


def find_self(members: list[MemberInfo], node_id: str | None, listen_peer: str) -> str:
    """This node's id in ``members``: by ``node_id`` (its peer address must then be
    ``listen_peer``), else by ``listen_peer``."""
    by_address = [m for m in members if m.peer_address == listen_peer]
    listing = ", ".join(f"{m.name}={m.peer_address}" for m in members)
    if node_id is not None:
        mine = [m for m in members if m.name == node_id]
        if not mine:
            if by_address:
                raise click.ClickException(
                    f"cannot join: {listen_peer} (--listen-peer) is the peer address of "
                    f"member {by_address[0].name}, not of {node_id} (--id)")
            raise click.ClickException(
                f"cannot join: {node_id} is not a member of the cluster (members: {listing}); "
                f"add it first: kvstore member add {node_id} --peer-urls http://{listen_peer}")
        if mine[0].peer_address != listen_peer:
            raise click.ClickException(
                f"cannot join: member {node_id} was added with peer address "
                f"{mine[0].peer_address}, but --listen-peer is {listen_peer}")
        return node_id
    if not by_address:
        raise click.ClickException(
            f"cannot join: no member has the peer URL of {listen_peer} (--listen-peer) "
            f"(members: {listing}); add this node first (kvstore member add ID --peer-urls "
            f"http://{listen_peer}, or etcdctl member add), or give --id")
    return by_address[0].name


def join(endpoints: list[str], tls: TLSConfig | None, node_id: str | None, listen_peer: str,
         data_dir: str, cluster_id: str | None) -> Joined:
    """Learn what a node started with --join starts with (see the module docstring)."""
    stored = stored_cluster_id(data_dir)
    if stored is not None:
        return _restart(endpoints, tls, node_id, listen_peer, data_dir, stored)
    deadline = time.monotonic() + JOIN_SECONDS
    while True:
        learned, members = ask_cluster(endpoints, tls, JOIN_SECONDS)
        if cluster_id is not None and cluster_id != learned:
            raise click.ClickException(
                f"cannot join: the cluster at {','.join(endpoints)} is {learned}, not "
                f"{cluster_id} (--cluster-id)")
        try:
            me = find_self(members, node_id, listen_peer)
        except click.ClickException:
            # The member that answered may not have applied our addition yet (the add is
            # answered once the leader applied it): ask again for a few seconds.
            if time.monotonic() >= deadline:
                raise
            time.sleep(JOIN_RETRY_SECONDS)
            continue
        return Joined(me, learned, tuple((m.name, m.peer_address, m.learner) for m in members))


def _restart(endpoints: list[str], tls: TLSConfig | None, node_id: str | None,
             listen_peer: str, data_dir: str, stored: str) -> Joined:
    try:
        learned, members = ask_cluster(endpoints, tls, RESTART_CHECK_SECONDS)
    except click.ClickException:
        if node_id is None:
            raise click.ClickException(
                f"{data_dir} already holds this node's data, but without --id its id can "
                f"only be learned from the cluster, and none answered at "
                f"{','.join(endpoints)} (--join): pass --id") from None
        return Joined(node_id, stored, None)  # the recorded membership is all it needs
    if learned != stored:
        raise click.ClickException(
            f"cannot join: data dir {data_dir} already holds data of cluster {stored}, "
            f"and the cluster at {','.join(endpoints)} (--join) is {learned}: use an empty "
            "data dir")
    if node_id is None:
        node_id = find_self(members, None, listen_peer)
    return Joined(node_id, stored, None)
