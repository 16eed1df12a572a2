#!/usr/bin/env bash
# DNS firewall benchmark: fqdngate against dnsmasq and CoreDNS, each
# forwarding to the same fast local authoritative upstream, cache on and off,
# plus the upstream queried directly.
#
#   bash bench/dns/run.sh
#
# For every repetition and every server: start it, check it answers, warm
# its cache with one pass over the 100,000 names (cache-on configurations
# only), measure queries/s at capacity with dnsperf, then latency with one
# query in flight with dnslat, and stop it. Repetitions are the outer loop so
# that drift on the machine spreads over every server alike. Then the memory
# run: 1,000,000 queries over the 100,000 names against fqdngate with its
# cache on, sampling VmRSS. Medians go to stdout as markdown; raw output
# stays under bench/results/tmp/<timestamp>/.
#
# Traffic goes to 127.0.0.1 only. No process is pinned to a CPU: the load
# generator, the server and the upstream share the machine's cores.
#
# Settings (environment):
#   REPS=3          repetitions
#   DURATION=10     seconds per dnsperf run
#   CLIENTS=4       dnsperf -c (sockets)
#   OUTSTANDING=200 dnsperf -q (queries in flight)
#   LAT_N=20000     queries timed by dnslat per run (after 1000 untimed)
#   CACHE=150000    cache entries for every cache-on server (holds all names)
#   SERVERS="upstream fqdngate-cache fqdngate-nocache dnsmasq-cache dnsmasq-nocache coredns-cache coredns-nocache"
#   MEM_TARGETS="fqdngate-cache"   servers given the memory run ("" skips it)
#   MEM_QUERIES=1000000
#   COREDNS=/root/go/bin/coredns
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
LAT_N=${LAT_N:-20000}
CACHE=${CACHE:-150000}
SERVERS=${SERVERS:-upstream fqdngate-cache fqdngate-nocache dnsmasq-cache dnsmasq-nocache coredns-cache coredns-nocache}
MEM_TARGETS=${MEM_TARGETS-fqdngate-cache}
MEM_QUERIES=${MEM_QUERIES:-1000000}
COREDNS=${COREDNS:-/root/go/bin/coredns}
NAMES=100000

UP_PORT=5300
FQ_PORT=5310
FQ_ADMIN=5319
DM_PORT=5320
CD_PORT=5330

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/bench/results/tmp/$(date -u +%Y%m%dT%H%M%SZ)
BIN=$OUT/bin
mkdir -p "$OUT" "$BIN"
QUERIES=$OUT/queries.txt
RAW=$OUT/raw.tsv
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# Every process this script starts is recorded and stopped by its PID.
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

# --- build -----------------------------------------------------------------
log "building into $BIN"
(cd "$ROOT" && go build -o "$BIN/upstream" ./bench/dns/upstream && go build -o "$BIN/dnslat" ./bench/dns/dnslat)
HAVE_FQDNGATE=1
if ! (cd "$ROOT" && go build -o "$BIN/fqdngate" ./cmd/fqdngate) 2>"$OUT/fqdngate-build.txt"; then
	log "fqdngate does not build (see $OUT/fqdngate-build.txt); skipping it"
	HAVE_FQDNGATE=0
fi
HAVE_COREDNS=1
if [[ ! -x $COREDNS ]]; then
	log "no CoreDNS at $COREDNS; install it outside the module:"
	log "  cd /tmp && GOFLAGS= GOBIN=/root/go/bin go install github.com/coredns/coredns@v1.14.7"
	HAVE_COREDNS=0
fi
command -v dnsperf >/dev/null || { log "dnsperf is not installed"; exit 1; }
command -v dnsmasq >/dev/null || command -v /usr/sbin/dnsmasq >/dev/null || { log "dnsmasq is not installed"; exit 1; }
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

# --- inputs ----------------------------------------------------------------
bash "$ROOT/bench/dns/genqueries.sh" "$NAMES" >"$QUERIES"

