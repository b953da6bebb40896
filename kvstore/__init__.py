"""kvstore: a Raft-replicated, sharded key-value store on gRPC and LMDB."""

__version__ = "0.1.0"
