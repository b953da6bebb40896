"""`kvstore member ...` and `kvstore move-leader`: change who is in the cluster.

They use etcd's Cluster and Maintenance calls (kvstore.client.membership), which every
node serves on its client port, so any endpoint will do (followers forward changes to the
leader). Members are named by node id (n4) or by etcd's hex member id (as etcdctl prints
it), whichever is given. A member is added with its node id as its name; start it
afterwards with `kvstore serve --join ENDPOINTS`.
"""

from __future__ import annotations

import json

import click

from kvstore.cli.app import client_options, main, resolve_target
from kvstore.client import KVClient, MemberInfo


def _urls(text: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise click.BadParameter("give at least one URL", param_hint="--peer-urls")
    return urls


def resolve_member(members: list[MemberInfo], ident: str) -> MemberInfo:
    """The member named ``ident`` (a node id), else with hex member id ``ident``."""
    for m in members:
        if m.name == ident:
            return m
    try:
        wanted = int(ident, 16)
    except ValueError:
        wanted = None
    for m in members:
        if m.id == wanted:
            return m
    listing = ", ".join(f"{m.name} ({m.hex_id})" for m in members) or "none"
    raise click.ClickException(f"no member {ident} (members: {listing})")


def _leader(client: KVClient) -> str | None:
    """The leader's node id, as the endpoints report it (None if none knows one)."""
    statuses = [s for s in client.status(timeout=2.0) if s.reachable]
    leaders = [s.id for s in statuses if s.role == "leader" and s.id]
    hints = [s.leader_id for s in statuses if s.leader_id]
    return (leaders or hints or [None])[0]


def _summary(members: list[MemberInfo]) -> str:
    return ", ".join(f"{m.name}{' (learner)' if m.learner else ''}" for m in members)


@main.group()
def member() -> None:
    """List and change the cluster's members (etcd's Cluster API)."""


@member.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@client_options
def member_list(as_json: bool, endpoints: str | None, directory: str, timeout: float,
                **tls: str | None) -> None:
    """One line per member: hex id, name, peer URL, client URL, voter or learner, and
    "leader" on the leader's line."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        members = client.member_list()
        leader = _leader(client)
    if as_json:
        click.echo(json.dumps({"members": [{**m.to_json(), "leader": m.name == leader}
                                           for m in members]}))
        return
    for m in members:
        role = "learner" if m.learner else "voter"
        fields = [m.hex_id, m.name, ",".join(m.peer_urls) or "-", ",".join(m.client_urls) or "-",
                  role + (" leader" if m.name == leader else "")]
        click.echo("  ".join(fields))


@member.command("add")
@click.argument("node_id")
@click.option("--peer-urls", required=True, metavar="URL[,URL]",
              help="Where the other members reach the new node's peer port, e.g. "
                   "http://127.0.0.1:7104.")
@click.option("--learner", is_flag=True, help="Add it as a learner (promote it later).")
@client_options
def member_add(node_id: str, peer_urls: str, learner: bool, endpoints: str | None,
               directory: str, timeout: float, **tls: str | None) -> None:
    """Add NODE_ID; then start it with `kvstore serve --id NODE_ID --join ENDPOINTS ...`."""
    target = resolve_target(endpoints, directory, **tls)
    with target.client(timeout) as client:
        added = client.member_add(_urls(peer_urls), learner=learner, name=node_id)
    kind = "learner" if learner else "voter"
    click.echo(f"added {added.name} (member id {added.hex_id}) as a {kind} at "
               f"{','.join(added.peer_urls)}; start it with: kvstore serve --id {added.name} "
               f"--listen-peer {added.peer_address} --join {','.join(target.endpoints)} ...")


@member.command("promote")
@click.argument("member")
@client_options
def member_promote(member: str, endpoints: str | None, directory: str, timeout: float,
                   **tls: str | None) -> None:
    """Make the learner MEMBER (node id or hex member id) a voter; refused until it has
    caught up (holds 90% of the leader's log)."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        m = resolve_member(client.member_list(), member)
        left = client.member_promote(m.id)
    click.echo(f"promoted {m.name} (member id {m.hex_id}); members: {_summary(left)}")


@member.command("remove")
@click.argument("member")
@client_options
def member_remove(member: str, endpoints: str | None, directory: str, timeout: float,
                  **tls: str | None) -> None:
    """Remove MEMBER (node id or hex member id); its process stops itself once it applies
    its removal. A removed id can never be added again."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        m = resolve_member(client.member_list(), member)
        left = client.member_remove(m.id)
    click.echo(f"removed {m.name} (member id {m.hex_id}); members: {_summary(left)}")


@member.command("update")
@click.argument("member")
@click.option("--peer-urls", required=True, metavar="URL[,URL]",
              help="The member's new peer URL.")
@client_options
def member_update(member: str, peer_urls: str, endpoints: str | None, directory: str,
                  timeout: float, **tls: str | None) -> None:
    """Change where the other members reach MEMBER's peer port."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        m = resolve_member(client.member_list(), member)
        client.member_update(m.id, _urls(peer_urls))
    click.echo(f"updated {m.name} (member id {m.hex_id}): peer URLs {peer_urls}")


@main.command("move-leader")
@click.argument("member")
@client_options
def move_leader(member: str, endpoints: str | None, directory: str, timeout: float,
                **tls: str | None) -> None:
    """Hand leadership to the voter MEMBER (node id or hex member id)."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        m = resolve_member(client.member_list(), member)
        client.move_leader(m.id)
    click.echo(f"leadership moved to {m.name} (member id {m.hex_id})")
