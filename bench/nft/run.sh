#!/usr/bin/env bash
# Kernel enforcement benchmark: what programming learned addresses into
# nftables costs.
#
#   bash bench/nft/run.sh
#
# 1. Elements/s: the Publish benchmarks of internal/nft (go test -bench
#    Publish -benchtime 2s -count 3), medians of the three counts.
# 2. Hold: the real daemon in a network namespace this script creates, with
#    the bench upstream (bench/dns/upstream) inside it too, cache off,
#    backend none against nftables, fresh daemon and empty table each
#    repetition (backends alternate which goes first). nftlat, one query in
#    flight, asks AAAA (the upstream gives every name its own AAAA address;
#    A answers come from only 254 addresses) for:
#      new        LAT_W + LAT_N names never asked before, in order: every
#                 answer adds an element to the kernel set
#      hot        random names out of 100 already learned: each comes back
#                 within a second, so the backend skips the kernel
#      repeat10k  random names out of 10,000 already learned: each comes
#                 back after more than a second, so most answers move the
#                 element's timeout (a kernel transaction, no new element)
#    The hold is the nftables figure minus the none figure. Each run also
#    records the daemon's CPU (utime+stime, warm-up included) per query and
#    how many cores the whole machine was busy (others' work and ours).
# 3. Memory: 100,000 distinct names (dnsperf, AAAA) through a fresh
#    nftables daemon, then the same through backend none: daemon VmRSS,
#    the kernel's slab memory before and after, and after the table is
#    deleted, and the element count from `nft -j list set`.
#
# Everything runs inside the namespace; only loopback inside it is used.
# The namespace, the table in it and every process started are removed on
# exit. Raw output and summary.md go to OUT (default
# bench/nft/results/<UTC timestamp>); scratch files to a temporary directory.
#
# Settings (environment):
#   REPS=5          hold repetitions per backend
#   LAT_N=10000     queries timed per nftlat run
#   LAT_W=1000      untimed queries first
#   MEM_NAMES=100000
#   DNSPERF_Q=100   dnsperf -q for the memory fill
#   PARTS="gobench hold memory"
set -euo pipefail

REPS=${REPS:-5}
LAT_N=${LAT_N:-10000}
LAT_W=${LAT_W:-1000}
MEM_NAMES=${MEM_NAMES:-100000}
DNSPERF_Q=${DNSPERF_Q:-100}
PARTS=${PARTS:-gobench hold memory}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/nft/results/$(date -u +%Y%m%dT%H%M%SZ)}
SCRATCH=$(mktemp -d /tmp/nftbench.XXXXXX)
BIN=$SCRATCH/bin
FQ=/tmp/fqdngate-nftbench
NS=nftbench-$$
TABLE=nftbench
UP=127.0.0.1:5300
DNS=127.0.0.1:5353
mkdir -p "$OUT" "$BIN"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
# inns CMD...: runs CMD in the namespace, in the foreground. Background
# processes are started with nsenter written out: it execs the command
# itself (ip netns exec forks and waits, and a function would add a
# subshell), so $! is the process to measure and to stop.
inns() { nsenter --net="/run/netns/$NS" "$@"; }

# Every process this script starts is recorded and stopped by its PID.
PIDS=()
NS_MADE=0
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if ((NS_MADE)); then
		inns nft delete table inet "$TABLE" 2>/dev/null || true
		ip netns del "$NS" || log "could not delete namespace $NS"
	fi
	rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -----------------------------------------------------------------
log "building"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$FQ" ./cmd/fqdngate)
(cd "$ROOT" && go build -o "$BIN/upstream" ./bench/dns/upstream && go build -o "$BIN/nftlat" ./bench/nft/nftlat)
command -v dnsperf >/dev/null || { log "dnsperf is not installed"; exit 1; }
FQ_DESC="working tree at $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- internal cmd || echo " + uncommitted changes in: $(git diff --name-only HEAD -- internal cmd | tr '\n' ' ')")"

