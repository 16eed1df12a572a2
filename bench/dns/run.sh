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
#   REPS=5          clean runs wanted per server
#   DURATION=10     seconds per dnsperf run
#   CLIENTS=4       dnsperf -c (sockets)
#   OUTSTANDING=200 dnsperf -q (queries in flight)
#   LAT_N=20000     queries timed by dnslat per run (after 1000 untimed)
#   CACHE=150000    cache entries for every cache-on server (holds all names)
#   SERVERS="upstream fqdngate-cache fqdngate-nocache dnsmasq-cache dnsmasq-nocache coredns-cache coredns-nocache"
#   MEM_TARGETS="fqdngate-cache fqdngate-nocache dnsmasq-cache coredns-cache"
#                   servers given the memory run ("" skips it)
#   MEM_QUERIES=1000000
#   FOREIGN_MAX=0.10 a run is clean if other work used at most this many cores
#   QUIET_MAX=0.10  wait before each measurement until other work is below this
#   QUIET_WAIT=900  seconds to wait for quiet before measuring anyway
#   MAX_REPS=$((REPS * 2)) rounds at most, to collect REPS clean runs per server
#   COREDNS=/root/go/bin/coredns
#   FQDNGATE_REF=HEAD  the commit fqdngate is built from; "worktree": as it is
#   BASE_REF=         a second commit of fqdngate to measure in the same run
#                     (servers base-cache and base-nocache), for before and after
#   fqdngate-* run with the decision history off; fqdngate-hist-cache and
#   fqdngate-hist-nocache (name them in SERVERS) with it on, for its cost;
#   paired.sh (at the end) prints history on ÷ off round by round:
#     SERVERS="fqdngate-cache fqdngate-hist-cache fqdngate-nocache fqdngate-hist-nocache" MEM_TARGETS="" bash bench/dns/run.sh
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
LAT_N=${LAT_N:-20000}
CACHE=${CACHE:-150000}
SERVERS=${SERVERS:-upstream fqdngate-cache fqdngate-nocache dnsmasq-cache dnsmasq-nocache coredns-cache coredns-nocache}
MEM_TARGETS=${MEM_TARGETS-fqdngate-cache fqdngate-nocache dnsmasq-cache coredns-cache}
MEM_QUERIES=${MEM_QUERIES:-1000000}
FOREIGN_MAX=${FOREIGN_MAX:-0.10}
QUIET_MAX=${QUIET_MAX:-0.10}
QUIET_WAIT=${QUIET_WAIT:-900}
MAX_REPS=${MAX_REPS:-$((REPS * 2))}
COREDNS=${COREDNS:-/root/go/bin/coredns}
NAMES=${NAMES:-100000}

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
HIST_DIR=$(mktemp -d /tmp/dnsbench-history.XXXXXX) # fqdngate-hist-*'s history files
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# Every process this script starts is recorded and stopped by its PID.
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$HIST_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -----------------------------------------------------------------
log "building into $BIN"
(cd "$ROOT" && go build -o "$BIN/upstream" ./bench/dns/upstream && go build -o "$BIN/dnslat" ./bench/dns/dnslat)
# fqdngate is built from a commit (FQDNGATE_REF, default HEAD), exported
# with git archive, so that others' uncommitted edits in the working tree do
# not end up in the figures; FQDNGATE_REF=worktree builds the tree as it is.
HAVE_FQDNGATE=1
FQDNGATE_REF=${FQDNGATE_REF:-HEAD}
if [[ $FQDNGATE_REF = worktree ]]; then
	FQ_SRC=$ROOT
	FQ_DESC="working tree at $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- internal cmd || echo ' + uncommitted changes')"
else
	FQ_SRC=$OUT/fqdngate-src
	mkdir -p "$FQ_SRC"
	(cd "$ROOT" && git archive "$FQDNGATE_REF") | tar -x -C "$FQ_SRC"
	FQ_DESC="commit $(cd "$ROOT" && git rev-parse --short "$FQDNGATE_REF")"
