#!/bin/bash
# fulcrum-scheduler's GOGC, 100 (Go's default) against 400; P=100; alternated
cd /tmp
run() { # tag gogc
  echo "=== $1 $(date +%T)"
  EXP_GOGC=$2 PYTHONPATH=/tmp/gogc /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler fulcrum --rebuild 0 --name gc -o json \
    > /tmp/exp-gogc/$1.json 2> /tmp/exp-gogc/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/exp-gogc/$1.log
}
run g100-1 100
run g400-1 400
run g100-2 100
run g400-2 400
echo DONE