{
	echo "date: $(date -u +%FT%TZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel: $(uname -r)"
	echo "go: $(go version)"
	echo "dnsperf: $(dnsperf -h 2>&1 | grep -m1 Version || true)"
	echo "dnsmasq: $($DNSMASQ --version | head -1)"
	[[ $HAVE_COREDNS = 1 ]] && echo "coredns: $($COREDNS -version | head -1)"
	echo "fqdngate: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- internal cmd || echo ' + uncommitted changes')"
	echo "settings: REPS=$REPS DURATION=$DURATION CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING LAT_N=$LAT_N CACHE=$CACHE"
} | tee "$OUT/machine.txt" >&2

# --- servers ---------------------------------------------------------------
# probe PORT: succeeds once the server on PORT answers an allowed name.
probe() {
	for _ in $(seq 50); do
		if dig +short +tries=1 +time=1 @127.0.0.1 -p "$1" n0.bench.example A 2>/dev/null | grep -q '^198\.51\.100\.'; then
			return 0
		fi
		sleep 0.2
	done
	return 1
}

port_of() {
	case $1 in
	upstream) echo $UP_PORT ;;
	fqdngate-*) echo $FQ_PORT ;;
	dnsmasq-*) echo $DM_PORT ;;
	coredns-*) echo $CD_PORT ;;
	esac
}

# start NAME: starts the server NAME and sets SPID; NAME upstream is the
# upstream itself, which runs for the whole script.
start() {
	local name=$1 cache=on
	[[ $name = *-nocache ]] && cache=off
	case $name in
	upstream)
		SPID=$UPID
		return 0
		;;
	fqdngate-*)
		local pol=$OUT/fqdngate-$cache.yaml
		cat >"$pol" <<-EOF
			listen: {dns: 127.0.0.1:$FQ_PORT, proxy: "", admin: 127.0.0.1:$FQ_ADMIN}
			dns: {upstreams: [127.0.0.1:$UP_PORT], cache: $([[ $cache = on ]] && echo true || echo false), cache_size: $CACHE, rate_limit: 0}
			firewall: {backend: none}
			log: {file: /dev/null}
			rules:
			  - name: bench
			    to: ["**.bench.example"]
		EOF
		"$BIN/fqdngate" run -c "$pol" >>"$OUT/$name.log" 2>&1 &
		;;
	dnsmasq-*)
		local size=$CACHE
		[[ $cache = off ]] && size=0
		# --dns-forward-max: the default 150 is below dnsperf's queries in
		# flight, and the excess would be dropped rather than measured.
		$DNSMASQ --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
			--server=127.0.0.1#$UP_PORT --port=$DM_PORT --listen-address=127.0.0.1 \
			--bind-interfaces --cache-size=$size --dns-forward-max=1000 \
			--pid-file= --log-facility=- >>"$OUT/$name.log" 2>&1 &
		;;
	coredns-*)
		local cf=$OUT/Corefile-$cache
		{
			echo ".:$CD_PORT {"
			echo "    bind 127.0.0.1"
			echo "    forward . 127.0.0.1:$UP_PORT"
			if [[ $cache = on ]]; then
				echo "    cache {"
				echo "        success $CACHE"
				echo "    }"
			fi
			echo "}"
		} >"$cf"
		"$COREDNS" -conf "$cf" -quiet >>"$OUT/$name.log" 2>&1 &
		;;
	esac
	SPID=$!
	PIDS+=("$SPID")
	if ! probe "$(port_of "$name")"; then
		log "$name did not answer on 127.0.0.1:$(port_of "$name"); see $OUT/$name.log"
		stop
		return 1
	fi
}

stop() {
	[[ $SPID = "$UPID" ]] && return 0
	kill "$SPID" 2>/dev/null || true
	wait "$SPID" 2>/dev/null || true
}

# cpu_ticks PID: user+system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

dnsperf_run() { # PORT OUTFILE ARGS...
	local port=$1 out=$2
	shift 2
	dnsperf -s 127.0.0.1 -p "$port" -d "$QUERIES" -c "$CLIENTS" -q "$OUTSTANDING" -t 2 "$@" >"$out" 2>&1
}