fi
if ! (cd "$FQ_SRC" && go build -o "$BIN/fqdngate" ./cmd/fqdngate) 2>"$OUT/fqdngate-build.txt"; then
	log "fqdngate does not build (see $OUT/fqdngate-build.txt); skipping it"
	HAVE_FQDNGATE=0
fi
HAVE_BASE=0
if [[ -n ${BASE_REF:-} ]]; then
	mkdir -p "$OUT/base-src"
	(cd "$ROOT" && git archive "$BASE_REF") | tar -x -C "$OUT/base-src"
	if (cd "$OUT/base-src" && go build -o "$BIN/fqdngate-base" ./cmd/fqdngate) 2>"$OUT/base-build.txt"; then
		HAVE_BASE=1
	else
		log "fqdngate at $BASE_REF does not build (see $OUT/base-build.txt); skipping it"
	fi
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
	echo "fqdngate: $FQ_DESC"
	[[ $HAVE_BASE = 1 ]] && echo "base: commit $(cd "$ROOT" && git rev-parse --short "$BASE_REF")"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
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
	fqdngate-* | base-*) echo $FQ_PORT ;;
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
	fqdngate-* | base-*)
		# dnsperf is one client standing for many, so the per-client
		# bounds are lifted: rate_limit off, and wildcard_budget (which a
		# base before it existed does not know) at its highest, so that
		# its check runs on every uncached query but refuses none.
		# The decision history (on by default) is off for fqdngate-*, so
		# that it compares with the base, and on for fqdngate-hist-*, in
		# a scratch file: the two measure what recording it costs.
		local bin=$BIN/fqdngate pol=$OUT/fqdngate-$cache.yaml budget=", wildcard_budget: 1000000"
		local hist="history: {enabled: false}"
		if [[ $name = fqdngate-hist-* ]]; then
			pol=$OUT/fqdngate-hist-$cache.yaml hist="history: {path: $HIST_DIR/history-$cache.db}"
			rm -f "$HIST_DIR/history-$cache.db"*
		fi
		if [[ $name = base-* ]]; then
			bin=$BIN/fqdngate-base pol=$OUT/base-$cache.yaml
			# The same settings as fqdngate-* where the base knows them.
			printf 'dns: {wildcard_budget: 1000000}\nrules: [{name: x, to: [x.example]}]\n' >"$OUT/base-probe.yaml"
			"$bin" check -c "$OUT/base-probe.yaml" >/dev/null 2>&1 || budget=""
			printf 'history: {enabled: false}\nrules: [{name: x, to: [x.example]}]\n' >"$OUT/base-probe.yaml"
			"$bin" check -c "$OUT/base-probe.yaml" >/dev/null 2>&1 || hist=""
		fi
		cat >"$pol" <<-EOF
			listen: {dns: 127.0.0.1:$FQ_PORT, proxy: "", admin: 127.0.0.1:$FQ_ADMIN}
			dns: {upstreams: [127.0.0.1:$UP_PORT], cache: $([[ $cache = on ]] && echo true || echo false), cache_size: $CACHE, rate_limit: 0$budget}
			firewall: {backend: none}
			log: {file: /dev/null}
			$hist
			rules:
			  - name: bench
			    to: ["**.bench.example"]
		EOF
		"$bin" run -c "$pol" >>"$OUT/$name${LOGTAG:-}.log" 2>&1 &
		;;
	dnsmasq-*)
		local size=$CACHE
		[[ $cache = off ]] && size=0
		# --dns-forward-max: the default 150 is below dnsperf's queries in
		# flight, and the excess would be dropped rather than measured.
		$DNSMASQ --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
			--server=127.0.0.1#$UP_PORT --port=$DM_PORT --listen-address=127.0.0.1 \
			--bind-interfaces --cache-size=$size --dns-forward-max=1000 \
			--pid-file= --log-facility=- >>"$OUT/$name${LOGTAG:-}.log" 2>&1 &
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
		"$COREDNS" -conf "$cf" -quiet >>"$OUT/$name${LOGTAG:-}.log" 2>&1 &
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

