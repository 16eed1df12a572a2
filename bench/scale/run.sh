#!/usr/bin/env bash
# Scale benchmark (issue 16): the DNS firewall's speed with 1,000,000
# learned addresses in the kernel against its speed with 1,000, and the
# latency of answers while a tenth of the million expire at once.
#
#   bash bench/scale/run.sh        (as root: network namespace, nftables)
#
# The real daemon runs in a network namespace this script creates, with the
# nftables backend and the bench upstream (bench/dns/upstream) inside it.
# Names are n<i>.z<i%4>.bench.example under four rules (one per z<k>
# zone, so four learned sets per family); the upstream answers each with
# AAAA_PER AAAA records (2001:db8::/32, distinct per name) and A_PER A
# records from 198.18.0.0/15 (131,072 addresses, so names share some: the
# kernel's element count is reported as it is). Nine AAAA and two A keep
# every reply within 512 bytes uncompressed: dnsperf and nftlat send no
# EDNS, and a longer reply would leave the fast path for the ordinary
# one, which compresses it (a different measurement).
#
# For each scale (SMALL_NAMES and LARGE_NAMES names) and each cache setting
# (on, off), on a fresh daemon and an empty table:
#   1. fill: one A and one AAAA query for every name (dnsperf -n 1), then
#      wait for the learned count (fqdngate_firewall_learned) to settle;
#   2. capacity: dnsperf over HOT_NAMES names already learned, DURATION s,
#      CLIENTS sockets x OUTSTANDING in flight, REPS times: queries/s and
#      the daemon's CPU per 1,000 answers (with the cache off every query
#      goes upstream and its answer refreshes elements the kernel holds);
#   3. latency: nftlat, one query in flight, LAT_N queries over the same
#      names: p50/p99.
# Then, at the large scale with the cache on: fill SHORT_NAMES more names
# (prefix s) whose TTL is SHORT_TTL, and time answers for hot names with
# one in flight for EXPIRY_FOR seconds while those addresses expire
# (min_ttl and grace are 10 s here, so at about 20 s): p99 overall and the
# worst one-second window, against the same measure taken before.
#
# Traffic stays on the namespace's loopback. The namespace, the table and
# every process started are removed on exit. Raw output goes to OUT
# (default bench/scale/results/<UTC timestamp>), a summary to summary.md.
#
# Settings (environment):
#   SMALL_NAMES=100 LARGE_NAMES=100000 SHORT_NAMES=10000 (a tenth of large x AAAA_PER)
#   AAAA_PER=9 A_PER=2 HOT_NAMES=100 (at most SMALL_NAMES) REPS=3 DURATION=10 CLIENTS=4 OUTSTANDING=200
#   LAT_N=20000 SHORT_TTL=10 EXPIRY_FOR=40
#   SCALES="small large" CACHES="true false"   (subsets)
#   FQ_ENV=             environment for the daemon, e.g. FQ_ENV=GOGC=400
#   PAIRED=0            1: for each cache setting, run the small and the
#                       large daemon side by side (own tables, ports and
#                       state files) and alternate their capacity
#                       repetitions (small first on odd ones, large first
#                       on even ones), so that the machine's drift over
#                       minutes falls on both alike; no mass expiry then
set -euo pipefail

SMALL_NAMES=${SMALL_NAMES:-100}
LARGE_NAMES=${LARGE_NAMES:-100000}
SHORT_NAMES=${SHORT_NAMES:-$((LARGE_NAMES / 10))}
AAAA_PER=${AAAA_PER:-9}
A_PER=${A_PER:-2}
HOT_NAMES=${HOT_NAMES:-100}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
LAT_N=${LAT_N:-20000}
SHORT_TTL=${SHORT_TTL:-10}
EXPIRY_FOR=${EXPIRY_FOR:-40}
PAIRED=${PAIRED:-0}
SCALES=${SCALES:-small large}
FQ_ENV=${FQ_ENV:-}
CACHES=${CACHES:-true false}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/scale/results/$(date -u +%Y%m%dT%H%M%SZ)}
SCRATCH=$(mktemp -d /tmp/scalebench.XXXXXX)
BIN=$SCRATCH/bin
NS=scalebench-$$
UP=127.0.0.1:5300
# Each scale's daemon has its own table, DNS and admin port, and state
# file, so that PAIRED=1 can run both at once.
table() { echo "scalebench$1"; }                                # table SCALE
dns() { [[ $1 = small ]] && echo 127.0.0.1:5353 || echo 127.0.0.1:5354; }   # dns SCALE
admin() { [[ $1 = small ]] && echo 127.0.0.1:9090 || echo 127.0.0.1:9091; } # admin SCALE
mkdir -p "$OUT" "$BIN"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
inns() { nsenter --net="/run/netns/$NS" "$@"; }

