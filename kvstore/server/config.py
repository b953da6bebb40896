"""Configuration of one node, as given on `kvstore serve`."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SHARDS = 16
DEFAULT_VNODES = 64
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1 << 20


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    listen: str  # HOST:PORT this node serves clients and peers on
    peers: dict[str, str]  # every other node: id -> HOST:PORT (the node itself is excluded)
    data_dir: str
    shards: int = DEFAULT_SHARDS  # fixed when the data dir is first created
    vnodes: int = DEFAULT_VNODES  # virtual nodes per shard on the hash ring
    tick_ms: int = 50  # one Raft tick; heartbeats go out every tick
    election_ticks: int = 6  # election timeout is randomized in [6, 12) ticks = 300..600 ms
    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MAX_VALUE_BYTES
    snapshot_entries: int = 10_000  # compact the log once it holds this many applied entries
    fault_injection: bool = False  # test flag: serve Admin.SetFaults for drills
    extra: dict[str, str] = field(default_factory=dict)

    def address_of(self, node_id: str) -> str:
        if node_id == self.node_id:
            return self.listen
        return self.peers.get(node_id, "")
