#!/bin/bash
# openb GPU placement through the live path, fulcrum-scheduler at percentageOfNodesToScore 10 and 100
cd /work/main
for p in 10 100; do
  flock /tmp/fulcrum-cluster.lock timeout 2400 .venv/bin/fulcrum compare --name gpu-$p --nodes 1523 --pods 10000 --nodes-to-score $p -o json > /tmp/gpu/p$p.json 2> /tmp/gpu/p$p.log
done
