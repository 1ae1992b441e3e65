#!/bin/bash
# the 1,000-pod local-rebuild roll beside a plain one, fulcrum-scheduler at 100 and 10, alternated
cd /work/main
for run in 1 2; do for p in 100 10; do
  flock /tmp/fulcrum-cluster.lock timeout 1500 .venv/bin/fulcrum bench --nodes 1000 --pods 1 --configmaps 0 --rebuild 1000 --scheduler fulcrum --nodes-to-score $p --name rb$p-$run -o json > /tmp/rb/p$p-$run.json 2> /tmp/rb/p$p-$run.log
done; done
