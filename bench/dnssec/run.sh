#!/usr/bin/env bash
# DNSSEC validation benchmark (issue 15): fqdngate with dns.dnssec validate
# and off, cache on and off, and Unbound as a validating forwarder, all
# forwarding to the same signed upstream (bench/dnssec/signedup: the signed
# test hierarchy of internal/dnssec/dnssectest plus bench.example., a zone
# of NAMES + LAT_NAMES + 1 signed names, answered from memory).
#
#   bash bench/dnssec/run.sh
#   REPS=1 DURATION=3 NAMES=5000 LAT_N=500 bash bench/dnssec/run.sh   # smoke
#
# For every repetition and every server: start it; prime the zone keys
# with one query for a bench.example. name in neither query file; then
#   new:    one dnsperf pass over NAMES names never asked (each name once,
#           so no answer is cached; zone keys are), and dnslat over
#           LAT_NAMES other fresh names (one query in flight, p50);
#   cached: dnsperf for DURATION seconds over the same NAMES names (now
#           cached, for cache-on servers) and dnslat over them.
# Then stop it. Repetitions are the outer loop, so drift spreads over every
# server alike. Medians go to stdout as markdown; raw output stays under
# bench/results/tmp/<timestamp>-dnssec/.
#
# The targets (issue 15): cached, validation costs under 10% of queries/s
# (fqdngate-validate-cache against fqdngate-off-cache, "cached" columns);
# new names, fqdngate validating at least as many queries/s as Unbound
# validating, with p50 no worse ("new" columns).
#
# Traffic goes to 127.0.0.1 only. Pieces shared with bench/dns: dnslat,
# the query file format, dnsperf's settings, waiting for a quiet machine.
#
# Settings (environment):
#   REPS=3          runs per server
#   DURATION=10     seconds per cached dnsperf run
#   CLIENTS=4       dnsperf -c
#   OUTSTANDING=100 dnsperf -q
#   NAMES=50000     names of the throughput passes
#   LAT_N=5000      queries timed by dnslat per run (no untimed warm-up)
#   LAT_NAMES=$((LAT_N * 4)) fresh names dnslat draws from for "new"
#   CACHE=150000    fqdngate cache entries (holds all names)
#   SERVERS="fqdngate-validate-cache fqdngate-off-cache fqdngate-validate-nocache fqdngate-off-nocache unbound"
#   QUIET_MAX=0.10  wait before each server until other work uses at most this many cores
#   QUIET_WAIT=300  seconds to wait for quiet before measuring anyway
#   FQDNGATE_REF=HEAD  the commit fqdngate is built from; "worktree": as it is
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
NAMES=${NAMES:-50000}
LAT_N=${LAT_N:-5000}
LAT_NAMES=${LAT_NAMES:-$((LAT_N * 4))}
CACHE=${CACHE:-150000}
SERVERS=${SERVERS:-fqdngate-validate-cache fqdngate-off-cache fqdngate-validate-nocache fqdngate-off-nocache unbound}
QUIET_MAX=${QUIET_MAX:-0.10}
QUIET_WAIT=${QUIET_WAIT:-300}

UP_PORT=5400
FQ_PORT=5410
FQ_ADMIN=5419
UB_PORT=5420

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/bench/results/tmp/$(date -u +%Y%m%dT%H%M%SZ)-dnssec
BIN=$OUT/bin
mkdir -p "$OUT" "$BIN"
RAW=$OUT/raw.tsv
ANCHOR=$OUT/anchor.ds
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# Every process this script starts is recorded and stopped by its PID.
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v dnsperf >/dev/null || { log "dnsperf is not installed"; exit 1; }
UNBOUND=$(command -v unbound || echo /usr/sbin/unbound)
[[ -x $UNBOUND ]] || { log "unbound is not installed (Debian package unbound)"; exit 1; }
for port in $UP_PORT $FQ_PORT $FQ_ADMIN $UB_PORT; do
	if [[ -n $(ss -Hlnut "sport = :$port") ]]; then
		log "port $port is in use on this host; stop what holds it:"
		ss -Hlnutp "sport = :$port" >&2
		exit 1
	fi
done

# --- build -----------------------------------------------------------------
log "building into $BIN"
(cd "$ROOT" && go build -o "$BIN/signedup" ./bench/dnssec/signedup && go build -o "$BIN/dnslat" ./bench/dns/dnslat)
# fqdngate from a commit (git archive), as bench/dns does, so that
# uncommitted edits do not end up in the figures.
FQDNGATE_REF=${FQDNGATE_REF:-HEAD}
if [[ $FQDNGATE_REF = worktree ]]; then
	FQ_SRC=$ROOT
	FQ_DESC="working tree at $(cd "$ROOT" && git rev-parse --short HEAD)"
else
	FQ_SRC=$OUT/fqdngate-src
	mkdir -p "$FQ_SRC"
	(cd "$ROOT" && git archive "$FQDNGATE_REF") | tar -x -C "$FQ_SRC"
	FQ_DESC="commit $(cd "$ROOT" && git rev-parse --short "$FQDNGATE_REF")"
