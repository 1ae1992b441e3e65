#!/bin/bash
# fulcrum-scheduler with percentageOfNodesToScore 100 (main) / adaptive / 10, default-scheduler before and after
cd /tmp
run() { # tag pythonpath scheduler
  echo "=== $1 $(date +%T)"
  PYTHONPATH=$2 FULCRUM_TRACES=/work/main/fulcrum/traces/openb /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $3 --rebuild 0 --name ab -o json \
    > /tmp/ab-pct/$1.json 2> /tmp/ab-pct/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/ab-pct/$1.log
}
run default-1 /work/main default
run p100-1 /work/main fulcrum
run adaptive-1 /tmp/adaptive fulcrum
run p10-1 /tmp/pct10 fulcrum
run default-2 /work/main default
echo DONE
