#!/usr/bin/env bash
# Reload benchmark (issue 16): what a reload of a 100,000-rule policy costs
# the real daemon, and the answers it serves meanwhile.
#
#   bash bench/reload/run.sh          (no root needed)
#
# The daemon runs on loopback with firewall.backend: none and the policy
# bench/reload/genpolicy writes (internal/policy/bigpolicy's rules, the
# file BenchmarkReload loads, and one rule for **.bench.example), and
# forwards to bench/dns/upstream. Throughout, bench/dns/dnslat asks it
# for 1,000 names under bench.example with one query in flight (after the
# first round from the cache) and records every answer's latency.
#
# For each of REPS repetitions: wait SETTLE seconds, read VmRSS (steady),
# reset the kernel's high-water mark (clear_refs 5), send SIGHUP, wait for
# the reload's log line, read VmHWM (peak). Reported per reload: its
# duration as the daemon logs it ("took_ms", from reading the file to the
# new policy in force), steady and peak RSS (the whole process: runtime,
# buffers, the policy in force and the collector's headroom). Then the
# answers sent while a reload ran (from SIGHUP to SIGHUP + took_ms +
# collect_ms, the collection that follows it)
# against all others: count, losses, p50/p90/p99 and their ratio.
#
set -euo pipefail
cd "$(dirname "$0")/../.."
RULES=${RULES:-100000}
REPS=${REPS:-5}
SETTLE=${SETTLE:-10}
LATENCY=${LATENCY:-1}
OUT=${OUT:-bench/results/tmp/reload-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
DNS=127.0.0.1:25353 ADMIN=127.0.0.1:25380 UP=127.0.0.1:25300

go build -o "$OUT/fqdngate" ./cmd/fqdngate
go build -o "$OUT/upstream" ./bench/dns/upstream
go build -o "$OUT/dnslat" ./bench/dns/dnslat
go run ./bench/reload/genpolicy -rules "$RULES" -dns $DNS -admin $ADMIN -upstream $UP > "$OUT/policy.yaml"
bash bench/dns/genqueries.sh 1000 > "$OUT/names.txt"
{ echo "date: $(date -u +%FT%TZ)"; echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"; echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rules: $RULES, policy $(stat -c %s "$OUT/policy.yaml") bytes"; } > "$OUT/machine.txt"

"$OUT/upstream" -addr $UP -readers 1 > "$OUT/upstream.log" 2>&1 &
up=$!
"$OUT/fqdngate" run -c "$OUT/policy.yaml" > "$OUT/daemon.log" 2>&1 &
pid=$!
lat=
trap 'kill $pid $up $lat 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$OUT/daemon.log"; exit 1; }
  sleep 0.1
done
kb() { awk -v k="$1:" '$1==k {print $2}' /proc/$pid/status; }
reloads() { grep -c 'policy reloaded' "$OUT/daemon.log" || true; }

# Timed answers from the first repetition's wait to the end.
[ "$LATENCY" = 1 ] && "$OUT/dnslat" -s $DNS -d "$OUT/names.txt" -w 2000 -for $(( (SETTLE + 2) * REPS + 5 ))s -trace "$OUT/trace.txt" > "$OUT/dnslat.txt" 2>&1 &
[ "$LATENCY" = 1 ] && lat=$!
: > "$OUT/windows.txt"
printf '%s\t%s\t%s\t%s\t%s\t%s\n' rep took_ms collect_ms steady_kb peak_kb peak/steady > "$OUT/raw.tsv"
for rep in $(seq "$REPS"); do
  sleep "$SETTLE"
  steady=$(kb VmRSS)
  n=$(reloads)
  echo 5 > /proc/$pid/clear_refs
  t0=$(date +%s%N)
  kill -HUP $pid
  for _ in $(seq 600); do [ "$(reloads)" -gt "$n" ] && break; sleep 0.05; done
  [ "$(reloads)" -gt "$n" ] || { echo "reload $rep did not finish"; tail "$OUT/daemon.log"; exit 1; }
  peak=$(kb VmHWM)
  line=$(grep 'policy reloaded' "$OUT/daemon.log" | tail -1)
  took=$(echo "$line" | grep -o 'took_ms[=":]*[0-9]*' | grep -o '[0-9]*$')
  collect=$(echo "$line" | grep -o 'collect_ms[=":]*[0-9]*' | grep -o '[0-9]*$' || echo 0)
  echo "$t0 $(( t0 + (took + collect) * 1000000 ))" >> "$OUT/windows.txt"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$took" "$collect" "$steady" "$peak" "$(awk -v p="$peak" -v s="$steady" 'BEGIN{printf "%.2f", p/s}')" >> "$OUT/raw.tsv"
done
column -t "$OUT/raw.tsv"
if [ "$LATENCY" = 1 ]; then
  wait $lat || { cat "$OUT/dnslat.txt"; exit 1; }
  lat=
  cat "$OUT/dnslat.txt"
  go run ./bench/reload/during -trace "$OUT/trace.txt" -windows "$OUT/windows.txt" | tee "$OUT/during.txt"
fi
echo "raw output: $OUT"