fi
(cd "$FQ_SRC" && go build -o "$BIN/fqdngate" ./cmd/fqdngate)

# --- inputs ----------------------------------------------------------------
NEWQ=$OUT/names.txt  # the throughput names: new, then cached
LATQ=$OUT/latnew.txt # fresh names for the "new" latency
awk -v n="$NAMES" 'BEGIN { for (i = 0; i < n; i++) print "n" i ".bench.example A" }' >"$NEWQ"
awk -v a="$NAMES" -v n="$LAT_NAMES" 'BEGIN { for (i = a; i < a + n; i++) print "n" i ".bench.example A" }' >"$LATQ"
PRIME=n$((NAMES + LAT_NAMES)).bench.example

{
	echo "date: $(date -u +%FT%TZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "go: $(go version)"
	echo "dnsperf: $(dnsperf -h 2>&1 | grep -m1 Version || true)"
	echo "unbound: $($UNBOUND -V 2>&1 | head -1)"
	echo "fqdngate: $FQ_DESC"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "settings: REPS=$REPS DURATION=$DURATION CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING NAMES=$NAMES LAT_N=$LAT_N LAT_NAMES=$LAT_NAMES"
} | tee "$OUT/machine.txt" >&2

# --- upstream --------------------------------------------------------------
"$BIN/signedup" -addr 127.0.0.1:$UP_PORT -names $((NAMES + LAT_NAMES + 1)) -anchor "$ANCHOR" 2>"$OUT/signedup.log" &
UPID=$!
PIDS+=("$UPID")
log "signing $((NAMES + LAT_NAMES + 1)) names"
for _ in $(seq 600); do
	grep -q answering "$OUT/signedup.log" && break
	kill -0 "$UPID" 2>/dev/null || { log "the upstream failed; see $OUT/signedup.log"; exit 1; }
	sleep 1
done
grep -q answering "$OUT/signedup.log" || { log "the upstream did not start; see $OUT/signedup.log"; exit 1; }

# --- servers ---------------------------------------------------------------
port_of() { case $1 in fqdngate-*) echo $FQ_PORT ;; unbound) echo $UB_PORT ;; esac; }

# probe PORT: succeeds once the server on PORT answers the prime name.
probe() {
	for _ in $(seq 100); do
		if dig +short +tries=1 +time=1 @127.0.0.1 -p "$1" "$PRIME" A 2>/dev/null | grep -q '^198\.51\.100\.'; then
			return 0
		fi
		sleep 0.2
	done
	return 1
}

# start NAME: starts server NAME and sets SPID.
start() {
	local name=$1
	case $name in
	fqdngate-*)
		local cache=true mode=off anchors=""
		[[ $name = *-nocache ]] && cache=false
		[[ $name = fqdngate-validate-* ]] && mode=validate anchors=", trust_anchors: $ANCHOR"
		# One dnsperf stands for many clients: per-client bounds lifted,
		# as in bench/dns; the decision history off.
		cat >"$OUT/$name.yaml" <<-EOF
			listen: {dns: 127.0.0.1:$FQ_PORT, proxy: "", admin: 127.0.0.1:$FQ_ADMIN}
			dns: {upstreams: [127.0.0.1:$UP_PORT], cache: $cache, cache_size: $CACHE, rate_limit: 0, wildcard_budget: 1000000, dnssec: $mode$anchors}
			firewall: {backend: none}
			log: {file: /dev/null}
			history: {enabled: false}
			rules:
			  - name: bench
			    to: ["**.bench.example"]
		EOF
		"$BIN/fqdngate" run -c "$OUT/$name.yaml" >>"$OUT/$name.log" 2>&1 &
		;;
	unbound)
		cat >"$OUT/unbound.conf" <<-EOF
			server:
			  interface: 127.0.0.1
			  port: $UB_PORT
			  do-ip6: no
			  username: ""
			  chroot: ""
			  pidfile: ""
			  directory: "$OUT"
			  logfile: ""
			  use-syslog: no
			  verbosity: 0
			  num-threads: $(nproc)
			  so-reuseport: yes
			  msg-cache-size: 128m
			  rrset-cache-size: 256m
			  do-not-query-localhost: no
			  access-control: 127.0.0.0/8 allow
			  module-config: "validator iterator"
			  trust-anchor-file: "$ANCHOR"
			  qname-minimisation: no
			  aggressive-nsec: no
			  prefetch: no
			forward-zone:
			  name: "."
			  forward-addr: 127.0.0.1@$UP_PORT
		EOF
		"$UNBOUND" -d -c "$OUT/unbound.conf" >>"$OUT/unbound.log" 2>&1 &
		;;
	esac
	SPID=$!
	PIDS+=("$SPID")
	if ! probe "$(port_of "$name")"; then
		log "$name did not answer $PRIME on 127.0.0.1:$(port_of "$name"); see $OUT/$name.log"
		stop
		return 1
	fi
}

stop() {
	kill "$SPID" 2>/dev/null || true
	wait "$SPID" 2>/dev/null || true
}

