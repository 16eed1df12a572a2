#!/usr/bin/env bash
# Fleet benchmark: what sharing the learned state through etcd costs.
#
#   bash bench/fleet/run.sh
#
# Everything runs in one network namespace this script creates, on its
# loopback: a three-member etcd (Debian's etcd-server, data on disk, fsync
# on; FSYNC=off puts the data in /dev/shm, where fsync costs nothing, as
# etcd 3.4 has no --unsafe-no-fsync), the bench upstream
# (bench/dns/upstream: every name its own AAAA address), and up to three
# fqdngate gateways, each with its own nftables table (hook output) and
# DNS port, sharing one policy pushed with `fqdngate policy push`.
#
# 1. Hold: nftlat (one query in flight, AAAA, every name new) against
#    gateway 0, REPS times each for:
#      local1   one gateway, no cluster section (today's single gateway)
#      local3   three gateways, hold: local
#      peers2   two gateways, hold: peers
#      peers3   three gateways, hold: peers
#    The hold peers adds is peersN minus local3.
# 2. Propagation: fleetprop (one query in flight, AAAA, every name new)
#    asks gateway 0 and watches gateway 1's kernel set through nf_tables'
#    notifications: the time from the answer at the client to the
#    element in gateway 1's kernel, p50/p99, with three gateways and
#    hold: local (how far the others lag) and hold: peers (negative: the
#    element is there before the answer leaves).
# 3. Rate: dnsperf against all three gateways at once (hold: peers), each
#    asked distinct new names: answered queries/s (NOERROR only: a refusal
#    is not capacity), new addresses/s across the fleet, and etcd's
#    committed proposals per answer.
# 4. Cached: the same names again, for 10 s, answered from the gateways'
#    caches: etcd proposals per answer.
#
# Raw output and summary.md go to OUT (default bench/fleet/results/<UTC
# timestamp>); scratch files to a temporary directory. The namespace, its
# tables and every process started are removed on exit.
#
# Settings (environment): REPS=5 LAT_N=2000 LAT_W=200 PROP_N=2000
# PROP_W=200 RATE_NAMES=30000 DNSPERF_Q=100 FSYNC=on PROFILE=0. REPS=0
# skips the hold phase and PROP_N=0 the propagation (for a quick look at
# the rate). PROFILE=1 runs the rate phase's gateways under
# bench/dns/fqdngateprof and keeps their CPU profiles (cpu-gwN.pprof).
#
# The rate phase also keeps what says where its time went: each etcd
# member's metrics before and after (etcd-mN-{before,after}.prom), the CPU
# seconds of each etcd member and gateway and of the whole machine
# (cpu.tsv), and the gateways' metrics (metrics-rate-gwN.txt); the summary
# reads them.
set -euo pipefail

REPS=${REPS:-5}
LAT_N=${LAT_N:-2000}
LAT_W=${LAT_W:-200}
RATE_NAMES=${RATE_NAMES:-30000}
PROP_N=${PROP_N:-2000}
PROP_W=${PROP_W:-200}
DNSPERF_Q=${DNSPERF_Q:-100}
FSYNC=${FSYNC:-on}
PROFILE=${PROFILE:-0}
[[ $FSYNC = on || $FSYNC = off ]] || { echo "FSYNC=$FSYNC: want on or off" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/fleet/results/$(date -u +%Y%m%dT%H%M%SZ)}
SCRATCH=$(mktemp -d /tmp/fleetbench.XXXXXX)
DATA=$SCRATCH/etcd
[[ $FSYNC = off ]] && DATA=$(mktemp -d /dev/shm/fleetbench.XXXXXX)
BIN=$SCRATCH/bin
FQ=$BIN/fqdngate
NS=fleetbench-$$
UP=127.0.0.1:5300
ENDPOINTS='"http://127.0.0.1:23791", "http://127.0.0.1:23792", "http://127.0.0.1:23793"'
mkdir -p "$OUT" "$BIN" "$DATA"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
# inns CMD...: runs CMD in the namespace. Background processes are started
# with nsenter written out, so that $! is the process itself (a function
# would add a subshell), which stop_all and cleanup must kill.
inns() { nsenter --net="/run/netns/$NS" "$@"; }

PIDS=()
NS_MADE=0
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if ((NS_MADE)); then
		for i in 0 1 2; do inns nft delete table inet "fleetbench$i" 2>/dev/null || true; done
		ip netns del "$NS" || log "could not delete namespace $NS"
	fi
	rm -rf "$SCRATCH" "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$FQ" ./cmd/fqdngate)
