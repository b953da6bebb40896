"""Consistent-hash ring: stability, minimal movement on resize, and load balance."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvstore.state.ring import HashRing, key_hash, load_stats, moved_fraction

KEYS = [b"key-%d" % i for i in range(20_000)]


def test_hash_is_pinned() -> None:
    # These values are part of the on-disk format: a change would route existing keys to
    # the wrong shard. Never update them without a data migration.
    ring = HashRing(16, 64)
    pinned = {
        b"": 0,
        b"a": 6,
        b"b": 1,
        b"foo": 12,
        b"user:1": 10,
        b"user:2": 8,
        b"user:3": 1,
        b"\x00\xff": 10,
        b"x" * 1000: 9,
    }
    assert {k: ring.shard_for(k) for k in pinned} == pinned
    assert key_hash(b"hello") == 17736770238864967923


def test_hash_is_stable_across_processes() -> None:
    # Python's hash() is salted per process; the ring must not be.
    code = (
        "from kvstore.state.ring import HashRing;"
        "r = HashRing(16, 64);"
        "print([r.shard_for(b'key-%d' % i) for i in range(200)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    ring = HashRing(16, 64)
    assert out.strip() == str([ring.shard_for(b"key-%d" % i) for i in range(200)])


@pytest.mark.parametrize("n", [4, 16])
def test_adding_a_shard_moves_about_one_in_n_plus_one(n: int) -> None:
    before, after = HashRing(n, 64), HashRing(n + 1, 64)
    fraction = moved_fraction(before, after, KEYS)
    ideal = 1 / (n + 1)
    print(f"\nN={n}->{n + 1}: moved {fraction:.4f} of {len(KEYS)} keys (ideal {ideal:.4f})")
    assert abs(fraction - ideal) < 0.25 * ideal
    # Only the new shard takes keys; nothing moves between existing shards.
    for key in KEYS:
        if before.shard_for(key) != after.shard_for(key):
            assert after.shard_for(key) == n


def test_load_balance_with_64_vnodes() -> None:
    ring = HashRing(16, 64)
    stats = load_stats(ring, KEYS)
    ownership = ring.ownership()
    print(
        f"\n16 shards x 64 vnodes over {len(KEYS)} keys: max/mean {stats.max_over_mean:.3f} "
        f"(max {stats.max}, min {stats.min}, mean {stats.mean:.0f}); "
        f"exact max share x16 = {max(ownership) * 16:.3f}"
    )
    assert sum(stats.counts) == len(KEYS)
    assert stats.max_over_mean < 1.4
    assert stats.min > 0.6 * stats.mean
    assert sum(ownership) == pytest.approx(1.0)


def test_more_vnodes_balance_better() -> None:
    few = load_stats(HashRing(16, 4), KEYS).max_over_mean
    many = load_stats(HashRing(16, 256), KEYS).max_over_mean
    print(f"\nmax/mean: 4 vnodes {few:.3f}, 256 vnodes {many:.3f}")
    assert many < few


def test_single_shard_takes_everything() -> None:
    ring = HashRing(1, 8)
    assert {ring.shard_for(k) for k in KEYS[:100]} == {0}


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        HashRing(0, 64)
    with pytest.raises(ValueError):
        HashRing(4, 0)
