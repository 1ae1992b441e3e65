#!/bin/bash
cd /tmp
run() { # tag scheduler tree gogc
  echo "=== $1 $(date +%T)"
  EXP_GOGC=$4 PYTHONPATH=/tmp/$3 /work/main/.venv/bin/python -m fulcrum.cli bench \
    --nodes 1000 --pods 25000 --configmaps 0 --scheduler $2 --rebuild 0 --name gc -o json \
    > /tmp/exp-gogc/$1.json 2> /tmp/exp-gogc/$1.log
  echo "rc=$?"; grep -E "bound in|took" /tmp/exp-gogc/$1.log
}
run g800-2 fulcrum gogc 800
run shipped-3 fulcrum final ""
echo DONE
