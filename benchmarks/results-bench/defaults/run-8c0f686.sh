#!/bin/bash
# `fulcrum bench` with its defaults (1,000 nodes, 25,000 pods, 150,000 configmaps, both
# schedulers, the 1,000-pod local-rebuild roll), at the commit of /tmp/head
cd /tmp
echo "=== $(date +%T) $(git -C /tmp/head rev-parse --short HEAD)"
PYTHONPATH=/tmp/head /work/main/.venv/bin/python -m fulcrum.cli bench -o json > /tmp/defaults/bench.json 2> /tmp/defaults/bench.log
echo "rc=$? $(date +%T)"
