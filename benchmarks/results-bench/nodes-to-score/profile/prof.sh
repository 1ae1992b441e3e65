#!/bin/bash
# profile fulcrum-scheduler (pprof) and the extender (py-spy) during the scheduling window
# Ran from a worktree of d3f364b (/tmp/prof) whose fulcrum/cluster.py added /debug/pprof/* to
# fulcrum-scheduler's --authorization-always-allow-paths; py-spy from pip (/tmp/spy).
OUT=${OUT:-/tmp/profout}; mkdir -p $OUT
NODES=${NODES:-1000}; PODS=${PODS:-25000}
cd /tmp
PYTHONPATH=/tmp/prof FULCRUM_TRACES=/work/main/fulcrum/traces/openb /work/main/.venv/bin/python -m fulcrum.cli bench \
  --nodes $NODES --pods $PODS --configmaps 0 --scheduler fulcrum --rebuild 0 --name prof -o json > $OUT/bench.json 2> $OUT/bench.log &
BP=$!
until grep -q "pods created in" $OUT/bench.log; do sleep 2; kill -0 $BP || exit 1; done
sleep 15
PORT=$(PYTHONPATH=/tmp/prof /work/main/.venv/bin/python -c "from fulcrum import cluster; print(cluster.scheduler_metrics_port('prof-fulcrum','fulcrum-scheduler'))")
EXT=$(pgrep -f "fulcrum.cli serve" | head -1)
echo "port=$PORT ext=$EXT" > $OUT/ids
curl -sk "https://127.0.0.1:$PORT/debug/pprof/profile?seconds=60" -o $OUT/sched.pprof &
/tmp/spy/bin/py-spy record -p $EXT -d 60 -r 50 -f raw -o $OUT/ext.txt --nonblocking > /dev/null 2>&1 &
wait $BP
echo rc=$? >> $OUT/ids
