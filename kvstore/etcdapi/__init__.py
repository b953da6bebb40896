"""etcd's v3 gRPC API (KV, Maintenance, Cluster, Watch, Lease) served on every node's client port.

The services are thin translations onto kvstore's own commands and read path (see
kvstore/server/mvcc_requests.py and the MVCC store): etcd clients (etcdctl, aetcd, ...)
talk to any member; a follower forwards what only the leader can do (see forward.py).
Messages are kvstore.etcdpb's (etcd's field numbers, kvstore's own proto package), served
under etcd's service names (methods.py), so the wire paths are /etcdserverpb.KV/Range etc.
"""
