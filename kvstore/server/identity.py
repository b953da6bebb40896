"""Who may talk Raft to this node: the cluster id, and the sender's node id.

A cluster id is fixed when a cluster is created (`kvstore cluster up` makes a random
one and passes `--cluster-id`) and stored in each data dir (the file CLUSTER_ID) the
first time a node starts; a node given another id refuses to start. Every peer
stream and InstallSnapshot carries the sender's cluster id and node id as gRPC
metadata; the receiver refuses a call from another cluster, from an id that is not
one of its --peers, or from itself, before reading a message.

Why: without it, a node left running from an earlier cluster on the same ports (or
restarted with an old data dir) takes part in elections and replication of the new
one. Node ids alone do not prevent that (every local cluster has an n1), a cluster id
does. With peer TLS, only certificate holders get this far; the cluster id then
separates clusters that share a CA.

The sender also says where clients reach it (`kvstore-client-address`), so that a
follower's not-leader answer can point a client at the leader's client port: peers
know each other only by their peer addresses.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kvstore.client import parse_endpoint

log = logging.getLogger(__name__)

CLUSTER_ID_FILE = "CLUSTER_ID"
CLUSTER_ID_KEY = "kvstore-cluster-id"
NODE_ID_KEY = "kvstore-node-id"
CLIENT_ADDRESS_KEY = "kvstore-client-address"

_CLUSTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class IdentityError(Exception):
    """The node cannot start with this cluster id; the message says why in one line."""


def check_cluster_id(text: str) -> str:
    """``text`` if it is a valid cluster id (1-64 of [A-Za-z0-9._-]), else ValueError."""
    if not _CLUSTER_ID.match(text):
        raise ValueError(f"bad cluster id {text!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return text


def settle_cluster_id(data_dir: str, given: str | None) -> str:
    """The cluster id this node runs with: the one in ``data_dir``, which must equal
    ``given`` if both exist; ``given`` is stored on first start. Call with the data dir
    locked (the store is open), so two starts cannot race."""
    path = os.path.join(data_dir, CLUSTER_ID_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            stored: str | None = f.read().strip()
    except FileNotFoundError:
        stored = None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
    if stored is not None:
        try:
            check_cluster_id(stored)
        except ValueError:
            raise IdentityError(f"{path} holds a bad cluster id {stored!r}") from None
        if given is not None and given != stored:
            raise IdentityError(
                f"data dir {data_dir} belongs to cluster {stored}, not {given} "
                f"(--cluster-id): refusing to start")
        return stored
    if given is None:
        raise IdentityError(
            f"no cluster id: {path} does not exist; pass --cluster-id ID (the same on "
            "every node of the cluster, chosen when it is created)")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(given + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return given


class Refused(Exception):
    """A peer call is refused; ``code`` is the gRPC status name to abort with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RefusalLog:
    """Logs each kind of refusal once, then at most once a minute with a count.

    A refused peer reconnects every half second or so; one line per attempt would
    bury the log, none would hide the problem.
    """

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is None:
            log.warning("%s", message)
            self._last[key] = (now, 0)
            return
        when, suppressed = last
        if now - when >= self.every:
            extra = f" ({suppressed} more like it since)" if suppressed else ""
            log.warning("%s%s", message, extra)
            self._last[key] = (now, 0)
        else:
            self._last[key] = (when, suppressed + 1)


# What a peer answers a member that was removed from the cluster (the sender stops).
REMOVED_MEMBER = "this member was removed from the cluster"


@dataclass
class PeerGate:
    """Checks the identity a peer call claims, and remembers peers' client addresses."""

    node_id: str
    cluster_id: str
    peers: frozenset[str]
    client_address: str  # ours, sent to peers
    client_addresses: dict[str, str] = field(default_factory=dict)  # learned from peers
    removed: frozenset[str] = frozenset()  # ids removed from the cluster (tombstones)
    refusals: RefusalLog = field(default_factory=RefusalLog)

    def outgoing(self) -> tuple[tuple[str, str], ...]:
        """The metadata of every stream and snapshot this node sends."""
        return ((CLUSTER_ID_KEY, self.cluster_id), (NODE_ID_KEY, self.node_id),
                (CLIENT_ADDRESS_KEY, self.client_address))

    def admit(self, metadata: Iterable[tuple[str, str | bytes]] | None, what: str,
              peer: str) -> str:
        """The sender's node id if the call may proceed; else logs and raises Refused.
        ``peer`` is the connection's address, for the log line."""
        md: dict[str, str] = {}
        for key, value in metadata or ():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            md[key.lower()] = value
        sender = md.get(NODE_ID_KEY, "")
        cluster = md.get(CLUSTER_ID_KEY, "")
        name = f"{sender or '(no node id)'} at {peer}"
        if cluster != self.cluster_id:
            theirs = cluster or "(none)"
            self._refuse(
                f"cluster:{sender}:{theirs}", "FAILED_PRECONDITION",
                f"refused {what} from {name}: cluster id {theirs}, this node "
                f"({self.node_id}) is in cluster {self.cluster_id}")
        if sender in self.removed:
            # Distinct from "not a member": a removed member that missed the commit of its
            # own removal (the leader stops replicating to it) learns it here and stops,
            # as etcd's peers answer a removed member.
            self._refuse(
                f"removed:{sender}", "FAILED_PRECONDITION",
                f"refused {what} from {name}: {REMOVED_MEMBER}")
        if sender not in self.peers:
            self._refuse(
                f"sender:{sender}", "PERMISSION_DENIED",
                f"refused {what} from {name}: not a member of this cluster "
                f"(members: {', '.join(sorted(self.peers)) or 'none'})")
        address = md.get(CLIENT_ADDRESS_KEY, "")
        if address:
            try:
                self.client_addresses[sender] = parse_endpoint(address)
            except ValueError:
                pass  # a leader hint we cannot give; nothing else depends on it
        return sender

    def _refuse(self, key: str, code: str, message: str) -> None:
        self.refusals.warn(key, message)
        raise Refused(code, message)

    def client_address_of(self, node_id: str) -> str:
        """Where clients reach ``node_id`` ("" if it has not told us yet)."""
        if node_id == self.node_id:
            return self.client_address
        return self.client_addresses.get(node_id, "")