{
	echo "date: $(date -u +%FT%TZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel: $(uname -r)"
	echo "nft: $(nft --version)"
	echo "go: $(go version)"
	echo "fqdngate: $FQ_DESC"
	echo "uptime at start: $(uptime)"
	echo "settings: REPS=$REPS LAT_N=$LAT_N LAT_W=$LAT_W MEM_NAMES=$MEM_NAMES DNSPERF_Q=$DNSPERF_Q PARTS=\"$PARTS\""
} | tee "$OUT/machine.txt" >&2

median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "NA"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
has() { [[ " $PARTS " = *" $1 "* ]]; }

# --- 1. elements/s: the Go benchmarks --------------------------------------
if has gobench; then
	log "go test -bench Publish (internal/nft)"
	(cd "$ROOT" && go test -run '^$' -bench Publish -benchtime 2s -count 3 ./internal/nft/) >"$OUT/gobench.txt" 2>&1 ||
		log "go test failed; see $OUT/gobench.txt"
	# One row per benchmark: the median of each metric over the counts.
	awk '/^BenchmarkPublish/ {
		name = $1; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkPublish/, "", name)
		if (!(name in seen)) { seen[name] = 1; order[++nb] = name }
		for (i = 3; i < NF; i += 2) { k = name SUBSEP $(i + 1); vals[k] = vals[k] " " $i; if (!((name, $(i + 1)) in hasu)) { hasu[name, $(i + 1)] = 1; units[name] = units[name] " " $(i + 1) } }
	}
	function med(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END {
		for (b = 1; b <= nb; b++) {
			name = order[b]; line = name
			nu = split(units[name], u, " ")
			for (i = 1; i <= nu; i++) { k = name SUBSEP u[i]; line = line "\t" u[i] "=" med(vals[k]) " (" substr(vals[k], 2) ")" }
			print line
		}
	}' "$OUT/gobench.txt" | tee "$OUT/gobench-medians.tsv" >&2
fi

# --- the namespace, the upstream and the daemon ----------------------------
ip netns add "$NS"
NS_MADE=1
ip -n "$NS" link set lo up
nsenter --net="/run/netns/$NS" "$BIN/upstream" -addr "$UP" 2>>"$OUT/upstream.log" &
UPID=$!
PIDS+=("$UPID")

NAMES=$SCRATCH/names.txt
awk -v n="$MEM_NAMES" 'BEGIN { for (i = 0; i < n; i++) print "n" i ".bench.example AAAA" }' >"$NAMES"
head -100 "$NAMES" >"$SCRATCH/hot.txt"
head -10000 "$NAMES" >"$SCRATCH/repeat10k.txt"
((LAT_W + LAT_N <= MEM_NAMES)) || { log "LAT_W + LAT_N must be at most MEM_NAMES"; exit 1; }

# probe HOSTPORT: succeeds once HOSTPORT in the namespace answers an AAAA.
probe() {
	for _ in $(seq 50); do
		if inns dig +short +tries=1 +time=1 @"${1%:*}" -p "${1#*:}" probe.bench.example AAAA 2>/dev/null | grep -q '^2001:db8:'; then
			return 0
		fi
		sleep 0.2
	done
	return 1
}
probe "$UP" || { log "the upstream did not start; see $OUT/upstream.log"; exit 1; }

# start BACKEND TAG: a fresh daemon with BACKEND (none or nftables), on an
# empty table and no state file; sets FPID.
start() {
	local backend=$1 tag=$2 pol=$SCRATCH/policy-$1.yaml
	inns nft delete table inet "$TABLE" 2>/dev/null || true
	rm -f "$SCRATCH/state.json"
	cat >"$pol" <<-EOF
		listen: {dns: $DNS, proxy: "", admin: 127.0.0.1:9090}
		dns: {upstreams: [$UP], cache: false, rate_limit: 0, min_ttl: 30s, max_ttl: 1h, grace: 1m}
		log: {file: /dev/null}
		firewall: {backend: $backend, hook: output, table: $TABLE, state_file: $SCRATCH/state.json}
		rules:
		  - name: bench
		    to: ["**.bench.example"]
	EOF
	cp "$pol" "$OUT/policy-$backend.yaml"
	GODEBUG=gctrace=1 nsenter --net="/run/netns/$NS" "$FQ" run -c "$pol" >>"$OUT/fqdngate-$tag.log" 2>&1 &
	FPID=$!
	PIDS+=("$FPID")
	probe "$DNS" || { log "fqdngate ($backend) did not answer; see $OUT/fqdngate-$tag.log"; return 1; }
	alive || return 1
}
# alive: fails, saying so, if the daemon has exited (a stale one could
# otherwise answer in its place).
alive() { kill -0 "$FPID" 2>/dev/null || { log "fqdngate exited; see its log in $OUT"; return 1; }; }
stop() {
	kill "$FPID" 2>/dev/null || true
	wait "$FPID" 2>/dev/null || true
}
# cpu_ticks PID: user+system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# busy cores of the whole machine (every process, ours included) between
# two stat_ticks readings.
stat_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
TICK=$(getconf CLK_TCK)

# --- 2. hold latency -------------------------------------------------------
if has hold; then
	RAW=$OUT/hold.tsv
	printf 'rep\tbackend\tscenario\tn\tlost\tbad\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\tnon_noerror\tbusy_cores\tloadavg1\tdaemon_cpu_us_per_q\n' >"$RAW"
	for rep in $(seq "$REPS"); do
		order="none nftables"
		((rep % 2 == 0)) && order="nftables none"
		for backend in $order; do
			start "$backend" "$backend-r$rep" || exit 1
			for sc in new hot repeat10k; do
				case $sc in
				new) warm=$LAT_W args=(-d "$NAMES" -order seq) ;;
				hot) warm=1000 args=(-d "$SCRATCH/hot.txt" -order random -seed "$rep") ;;
				repeat10k) warm=0 args=(-d "$SCRATCH/repeat10k.txt" -order random -seed "$rep") ;;
				esac
				b0=$(stat_ticks)
				c0=$(cpu_ticks "$FPID")
				t0=$(date +%s.%N)
				inns "$BIN/nftlat" -s "$DNS" -n "$LAT_N" -w "$warm" "${args[@]}" >"$OUT/hold-$backend-$sc-r$rep.txt" 2>&1 || true
				b1=$(stat_ticks)
				c1=$(cpu_ticks "$FPID")
				t1=$(date +%s.%N)
				dcpu=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v n="$((LAT_N + warm))" 'BEGIN {printf "%.1f", (b - a) / t * 1e6 / n}')
				busy=$(awk -v a="$b0" -v b="$b1" -v t="$TICK" -v x="$t0" -v y="$t1" 'BEGIN {printf "%.2f", (b - a) / t / (y - x)}')
				line=$(grep '^n=' "$OUT/hold-$backend-$sc-r$rep.txt" || echo "n=0")
				get() { grep -o "$1=[0-9.]*" <<<"$line" | cut -d= -f2; }
				other=$(awk '{for (i = 10; i <= NF; i++) printf "%s%s", $i, (i < NF ? "," : "")}' <<<"$line")
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$backend" "$sc" \
					"$(get n)" "$(get lost)" "$(get bad)" "$(get p50_us)" "$(get p90_us)" "$(get p99_us)" "$(get p999_us)" "$(get max_us)" \
					"${other:--}" "$busy" "$(cut -d' ' -f1 /proc/loadavg)" "$dcpu" >>"$RAW"
				log "rep $rep $backend $sc: $line (machine busy $busy cores, daemon CPU $dcpu us/query)"
			done
			alive || exit 1
			# The kernel must hold what the new-name pass learned.
			if [[ $backend = nftables ]]; then
				inns nft -j list set inet "$TABLE" learn6.bench | jq '[.nftables[] | select(.set) | .set.elem // [] | length] | add' >"$OUT/hold-elements-r$rep.txt" || true
			fi
			stop
		done
	done