(cd "$ROOT" && go build -o "$BIN/upstream" ./bench/dns/upstream && go build -o "$BIN/nftlat" ./bench/nft/nftlat && go build -o "$BIN/fleetprop" ./bench/fleet/fleetprop)
((PROFILE)) && (cd "$ROOT" && CGO_ENABLED=0 go build -o "$BIN/fqdngateprof" ./bench/dns/fqdngateprof)
for tool in etcd dnsperf; do command -v $tool >/dev/null || { log "$tool is not installed"; exit 1; }; done
{
	echo "date: $(date -u +%FT%TZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel: $(uname -r)"
	echo "go: $(go version)"
	echo "etcd: $(etcd --version | head -1), data on $(df --output=fstype "$DATA" | tail -1) (FSYNC=$FSYNC)"
	echo "fqdngate: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- internal cmd || echo ' + uncommitted changes')"
	echo "settings: REPS=$REPS LAT_N=$LAT_N LAT_W=$LAT_W PROP_N=$PROP_N PROP_W=$PROP_W RATE_NAMES=$RATE_NAMES DNSPERF_Q=$DNSPERF_Q FSYNC=$FSYNC PROFILE=$PROFILE"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2

ip netns add "$NS"
NS_MADE=1
ip -n "$NS" link set lo up
nsenter --net="/run/netns/$NS" "$BIN/upstream" -addr "$UP" 2>>"$OUT/upstream.log" &
PIDS+=($!)

# --- etcd ------------------------------------------------------------------
initial=m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802,m3=http://127.0.0.1:23803
for i in 1 2 3; do
	nsenter --net="/run/netns/$NS" etcd --name "m$i" --data-dir "$DATA/m$i" \
		--listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
		--listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
		--initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token fleetbench \
		--log-level warn $( ((PROFILE)) && echo --enable-pprof) >>"$OUT/etcd-m$i.log" 2>&1 &
	PIDS+=($!)
	ETCD[i]=$!
done
for i in 1 2 3; do
	for _ in $(seq 100); do
		inns curl -s "http://127.0.0.1:2379$i/health" 2>/dev/null | grep -q '"health":"true"' && break
		sleep 0.2
	done
done
# proposals: etcd's committed raft proposals (one per transaction or
# lease operation) on member 1, which sees every commit.
proposals() { inns curl -s http://127.0.0.1:23791/metrics | awk '$1 == "etcd_server_proposals_committed_total" {print $2}'; }

NAMES=$SCRATCH/names.txt
awk -v n="$((REPS * 4 * (LAT_N + LAT_W) + 2 * (PROP_N + PROP_W) + 3 * RATE_NAMES))" 'BEGIN { for (i = 0; i < n; i++) print "n" i ".bench.example AAAA" }' >"$NAMES"
NEXT=0 # the first name of NAMES not asked yet
# take N FILE: the next N unused names into FILE.
take() { sed -n "$((NEXT + 1)),$((NEXT + $1))p" "$NAMES" >"$2"; NEXT=$((NEXT + $1)); }

cat >"$SCRATCH/shared.yaml" <<EOF
dns: {upstreams: [$UP], cache: true, rate_limit: 0, min_ttl: 30s, max_ttl: 1h, grace: 1m, wildcard_budget: 1000000}
rules:
  - name: bench
    to: ["**.bench.example"]
EOF
cp "$SCRATCH/shared.yaml" "$OUT/shared.yaml"

# local_file I HOLD PREFIX: gateway I's local file (HOLD "": a standalone
# gateway, the shared keys in its own file); prints its path.
local_file() {
	local i=$1 hold=$2 prefix=$3 f=$SCRATCH/gw$1.yaml
	cat >"$f" <<-EOF
		listen: {dns: 127.0.0.1:535$i, proxy: "", admin: 127.0.0.1:909$i}
		log: {file: /dev/null}
		history: {enabled: false}   # what the fleet costs, without the decision history (bench/dns measures that)
		firewall: {backend: nftables, hook: output, table: fleetbench$i, state_file: $SCRATCH/state$i.json}
	EOF
	if [[ -z $hold ]]; then
		cat "$SCRATCH/shared.yaml" >>"$f"
	else
		cat >>"$f" <<-EOF
			cluster:
			  etcd: {endpoints: [$ENDPOINTS]}
			  node: gw$i
			  hold: $hold
			  prefix: $prefix
		EOF
	fi
	echo "$f"
}

GW=()
RUN=0
PROFILE_NEXT=0
# start N HOLD: N fresh gateways on empty tables, in a fleet of their own
# (a fresh etcd prefix).
start() {
	local n=$1 hold=$2 prefix
	RUN=$((RUN + 1))
	prefix=/fleetbench/run$RUN/
	for ((i = 0; i < n; i++)); do
		inns nft delete table inet "fleetbench$i" 2>/dev/null || true
		rm -f "$SCRATCH/state$i.json"
		local f
		f=$(local_file "$i" "$hold" "$prefix")
		cp "$f" "$OUT/gw$i-${hold:-standalone}.yaml"
		if [[ -n $hold && $i = 0 ]]; then
			inns "$FQ" policy push -c "$f" "$SCRATCH/shared.yaml" >>"$OUT/push.log" 2>&1
		fi
		if ((PROFILE_NEXT)); then
			nsenter --net="/run/netns/$NS" "$BIN/fqdngateprof" -cpuprofile "$OUT/cpu-gw$i.pprof" -c "$f" >>"$OUT/gw$i.log" 2>&1 &
		else
			nsenter --net="/run/netns/$NS" "$FQ" run -c "$f" >>"$OUT/gw$i.log" 2>&1 &
		fi
		GW[i]=$!
		PIDS+=($!)
	done
	for ((i = 0; i < n; i++)); do
		for _ in $(seq 150); do
			[[ $(inns curl -s "http://127.0.0.1:909$i/readyz" 2>/dev/null) = ready* ]] && continue 2
			kill -0 "${GW[i]}" 2>/dev/null || break
			sleep 0.2
		done
		log "gateway $i not ready; see $OUT/gw$i.log"
		return 1
	done
	# A gateway waits only for the gateways it has seen join.
	if [[ $hold = peers ]]; then
		for ((i = 0; i < n; i++)); do
			for _ in $(seq 150); do
				live=$(inns curl -s "http://127.0.0.1:909$i/metrics" | grep '^fqdngate_fleet_live_nodes ' | cut -d' ' -f2)
				[[ ${live:-0} = "$((n - 1))" ]] && continue 2
				sleep 0.1
			done
			log "gateway $i sees ${live:-no} other gateways, not $((n - 1))"
			return 1
		done
	fi
}
stop_all() {
	for p in "${GW[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${GW[@]}"; do wait "$p" 2>/dev/null || true; done
	GW=()
}

# --- 1. hold ---------------------------------------------------------------
RAW=$OUT/hold.tsv
printf 'rep\tsetup\tn\tlost\tbad\tp50_us\tp90_us\tp99_us\tmax_us\tnon_noerror\n' >"$RAW"
for rep in $(seq "$REPS"); do
	setups="local1 local3 peers2 peers3"
	((rep % 2 == 0)) && setups="peers3 peers2 local3 local1"
	for s in $setups; do
		case $s in
		local1) start 1 "" ;;
		local3) start 3 local ;;
		peers2) start 2 peers ;;
		peers3) start 3 peers ;;
		esac || exit 1
		take "$((LAT_N + LAT_W))" "$SCRATCH/lat.txt"
		inns "$BIN/nftlat" -s 127.0.0.1:5350 -d "$SCRATCH/lat.txt" -order seq -n "$LAT_N" -w "$LAT_W" >"$OUT/hold-$s-r$rep.txt" 2>&1 || true
		line=$(grep '^n=' "$OUT/hold-$s-r$rep.txt" || echo "n=0")
		get() { grep -o "$1=[0-9.]*" <<<"$line" | cut -d= -f2; }
		other=$(awk '{for (i = 10; i <= NF; i++) printf "%s%s", $i, (i < NF ? "," : "")}' <<<"$line")
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$s" "$(get n)" "$(get lost)" "$(get bad)" \
			"$(get p50_us)" "$(get p90_us)" "$(get p99_us)" "$(get max_us)" "${other:--}" >>"$RAW"
		log "rep $rep $s: $line"
		stop_all
	done