# --- upstream --------------------------------------------------------------
"$BIN/upstream" -addr 127.0.0.1:$UP_PORT 2>>"$OUT/upstream.log" &
UPID=$!
PIDS+=("$UPID")
probe $UP_PORT || { log "the upstream did not start; see $OUT/upstream.log"; exit 1; }

# --- throughput and latency ------------------------------------------------
TICK=$(getconf CLK_TCK)
printf 'rep\tserver\tqps\tlost\tp50_us\tp99_us\tserver_cpu_us_per_q\tupstream_cpu_us_per_q\trss_kib\n' >"$RAW"
for rep in $(seq "$REPS"); do
	for name in $SERVERS; do
		case $name in
		fqdngate-*) [[ $HAVE_FQDNGATE = 1 ]] || continue ;;
		coredns-*) [[ $HAVE_COREDNS = 1 ]] || continue ;;
		esac
		port=$(port_of "$name")
		start "$name" || { [[ $name = fqdngate-* ]] && HAVE_FQDNGATE=0; continue; }
		if [[ $name = *-cache ]]; then
			dnsperf_run "$port" "$OUT/$name-r$rep-warm.txt" -n 1
		fi
		s0=$(cpu_ticks "$SPID")
		u0=$(cpu_ticks "$UPID")
		dnsperf_run "$port" "$OUT/$name-r$rep-dnsperf.txt" -l "$DURATION"
		s1=$(cpu_ticks "$SPID")
		u1=$(cpu_ticks "$UPID")
		"$BIN/dnslat" -s 127.0.0.1:"$port" -d "$QUERIES" -n "$LAT_N" -seed "$rep" >"$OUT/$name-r$rep-dnslat.txt" 2>&1 || true
		rss=$(rss_kib "$SPID")
		stop
		qps=$(awk '/Queries per second/ {printf "%.0f", $4}' "$OUT/$name-r$rep-dnsperf.txt")
		done_q=$(awk '/Queries completed/ {print $3}' "$OUT/$name-r$rep-dnsperf.txt")
		lost=$(awk '/Queries lost/ {print $3}' "$OUT/$name-r$rep-dnsperf.txt")
		p50=$(grep -o 'p50_us=[0-9.]*' "$OUT/$name-r$rep-dnslat.txt" | cut -d= -f2)
		p99=$(grep -o 'p99_us=[0-9.]*' "$OUT/$name-r$rep-dnslat.txt" | cut -d= -f2)
		scpu=$(awk -v a="$s0" -v b="$s1" -v n="$done_q" -v t="$TICK" 'BEGIN {printf "%.1f", (b-a)/t*1e6/n}')
		ucpu=$(awk -v a="$u0" -v b="$u1" -v n="$done_q" -v t="$TICK" 'BEGIN {printf "%.1f", (b-a)/t*1e6/n}')
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$name" "${qps:-0}" "${lost:-?}" "${p50:-NA}" "${p99:-NA}" "$scpu" "$ucpu" "$rss" >>"$RAW"
		log "rep $rep $name: ${qps:-?} q/s (lost ${lost:-?}), p50 ${p50:-?} us, p99 ${p99:-?} us, server CPU $scpu us/q"
	done
done