fi

# --- 3. memory at MEM_NAMES learned elements -------------------------------
SLAB=$OUT/memory-slab.txt
# snap LABEL: /proc/meminfo and /proc/slabinfo now, to OUT.
snap() {
	sync
	grep -E '^(MemAvailable|Slab|SReclaimable|SUnreclaim):' /proc/meminfo >"$OUT/meminfo-$1.txt"
	cat /proc/slabinfo >"$OUT/slabinfo-$1.txt" 2>/dev/null || true
}
kib() { awk -v k="$2" '$1 == k ":" {print $2}' "$OUT/meminfo-$1.txt"; }
# slabdiff A B: the caches that grew most from A to B (bytes = objects x size).
slabdiff() {
	awk 'FNR == 1 {f++} /^#|^slabinfo/ {next} f == 1 {a[$1] = $3 * $4; ao[$1] = $2} f == 2 {d = $3 * $4 - a[$1]; if (d > 0) printf "%s\t%+d objects\t%+.0f KiB\n", $1, $2 - ao[$1], d / 1024}' \
		"$OUT/slabinfo-$1.txt" "$OUT/slabinfo-$2.txt" | sort -t$'\t' -k3 -g -r | head -6
}
fill() { # fill TAG: MEM_NAMES distinct AAAA queries through the daemon
	inns dnsperf -s "${DNS%:*}" -p "${DNS#*:}" -d "$NAMES" -n 1 -c 4 -q "$DNSPERF_Q" -t 5 >"$OUT/memory-dnsperf-$1.txt" 2>&1 || true
	grep -E 'Queries (sent|completed|lost)|Response codes|Queries per second|Average Latency' "$OUT/memory-dnsperf-$1.txt" | sed 's/^ */  /' >&2
}
if has memory; then
	: >"$SLAB"
	log "memory: nftables, $MEM_NAMES names"
	start nftables mem-nftables || exit 1
	sleep 2
	rss_nft0=$(rss_kib "$FPID")
	snap before
	fill nftables
	sleep 2 # the state file is written 0.5 s after a change
	alive || exit 1
	rss_nft1=$(rss_kib "$FPID")
	snap filled
	elems6=$(inns nft -j list set inet "$TABLE" learn6.bench | jq '[.nftables[] | select(.set) | .set.elem // [] | length] | add')
	elems4=$(inns nft -j list set inet "$TABLE" learn4.bench | jq '[.nftables[] | select(.set) | .set.elem // [] | length] | add')
	inns curl -s http://127.0.0.1:9090/metrics | grep -E '^fqdngate_dns_(learned|publish_failures_total)|^go_memstats_(heap_inuse|sys)_bytes' >"$OUT/memory-metrics-nftables.txt" || true
	# The table's ct expression turns connection tracking on in the
	# namespace: every DNS flow (client and upstream) gets an entry.
	ct_nft=$(inns cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo NA)
	ct_max=$(inns cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo NA)
	stop
	sleep 3 # the table outlives the daemon; let freed memory settle
	snap stopped
	inns nft delete table inet "$TABLE"
	sleep 5 # elements are freed after an RCU grace period
	snap deleted

	log "memory: none, $MEM_NAMES names"
	start none mem-none || exit 1
	sleep 2
	rss_none0=$(rss_kib "$FPID")
	fill none
	sleep 2
	alive || exit 1
	rss_none1=$(rss_kib "$FPID")
	inns curl -s http://127.0.0.1:9090/metrics | grep -E '^fqdngate_dns_(learned|publish_failures_total)|^go_memstats_(heap_inuse|sys)_bytes' >"$OUT/memory-metrics-none.txt" || true
	stop
	{
		echo "elements learn6.bench: $elems6; learn4.bench: $elems4"
		echo "daemon VmRSS KiB: nftables $rss_nft0 -> $rss_nft1; none $rss_none0 -> $rss_none1"
		echo "conntrack entries in the namespace after the nftables fill: $ct_nft (nf_conntrack_max $ct_max)"
		echo "daemon metrics, nftables:"
		sed 's/^/  /' "$OUT/memory-metrics-nftables.txt"
		echo "daemon metrics, none:"
		sed 's/^/  /' "$OUT/memory-metrics-none.txt"
		for k in Slab SUnreclaim MemAvailable; do
			echo "$k KiB: before $(kib before $k), filled $(kib filled $k), daemon stopped $(kib stopped $k), table deleted $(kib deleted $k)"
		done
		echo "slab caches that grew most, before -> filled:"
		slabdiff before filled
		echo "slab caches that shrank most, stopped -> deleted (as growth deleted -> stopped):"
		slabdiff deleted stopped
		echo "nftables fill:"
		grep -E 'Queries (completed|lost)|Response codes|Queries per second' "$OUT/memory-dnsperf-nftables.txt"
		echo "none fill:"
		grep -E 'Queries (completed|lost)|Response codes|Queries per second' "$OUT/memory-dnsperf-none.txt"
	} >>"$SLAB"
	cat "$SLAB" >&2