PIDS=()
NS_MADE=0
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if ((NS_MADE)); then
		for s in small large; do inns nft delete table inet "$(table $s)" 2>/dev/null || true; done
		ip netns del "$NS" || log "could not delete namespace $NS"
	fi
	rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) = 0 ]] || { log "run as root: the benchmark makes a network namespace and an nftables table"; exit 1; }
command -v dnsperf >/dev/null || { log "dnsperf is not installed"; exit 1; }

log "building"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$BIN/fqdngate" ./cmd/fqdngate)
(cd "$ROOT" && go build -o "$BIN/upstream" ./bench/dns/upstream && go build -o "$BIN/nftlat" ./bench/nft/nftlat)
{
	echo "date: $(date -u +%FT%TZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel: $(uname -r)"
	echo "go: $(go version)"
	echo "fqdngate: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- internal cmd || echo ' + uncommitted changes')"
	echo "uptime at start: $(uptime)"
	echo "settings: SMALL_NAMES=$SMALL_NAMES LARGE_NAMES=$LARGE_NAMES SHORT_NAMES=$SHORT_NAMES AAAA_PER=$AAAA_PER A_PER=$A_PER HOT_NAMES=$HOT_NAMES REPS=$REPS DURATION=$DURATION CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING LAT_N=$LAT_N SHORT_TTL=$SHORT_TTL EXPIRY_FOR=$EXPIRY_FOR"
} | tee "$OUT/machine.txt" >&2

ip netns add "$NS"
NS_MADE=1
ip -n "$NS" link set lo up
nsenter --net="/run/netns/$NS" "$BIN/upstream" -addr "$UP" -a "$A_PER" -aaaa "$AAAA_PER" -bench4 -short s -short-ttl "$SHORT_TTL" 2>>"$OUT/upstream.log" &
PIDS+=("$!")

# Query files. names N: n<i> for i < N, A and AAAA each.
names() { awk -v n="$1" -v p="$2" 'BEGIN { for (i = 0; i < n; i++) { print p i ".z" i % 4 ".bench.example AAAA"; print p i ".z" i % 4 ".bench.example A" } }'; }
names "$LARGE_NAMES" n >"$SCRATCH/fill-large.txt"
names "$SMALL_NAMES" n >"$SCRATCH/fill-small.txt"
names "$SHORT_NAMES" s >"$SCRATCH/fill-short.txt"
# Hot names: learned at both scales (the small fill's names come first).
hot=$((HOT_NAMES < SMALL_NAMES ? HOT_NAMES : SMALL_NAMES))
names "$hot" n | grep ' AAAA$' >"$SCRATCH/hot.txt"

probe() {
	for _ in $(seq 50); do
		if inns dig +short +tries=1 +time=1 @"${1%:*}" -p "${1#*:}" n0.z0.bench.example AAAA 2>/dev/null | grep -q '^2001:db8:'; then
			return 0
		fi
		sleep 0.2
	done
	return 1
}
probe "$UP" || { log "the upstream did not start; see $OUT/upstream.log"; exit 1; }

