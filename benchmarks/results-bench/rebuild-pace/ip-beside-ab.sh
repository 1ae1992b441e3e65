#!/bin/bash
# the IP move beside the Reservation's creation (2e0fa98) against after it (e39289d); alternated
cd /tmp
run() { # tag tree
  echo "=== $1 $(date +%T)"
  PYTHONPATH=/tmp/$2 /work/main/.venv/bin/python /work/main/benchmarks/results-bench/rebuild-pace/timeline.py tl 300 300 > /tmp/exp-par/$1.txt 2> /tmp/exp-par/$1.err
  echo "rc=$?"
}
run before-1 tl-before
run after-1 tl-after
run before-2 tl-before
run after-2 tl-after
echo DONE