# wait_quiet: waits until the machine's other work uses at most QUIET_MAX
# cores (as bench/dns/run.sh does), at most QUIET_WAIT seconds.
TICK=$(getconf CLK_TCK)
stat_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
wait_quiet() {
	local waited=0 b0 b1 busy
	while :; do
		b0=$(stat_busy)
		sleep 2
		b1=$(stat_busy)
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

dnsperf_args() { echo -s 127.0.0.1 -p "$1" -d "$NEWQ" -c "$CLIENTS" -q "$OUTSTANDING" -t 2; }
qps_of() { awk '/Queries per second/ {printf "%.0f", $4}' "$1"; }
lost_of() { awk '/Queries lost/ {print $3}' "$1"; }
p50_of() { grep -o 'p50_us=[0-9.]*' "$1" | cut -d= -f2; }

# --- runs ------------------------------------------------------------------
printf 'rep\tserver\tqps_new\tlost_new\tp50_new_us\tqps_cached\tlost_cached\tp50_cached_us\tload1\n' >"$RAW"
for rep in $(seq "$REPS"); do
	order=$SERVERS
	((rep % 2)) || order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
	for name in $order; do
		wait_quiet || true
		start "$name" || continue
		port=$(port_of "$name")
		f=$OUT/$name-r$rep
		# shellcheck disable=SC2046
		dnsperf $(dnsperf_args "$port") -n 1 >"$f-new-dnsperf.txt" 2>&1 || true
		"$BIN/dnslat" -s 127.0.0.1:"$port" -d "$LATQ" -n "$LAT_N" -w 0 -seed "$rep" >"$f-new-dnslat.txt" 2>&1 || true
		# shellcheck disable=SC2046
		dnsperf $(dnsperf_args "$port") -l "$DURATION" >"$f-cached-dnsperf.txt" 2>&1 || true
		"$BIN/dnslat" -s 127.0.0.1:"$port" -d "$NEWQ" -n "$LAT_N" -seed "$rep" >"$f-cached-dnslat.txt" 2>&1 || true
		stop
		row=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$rep" "$name" \
			"$(qps_of "$f-new-dnsperf.txt")" "$(lost_of "$f-new-dnsperf.txt")" "$(p50_of "$f-new-dnslat.txt")" \
			"$(qps_of "$f-cached-dnsperf.txt")" "$(lost_of "$f-cached-dnsperf.txt")" "$(p50_of "$f-cached-dnslat.txt")" \
			"$(cut -d' ' -f1 /proc/loadavg)")
		echo "$row" >>"$RAW"
		log "round $rep: $row"
	done
done

# --- report ----------------------------------------------------------------
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) {print "NA"} else if (NR % 2) {print v[(NR + 1) / 2]} else {print (v[NR / 2] + v[NR / 2 + 1]) / 2}}'; }
col() { awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 && $2 == s && $c != "" {print $c}' "$RAW"; }
{
	echo "| server | dnssec | cache | new names: queries/s | new: p50 µs | cached: queries/s | cached: p50 µs | lost (max) |"
	echo "|---|---|---|---:|---:|---:|---:|---:|"
	for name in $SERVERS; do
		[[ $(col "$name" 3 | wc -l) -gt 0 ]] || continue
		mode=validate cache=on
		[[ $name = fqdngate-off-* ]] && mode=off
		[[ $name = *-nocache ]] && cache=off
		lost=$({ col "$name" 4; col "$name" 7; } | sort -g | tail -1)
		printf '| %s | %s | %s | %.0f | %.0f | %.0f | %.0f | %s |\n' "${name%%-*}" "$mode" "$cache" \
			"$(col "$name" 3 | median)" "$(col "$name" 5 | median)" "$(col "$name" 6 | median)" "$(col "$name" 8 | median)" "${lost:-?}"
	done
	echo
	echo "Medians over $REPS runs. new: one dnsperf pass (-c $CLIENTS -q $OUTSTANDING) over $NAMES names never asked (zone keys primed), dnslat $LAT_N queries over $LAT_NAMES fresh names; cached: dnsperf -l $DURATION over the same $NAMES names, dnslat $LAT_N of them. A cache-off fqdngate answers every query from the upstream, so its cached columns are uncached too. Unbound: validating forwarder, $(nproc) threads."
	vc=$(col fqdngate-validate-cache 6 | median) oc=$(col fqdngate-off-cache 6 | median)
	vn=$(col fqdngate-validate-cache 3 | median) ub=$(col unbound 3 | median)
	vp=$(col fqdngate-validate-cache 5 | median) up=$(col unbound 5 | median)
	awk -v vc="$vc" -v oc="$oc" -v vn="$vn" -v ub="$ub" -v vp="$vp" -v up="$up" 'BEGIN {
		if (vc != "NA" && oc != "NA" && oc > 0) printf "\nCached: validation costs %.1f%% of queries/s (target: under 10%%).\n", (oc - vc) / oc * 100
		if (vn != "NA" && ub != "NA" && ub > 0) printf "New names: fqdngate validating %.2f× Unbound validating in queries/s (target: at least 1), p50 %s µs against %s µs (target: no worse).\n", vn / ub, vp, up
	}'
} | tee "$OUT/summary.md"
log "raw results in $OUT"