# --- memory ----------------------------------------------------------------
MEMOUT=$OUT/memory.txt
: >"$MEMOUT"
for name in $MEM_TARGETS; do
	case $name in
	fqdngate-*) [[ $HAVE_FQDNGATE = 1 ]] || { echo "$name: not run (fqdngate does not serve DNS)" >>"$MEMOUT"; continue; } ;;
	coredns-*) [[ $HAVE_COREDNS = 1 ]] || continue ;;
	esac
	port=$(port_of "$name")
	start "$name" || { echo "$name: not run (did not start)" >>"$MEMOUT"; continue; }
	# The first pass over the names (100,000 queries) is the warm-up; then
	# the rest of MEM_QUERIES with VmRSS sampled every half second.
	dnsperf_run "$port" "$OUT/$name-mem-warm.txt" -n 1
	rss_start=$(rss_kib "$SPID")
	passes=$(((MEM_QUERIES - NAMES) / NAMES))
	samples=$OUT/$name-mem-rss.tsv
	printf 'seconds\tvmrss_kib\n' >"$samples"
	dnsperf_run "$port" "$OUT/$name-mem-dnsperf.txt" -n "$passes" &
	DP=$!
	PIDS+=("$DP")
	t0=$(date +%s.%N)
	while kill -0 "$DP" 2>/dev/null; do
		printf '%s\t%s\n' "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b-a}')" "$(rss_kib "$SPID")" >>"$samples"
		sleep 0.5
	done
	wait "$DP" || true
	rss_end=$(rss_kib "$SPID")
	stop
	sent=$(($(awk '/Queries completed/ {print $3}' "$OUT/$name-mem-warm.txt") + $(awk '/Queries completed/ {print $3}' "$OUT/$name-mem-dnsperf.txt")))
	lost=$(($(awk '/Queries lost/ {print $3}' "$OUT/$name-mem-warm.txt") + $(awk '/Queries lost/ {print $3}' "$OUT/$name-mem-dnsperf.txt")))
	awk -v name="$name" -v s="$rss_start" -v e="$rss_end" -v done_q="$sent" -v lost="$lost" -F'\t' '
		NR > 1 { v[++n] = $2; if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2 }
		END {
			m = v[int((n + 1) / 2)]
			dev = 0
			for (i = 1; i <= n; i++) { d = (v[i] - s) / s; if (d < 0) d = -d; if (d > dev) dev = d }
			de = (e - s) / s; if (de < 0) de = -de; if (de > dev) dev = de
			printf "%s: %d queries answered (%d lost) over %d distinct names; VmRSS start %.1f MiB (after the first %d), middle %.1f MiB, end %.1f MiB; min %.1f, max %.1f MiB over %d samples; largest deviation from start %.1f%%: %s\n",
				name, done_q, lost, 100000, s/1024, 100000, m/1024, e/1024, min/1024, max/1024, n, dev*100, (dev <= 0.10 ? "within 10%" : "NOT within 10%")
		}' "$samples" >>"$MEMOUT"
done

# --- report ----------------------------------------------------------------
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) {print "NA"} else if (NR % 2) {print v[(NR + 1) / 2]} else {print (v[NR / 2] + v[NR / 2 + 1]) / 2}}'; }
col() { awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 && $2 == s && $c != "NA" {print $c}' "$RAW"; }

UP_P50=$(col upstream 5 | median)
UP_QPS=$(col upstream 3 | median)
{
	echo "| server | cache | queries/s (median) | × upstream | lost (max) | p50 µs | p99 µs | added p50 µs | server CPU µs/query | upstream CPU µs/query |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
	for name in $SERVERS; do
		n=$(col "$name" 3 | wc -l)
		[[ $n -gt 0 ]] || continue
		qps=$(col "$name" 3 | median)
		lost=$(col "$name" 4 | sort -g | tail -1)
		p50=$(col "$name" 5 | median)
		p99=$(col "$name" 6 | median)
		scpu=$(col "$name" 7 | median)
		ucpu=$(col "$name" 8 | median)
		server=${name%-*}
		cache=on
		[[ $name = *-nocache ]] && cache=off
		[[ $name = upstream ]] && { server="upstream (direct)"; cache="—"; }
		awk -v s="$server" -v c="$cache" -v q="$qps" -v uq="$UP_QPS" -v l="$lost" -v a="$p50" -v b="$p99" -v u="$UP_P50" -v sc="$scpu" -v uc="$ucpu" -v name="$name" 'BEGIN {
			added = (name == "upstream") ? "—" : sprintf("%+.0f", a - u)
			printf "| %s | %s | %.0f | %.2f | %s | %.0f | %.0f | %s | %s | %s |\n", s, c, q, q / uq, l, a, b, added, (name == "upstream") ? "—" : sc, uc
		}'
	done
	echo
	echo "Medians over $REPS repetitions; dnsperf -c $CLIENTS -q $OUTSTANDING -l $DURATION; dnslat $LAT_N queries, one in flight."
	echo
	cat "$MEMOUT"
} | tee "$OUT/summary.md"
log "raw results in $OUT"
