#!/bin/bash
# best-fit tie-break (main, uncommitted) at percentageOfNodesToScore 0 (adaptive), 10, 100; default between
cd /tmp
run() { # tag scheduler nodes-to-score
  echo "=== $1 $(date +%T)"
  PYTHONPATH=/work/main FULCRUM_TRACES=/work/main/fulcrum/traces/openb /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $2 --nodes-to-score $3 --rebuild 0 --name ab -o json \
    > /tmp/ab-fit/$1.json 2> /tmp/ab-fit/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/ab-fit/$1.log
}
run fit0-1 fulcrum 0
run fit10-1 fulcrum 10
run default-3 default 100
run fit100-1 fulcrum 100
echo DONE
