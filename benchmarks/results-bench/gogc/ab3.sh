#!/bin/bash
cd /tmp
run() { # tag scheduler fulcrum-gogc default-gogc
  echo "=== $1 $(date +%T)"
  EXP_GOGC=$3 EXP_DEFAULT_GOGC=$4 PYTHONPATH=/tmp/gogc /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $2 --rebuild 0 --name gc -o json \
    > /tmp/exp-gogc/$1.json 2> /tmp/exp-gogc/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/exp-gogc/$1.log
}
run default400-1 default "" 400
echo DONE