done

# --- 2. propagation ----------------------------------------------------------
PROP=$OUT/propagation.tsv
printf 'setup\tn\tlost\tp50_us\tp90_us\tp99_us\tmax_us\tbefore_answer\n' >"$PROP"
for s in local3 peers3; do
	((PROP_N > 0)) || break
	start 3 "${s%3}" || exit 1
	take "$((PROP_N + PROP_W))" "$SCRATCH/prop.txt"
	inns "$BIN/fleetprop" -s 127.0.0.1:5350 -table fleetbench1 -set learn6.bench -d "$SCRATCH/prop.txt" -n "$PROP_N" -w "$PROP_W" >"$OUT/propagation-$s.txt" 2>&1 || true
	line=$(grep '^n=' "$OUT/propagation-$s.txt" || echo "n=0")
	get() { grep -o "$1=[0-9.-]*" <<<"$line" | cut -d= -f2; }
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$(get n)" "$(get lost)" "$(get p50_us)" "$(get p90_us)" "$(get p99_us)" "$(get max_us)" "$(get before_answer)" >>"$PROP"
	log "propagation $s: $line"
	stop_all
done

# --- 3. rate and 4. cached, three gateways, hold: peers ----------------------
PROFILE_NEXT=$PROFILE
start 3 peers || exit 1
PROFILE_NEXT=0
for i in 0 1 2; do take "$RATE_NAMES" "$SCRATCH/rate$i.txt"; done
# cpu_snap: CPU seconds (user+system) of each etcd member and gateway, and
# the machine's busy and total core-seconds (/proc/stat), as one line.
cpu_snap() {
	local tck line p
	tck=$(getconf CLK_TCK)
	line=""
	for p in "${ETCD[@]}" "${GW[@]}"; do
		line+="$(awk -v t="$tck" '{printf "%.2f", ($14 + $15) / t}' "/proc/$p/stat")"$'\t'
	done
	line+=$(awk -v t="$tck" '$1 == "cpu" {busy = $2 + $3 + $4 + $7 + $8 + $9; tot = busy + $5 + $6; printf "%.2f\t%.2f", busy / t, tot / t}' /proc/stat)
	echo "$line"
}
for i in 1 2 3; do inns curl -s "http://127.0.0.1:2379$i/metrics" >"$OUT/etcd-m$i-before.prom"; done
c0=$(cpu_snap)
p0=$(proposals)
for i in 0 1 2; do
	nsenter --net="/run/netns/$NS" dnsperf -s 127.0.0.1 -p "535$i" -d "$SCRATCH/rate$i.txt" -n 1 -c 4 -q "$DNSPERF_Q" -t 5 >"$OUT/rate-gw$i.txt" 2>&1 &
	RP[i]=$!
