"""Patroni keeping PostgreSQL highly available on kvstore (scripts/patroni_drill.py)."""
