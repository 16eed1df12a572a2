#!/usr/bin/env bash
# profile.sh: CPU and heap profiles of fqdngate's DNS firewall under dnsperf
# load, cache on and off, from bench/dns/fqdngateprof (the daemon as
# "fqdngate run" starts it, with runtime/pprof around it).
#
#   bash bench/dns/profile.sh
#
# Prints "go tool pprof -top" for each; profiles stay under
# bench/results/tmp/profile-<timestamp>/. Traffic goes to 127.0.0.1 only.
set -euo pipefail

DURATION=${DURATION:-15}
UP_PORT=5300
FQ_PORT=5310
FQ_ADMIN=5319
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/bench/results/tmp/profile-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT/bin"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in $UP_PORT $FQ_PORT $FQ_ADMIN; do
	if [[ -n $(ss -Hlnut "sport = :$port") ]]; then
		log "port $port is in use; stop what holds it"
		exit 1
	fi
done
# Built from a commit (FQDNGATE_REF, default HEAD; "worktree": the tree as
# it is), so others' uncommitted edits do not end up in the profile.
FQDNGATE_REF=${FQDNGATE_REF:-HEAD}
SRC=$ROOT
if [[ $FQDNGATE_REF != worktree ]]; then
	SRC=$OUT/src
	mkdir -p "$SRC"
	(cd "$ROOT" && git archive "$FQDNGATE_REF") | tar -x -C "$SRC"
	log "fqdngate at commit $(cd "$ROOT" && git rev-parse --short "$FQDNGATE_REF")"
fi
(cd "$SRC" && go build -o "$OUT/bin/upstream" ./bench/dns/upstream && go build -o "$OUT/bin/fqdngateprof" ./bench/dns/fqdngateprof)
bash "$ROOT/bench/dns/genqueries.sh" >"$OUT/queries.txt"
"$OUT/bin/upstream" -addr 127.0.0.1:$UP_PORT 2>/dev/null &
PIDS+=("$!")

probe() {
	for _ in $(seq 50); do
		dig +short +tries=1 +time=1 @127.0.0.1 -p "$1" n0.bench.example A 2>/dev/null | grep -q '^198\.51\.100\.' && return 0
		sleep 0.2
	done
	return 1
}
probe $UP_PORT

for cache in on off; do
	pol=$OUT/fqdngate-$cache.yaml
	cat >"$pol" <<-EOF
		listen: {dns: 127.0.0.1:$FQ_PORT, proxy: "", admin: 127.0.0.1:$FQ_ADMIN}
		dns: {upstreams: [127.0.0.1:$UP_PORT], cache: $([[ $cache = on ]] && echo true || echo false), cache_size: 150000, rate_limit: 0}
		firewall: {backend: none}
		log: {file: /dev/null}
		rules:
		  - name: bench
		    to: ["**.bench.example"]
	EOF
	"$OUT/bin/fqdngateprof" -c "$pol" -cpuprofile "$OUT/cpu-$cache.pprof" -memprofile "$OUT/heap-$cache.pprof" >/dev/null 2>"$OUT/fqdngate-$cache.log" &
	pid=$!
	PIDS+=("$pid")
	probe $FQ_PORT
	# One pass to fill the cache and the learned set, then load; the CPU
	# profile covers both, the heap profile is taken at exit.
	dnsperf -s 127.0.0.1 -p $FQ_PORT -d "$OUT/queries.txt" -c 4 -q 200 -t 2 -n 1 >"$OUT/warm-$cache.txt"
	dnsperf -s 127.0.0.1 -p $FQ_PORT -d "$OUT/queries.txt" -c 4 -q 200 -t 2 -l "$DURATION" >"$OUT/dnsperf-$cache.txt"
	grep -E 'Queries per second' "$OUT/dnsperf-$cache.txt" >&2
	grep VmRSS "/proc/$pid/status" >&2
	kill -INT "$pid"
	wait "$pid" || true
	echo "## cache $cache: CPU, flat"
	go tool pprof -top -nodecount=35 "$OUT/bin/fqdngateprof" "$OUT/cpu-$cache.pprof" 2>/dev/null | sed -n '1,45p'
	echo "## cache $cache: CPU, cumulative"
	go tool pprof -top -cum -nodecount=45 "$OUT/bin/fqdngateprof" "$OUT/cpu-$cache.pprof" 2>/dev/null | sed -n '6,55p'
	echo "## cache $cache: heap in use at exit"
	go tool pprof -top -sample_index=inuse_space -nodecount=20 "$OUT/bin/fqdngateprof" "$OUT/heap-$cache.pprof" 2>/dev/null | sed -n '1,28p'
	echo "## cache $cache: allocations"
	go tool pprof -top -sample_index=alloc_space -nodecount=20 "$OUT/bin/fqdngateprof" "$OUT/heap-$cache.pprof" 2>/dev/null | sed -n '1,28p'
done
log "profiles in $OUT"
