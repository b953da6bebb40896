"""Local cluster process manager behind `kvstore cluster ...` (see manager.py)."""

from kvstore.cluster.layout import Layout, LayoutError, NodeSpec, default_layout, load_layout
from kvstore.cluster.manager import (
    CLUSTER_FILE,
    DEFAULT_DIR,
    ClusterError,
    ClusterManager,
    ClusterState,
    NodeRecord,
    load_state,
    node_running,
)

__all__ = [
    "CLUSTER_FILE",
    "DEFAULT_DIR",
    "ClusterError",
    "ClusterManager",
    "ClusterState",
    "Layout",
    "LayoutError",
    "NodeRecord",
    "NodeSpec",
    "default_layout",
    "load_layout",
    "load_state",
    "node_running",
]