fi

# --- summary ---------------------------------------------------------------
{
	echo "# nft benchmark $(date -u +%FT%TZ)"
	echo
	cat "$OUT/machine.txt"
	echo "uptime at end: $(uptime)"
	if has gobench; then
		echo
		echo "## Publish benchmarks (medians of 3; values in parentheses)"
		echo
		cat "$OUT/gobench-medians.tsv"
	fi
	if has hold; then
		echo
		echo "## Hold (medians over $REPS reps; nftlat one in flight, AAAA, cache off)"
		echo
		echo "| scenario | backend | p50 µs | p99 µs | p99.9 µs | non-NOERROR (all reps) | lost (all reps) | machine busy cores | daemon CPU µs/query |"
		echo "|---|---|---:|---:|---:|---|---:|---:|---:|"
		for sc in new hot repeat10k; do
			for backend in none nftables; do
				sel() { awk -F'\t' -v b="$backend" -v s="$sc" -v c="$1" 'NR > 1 && $2 == b && $3 == s && $c != "" {print $c}' "$RAW"; }
				printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$sc" "$backend" "$(sel 7 | median)" "$(sel 9 | median)" "$(sel 10 | median)" \
					"$(sel 12 | grep -v '^-$' | tr '\n' ' ' || true)" "$(sel 5 | awk '{s += $1} END {print s + 0}')" "$(sel 13 | median)" "$(sel 15 | median)"
			done
			n50=$(awk -F'\t' -v s="$sc" 'NR > 1 && $2 == "nftables" && $3 == s {print $7}' "$RAW" | median)
			o50=$(awk -F'\t' -v s="$sc" 'NR > 1 && $2 == "none" && $3 == s {print $7}' "$RAW" | median)
			n99=$(awk -F'\t' -v s="$sc" 'NR > 1 && $2 == "nftables" && $3 == s {print $9}' "$RAW" | median)
			o99=$(awk -F'\t' -v s="$sc" 'NR > 1 && $2 == "none" && $3 == s {print $9}' "$RAW" | median)
			awk -v s="$sc" -v a="$n50" -v b="$o50" -v c="$n99" -v d="$o99" 'BEGIN {printf "| %s | **hold (nftables − none)** | %+.0f | %+.0f | | | | | |\n", s, a - b, c - d}'
		done
		echo
		echo "Per-rep differences (nftables − none), new names: p50 / p99 µs:"
		for rep in $(seq "$REPS"); do
			awk -F'\t' -v r="$rep" 'NR > 1 && $1 == r && $3 == "new" {p50[$2] = $7; p99[$2] = $9} END {printf "  rep %s: %+.0f / %+.0f\n", r, p50["nftables"] - p50["none"], p99["nftables"] - p99["none"]}' "$RAW"
		done
		echo "Elements in learn6.bench after each nftables rep: $(cat "$OUT"/hold-elements-r*.txt 2>/dev/null | tr '\n' ' ')"
	fi
	if has memory; then
		echo
		echo "## Memory at $MEM_NAMES names"
		echo
		cat "$SLAB"
	fi
} >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results in $OUT"
