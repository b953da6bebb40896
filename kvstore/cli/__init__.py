"""The `kvstore` command line: serve a node, run a local cluster, talk to a cluster.

Modules: ``app`` (the group, error policy, shared options, where endpoints and TLS
settings come from), ``data`` (put/get/delete/status), ``mvcc`` (txn, compaction; range
output), ``txn_format`` (etcdctl's txn text), ``serve``, ``cluster``, ``alarm``, ``coord``
(watch, lease, lock, elect), ``member`` (member ..., move-leader), ``join`` (serve --join).
"""

import os

# gRPC's C core logs every failed TLS handshake at INFO on stderr, which would break the
# CLI's one-line error rule (and bury a node's log under a refused client's retries).
# Must be set before grpc is first imported; an explicit GRPC_VERBOSITY wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from kvstore.cli import alarm, cluster, coord, data, member, mvcc, serve, snapshot  # noqa: E402,F401 - registers the commands
from kvstore.cli.app import main  # noqa: E402

__all__ = ["main"]
