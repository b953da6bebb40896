"""`kvstore cluster restore FILE --nodes N --dir DIR`: a new local cluster from a backup.

Every node's data dir is built from the same file with the same membership (the new
layout's nodes, all voters) and the same new cluster id (kvstore.storage.backup), then
the nodes start as `cluster up` starts them. DIR must not hold a cluster already: a
restore never overwrites one.
"""

from __future__ import annotations

import time

from kvstore.cluster.layout import Layout
from kvstore.cluster.manager import CLUSTER_FILE, ClusterError, ClusterManager, ClusterState
from kvstore.state.membership import Member
from kvstore.storage.backup import BackupError, new_cluster_id, read_backup, restore_data_dir


def restore_cluster(manager: ClusterManager, backup: str, layout: Layout, *,
                    tls: bool = False, timeout: float = 10.0
                    ) -> tuple[ClusterState, str, float]:
    """Build every node's data dir from `backup` and start the cluster; returns (its
    state, the leader's id, seconds spent restoring the data dirs)."""
    if (manager.dir / CLUSTER_FILE).exists():
        raise ClusterError(f"{manager.dir} already holds a cluster: restore into a new --dir")
    members = [Member(s.id, s.peer_address) for s in layout.nodes]
    started = time.monotonic()
    try:
        _, _, sha = read_backup(backup)
        cluster_id = new_cluster_id(sha, members)
        for spec in layout.nodes:
            restore_data_dir(backup, str(manager.dir / spec.id), spec.id, members, cluster_id)
    except BackupError as err:
        raise ClusterError(str(err)) from None
    restored = time.monotonic() - started
    state, leader = manager.up(layout, timeout=timeout, tls=tls, cluster_id=cluster_id)
    return state, leader, restored
