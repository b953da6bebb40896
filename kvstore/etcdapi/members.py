"""etcd identities of a kvstore cluster: member ids, the cluster id, and member URLs.

etcd names members by uint64 ids; kvstore by strings (n1, n2, ...). The ids here are
derived from the strings alone (first 8 bytes of a SHA-256, big-endian, never 0), so
every node computes the same id for a member, before and after restarts, without
storing anything or asking anyone. etcd treats 0 as "no member" (e.g. Status.leader 0 =
no leader), so 0 is mapped to 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from kvstore.etcdpb import rpc_pb2
from kvstore.state.membership import Member


def stable_id(text: str, domain: str) -> int:
    """A nonzero uint64 from ``text``; ``domain`` keeps member and cluster ids apart."""
    digest = hashlib.sha256(f"{domain}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def member_id(node_id: str) -> int:
    """The etcd member id of kvstore node ``node_id`` (0 for "" = no node)."""
    return stable_id(node_id, "kvstore-member") if node_id else 0


def cluster_id_of(cluster_id: str) -> int:
    """The etcd cluster id of the kvstore cluster id string."""
    return stable_id(cluster_id, "kvstore-cluster")


def url(address: str, tls: bool) -> str:
    """``http(s)://HOST:PORT`` of a ``HOST:PORT`` address ("" stays "")."""
    if not address:
        return ""
    return f"{'https' if tls else 'http'}://{address}"


class MemberBook:
    """Who the members are and where they listen, as this node knows it.

    Peer addresses are in the configuration (--listen-peer and --peers). Client addresses
    of other nodes are not: a node learns them from its peers' streams
    (PeerGate.client_address_of; every node opens a stream to every peer at start), and
    ``learned`` adds any found otherwise (asking the peer, see cluster_service.py).
    """

    def __init__(self, node_id: str, client_address: str, peer_address: str,
                 peers: dict[str, str], client_address_of: Callable[[str], str],
                 client_tls: bool, peer_tls: bool) -> None:
        self.node_id = node_id
        self.client_address = client_address
        self.peer_addresses = {node_id: peer_address, **peers}
        self._client_address_of = client_address_of
        self.client_tls = client_tls
        self.peer_tls = peer_tls
        self.learned: dict[str, str] = {}
        self.ids = {member_id(n): n for n in self.peer_addresses}
        self.learners: set[str] = set()

    def set_members(self, members: Iterable[Member]) -> None:
        """The applied membership changed (kvstore.state.membership)."""
        members = list(members)
        self.peer_addresses = {m.id: m.peer_address for m in members}
        self.learners = {m.id for m in members if m.learner}
        self.ids = {member_id(n): n for n in self.peer_addresses}

    @property
    def node_ids(self) -> list[str]:
        return sorted(self.peer_addresses)

    def client_address_of(self, node_id: str) -> str:
        if node_id == self.node_id:
            return self.client_address
        return self._client_address_of(node_id) or self.learned.get(node_id, "")

    def node_of(self, mid: int) -> str | None:
        """The node id of etcd member id ``mid`` (None if it is no member)."""
        return self.ids.get(mid)

    def unknown_client_addresses(self) -> list[str]:
        return [n for n in self.node_ids if not self.client_address_of(n)]

    def member(self, node_id: str) -> rpc_pb2.Member:
        client = self.client_address_of(node_id)
        return rpc_pb2.Member(
            ID=member_id(node_id), name=node_id,
            peerURLs=[url(self.peer_addresses[node_id], self.peer_tls)],
            clientURLs=[url(client, self.client_tls)] if client else [],
            isLearner=node_id in self.learners)

    def members(self, only: Iterable[str] | None = None) -> list[rpc_pb2.Member]:
        """Members sorted by id, as etcd lists them."""
        names = self.node_ids if only is None else sorted(only)
        return sorted((self.member(n) for n in names), key=lambda m: m.ID)