declare -A FPIDS
start() { # start SCALE CACHE TAG: a fresh daemon, empty table, no state file; sets FPIDS[SCALE]
	local scale=$1 cache=$2 tag=$3 pol=$SCRATCH/policy-$1-$2.yaml tbl state=$SCRATCH/state-$1.json
	tbl=$(table "$scale")
	inns nft delete table inet "$tbl" 2>/dev/null || true
	rm -f "$state" "$state".*
	cat >"$pol" <<-EOF
		listen: {dns: $(dns "$scale"), proxy: "", admin: $(admin "$scale")}
		dns: {upstreams: [$UP], cache: $cache, cache_size: 300000, rate_limit: 0, wildcard_budget: 1000000, min_ttl: 10s, grace: 10s, max_learned_per_name: 64}
		log: {file: /dev/null}
		history: {enabled: false}
		firewall: {backend: nftables, hook: output, table: $tbl, state_file: $state}
		rules:
		  - {name: z0, to: ["*.z0.bench.example", "198.18.0.0/15"]}
		  - {name: z1, to: ["*.z1.bench.example", "198.18.0.0/15"]}
		  - {name: z2, to: ["*.z2.bench.example", "198.18.0.0/15"]}
		  - {name: z3, to: ["*.z3.bench.example", "198.18.0.0/15"]}
	EOF
	cp "$pol" "$OUT/policy-$scale-cache-$cache.yaml"
	env GODEBUG=gctrace=1 $FQ_ENV nsenter --net="/run/netns/$NS" "$BIN/fqdngate" run -c "$pol" >>"$OUT/fqdngate-$tag.log" 2>&1 &
	FPIDS[$scale]=$!
	PIDS+=("$!")
	probe "$(dns "$scale")" || { log "fqdngate did not answer; see $OUT/fqdngate-$tag.log"; return 1; }
}
stop() { local p=${FPIDS[$1]}; kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; } # stop SCALE
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
TICK=$(getconf CLK_TCK)
# live_heap LOG: the live heap (MB) after the last GC gctrace reported.
live_heap() { { grep '^gc ' "$1" || true; } | tail -1 | grep -o '[0-9]*->[0-9]*->[0-9]* MB' | awk -F'->' '{print $3 + 0}'; }
learned() { inns curl -s "http://$(admin "$1")/metrics" | awk '$1 == "fqdngate_firewall_learned" {printf "%d", $2}'; } # learned SCALE
settle() { # settle SCALE: waits until the learned count stops moving; prints it
	local a b
	a=$(learned "$1")
	while sleep 2; b=$(learned "$1"); [[ $a != "$b" ]]; do a=$b; done
	echo "$b"
}
fill() { # fill SCALE FILE TAG
	local d
	d=$(dns "$1")
	inns dnsperf -s "${d%:*}" -p "${d#*:}" -d "$2" -n 1 -c 4 -q 100 -t 5 >"$OUT/fill-$3.txt" 2>&1 || true
	grep -E 'Queries (completed|lost)|Response codes|Queries per second' "$OUT/fill-$3.txt" | sed 's/^ */  /' >&2
}

RAW=$OUT/raw.tsv
printf 'scale\tcache\tlearned\trss_kib\trep\tqps\tlost\tcpu_ms_per_1k\n' >"$RAW"
LAT=$OUT/latency.tsv
printf 'scale\tcache\tp50_us\tp99_us\tlost\n' >"$LAT"
declare -A LEARNED
prepare() { # prepare SCALE CACHE: a fresh daemon, filled
	local scale=$1 cache=$2 tag=$1-cache-$2 t0 n
	log "$tag: fill"
	start "$scale" "$cache" "$tag" || exit 1
	t0=$(date +%s.%N)
	fill "$scale" "$SCRATCH/fill-$scale.txt" "$tag"
	n=$(settle "$scale")
	LEARNED[$scale]=$n
	log "$tag: $n learned in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s, daemon RSS $(rss_kib "${FPIDS[$scale]}") KiB, live heap at the last GC $(live_heap "$OUT/fqdngate-$tag.log") MB"
}
capacity() { # capacity SCALE CACHE REP: one dnsperf run over the hot names
	local scale=$1 cache=$2 rep=$3 tag=$1-cache-$2 pid=${FPIDS[$1]} d c0 c1 done qps lost cpu
	d=$(dns "$scale")
	c0=$(cpu_ticks "$pid")
	inns dnsperf -s "${d%:*}" -p "${d#*:}" -d "$SCRATCH/hot.txt" -c "$CLIENTS" -q "$OUTSTANDING" -t 2 -l "$DURATION" >"$OUT/hot-$tag-r$rep.txt" 2>&1 || true
	c1=$(cpu_ticks "$pid")
	# Only NOERROR answers count (a refusal is not capacity).
	done=$(awk '/Response codes/ {for (i = 1; i <= NF; i++) if ($i == "NOERROR") print $(i + 1)}' "$OUT/hot-$tag-r$rep.txt")
	qps=$(awk '/Response codes/ {for (i = 1; i <= NF; i++) if ($i == "NOERROR") ok = $(i + 1)} /Run time/ {t = $4} END {if (t > 0) printf "%.0f", ok / t}' "$OUT/hot-$tag-r$rep.txt")
	lost=$(awk '/Queries lost/ {print $3}' "$OUT/hot-$tag-r$rep.txt")
	cpu=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v n="$done" 'BEGIN {printf "%.2f", (b - a) / t * 1e6 / n}')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scale" "$cache" "${LEARNED[$scale]}" "$(rss_kib "$pid")" "$rep" "$qps" "$lost" "$cpu" >>"$RAW"
	log "$tag rep $rep: $qps q/s, $cpu ms CPU per 1,000, lost $lost"
}
latency() { # latency SCALE CACHE: nftlat, one query in flight
	local scale=$1 cache=$2 tag=$1-cache-$2 line
	inns "$BIN/nftlat" -s "$(dns "$scale")" -d "$SCRATCH/hot.txt" -order random -n "$LAT_N" -w 1000 >"$OUT/lat-$tag.txt" 2>&1 || true
	line=$(grep '^n=' "$OUT/lat-$tag.txt" || echo "n=0")
	get() { grep -o "$1=[0-9.]*" <<<"$line" | cut -d= -f2; }
	printf '%s\t%s\t%s\t%s\t%s\n' "$scale" "$cache" "$(get p50_us)" "$(get p99_us)" "$(get lost)" >>"$LAT"
	log "$tag latency: $line"
}
expiry() { # the mass expiry, on the large daemon with its cache on
	local d before added after
	d=$(dns large)
	log "mass expiry: baseline ${EXPIRY_FOR}s"
	inns "$BIN/nftlat" -s "$d" -d "$SCRATCH/hot.txt" -order random -for "${EXPIRY_FOR}s" -w 1000 >"$OUT/expiry-baseline.txt" 2>&1 || true
	cat "$OUT/expiry-baseline.txt" >&2
	before=$(learned large)
	fill large "$SCRATCH/fill-short.txt" short
	added=$(($(settle large) - before))
	log "mass expiry: $added short-lived addresses added (TTL ${SHORT_TTL}s + grace); timing ${EXPIRY_FOR}s"
	inns "$BIN/nftlat" -s "$d" -d "$SCRATCH/hot.txt" -order random -for "${EXPIRY_FOR}s" -w 0 >"$OUT/expiry.txt" 2>&1 || true
	after=$(learned large)
	cat "$OUT/expiry.txt" >&2
	log "mass expiry: learned $((before + added)) -> $after"
	echo "short-lived added: $added; learned before the fill $before, after the window $after" >"$OUT/expiry-counts.txt"
	inns nft list set inet "$(table large)" learn6.z0 2>/dev/null | grep -c 'expires' >"$OUT/kernel-z0-lines.txt" || true
}
if ((PAIRED)); then
	for cache in $CACHES; do
		for scale in $SCALES; do prepare "$scale" "$cache"; done
		order=$SCALES
		for rep in $(seq "$REPS"); do
			for scale in $order; do capacity "$scale" "$cache" "$rep"; done
			order=$(echo "$order" | awk '{for (i = NF; i > 0; i--) printf "%s%s", $i, (i > 1 ? " " : "")}')
		done
		for scale in $SCALES; do latency "$scale" "$cache"; done
		for scale in $SCALES; do stop "$scale"; done
	done
