"""Cluster definitions: which nodes a local cluster has, where they listen, how they are tuned.

The built-in layout (``default_layout``) is what ``kvstore cluster up`` uses
without ``--config``: node i is "n{i}", serving clients on 127.0.0.1:base_port+i-1,
peers on 127.0.0.1:base_port+100+i-1 (PEER_PORT_OFFSET) and metrics on
http://127.0.0.1:base_port+200+i-1 (METRICS_PORT_OFFSET). The files in the
repository's top-level ``cluster/`` directory (local-3.json, local-5.json) describe
the same layouts explicitly and can be passed with ``--config``; a test keeps the
two in agreement.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 7001
# A node's peer port is its client port plus this, unless a definition says otherwise
# (the contract of local clusters: clients at P+i-1, peers at P+100+i-1).
PEER_PORT_OFFSET = 100
# ... and its metrics port (/metrics, /health) its client port plus this.
METRICS_PORT_OFFSET = 200
DEFAULT_NODES = 3
MIN_NODES = 3
MAX_NODES = 5

# Settings a definition may carry, mapped to the `kvstore serve` option they set.
SETTING_OPTIONS: dict[str, str] = {
    "tick_ms": "--tick-ms",
    "election_ticks": "--election-ticks",
    "shards": "--shards",
    "max_value_bytes": "--max-value-bytes",
    "snapshot_entries": "--snapshot-entries",
    "max_snapshot_bytes": "--max-snapshot-bytes",
    "quota_backend_bytes": "--quota-backend-bytes",
    "corrupt_check_interval": "--corrupt-check-interval",
}
# Boolean settings, mapped to the `kvstore serve` flag that ``true`` turns on. Kept apart
# from SETTING_OPTIONS because a flag takes no value (``"fault_injection": true`` is how
# fault drills start nodes that serve Admin.SetFaults).
SETTING_FLAGS: dict[str, str] = {
    "fault_injection": "--fault-injection",
}

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LayoutError(ValueError):
    """A cluster definition is malformed; the message names the problem."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    id: str
    host: str
    port: int  # the client port
    peer_port: int
    metrics_port: int = 0  # 0: the client port + METRICS_PORT_OFFSET

    @property
    def address(self) -> str:
        """Where clients reach the node."""
        return f"{self.host}:{self.port}"

    @property
    def peer_address(self) -> str:
        """Where the other nodes reach it (Raft, snapshots, the Admin service)."""
        return f"{self.host}:{self.peer_port}"

    @property
    def metrics_address(self) -> str:
        return f"{self.host}:{self.metrics_port or self.port + METRICS_PORT_OFFSET}"

    @property
    def metrics_url(self) -> str:
        """Where the node serves /metrics and /health (`serve --listen-metrics`)."""
        return f"http://{self.metrics_address}"


@dataclass(frozen=True)
class Layout:
    name: str
    nodes: tuple[NodeSpec, ...]
    settings: dict[str, int | bool] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        raise KeyError(node_id)

    def serve_args(self, node_id: str, data_dir: str, extra: list[str] | None = None) -> list[str]:
        """The `kvstore serve` arguments (after "serve") that start ``node_id``; ``extra``
        (the cluster id, TLS files: what belongs to one cluster directory rather than to
        the layout) goes before the settings."""
        me = self.node(node_id)
        peers = ",".join(f"{n.id}={n.peer_address}" for n in self.nodes if n.id != node_id)
        args = ["--id", me.id, "--listen", me.address, "--listen-peer", me.peer_address,
                "--listen-metrics", me.metrics_url, "--peers", peers, "--data-dir", data_dir,
                *(extra or [])]
        for key, value in self.settings.items():
            if key in SETTING_FLAGS:
                if value:
                    args.append(SETTING_FLAGS[key])
            else:
                args += [SETTING_OPTIONS[key], str(value)]
        return args