# --- upstream --------------------------------------------------------------
# SO_REUSEPORT would let a stray upstream from an earlier run share the port
# and take part of the load, and a stray server would answer in place of the
# one started; refuse to start instead.
for port in $UP_PORT $FQ_PORT $FQ_ADMIN $DM_PORT $CD_PORT; do
	if [[ -n $(ss -Hlnut "sport = :$port") ]]; then
		log "port $port is in use on this host; stop what holds it:"
		ss -Hlnutp "sport = :$port" >&2
		exit 1
	fi
done
"$BIN/upstream" -addr 127.0.0.1:$UP_PORT 2>>"$OUT/upstream.log" &
UPID=$!
PIDS+=("$UPID")
probe $UP_PORT || { log "the upstream did not start; see $OUT/upstream.log"; exit 1; }

# --- contention ------------------------------------------------------------
# Other work on the machine (builds, tests, other benchmarks) takes CPU from
# the servers and skews the comparison. Before each measurement the script
# waits for the machine to go quiet; during it, it counts the CPU time used
# by anything but the server, the upstream and the load generator. A run
# where that exceeded FOREIGN_MAX cores stays in raw.tsv but is left out of
# the medians, and is repeated (up to MAX_REPS rounds).
TICK=$(getconf CLK_TCK)
NCPU=$(nproc)
# busy and steal ticks of the whole machine. Busy counts irq and softirq
# time too: without irq time accounting the kernel charges the softirq work
# of loopback packets to the task it interrupted, so the per-process figures
# subtracted from it include that work.
stat_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat; }

wait_quiet() {
	local waited=0 b0 b1 busy
	while :; do
		read -r b0 _ < <(stat_ticks)
		sleep 2
		read -r b1 _ < <(stat_ticks)
		busy=$(awk -v a="$b0" -v b="$b1" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t / 2}')
		awk -v b="$busy" -v m="$QUIET_MAX" 'BEGIN {exit !(b <= m)}' && return 0
		((waited == 0)) && log "waiting for the machine to go quiet: other work uses $busy cores"
		if ((waited >= QUIET_WAIT)); then
			log "still $busy cores busy after ${QUIET_WAIT}s; measuring anyway"
			return 1
		fi
		sleep 3
		waited=$((waited + 5))
	done
}

# counted OUTFILE CMD...: runs CMD, output to OUTFILE, and sets KID_TICKS to
# the CPU ticks it used (the wrapping shell's waited-for children).
counted() {
	local out=$1
	shift
	KID_TICKS=$(sh -c '"$@" >"$0" 2>&1; awk "{print \$16 + \$17}" /proc/$$/stat' "$out" "$@")
}

# measure OUTFILE CMD...: runs CMD under counted and sets FOREIGN (cores
# used by others meanwhile), STEAL (cores the hypervisor took), SRV_TICKS
# and UP_TICKS.
measure() {
	local b0 b1 st0 st1 s0 s1 u0 u1 w0 w1
	read -r b0 st0 < <(stat_ticks)
	s0=$(cpu_ticks "$SPID")
	u0=$(cpu_ticks "$UPID")
	w0=$(date +%s.%N)
	counted "$@"
	read -r b1 st1 < <(stat_ticks)
	s1=$(cpu_ticks "$SPID")
	u1=$(cpu_ticks "$UPID")
	w1=$(date +%s.%N)
	SRV_TICKS=$((s1 - s0))
	UP_TICKS=$((u1 - u0))
	local mine=$((UP_TICKS + KID_TICKS))
	[[ $SPID != "$UPID" ]] && mine=$((mine + SRV_TICKS))
	FOREIGN=$(awk -v b=$((b1 - b0)) -v m=$mine -v t="$TICK" -v a="$w0" -v z="$w1" 'BEGIN {f = (b - m) / t / (z - a); printf "%.2f", f < 0 ? 0 : f}')
	STEAL=$(awk -v s=$((st1 - st0)) -v t="$TICK" -v a="$w0" -v z="$w1" 'BEGIN {printf "%.2f", s / t / (z - a)}')
}

dnsperf_args() { echo -s 127.0.0.1 -p "$1" -d "$QUERIES" -c "$CLIENTS" -q "$OUTSTANDING" -t 2; }

