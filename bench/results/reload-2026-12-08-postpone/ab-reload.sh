#!/bin/bash
set -e
R=/work/main/bench/results/reload-2026-12-08-postpone
for round in 1 2; do
  (cd /work/wt/before && OUT=$R/before-alone$round LATENCY=0 REPS=6 SETTLE=5 bash bench/reload/run.sh > /dev/null 2>&1)
  (cd /work/main && OUT=$R/after-alone$round LATENCY=0 REPS=6 SETTLE=5 bash bench/reload/run.sh > /dev/null 2>&1)
  (cd /work/wt/before && OUT=$R/before-lat$round REPS=5 SETTLE=8 bash bench/reload/run.sh > /dev/null 2>&1)
  (cd /work/main && OUT=$R/after-lat$round REPS=5 SETTLE=8 bash bench/reload/run.sh > /dev/null 2>&1)
done
echo done > $R/ab-done
