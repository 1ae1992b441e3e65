#!/bin/bash
cd /tmp
run() { # tag scheduler nodes-to-score
  echo "=== $1 $(date +%T)"
  PYTHONPATH=/work/main FULCRUM_TRACES=/work/main/fulcrum/traces/openb /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $2 --nodes-to-score $3 --rebuild 0 --name ab -o json \
    > /tmp/ab-fit/$1.json 2> /tmp/ab-fit/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/ab-fit/$1.log
}
run fit10-2 fulcrum 10
run default-4 default 100
run fit100-2 fulcrum 100
run fit0-2 fulcrum 0
echo "=== seed $(date +%T)"
PYTHONPATH=/work/main FULCRUM_TRACES=/work/main/fulcrum/traces/openb /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes-to-score 10 --rebuild 0 -o json > /tmp/ab-fit/seed-10.json 2> /tmp/ab-fit/seed-10.log
echo "rc=$?"; grep -E "bound in|took" /tmp/ab-fit/seed-10.log
echo DONE
