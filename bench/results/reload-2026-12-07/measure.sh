#!/usr/bin/env bash
# quiet measurements for issue 16's reload: before (tmp-before) vs after (main after merge)
set -u
OUT=${OUT:-/tmp/meas}; mkdir -p $OUT
cd /tmp
echo "== policy benchmarks, alternating" | tee $OUT/policy.txt
for i in 1 2 3; do for v in before after; do
  echo "-- $v $i" >> $OUT/policy.txt
  ./pol-$v.test -test.run '^$' -test.bench 'BenchmarkParse$|BenchmarkReload$' -test.benchmem -test.benchtime 5x 2>&1 | grep Bench >> $OUT/policy.txt
done; done
echo "== Decide" >> $OUT/policy.txt
for i in 1 2; do for v in before after; do
  echo "-- $v $i" >> $OUT/policy.txt
  ./pol-$v.test -test.run '^$' -test.bench 'BenchmarkDecide' -test.benchtime 1s 2>&1 | grep Bench >> $OUT/policy.txt
done; done
echo "== dnsfw during reload" > $OUT/dnsfw.txt
for i in 1 2; do for v in before after; do
  echo "-- $v $i" >> $OUT/dnsfw.txt
  ./dnsfw-$v.test -test.run '^$' -test.bench 'BenchmarkQueryDuringReload' -test.benchtime 20000x 2>&1 | grep Bench >> $OUT/dnsfw.txt
done; done
