"""Benchmarks for kvstore; run from a checkout with `python -m bench` (see README)."""
