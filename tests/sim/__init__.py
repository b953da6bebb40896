"""Deterministic simulation of a kvstore cluster.

The production node runtime (NodeRuntime, with its real Raft core), the production service
rules (KVRules) and real state machines (MemoryNodeStore) run in one process on a virtual
clock, with a simulated network (drops, duplicates, delays, reordering, partitions),
simulated disks (a write takes time; a crash before it completes loses it) and simulated
clients that use the real client's retry policy. Everything is derived from one seed, so a
failing run replays exactly:

    pytest tests/sim --seed 1234            # replay one seed (3 and 5 nodes)
    python -m tests.sim.soak --seeds 5000   # soak thousands of seeds

Modules: world (clock, events, trace), network, disk, node (the virtual-time shell around
NodeRuntime), service (the shell around KVRules), clients, nemesis (faults), invariants,
runner, soak.
"""
