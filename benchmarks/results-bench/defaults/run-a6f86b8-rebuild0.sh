#!/bin/bash
# `fulcrum bench --rebuild 0` (the defaults without the roll): a second run of the two phases
cd /tmp
echo "=== $(date +%T) $(git -C /tmp/head2 rev-parse --short HEAD)"
PYTHONPATH=/tmp/head2 /work/main/.venv/bin/python -m fulcrum.cli bench --rebuild 0 -o json > /tmp/defaults/bench2.json 2> /tmp/defaults/bench2.log
echo "rc=$? $(date +%T)"
