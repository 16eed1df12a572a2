#!/usr/bin/env bash
# Profiles fqdngate's explicit proxy under each workload of run.sh, one CPU
# profile per workload, with bench/proxy/proxyprof (the daemon as "fqdngate
# run" runs it, plus signal-driven profile windows).
#
#   bash bench/proxy/profile.sh
#
# Writes PREFIX.N.{cpu,heap,goroutine} and a `go tool pprof -top` of each
# under bench/results/tmp/proxyprof-<timestamp>/. Traffic goes to 127.0.0.1
# only.
#
# Settings (environment): DURATION=10, IDLE_N=3000,
# WORKLOADS="short32 short256 http bulk16 idle"
set -euo pipefail

DURATION=${DURATION:-10}
IDLE_N=${IDLE_N:-3000}
WORKLOADS=${WORKLOADS:-short32 short256 http bulk16 idle}
PORT=18090
SINK=127.0.0.1:19011
ECHO=127.0.0.1:19012
HTTPB=127.0.0.1:19013

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/bench/results/tmp/proxyprof-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
ulimit -n "$(ulimit -Hn)" || true

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

(cd "$ROOT" && go build -o "$OUT/loadgen" ./bench/proxy/loadgen && CGO_ENABLED=0 go build -o "$OUT/proxyprof" ./bench/proxy/proxyprof)
LG=$OUT/loadgen

cat >"$OUT/fqdngate.yaml" <<YAML
listen: {dns: "", proxy: 127.0.0.1:$PORT, admin: ""}
dns: {upstreams: [127.0.0.1:53]}
proxy: {deny_private: true, max_conns: 100000, idle_timeout: 5m}
log: {file: /dev/null}
rules:
  - name: bench
    to: [127.0.0.0/8]
    ports: ["1-65535"]
YAML

wait_port() {
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}

"$LG" serve -sink $SINK -echo $ECHO -http $HTTPB 2>"$OUT/backends.log" &
PIDS+=($!)
"$OUT/proxyprof" -c "$OUT/fqdngate.yaml" -o "$OUT/prof" >/dev/null 2>"$OUT/proxyprof.log" &
PID=$!
PIDS+=("$PID")
wait_port "${HTTPB##*:}"
wait_port $PORT
P=(-proxy 127.0.0.1:$PORT -pid "$PID")

n=0
for w in $WORKLOADS; do
	n=$((n + 1))
	log "window $n: $w"
	kill -USR1 "$PID"
	case $w in # output goes to $OUT/N.W.txt (not a pipe: idle runs in the background)
	short*) "$LG" short "${P[@]}" -target $ECHO -c "${w#short}" -t "${DURATION}s" ;;
	bulk*) "$LG" bulk "${P[@]}" -target $SINK -n "${w#bulk}" -t "${DURATION}s" ;;
	http) wrk -t2 -c32 -d"${DURATION}s" -s "$ROOT/bench/proxy/proxy.lua" "http://127.0.0.1:$PORT/" -- $HTTPB | grep -E 'Requests/sec|Non-2xx|errors' ;;
	idle)
		"$LG" idle "${P[@]}" -target $ECHO -n "$IDLE_N" -hold 10s &
		lgp=$!
		sleep 9 # warm-up, opening, settling; the heap is taken while held
		;;
	esac >"$OUT/$n.$w.txt"
	kill -USR2 "$PID"
	sleep 1
	if [[ $w == idle ]]; then wait "$lgp"; fi
	cat "$OUT/$n.$w.txt" >&2
	go tool pprof -top -nodecount=40 "$OUT/proxyprof" "$OUT/prof.$n.cpu" >"$OUT/$n.$w.top" 2>/dev/null || true
	go tool pprof -top -cum -nodecount=40 "$OUT/proxyprof" "$OUT/prof.$n.cpu" >"$OUT/$n.$w.cum" 2>/dev/null || true
	go tool pprof -top -sample_index=inuse_space -nodecount=25 "$OUT/proxyprof" "$OUT/prof.$n.heap" >"$OUT/$n.$w.heap.top" 2>/dev/null || true
done
grep proxyprof: "$OUT/proxyprof.log" >&2 || true
log "profiles in $OUT"
