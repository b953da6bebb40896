"""Fault drills on real `kvstore serve` processes (see :mod:`tests.faults.drill`).

A drill starts a 3- or 5-node cluster on loopback with ``--fault-injection``, runs
concurrent clients that record a lincheck history while a seeded nemesis kills,
pauses and partitions nodes, then heals everything and checks linearizability,
that no acknowledged write was lost, and that every replica converged.

    flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m pytest -m faults
    flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m tests.faults.soak --runs 20
"""