def default_layout(
    nodes: int = DEFAULT_NODES, base_port: int = DEFAULT_BASE_PORT, host: str = DEFAULT_HOST
) -> Layout:
    """Node i = "n{i}" with clients on host:base_port+i-1, peers on
    host:base_port+100+i-1 and metrics on host:base_port+200+i-1 (the contract of
    `kvstore cluster up`)."""
    if not MIN_NODES <= nodes <= MAX_NODES:
        raise LayoutError(f"--nodes must be between {MIN_NODES} and {MAX_NODES}, not {nodes}")
    if not 0 < base_port or base_port + METRICS_PORT_OFFSET + nodes - 1 > 65535:
        raise LayoutError(f"--base-port {base_port} leaves no room for {nodes} nodes' client, "
                          f"peer and metrics ports (up to base-port+"
                          f"{METRICS_PORT_OFFSET + nodes - 1})")
    specs = tuple(
        NodeSpec(f"n{i}", host, base_port + i - 1, base_port + PEER_PORT_OFFSET + i - 1,
                 base_port + METRICS_PORT_OFFSET + i - 1)
        for i in range(1, nodes + 1)
    )
    return Layout(name=f"local-{nodes}", nodes=specs)


def layout_from_json(data: Any, source: str = "definition") -> Layout:
    """Parse a definition like cluster/local-3.json, checking everything it states."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise LayoutError(f"{source}: expected an object with a 'nodes' list")
    default_host = data.get("host", DEFAULT_HOST)
    specs: list[NodeSpec] = []
    for i, item in enumerate(data["nodes"]):
        if not isinstance(item, dict):
            raise LayoutError(f"{source}: nodes[{i}] is not an object")
        node_id, host, port = item.get("id"), item.get("host", default_host), item.get("port")
        if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
            raise LayoutError(f"{source}: nodes[{i}] has a bad id {node_id!r}")
        if not isinstance(host, str) or not host:
            raise LayoutError(f"{source}: node {node_id} has a bad host {host!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise LayoutError(f"{source}: node {node_id} has a bad port {port!r}")
        peer_port = item.get("peer_port", port + PEER_PORT_OFFSET)
        if not isinstance(peer_port, int) or isinstance(peer_port, bool) \
                or not 0 < peer_port < 65536:
            raise LayoutError(f"{source}: node {node_id} has a bad peer_port {peer_port!r}")
        metrics_port = item.get("metrics_port", port + METRICS_PORT_OFFSET)
        if not isinstance(metrics_port, int) or isinstance(metrics_port, bool) \
                or not 0 < metrics_port < 65536:
            raise LayoutError(f"{source}: node {node_id} has a bad metrics_port "
                              f"{metrics_port!r}")
        specs.append(NodeSpec(node_id, host, port, peer_port, metrics_port))
    if not specs:
        raise LayoutError(f"{source}: no nodes")
    if len({s.id for s in specs}) != len(specs):
        raise LayoutError(f"{source}: duplicate node ids")
    if len({a for s in specs for a in (s.address, s.peer_address, s.metrics_address)}
           ) != 3 * len(specs):
        raise LayoutError(f"{source}: duplicate node addresses (client, peer and metrics "
                          "ports must all differ)")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise LayoutError(f"{source}: 'settings' must be an object")
    for key, value in settings.items():
        if key in SETTING_FLAGS:
            if not isinstance(value, bool):
                raise LayoutError(f"{source}: setting {key} must be true or false")
            continue
        if key not in SETTING_OPTIONS:
            known = ", ".join([*SETTING_OPTIONS, *SETTING_FLAGS])
            raise LayoutError(f"{source}: unknown setting {key!r} (known: {known})")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise LayoutError(f"{source}: setting {key} must be a positive integer")
    name = data.get("name") or Path(source).stem
    return Layout(name=str(name), nodes=tuple(specs), settings=dict(settings))


def load_layout(path: str | Path) -> Layout:
    """Read a definition file; errors become one-line LayoutErrors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LayoutError(f"cannot read cluster definition {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    return layout_from_json(data, str(path))
