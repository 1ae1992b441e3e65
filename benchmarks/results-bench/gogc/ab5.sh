#!/bin/bash
# the shipped setting (0ed469c: GOGC=800, GOMEMLIMIT=1800MiB), alternated with default-scheduler
cd /tmp
run() { # tag scheduler
  echo "=== $1 $(date +%T)"
  PYTHONPATH=/tmp/final /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $2 --rebuild 0 --name gc -o json \
    > /tmp/exp-gogc/$1.json 2> /tmp/exp-gogc/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/exp-gogc/$1.log
}
run shipped-1 fulcrum
run default-4 default
run shipped-2 fulcrum
echo DONE