# --- throughput and latency ------------------------------------------------
printf 'rep\tserver\tqps\tlost\tp50_us\tp99_us\tserver_cpu_us_per_q\tupstream_cpu_us_per_q\trss_kib\tforeign_cores_dnsperf\tforeign_cores_dnslat\tsteal_cores\tclean\n' >"$RAW"
available() {
	case $1 in
	fqdngate-*) [[ $HAVE_FQDNGATE = 1 ]] ;;
	base-*) [[ $HAVE_BASE = 1 ]] ;;
	coredns-*) [[ $HAVE_COREDNS = 1 ]] ;;
	*) true ;;
	esac
}
declare -A CLEAN
rep=0
while :; do
	need=0
	for name in $SERVERS; do
		available "$name" && ((${CLEAN[$name]:-0} < REPS)) && need=1
	done
	((need)) || break
	rep=$((rep + 1))
	if ((rep > MAX_REPS)); then
		log "gave up after $MAX_REPS rounds: some servers have fewer than $REPS clean runs"
		break
	fi
	# Odd rounds go through the servers in order, even rounds in reverse,
	# so that drift within a round does not always favour the same ones.
	order=$SERVERS
	((rep % 2)) || order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
	for name in $order; do
		available "$name" || continue
		((${CLEAN[$name]:-0} < REPS)) || continue
		port=$(port_of "$name")
		start "$name" || { [[ $name = fqdngate-* ]] && HAVE_FQDNGATE=0; continue; }
		if [[ $name = *-cache ]]; then
			# shellcheck disable=SC2046
			counted "$OUT/$name-r$rep-warm.txt" dnsperf $(dnsperf_args "$port") -n 1
		fi
		wait_quiet || true
		# shellcheck disable=SC2046
		measure "$OUT/$name-r$rep-dnsperf.txt" dnsperf $(dnsperf_args "$port") -l "$DURATION"
		ftp=$FOREIGN steal=$STEAL stk=$SRV_TICKS utk=$UP_TICKS
		measure "$OUT/$name-r$rep-dnslat.txt" "$BIN/dnslat" -s 127.0.0.1:"$port" -d "$QUERIES" -n "$LAT_N" -seed "$rep"
		flat=$FOREIGN
		rss=$(rss_kib "$SPID")
		stop
		f=$OUT/$name-r$rep-dnsperf.txt
		# Capacity counts answers, not refusals: queries/s is NOERROR
		# answers over the run time, and CPU is per NOERROR answer. (A
		# server that refuses most queries, e.g. for a budget, answers
		# them faster and must not look faster.)
		qps=$(awk '/Response codes/ {for (i = 1; i <= NF; i++) if ($i == "NOERROR") ok = $(i + 1)} /Run time/ {t = $4} END {if (t > 0) printf "%.0f", ok / t}' "$f")
		done_q=$(awk '/Response codes/ {for (i = 1; i <= NF; i++) if ($i == "NOERROR") print $(i + 1)}' "$f")
		other=$(awk '/Response codes/ {for (i = 3; i <= NF; i += 3) if ($i != "NOERROR") printf "%s%s %s", (n++ ? ", " : ""), $i, $(i + 1)}' "$f")
		[[ -n $other ]] && log "round $rep $name: answers other than NOERROR ($other) are not counted"
		lost=$(awk '/Queries lost/ {print $3}' "$f")
		p50=$(grep -o 'p50_us=[0-9.]*' "$OUT/$name-r$rep-dnslat.txt" | cut -d= -f2)
		p99=$(grep -o 'p99_us=[0-9.]*' "$OUT/$name-r$rep-dnslat.txt" | cut -d= -f2)
		scpu=$(awk -v d="$stk" -v n="${done_q:-1}" -v t="$TICK" 'BEGIN {printf "%.1f", d / t * 1e6 / n}')
		ucpu=$(awk -v d="$utk" -v n="${done_q:-1}" -v t="$TICK" 'BEGIN {printf "%.1f", d / t * 1e6 / n}')
		clean=$(awk -v a="$ftp" -v b="$flat" -v st="$steal" -v m="$FOREIGN_MAX" 'BEGIN {print (a <= m && b <= m && st <= m) ? "yes" : "no"}')
		[[ -n $qps && -n $p50 && $clean = yes ]] && CLEAN[$name]=$((${CLEAN[$name]:-0} + 1))
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$name" "${qps:-0}" "${lost:-?}" "${p50:-NA}" "${p99:-NA}" "$scpu" "$ucpu" "$rss" "$ftp" "$flat" "$steal" "$clean" >>"$RAW"
		log "round $rep $name: ${qps:-?} q/s (lost ${lost:-?}), p50 ${p50:-?} us, p99 ${p99:-?} us, server CPU $scpu us/q; others used $ftp/$flat cores, steal $steal: clean $clean (${CLEAN[$name]:-0}/$REPS)"
	done