done
if ((PROFILE)); then
	# The etcd leader's CPU profile, 5 s from a second into the phase.
	for m in 1 2 3; do
		[[ $(inns curl -s "http://127.0.0.1:2379$m/metrics") = *$'\n'"etcd_server_is_leader 1"* ]] || continue
		(sleep 1; inns curl -s -o "$OUT/cpu-etcd-m$m.pprof" "http://127.0.0.1:2379$m/debug/pprof/profile?seconds=5") &
	done
fi
for i in 0 1 2; do wait "${RP[i]}" || true; done
p1=$(proposals)
c1=$(cpu_snap)
for i in 1 2 3; do inns curl -s "http://127.0.0.1:2379$i/metrics" >"$OUT/etcd-m$i-after.prom"; done
for i in 0 1 2; do inns curl -s "http://127.0.0.1:909$i/metrics" >"$OUT/metrics-rate-gw$i.txt" || true; done
{
	printf 'when\tetcd1\tetcd2\tetcd3\tgw0\tgw1\tgw2\tmachine_busy\tmachine_total\n'
	printf 'before\t%s\nafter\t%s\n' "$c0" "$c1"
} >"$OUT/cpu.tsv"
# With PROFILE=1 the cached phase is left out: its 10 s of cache hits
# would fill the profiles.
for i in 0 1 2; do
	((PROFILE)) && break
	nsenter --net="/run/netns/$NS" dnsperf -s 127.0.0.1 -p "535$i" -d "$SCRATCH/rate$i.txt" -l 10 -c 4 -q "$DNSPERF_Q" -t 5 >"$OUT/cached-gw$i.txt" 2>&1 &
	RP[i]=$!
