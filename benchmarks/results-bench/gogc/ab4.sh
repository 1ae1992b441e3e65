#!/bin/bash
cd /tmp
run() { # tag scheduler fulcrum-gogc parallelism
  echo "=== $1 $(date +%T)"
  EXP_GOGC=$3 EXP_PAR=$4 PYTHONPATH=/tmp/gogc /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $2 --rebuild 0 --name gc -o json \
    > /tmp/exp-gogc/$1.json 2> /tmp/exp-gogc/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/exp-gogc/$1.log
}
run g400par2-1 fulcrum 400 2
run g800-1 fulcrum 800 ""
run g400-3 fulcrum 400 ""
run default-3 default "" ""
echo DONE