done

# --- memory ----------------------------------------------------------------
# The first pass over the names (100,000 queries) is the warm-up; then the
# rest of MEM_QUERIES at capacity, VmRSS sampled every half second. Go
# servers run with GODEBUG=gctrace=1, so the live heap after each GC is in
# their log: RSS alone mixes what is live with what the GC has yet to free.
MEMOUT=$OUT/memory.txt
: >"$MEMOUT"
live_heap() { { grep '^gc ' "$1" || true; } | tail -1 | grep -o '[0-9]*->[0-9]*->[0-9]* MB' | awk -F'->' '{print $3 + 0}' || true; }
for name in $MEM_TARGETS; do
	available "$name" || { echo "$name: not run (not available)" >>"$MEMOUT"; continue; }
	port=$(port_of "$name")
	LOGTAG=-mem GODEBUG=gctrace=1 start "$name" || { echo "$name: not run (did not start)" >>"$MEMOUT"; continue; }
	mlog=$OUT/$name-mem.log
	# shellcheck disable=SC2046
	counted "$OUT/$name-mem-warm.txt" dnsperf $(dnsperf_args "$port") -n 1
	wait_quiet || true
	rss_start=$(rss_kib "$SPID")
	heap_start=$(live_heap "$mlog")
	passes=$(((MEM_QUERIES - NAMES) / NAMES))
	samples=$OUT/$name-mem-rss.tsv
	printf 'seconds\tvmrss_kib\n' >"$samples"
	# shellcheck disable=SC2046
	dnsperf $(dnsperf_args "$port") -n "$passes" >"$OUT/$name-mem-dnsperf.txt" 2>&1 &
	DP=$!
	PIDS+=("$DP")
	t0=$(date +%s.%N)
	while kill -0 "$DP" 2>/dev/null; do
		printf '%s\t%s\n' "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')" "$(rss_kib "$SPID")" >>"$samples"
		sleep 0.5
	done
	wait "$DP" || true
	rss_end=$(rss_kib "$SPID")
	heap_end=$(live_heap "$mlog")
	stop
	answered=$(($(awk '/Queries completed/ {print $3}' "$OUT/$name-mem-warm.txt") + $(awk '/Queries completed/ {print $3}' "$OUT/$name-mem-dnsperf.txt")))
	lost=$(($(awk '/Queries lost/ {print $3}' "$OUT/$name-mem-warm.txt") + $(awk '/Queries lost/ {print $3}' "$OUT/$name-mem-dnsperf.txt")))
	heap=""
	[[ -n $heap_start && -n $heap_end ]] && heap="; Go live heap after the last GC: $heap_start MB at start, $heap_end MB at end"
	awk -v name="$name" -v s="$rss_start" -v e="$rss_end" -v answered="$answered" -v lost="$lost" -v names="$NAMES" -v heap="$heap" -F'\t' '
		NR > 1 { v[++n] = $2; if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2 }
		END {
			m = v[int((n + 1) / 2)]
			dev = 0
			for (i = 1; i <= n; i++) { d = (v[i] - s) / s; if (d < 0) d = -d; if (d > dev) dev = d }
			de = (e - s) / s; if (de < 0) de = -de; if (de > dev) dev = de
			printf "- %s: %d queries answered (%d lost) over %d distinct names. VmRSS %.1f MiB at start (after the first %d), %.1f MiB in the middle, %.1f MiB at the end (min %.1f, max %.1f over %d samples); largest deviation from start %.1f%%: %s%s.\n",
				name, answered, lost, names, s / 1024, names, m / 1024, e / 1024, min / 1024, max / 1024, n, dev * 100, (dev <= 0.10 ? "within 10%" : "NOT within 10%"), heap
		}' "$samples" >>"$MEMOUT"
