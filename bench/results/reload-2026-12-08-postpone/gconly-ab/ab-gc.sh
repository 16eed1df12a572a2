#!/bin/bash
R=/tmp/ab-gc
mkdir -p $R
for round in 1 2 3; do
  (cd /work/wt/gconly && OUT=$R/gconly-$round LATENCY=0 REPS=6 SETTLE=5 bash bench/reload/run.sh > /dev/null 2>&1)
  (cd /work/main && OUT=$R/freeos-$round LATENCY=0 REPS=6 SETTLE=5 bash bench/reload/run.sh > /dev/null 2>&1)
done
echo done > $R/done
