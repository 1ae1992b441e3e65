#!/bin/bash
cd /tmp
run() { # tag scheduler nodes-to-score
  echo "=== $1 $(date +%T)"
  PYTHONPATH=/work/main FULCRUM_TRACES=/work/main/fulcrum/traces/openb /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $2 --nodes-to-score $3 --rebuild 0 --name ab -o json \
    > /tmp/ab-fit/$1.json 2> /tmp/ab-fit/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/ab-fit/$1.log
}
run fit0-3 fulcrum 0
run fit0-4 fulcrum 0
echo DONE
