"""Consistent-hash ring that routes keys to shards.

Each shard owns `vnodes` points on a 64-bit ring; a key belongs to the shard owning the first
point at or after the key's hash (wrapping around). Points are named only by (shard, vnode),
so the ring of N + 1 shards is the ring of N shards plus the new shard's points: growing the
shard count moves only the keys the new shard takes over (about 1/(N+1) of them).

Hashes are blake2b, never Python's `hash()`: routing must be identical on every replica, in
every process, on every run, or replicas would apply the same command to different shards.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

_RING_SPACE = 1 << 64
# Separate hash domains so a key named like a vnode label does not land exactly on its point.
_KEY_PERSON = b"kvs-key"
_VNODE_PERSON = b"kvs-vnode"


def _hash64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


def key_hash(key: bytes) -> int:
    """Position of `key` on the ring: stable across processes, platforms and Python versions."""
    return _hash64(key, _KEY_PERSON)


class HashRing:
    """Maps keys to shard numbers 0..shards-1 with `vnodes` virtual nodes per shard."""

    def __init__(self, shards: int, vnodes: int) -> None:
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self.shards = shards
        self.vnodes = vnodes
        # Ties (astronomically unlikely) are broken by shard number, so still deterministic.
        points = sorted(
            (_hash64(b"shard-%d-vnode-%d" % (s, v), _VNODE_PERSON), s)
            for s in range(shards)
            for v in range(vnodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [s for _, s in points]

    def shard_for(self, key: bytes) -> int:
        """The shard that stores `key`."""
        i = bisect_right(self._points, key_hash(key))
        return self._owners[i if i < len(self._points) else 0]

    def ownership(self) -> list[float]:
        """Exact fraction of the hash space each shard owns (sums to 1.0)."""
        share = [0] * self.shards
        prev = self._points[-1] - _RING_SPACE
        for point, owner in zip(self._points, self._owners, strict=True):
            share[owner] += point - prev
            prev = point
        return [s / _RING_SPACE for s in share]


@dataclass(frozen=True, slots=True)
class LoadStats:
    """How evenly a sample of keys spreads over the shards."""

    counts: tuple[int, ...]
    mean: float
    max: int
    min: int

    @property
    def max_over_mean(self) -> float:
        return self.max / self.mean if self.mean else 0.0


def load_stats(ring: HashRing, keys: Iterable[bytes]) -> LoadStats:
    """Count how many of `keys` each shard receives."""
    counts = [0] * ring.shards
    for key in keys:
        counts[ring.shard_for(key)] += 1
    total = sum(counts)
    return LoadStats(tuple(counts), total / ring.shards, max(counts), min(counts))


def moved_fraction(before: HashRing, after: HashRing, keys: Iterable[bytes]) -> float:
    """Fraction of `keys` whose shard differs between two rings (the cost of a resize)."""
    moved = total = 0
    for key in keys:
        total += 1
        moved += before.shard_for(key) != after.shard_for(key)
    return moved / total if total else 0.0