done
((PROFILE)) || for i in 0 1 2; do wait "${RP[i]}" || true; done
p2=$(proposals)
for i in 0 1 2; do inns curl -s "http://127.0.0.1:909$i/metrics" >"$OUT/metrics-gw$i.txt" || true; done
for i in 0 1 2; do
	inns nft -j list set inet "fleetbench$i" learn6.bench | jq '[.nftables[] | select(.set) | .set.elem // [] | length] | add' >"$OUT/elements-gw$i.txt" || true
done
stop_all

# noerror FILE: NOERROR answers in a dnsperf report; secs FILE: its run time.
noerror() { awk '/Response codes:/ {for (i = 1; i <= NF; i++) if ($i ~ /^NOERROR/) {gsub(/[^0-9]/, "", $(i + 1)); print $(i + 1); exit}}' "$1"; }
secs() { awk '/Run time \(s\):/ {print $4}' "$1"; }
# pm FILE SERIES: the value of one series (name and labels exactly as
# exposed) in a Prometheus text file, 0 if absent.
pm() { awk -v k="$2" '$1 == k {v = $2} END {print v + 0}' "$1"; }
# pdelta SERIES: its growth over the rate phase on etcd member $m.
pdelta() { echo $(($(pm "$OUT/etcd-m$m-after.prom" "$1" | cut -d. -f1) - $(pm "$OUT/etcd-m$m-before.prom" "$1" | cut -d. -f1))); }
# pmean HISTOGRAM LABELS AFTER [BEFORE]: the histogram's mean in ms, from
# AFTER's sum and count minus BEFORE's (none: since the process started);
# LABELS as exposed ({kind="learned"}) or "".
pmean() {
	local a="$3" b="${4:-}"
	awk -v s="$(pm "$a" "$1_sum$2")" -v c="$(pm "$a" "$1_count$2")" \
		-v s0="$([[ -n $b ]] && pm "$b" "$1_sum$2" || echo 0)" -v c0="$([[ -n $b ]] && pm "$b" "$1_count$2" || echo 0)" \
		'BEGIN {printf "%.1f", (c - c0) ? 1000 * (s - s0) / (c - c0) : 0}'
}
{
	echo "# fleet benchmark $(date -u +%FT%TZ)"
	echo
	cat "$OUT/machine.txt"
	echo
	echo "etcd fsync: $FSYNC$([[ $FSYNC = off ]] && echo " (data in /dev/shm: fsync costs nothing; not the issue's fsync-on figure)")"
	echo
	((REPS > 0)) && echo "## Hold (medians over $REPS reps; nftlat, one in flight, new names; gateway 0 answers; etcd fsync $FSYNC)"
	((REPS > 0)) && echo
	((REPS > 0)) && echo "| setup | p50 µs | p90 µs | p99 µs | max µs | non-NOERROR (all reps) | lost (all reps) |"
	((REPS > 0)) && echo "|---|---:|---:|---:|---:|---|---:|"
	((REPS > 0)) && for s in local1 local3 peers2 peers3; do
		awk -F'\t' -v s="$s" 'NR > 1 && $2 == s {n++; p50[n] = $6; p90[n] = $7; p99[n] = $8; mx[n] = $9; lost += $4; if ($10 != "-") bad = bad " " $10}
		function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t } return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
		END { printf "| %s | %s | %s | %s | %s | %s | %d |\n", s, med(p50, n), med(p90, n), med(p99, n), med(mx, n), (bad == "" ? "none" : bad), lost }' "$RAW"
	done
	echo
	if ((PROP_N > 0)); then
		echo "## Propagation: answer at gateway 0 to the element in gateway 1's kernel set (three gateways; fleetprop, one in flight, new names; etcd fsync $FSYNC)"
		echo
		echo "| setup | n | lost | p50 ms | p90 ms | p99 ms | max ms | before the answer |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|"
		awk -F'\t' 'NR > 1 {printf "| %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %s |\n", $1, $2, $3, $4 / 1000, $5 / 1000, $6 / 1000, $7 / 1000, $8}' "$PROP"
		echo
		echo "(negative: gateway 1 had the element before the answer reached the client, as hold: peers requires)"
		echo
	fi
	echo "## Rate: three gateways, hold: peers, $RATE_NAMES new names each, at once (etcd fsync $FSYNC)"
	echo
	tot=0
	longest=0
	timeouts=0
	for i in 0 1 2; do
		ok=$(noerror "$OUT/rate-gw$i.txt")
		t=$(secs "$OUT/rate-gw$i.txt")
		echo "- gateway $i: ${ok:-0} NOERROR answers in ${t:-?} s ($(awk -v a="${ok:-0}" -v b="${t:-1}" 'BEGIN {printf "%.0f", a / b}')/s); kernel set learn6.bench holds $(cat "$OUT/elements-gw$i.txt") elements at the end"
		tot=$((tot + ${ok:-0}))
		longest=$(awk -v a="$longest" -v b="${t:-0}" 'BEGIN {print (b > a ? b : a)}')
		timeouts=$((timeouts + $(pm "$OUT/metrics-rate-gw$i.txt" 'fqdngate_fleet_holds_total{result="timeout_release"}')))
	done
	echo "- **new addresses per second across the fleet: $(awk -v a="$tot" -v b="$longest" 'BEGIN {printf "%.0f", b ? a / b : 0}')** ($tot in $longest s); answers released by hold_timeout before every gateway acknowledged them: $timeouts (must be 0: such an answer is not held)"
	echo "- etcd proposals committed meanwhile: $((p1 - p0)) ($(awk -v a="$((p1 - p0))" -v b="$tot" 'BEGIN {printf "%.3f", a / (b ? b : 1)}') per answer)"
	echo
	echo "### Where the rate phase's time went"
	echo
	echo "| gateway | hold mean ms | learned txns | elements/txn | txn mean ms | watermark writes | watermark mean ms | CPU s |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	for i in 0 1 2; do
		g=$OUT/metrics-rate-gw$i.txt
		txns=$(pm "$g" 'fqdngate_fleet_etcd_writes_total{kind="learned"}')
		printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "gw$i" "$(pmean fqdngate_fleet_hold_duration_seconds "" "$g")" "$txns" \
			"$(awk -v a="$(pm "$g" fqdngate_fleet_learned_written_total)" -v b="$txns" 'BEGIN {printf "%.1f", b ? a / b : 0}')" \
			"$(pmean fqdngate_fleet_etcd_write_duration_seconds '{kind="learned"}' "$g")" \
			"$(pm "$g" 'fqdngate_fleet_etcd_writes_total{kind="watermark"}')" \
			"$(pmean fqdngate_fleet_etcd_write_duration_seconds '{kind="watermark"}' "$g")" \
			"$(awk -F'\t' -v c=$((5 + i)) 'NR == 2 {a = $c} NR == 3 {printf "%.1f", $c - a}' "$OUT/cpu.tsv")"
	done
	echo
	echo "| etcd member | CPU s | WAL fsyncs | fsync mean ms | backend commits | commit mean ms | proposals committed |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	for m in 1 2 3; do
		printf '| m%s | %s | %s | %s | %s | %s | %s |\n' "$m" \
			"$(awk -F'\t' -v c=$((1 + m)) 'NR == 2 {a = $c} NR == 3 {printf "%.1f", $c - a}' "$OUT/cpu.tsv")" \
			"$(pdelta etcd_disk_wal_fsync_duration_seconds_count)" \
			"$(pmean etcd_disk_wal_fsync_duration_seconds "" "$OUT/etcd-m$m-after.prom" "$OUT/etcd-m$m-before.prom")" \
			"$(pdelta etcd_disk_backend_commit_duration_seconds_count)" \
			"$(pmean etcd_disk_backend_commit_duration_seconds "" "$OUT/etcd-m$m-after.prom" "$OUT/etcd-m$m-before.prom")" \
			"$(pdelta etcd_server_proposals_committed_total)"
	done
	echo
	echo "- the machine's two cores were busy $(awk -F'\t' 'NR == 2 {b = $8; t = $9} NR == 3 {printf "%.0f%%", 100 * ($8 - b) / ($9 - t)}' "$OUT/cpu.tsv") of the phase (everything on the machine, other users included)"
	echo
	echo "## Cached: the same names for 10 s"
	echo
	ctot=0
	((PROFILE)) && echo "- left out (PROFILE=1)"
	((PROFILE)) || for i in 0 1 2; do ctot=$((ctot + $(noerror "$OUT/cached-gw$i.txt"))); done
	((PROFILE)) || echo "- NOERROR answers: $ctot; etcd proposals committed meanwhile: $((p2 - p1)) ($(awk -v a="$((p2 - p1))" -v b="$ctot" 'BEGIN {printf "%.4f", a / (b ? b : 1)}') per answer)"
} | tee "$OUT/summary.md"
log "results in $OUT"
