#!/bin/bash
# fulcrum bench, before (c97f5e9: Fulcrum binds every pod) and after (bind split), alternated.
cd /tmp
mkdir -p /tmp/ab-bind
for i in 1 2; do
  for v in before after; do
    if [ $v = before ]; then export PYTHONPATH=/tmp/before; else export PYTHONPATH=/work/main; fi
    echo "=== $v run $i $(date +%T)"
    FULCRUM_TRACES=/work/main/fulcrum/traces/openb /work/main/.venv/bin/python -m fulcrum.cli bench \
      --nodes 500 --pods 10000 --configmaps 0 --rebuild 0 -o json \
      > benchmarks/results-bench/bind-split/$v-$i.json 2> benchmarks/results-bench/bind-split/$v-$i.log
    echo "rc=$?"; grep -E "bound in|took" benchmarks/results-bench/bind-split/$v-$i.log
  done
done
echo DONE
