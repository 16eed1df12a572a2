#!/usr/bin/env bash
# Reload benchmark (issue 16): what a reload of a 100,000-rule policy costs
# the real daemon: how long it takes (the daemon's own "took_ms" in its
# "policy reloaded" line, from reading the file to the new policy in
# force) and its peak RSS during the reload against its RSS in the steady
# state before it.
#
#   bash bench/reload/run.sh          (no root needed)
#
# The daemon runs on loopback with firewall.backend: none and the policy
# bench/reload/genpolicy writes (internal/policy/bigpolicy's rules, the
# file BenchmarkReload loads). Nothing queries it. For each of REPS
# repetitions: wait SETTLE seconds, read VmRSS (steady), reset the
# kernel's high-water mark (clear_refs 5), send SIGHUP, wait for the
# reload's log line, read VmHWM (peak). The RSS is the whole process's:
# runtime, buffers, the policy in force and the collector's headroom.
#
# Settings (environment): RULES=100000 REPS=5 SETTLE=10 OUT=<dir>
set -euo pipefail
cd "$(dirname "$0")/../.."
RULES=${RULES:-100000}
REPS=${REPS:-5}
SETTLE=${SETTLE:-10}
OUT=${OUT:-bench/results/tmp/reload-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
DNS=127.0.0.1:25353 ADMIN=127.0.0.1:25380

go build -o "$OUT/fqdngate" ./cmd/fqdngate
go run ./bench/reload/genpolicy -rules "$RULES" -dns $DNS -admin $ADMIN > "$OUT/policy.yaml"
{ echo "date: $(date -u +%FT%TZ)"; echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"; echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rules: $RULES, policy $(stat -c %s "$OUT/policy.yaml") bytes"; } > "$OUT/machine.txt"

"$OUT/fqdngate" run -c "$OUT/policy.yaml" > "$OUT/daemon.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$OUT/daemon.log"; exit 1; }
  sleep 0.1
done
kb() { awk -v k="$1:" '$1==k {print $2}' /proc/$pid/status; }
reloads() { grep -c 'policy reloaded' "$OUT/daemon.log" || true; }

printf '%s\t%s\t%s\t%s\t%s\n' rep took_ms steady_kb peak_kb peak/steady > "$OUT/raw.tsv"
for rep in $(seq "$REPS"); do
  sleep "$SETTLE"
  steady=$(kb VmRSS)
  n=$(reloads)
  echo 5 > /proc/$pid/clear_refs
  kill -HUP $pid
  for _ in $(seq 600); do [ "$(reloads)" -gt "$n" ] && break; sleep 0.05; done
  [ "$(reloads)" -gt "$n" ] || { echo "reload $rep did not finish"; tail "$OUT/daemon.log"; exit 1; }
  peak=$(kb VmHWM)
  took=$(grep 'policy reloaded' "$OUT/daemon.log" | tail -1 | grep -o 'took_ms[=":]*[0-9]*' | grep -o '[0-9]*$')
  printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$took" "$steady" "$peak" "$(awk -v p="$peak" -v s="$steady" 'BEGIN{printf "%.2f", p/s}')" >> "$OUT/raw.tsv"
done
column -t "$OUT/raw.tsv"
echo "raw output: $OUT"