done

# --- report ----------------------------------------------------------------
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) {print "NA"} else if (NR % 2) {print v[(NR + 1) / 2]} else {print (v[NR / 2] + v[NR / 2 + 1]) / 2}}'; }
# col SERVER COLUMN: the column's values over the server's clean runs, or
# over all its runs if none was clean.
col() {
	local any
	any=$(awk -F'\t' -v s="$1" 'NR > 1 && $2 == s && $13 == "yes"' "$RAW" | wc -l)
	awk -F'\t' -v s="$1" -v c="$2" -v any="$any" 'NR > 1 && $2 == s && $c != "NA" && (any == 0 || $13 == "yes") {print $c}' "$RAW"
}

UP_P50=$(col upstream 5 | median)
UP_QPS=$(col upstream 3 | median)
{
	echo "| server | cache | queries/s (range) | × upstream | p50 µs (range) | p99 µs | added p50 µs | server CPU µs/query | upstream CPU µs/query | lost (max) | clean runs |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	for name in $SERVERS; do
		n=$(col "$name" 3 | wc -l)
		[[ $n -gt 0 ]] || continue
		nclean=$(awk -F'\t' -v s="$name" 'NR > 1 && $2 == s && $13 == "yes"' "$RAW" | wc -l)
		nall=$(awk -F'\t' -v s="$name" 'NR > 1 && $2 == s' "$RAW" | wc -l)
		qps=$(col "$name" 3 | median)
		qrange=$(col "$name" 3 | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f–%.0f", lo / 1000, hi / 1000}')
		prange=$(col "$name" 5 | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f–%.0f", lo, hi}')
		lost=$(col "$name" 4 | sort -g | tail -1)
		p50=$(col "$name" 5 | median)
		p99=$(col "$name" 6 | median)
		scpu=$(col "$name" 7 | median)
		ucpu=$(col "$name" 8 | median)
		server=${name%-*}
		cache=on
		[[ $name = *-nocache ]] && cache=off
		[[ $name = upstream ]] && { server="upstream (direct)"; cache="—"; }
		awk -v s="$server" -v c="$cache" -v q="$qps" -v uq="$UP_QPS" -v l="$lost" -v a="$p50" -v b="$p99" -v u="$UP_P50" -v sc="$scpu" -v uc="$ucpu" -v name="$name" -v runs="$nclean of $nall" -v qr="$qrange" -v pr="$prange" 'BEGIN {
			added = (name == "upstream" || u == "NA") ? "—" : sprintf("%+.0f", a - u)
			ratio = (uq == "NA" || uq == 0) ? "—" : sprintf("%.2f", q / uq)
			printf "| %s | %s | %.0f (%sk) | %s | %.0f (%s) | %.0f | %s | %s | %s | %s | %s |\n", s, c, q, qr, ratio, a, pr, b, added, (name == "upstream") ? "—" : sc, uc, l, runs
		}'
	done
	echo
	echo "Medians over the clean runs (other work on the machine used at most $FOREIGN_MAX cores during dnsperf and dnslat; all runs if none was clean). dnsperf -c $CLIENTS -q $OUTSTANDING -t 2 -l $DURATION over $NAMES names, after one warm-up pass for cache-on servers; dnslat $LAT_N queries (after 1,000 untimed), one in flight, random names."
	echo
	echo "Round by round (the machine's speed drifts; ratios of runs a minute apart):"
	echo
	bash "$ROOT/bench/dns/paired.sh" "$RAW"
	echo
	echo "Memory:"
	echo
	cat "$MEMOUT"
} | tee "$OUT/summary.md"
log "raw results in $OUT"