else
	for scale in $SCALES; do
		for cache in $CACHES; do
			prepare "$scale" "$cache"
			for rep in $(seq "$REPS"); do capacity "$scale" "$cache" "$rep"; done
			latency "$scale" "$cache"
			if [[ $scale = large && $cache = true ]] && ((EXPIRY_FOR > 0)); then
				expiry
			fi
			stop "$scale"
		done
	done
fi

{
	echo "# Scale benchmark $(date -u +%FT%TZ)"
	echo
	cat "$OUT/machine.txt"
	echo
	echo '| scale | cache | learned | RSS MiB | q/s (each rep) | CPU ms/1k (each rep) | p50 µs | p99 µs |'
	echo '|---|---|---:|---:|---|---|---:|---:|'
	for scale in $SCALES; do
		for cache in $CACHES; do
			awk -F'\t' -v s="$scale" -v c="$cache" '$1 == s && $2 == c {l = $3; r = $4; q = q (q ? " / " : "") $6; u = u (u ? " / " : "") $8}
				END {printf "| %s | %s | %s | %.1f | %s | %s |", s, c == "true" ? "on" : "off", l, r / 1024, q, u}' "$RAW"
			awk -F'\t' -v s="$scale" -v c="$cache" '$1 == s && $2 == c {printf " %s | %s |\n", $3, $4}' "$LAT"
		done
	done
	if [[ -f $OUT/expiry-counts.txt ]]; then
		echo
		echo "Mass expiry (large, cache on), one query in flight for ${EXPIRY_FOR}s:"
		echo
		echo '```'
		echo "baseline: $(tr '\n' ' ' <"$OUT/expiry-baseline.txt")"
		echo "expiry:   $(tr '\n' ' ' <"$OUT/expiry.txt")"
		cat "$OUT/expiry-counts.txt"
		echo '```'
	fi
	if ((PAIRED)); then
		echo
		echo "Paired (PAIRED=1): large ÷ small, repetition by repetition (queries/s):"
		echo
		for cache in $CACHES; do
			awk -F'\t' -v c="$cache" '$2 == c && $1 == "small" {s[$5] = $6} $2 == c && $1 == "large" {l[$5] = $6}
				END {printf "- cache %s:", c == "true" ? "on" : "off"; for (r = 1; r in s; r++) if (s[r] > 0) printf " %.2f", l[r] / s[r]; printf "\n"}' "$RAW"
		done
	fi
} | tee "$OUT/summary.md"
