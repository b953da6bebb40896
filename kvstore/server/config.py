"""Configuration of one node, as given on `kvstore serve`."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvstore.state.membership import Member

DEFAULT_QUOTA_BYTES = 2 << 30
DEFAULT_SHARDS = 16
DEFAULT_VNODES = 64
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1 << 20
# Largest snapshot a node accepts over InstallSnapshot. The stream goes to a file, but the
# runtime still reads a received snapshot into memory to verify and install it, so this
# also bounds that allocation; raise it for a larger state.
DEFAULT_MAX_SNAPSHOT_BYTES = 4 << 30


@dataclass(frozen=True)
class ServerTLS:
    """TLS of the client port (etcd: --cert-file, --key-file, --trusted-ca-file,
    --client-cert-auth). ``trusted_ca_file`` is needed only to check client certificates."""

    cert_file: str
    key_file: str
    trusted_ca_file: str | None = None
    client_cert_auth: bool = False


@dataclass(frozen=True)
class PeerTLS:
    """TLS of the peer port and of this node's streams to its peers: always mutual (etcd:
    --peer-cert-file, --peer-key-file, --peer-trusted-ca-file, --peer-cert-allowed-cn)."""

    cert_file: str
    key_file: str
    trusted_ca_file: str
    allowed_cn: str | None = None


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    listen: str  # HOST:PORT this node serves clients on (the KV service)
    peers: dict[str, str]  # every other node: id -> its PEER HOST:PORT (the node excluded)
    data_dir: str
    listen_peer: str = ""  # HOST:PORT for Raft streams, InstallSnapshot and the Admin service
    # What other nodes tell clients this node's client address is (leader hints); defaults
    # to `listen`, which is wrong only when that is a wildcard such as 0.0.0.0.
    advertise_client: str = ""
    cluster_id: str | None = None  # None: the one stored in the data dir
    shards: int = DEFAULT_SHARDS  # fixed when the data dir is first created
    vnodes: int = DEFAULT_VNODES  # virtual nodes per shard on the hash ring
    tick_ms: int = 50  # one Raft tick; heartbeats go out every tick
    election_ticks: int = 6  # election timeout is randomized in [6, 12) ticks = 300..600 ms
    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MAX_VALUE_BYTES
    snapshot_entries: int = 10_000  # compact the log once it holds this many applied entries
    max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES
    fault_injection: bool = False  # test flag: serve Admin.SetFaults for drills
    # Past this many bytes of data the leader raises the NOSPACE alarm (etcd's flag).
    quota_backend_bytes: int = DEFAULT_QUOTA_BYTES
    # Seconds between the leader's corruption checks (members' hashes at one log index);
    # 0 turns them off.
    corrupt_check_interval: float = 300.0
    # http://HOST:PORT serving /metrics and /health (etcd's --listen-metrics); "" for none.
    listen_metrics: str = ""
    log_format: str = "text"  # "text" or "json" (one JSON object per line)
    client_tls: ServerTLS | None = None
    peer_tls: PeerTLS | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # The membership to start from when the data dir has none recorded: set by `--join`
    # (learned from the cluster); None means this node and --peers, all voters.
    initial_members: tuple[Member, ...] | None = None

    def bootstrap_members(self) -> list[Member]:
        """The membership a new data dir starts from."""
        if self.initial_members is not None:
            return list(self.initial_members)
        return [Member(self.node_id, self.listen_peer),
                *(Member(nid, addr) for nid, addr in self.peers.items())]

    @property
    def client_address(self) -> str:
        """The address clients reach this node at (what leader hints name)."""
        return self.advertise_client or self.listen
