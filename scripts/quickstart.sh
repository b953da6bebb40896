#!/usr/bin/env bash
# Install kvstore into ./.venv, start a local 3-node cluster in ./kvstore-cluster,
# write a key and read it back. The cluster keeps running; stop it with
#   .venv/bin/kvstore cluster down
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q .
KV=.venv/bin/kvstore
if $KV status --dir ./kvstore-cluster >/dev/null 2>&1 && \
   $KV cluster status --dir ./kvstore-cluster --json | grep -q '"role": "leader"'; then
  echo "a cluster is already running in ./kvstore-cluster"
else
  $KV cluster up --nodes 3 --dir ./kvstore-cluster
fi
$KV put greeting "hello, raft"
$KV get greeting
$KV status
echo
echo "The cluster is still running. Try: $KV cluster stop n1 --kill; $KV put k v; $KV cluster status"
echo "Stop it with: $KV cluster down"
